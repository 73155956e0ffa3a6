"""Running a goal-conditioned policy for one episode and keeping what happened."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from kalm_envs.atomic import atomic_path

Policy = Callable[[dict[str, Any], dict[str, Any]], int]
_STEP_FIELDS = ("actions", "rewards", "terminations", "truncations")  # T entries per episode
_STATE_FIELDS = ("observations", "successes")  # T + 1 entries per episode
PACKED_FIELDS = ("lengths", "seeds", "instructions", "goals", *_STATE_FIELDS, *_STEP_FIELDS)
"""The arrays of :func:`pack_episodes`."""


@dataclass
class Episode:
    """One episode; ``T`` is the number of steps taken.

    Attributes:
        seed: the seed given to ``env.reset``.
        instruction: the episode's instruction text.
        goal: ``(10,)`` int64 goal array.
        observations: ``(T + 1, 10)`` float32 ball centres, initial state first.
        actions: ``(T,)`` int64 pushes.
        rewards: ``(T,)`` float64.
        terminations, truncations: ``(T,)`` bool.
        successes: ``(T + 1,)`` bool ``info["is_success"]``, reset first.
    """

    seed: int
    instruction: str
    goal: np.ndarray
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    successes: np.ndarray

    @property
    def success(self) -> bool:
        """Whether the goal held when the episode ended."""
        return bool(self.successes[-1])

    @property
    def length(self) -> int:
        return len(self.actions)


def run_episode(
    env: gym.Env,
    act: Policy,
    seed: int,
    on_reset: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    options: dict[str, Any] | None = None,
) -> Episode:
    """Run ``act(observation, info) -> action`` in ``env`` until it terminates or truncates.

    ``on_reset(observation, info)`` is called once after the reset (e.g. ``oracle.reset``).
    The env must end episodes itself (the registered ids truncate at their level's time limit,
    :data:`kalm_envs.registration.EPISODE_STEPS`).
    """
    observation, info = env.reset(seed=seed, options=options)
    if on_reset is not None:
        on_reset(observation, info)
    states, actions, rewards = [observation["observation"]], [], []
    terminations, truncations, successes = [], [], [info["is_success"]]
    goal, instruction = info["goal"], observation["instruction"]
    terminated = truncated = False
    while not (terminated or truncated):
        action = act(observation, info)
        observation, reward, terminated, truncated, info = env.step(action)
        states.append(observation["observation"])
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        successes.append(info["is_success"])
    return Episode(
        seed=seed,
        instruction=instruction,
        goal=np.asarray(goal, dtype=np.int64),
        observations=np.asarray(states, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.int64),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
        successes=np.asarray(successes, dtype=bool),
    )


def pack_episodes(episodes: Sequence[Episode]) -> dict[str, np.ndarray]:
    """Concatenate episodes into flat arrays: per-episode ``lengths`` (T), ``seeds``,
    ``instructions``, ``goals``; per-step fields (sum of T rows) and per-state fields
    (``observations``, ``successes``: sum of T + 1 rows)."""
    return {
        "lengths": np.array([e.length for e in episodes], dtype=np.int64),
        "seeds": np.array([e.seed for e in episodes], dtype=np.int64),
        "instructions": np.array([e.instruction for e in episodes], dtype=np.str_),
        "goals": np.stack([e.goal for e in episodes]).astype(np.int64),
        "observations": np.concatenate([e.observations for e in episodes]).astype(np.float32),
        "successes": np.concatenate([e.successes for e in episodes]),
        **{k: np.concatenate([getattr(e, k) for e in episodes]) for k in _STEP_FIELDS},
    }


def unpack_episodes(packed: dict[str, np.ndarray]) -> list[Episode]:
    """Inverse of :func:`pack_episodes`."""
    lengths = packed["lengths"]
    per_step = {k: np.split(packed[k], np.cumsum(lengths)[:-1]) for k in _STEP_FIELDS}
    per_state = {k: np.split(packed[k], np.cumsum(lengths + 1)[:-1]) for k in _STATE_FIELDS}
    return [
        Episode(
            seed=int(packed["seeds"][i]),
            instruction=str(packed["instructions"][i]),
            goal=packed["goals"][i],
            **{k: v[i] for k, v in per_step.items()},
            **{k: v[i] for k, v in per_state.items()},
        )
        for i in range(len(lengths))
    ]


def save_episodes(path: Path, episodes: Sequence[Episode], **extra: np.ndarray) -> None:
    """Write packed episodes (and ``extra`` arrays) to one ``.npz``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **pack_episodes(episodes), **extra)


def load_packed(path: Path) -> dict[str, np.ndarray]:
    """Every array of a file written by :func:`save_episodes`."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def load_episodes(path: Path) -> list[Episode]:
    """Read episodes written by :func:`save_episodes`."""
    return unpack_episodes(load_packed(path))
