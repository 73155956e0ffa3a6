"""Bad files, seeds, sizes and pipeline settings at the command line (issue 15), one
:class:`~tests.fuzz_cases.Case` each, for the fuzz suite (``tests/test_fuzz_inputs.py``).

Every case runs ``kalm ...`` in this process and must end with exit status 2 and one line naming
the bad value: corrupt ``policy.pt`` files, grounded-model folders and training checkpoints, seeds
out of range, sizes too large to hold in memory, empty output paths and every ``kalm run --set``
setting, which must be refused before the first stage runs (no stage folder may appear).

The corrupt files are damaged copies of real ones the package wrote in the workspace: a trained
policy, a grounded tiny LM and the run folders of a short ``kalm train`` and ``kalm ground``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tests.fuzz_cases import BASE_ID, Case, Workspace, cli

HUGE = str(10**12)
SEEDS_OUT_OF_RANGE = ("-1", str(2**64))


class RanAStage(Exception):
    """A ``kalm run`` case got past its settings check: a stage folder was made before the error."""


# ---------------------------------------------------------------------------------------------
# Files written once per workspace by the package itself.

class SetUpFailed(AssertionError):
    """Making or damaging a case's file failed: the case itself never ran (never a clean refusal)."""


def _set_up(make: Callable[[Path], Any], path: Path) -> None:
    try:
        make(path)
    except Exception as error:  # noqa: BLE001 - whatever broke, the case must not count as refused
        raise SetUpFailed(f"setting up {path} failed: {type(error).__name__}: {error}") from error


def _once(workspace: Workspace, name: str, make: Callable[[Path], Any]) -> Path:
    """``<workspace>/made/<name>``, made by ``make(path)`` on first use."""
    path = workspace.folder / "made" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _set_up(make, path)
    return path


def grounded_model(workspace: Workspace) -> Path:
    """A grounded tiny LM (one grounding step on the base dataset), as ``kalm ground`` saves it."""
    return _once(workspace, "ground-run", lambda run: cli(*_ground_argv(workspace, run, steps=1))) / "final"


def _ground_argv(workspace: Workspace, run: Path, steps: int) -> list[Any]:
    from kalm_gen.tiny import make_tiny_lm

    lm = _once(workspace, "tiny-lm", lambda folder: make_tiny_lm(folder))
    workspace.base()
    return ["ground", "--datasets", BASE_ID, "--base-model", lm, "--finetune", "full", "--head-hidden", 8,
            "--steps", steps, "--max-episodes", 2, "--batch-size", 2, "--checkpoint-every", 1, "--eval-every", 1, "--output", run,
            "--val-fraction", 0, "--pack-length", 0, "--no-progress"]


def _train_argv(workspace: Workspace, run: Path, updates: int) -> list[Any]:
    workspace.base()
    return ["train", "--algorithm", "bc", "--datasets", BASE_ID, "--encoder", "hashed", "--param", "hidden=[8]",
            "--updates", updates, "--batch-size", 4, "--checkpoint-every", 1, "--output", run, "--no-progress"]


def _copy(workspace: Workspace, source: Path, name: str, damage: Callable[[Path], None]) -> Path:
    """A copy of ``source`` (file or folder) at ``<workspace>/damaged/<name>``, damaged by ``damage``."""
    copy = workspace.folder / "damaged" / name
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
        _set_up(damage, copy)
    return copy


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    path.write_bytes(b"\x00not what it should be" * 8)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        values = json.loads(path.read_text())
        change(values)
        path.write_text(json.dumps(values))
    return damage


