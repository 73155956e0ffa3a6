"""Running a goal-conditioned policy for one episode and keeping what happened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

Policy = Callable[[dict[str, Any], dict[str, Any]], int]


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
    The env must end episodes itself (the registered ids truncate at 50 steps).
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
