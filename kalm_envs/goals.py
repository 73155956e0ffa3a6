"""Structured goals of every level, their fixed-length array encoding, and goal sampling.

A goal is a :class:`Goal`: a :class:`GoalKind` plus up to three clauses ``(a, b, d)`` of ball
indices (0..4, colour order of :data:`kalm_envs.physics.COLORS`) and a direction index. Directions
are shared by every kind: 0 = behind / backward (+y), 1 = left (-x), 2 = in front / forward (-y),
3 = right (+x), which is also KALM's direction code.

Array encoding (``info["goal"]``): ``int64`` of shape ``(GOAL_ARRAY_LEN,) = (10,)``,
``[kind, a0, b0, d0, a1, b1, d1, a2, b2, d2]``, unused entries ``-1``.

| kind | clauses | meaning |
|---|---|---|
| RELATIONS | 1 (train, rephrase) or 2-3 (hard) | ball ``a`` is in direction ``d`` of ball ``b`` |
| MOVE | 1, ``b = -1`` | ball ``a`` moves at least 0.15 m in direction ``d`` (easy) |
| LINE_UP | 0 | balls red..cyan in a row, left to right (hard) |
| GATHER | 1, ``(center, -1, -1)`` | the other balls around ball ``center`` (hard; green) |
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kalm_envs.physics import BALL_X_LIMITS, BALL_Y_LIMITS, COLORS, N_BALLS
from kalm_envs.validation import InvalidTypeError, check_numbers

LEVELS: tuple[str, ...] = ("train", "rephrase", "easy", "hard")
DIRECTION_NAMES: tuple[str, ...] = ("behind", "left", "front", "right")
#: Unit vector of each direction index, shape (4, 2).
DIRECTION_VECTORS = np.array([(0.0, 1.0), (-1.0, 0.0), (0.0, -1.0), (1.0, 0.0)])
N_DIRECTIONS = len(DIRECTION_NAMES)
MAX_CLAUSES = 3
GOAL_ARRAY_LEN = 1 + 3 * MAX_CLAUSES
GATHER_CENTER = COLORS.index("green")
HARD_FAMILIES: tuple[str, ...] = ("pair", "triple", "line_up", "gather")
#: The goal families (:attr:`Goal.family`) of each level.
LEVEL_FAMILIES: dict[str, tuple[str, ...]] = {
    "train": ("relation",),
    "rephrase": ("relation",),
    "easy": ("move",),
    "hard": HARD_FAMILIES,
}
#: Room (m) a move goal's ball must have between its start and the wall: 0.15 asked + 0.05 slack.
MOVE_ROOM = 0.2


class GoalKind(enum.IntEnum):
    """What a goal asks for; the first entry of the goal array."""

    RELATIONS = 0
    MOVE = 1
    LINE_UP = 2
    GATHER = 3


Clause = tuple[int, int, int]


@dataclass(frozen=True)
class Goal:
    """A validated structured goal. Build with the class methods or :meth:`from_array`."""

    kind: GoalKind
    clauses: tuple[Clause, ...] = ()

    def __post_init__(self) -> None:
        clauses = _clauses(self.clauses)
        _validate(self.kind, clauses)
        object.__setattr__(self, "clauses", clauses)  # Python ints, whatever integer type came in

    @property
    def one_push(self) -> bool:
        """Whether the goal is judged after a single push (MOVE goals, as in KALM and
        ImagineBench): its episode *terminates* after that push, met or not, so there is no
        later state to bootstrap a value from."""
        return self.kind is GoalKind.MOVE

    @classmethod
    def relation(cls, a: int, b: int, direction: int) -> Goal:
        """Ball ``a`` in ``direction`` of ball ``b`` (train and rephrase levels)."""
        return cls(GoalKind.RELATIONS, ((a, b, direction),))

    @classmethod
    def relations(cls, clauses: Sequence[Clause]) -> Goal:
        """Several relations that must hold at once (hard level pairs and triples)."""
        return cls(GoalKind.RELATIONS, clauses)

    @classmethod
    def move(cls, ball: int, direction: int) -> Goal:
        """Move ``ball`` at least 0.15 m in ``direction`` (easy level)."""
        return cls(GoalKind.MOVE, ((ball, -1, direction),))

    @classmethod
    def line_up(cls) -> Goal:
        """Red, blue, green, purple, cyan in a row from left to right (hard level)."""
        return cls(GoalKind.LINE_UP)

    @classmethod
    def gather(cls, center: int = GATHER_CENTER) -> Goal:
        """Every other ball close to ``center`` (hard level)."""
        return cls(GoalKind.GATHER, ((center, -1, -1),))

    @property
    def family(self) -> str:
        """Short family name: relation, pair, triple, move, line_up or gather."""
        if self.kind is GoalKind.RELATIONS:
            return ("relation", "pair", "triple")[len(self.clauses) - 1]
        return self.kind.name.lower()

    def to_array(self) -> np.ndarray:
        """The ``(10,)`` int64 array encoding described in the module docstring."""
        array = np.full(GOAL_ARRAY_LEN, -1, dtype=np.int64)
        array[0] = self.kind
        for i, clause in enumerate(self.clauses):
            array[1 + 3 * i : 4 + 3 * i] = clause
        return array

    @classmethod
    def from_array(cls, array: np.ndarray | Sequence[int]) -> Goal:
        """Decode a ``(10,)`` goal array; ``ValueError`` names what is malformed."""
        values = check_numbers(array, "goal array")
        if values.shape != (GOAL_ARRAY_LEN,):
            raise ValueError(f"goal array must have shape ({GOAL_ARRAY_LEN},), got {values.shape}")
        if not np.issubdtype(values.dtype, np.integer):
            if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
                raise ValueError(f"goal array must hold integers, got {values.tolist()}")
        values = values.astype(np.int64)
        if values[0] not in set(GoalKind):
            raise ValueError(f"goal kind {values[0]} is not one of {[int(k) for k in GoalKind]}")
        kind = GoalKind(int(values[0]))
        triples = values[1:].reshape(MAX_CLAUSES, 3)
        used = [i for i in range(MAX_CLAUSES) if np.any(triples[i] != -1)]
        if used != list(range(len(used))):
            raise ValueError(f"goal array {values.tolist()} has an empty clause before a used one")
        try:
            return cls(kind, tuple(tuple(int(v) for v in triples[i]) for i in used))
        except ValueError as error:
            raise ValueError(f"goal array {values.tolist()}: {error}") from error

    @classmethod
    def from_kalm(cls, kalm_goal: np.ndarray | Sequence[float]) -> Goal:
        """Convert KALM's 6-number goal (5 ball flags, then direction) to a relation goal.

        Flags: 1 = the ball to move (``a``), 2 = the reference ball (``b``), 0 = other balls.
        """
        values = check_numbers(kalm_goal, "KALM goal").astype(np.float64)
        if values.shape != (N_BALLS + 1,):
            raise ValueError(f"a KALM goal has shape ({N_BALLS + 1},), got {values.shape}")
        flags, direction = values[:N_BALLS], values[N_BALLS]
        moved, reference = np.flatnonzero(flags == 1), np.flatnonzero(flags == 2)
        if len(moved) != 1 or len(reference) != 1 or np.count_nonzero(flags) != 2:
            raise ValueError(
                f"KALM goal flags {flags.tolist()} must hold exactly one 1 and one 2, rest 0"
            )
        if direction not in range(N_DIRECTIONS):
            raise ValueError(f"KALM goal direction {direction} is not one of 0..3")
        return cls.relation(int(moved[0]), int(reference[0]), int(direction))

    def to_kalm(self) -> np.ndarray:
        """KALM's ``(6,)`` float32 encoding; only single-relation goals have one."""
        if self.family != "relation":
            raise ValueError(f"only single-relation goals have a KALM encoding, not {self}")
        a, b, d = self.clauses[0]
        out = np.zeros(N_BALLS + 1, dtype=np.float32)
        out[a], out[b], out[N_BALLS] = 1, 2, d
        return out


