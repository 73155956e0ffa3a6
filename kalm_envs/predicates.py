"""Success predicates and rewards of every goal kind, vectorised over batches.

This module is the single source of truth for goal semantics: the env, the oracle, the
imagined-rollout labeller and the evaluator all call it. Every function takes batches:

- ``states``: ``(N, 10)`` ball centres in metres (see :mod:`kalm_envs.physics`),
- ``goals``: ``(N, 10)`` int goal arrays (see :mod:`kalm_envs.goals`),
- ``initial_states``: ``(N, 10)`` ball centres at the start of each episode (used by MOVE goals).

A goal is a conjunction of at most :data:`MAX_CONDITIONS` conditions: the clauses of a relations
goal, the displacement of a move goal, the four consecutive pairs of a line-up, the four balls
around the centre of a gather. Angles are in degrees, counter-clockwise from +x.
"""

from __future__ import annotations

import numpy as np

from kalm_envs.goals import DIRECTION_VECTORS, MAX_CLAUSES, GoalKind
from kalm_envs.physics import N_BALLS

RELATION_MAX_DISTANCE = 0.39  # m between centres, strict
TARGET_OFFSET = 0.195  # m from the reference ball to the dense-reward target point
MOVE_MIN_DISPLACEMENT = 0.15  # m along the asked axis, inclusive
LINE_UP_MAX_ANGLE = 60.0  # degrees between a consecutive pair and +x, inclusive
GATHER_RADIUS = 0.325  # m from the centre ball, strict
DENSE_SCALE = 10.0  # reward per metre of progress
CONDITION_REWARD = 10.0  # reward per newly satisfied condition of a multi-condition goal
SUCCESS_BONUS = 100.0
MAX_CONDITIONS = N_BALLS - 1
REWARD_MODES = ("dense", "sparse")


def _balls(states: np.ndarray) -> np.ndarray:
    return np.asarray(states, dtype=np.float64).reshape(-1, N_BALLS, 2)


def _rows_of_kind(kinds: np.ndarray, kind: GoalKind) -> np.ndarray:
    """Indices of the rows whose goal is of ``kind``.

    Compares with the plain int value: numpy compares an ``IntEnum`` member several times slower.
    """
    return (kinds == kind.value).nonzero()[0]


