"""Success predicates and rewards of every goal kind, vectorised over batches.

This module is the single source of truth for goal semantics: the env, the oracle, the
imagined-rollout labeller and the evaluator all call it. Every function takes batches:

- ``states``: ``(N, 10)`` ball centres in metres (see :mod:`kalm_envs.physics`),
- ``goals``: ``(N, 10)`` int goal arrays (see :mod:`kalm_envs.goals`), or a :class:`GoalBatch` of
  them, decoded once for many evaluations (arrays are decoded on every call),
- ``initial_states``: ``(N, 10)`` ball centres at the start of each episode (used by MOVE goals).

A goal is a conjunction of at most :data:`MAX_CONDITIONS` conditions: the clauses of a relations
goal, the displacement of a move goal, the four consecutive pairs of a line-up, the four balls
around the centre of a gather. Angles are in degrees, counter-clockwise from +x.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kalm_envs.goals import DIRECTION_VECTORS, GOAL_ARRAY_LEN, MAX_CLAUSES, GoalKind
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
#: Row ``c``: the indices of the balls other than ``c``, shape (5, 4).
_OTHER_BALLS = np.array([[i for i in range(N_BALLS) if i != c] for c in range(N_BALLS)])


def _balls(states: np.ndarray) -> np.ndarray:
    return np.asarray(states, dtype=np.float64).reshape(-1, N_BALLS, 2)


def _rows_of_kind(kinds: np.ndarray, kind: GoalKind) -> np.ndarray:
    """Indices of the rows whose goal is of ``kind``.

    Compares with the plain int value: numpy compares an ``IntEnum`` member several times slower.
    """
    return (kinds == kind.value).nonzero()[0]


class GoalBatch:
    """A batch of goal arrays decoded once: the rows of each kind and the indices they read.

    Attributes:
        array: the ``(N, 10)`` int64 goal arrays.
        used: ``(N, 4)`` bool, the goals' real conditions (see :func:`condition_status`).
        relation_rows: rows of RELATIONS goals. Only when there are any: ``clause_present``,
            ``clause_a``, ``clause_b``, ``clause_d``, their ``(R, K)`` clauses, K up to the last
            clause any of them uses (absent ones read as balls 0, 0 and direction 3).
        single_rows: rows of single-clause RELATIONS goals. Only when there are any: ``single_a``,
            ``single_b``, their balls, and ``single_target_offset``, ``(S, 2)``, the dense-reward
            target point minus ball ``b``.
        move_rows: rows of MOVE goals; ``move_goals``: their goal arrays.
        line_up_rows: rows of LINE_UP goals.
        gather_rows: rows of GATHER goals; ``gather_center``: ``(G,)`` and ``gather_others``:
            ``(G, 4)`` ball indices.
    """

    def __init__(self, goals: np.ndarray) -> None:
        self.array = np.asarray(goals, dtype=np.int64).reshape(-1, GOAL_ARRAY_LEN)
        kinds = self.array[:, 0]
        self.used = np.zeros((len(self.array), MAX_CONDITIONS), dtype=bool)

        self.relation_rows = _rows_of_kind(kinds, GoalKind.RELATIONS)
        self.single_rows = self.relation_rows  # empty here unless narrowed by _decode_relations
        if self.relation_rows.size:
            self._decode_relations()

        self.move_rows = _rows_of_kind(kinds, GoalKind.MOVE)
        self.move_goals = self.array[self.move_rows]
        self.used[self.move_rows, 0] = True

        self.line_up_rows = _rows_of_kind(kinds, GoalKind.LINE_UP)
        self.used[self.line_up_rows] = True

        self.gather_rows = _rows_of_kind(kinds, GoalKind.GATHER)
        self.gather_center = self.array[self.gather_rows, 1]
        self.gather_others = _OTHER_BALLS[self.gather_center]
        self.used[self.gather_rows] = True

    def _decode_relations(self) -> None:
        """Set the single-clause and clause attributes of the (non-empty) ``relation_rows``."""
        clauses = self.array[self.relation_rows, 1:].reshape(-1, MAX_CLAUSES, 3)
        a, b, d = clauses.transpose(2, 0, 1)  # each (R, 3)
        single = a[:, 1] < 0
        self.single_rows = self.relation_rows[single]
        self.single_a, self.single_b = a[single, 0], b[single, 0]
        self.single_target_offset = TARGET_OFFSET * DIRECTION_VECTORS[d[single, 0]]
        present = a >= 0
        columns = np.flatnonzero(present.any(axis=0))
        n_clauses = columns[-1] + 1 if columns.size else 0
        present, a, b, d = (x[:, :n_clauses] for x in (present, a, b, d))
        self.clause_present = present
        self.clause_a, self.clause_b, self.clause_d = np.maximum(a, 0), np.maximum(b, 0), d % 4
        self.used[self.relation_rows, :n_clauses] = present

    def __len__(self) -> int:
        return len(self.array)


def _goal_batch(goals: np.ndarray | GoalBatch) -> GoalBatch:
    return goals if isinstance(goals, GoalBatch) else GoalBatch(goals)


def in_sector(vectors: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Whether each ``(..., 2)`` vector's angle lies in its direction's 90-degree sector.

    Sectors are half-open: behind [45, 135), left [135, 225), front [225, 315), right [315, 45).
    """
    angle = np.degrees(np.arctan2(vectors[..., 1], vectors[..., 0]))
    return (angle - (45.0 + 90.0 * directions)) % 360.0 < 90.0


