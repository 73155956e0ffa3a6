"""A scripted oracle that solves goals of every level by one-push lookahead in the simulator.

At each step the oracle copies the observed ball centres (velocities taken as zero) into its own
:class:`~kalm_envs.physics.ClevrPhysics`, simulates candidate pushes, and takes the push whose
outcome meets the goal or, failing that, lowers a goal-specific cost the most. When no candidate
improves the cost it widens to all 40 pushes, then takes a random one. With ``epsilon > 0`` it
takes a uniformly random push with that probability (exploration for data collection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from kalm_envs.goals import DIRECTION_VECTORS, Goal, GoalKind
from kalm_envs.physics import N_ACTIONS, N_BALLS, PUSH_DIRECTIONS, ClevrPhysics
from kalm_envs.predicates import MOVE_MIN_DISPLACEMENT, is_success
from kalm_envs.registration import ENV_IDS
from kalm_envs.rollout import Episode, run_episode
from kalm_envs.validation import check_count, check_int, check_seed
from kalm_envs.workers import process_pool

RELATION_IDEAL_DISTANCE = 0.31  # m: centre of the allowed [0.26, 0.39) band between centres
MOVE_MARGIN = 0.05  # m beyond the 0.15 m a move goal asks for
GATHER_IDEAL_DISTANCE = 0.28  # m from the centre ball, inside the 0.325 m radius
LINE_UP_SPACING = (0.21, 0.12)  # m between consecutive line-up slots along x, and y zig-zag
_IMPROVEMENT = 1e-3  # m of cost a push must save to count as progress
_PUSHES_PER_BALL = len(PUSH_DIRECTIONS)


def _ball_pushes(balls: set[int]) -> np.ndarray:
    return np.array([b * _PUSHES_PER_BALL + k for b in sorted(balls) for k in range(_PUSHES_PER_BALL)])


def goal_cost(states: np.ndarray, goal: Goal, initial_state: np.ndarray) -> np.ndarray:
    """Heuristic distance (m) of each ``(K, 10)`` state from meeting ``goal``; lower is better."""
    balls = states.reshape(-1, N_BALLS, 2)
    if goal.kind is GoalKind.RELATIONS:
        cost = np.zeros(len(balls))
        for a, b, d in goal.clauses:
            ideal = balls[:, b] + RELATION_IDEAL_DISTANCE * DIRECTION_VECTORS[d]
            cost += np.linalg.norm(balls[:, a] - ideal, axis=1)
        return cost
    if goal.kind is GoalKind.MOVE:
        ball, _, d = goal.clauses[0]
        progress = (balls[:, ball] - initial_state.reshape(N_BALLS, 2)[ball]) @ DIRECTION_VECTORS[d]
        return np.maximum(0.0, MOVE_MIN_DISPLACEMENT + MOVE_MARGIN - progress)
    if goal.kind is GoalKind.GATHER:
        center = goal.clauses[0][0]
        gap = np.linalg.norm(balls - balls[:, center : center + 1], axis=2)
        gap[:, center] = GATHER_IDEAL_DISTANCE
        return np.maximum(0.0, gap - GATHER_IDEAL_DISTANCE).sum(axis=1)
    # LINE_UP: slots zig-zag left to right around the balls' current mean height.
    dx, dy = LINE_UP_SPACING
    slot_x = dx * (np.arange(N_BALLS) - (N_BALLS - 1) / 2)
    slot_y = np.clip(balls[:, :, 1].mean(axis=1, keepdims=True), -0.02, 0.42) + dy * (
        np.arange(N_BALLS) % 2 - 0.5
    )
    return np.hypot(balls[:, :, 0] - slot_x, balls[:, :, 1] - slot_y).sum(axis=1)


def _moving_balls(goal: Goal) -> set[int]:
    """Balls the oracle tries first: the one ball a single-clause goal asks to move, else all."""
    if goal.family in ("relation", "move"):
        return {goal.clauses[0][0]}
    return set(range(N_BALLS))


class ScriptedOracle:
    """Goal-conditioned scripted policy for CLEVR-Robot.

    Call :meth:`act` with the env's observation dict and info (``info["goal"]``); the first state
    seen after a reset is taken as the episode's initial state (needed by move goals), so call
    :meth:`reset` at every episode start.

    Args:
        epsilon: probability of a uniformly random push instead of the planned one.
        seed: seed of the oracle's own random generator (exploration and tie-breaks).
    """

    def __init__(self, epsilon: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon {epsilon} must lie in [0, 1]")
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)
        self.physics = ClevrPhysics()
        self._initial_state: np.ndarray | None = None

    def reset(self, observation: dict[str, Any], info: dict[str, Any]) -> None:
        """Start an episode at ``observation["observation"]``."""
        self._initial_state = np.asarray(observation["observation"], dtype=np.float64).copy()

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> int:
        """Choose a push (0..39) towards ``info["goal"]`` from the observed ball centres."""
        if self._initial_state is None:
            raise RuntimeError("call reset() at the start of each episode before act()")
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(N_ACTIONS))
        state = np.asarray(observation["observation"], dtype=np.float64)
        goal = Goal.from_array(info["goal"])
        current = goal_cost(state[None], goal, self._initial_state)[0]
        for candidates in (_ball_pushes(_moving_balls(goal)), np.arange(N_ACTIONS)):
            outcomes = self._simulate(state, candidates)
            initial = np.broadcast_to(self._initial_state, outcomes.shape)
            reached = is_success(outcomes, np.broadcast_to(goal.to_array(), (len(outcomes), 10)), initial)
            if reached.any():
                return int(self.rng.choice(candidates[reached]))
            cost = goal_cost(outcomes, goal, self._initial_state)
            if cost.min() < current - _IMPROVEMENT:
                return int(candidates[np.argmin(cost)])
        return int(self.rng.integers(N_ACTIONS))

    def _simulate(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(K, 10)`` ball centres after each push of ``actions`` from ``state`` at rest."""
        outcomes = np.empty((len(actions), state.size))
        for i, action in enumerate(actions):
            self.physics.set_ball_positions(state)
            self.physics.push(int(action))
            outcomes[i] = self.physics.ball_positions()
        return outcomes