def _clauses(clauses: Any) -> tuple[Clause, ...]:
    """``clauses`` as a tuple of ``(a, b, direction)`` tuples of Python ints; ``InvalidTypeError``
    naming a clause that is not three integers (Python or numpy; never bool or float)."""
    if isinstance(clauses, str | bytes) or not isinstance(clauses, Sequence):
        raise InvalidTypeError(f"goal clauses {clauses!r} must be a sequence of (a, b, direction) clauses")
    out = []
    for clause in clauses:
        if isinstance(clause, str | bytes) or not isinstance(clause, Sequence | np.ndarray) or len(clause) != 3:
            raise ValueError(f"goal clause {clause!r} must be (a, b, direction)")
        for value in clause:
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                raise InvalidTypeError(
                    f"goal clause {tuple(clause)!r} holds {value!r} ({type(value).__name__}), not an integer"
                )
        out.append(tuple(int(v) for v in clause))
    return tuple(out)


def _check_ball(value: int, what: str) -> None:
    if not 0 <= value < N_BALLS:
        raise ValueError(f"{what} {value} is not a ball index 0..{N_BALLS - 1}")


def _check_direction(value: int) -> None:
    if not 0 <= value < N_DIRECTIONS:
        raise ValueError(f"direction {value} is not one of 0..{N_DIRECTIONS - 1}")