def relation_holds(balls: np.ndarray, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ball ``a`` in direction ``d`` of ball ``b``: sector test and distance < 0.39 m.

    ``balls`` is ``(N, 5, 2)``; ``a``, ``b``, ``d`` are int arrays of shape ``(N,)``, or
    ``(N, K)`` for K relations per row.
    """
    rows = np.arange(len(balls)).reshape((-1,) + (1,) * (np.ndim(a) - 1))
    offset = balls[rows, a] - balls[rows, b]
    near = np.hypot(offset[..., 0], offset[..., 1]) < RELATION_MAX_DISTANCE
    return near & in_sector(offset, d)


def condition_status(
    states: np.ndarray, goals: np.ndarray | GoalBatch, initial_states: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-condition truth of each goal.

    Returns:
        ``(satisfied, used)``, both ``(N, 4)`` bool; ``used`` marks the goal's real conditions.
    """
    balls = _balls(states)
    goals = _goal_batch(goals)
    satisfied = np.zeros_like(goals.used)

    rows = goals.relation_rows
    if rows.size:
        holds = relation_holds(balls[rows], goals.clause_a, goals.clause_b, goals.clause_d)
        satisfied[rows, : holds.shape[1]] = goals.clause_present & holds

    rows = goals.move_rows
    if rows.size:
        progress = move_progress(balls[rows], goals.move_goals, _balls(initial_states)[rows])
        satisfied[rows, 0] = progress >= MOVE_MIN_DISPLACEMENT

    rows = goals.line_up_rows
    if rows.size:
        steps = np.diff(balls[rows], axis=1)  # (R, 4, 2): red->blue, blue->green, ...
        angle = np.degrees(np.arctan2(steps[..., 1], steps[..., 0]))
        satisfied[rows] = np.abs(angle) <= LINE_UP_MAX_ANGLE

    rows = goals.gather_rows
    if rows.size:
        center = balls[rows, goals.gather_center][:, None, :]
        gap = balls[rows[:, None], goals.gather_others] - center
        satisfied[rows] = np.hypot(gap[..., 0], gap[..., 1]) < GATHER_RADIUS

    return satisfied, goals.used.copy()


def move_progress(balls: np.ndarray, goals: np.ndarray, initial_balls: np.ndarray) -> np.ndarray:
    """Displacement (m) of each MOVE goal's ball along its direction since the episode start."""
    rows = np.arange(len(balls))
    ball, direction = goals[:, 1], goals[:, 3]
    shift = balls[rows, ball] - initial_balls[rows, ball]
    return np.einsum("ij,ij->i", shift, DIRECTION_VECTORS[direction])


def is_success(
    states: np.ndarray, goals: np.ndarray | GoalBatch, initial_states: np.ndarray
) -> np.ndarray:
    """``(N,)`` bool: every condition of the goal holds in the state."""
    satisfied, used = condition_status(states, goals, initial_states)
    return (satisfied | ~used).all(axis=1)


def goal_distance(
    states: np.ndarray, goals: np.ndarray | GoalBatch, initial_states: np.ndarray
) -> np.ndarray:
    """Shaping distance (m) of single-condition goals; NaN for multi-condition goals.

    Relation: distance from ball ``a`` to the target point ``b + 0.195 * unit(d)``.
    Move: distance still to go, ``max(0, 0.15 - progress)``.
    """
    balls = _balls(states)
    goals = _goal_batch(goals)
    out = np.full(len(goals), np.nan)
    rows = goals.single_rows
    if rows.size:
        target = balls[rows, goals.single_b] + goals.single_target_offset
        gap = balls[rows, goals.single_a] - target
        out[rows] = np.hypot(gap[:, 0], gap[:, 1])
    rows = goals.move_rows
    if rows.size:
        progress = move_progress(balls[rows], goals.move_goals, _balls(initial_states)[rows])
        out[rows] = np.maximum(0.0, MOVE_MIN_DISPLACEMENT - progress)
    return out


class GoalProgress(NamedTuple):
    """What the reward needs to know about a batch of states; see :func:`goal_progress`."""

    satisfied: np.ndarray  #: ``(N, 4)`` bool, see :func:`condition_status`
    used: np.ndarray  #: ``(N, 4)`` bool, the goal's real conditions
    distance: np.ndarray  #: ``(N,)`` float64, see :func:`goal_distance`

    @property
    def success(self) -> np.ndarray:
        """``(N,)`` bool: every condition of the goal holds."""
        return (self.satisfied | ~self.used).all(axis=1)


def goal_progress(
    states: np.ndarray, goals: np.ndarray | GoalBatch, initial_states: np.ndarray
) -> GoalProgress:
    """Condition status and shaping distance of each state towards its goal."""
    goals = _goal_batch(goals)
    satisfied, used = condition_status(states, goals, initial_states)
    return GoalProgress(satisfied, used, goal_distance(states, goals, initial_states))


def outcome_between(
    before: GoalProgress | None, after: GoalProgress, mode: str = "dense"
) -> tuple[np.ndarray, np.ndarray]:
    """Reward and success of transitions, from the progress before and after them.

    The rules are those of :func:`transition_outcome`, which is this function applied to
    :func:`goal_progress` of both ends. An env keeps the progress of its current state, so each of
    its steps evaluates the predicates once. ``before`` is not read (may be None) in sparse mode.

    Returns:
        ``(reward, success)``: ``(N,)`` float64 and ``(N,)`` bool.
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"reward mode {mode!r} is not one of {REWARD_MODES}")
    success = after.success
    if mode == "sparse":
        return success.astype(np.float64), success
    single = ~np.isnan(after.distance)
    gained = after.satisfied.sum(axis=1) - before.satisfied.sum(axis=1)
    reward = np.where(
        single, DENSE_SCALE * (before.distance - after.distance), CONDITION_REWARD * gained
    )
    return np.where(success, SUCCESS_BONUS, reward), success


def transition_outcome(
    prev_states: np.ndarray,
    states: np.ndarray,
    goals: np.ndarray | GoalBatch,
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
    goals = _goal_batch(goals)
    before = None if mode == "sparse" else goal_progress(prev_states, goals, initial_states)
    return outcome_between(before, goal_progress(states, goals, initial_states), mode)


def compute_reward(
    prev_states: np.ndarray,
    states: np.ndarray,
    goals: np.ndarray | GoalBatch,
    initial_states: np.ndarray,
    mode: str = "dense",
) -> np.ndarray:
    """``(N,)`` float64 reward of the transitions; see :func:`transition_outcome`."""
    return transition_outcome(prev_states, states, goals, initial_states, mode)[0]
