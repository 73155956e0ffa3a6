"""How well an instruction encoder tells goals apart, per goal level.

A policy sees a goal only through the embedding of its instruction, so two goals whose
instructions embed alike cannot be told apart by any policy. For one encoder and one level this
module embeds every wording of the level's goals (:func:`level_instructions`) and counts, over
those instructions:

- ``near_duplicates``: instructions within cosine ``threshold`` (0.99) of an instruction of
  another goal;
- ``closer_to_other``: instructions whose nearest instruction of another goal is closer (higher
  cosine) than the nearest other wording of their own goal;
- ``nearest_train_other`` (rephrase only, whose goals are the train goals in unseen wordings):
  instructions whose nearest train wording belongs to another goal, i.e. how badly the encoding
  carries to wordings never seen in training.

Goals are compared by meaning: a pair or triple of relations is the same goal in any clause
order. ``kalm separation`` prints the figures for several encoders side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from kalm_envs.goals import EASY_GOALS, LEVELS, TRAIN_GOALS, Goal, sample_hard_goal
from kalm_envs.language import instruction_variants
from kalm_envs.text_encoders import TextEncoder
from kalm_envs.validation import check_int, check_seed

NEAR_DUPLICATE_COSINE = 0.99
HARD_GOALS = 200
MAX_HARD_GOALS = 10_000  # the similarity matrices grow with the square of the wordings compared
MAX_WORDINGS = 40


@dataclass(frozen=True)
class Separation:
    """The figures of one encoder on one level (counts of instructions, see the module doc)."""

    level: str
    encoder: str
    instructions: int
    goals: int
    threshold: float
    near_duplicates: int
    closer_to_other: int
    nearest_train_other: int | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def goal_key(goal: Goal) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """A key equal for goals of the same meaning: the kind and the sorted clauses."""
    return int(goal.kind), tuple(sorted(goal.clauses))


def level_goals(level: str, hard_goals: int = HARD_GOALS, seed: int = 0) -> list[Goal]:
    """The goals of ``level``: all 80 (train, rephrase) or 20 (easy), or ``hard_goals`` distinct
    hard goals drawn with ``seed`` (line-up and gather are one goal each)."""
    if level in ("train", "rephrase"):
        return list(TRAIN_GOALS)
    if level == "easy":
        return list(EASY_GOALS)
    if level != "hard":
        raise ValueError(f"level {level!r} is not one of {LEVELS}")
    check_int(hard_goals, "hard_goals", 1, MAX_HARD_GOALS)
    rng = np.random.default_rng(check_seed(seed))
    goals: dict[tuple, Goal] = {}
    for _ in range(100 * hard_goals):
        goal = sample_hard_goal(rng)
        goals.setdefault(goal_key(goal), goal)
        if len(goals) == hard_goals:
            break
    return list(goals.values())


def level_instructions(
    level: str, hard_goals: int = HARD_GOALS, max_wordings: int = MAX_WORDINGS, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Wordings of the goals of ``level`` and, for each, ``(N,)`` int64 goal number.

    Every wording of each goal, or ``max_wordings`` of them drawn with ``seed`` where it has
    more. Goals of the same meaning get the same number.
    """
    if isinstance(max_wordings, bool) or not isinstance(max_wordings, int) or max_wordings < 1:
        raise ValueError(f"max_wordings {max_wordings!r} must be an integer >= 1")
    rng = np.random.default_rng(seed)
    numbers: dict[tuple, int] = {}
    texts: list[str] = []
    goal_numbers: list[int] = []
    for goal in level_goals(level, hard_goals, seed):
        number = numbers.setdefault(goal_key(goal), len(numbers))
        wordings = instruction_variants(goal, level)
        if len(wordings) > max_wordings:
            wordings = [wordings[i] for i in sorted(rng.choice(len(wordings), max_wordings, replace=False))]
        texts += wordings
        goal_numbers += [number] * len(wordings)
    return texts, np.asarray(goal_numbers, dtype=np.int64)


def _nearest(similarity: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(N,)`` highest similarity of each row over the columns where ``mask`` holds (-inf if none)."""
    return np.where(mask, similarity, -np.inf).max(axis=1)


def separation(
    encoder: TextEncoder,
    level: str,
    threshold: float = NEAR_DUPLICATE_COSINE,
    hard_goals: int = HARD_GOALS,
    max_wordings: int = MAX_WORDINGS,
    seed: int = 0,
) -> Separation:
    """The separation figures of ``encoder`` on ``level`` (see the module docstring)."""
    texts, goals = level_instructions(level, hard_goals, max_wordings, seed)
    vectors = encoder.encode(texts)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    same = goals[:, None] == goals[None, :]
    other = _nearest(similarity, ~same)
    own = _nearest(similarity, same)
    nearest_train_other = None
    if level == "rephrase":
        train_texts, train_goals = level_instructions("train", hard_goals, max_wordings, seed)
        nearest = np.argmax(vectors @ encoder.encode(train_texts).T, axis=1)
        nearest_train_other = int(np.sum(train_goals[nearest] != goals))
    return Separation(
        level=level,
        encoder=encoder.name,
        instructions=len(texts),
        goals=int(goals.max()) + 1,
        threshold=float(threshold),
        near_duplicates=int(np.sum(other >= threshold)),
        closer_to_other=int(np.sum(other > own)),
        nearest_train_other=nearest_train_other,
    )


def markdown_table(rows: Sequence[Separation]) -> str:
    """One line per (level, encoder): the counts, and their share of the level's instructions."""

    def cell(count: int | None, total: int) -> str:
        return "-" if count is None else f"{count} ({100 * count / total:.0f}%)"

    threshold = rows[0].threshold if rows else NEAR_DUPLICATE_COSINE
    lines = [
        f"| level | encoder | instructions | goals | within cos {threshold:g} of another goal | closer to "
        "another goal | nearest train wording of another goal |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.level} | {row.encoder} | {row.instructions} | {row.goals} | "
            f"{cell(row.near_duplicates, row.instructions)} | {cell(row.closer_to_other, row.instructions)} | "
            f"{cell(row.nearest_train_other, row.instructions)} |"
        )
    return "\n".join(lines)
