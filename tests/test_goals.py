import numpy as np
import pytest

from kalm_envs.goals import (
    EASY_GOALS,
    GOAL_ARRAY_LEN,
    HARD_FAMILIES,
    TRAIN_GOALS,
    Goal,
    GoalKind,
    coerce_goal,
    move_has_room,
    relations_compatible,
    sample_goal,
    sample_hard_goal,
)

from tests.helpers import scene

ALL_KINDS = [
    Goal.relation(0, 1, 2),
    Goal.relations([(0, 1, 0), (2, 3, 1)]),
    Goal.relations([(0, 1, 0), (1, 2, 3), (3, 4, 2)]),
    Goal.move(4, 3),
    Goal.line_up(),
    Goal.gather(),
]


def test_goal_sets_have_the_design_sizes():
    assert len(TRAIN_GOALS) == 80 and len(set(TRAIN_GOALS)) == 80
    assert len(EASY_GOALS) == 20 and len(set(EASY_GOALS)) == 20


@pytest.mark.parametrize("goal", ALL_KINDS, ids=lambda g: g.family)
def test_array_round_trip(goal):
    array = goal.to_array()
    assert array.shape == (GOAL_ARRAY_LEN,) and array.dtype == np.int64
    assert Goal.from_array(array) == goal
    assert coerce_goal(array) == goal and coerce_goal(goal) is goal


def test_kalm_encoding_round_trips_every_train_goal():
    for goal in TRAIN_GOALS:
        kalm = goal.to_kalm()
        assert Goal.from_kalm(kalm) == goal == coerce_goal(kalm)
    # KALM: flag 1 = ball to move, 2 = reference, last entry direction (1 = left)
    assert Goal.from_kalm([0, 2, 0, 1, 0, 1]) == Goal.relation(3, 1, 1)


@pytest.mark.parametrize(
    "array, message",
    [
        ([0, 1, 1, 0, -1, -1, -1, -1, -1, -1], "itself"),
        ([0, 7, 1, 0, -1, -1, -1, -1, -1, -1], "7"),
        ([0, 0, 1, 9, -1, -1, -1, -1, -1, -1], "direction 9"),
        ([5, -1, -1, -1, -1, -1, -1, -1, -1, -1], "kind 5"),
        ([0, -1, -1, -1, 0, 1, 0, -1, -1, -1], "empty clause"),
        ([0, 0, 1, 0, 1, 0, 2, -1, -1, -1], "same two balls"),
        ([1, 0, 2, 0, -1, -1, -1, -1, -1, -1], "move goal"),
        ([2, 0, 1, 0, -1, -1, -1, -1, -1, -1], "line-up"),
        ([0.5, 0, 1, 0, -1, -1, -1, -1, -1, -1], "integers"),
    ],
)
def test_malformed_goal_arrays_are_rejected_with_the_reason(array, message):
    with pytest.raises(ValueError, match=message):
        Goal.from_array(np.array(array))


@pytest.mark.parametrize(
    "value, message",
    [
        ([1, 1, 0, 0, 0, 0], "exactly one 1 and one 2"),
        ([1, 2, 0, 0, 0, 4], "direction 4"),
        ([1, 2, 3], "neither"),
        ("red left of blue", "neither"),
    ],
)
def test_bad_kalm_or_unknown_goal_encodings(value, message):
    with pytest.raises(ValueError, match=message):
        coerce_goal(value)


def test_compatibility_rule():
    assert relations_compatible([(0, 1, 1), (2, 1, 3)])  # red left of blue, green right of blue
    assert not relations_compatible([(0, 1, 1), (2, 1, 1)])  # two balls in blue's left slot
    assert not relations_compatible([(0, 1, 1), (1, 2, 1), (2, 0, 1)])  # a cycle
    assert not relations_compatible([(0, 1, 1), (1, 0, 3)])  # the same pair, twice


def test_hard_goals_cover_every_family_and_are_compatible(rng):
    families = set()
    for _ in range(400):
        goal = sample_goal("hard", rng)
        families.add(goal.family)
        if goal.kind is GoalKind.RELATIONS:
            assert len(goal.clauses) in (2, 3) and relations_compatible(goal.clauses)
    assert families == set(HARD_FAMILIES)
    with pytest.raises(ValueError, match="quadruple"):
        sample_hard_goal(rng, "quadruple")


def test_sample_goal_rejects_unknown_level(rng):
    with pytest.raises(ValueError, match="medium"):
        sample_goal("medium", rng)


def test_move_room_respects_walls():
    near_right_wall = scene(red=(0.4, 0.2))
    assert not move_has_room(Goal.move(0, 3), near_right_wall)
    assert move_has_room(Goal.move(0, 1), near_right_wall)
    assert move_has_room(Goal.move(0, 0), scene(red=(0.0, 0.36)))
    assert not move_has_room(Goal.move(0, 0), scene(red=(0.0, 0.38)))
    assert move_has_room(Goal.relation(0, 1, 3), near_right_wall)
