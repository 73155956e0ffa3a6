"""Vectorised CLEVR-Robot envs that keep the instruction text right.

Use :func:`make_vector_env` rather than ``gymnasium.vector.AsyncVectorEnv(...)`` with its
defaults: gymnasium 1.x's shared-memory transport reads a ``Text`` observation back only once,
when the vector env is built, so every later batch carries a stale placeholder instead of the
episodes' instructions (the same bug as Farama-Foundation/Gymnasium#1164). Here the workers send
their observations through pipes (``shared_memory=False``) and, by default, each worker process
is pinned to its own CPU, which on a 2-core machine lifts 2 workers from about 1.6-1.75x to about
1.8-1.9x the steps/s of 1 (``benchmarks/env_speed.py``).
"""

from __future__ import annotations

import multiprocessing
import os
from functools import partial
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv

from kalm_envs.registration import ENV_IDS
from kalm_envs.workers import die_with_parent


def _make_worker_env(env_id: str, cpu: int | None, env_kwargs: dict[str, Any]) -> gym.Env:
    """Build one env; inside a worker process, first make it die with its parent
    (:func:`kalm_envs.workers.die_with_parent`) and pin it to ``cpu``.

    AsyncVectorEnv also calls the first factory in the parent process to read the spaces: the
    parent is never pinned.
    """
    if multiprocessing.parent_process() is not None:
        die_with_parent()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    return gym.make(env_id, **env_kwargs)


def make_vector_env(level_or_id: str, num_envs: int, pin_workers: bool = True, **env_kwargs: Any) -> AsyncVectorEnv:
    """``num_envs`` copies of a level's env (``"hard"`` or ``"KALM/CLEVRRobot-Hard-v0"``) in
    worker processes; ``env_kwargs`` go to ``gym.make``. Workers are pinned round-robin to the
    CPUs this process may use when ``pin_workers`` and the platform allows it."""
    env_id = ENV_IDS.get(level_or_id, level_or_id)
    if env_id not in ENV_IDS.values():
        raise ValueError(f"{level_or_id!r} is neither a level {tuple(ENV_IDS)} nor one of their ids")
    if num_envs < 1:
        raise ValueError(f"num_envs {num_envs} must be at least 1")
    cpus = sorted(os.sched_getaffinity(0)) if pin_workers and hasattr(os, "sched_setaffinity") else []
    factories = [
        partial(_make_worker_env, env_id, cpus[i % len(cpus)] if cpus else None, env_kwargs)
        for i in range(num_envs)
    ]
    return AsyncVectorEnv(factories, shared_memory=False)
