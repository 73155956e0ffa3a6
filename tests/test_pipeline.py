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
from kalm.pipeline.cache import MARKER, run_stage, stage_hash
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


def test_published_models_imagine_their_own_levels(first, capsys) -> None:
    """``ground.published`` skips grounding: the real SmolLM2 with a shipped adapter imagines each
    novel level (one model per level here), each model explains real-v0 episodes it never trained
    on, and per-level sizes give each level its own count of oracle and imagined episodes."""
    from kalm_envs.dataset_specs import published_id
    from kalm_envs.minari_io import read_metadata
    from kalm_gen.published import published_held_out, resolve_model
    from tests.helpers import temporary_minari_root

    root, _ = first
    models = {"rephrase": "kalm-smollm2-v0", "easy": "kalm-smollm2-goal-v0", "hard": "kalm-smollm2-v0"}
    sizes = {"rephrase": 3, "easy": 9, "hard": 2}
    report = _cli(root, capsys, "--set", f"ground.published={json.dumps(models)}", "--set", "imagine.quality_episodes=2",
                  "--set", f"imagine.episodes={json.dumps(sizes)}",
                  "--set", 'data.oracle_episodes={"rephrase": 10, "easy": 12, "hard": 10}')
    grounding = report["grounding"]
    assert grounding["published"] and grounding["models"] == models
    assert grounding["held_out_seeds"] == {name: published_held_out(name) for name in set(models.values())}
    assert not any(_reused(report).values())  # the oracle sizes changed the data
    explanations = report["imagination"]["quality"]["explanations"]
    assert {name: e["episodes"] for name, e in explanations.items()} == {name: 2 for name in set(models.values())}
    text = (root / "smoke" / "report.md").read_text()
    assert all(f"Explanation by `{name}`" in text for name in set(models.values()))
    with temporary_minari_root(root / "smoke" / "minari"):
        for level, name in models.items():
            imagined = read_metadata(report["imagination"]["imagined"][level])["kalm"]
            assert imagined["generator"]["model_dir"] == str(resolve_model(name).resolve())
            assert imagined["episodes"] == sizes[level]
        namespace = Path(report["stages"]["data"]["folder"]).name
        oracle = {level: read_metadata(f"pipeline/{namespace}/{published_id('oracle', level).rsplit('/', 1)[1]}")
                  ["total_episodes"] for level in models}
    assert oracle == {"rephrase": 10, "easy": 12, "hard": 10}


def test_a_ground_stage_finished_before_per_level_models_is_reused(first, capsys) -> None:
    """A ground stage whose result names one ``model`` (written before models were per level) is
    reused, and imagination takes that model for every level."""
    root, report = first
    marker = Path(report["stages"]["ground"]["folder"]) / MARKER
    stored = json.loads(marker.read_text())
    old = {key: value for key, value in stored["result"].items() if key != "models"}
    marker.write_text(json.dumps({**stored, "result": {"model": "grounding/final", **old}}))
    try:
        again = _cli(root, capsys, "--set", "imagine.quality_episodes=3")
        assert _reused(again)["ground"] and not _reused(again)["imagine"]
        assert set(again["imagination"]["quality"]["levels"]) == {"rephrase", "easy", "hard"}
    finally:
        marker.write_text(json.dumps(stored))


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


KILL_OVERRIDES = ("train.updates=2000", "train.checkpoint_every=100")
"""Smoke settings whose train stage lasts long enough (seconds) to be killed inside a policy."""
KILL_POINTS = {
    "data": "minari/.kalm-staging/*/plan.json",
    "ground": "stages/ground-*/grounding/checkpoint-10",
    "imagine": "minari/pipeline/imagine-*/*",
    "train": "stages/train-*/policies/bc/real+imagined/seed-0/checkpoint.pt",
    "evaluate": "stages/evaluate-*",
}
"""Per stage, a file (a glob under the run folder) that exists only once the stage has begun."""


def _run_until(root: Path, pattern: str) -> None:
    """Start ``kalm run`` (smoke, :data:`KILL_OVERRIDES`) in a process and SIGKILL it as soon as
    ``pattern`` matches under the run folder; fail with its output if it ended before."""
    sets = [word for override in KILL_OVERRIDES for word in ("--set", override)]
    root.mkdir(exist_ok=True)
    with open(root / "stderr.txt", "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "kalm.cli", "run", "--preset", "smoke", "--output-root", str(root), *sets],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
        )
        deadline = time.monotonic() + 300
        while not list((root / "smoke").glob(pattern)) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        if process.wait() != -signal.SIGKILL:
            stderr.seek(0)
            pytest.fail(f"kalm run ended (exit {process.returncode}) before {pattern} existed: {stderr.read()}")


def _outcome(root: Path) -> dict[str, object]:
    """What a run must reproduce exactly: every policy file's bytes, the evaluation files, and the
    report data less what depends on the wall clock or the run's folder."""
    run = root / "smoke"
    files = {str(path.relative_to(run)): path.read_bytes()
             for pattern in ("stages/train-*/policies/*/*/*/policy.pt", "stages/evaluate-*/evaluation.*")
             for path in sorted(run.glob(pattern))}
    report = json.loads((run / "report.json").read_text())
    for key in ("seconds", "run", "files", "command", "stages"):
        report.pop(key)
    return {"files": files, "report": report}


