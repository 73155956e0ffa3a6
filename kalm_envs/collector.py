"""Building a published dataset from its spec: oracle rollouts in shards, then one Minari write.

A build works in ``staging_dir(id)``: it writes ``plan.json`` (the settings), then one ``.npz``
shard per ``shard_size`` episodes, then the reference-score episodes, and finally the Minari
dataset, which is renamed into place. Killing a build loses at most the shard in progress; the
next build with the same settings reuses the finished shards. Nothing is visible under the
dataset id until the final rename. A build holds the id's build lock throughout
(:mod:`kalm_envs.dataset_paths`): a second build of the same id fails at once, naming the first.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import mujoco
import numpy as np
from tqdm.auto import tqdm

from kalm_envs.atomic import atomic_write_text
from kalm_envs.dataset_paths import check_dataset_id, dataset_build
from kalm_envs.dataset_specs import DatasetSpec, package_version
from kalm_envs.minari_io import write_dataset
from kalm_envs.oracle import oracle_episodes
from kalm_envs.rollout import Episode, load_episodes, save_episodes
from kalm_envs.validation import check_count

REF_EPISODES = 100  # episodes behind each reference score
REF_SEED_OFFSET = 10_000_000  # reference episodes use seeds far from the dataset's own


def _shard(work: Path, name: str, build) -> list[Episode]:
    path = work / f"{name}.npz"
    if path.exists():
        return load_episodes(path)
    episodes = build()
    save_episodes(path, episodes)
    return episodes


def reference_scores(
    level: str, seed: int, workers: int, work: Path, episodes: int = REF_EPISODES
) -> tuple[float, float]:
    """Mean return of a uniform random policy and of the oracle over ``episodes`` episodes of
    ``level`` (seeds from ``seed``): Minari's ``ref_min_score`` and ``ref_max_score``.

    Their episodes are kept as shards in ``work`` so that a resumed build reuses them.
    """
    seeds = range(seed, seed + episodes)
    scores = []
    for name, epsilon in (("ref-random", 1.0), ("ref-oracle", 0.0)):
        runs = _shard(work, name, lambda eps=epsilon: oracle_episodes(level, seeds, eps, workers))
        scores.append(float(np.mean([episode.rewards.sum() for episode in runs])))
    return scores[0], scores[1]


def build_dataset(
    spec: DatasetSpec,
    episodes: int | None = None,
    workers: int = 1,
    shard_size: int = 500,
    progress: bool = True,
    ref_episodes: int = REF_EPISODES,
) -> Path:
    """Build ``spec.id`` (with ``episodes`` instead of the spec's count if given); return its folder.

    ``ref_episodes`` random-policy and oracle episodes set the reference scores. The build holds
    the id's build lock (:mod:`kalm_envs.dataset_paths`) from start to end.

    Raises ``FileExistsError`` if the dataset already exists, ``DatasetBusyError`` (an
    ``OSError``) while another process builds it, ``ValueError`` for a bad id or setting or an
    imagined dataset (its rollouts come from a grounded LM: ``kalm datasets build`` runs it), and
    ``OSError`` naming the file when a write fails (the finished shards stay for a resumed build).
    """
    check_dataset_id(spec.id)
    if spec.source != "oracle":
        raise ValueError(
            f"dataset {spec.id} is imagined by the grounded LM {spec.model}, not collected in the "
            f"simulator: build it with `{spec.build_command}` (python: "
            "kalm_gen.imagine_dataset.write_imagined_dataset)"
        )
    if episodes is not None:
        spec = replace(spec, episodes=check_count(episodes, "episodes"))
    if workers < 1 or shard_size < 1 or ref_episodes < 1:
        raise ValueError(f"workers {workers}, shard_size {shard_size} and ref_episodes {ref_episodes} must be at "
                         f"least 1")
    with dataset_build(spec.id) as work:
        collected = _collect(spec, work, workers, shard_size, progress, ref_episodes)
        ref_scores = reference_scores(spec.level, spec.seed + REF_SEED_OFFSET, workers, work, ref_episodes)
        provenance = {
            "source": "simulator",
            "behaviour_policy": f"kalm_envs.oracle.ScriptedOracle(epsilon={spec.epsilon})",
            "spec": asdict(spec),
            "ref_scores_from": f"{ref_episodes} episodes of a uniform random policy / the oracle",
            "build_command": f"kalm datasets build {spec.id} --episodes {spec.episodes}"
                             + ref_episodes_option(ref_episodes),
            "kalm_gym_version": package_version(),
            "mujoco_version": mujoco.__version__,
            "success_rate": float(np.mean([e.success for e in collected])),
        }
        return write_dataset(
            spec.id, collected, spec.env_id, spec.description, provenance, ref_scores,
            algorithm_name="ScriptedOracle",
        )


def _collect(
    spec: DatasetSpec, work: Path, workers: int, shard_size: int, progress: bool, ref_episodes: int
) -> list[Episode]:
    """The spec's oracle episodes, shard by shard in the staging folder ``work`` (finished shards
    of an earlier build with the same settings are reused; other settings' are removed)."""
    plan = {"spec": asdict(spec), "shard_size": shard_size, "ref_episodes": ref_episodes}
    plan_file = work / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()) != plan:
        shutil.rmtree(work)  # an unfinished build with other settings: its shards do not fit
        work.mkdir()
    atomic_write_text(plan_file, json.dumps(plan, sort_keys=True))

    collected: list[Episode] = []
    with tqdm(total=spec.episodes, desc=f"build {spec.id}", unit="ep", disable=not progress) as bar:
        for start in range(0, spec.episodes, shard_size):  # the bar ends its line on an error too
            seeds = range(spec.seed + start, spec.seed + min(start + shard_size, spec.episodes))
            collected += _shard(
                work,
                f"shard-{start // shard_size:05d}",
                lambda: oracle_episodes(spec.level, seeds, spec.epsilon, workers),
            )
            bar.update(len(seeds))
    return collected


def ref_episodes_option(ref_episodes: int) -> str:
    """The ``--ref-episodes`` option of a build command that used ``ref_episodes`` (none for the
    default)."""
    return "" if ref_episodes == REF_EPISODES else f" --ref-episodes {ref_episodes}"