def in_sector(vectors: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Whether each ``(N, 2)`` vector's angle lies in its direction's 90-degree sector.

    Sectors are half-open: behind [45, 135), left [135, 225), front [225, 315), right [315, 45).
    """
    angle = np.degrees(np.arctan2(vectors[:, 1], vectors[:, 0]))
    return (angle - (45.0 + 90.0 * directions)) % 360.0 < 90.0


def relation_holds(balls: np.ndarray, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ball ``a`` in direction ``d`` of ball ``b``: sector test and distance < 0.39 m.

    ``balls`` is ``(N, 5, 2)``; ``a``, ``b``, ``d`` are ``(N,)`` int arrays.
    """
    rows = np.arange(len(balls))
    offset = balls[rows, a] - balls[rows, b]
    near = np.hypot(offset[:, 0], offset[:, 1]) < RELATION_MAX_DISTANCE
    return near & in_sector(offset, d)


def condition_status(
    states: np.ndarray, goals: np.ndarray, initial_states: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-condition truth of each goal.

    Returns:
        ``(satisfied, used)``, both ``(N, 4)`` bool; ``used`` marks the goal's real conditions.
    """
    balls = _balls(states)
    goals = np.asarray(goals, dtype=np.int64).reshape(len(balls), -1)
    n = len(balls)
    satisfied = np.zeros((n, MAX_CONDITIONS), dtype=bool)
    used = np.zeros((n, MAX_CONDITIONS), dtype=bool)
    kind = goals[:, 0]

    rows = _rows_of_kind(kind, GoalKind.RELATIONS)
    for k in range(MAX_CLAUSES):
        clause_rows = rows[goals[rows, 1 + 3 * k] >= 0]  # the relations goals with a k-th clause
        if clause_rows.size:
            a, b, d = (goals[clause_rows, j + 3 * k] for j in (1, 2, 3))
            used[clause_rows, k] = True
            satisfied[clause_rows, k] = relation_holds(balls[clause_rows], a, b, d % 4)

    rows = _rows_of_kind(kind, GoalKind.MOVE)
    if rows.size:
        used[rows, 0] = True
        satisfied[rows, 0] = move_progress(balls[rows], goals[rows], _balls(initial_states)[rows]) >= (
            MOVE_MIN_DISPLACEMENT
        )

    rows = _rows_of_kind(kind, GoalKind.LINE_UP)
    if rows.size:
        steps = np.diff(balls[rows], axis=1)  # (R, 4, 2): red->blue, blue->green, ...
        angle = np.degrees(np.arctan2(steps[..., 1], steps[..., 0]))
        used[rows] = True
        satisfied[rows] = np.abs(angle) <= LINE_UP_MAX_ANGLE

    rows = _rows_of_kind(kind, GoalKind.GATHER)
    if rows.size:
        center = goals[rows, 1]
        others = np.array([[i for i in range(N_BALLS) if i != c] for c in center])
        gap = balls[rows[:, None], others] - balls[rows, center][:, None, :]
        used[rows] = True
        satisfied[rows] = np.hypot(gap[..., 0], gap[..., 1]) < GATHER_RADIUS

    return satisfied, used


def move_progress(balls: np.ndarray, goals: np.ndarray, initial_balls: np.ndarray) -> np.ndarray:
    """Displacement (m) of each MOVE goal's ball along its direction since the episode start."""
    rows = np.arange(len(balls))
    ball, direction = goals[:, 1], goals[:, 3]
    shift = balls[rows, ball] - initial_balls[rows, ball]
    return np.einsum("ij,ij->i", shift, DIRECTION_VECTORS[direction])


def is_success(states: np.ndarray, goals: np.ndarray, initial_states: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: every condition of the goal holds in the state."""
    satisfied, used = condition_status(states, goals, initial_states)
    return np.all(satisfied | ~used, axis=1)


def goal_distance(states: np.ndarray, goals: np.ndarray, initial_states: np.ndarray) -> np.ndarray:
    """Shaping distance (m) of single-condition goals; NaN for multi-condition goals.

    Relation: distance from ball ``a`` to the target point ``b + 0.195 * unit(d)``.
    Move: distance still to go, ``max(0, 0.15 - progress)``.
    """
    balls = _balls(states)
    goals = np.asarray(goals, dtype=np.int64).reshape(len(balls), -1)
    out = np.full(len(balls), np.nan)
    rows = _rows_of_kind(goals[:, 0], GoalKind.RELATIONS)
    rows = rows[goals[rows, 4] < 0]  # single-clause relations
    if rows.size:
        a, b, d = goals[rows, 1], goals[rows, 2], goals[rows, 3]
        target = balls[rows, b] + TARGET_OFFSET * DIRECTION_VECTORS[d]
        gap = balls[rows, a] - target
        out[rows] = np.hypot(gap[:, 0], gap[:, 1])
    rows = _rows_of_kind(goals[:, 0], GoalKind.MOVE)
    if rows.size:
        progress = move_progress(balls[rows], goals[rows], _balls(initial_states)[rows])
        out[rows] = np.maximum(0.0, MOVE_MIN_DISPLACEMENT - progress)
    return out


def transition_outcome(
    prev_states: np.ndarray,
    states: np.ndarray,
    goals: np.ndarray,
    initial_states: np.ndarray,
    mode: str = "dense",
) -> tuple[np.ndarray, np.ndarray]:
    """Reward and success of the transitions ``prev_states -> states``.

    Dense: 100 when the goal holds in ``states``; otherwise ``10 * (d_prev - d_curr)`` for
    single-condition goals (see :func:`goal_distance`) and ``10 * (conditions now - conditions
    before)`` for multi-condition goals. The success step carries the bonus alone, as in KALM's
    released data. Sparse: 1 when the goal holds in ``states``, else 0.

    Returns:
        ``(reward, success)``: ``(N,)`` float64 and ``(N,)`` bool.
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"reward mode {mode!r} is not one of {REWARD_MODES}")
    sat_now, used = condition_status(states, goals, initial_states)
    success = np.all(sat_now | ~used, axis=1)
    if mode == "sparse":
        return success.astype(np.float64), success
    d_prev = goal_distance(prev_states, goals, initial_states)
    d_now = goal_distance(states, goals, initial_states)
    single = ~np.isnan(d_now)
    reward = np.where(single, DENSE_SCALE * (d_prev - d_now), 0.0)
    multi = np.flatnonzero(~single)
    if multi.size:
        sat_prev, _ = condition_status(prev_states[multi], goals[multi], initial_states[multi])
        gained = sat_now[multi].sum(axis=1) - sat_prev.sum(axis=1)
        reward[multi] = CONDITION_REWARD * gained
    return np.where(success, SUCCESS_BONUS, reward), success


def compute_reward(
    prev_states: np.ndarray,
    states: np.ndarray,
    goals: np.ndarray,
    initial_states: np.ndarray,
    mode: str = "dense",
) -> np.ndarray:
    """``(N,)`` float64 reward of the transitions; see :func:`transition_outcome`."""
    return transition_outcome(prev_states, states, goals, initial_states, mode)[0]