def test_a_run_killed_in_every_stage_resumes_to_the_same_result(tmp_path) -> None:
    """SIGKILL ``kalm run`` once inside each stage in turn (a rerun each time, which reuses the
    finished stages and resumes the killed one); the final rerun's policies, evaluation and report
    data are byte for byte those of a run that was never interrupted."""
    reference = run_pipeline("smoke", KILL_OVERRIDES, output_root=tmp_path / "reference")
    killed = tmp_path / "killed"
    for stage, pattern in KILL_POINTS.items():
        _run_until(killed, pattern)
        markers = {path.parent.name.split("-")[0] for path in (killed / "smoke" / "stages").glob(f"*/{MARKER}")}
        assert markers == set(list(STAGES)[: list(STAGES).index(stage)]), f"not killed inside {stage}"
    resumed = run_pipeline("smoke", KILL_OVERRIDES, output_root=killed)
    assert not any(row["reused"] for row in reference["stages"].values())
    assert [row["hash"] for row in resumed["stages"].values()] == [row["hash"] for row in reference["stages"].values()]
    expected, got = _outcome(tmp_path / "reference"), _outcome(killed)
    assert sorted(got["files"]) == sorted(expected["files"]) and len(expected["files"]) == len(TRAINED) + 3
    assert [name for name in expected["files"] if got["files"][name] != expected["files"][name]] == []
    assert got["report"] == expected["report"]


def test_a_stage_hands_on_its_result_as_a_reused_stage_reads_it(tmp_path) -> None:
    """The record of a stage that ran is the one a later run reads back from its marker: same
    values, same key order (a dict's order decides the order of a policy's datasets)."""
    work = lambda folder, settings, upstream: {"imagined": {"rephrase": "r", "easy": "e", "hard": "h"}, "n": (1, 2)}
    fresh = run_stage(tmp_path, "imagine", {"x": 1}, {}, work)
    reused = run_stage(tmp_path, "imagine", {"x": 1}, {}, work)
    assert not fresh.reused and reused.reused
    assert fresh.result == reused.result == {"imagined": {"rephrase": "r", "easy": "e", "hard": "h"}, "n": [1, 2]}
    assert list(fresh.result["imagined"]) == list(reused.result["imagined"]) == ["rephrase", "easy", "hard"]


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
    (["--preset", "default", "--set", 'ground.published={"easy": "kalm-smollm2-v0"}'], "ground.published"),
    (["--set", 'imagine.episodes={"rephrase": 2, "easy": 0, "hard": 2}'], "imagine.episodes of easy 0"),
    (["--set", 'data.oracle_episodes={"rephrase": 2, "easy": 2, "hard": 2, "train": 2}'], "data.oracle_episodes"),
    (["--set", "data.oracle_episodes=many"], "many"),
    (["--preset", "scratch", "--set", "ground.num_layers=-2"], "num_layers -2"),
])
def test_bad_preset_or_setting_is_refused_with_its_name(tmp_path, capsys, extra, named) -> None:
    assert kalm_main(["run", "--output-root", str(tmp_path), *extra]) == 2
    assert named in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_default_preset_imagines_with_the_published_models() -> None:
    """``make demo``'s preset grounds nothing: it hands each level the model its published
    imagined spec is built from, and grounding from scratch stays a preset of the same sizes."""
    from kalm.pipeline import resolve_settings
    from kalm_envs.dataset_specs import get_spec, published_id
    from kalm_gen.imagine_dataset import model_checksum
    from kalm_gen.published import resolve_model

    default, scratch = resolve_settings("default"), resolve_settings("scratch")
    spec_models = {level: get_spec(published_id("imagined", level)).model for level in ("rephrase", "easy", "hard")}
    assert default["ground"]["published"] == spec_models and scratch["ground"]["published"] == ""
    assert {k: v for k, v in default.items() if k != "ground"} == {k: v for k, v in scratch.items() if k != "ground"}
    # the models are pinned by their files, so republishing one under the same name redoes imagination
    assert default["ground"]["published_sha256"] == {name: model_checksum(resolve_model(name))
                                                     for name in set(spec_models.values())}
    assert "published_sha256" not in scratch["ground"]


def test_per_level_settings_take_one_value_or_a_mapping() -> None:
    """A per-level setting set to one value gives it to every level; a mapping gives each level its
    own, whichever form the preset has; a model name alone serves every level."""
    from kalm.pipeline import resolve_settings
    from kalm.pipeline.presets import per_level

    one = resolve_settings("default", ["imagine.episodes=7", "ground.published=kalm-smollm2-v0"])
    assert per_level(one["imagine"]["episodes"], "x") == {"rephrase": 7, "easy": 7, "hard": 7}
    assert list(one["ground"]["published_sha256"]) == ["kalm-smollm2-v0"]
    mapping = resolve_settings("smoke", ['data.oracle_episodes={"hard": 4, "easy": 6, "rephrase": 5}'])
    assert per_level(mapping["data"]["oracle_episodes"], "x") == {"rephrase": 5, "easy": 6, "hard": 4}
    assert list(per_level(mapping["data"]["oracle_episodes"], "x")) == ["rephrase", "easy", "hard"]
    with pytest.raises(ValueError, match="takes a int"):
        resolve_settings("default", ["imagine.episodes=[1, 2, 3]"])


def test_a_rerun_sweeps_temporaries_of_killed_writes(first) -> None:
    """A marker or report write killed mid-way leaves ``.NAME.tmp-PID``; the next run removes it."""
    root, report = first
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # its pid is that of a process that has ended
    run = root / "smoke"
    stage = Path(report["stages"]["evaluate"]["folder"])  # the preset's (other tests add others)
    left = [run / f".report.json.tmp-{process.pid}", stage / f".{MARKER}.tmp-{process.pid}"]
    for path in left:
        path.write_text("half")
    (stage / MARKER).unlink()  # the evaluation runs again in its folder
    run_pipeline("smoke", output_root=root, command="pytest")
    assert not any(path.exists() for path in left)
