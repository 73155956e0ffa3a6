"""Success predicates and rewards on hand-made configurations, and on KALM's released data."""

from pathlib import Path

import numpy as np
import pytest

from kalm_envs.goals import Goal
from kalm_envs.predicates import (
    GATHER_RADIUS,
    RELATION_MAX_DISTANCE,
    compute_reward,
    condition_status,
    is_success,
    transition_outcome,
)
from tests.helpers import scene

KALM_DATA = Path(__file__).resolve().parents[2] / "shared" / "external" / "kalm" / "clevr_robot.npy"


def holds(goal: Goal, state: np.ndarray, initial: np.ndarray | None = None) -> bool:
    initial = state if initial is None else initial
    return bool(is_success(state[None], goal.to_array()[None], initial[None])[0])


def polar(center, angle_deg, distance):
    rad = np.radians(angle_deg)
    return (center[0] + distance * np.cos(rad), center[1] + distance * np.sin(rad))


BLUE = (0.0, 0.2)
# (direction, first angle inside the sector, last angle inside, first angle after it)
SECTORS = [(0, 45.0, 134.99, 135.0), (1, 135.0, 224.99, 225.0), (2, 225.0, 314.99, 315.0), (3, 315.0, 404.99, 405.0)]


@pytest.mark.parametrize("direction, start, last, after", SECTORS)
def test_relation_sector_boundaries(direction, start, last, after):
    goal = Goal.relation(0, 1, direction)  # red <direction> blue
    for angle in (start, (start + after) / 2, last):
        assert holds(goal, scene(red=polar(BLUE, angle, 0.3), blue=BLUE)), angle
    for angle in (start - 0.01, after):
        assert not holds(goal, scene(red=polar(BLUE, angle, 0.3), blue=BLUE)), angle


@pytest.mark.parametrize("direction", range(4))
def test_relation_distance_threshold(direction):
    goal = Goal.relation(0, 1, direction)
    angle = 90.0 * (direction + 1)
    assert holds(goal, scene(red=polar(BLUE, angle, RELATION_MAX_DISTANCE - 1e-4), blue=BLUE))
    assert not holds(goal, scene(red=polar(BLUE, angle, RELATION_MAX_DISTANCE + 1e-4), blue=BLUE))


def test_directions_mean_behind_left_front_right():
    red_left_of_blue = scene(red=(-0.3, 0.2), blue=(0.0, 0.2))
    assert holds(Goal.relation(0, 1, 1), red_left_of_blue)  # red left of blue
    assert holds(Goal.relation(1, 0, 3), red_left_of_blue)  # blue right of red
    red_behind_blue = scene(red=(0.0, 0.5), blue=(0.0, 0.2))  # +y is behind
    assert holds(Goal.relation(0, 1, 0), red_behind_blue)
    assert holds(Goal.relation(1, 0, 2), red_behind_blue)


@pytest.mark.parametrize("direction, axis, sign", [(0, 1, 1), (1, 0, -1), (2, 1, -1), (3, 0, 1)])
def test_move_threshold(direction, axis, sign):
    goal = Goal.move(2, direction)
    start = scene(green=(0.0, 0.2))
    for shift, expected in ((0.1499, False), (0.1501, True), (-0.3, False)):
        moved = start.copy()
        moved[4 + axis] += sign * shift
        assert holds(goal, moved, start) is expected, shift


def line(angles_deg, spacing=0.3, start=(-0.45, 0.0)):
    points = [np.array(start)]
    for angle in angles_deg:
        points.append(points[-1] + spacing * np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))]))
    return np.concatenate(points)


def test_line_up_angles_and_order():
    goal = Goal.line_up()
    assert holds(goal, line([0, 0, 0, 0], spacing=0.22))
    assert holds(goal, line([40, -40, 40, -40]))
    assert holds(goal, line([59.99, -59.99, 0, 0]))
    assert not holds(goal, line([60.01, -30, 0, 0]))
    assert not holds(goal, line([0, 0, 0, 0], spacing=-0.22))  # right to left
    state = line([0, 0, 0, 0], spacing=0.22).reshape(5, 2)[[1, 0, 2, 3, 4]].ravel()
    assert not holds(goal, state)  # blue left of red


def test_gather_radius():
    goal = Goal.gather()  # around green
    center = np.array([0.0, 0.2])
    ring = [polar(center, a, GATHER_RADIUS - 1e-4) for a in (0, 90, 180, 270)]
    state = scene(green=tuple(center), red=ring[0], blue=ring[1], purple=ring[2], cyan=ring[3])
    assert holds(goal, state)
    state[0] = center[0] + GATHER_RADIUS + 1e-4  # red just outside
    assert not holds(goal, state)
    satisfied, used = condition_status(state[None], goal.to_array()[None], state[None])
    assert used.all() and satisfied.sum() == 3


