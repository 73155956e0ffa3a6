"""Building a published dataset from its spec: oracle rollouts in shards, then one Minari write.

A build works in ``staging_dir(id)``: it writes ``plan.json`` (the settings), then one ``.npz``
shard per ``shard_size`` episodes, then the reference-score episodes, and finally the Minari
dataset, which is renamed into place. Killing a build loses at most the shard in progress; the
next build with the same settings reuses the finished shards. Nothing is visible under the
dataset id until the final rename.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import mujoco
import numpy as np
from tqdm.auto import tqdm

from kalm_envs.dataset_specs import DatasetSpec, package_version
from kalm_envs.minari_io import dataset_dir, staging_dir, write_dataset
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

    ``ref_episodes`` random-policy and oracle episodes set the reference scores.

    Raises ``FileExistsError`` if the dataset already exists, ``ValueError`` for an imagined
    dataset (its rollouts come from a grounded LM: ``kalm datasets build`` runs it).
    """
    if spec.source != "oracle":
        raise ValueError(
            f"dataset {spec.id} is imagined by the grounded LM {spec.model}, not collected in the "
            f"simulator: build it with `{spec.build_command}` (python: "
            "kalm_gen.imagine_dataset.write_imagined_dataset)"
        )
    if episodes is not None:
        spec = replace(spec, episodes=check_count(episodes, "episodes"))
    if dataset_dir(spec.id).exists():
        raise FileExistsError(f"dataset {spec.id} already exists at {dataset_dir(spec.id)}")
    if workers < 1 or shard_size < 1:
        raise ValueError(f"workers {workers} and shard_size {shard_size} must be at least 1")
    work = staging_dir(spec.id)
    plan = {"spec": asdict(spec), "shard_size": shard_size, "ref_episodes": ref_episodes}
    plan_file = work / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()) != plan:
        shutil.rmtree(work)  # an unfinished build with other settings: its shards do not fit
    work.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan, sort_keys=True))

    collected: list[Episode] = []
    bar = tqdm(total=spec.episodes, desc=f"build {spec.id}", unit="ep", disable=not progress)
    for start in range(0, spec.episodes, shard_size):
        seeds = range(spec.seed + start, spec.seed + min(start + shard_size, spec.episodes))
        collected += _shard(
            work,
            f"shard-{start // shard_size:05d}",
            lambda: oracle_episodes(spec.level, seeds, spec.epsilon, workers),
        )
        bar.update(len(seeds))
    bar.close()

    ref_scores = reference_scores(spec.level, spec.seed + REF_SEED_OFFSET, workers, work, ref_episodes)

    provenance = {
        "source": "simulator",
        "behaviour_policy": f"kalm_envs.oracle.ScriptedOracle(epsilon={spec.epsilon})",
        "spec": asdict(spec),
        "ref_scores_from": f"{ref_episodes} episodes of a uniform random policy / the oracle",
        "build_command": f"kalm datasets build {spec.id} --episodes {spec.episodes}",
        "kalm_gym_version": package_version(),
        "mujoco_version": mujoco.__version__,
        "success_rate": float(np.mean([e.success for e in collected])),
    }
    path = write_dataset(
        spec.id, collected, spec.env_id, spec.description, provenance, ref_scores,
        algorithm_name="ScriptedOracle",
    )
    return path
