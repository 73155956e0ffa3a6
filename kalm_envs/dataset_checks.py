"""Checks that a Minari dataset is one of ours before anything reads it."""

from __future__ import annotations

import json
from pathlib import Path

from kalm_envs.dataset_specs import published_id
from kalm_envs.minari_io import DatasetError, dataset_dir, datasets_root, read_metadata
from kalm_envs.registration import ENV_IDS, RETIRED_ENV_IDS

_LEVEL_OF_ENV = {env_id: level for level, env_id in ENV_IDS.items()}
_STATE_DIM, _N_ACTIONS = 10, 40


def dataset_folder(dataset: str | Path) -> Path:
    """The folder of a dataset id or path; ``FileNotFoundError`` naming it when absent."""
    folder = Path(dataset)
    if folder.is_dir():
        return folder
    candidate = dataset_dir(str(dataset))
    if candidate.is_dir():
        return candidate
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
    try:
        env_spec = json.loads(metadata.get("env_spec") or "null") or {}
        action_space = json.loads(metadata.get("action_space") or "null") or {}
        observation_space = json.loads(metadata.get("observation_space") or "null") or {}
    except (TypeError, ValueError) as error:
        raise ValueError(f"dataset {str(dataset)!r}: unreadable space metadata ({error})") from error
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
        and action_space.get("n") == _N_ACTIONS
        and int(action_space.get("start", 0)) == 0
        and observation_space.get("type") == "Dict"
        and state_space.get("type") == "Box"
        and list(state_space.get("shape", [])) == [_STATE_DIM]
        and subspaces.get("instruction", {}).get("type") == "Text"
    )
    if not spaces_ok:
        raise ValueError(
            f"dataset {str(dataset)!r} (env {env_id}) does not have our spaces: expected "
            f"Discrete({_N_ACTIONS}) actions and a Dict observation with a (10,) Box "
            f"'observation' and a Text 'instruction', got action space {action_space} and "
            f"observation space {observation_space}"
        )
    level = env_spec.get("kwargs", {}).get("level", _LEVEL_OF_ENV[env_id])
    if level != _LEVEL_OF_ENV[env_id]:
        raise ValueError(f"dataset {str(dataset)!r}: env {env_id} with level {level!r} is inconsistent")
    return level


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