def test_compound_needs_every_clause():
    goal = Goal.relations([(0, 1, 1), (2, 1, 3)])  # red left of blue, green right of blue
    both = scene(red=(-0.3, 0.2), blue=(0.0, 0.2), green=(0.3, 0.2))
    assert holds(goal, both)
    only_first = scene(red=(-0.3, 0.2), blue=(0.0, 0.2), green=(0.3, -0.1))
    assert not holds(goal, only_first)
    satisfied, used = condition_status(only_first[None], goal.to_array()[None], only_first[None])
    assert satisfied[0].tolist() == [True, False, False, False]
    assert used[0].tolist() == [True, True, False, False]


def test_batches_of_mixed_kinds_match_one_by_one(rng):
    goals = [Goal.relation(0, 1, 1), Goal.move(3, 0), Goal.line_up(), Goal.gather(), Goal.relations([(0, 1, 1), (2, 1, 3)])]
    states = rng.uniform(-0.4, 0.4, size=(200, 10))
    initial = rng.uniform(-0.4, 0.4, size=(200, 10))
    goal_arrays = np.stack([goals[i % len(goals)].to_array() for i in range(200)])
    batch = is_success(states, goal_arrays, initial)
    single = [is_success(states[i : i + 1], goal_arrays[i : i + 1], initial[i : i + 1])[0] for i in range(200)]
    assert batch.tolist() == single
    assert 0 < batch.sum() < 200
    rewards = compute_reward(initial, states, goal_arrays, initial)
    single_rewards = [compute_reward(initial[i : i + 1], states[i : i + 1], goal_arrays[i : i + 1], initial[i : i + 1])[0] for i in range(200)]
    np.testing.assert_allclose(rewards, single_rewards)


def test_dense_reward_is_progress_towards_the_target_point_and_100_on_success():
    goal = Goal.relation(0, 1, 3).to_array()[None]  # red right of blue: target = blue + (0.195, 0)
    far = scene(red=(-0.4, 0.2), blue=(0.0, 0.2))
    nearer = scene(red=(-0.3, 0.2), blue=(0.0, 0.2))
    reward, success = transition_outcome(far[None], nearer[None], goal, far[None])
    np.testing.assert_allclose(reward, [10 * 0.1])
    assert not success[0]
    done = scene(red=(0.3, 0.2), blue=(0.0, 0.2))
    reward, success = transition_outcome(nearer[None], done[None], goal, far[None])
    assert success[0] and reward[0] == 100.0
    sparse = compute_reward(far[None], np.stack([nearer, done]), np.repeat(goal, 2, 0), np.stack([far, far]), "sparse")
    assert sparse.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="'spares'"):
        compute_reward(far[None], done[None], goal, far[None], "spares")


def test_dense_reward_of_multi_condition_goals_counts_conditions():
    goal = Goal.relations([(0, 1, 1), (2, 1, 3)]).to_array()[None]
    none = scene(red=(0.4, 0.5), blue=(0.0, 0.2), green=(-0.4, -0.1))
    one = scene(red=(-0.3, 0.2), blue=(0.0, 0.2), green=(-0.4, -0.1))
    assert compute_reward(none[None], one[None], goal, none[None])[0] == 10.0
    assert compute_reward(one[None], none[None], goal, none[None])[0] == -10.0


def test_move_reward_is_progress_along_the_axis():
    goal = Goal.move(0, 3).to_array()[None]
    start = scene(red=(0.0, 0.2))
    step = scene(red=(0.1, 0.25))
    np.testing.assert_allclose(compute_reward(start[None], step[None], goal, start[None]), [1.0])


@pytest.fixture(scope="module")
def kalm_data():
    if not KALM_DATA.exists():
        pytest.fail(f"KALM's released data is missing at {KALM_DATA}")
    return np.load(KALM_DATA, allow_pickle=True).item()


def test_kalm_trajectories_end_in_success_by_our_predicates(kalm_data):
    masks, goals = kalm_data["masks"], kalm_data["goals"]
    finals = []
    for i in range(kalm_data["num_trajectories"]):
        length = int(masks[i].sum())
        goal = Goal.from_kalm(goals[i, 0]).to_array()
        ends = kalm_data["next_observations"][i, :length]
        success = is_success(ends, np.repeat(goal[None], length, 0), np.repeat(ends[:1], length, 0))
        assert not success[:-1].any(), f"trajectory {i} succeeds before its end"
        finals.append(success[-1])
    assert len(finals) == 80 and all(finals)
    assert int(masks.sum()) == 898


def test_dense_reward_reproduces_kalm_rewards(kalm_data):
    for i in range(kalm_data["num_trajectories"]):
        length = int(kalm_data["masks"][i].sum())
        goal = np.repeat(Goal.from_kalm(kalm_data["goals"][i, 0]).to_array()[None], length, 0)
        before = kalm_data["observations"][i, :length]
        after = kalm_data["next_observations"][i, :length]
        ours = compute_reward(before, after, goal, np.repeat(before[:1], length, 0))
        np.testing.assert_allclose(ours, kalm_data["rewards"][i, :length, 0], atol=1e-4)