def _oracle_chunk(level: str, seeds: list[int], epsilon: float, pursued: list[np.ndarray | None]) -> list[Episode]:
    env = gym.make(ENV_IDS[level])
    episodes = []
    for seed, goal in zip(seeds, pursued, strict=True):
        oracle = ScriptedOracle(epsilon=epsilon, seed=seed)
        act = oracle.act if goal is None else (lambda o, info, goal=goal, oracle=oracle: oracle.act(o, {**info, "goal": goal}))
        episodes.append(run_episode(env, act, seed, on_reset=oracle.reset))
    env.close()
    return episodes


def oracle_episodes(
    level: str,
    seeds: Sequence[int],
    epsilon: float = 0.0,
    workers: int = 1,
    chunk_size: int = 25,
    progress: bool = False,
    pursued_goals: Sequence[np.ndarray] | None = None,
) -> list[Episode]:
    """Run the oracle for one episode per seed on ``level``; episodes come back in seed order.

    Episode ``i`` resets the env with ``seeds[i]`` and seeds the oracle with it too, so results do
    not depend on ``workers`` (worker processes, 1 = run here; they die with this process,
    :func:`kalm_envs.workers.process_pool`). ``pursued_goals`` (``(10,)`` goal arrays, one per
    seed) make the oracle push towards another goal than the env's; the episode still records the
    env's goal, instruction, rewards and success.
    """
    if level not in ENV_IDS:
        raise ValueError(f"level {level!r} is not one of {tuple(ENV_IDS)}")
    check_int(workers, "workers", low=1)
    check_count(len(seeds), "episodes", low=0)
    seeds = [check_seed(seed) for seed in seeds]
    if pursued_goals is not None and len(pursued_goals) != len(seeds):
        raise ValueError(f"{len(pursued_goals)} pursued goals for {len(seeds)} seeds")
    pursued = [None] * len(seeds) if pursued_goals is None else [Goal.from_array(g).to_array() for g in pursued_goals]
    chunks = [(list(seeds[i : i + chunk_size]), pursued[i : i + chunk_size]) for i in range(0, len(seeds), chunk_size)]
    results: list[list[Episode]] = []
    with tqdm(total=len(seeds), desc=f"oracle {level}", unit="ep", disable=not progress) as bar:
        if workers == 1:
            for chunk, goals in chunks:
                results.append(_oracle_chunk(level, chunk, epsilon, goals))
                bar.update(len(chunk))
        else:
            with process_pool(workers) as pool:
                futures = [pool.submit(_oracle_chunk, level, chunk, epsilon, goals) for chunk, goals in chunks]
                for future in futures:
                    results.append(future.result())
                    bar.update(len(results[-1]))
    return [episode for chunk in results for episode in chunk]