def _validate(kind: GoalKind, clauses: tuple[Clause, ...]) -> None:
    if not isinstance(kind, GoalKind):
        raise ValueError(f"goal kind {kind!r} is not a GoalKind")
    if kind is GoalKind.RELATIONS:
        if not 1 <= len(clauses) <= MAX_CLAUSES:
            raise ValueError(f"a relations goal needs 1..{MAX_CLAUSES} clauses, got {len(clauses)}")
        for a, b, d in clauses:
            _check_ball(a, "ball")
            _check_ball(b, "reference ball")
            _check_direction(d)
            if a == b:
                raise ValueError(f"relation clause {(a, b, d)} relates ball {a} to itself")
        pairs = [frozenset(c[:2]) for c in clauses]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"relation clauses {clauses} relate the same two balls twice")
    elif kind is GoalKind.MOVE:
        if len(clauses) != 1 or clauses[0][1] != -1:
            raise ValueError(f"a move goal has one clause (ball, -1, direction), got {clauses}")
        _check_ball(clauses[0][0], "ball")
        _check_direction(clauses[0][2])
    elif kind is GoalKind.LINE_UP:
        if clauses:
            raise ValueError(f"a line-up goal has no clauses, got {clauses}")
    elif kind is GoalKind.GATHER:
        if len(clauses) != 1 or clauses[0][1:] != (-1, -1):
            raise ValueError(f"a gather goal has one clause (center, -1, -1), got {clauses}")
        _check_ball(clauses[0][0], "center ball")


def coerce_goal(goal: Goal | np.ndarray | Sequence[int]) -> Goal:
    """Accept a :class:`Goal`, our ``(10,)`` array, or KALM's ``(6,)`` array (of numbers)."""
    if isinstance(goal, Goal):
        return goal
    try:
        values = check_numbers(goal, "goal")
    except InvalidTypeError:
        raise InvalidTypeError(f"goal {goal!r} is neither a Goal nor an array of numbers") from None
    if values.ndim == 1 and values.shape[0] == N_BALLS + 1:
        return Goal.from_kalm(values)
    if values.ndim == 1 and values.shape[0] == GOAL_ARRAY_LEN:
        return Goal.from_array(values)
    raise ValueError(
        f"goal {goal!r} is neither a Goal, a ({GOAL_ARRAY_LEN},) goal array nor KALM's "
        f"({N_BALLS + 1},) encoding"
    )


#: The 80 train (and rephrase) goals: 20 ordered ball pairs x 4 directions.
TRAIN_GOALS: tuple[Goal, ...] = tuple(
    Goal.relation(a, b, d)
    for a, b in itertools.permutations(range(N_BALLS), 2)
    for d in range(N_DIRECTIONS)
)
#: The 20 easy goals: 5 balls x 4 directions.
EASY_GOALS: tuple[Goal, ...] = tuple(
    Goal.move(ball, d) for ball in range(N_BALLS) for d in range(N_DIRECTIONS)
)


def _opposite(direction: int) -> int:
    return (direction + 2) % N_DIRECTIONS


def relations_compatible(clauses: Sequence[Clause]) -> bool:
    """Whether relation clauses can hold together by construction.

    Accepted sets form a forest over the balls (no pair twice, no cycle), and every ball has at
    most one neighbour per direction. Such a set lays out on a square lattice without two balls
    in one cell, so a scene that satisfies all of it exists on the table (at most 3 clauses).
    """
    slots: set[tuple[int, int]] = set()
    parent = list(range(N_BALLS))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b, d in clauses:
        for slot in ((b, d), (a, _opposite(d))):
            if slot in slots:
                return False
            slots.add(slot)
        ra, rb = root(a), root(b)
        if ra == rb:
            return False
        parent[ra] = rb
    return True


def sample_hard_goal(rng: np.random.Generator, family: str | None = None) -> Goal:
    """Draw a hard goal: family uniform over :data:`HARD_FAMILIES` unless given."""
    if family is None:
        family = HARD_FAMILIES[rng.integers(len(HARD_FAMILIES))]
    if family == "line_up":
        return Goal.line_up()
    if family == "gather":
        return Goal.gather()
    if family not in ("pair", "triple"):
        raise ValueError(f"hard goal family {family!r} is not one of {HARD_FAMILIES}")
    n_clauses = 2 if family == "pair" else 3
    while True:
        picks = rng.choice(len(TRAIN_GOALS), size=n_clauses, replace=False)
        clauses = [TRAIN_GOALS[i].clauses[0] for i in picks]
        if relations_compatible(clauses):
            return Goal.relations(clauses)


def move_has_room(goal: Goal, state: np.ndarray) -> bool:
    """Whether a MOVE goal's ball, at the ``(10,)`` ``state``, has room to travel before a wall.

    Other goal kinds always have room. The env draws easy goals only where this holds.
    """
    if goal.kind is not GoalKind.MOVE:
        return True
    ball, _, direction = goal.clauses[0]
    x, y = state[2 * ball], state[2 * ball + 1]
    room = (BALL_Y_LIMITS[1] - y, x - BALL_X_LIMITS[0], y - BALL_Y_LIMITS[0], BALL_X_LIMITS[1] - x)
    return bool(room[direction] >= MOVE_ROOM)


def sample_goal(level: str, rng: np.random.Generator) -> Goal:
    """Draw one goal of ``level`` (train, rephrase, easy or hard) with ``rng``."""
    if level in ("train", "rephrase"):
        return TRAIN_GOALS[rng.integers(len(TRAIN_GOALS))]
    if level == "easy":
        return EASY_GOALS[rng.integers(len(EASY_GOALS))]
    if level == "hard":
        return sample_hard_goal(rng)
    raise ValueError(f"goal level {level!r} is not one of {LEVELS}")
