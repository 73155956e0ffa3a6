"""Writing imagined rollouts of a saved grounded LM as a Minari dataset (``kalm imagine``).

Episode ``i`` imagines a rollout for the goal, wording and initial state of
``env.reset(seed=seed + i)`` of the level's env (:func:`kalm_gen.imagine.level_tasks`). Episodes
whose rollout was cut at an invalid state (see :mod:`kalm_gen.imagine`) are kept, truncated before
that state, unless ``drop_invalid``; a rollout cut at its first step has no step and is always
dropped. The metadata's ``kalm`` block holds the provenance: generator (model folder, base model,
sha256 over the saved model's files), generation settings, seeds, and the counts of invalid and
dropped rollouts. Reference scores are the random-policy and oracle mean returns on the level
(:func:`kalm_envs.collector.reference_scores`), as for the level's oracle dataset. Rollouts stop
at the level's steps by default (one push on easy, 50 on the others).

``min_goal_confidence`` (goal-first models) makes the generator abstain: only the tasks whose
goal the goal head names with at least that probability
(:func:`~kalm_gen.quality.reading_confidence`) are imagined, in task order; the provenance
counts the others (``generation.abstained``). Its goal readings are then far more often right
(``README``: rephrase), at the cost of the wordings it reads least surely.

``states="simulator"`` writes closed-loop runs instead (:func:`kalm_gen.imagine.act_in_simulator`):
the model chooses every action, the simulator gives every next state. Such a dataset is what the
model's rollouts would be with a perfect state head, so training on it bounds what a better state
head can add; it is recorded as such in the provenance (``generation.states``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kalm_envs.collector import REF_EPISODES, REF_SEED_OFFSET, ref_episodes_option, reference_scores
from kalm_envs.dataset_paths import check_dataset_id, dataset_build
from kalm_envs.dataset_specs import get_spec, package_version, published_id
from kalm_envs.minari_io import write_dataset
from kalm_envs.registration import ENV_IDS, EPISODE_STEPS
from kalm_envs.validation import check_choice, check_count, check_float, check_seed
from kalm_gen.published import resolve_model
from kalm_gen.quality import reading_confidence
from kalm_gen.imagine import (
    DEFAULT_BATCH_SIZE,
    INVALID_RULE,
    ImaginedEpisode,
    act_in_simulator,
    check_level,
    check_max_steps,
    imagine_tasks,
    level_tasks,
)

IMAGINED_LEVELS = ("rephrase", "easy", "hard")
#: Where an imagined dataset's next states come from: the model's state head, or the simulator.
STATE_SOURCES = ("model", "simulator")
ALGORITHM_NAME = "GroundedLM-imagination"


def model_checksum(folder: Path) -> str:
    """SHA-256 over every file of a saved model folder (relative path and content, sorted)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str | None]:
    out = {}
    for name in ("kalm-gym", "torch", "transformers", "peft"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def generator_provenance(model: Any, model_dir: Path) -> dict[str, Any]:
    """What identifies the generator: its folder, config, base model and the folder's checksum."""
    from kalm_gen.base_model import COMPLETE_MARKER, resolve_base_model

    info: dict[str, Any] = {
        "class": "kalm_gen.grounded_lm.GroundedLM",
        "model_dir": str(Path(model_dir).resolve()),
        "model_sha256": model_checksum(model_dir),
        "config": asdict(model.config),
        "base_model": model.config.base_model,
    }
    base_folder = Path(resolve_base_model(model.config.base_model))
    info["base_model_folder"] = str(base_folder)
    marker = base_folder / COMPLETE_MARKER
    if marker.is_file():  # a converted GGUF: its source file's size and sha256
        info["base_model_source"] = json.loads(marker.read_text()).get("source")
    return info


def write_imagined_dataset(
    model_dir: Path | str,
    level: str,
    episodes: int | None = None,
    seed: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dataset_id: str | None = None,
    drop_invalid: bool = False,
    temperature: float | None = None,
    sample_seed: int = 0,
    max_steps: int | None = None,
    ref_episodes: int = REF_EPISODES,
    workers: int = 1,
    progress: bool = False,
    model: Any = None,
    states: str = "model",
    min_goal_confidence: float = 0.0,
) -> Path:
    """Imagine ``episodes`` rollouts of ``level`` with the model saved in ``model_dir`` (a folder,
    or the name of a published model, :func:`kalm_gen.published.resolve_model`) and write
    them as ``dataset_id`` (default: the level's published imagined id, e.g.
    ``kalm/clevr-robot/imagined-hard-v2``); return its folder.

    ``episodes`` and ``seed`` default to the published spec's (2000 from seed 1000000);
    ``max_steps`` to the level's steps (1 on easy, 50 on the others), which it may not exceed.
    ``temperature`` 0 is greedy; else actions are sampled with ``sample_seed``; None takes the
    spec's (:attr:`~kalm_envs.dataset_specs.DatasetSpec.temperature`). ``model`` may
    pass the already loaded model of ``model_dir`` (it is still checksummed from the folder).
    ``states`` is ``"model"`` (imagination) or ``"simulator"`` (closed-loop runs of the model's
    actions, see the module docstring). ``min_goal_confidence`` above 0 imagines only the tasks
    read with at least that confidence (goal-first models; see the module docstring).

    The build holds the id's build lock (:mod:`kalm_envs.dataset_paths`) from before the model
    is loaded to the end.

    Raises ``ValueError`` (bad level, id or settings, no episode left), ``FileNotFoundError`` (no
    model in ``model_dir``), ``FileExistsError`` (the dataset exists), ``DatasetBusyError`` (an
    ``OSError``: another process is building it) and ``OSError`` naming the file a write failed on.
    """
    from kalm_gen.grounded_lm import GroundedLM

    if level not in IMAGINED_LEVELS:
        check_level(level)  # names the levels when it is a typo
        raise ValueError(f"level {level!r} has no imagined dataset; imagined levels: {IMAGINED_LEVELS}")
    spec = get_spec(published_id("imagined", level))
    dataset_id = spec.id if dataset_id is None else check_dataset_id(dataset_id)
    episodes = spec.episodes if episodes is None else check_count(episodes, "episodes")
    seed = spec.seed if seed is None else check_seed(seed)
    temperature = spec.temperature if temperature is None else check_float(temperature, "temperature", 0.0)
    check_seed(sample_seed, "sample_seed")
    check_count(batch_size, "batch_size")  # these before the model loads
    check_choice(states, "states", STATE_SOURCES)
    check_float(min_goal_confidence, "min_goal_confidence", 0.0, 1.0)
    max_steps = check_max_steps(level, max_steps)
    if ref_episodes < 1 or workers < 1:
        raise ValueError(f"ref_episodes {ref_episodes} and workers {workers} must be at least 1")
    model_name = str(model_dir)
    model_dir = resolve_model(model_dir)
    with dataset_build(dataset_id) as work:
        if model is None:
            model = GroundedLM.load(model_dir)
        generator = generator_provenance(model, model_dir)

        tasks = level_tasks(level, episodes, seed)
        abstained = 0
        if min_goal_confidence > 0:
            if model.goal_head is None:
                raise ValueError(f"min_goal_confidence {min_goal_confidence} needs a goal-first model; "
                                 f"{model_name} has no goal head")
            confident = np.flatnonzero(reading_confidence(model, tasks, batch_size) >= min_goal_confidence)
            if len(confident) == 0:
                raise ValueError(f"the model reads none of the {len(tasks)} tasks' goals with confidence "
                                 f"min_goal_confidence {min_goal_confidence} or more; nothing to write")
            abstained, tasks = len(tasks) - len(confident), tasks.select(confident)
        generate = act_in_simulator if states == "simulator" else imagine_tasks
        rollouts = generate(
            model, tasks, max_steps=max_steps, batch_size=batch_size, temperature=temperature,
            seed=sample_seed, progress=progress,
        )
        kept = [e for e in rollouts if e.length >= 1 and not (drop_invalid and e.invalid)]
        invalid = [e for e in rollouts if e.invalid]
        if not kept:
            raise ValueError(f"all {len(rollouts)} imagined rollouts were invalid and dropped; nothing to write")

        ref_scores = reference_scores(level, seed + REF_SEED_OFFSET, workers, work, ref_episodes)
        command = (f"kalm imagine --model {model_name} --level {level} --episodes {episodes} --seed {seed} "
                   f"--batch-size {batch_size} --id {dataset_id}" + (" --drop-invalid" if drop_invalid else "")
                   + (f" --max-steps {max_steps}" if max_steps != EPISODE_STEPS[level] else "")
                   + f" --temperature {temperature:g}" + (f" --sample-seed {sample_seed}" if temperature > 0 else "")
                   + (" --states simulator" if states == "simulator" else "")
                   + (f" --min-goal-confidence {min_goal_confidence:g}" if min_goal_confidence > 0 else "")
                   + ref_episodes_option(ref_episodes))
        provenance = {
            "source": "imagined",
            "level": level,
            "seed": seed,
            "episodes_requested": episodes,
            "episodes": len(kept),
            "spec": asdict(spec) if dataset_id == spec.id else None,
            "generator": generator,
            "generation": {
                "decoding": "greedy" if temperature <= 0 else "sampled",
                "temperature": temperature,
                "sample_seed": sample_seed,
                "max_steps": max_steps,
                "batch_size": batch_size,
                "kv_cache": True,
                "states": "the model's state head" if states == "model" else (
                    "the simulator's (closed-loop runs of the model's actions: the bound of a perfect state head)"),
                "stop": "at success (kalm_envs.predicates.is_success) or max_steps",
                "tasks": f"episode i: env.reset(seed={seed} + i) of {ENV_IDS[level]}" if not abstained else (
                    f"the tasks of env.reset(seed={seed} + i), i < {episodes}, of {ENV_IDS[level]} whose goal the "
                    f"model reads with confidence >= {min_goal_confidence:g}, in order"),
                "min_goal_confidence": min_goal_confidence,
                "abstained": abstained,
                "invalid_rule": INVALID_RULE,
                "drop_invalid": drop_invalid,
            },
            "counts": summarize_rollouts(rollouts) | {
                "invalid": len(invalid),
                "dropped": len(rollouts) - len(kept),
                "dropped_empty": sum(e.length == 0 for e in rollouts),
                "cut_episodes": [i for i, e in enumerate(kept) if e.invalid],  # indices in this dataset
            },
            "success_rate": float(np.mean([e.success for e in kept])),
            "ref_scores_from": f"{ref_episodes} episodes of a uniform random policy / the oracle",
            "build_command": command,
            "kalm_gym_version": package_version(),
            "versions": _versions(),
        }
        if states == "simulator":
            description = f"A grounded LLM's actions for CLEVR-Robot {level} goals, run closed-loop in the simulator."
        elif dataset_id == spec.id:
            description = spec.description
        else:
            description = f"Rollouts imagined by a grounded LLM for CLEVR-Robot {level} goals."
        return write_dataset(dataset_id, kept, ENV_IDS[level], description, provenance, ref_scores,
                             algorithm_name=ALGORITHM_NAME)


def summarize_rollouts(rollouts: list[ImaginedEpisode]) -> dict[str, Any]:
    """Counts and rates over generated rollouts (before any is dropped)."""
    return {
        "generated": len(rollouts),
        "succeeded": int(sum(e.success for e in rollouts)),
        "mean_length": float(np.mean([e.length for e in rollouts])) if rollouts else 0.0,
    }
