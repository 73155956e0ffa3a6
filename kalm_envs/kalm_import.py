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
import pickle
from pathlib import Path

import numpy as np

from kalm_envs.collector import REF_EPISODES, REF_SEED_OFFSET, reference_scores
from kalm_envs.dataset_checks import check_packed
from kalm_envs.dataset_specs import package_version
from kalm_envs.goals import Goal
from kalm_envs.minari_io import DatasetError, dataset_dir, staging_dir, write_dataset
from kalm_envs.predicates import is_success
from kalm_envs.registration import ENV_IDS, EPISODE_STEPS
from kalm_envs.rollout import Episode, pack_episodes

_REQUIRED_KEYS = ("observations", "next_observations", "actions", "rewards", "terminals", "masks", "goals", "instructions")


def read_kalm_file(path: Path) -> list[Episode]:
    """KALM trajectories of ``path`` as episodes; ``DatasetError`` names the file and what is
    malformed: the padded arrays (:func:`_check_padded`), then the episodes themselves with the
    dataset reader's checks (:func:`kalm_envs.dataset_checks.check_packed`, on the train level)."""
    try:
        data = np.load(path, allow_pickle=True).item()
    except (OSError, ValueError, AttributeError, EOFError, pickle.UnpicklingError) as error:
        raise DatasetError(f"{path} is not a KALM numpy file: {error}") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a KALM numpy file: it holds a {type(data).__name__}, not a dict")
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise DatasetError(f"{path} lacks KALM keys {missing}")
    data = {key: np.asarray(data[key]) for key in _REQUIRED_KEYS}
    lengths = _check_padded(path, data)
    episodes = []
    for i, steps in enumerate(lengths.tolist()):
        try:
            goal = Goal.from_kalm(data["goals"][i][0]).to_array()
        except ValueError as error:
            raise DatasetError(f"{path}: trajectory {i} has a bad goal: {error}") from error
        states = np.concatenate([data["observations"][i][:steps], data["next_observations"][i][steps - 1 : steps]])
        states = states.astype(np.float32)
        terminations = data["terminals"][i][:steps].reshape(steps).astype(bool)
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = not terminations[-1] and steps == EPISODE_STEPS["train"]
        goals = np.repeat(goal[None], steps + 1, axis=0)
        episodes.append(
            Episode(
                seed=-1,
                instruction=str(np.ravel(data["instructions"][i])[0]),
                goal=goal,
                observations=states,
                actions=data["actions"][i][:steps].reshape(steps).astype(np.int64),
                rewards=data["rewards"][i][:steps].reshape(steps).astype(np.float64),
                terminations=terminations,
                truncations=truncations,
                successes=is_success(states, goals, np.repeat(states[:1], steps + 1, axis=0)),
            )
        )
    check_packed(pack_episodes(episodes), "train", {}, path)
    return episodes


def _check_padded(path: Path, data: dict[str, np.ndarray]) -> np.ndarray:
    """``(n,)`` trajectory lengths, after checking KALM's padded arrays: ``masks`` ``(n, W)`` of
    1..1 0..0 with at least one step; every other array ``n`` trajectories of ``W`` steps (states
    of 10 numbers, goals of 6, rewards and terminals one number a step, integer actions,
    terminals 0 or 1); ``next_observations[t]`` equal to ``observations[t + 1]`` within a
    trajectory; an instruction (a str) per trajectory."""
    masks = data["masks"]
    if masks.ndim != 2 or masks.dtype.kind not in "iufb":
        raise DatasetError(f"{path}: masks have shape {masks.shape} and dtype {masks.dtype}, expected (n, 50) numbers")
    n, width = masks.shape
    lengths = masks.sum(axis=1).astype(np.int64)
    for i, mask in enumerate(masks):
        if not np.isin(mask, (0, 1)).all() or lengths[i] < 1 or not mask[: lengths[i]].all():
            raise DatasetError(f"{path}: trajectory {i} has a mask that is not 1..1 0..0: {mask.tolist()}")
    shapes = {"observations": (n, width, 10), "next_observations": (n, width, 10), "goals": (n, width, 6),
              "actions": (n, width), "rewards": (n, width), "terminals": (n, width)}
    for key, shape in shapes.items():
        array = data[key]
        if key in ("actions", "rewards", "terminals") and array.ndim == 3 and array.shape[2] == 1:
            array = data[key] = array[:, :, 0]
        if array.shape != shape or array.dtype.kind not in "iufb":
            raise DatasetError(f"{path}: {key} have shape {array.shape} and dtype {array.dtype}, expected {shape} "
                               f"numbers to match the masks")
    valid = masks.astype(bool)
    actions = data["actions"][valid]
    if not np.array_equal(actions, np.round(actions)):
        raise DatasetError(f"{path}: actions must be integers, got {actions[actions != np.round(actions)][0]!r}")
    following = valid[:, 1:]  # steps whose next observation is also the next step's observation
    if not np.array_equal(data["next_observations"][:, :-1][following], data["observations"][:, 1:][following],
                          equal_nan=False):
        raise DatasetError(f"{path}: next_observations differ from the following step's observations (or are not "
                           f"finite)")
    terminals = data["terminals"][valid]
    if not np.isin(terminals, (0, 1)).all():
        raise DatasetError(f"{path}: terminals must be 0 or 1, got {terminals[~np.isin(terminals, (0, 1))][0]!r}")
    if len(data["instructions"]) != n:
        raise DatasetError(f"{path}: instructions hold {len(data['instructions'])} trajectories, masks {n}")
    for i, wordings in enumerate(data["instructions"]):
        first = np.ravel(wordings)[0] if np.size(wordings) else None
        if not isinstance(first, str):
            raise DatasetError(f"{path}: trajectory {i} has instruction {first!r}, not a str")
    return lengths


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
