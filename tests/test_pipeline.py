"""``kalm run``: the smoke preset end to end, its stage cache, resuming a killed run, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kalm.cli import main as kalm_main
from kalm.pipeline import run_pipeline
from kalm.pipeline.cache import MARKER, stage_hash
from kalm.pipeline.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
TRAINED = ("bc/real", "bc/real+imagined", "bc/real+oracle")
METHODS = ("random", *TRAINED, "scripted oracle")
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The smoke preset run once from scratch: (output root, report)."""
    root = tmp_path_factory.mktemp("runs")
    return root, run_pipeline("smoke", output_root=root, command="pytest")


def _cli(root: Path, capsys: pytest.CaptureFixture, *extra: str) -> dict:
    assert kalm_main(["run", "--preset", "smoke", "--output-root", str(root), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _reused(report: dict) -> dict[str, bool]:
    return {stage: row["reused"] for stage, row in report["stages"].items()}


def test_smoke_run_writes_the_report(first) -> None:
    root, report = first
    run = root / "smoke"
    assert list(report["stages"]) == list(STAGES) and not any(_reused(report).values())
    text = (run / "report.md").read_text()
    assert list(report["evaluation"]["methods"]) == list(METHODS)  # floor first, ceiling last
    for method in METHODS:
        assert f"| {method} |" in text
        assert set(report["evaluation"]["methods"][method]) == {"train", "rephrase", "easy", "hard"}
    assert "## Imagination quality" in text and "goal match" in text
    assert all(f"| {level} |" in text for level in ("rephrase", "easy", "hard"))
    for name in ("success.png", "trajectories.png"):
        assert (run / name).read_bytes()[:8] == PNG and f"]({name})" in text
    assert set(report["versions"]) >= {"python", "torch", "transformers", "gymnasium", "minari", "mujoco", "kalm-gym"}
    assert json.loads((run / "report.json").read_text())["stages"] == report["stages"]
    # every dataset lives in the run's own Minari root, and the caller's root is left alone
    imagined = report["imagination"]["imagined"]["hard"]
    assert (run / "minari" / imagined).is_dir() and "MINARI_DATASETS_PATH" not in os.environ
    for stage, row in report["stages"].items():
        assert Path(row["folder"]).name == f"{stage}-{row['hash']}" and (Path(row["folder"]) / MARKER).is_file()


def test_a_changed_setting_imagines_with_the_published_model(first, capsys) -> None:
    """``ground.published`` skips grounding: the real SmolLM2 with the shipped adapter imagines
    the novel levels and explains real-v0 episodes it never trained on."""
    from kalm_envs.minari_io import read_metadata
    from kalm_gen.published import DEFAULT_MODEL, published_held_out, resolve_model
    from tests.helpers import temporary_minari_root

    root, _ = first
    report = _cli(root, capsys, "--set", f"ground.published={DEFAULT_MODEL}", "--set", "imagine.quality_episodes=2")
    grounding = report["grounding"]
    assert grounding["published"] and grounding["model"] == DEFAULT_MODEL
    assert grounding["held_out_seeds"] == published_held_out(DEFAULT_MODEL)
    assert _reused(report)["data"] and not _reused(report)["imagine"]
    assert report["imagination"]["quality"]["explanation"]["episodes"] == 2
    with temporary_minari_root(root / "smoke" / "minari"):
        generator = read_metadata(report["imagination"]["imagined"]["easy"])["kalm"]["generator"]
    assert generator["model_dir"] == str(resolve_model(DEFAULT_MODEL).resolve())


def test_a_rerun_reuses_every_stage(first, capsys) -> None:
    root, report = first
    started = time.perf_counter()
    again = _cli(root, capsys)
    elapsed = time.perf_counter() - started
    assert all(_reused(again).values())
    assert {s: r["hash"] for s, r in again["stages"].items()} == {s: r["hash"] for s, r in report["stages"].items()}
    assert again["evaluation"] == report["evaluation"]
    assert elapsed < 0.4 * report["seconds"], (elapsed, report["seconds"])
    assert "kalm run --preset smoke" in again["command"]


def test_a_changed_setting_redoes_only_the_stages_after_it(first, capsys) -> None:
    root, report = first
    fewer = _cli(root, capsys, "--set", "evaluate.episodes=4")
    assert _reused(fewer) == {"data": True, "ground": True, "imagine": True, "train": True, "evaluate": False}
    assert fewer["evaluation"]["episodes"] == 4
    assert "4 evaluation episodes per level" in (root / "smoke" / "report.md").read_text()
    assert all(_reused(_cli(root, capsys)).values())  # the first evaluation is still cached
    longer = _cli(root, capsys, "--set", "train.updates=350", "--set", "train.validation_fraction=0.2",
                  "--set", "train.select=val_loss")
    assert _reused(longer) == {"data": True, "ground": True, "imagine": True, "train": False, "evaluate": False}
    policy = Path(longer["stages"]["train"]["folder"]) / "policies" / "bc" / "real" / "seed-0"
    summary = json.loads((policy / "summary.json").read_text())
    assert summary["selected_step"] == summary["best_steps"]["val_loss"]
    faster = _cli(root, capsys, "--set", "data.workers=2", "--set", "train.device=auto")  # how fast, not what
    assert all(_reused(faster).values())


def test_stage_hash_follows_settings_and_upstream() -> None:
    base = stage_hash("train", {"updates": 10, "workers": 1}, {"data": "a"})
    assert stage_hash("train", {"updates": 10, "workers": 4}, {"data": "a"}) == base
    assert stage_hash("train", {"updates": 10, "workers": 1, "device": "cuda"}, {"data": "a"}) == base
    assert stage_hash("train", {"updates": 11, "workers": 1}, {"data": "a"}) != base
    assert stage_hash("train", {"updates": 10, "workers": 1}, {"data": "b"}) != base
    assert len(base) == 12


def test_a_killed_run_resumes(tmp_path) -> None:
    """SIGKILL the run once its training stage has written a checkpoint; the rerun reuses the
    stages before it, resumes training and writes the report."""
    overrides = ["--set", "train.updates=3000", "--set", "train.checkpoint_every=100"]
    process = subprocess.Popen(
        [sys.executable, "-m", "kalm.cli", "run", "--preset", "smoke", "--output-root", str(tmp_path), *overrides],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    stages = tmp_path / "smoke" / "stages"
    deadline = time.monotonic() + 150
    while (not list(stages.glob("train-*/policies/*/*/*/checkpoint.pt")) and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    train_dirs = list(stages.glob("train-*"))
    assert len(train_dirs) == 1 and not (train_dirs[0] / MARKER).exists(), "killed too late"
    assert not (tmp_path / "smoke" / "report.md").exists()
    report = run_pipeline("smoke", overrides[1::2], output_root=tmp_path)
    assert _reused(report) == {"data": True, "ground": True, "imagine": True, "train": False, "evaluate": False}
    assert (tmp_path / "smoke" / "report.md").is_file()
    policies = json.loads((train_dirs[0] / MARKER).read_text())["result"]["policies"]
    assert list(policies) == list(TRAINED)
    summaries = [json.loads((train_dirs[0] / relative / "summary.json").read_text())
                 for folders in policies.values() for relative in folders]
    assert any(summary["resumed_from"] > 0 for summary in summaries)  # training went on from a checkpoint


@pytest.mark.parametrize(("extra", "named"), [
    (["--preset", "tiny"], "'tiny'"),
    (["--set", "evaluate.episdoes=3"], "'episdoes'"),
    (["--set", "evalute.episodes=3"], "'evalute'"),
    (["--set", "evaluate.episodes=many"], "many"),
    (["--set", "evaluate.episodes"], "STAGE.KEY=VALUE"),
    (["--set", 'train.algorithms=["dqn"]'], "'dqn'"),
    (["--set", "ground.held_out=40"], "held_out"),
    (["--set", "train.device=gpu"], "'gpu'"),
    (["--set", "evaluate.workers=0"], "evaluate.workers 0"),
    (["--preset", "default", "--set", "ground.published=kalm-nonesuch-v9"], "kalm-nonesuch-v9"),
    (["--preset", "scratch", "--set", "ground.num_layers=-2"], "num_layers -2"),
])
def test_bad_preset_or_setting_is_refused_with_its_name(tmp_path, capsys, extra, named) -> None:
    assert kalm_main(["run", "--output-root", str(tmp_path), *extra]) == 2
    assert named in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_default_preset_imagines_with_the_published_model() -> None:
    """``make demo``'s preset grounds nothing: it hands the published model to imagination, and
    grounding from scratch stays a preset of the same sizes."""
    from kalm.pipeline import resolve_settings
    from kalm_gen.published import DEFAULT_MODEL

    from kalm_gen.imagine_dataset import model_checksum
    from kalm_gen.published import resolve_model

    default, scratch = resolve_settings("default"), resolve_settings("scratch")
    assert default["ground"]["published"] == DEFAULT_MODEL and scratch["ground"]["published"] == ""
    assert {k: v for k, v in default.items() if k != "ground"} == {k: v for k, v in scratch.items() if k != "ground"}
    # the model is pinned by its files, so republishing it under the same name redoes imagination
    assert default["ground"]["published_sha256"] == model_checksum(resolve_model(DEFAULT_MODEL))
    assert "published_sha256" not in scratch["ground"]
