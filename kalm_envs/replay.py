"""Replaying recorded pushes in the simulator: how far a rollout's own states and success labels
(an imagined dataset's, or a grounded LM's rollouts) agree with what the simulator does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kalm_envs.registration import ENV_IDS
from kalm_envs.rollout import Episode


def replay_actions(
    level: str, goals: Sequence[np.ndarray], instructions: Sequence[str], initial_states: np.ndarray,
    episodes: Sequence[Episode],
) -> dict[str, Any]:
    """Replay each episode's actions open-loop in the level's env from ``initial_states[i]``
    (``(N, 10)`` ball centres, m) with goal ``goals[i]`` (``(10,)`` goal array) and wording
    ``instructions[i]``, until the env ends the episode.

    Returns ``replay_match_rate`` (share of episodes the simulator ends at the goal),
    ``state_error_mean`` / ``state_error_max`` (m, mean over the five balls of the distance between
    the episode's state and the simulator's after each replayed push; None when no push was
    replayed), the per-episode ``replay_success`` list and the ``replayed`` states
    ``(T_i + 1, 10)`` float64, up to where the simulator ended.
    """
    import gymnasium as gym

    import kalm_envs  # noqa: F401  (registers the env ids)

    env = gym.make(ENV_IDS[level])
    errors: list[float] = []
    successes: list[bool] = []
    replayed: list[np.ndarray] = []
    for i, episode in enumerate(episodes):
        observation, _ = env.reset(options={
            "goal": goals[i], "instruction": instructions[i],
            "initial_state": np.asarray(initial_states[i], dtype=np.float64),
        })
        success = False
        states = [observation["observation"].astype(np.float64)]
        for t, action in enumerate(episode.actions, start=1):
            observation, _, terminated, truncated, info = env.step(int(action))
            states.append(observation["observation"].astype(np.float64))
            gap = (states[-1] - episode.observations[t]).reshape(-1, 2)
            errors.append(float(np.hypot(gap[:, 0], gap[:, 1]).mean()))
            success = bool(info["is_success"])
            if terminated or truncated:
                break
        successes.append(success)
        replayed.append(np.stack(states))
    env.close()
    return {
        "replay_match_rate": float(np.mean(successes)) if successes else 0.0,
        "state_error_mean": float(np.mean(errors)) if errors else None,
        "state_error_max": float(np.max(errors)) if errors else None,
        "replay_success": successes,
        "replayed": replayed,
    }


def label_audit(level: str, episodes: Sequence[Episode]) -> dict[str, Any]:
    """How far the success labels of recorded episodes (``Episode.success``: the goal holds in the
    episode's own last state) hold in the simulator, each episode replayed from its own first
    state, goal and wording (:func:`replay_actions`).

    Returns ``episodes``, ``labelled_successful`` (count), ``replay_match_rate`` (all episodes),
    ``confirmed_rate`` (share of the labelled-successful ones the simulator also ends at the goal;
    None without any), ``unlabelled_replay_rate`` (the same for the others; None without any),
    ``state_error_mean`` and ``state_error_max`` (m).
    """
    replay = replay_actions(level, [e.goal for e in episodes], [e.instruction for e in episodes],
                            np.stack([e.observations[0] for e in episodes]) if episodes else np.zeros((0, 10)),
                            episodes)
    hits = np.array(replay["replay_success"], dtype=bool)
    labels = np.array([e.success for e in episodes], dtype=bool)
    return {
        "episodes": len(episodes),
        "labelled_successful": int(labels.sum()),
        "replay_match_rate": replay["replay_match_rate"],
        "confirmed_rate": float(hits[labels].mean()) if labels.any() else None,
        "unlabelled_replay_rate": float(hits[~labels].mean()) if (~labels).any() else None,
        "state_error_mean": replay["state_error_mean"],
        "state_error_max": replay["state_error_max"],
    }
