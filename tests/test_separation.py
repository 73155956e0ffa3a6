"""The default instruction encoding tells goals apart (kalm_envs.separation, kalm separation)."""

import json

import numpy as np
import pytest

from kalm.cli import main
from kalm_envs.goals import EASY_GOALS, TRAIN_GOALS, Goal, sample_hard_goal
from kalm_envs.language import instruction_variants
from kalm_envs.separation import goal_key, level_goals, level_instructions, separation
from kalm_envs.text_encoders import (
    DEFAULT_ENCODER,
    HashedNgramEncoder,
    OrderedNgramEncoder,
    encoder_from_config,
    make_encoder,
)


def _swapped(goal: Goal, clause: int) -> Goal:
    """``goal`` with the two balls of one relation clause exchanged."""
    clauses = list(goal.clauses)
    a, b, direction = clauses[clause]
    clauses[clause] = (b, a, direction)
    return Goal(goal.kind, tuple(clauses))


def _swapped_pairs(level: str) -> list[tuple[Goal, Goal]]:
    """Pairs of goals of ``level`` that differ only by which ball is which."""
    if level in ("train", "rephrase"):
        return [(goal, _swapped(goal, 0)) for goal in TRAIN_GOALS]
    if level == "easy":  # one ball: the same move of every other ball
        return [(g, h) for g in EASY_GOALS for h in EASY_GOALS
                if g.clauses[0][2] == h.clauses[0][2] and g.clauses[0][0] < h.clauses[0][0]]
    rng = np.random.default_rng(0)
    goals = [sample_hard_goal(rng, family) for family in ("pair", "triple") for _ in range(15)]
    return [(goal, _swapped(goal, k)) for goal in goals for k in range(len(goal.clauses))]


# Highest cosine allowed between the two wordings of a swapped pair (the bag of n-grams gives 1.0
# on train, rephrase and hard). A hard wording is two or three clauses long and the swap touches
# one of them, so most of its features are shared: 0.9968 is its worst case, 0.936 train's.
MAX_SWAPPED_COSINE = {"train": 0.99, "rephrase": 0.99, "easy": 0.99, "hard": 0.998}


@pytest.mark.parametrize("level", sorted(MAX_SWAPPED_COSINE))
def test_default_encoding_separates_every_swapped_pair_of_goals(level):
    encoder = make_encoder(DEFAULT_ENCODER)
    for goal, swapped in _swapped_pairs(level):
        # instruction_variants enumerates templates and phrases in the same order for both goals,
        # so row i of one is row i of the other with the balls exchanged.
        texts, swapped_texts = instruction_variants(goal, level), instruction_variants(swapped, level)
        assert len(texts) == len(swapped_texts)
        cosines = np.sum(encoder.encode(texts) * encoder.encode(swapped_texts), axis=1)
        worst = int(np.argmax(cosines))
        assert cosines[worst] < MAX_SWAPPED_COSINE[level], (texts[worst], swapped_texts[worst], cosines[worst])


def test_the_bag_of_ngrams_cannot_separate_swapped_goals():
    # The reason the default changed: the old default gives a swapped pair the same vector.
    encoder = HashedNgramEncoder()
    same = encoder.encode(["Push the red ball to the left of the blue ball.",
                           "Push the blue ball to the left of the red ball."])
    assert float(same[0] @ same[1]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("level", ["train", "rephrase", "easy"])
def test_separation_counts_no_near_duplicates_for_the_default(level):
    ordered = separation(make_encoder(DEFAULT_ENCODER), level, max_wordings=10)
    hashed = separation(make_encoder("hashed"), level, max_wordings=10)
    assert ordered.near_duplicates == 0
    assert ordered.goals == len(level_goals(level))
    if level != "easy":  # one ball per easy goal: nothing to swap, and the bag of n-grams copes
        assert hashed.near_duplicates > ordered.instructions // 10
    assert (ordered.nearest_train_other is None) == (level != "rephrase")


def test_level_instructions_number_goals_by_meaning():
    pair = Goal.relations([(0, 1, 1), (2, 3, 0)])
    assert goal_key(pair) == goal_key(Goal.relations([(2, 3, 0), (0, 1, 1)]))
    texts, numbers = level_instructions("hard", hard_goals=30, max_wordings=3)
    assert len(texts) == len(numbers) and numbers.max() + 1 == 30
    hard = level_goals("hard", 30)
    assert len({goal_key(g) for g in hard}) == 30 and {g.family for g in hard} >= {"pair", "triple"}
    with pytest.raises(ValueError, match="max_wordings 0"):
        level_instructions("train", max_wordings=0)
    with pytest.raises(ValueError, match="'medium'"):
        level_goals("medium")


def test_ordered_encoder_config_round_trip_and_bad_arguments():
    encoder = OrderedNgramEncoder(dim=64, pair_window=3)
    rebuilt = encoder_from_config(json.loads(json.dumps(encoder.config())))
    text = ["Slide the green ball behind the cyan ball."]
    np.testing.assert_array_equal(rebuilt.encode(text), encoder.encode(text))
    assert rebuilt.pair_features("a b c d e") == ["p:a>b", "p:a>c", "p:a>d", "p:b>c", "p:b>d", "p:b>e",
                                                  "p:c>d", "p:c>e", "p:d>e"]
    for bad in ({"pair_window": 0}, {"pair_window": 2.5}, {"pair_weight": float("nan")}, {"pair_weight": 0}):
        with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
            OrderedNgramEncoder(**bad)


def test_cli_prints_the_table_per_level_and_encoder(capsys):
    assert main(["separation", "--levels", "train", "easy", "--max-wordings", "5", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(lines[-1])["rows"]
    assert [(r["level"], r["encoder"]) for r in rows] == [
        ("train", "ordered"), ("train", "hashed"), ("easy", "ordered"), ("easy", "hashed")]
    assert lines[0].startswith("| level | encoder |")
    assert main(["separation", "--threshold", "2"]) == 2
    assert "--threshold 2" in capsys.readouterr().err
