"""Importing the CLEVR-Robot data released with KALM (``numpy.save``'d dicts) as Minari datasets.

KALM's format (see ``shared/external/kalm/README.md``): padded arrays of 50 steps with a validity
``masks`` array, ``observations`` and ``next_observations`` of 10 ball coordinates, int ``actions``,
``rewards`` ``(n, 50, 1)``, ``terminals`` ``(n, 50, 1)``, 6-number ``goals`` per step and several
wordings per trajectory in ``instructions``. Each imported episode keeps the first wording (the
others go to the metadata count only); ``infos["is_success"]`` is recomputed with our predicates
and an episode that neither terminates nor fills 50 steps (the time limit of the train env they are
imported into) keeps its last step unterminated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from kalm_envs.collector import REF_EPISODES, REF_SEED_OFFSET, reference_scores
from kalm_envs.dataset_specs import package_version
from kalm_envs.goals import Goal
from kalm_envs.language import validate_instruction
from kalm_envs.minari_io import DatasetError, dataset_dir, staging_dir, write_dataset
from kalm_envs.predicates import is_success
from kalm_envs.registration import ENV_IDS, EPISODE_STEPS
from kalm_envs.rollout import Episode

_REQUIRED_KEYS = ("observations", "next_observations", "actions", "rewards", "terminals", "masks", "goals", "instructions")


def read_kalm_file(path: Path) -> list[Episode]:
    """KALM trajectories of ``path`` as episodes; ``DatasetError`` names what is malformed."""
    try:
        data = np.load(path, allow_pickle=True).item()
    except (OSError, ValueError, AttributeError) as error:
        raise DatasetError(f"{path} is not a KALM numpy file: {error}") from error
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise DatasetError(f"{path} lacks KALM keys {missing}")
    episodes = []
    for i, mask in enumerate(np.asarray(data["masks"])):
        steps = int(mask.sum())
        if steps < 1 or not mask[:steps].all():
            raise DatasetError(f"{path}: trajectory {i} has a mask that is not 1..1 0..0: {mask.tolist()}")
        goal = Goal.from_kalm(data["goals"][i][0]).to_array()
        states = np.concatenate([data["observations"][i][:steps], data["next_observations"][i][steps - 1 : steps]])
        states = states.astype(np.float32)
        terminations = np.asarray(data["terminals"][i][:steps]).reshape(steps).astype(bool)
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = not terminations[-1] and steps == EPISODE_STEPS["train"]
        goals = np.repeat(goal[None], steps + 1, axis=0)
        episodes.append(
            Episode(
                seed=-1,
                instruction=validate_instruction(str(np.ravel(data["instructions"][i])[0])),
                goal=goal,
                observations=states,
                actions=np.asarray(data["actions"][i][:steps], dtype=np.int64),
                rewards=np.asarray(data["rewards"][i][:steps], dtype=np.float64).reshape(steps),
                terminations=terminations,
                truncations=truncations,
                successes=is_success(states, goals, np.repeat(states[:1], steps + 1, axis=0)),
            )
        )
    return episodes


def import_kalm(path: Path, dataset_id: str, workers: int = 1, ref_episodes: int = REF_EPISODES) -> Path:
    """Write KALM's file at ``path`` as the Minari dataset ``dataset_id``; return its folder.

    Reference scores come from ``ref_episodes`` random and oracle episodes on train goals.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no KALM file at {path}")
    if dataset_dir(dataset_id).exists():
        raise FileExistsError(f"dataset {dataset_id} already exists at {dataset_dir(dataset_id)}")
    episodes = read_kalm_file(path)
    work = staging_dir(dataset_id)
    work.mkdir(parents=True, exist_ok=True)
    provenance = {
        "source": "KALM release (github.com/CharlieBrown-v1/KALM, data/)",
        "file": path.name,
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "wordings_kept": "first of each trajectory's instructions",
        "build_command": f"kalm datasets import-kalm {path.name} {dataset_id}",
        "kalm_gym_version": package_version(),
    }
    ref_scores = reference_scores("train", REF_SEED_OFFSET, workers, work, ref_episodes)
    return write_dataset(
        dataset_id, episodes, ENV_IDS["train"],
        f"CLEVR-Robot trajectories released with KALM ({path.name}), imported into our spaces.",
        provenance, ref_scores, algorithm_name="KALM release",
    )
