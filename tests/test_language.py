"""Tests of instruction rendering and parsing (kalm_envs.language)."""

from __future__ import annotations

import numpy as np
import pytest

from kalm_envs.goals import EASY_GOALS, TRAIN_GOALS, Goal, sample_hard_goal
from kalm_envs.language import (
    DIRECTION_PHRASES,
    INSTRUCTION_CHARSET,
    MAX_INSTRUCTION_LENGTH,
    REPHRASE_TEMPLATES,
    TRAIN_TEMPLATES,
    instruction_variants,
    parse_instruction,
    render_instruction,
    template_counts,
    validate_instruction,
)
from kalm_envs.physics import COLORS

MINIMUM_COUNTS = {
    "train": 18,
    "rephrase": 40,
    "easy": 20,
    "hard/pair": 10,
    "hard/triple": 10,
    "hard/line_up": 10,
    "hard/gather": 10,
}


def _hard_goals() -> list[Goal]:
    rng = np.random.default_rng(1234)
    goals = [sample_hard_goal(rng, family) for family in ("pair", "triple") for _ in range(40)]
    return goals + [Goal.line_up()] + [Goal.gather(center) for center in range(len(COLORS))]


#: (level, goals of that level): every train and easy goal, many hard goals of every family.
LEVEL_GOALS = [
    ("train", list(TRAIN_GOALS)),
    ("rephrase", list(TRAIN_GOALS)),
    ("easy", list(EASY_GOALS)),
    ("hard", _hard_goals()),
]


def test_template_counts_meet_minimums() -> None:
    counts = template_counts()
    assert set(counts) == set(MINIMUM_COUNTS)
    for key, minimum in MINIMUM_COUNTS.items():
        assert counts[key] >= minimum, key


def test_rephrase_templates_disjoint_from_train() -> None:
    normalized = {" ".join(t.lower().split()) for t in TRAIN_TEMPLATES}
    assert not normalized & {" ".join(t.lower().split()) for t in REPHRASE_TEMPLATES}
    for goal in TRAIN_GOALS:
        train = {t.lower() for t in instruction_variants(goal, "train")}
        rephrase = {t.lower() for t in instruction_variants(goal, "rephrase")}
        assert not train & rephrase, goal


def test_direction_phrases_are_unambiguous() -> None:
    for name, table in DIRECTION_PHRASES.items():
        assert len(table) == 4, name
        phrases = [phrase for synonyms in table for phrase in synonyms]
        assert len(phrases) == len(set(phrases)), name


@pytest.mark.parametrize(("level", "goals"), LEVEL_GOALS, ids=[lvl for lvl, _ in LEVEL_GOALS])
def test_every_rendering_parses_back(level: str, goals: list[Goal]) -> None:
    counts = template_counts()
    for goal in goals:
        variants = instruction_variants(goal, level)
        key = level if level != "hard" else f"hard/{goal.family}"
        # every template contributes at least one text of its own
        assert len(variants) >= counts[key]
        for text in variants:
            assert parse_instruction(text) == goal, text


@pytest.mark.parametrize(("level", "goals"), LEVEL_GOALS, ids=[lvl for lvl, _ in LEVEL_GOALS])
def test_every_rendering_is_valid(level: str, goals: list[Goal]) -> None:
    for goal in goals:
        for text in instruction_variants(goal, level):
            assert validate_instruction(text) == text
            assert len(text) <= MAX_INSTRUCTION_LENGTH
            assert text[0].isupper() and text[-1] in ".?", text


@pytest.mark.parametrize(("level", "goals"), LEVEL_GOALS, ids=[lvl for lvl, _ in LEVEL_GOALS])
def test_render_draws_from_variants(level: str, goals: list[Goal]) -> None:
    rng = np.random.default_rng(7)
    for goal in goals[:10]:
        variants = set(instruction_variants(goal, level))
        for _ in range(20):
            assert render_instruction(goal, level, rng) in variants


def test_render_is_deterministic_and_varied() -> None:
    goal = Goal.relation(0, 1, 3)
    for level in ("train", "rephrase"):
        first = [render_instruction(goal, level, np.random.default_rng(s)) for s in range(30)]
        again = [render_instruction(goal, level, np.random.default_rng(s)) for s in range(30)]
        assert first == again
        assert len(set(first)) >= 10
    hard = Goal.relations([(0, 1, 3), (2, 3, 0)])
    texts = {render_instruction(hard, "hard", np.random.default_rng(s)) for s in range(30)}
    assert len(texts) >= 10


def test_render_covers_every_template_uniformly() -> None:
    rng = np.random.default_rng(0)
    goal = Goal.move(2, 1)
    texts = [render_instruction(goal, "easy", rng) for _ in range(2000)]
    seen = {parse_instruction(t) for t in texts}
    assert seen == {goal}
    assert len(set(texts)) == len(instruction_variants(goal, "easy"))


def test_validate_rejects_bad_characters_and_length() -> None:
    with pytest.raises(ValueError, match="✓"):
        validate_instruction("move the red ball ✓")
    with pytest.raises(ValueError, match="300"):
        validate_instruction("a" * 300)
    assert validate_instruction("Move the red ball (a bit) left; ok?") == (
        "Move the red ball (a bit) left; ok?"
    )
    assert set(INSTRUCTION_CHARSET) >= set(" .,;:!?'-()")


def test_render_rejects_unknown_level_and_wrong_goal() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="trian"):
        render_instruction(TRAIN_GOALS[0], "trian", rng)
    wrong = [
        (EASY_GOALS[0], "train"),
        (EASY_GOALS[0], "rephrase"),
        (TRAIN_GOALS[0], "easy"),
        (TRAIN_GOALS[0], "hard"),
        (Goal.line_up(), "train"),
        (Goal.relations([(0, 1, 0), (2, 3, 1)]), "rephrase"),
        (Goal.gather(), "easy"),
    ]
    for goal, level in wrong:
        with pytest.raises(ValueError, match=level):
            render_instruction(goal, level, rng)


def test_parse_rejects_unrelated_and_invalid_text() -> None:
    assert parse_instruction("make me a sandwich") is None
    assert parse_instruction("") is None
    assert parse_instruction("Put the red ball behind the red ball.") is None
    assert parse_instruction("Put the orange ball behind the red ball.") is None


def test_parse_tolerates_case_whitespace_and_final_period() -> None:
    goal = Goal.relation(0, 1, 2)
    assert parse_instruction("Put the red ball in front of the blue ball.") == goal
    for text in (
        "put the red ball in front of the blue ball",
        "PUT THE RED BALL IN FRONT OF THE BLUE BALL..",
        "  Put the Red ball   in front of the Blue ball. \n",
    ):
        assert parse_instruction(text) == goal, text
    assert parse_instruction("could you huddle the other balls around the green ball") == (
        Goal.gather()
    )
    assert parse_instruction("Move the cyan ball to the left!") == Goal.move(4, 1)
