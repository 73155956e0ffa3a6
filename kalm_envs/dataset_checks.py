"""Checks that a Minari dataset is one of ours, and that what it holds is sound, before anything
uses it: the one validation layer of the dataset reader.

- :func:`dataset_level`: the metadata (env id, env spec, spaces) is that of one of our levels.
- :func:`check_packed`: the arrays read from it fit together and hold what our env can produce.
- :func:`read_dataset`: both, with :func:`kalm_envs.minari_io.read_packed` (which compares the
  content with its stored checksum); every reader of datasets (the flat loader, the grounding
  data, ``verify``) goes through these.

Every problem is a ``ValueError`` (:class:`~kalm_envs.minari_io.DatasetError` for the content)
whose message names the dataset, the episode and the value.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from kalm_envs.dataset_paths import datasets_root, resolve_dataset
from kalm_envs.dataset_specs import published_id
from kalm_envs.env import OBSERVATION_HIGH, OBSERVATION_LOW
from kalm_envs.goals import LEVEL_FAMILIES, Goal
from kalm_envs.language import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH, validate_instruction
from kalm_envs.minari_io import DatasetError, episode_count, hdf5_path, read_metadata, read_packed
from kalm_envs.physics import N_ACTIONS, STATE_DIM
from kalm_envs.registration import ENV_IDS, MAX_EPISODE_STEPS, RETIRED_ENV_IDS

_LEVEL_OF_ENV = {env_id: level for level, env_id in ENV_IDS.items()}
_CHARSET = frozenset(INSTRUCTION_CHARSET)
ENTRY_POINT = "kalm_envs.env:ClevrRobotEnv"
#: Keyword arguments an env spec of a dataset may hold, with the values its data allows (None: any).
_SPEC_KWARGS: dict[str, tuple[Any, ...] | None] = {
    "level": None, "reward_mode": ("dense",), "render_mode": None, "width": None, "height": None,
}


def dataset_folder(dataset: str | Path) -> Path:
    """The folder of a dataset path or id (:func:`~kalm_envs.dataset_paths.resolve_dataset`: an id
    never reaches outside the Minari root); ``FileNotFoundError`` naming it when absent."""
    folder = resolve_dataset(dataset)
    if folder.is_dir():
        return folder
    raise FileNotFoundError(
        f"dataset {str(dataset)!r} not found: no such folder and no dataset of that id under the "
        f"Minari root {datasets_root()} (build it with: kalm datasets build {dataset})"
    )


def dataset_level(dataset: str | Path) -> str:
    """The instruction level of a dataset of our spaces, read from its Minari metadata.

    Raises:
        FileNotFoundError: the dataset does not exist.
        ValueError: it is not a CLEVR-Robot dataset of our spaces (another env id, observation or
            action space), it was recorded in a retired env id (the message says what changed and
            which dataset to build instead), or its metadata is unreadable; the message names the
            dataset.
    """
    folder = dataset_folder(dataset)
    try:
        metadata = read_metadata(folder)
    except DatasetError as error:
        raise ValueError(f"dataset {str(dataset)!r}: {error}") from error
    env_spec, action_space, observation_space = (
        _json_object(dataset, metadata, key) for key in ("env_spec", "action_space", "observation_space")
    )
    env_id = env_spec.get("id")
    if env_id in RETIRED_ENV_IDS:
        raise _retired_env_error(dataset, env_id)
    if env_id not in _LEVEL_OF_ENV:
        raise ValueError(
            f"dataset {str(dataset)!r} was recorded in env {env_id!r}, not a CLEVR-Robot env of "
            f"KALM-Gym ({', '.join(ENV_IDS.values())}), so it lacks our observation and action spaces"
        )
    subspaces = observation_space.get("subspaces", {}) if isinstance(observation_space, dict) else {}
    state_space = subspaces.get("observation", {})
    spaces_ok = (
        action_space.get("type") == "Discrete"
        and action_space.get("n") == N_ACTIONS
        and int(action_space.get("start", 0)) == 0
        and observation_space.get("type") == "Dict"
        and state_space.get("type") == "Box"
        and list(state_space.get("shape", [])) == [STATE_DIM]
        and subspaces.get("instruction", {}).get("type") == "Text"
    )
    if not spaces_ok:
        raise ValueError(
            f"dataset {str(dataset)!r} (env {env_id}) does not have our spaces: expected "
            f"Discrete({N_ACTIONS}) actions and a Dict observation with a (10,) Box "
            f"'observation' and a Text 'instruction', got action space {action_space} and "
            f"observation space {observation_space}"
        )
    _check_env_spec(dataset, env_spec)
    return _LEVEL_OF_ENV[env_id]


def _json_object(dataset: str | Path, metadata: dict[str, Any], key: str) -> dict[str, Any]:
    """``metadata[key]``, a JSON-encoded object (Minari's format); {} when absent."""
    try:
        value = json.loads(metadata.get(key) or "null") or {}
    except (TypeError, ValueError) as error:
        raise ValueError(f"dataset {str(dataset)!r}: unreadable {key} metadata ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"dataset {str(dataset)!r}: {key} metadata {value!r} is not a JSON object")
    return value


def _check_env_spec(dataset: str | Path, env_spec: dict[str, Any]) -> None:
    """The rest of an env spec of one of our ids: our entry point, our time limit, and keyword
    arguments that the data can have been recorded with (the id's level, dense rewards)."""
    env_id, where = env_spec["id"], f"dataset {str(dataset)!r} (env {env_spec['id']})"
    if env_spec.get("entry_point", ENTRY_POINT) != ENTRY_POINT:
        raise ValueError(f"{where}: entry_point {env_spec.get('entry_point')!r} is not {ENTRY_POINT!r}")
    if env_spec.get("max_episode_steps", MAX_EPISODE_STEPS) != MAX_EPISODE_STEPS:
        raise ValueError(f"{where}: max_episode_steps {env_spec.get('max_episode_steps')!r} is not our time "
                         f"limit of {MAX_EPISODE_STEPS} pushes")
    kwargs = env_spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: env kwargs {kwargs!r} are not a JSON object")
    for key, value in kwargs.items():
        allowed = _SPEC_KWARGS.get(key, ())
        if key not in _SPEC_KWARGS or (allowed is not None and value not in allowed):
            allowed_text = ", ".join(f"{k} {'any' if v is None else list(v)}" for k, v in _SPEC_KWARGS.items())
            raise ValueError(f"{where}: env kwarg {key}={value!r} is not one its data can be recorded with "
                             f"(allowed: {allowed_text})")
    if kwargs.get("level", _LEVEL_OF_ENV[env_id]) != _LEVEL_OF_ENV[env_id]:
        raise ValueError(f"{where} with level {kwargs['level']!r} is inconsistent")


def check_files(dataset: str | Path) -> str:
    """The level of a dataset whose files look sound without reading its data:
    :func:`dataset_level`, and the HDF5 file opens and holds the metadata's ``total_episodes``
    episodes. Raises as :func:`dataset_level`, or :class:`DatasetError` naming the file."""
    level = dataset_level(dataset)
    folder = dataset_folder(dataset)
    count, expected = episode_count(folder), read_metadata(folder).get("total_episodes")
    if count != expected:
        raise DatasetError(f"dataset {str(dataset)!r}: {hdf5_path(folder)} holds {count} episodes, the metadata "
                           f"says {expected!r}")
    return level


def check_packed(
    packed: dict[str, np.ndarray], level: str | None, metadata: dict[str, Any], dataset: str | Path
) -> None:
    """Check the packed episodes of a dataset of ``level`` (vectorised; a few ms per 100,000 steps).

    ``packed``: :func:`kalm_envs.rollout.pack_episodes` arrays. Checked: every episode has at least
    one step and no more than the time limit; the arrays' shapes fit the lengths; actions are
    integers in [0, 40); observations are finite ``(10,)`` rows inside the env's observation box;
    rewards are finite; flags are booleans; every goal decodes (:meth:`Goal.from_array`) and is
    one of ``level``'s families (any level's when ``level`` is None); every instruction fits the env's ``Text`` space; the episode and
    step counts equal the metadata's ``total_episodes`` and ``total_steps``.

    Raises:
        DatasetError: the first problem, naming ``dataset``, the episode and the value.
    """
    where = f"dataset {str(dataset)!r}"
    lengths = np.asarray(packed["lengths"])
    episodes = len(lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or episodes == 0:
        raise DatasetError(f"{where}: episode lengths {lengths!r} must be a non-empty list of integers")
    bad = np.flatnonzero((lengths < 1) | (lengths > MAX_EPISODE_STEPS))
    if len(bad):
        raise DatasetError(f"{where}: episode {bad[0]} has length {lengths[bad[0]]}, outside 1..{MAX_EPISODE_STEPS}")
    steps = int(lengths.sum())
    shapes = {"seeds": (episodes,), "instructions": (episodes,), "goals": (episodes, 10),
              "observations": (steps + episodes, STATE_DIM), "successes": (steps + episodes,),
              "actions": (steps,), "rewards": (steps,), "terminations": (steps,), "truncations": (steps,)}
    for key, shape in shapes.items():
        if np.shape(packed[key]) != shape:
            raise DatasetError(f"{where}: {key} has shape {np.shape(packed[key])}, expected {shape} for "
                               f"{episodes} episodes of {steps} steps")
    for key, total in (("total_episodes", episodes), ("total_steps", steps)):
        if metadata.get(key, total) != total:
            raise DatasetError(f"{where}: the metadata's {key} is {metadata.get(key)!r} but the data holds {total} "
                               f"({'episodes' if key == 'total_episodes' else 'steps'})")
    step_episode = np.repeat(np.arange(episodes), lengths)
    state_episode = np.repeat(np.arange(episodes), lengths + 1)
    actions = packed["actions"]
    if actions.dtype.kind not in "iu":
        raise DatasetError(f"{where}: actions have dtype {actions.dtype}; they must be integers in [0, {N_ACTIONS})")
    _first_bad(where, "action", actions, (actions < 0) | (actions >= N_ACTIONS), step_episode,
               f"outside [0, {N_ACTIONS})")
    for key in ("observations", "rewards"):
        if packed[key].dtype.kind not in "iuf":
            raise DatasetError(f"{where}: {key} have dtype {packed[key].dtype}, not numbers")
    observations = packed["observations"]
    finite = np.isfinite(observations).all(axis=1)
    _first_bad(where, "observation", observations, ~finite, state_episode, "non-finite")
    outside = ((observations < OBSERVATION_LOW) | (observations > OBSERVATION_HIGH)).any(axis=1)
    _first_bad(where, "observation", observations, outside, state_episode,
               f"outside the observation box x [{OBSERVATION_LOW[0]}, {OBSERVATION_HIGH[0]}], "
               f"y [{OBSERVATION_LOW[1]}, {OBSERVATION_HIGH[1]}]")
    rewards = packed["rewards"]
    _first_bad(where, "reward", rewards, ~np.isfinite(rewards), step_episode, "non-finite")
    for key in ("terminations", "truncations", "successes"):
        if packed[key].dtype.kind != "b":
            raise DatasetError(f"{where}: {key} have dtype {packed[key].dtype}, not bool")
    goals = np.asarray(packed["goals"])
    if goals.dtype.kind not in "iu":
        raise DatasetError(f"{where}: goals have dtype {goals.dtype}, not integers")
    # Each distinct goal is decoded once: rows with entries in -1..6 are told apart by a base-8 key
    # (a 1-d unique, much faster than one over rows); a row outside that range is bad anyway.
    outside = np.flatnonzero(((goals < -1) | (goals > 6)).any(axis=1))
    keys = ((goals + 1) * 8 ** np.arange(goals.shape[1], dtype=np.int64)).sum(axis=1)
    first = outside[:1] if len(outside) else np.unique(keys, return_index=True)[1]
    for episode, goal in zip(first.tolist(), goals[first].tolist(), strict=True):
        family, problem = _goal_family(tuple(goal))
        if problem is not None:
            raise DatasetError(f"{where}: episode {episode} has an invalid goal: {problem}")
        if level is not None and family not in LEVEL_FAMILIES[level]:
            raise DatasetError(f"{where}: episode {episode} has a {family} goal {goal}, not one of the "
                               f"{level} level's ({'/'.join(LEVEL_FAMILIES[level])})")
    texts = np.asarray(packed["instructions"])
    if texts.dtype.kind != "U":
        raise DatasetError(f"{where}: instructions have dtype {texts.dtype}, not str")
    lengths_ok = (np.char.str_len(texts) <= MAX_INSTRUCTION_LENGTH) & (np.char.str_len(np.char.strip(texts)) > 0)
    charset_ok = not set("".join(texts.tolist())) - _CHARSET
    for episode in np.flatnonzero(~lengths_ok) if charset_ok else range(len(texts)):
        try:
            validate_instruction(str(texts[episode]))
        except ValueError as error:
            raise DatasetError(f"{where}: episode {episode}: {error}") from error


@functools.lru_cache(maxsize=4096)
def _goal_family(goal: tuple[int, ...]) -> tuple[str | None, str | None]:
    """``(family, None)`` of a valid goal array, ``(None, why it is invalid)`` otherwise. Cached: a
    dataset repeats a few hundred goals over thousands of episodes."""
    try:
        return Goal.from_array(np.array(goal)).family, None
    except ValueError as error:
        return None, str(error)


def _first_bad(where: str, what: str, values: np.ndarray, bad: np.ndarray, episode_of: np.ndarray, why: str) -> None:
    """``DatasetError`` naming the first row where ``bad`` holds, its episode and its value."""
    rows = np.flatnonzero(bad)
    if len(rows):
        row = rows[0]
        raise DatasetError(f"{where}: episode {episode_of[row]} has {what} {values[row].tolist()} ({why})")


def read_dataset(dataset: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """``(level, packed episodes)`` of a dataset, every check passed: :func:`dataset_level`, the
    stored checksum (:func:`kalm_envs.minari_io.read_packed`) and :func:`check_packed`.

    Raises:
        FileNotFoundError: the dataset does not exist.
        ValueError: it is not one of ours (:func:`dataset_level`), or a file or the content is
            damaged (:class:`DatasetError`); the message names the dataset and the problem.
    """
    level = dataset_level(dataset)
    folder = dataset_folder(dataset)
    metadata = read_metadata(folder)

    def check(packed: dict[str, np.ndarray]) -> None:
        check_packed(packed, level, metadata, dataset)

    return level, read_packed(folder, check)  # a damaged file's error names its path


def _retired_env_error(dataset: str | Path, env_id: str) -> ValueError:
    """The error for a dataset recorded in a retired env id: what changed, what to build instead."""
    level, change = RETIRED_ENV_IDS[env_id]
    oracle, imagined = published_id("oracle", level), published_id("imagined", level)
    return ValueError(
        f"dataset {str(dataset)!r} was recorded in the retired env {env_id}: {change} "
        f"({ENV_IDS[level]}), so its episodes are not those of the {level} level any more; rebuild "
        f"{oracle} (kalm datasets build {oracle}) or re-imagine {imagined} "
        f"(kalm datasets build {imagined}, or kalm imagine --model MODEL --level {level})"
    )