def _edit_policy(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        payload = torch.load(path, weights_only=True)
        change(payload)
        torch.save(payload, path)
    return damage


def _inside(relative: str, damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """Damage the file ``relative`` (which must exist) of a folder."""
    def damage_inside(folder: Path) -> None:
        if not (folder / relative).is_file():
            raise FileNotFoundError(f"{folder / relative} is not there to damage")
        damage(folder / relative)
    return damage_inside


def _remove(path: Path) -> None:
    path.unlink()


def _unfinished(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """Make a finished grounding run folder one killed after its first checkpoint (its ``final``
    removed, so a rerun resumes from ``checkpoint-1``), then ``damage`` it."""
    def damage_unfinished(folder: Path) -> None:
        shutil.rmtree(folder / "final")
        damage(folder)
    return damage_unfinished


# ---------------------------------------------------------------------------------------------
# The cases.

POLICY_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "garbage": _garble,
    "empty": _empty,
    "not-a-dict": lambda p: torch.save([1, 2, 3], p),
    "shapes": _edit_policy(lambda d: d.update(input_dim=d["input_dim"] + 3)),
    "weights": _edit_policy(lambda d: d.update(state_dict={"net.0.weight": torch.zeros(2, 2)})),
    "algorithm": _edit_policy(lambda d: d.update(algorithm="dqn")),
    "params": _edit_policy(lambda d: d.update(params={"hidden": "wide"})),
    "encoder": _edit_policy(lambda d: d.update(encoder={"name": "nope"})),
    "encoder-dim": _edit_policy(lambda d: d["encoder"].update(dim=-4)),
    "temperature": _edit_policy(lambda d: d.update(temperature="hot")),
}

MODEL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "config-garbage": _inside("grounded_lm.json", _garble),
    "config-key": _inside("grounded_lm.json", _edit_json(lambda v: v.update(wings=2))),
    "config-type": _inside("grounded_lm.json", _edit_json(lambda v: v.update(head_hidden="wide"))),
    "config-finetune": _inside("grounded_lm.json", _edit_json(lambda v: v.update(finetune="most"))),
    "heads-truncated": _inside("heads.safetensors", _truncate),
    "heads-garbage": _inside("heads.safetensors", _garble),
    "heads-missing": _inside("heads.safetensors", _remove),
    "weights-truncated": _inside("model/model.safetensors", _truncate),
    "lm-config-garbage": _inside("model/config.json", _garble),
    "tokenizer-garbage": _inside("tokenizer/tokenizer.json", _garble),
}


def policy_file_cases() -> Iterator[Case]:
    """``kalm evaluate`` and ``kalm separation`` of damaged ``policy.pt`` files."""
    for name, damage in POLICY_DAMAGE.items():
        def copy(w: Workspace, name: str = name, damage: Callable = damage) -> Path:
            return _copy(w, _policy_folder(w), f"policy-{name}", _inside("policy.pt", damage))

        yield Case(f"cli-fault/evaluate-policy-{name}", lambda w, c=copy: cli(
            "evaluate", "--policy", c(w), "--levels", "train", "--episodes", 1, "--output", w.folder / "eval"),
            ("policy-",))
    yield Case("cli-fault/separation-policy-garbage", lambda w: cli(
        "separation", "--policy", _copy(w, _policy_folder(w), "policy-garbage", _inside("policy.pt", _garble)),
        "--levels", "train"), ("policy-garbage",))


def _policy_folder(workspace: Workspace) -> Path:
    """A run folder holding the workspace's saved policy as ``policy.pt``."""
    return _once(workspace, "policy-run", lambda folder: (folder.mkdir(), shutil.copy(workspace.policy(),
                                                                                       folder / "policy.pt")))


def model_folder_cases() -> Iterator[Case]:
    """``kalm imagine``, ``kalm imagine-eval`` and ``kalm publish`` of damaged grounded-model folders."""
    for name, damage in MODEL_DAMAGE.items():
        def copy(w: Workspace, name: str = name, damage: Callable = damage) -> Path:
            return _copy(w, grounded_model(w), f"model-{name}", damage)

        yield Case(f"cli-fault/imagine-model-{name}", lambda w, c=copy, n=name: cli(
            "imagine", "--model", c(w), "--level", "easy", "--episodes", 1, "--ref-episodes", 1,
            "--id", f"kalm/fuzz/imagined-{n}-v0"), (f"model-{name}",))
        yield Case(f"cli-fault/imagine-eval-model-{name}", lambda w, c=copy: cli(
            "imagine-eval", "--model", c(w), "--levels", "easy", "--episodes", 1), (f"model-{name}",))


def checkpoint_cases() -> Iterator[Case]:
    """Resuming ``kalm train`` and ``kalm ground`` from a damaged checkpoint, or into a folder whose
    stored config is damaged."""
    def damaged_train_run(w: Workspace, name: str, damage: Callable[[Path], None]) -> Path:
        """A finished 2-update run, damaged in place (its config names its own folder)."""
        return _once(w, f"train-{name}", lambda run: (cli(*_train_argv(w, run, updates=2)), damage(run)))

    def ground_run(w: Workspace) -> Path:
        return _once(w, "ground-run-2", lambda run: cli(*_ground_argv(w, run, steps=2)))

    train_damage = {"checkpoint-truncated": _inside("checkpoint.pt", _truncate),
                    "checkpoint-garbage": _inside("checkpoint.pt", _garble),
                    "config-garbage": _inside("config.json", _garble)}
    for name, damage in train_damage.items():
        yield Case(f"cli-fault/train-resume-{name}", lambda w, d=damage, n=name: cli(
            *_train_argv(w, damaged_train_run(w, n, d), updates=3)), (f"train-{name}",))
    ground_damage = {"checkpoint-state": _unfinished(_inside("checkpoint-1/training_state.pt", _garble)),
                     "checkpoint-heads": _unfinished(_inside("checkpoint-1/model/heads.safetensors", _truncate)),
                     "config-garbage": _inside("grounding_config.json", _garble)}
    for name, damage in ground_damage.items():
        yield Case(f"cli-fault/ground-resume-{name}", lambda w, d=damage, n=name: cli(
            *_ground_argv(w, _copy(w, ground_run(w), f"ground-{n}", d), steps=2)), (f"ground-{name}",))


def seed_cases() -> Iterator[Case]:
    """Seeds below 0 or above the largest (2**32 - 1) of every command that takes one."""
    for n, seed in enumerate(SEEDS_OUT_OF_RANGE):
        commands: dict[str, Callable[[Workspace], list[Any]]] = {
            "train": lambda w, s=seed: [*_train_argv(w, w.folder / f"train-seed{s}", 1), "--seed", s],
            "evaluate": lambda w, s=seed: ["evaluate", "--baseline", "random", "--levels", "train", "--episodes", 1,
                                           "--seed", s, "--output", w.folder / "eval"],
            "oracle": lambda w, s=seed: ["oracle", "--level", "train", "--episodes", 1, "--seed", s],
            "imagine": lambda w, s=seed: ["imagine", "--model", grounded_model(w), "--level", "easy", "--episodes", 1,
                                          "--seed", s, "--id", f"kalm/fuzz/seeded-{n}-v0"],
            "imagine-sample": lambda w, s=seed: ["imagine", "--model", grounded_model(w), "--level", "easy",
                                                 "--episodes", 1, "--sample-seed", s,
                                                 "--id", f"kalm/fuzz/sample-seeded-{n}-v0"],
            "imagine-eval": lambda w, s=seed: ["imagine-eval", "--model", grounded_model(w), "--levels", "easy",
                                               "--episodes", 1, "--seed", s],
            "imagine-eval-sample": lambda w, s=seed: ["imagine-eval", "--model", grounded_model(w), "--levels",
                                                      "easy", "--episodes", 1, "--temperature", 1, "--sample-seed", s],
            "ground": lambda w, s=seed: [*_ground_argv(w, w.folder / f"ground-seed{s}", 1), "--seed", s],
            "separation": lambda w, s=seed: ["separation", "--levels", "train", "--seed", s],
        }
        for command, argv in commands.items():
            yield Case(f"cli-fault/{command}-seed-{seed}", lambda w, a=argv: cli(*a(w)), ("seed", seed))


def temperature_cases() -> Iterator[Case]:
    """Acting temperatures that are not a finite number >= 0, for the commands that sample the
    grounded LM's actions."""
    for value in ("-1", "nan", "inf"):
        yield Case(f"cli-fault/imagine-eval-temperature-{value}", lambda w, v=value: cli(
            "imagine-eval", "--model", grounded_model(w), "--levels", "easy", "--episodes", 1, "--temperature", v),
            ("temperature", value))


def size_cases() -> Iterator[Case]:
    """Counts and batch sizes too large for any machine: refused at once, not by running out of
    memory (or time) later."""
    commands: dict[str, Callable[[Workspace], list[Any]]] = {
        "oracle-episodes": lambda w: ["oracle", "--level", "train", "--episodes", HUGE],
        "evaluate-episodes": lambda w: ["evaluate", "--baseline", "random", "--levels", "train", "--episodes", HUGE,
                                        "--output", w.folder / "eval"],
        "imagine-episodes": lambda w: ["imagine", "--model", grounded_model(w), "--level", "easy", "--episodes", HUGE,
                                       "--id", "kalm/fuzz/huge-v0"],
        "imagine-batch": lambda w: ["imagine", "--model", grounded_model(w), "--level", "easy", "--episodes", 1,
                                    "--batch-size", HUGE, "--id", "kalm/fuzz/huge-v0"],
        "imagine-eval-episodes": lambda w: ["imagine-eval", "--model", grounded_model(w), "--levels", "easy",
                                            "--episodes", HUGE],
        "build-episodes": lambda w: ["datasets", "build", "kalm/clevr-robot/oracle-easy-v1", "--episodes", HUGE],
        "train-batch": lambda w: [*_train_argv(w, w.folder / "train-huge", 1), "--batch-size", HUGE],
        "ground-batch": lambda w: [*_ground_argv(w, w.folder / "ground-huge", 1), "--batch-size", HUGE],
        "separation-goals": lambda w: ["separation", "--levels", "hard", "--hard-goals", HUGE],
        "publish-episodes": lambda w: ["publish", grounded_model(w).parent, "--name", "kalm-huge-v0",
                                       "--episodes", HUGE, "--destination", w.folder / "published"],
    }
    for name, argv in commands.items():
        yield Case(f"cli-fault/huge-{name}", lambda w, a=argv: cli(*a(w)), (HUGE,))


def empty_output_cases() -> Iterator[Case]:
    """An empty output path or id is refused, never read as the current folder or a default."""
    commands: dict[str, tuple[Callable[[Workspace], list[Any]], str]] = {
        "train": (lambda w: [*_train_argv(w, "", 1)], "output"),
        "ground": (lambda w: [*_ground_argv(w, "", 1)], "output"),
        "evaluate": (lambda w: ["evaluate", "--baseline", "random", "--levels", "train", "--episodes", 1,
                                "--output", ""], "output"),
        "imagine-id": (lambda w: ["imagine", "--model", grounded_model(w), "--level", "easy", "--episodes", 1,
                                  "--id", ""], "id"),
        "run-output-root": (lambda w: ["run", "--output-root", "", "--name", "empty-root"], "output"),
    }
    for name, (argv, needle) in commands.items():
        yield Case(f"cli-fault/empty-{name}", lambda w, a=argv: cli(*a(w)), (needle,))


RUN_SETTINGS_BAD: dict[str, tuple[str, ...]] = {
    "data.real_episodes": ("0", "-5", HUGE),
    "data.oracle_episodes": ("0", HUGE, '{"easy": 4}', '{"rephrase": 4, "easy": 0, "hard": 4}', "[4, 4, 4]"),
    "data.ref_episodes": ("0", "-1"),
    "data.workers": ("0", "-2"),
    "ground.published": ('"kalm-nonesuch-v9"', '{"easy": "kalm-smollm2-v0"}',
                         '{"rephrase": "kalm-smollm2-v0", "easy": "", "hard": "kalm-smollm2-v0"}'),
    "ground.base_model": ('"/nonexistent/lm"', '""'),
    "ground.finetune": ('"most"',),
    "ground.lora_rank": ("0",),
    "ground.head_hidden": ("0",),
    "ground.num_layers": ("-1",),
    "ground.steps": ("0",),
    "ground.batch_size": ("0", HUGE),
    "ground.lr": ("-0.1", "0"),
    "ground.warmup_steps": ("-1",),
    "ground.eval_every": ("0",),
    "ground.checkpoint_every": ("0",),
    "ground.val_fraction": ("1.5", "-0.1"),
    "ground.held_out": ("-1",),
    "ground.seed": SEEDS_OUT_OF_RANGE,
    "imagine.episodes": ("0", HUGE, '{"rephrase": 2, "easy": 2, "hard": 2, "train": 2}', '{"rephrase": 2, "easy": "x", "hard": 2}'),
    "imagine.batch_size": ("0", "-3", HUGE),
    "imagine.ref_episodes": ("0", "-1"),
    "imagine.quality_episodes": ("0", HUGE),
    "imagine.workers": ("0", "-1"),
    "train.algorithms": ('["dqn"]', "[]", '[""]'),
    "train.seeds": ("[-1]", f"[{2**64}]", "[]", '["a"]', "[0, 0]"),
    "train.updates": ("0",),
    "train.batch_size": ("0", HUGE),
    "train.real_fraction": ("0", "1", "1.5"),
    "train.imagined_episodes": ('"some"',),
    "train.encoder": ('"nope"',),
    "train.params": ('{"hidden": "wide"}', '{"wings": 2}'),
    "train.checkpoint_every": ("0",),
    "train.validation_fraction": ("1", "-0.5"),
    "train.select": ('"best"',),
    "train.device": ('"gpu"',),
    "evaluate.episodes": ("0", HUGE),
    "evaluate.seed": SEEDS_OUT_OF_RANGE,
    "evaluate.workers": ("0",),
}
"""Per ``kalm run`` setting, values it must refuse (as JSON, the way ``--set`` reads them)."""


def _run_refused_before_any_stage(workspace: Workspace, override: str) -> None:
    """``kalm run --preset smoke --set OVERRIDE`` into a run folder of its own; :class:`RanAStage`
    if a stage folder appeared, else whatever the command did."""
    root = workspace.folder / "runs-set"
    name = "case-" + "".join(c if c.isalnum() else "_" for c in override)[:80]
    try:
        cli("run", "--preset", "smoke", "--output-root", root, "--name", name, "--set", override)
    finally:
        stages = root / name / "stages"
        if stages.exists() and any(stages.iterdir()):
            raise RanAStage(f"kalm run --set {override} ran {sorted(p.name for p in stages.iterdir())} first")


def run_setting_cases() -> Iterator[Case]:
    for key, values in RUN_SETTINGS_BAD.items():
        for value in values:
            override = f"{key}={value}"
            yield Case(f"cli-fault/run-set-{override}", lambda w, o=override: _run_refused_before_any_stage(w, o),
                       (key.split(".")[0],))


def fault_cases() -> list[Case]:
    """Every case of this module, in a fixed order."""
    return [*policy_file_cases(), *model_folder_cases(), *checkpoint_cases(), *seed_cases(), *temperature_cases(), *size_cases(),
            *empty_output_cases(), *run_setting_cases()]

