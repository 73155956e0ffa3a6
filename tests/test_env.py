"""The Gymnasium environment: API conformance, determinism, options, bad input, pickling, render."""

import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import kalm_envs
from kalm_envs import ENV_IDS, EPISODE_STEPS, Goal
from kalm_envs.language import parse_instruction
from kalm_envs.predicates import MOVE_MIN_DISPLACEMENT
from tests.helpers import scene

IDS = list(ENV_IDS.values())
RED, BLUE = 0, 1
RIGHT = 3  # goal direction +x
PUSH_RIGHT, PUSH_LEFT, PUSH_RIGHT_BEHIND = 0, 2, 4  # action directions (1,0), (-1,0), (.8,.8)


def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    trace = [(obs["observation"].tobytes(), obs["instruction"], info["goal"].tobytes(), info["is_success"])]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs["observation"].tobytes(), reward, terminated, truncated, info["is_success"]))
        if terminated or truncated:
            obs, info = env.reset()
    return trace


@pytest.mark.parametrize("level", list(ENV_IDS))
def test_gymnasium_check_env(level):
    env = gym.make(ENV_IDS[level], render_mode="rgb_array")
    check_env(env.unwrapped)
    assert env.spec.max_episode_steps == 50 and EPISODE_STEPS[level] == (1 if level == "easy" else 50)
    assert env.action_space == gym.spaces.Discrete(40)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_episode(env_id):
    actions = np.random.default_rng(0).integers(40, size=60)
    first = rollout(gym.make(env_id), 7, actions)
    second = rollout(gym.make(env_id), 7, actions)
    assert first == second
    other = rollout(gym.make(env_id), 8, actions)
    assert first[0] != other[0]


@pytest.mark.parametrize("level", list(ENV_IDS))
def test_instructions_describe_the_goal_of_their_level(level):
    env = gym.make(ENV_IDS[level])
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        assert obs["instruction"] in env.observation_space["instruction"]
        assert parse_instruction(obs["instruction"]) == Goal.from_array(info["goal"])
        assert not info["is_success"]


def test_info_has_the_same_keys_at_reset_and_every_step():
    env = gym.make("KALM/CLEVRRobot-Hard-v0")
    _, info = env.reset(seed=3)
    keys = set(info)
    assert keys == {"goal", "is_success"}
    for _ in range(5):
        _, _, _, _, step_info = env.step(env.action_space.sample())
        assert set(step_info) == keys
        assert step_info["goal"].dtype == np.int64 and step_info["goal"].shape == (10,)
        np.testing.assert_array_equal(step_info["goal"], info["goal"])


def test_episode_truncates_at_50_steps_and_terminates_on_success():
    env = gym.make("KALM/CLEVRRobot-v0")
    # red must go left of blue; pushing cyan to the right never does that
    env.reset(seed=0, options={"goal": Goal.relation(0, 1, 1), "initial_state": scene(red=(0.3, 0.2), blue=(-0.2, 0.2))})
    steps = 0
    truncated = terminated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(4 * 8 + 0)
        steps += 1
    assert truncated and not terminated and steps == 50
    # red right next to blue's left side already: one push of red to the left reaches the goal
    env.reset(seed=0, options={"goal": Goal.relation(0, 1, 1), "initial_state": scene(red=(-0.2, 0.45), blue=(0.1, 0.2))})
    _, reward, terminated, truncated, info = env.step(0 * 8 + 3)  # push red in -y (front)
    assert terminated and info["is_success"] and reward == 100.0


def push_once(state, action):
    """One step of the easy env from a hand-made ``state`` with the goal "move red right" (+x):
    (terminated, truncated, is_success, red's displacement along +x in m, from the physics)."""
    env = gym.make(ENV_IDS["easy"])
    before, _ = env.reset(options={"goal": Goal.move(RED, RIGHT), "initial_state": state})
    after, _, terminated, truncated, info = env.step(action)
    shift = float(after["observation"][2 * RED] - before["observation"][2 * RED])
    return terminated, truncated, info["is_success"], shift


def test_easy_push_of_ball_a_along_the_axis_succeeds_in_one_step():
    terminated, truncated, success, shift = push_once(scene(red=(0.0, 0.2)), RED * 8 + PUSH_RIGHT)
    assert shift >= MOVE_MIN_DISPLACEMENT and success and terminated
    assert not truncated  # the one push ends the task: a terminal state, not a time limit


def test_easy_push_the_wrong_way_fails_and_still_ends_the_episode():
    terminated, truncated, success, shift = push_once(scene(red=(0.0, 0.2)), RED * 8 + PUSH_LEFT)
    assert shift < 0 and not success and terminated and not truncated


def test_easy_push_into_the_wall_fails():
    # red 0.03 m from the farthest its centre can go on the right (x = 0.47): the wall stops it
    terminated, truncated, success, shift = push_once(scene(red=(0.44, 0.2)), RED * 8 + PUSH_RIGHT)
    assert shift < MOVE_MIN_DISPLACEMENT and not success and terminated and not truncated


def test_easy_ball_a_moved_by_a_collision_succeeds():
    # blue, pushed right-and-behind, hits red lying 0.01 m away in that direction and carries it
    # along; the pusher itself never touches red
    red = np.array([-0.3, 0.0]) + 0.27 * np.array([1.0, 1.0]) / np.sqrt(2)
    terminated, truncated, success, shift = push_once(scene(blue=(-0.3, 0.0), red=tuple(red)), BLUE * 8 + PUSH_RIGHT_BEHIND)
    assert shift >= MOVE_MIN_DISPLACEMENT and success and terminated and not truncated


def test_easy_ids_in_a_fresh_process():
    code = (
        "import gymnasium as gym, kalm_envs\n"
        "env = gym.make('KALM/CLEVRRobot-Easy-v1')\n"
        "env.reset(seed=0)\n"
        "_, _, terminated, truncated, _ = env.step(0)\n"
        "assert terminated and not truncated\n"
        "try:\n"
        "    gym.make('KALM/CLEVRRobot-Easy-v0')\n"
        "except gym.error.DeprecatedEnv as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "KALM/CLEVRRobot-Easy-v1" in out.stdout and "v0" in out.stdout


def test_reset_options_goal_forms_instruction_and_initial_state():
    env = gym.make("KALM/CLEVRRobot-v0")
    state = scene(red=(-0.3, 0.2), blue=(0.0, 0.2))
    goal = Goal.relation(0, 1, 1)  # red left of blue: already true in that state
    for form in (goal, goal.to_array(), goal.to_kalm()):
        obs, info = env.reset(options={"goal": form, "instruction": "Anything you like, really.", "initial_state": state})
        assert Goal.from_array(info["goal"]) == goal
        assert obs["instruction"] == "Anything you like, really."
        np.testing.assert_allclose(obs["observation"], state, atol=1e-6)
        assert info["is_success"]  # judged on the state as given


def test_overlapping_recorded_states_are_accepted():
    env = gym.make("KALM/CLEVRRobot-v0")
    overlapping = scene(red=(0.0, 0.2), blue=(0.1, 0.2))
    obs, _ = env.reset(options={"initial_state": overlapping})
    np.testing.assert_allclose(obs["observation"], overlapping, atol=1e-6)
    obs, *_ = env.step(0)
    assert np.isfinite(obs["observation"]).all()


def test_sparse_reward_mode():
    env = gym.make("KALM/CLEVRRobot-v0", reward_mode="sparse")
    env.reset(seed=0, options={"goal": Goal.relation(0, 1, 1), "initial_state": scene(red=(-0.2, 0.45), blue=(0.1, 0.2))})
    _, reward, terminated, _, _ = env.step(3)
    assert terminated and reward == 1.0
    env.reset(seed=1)
    rewards = {env.step(a)[1] for a in range(3)}
    assert rewards <= {0.0, 1.0}


@pytest.mark.parametrize(
    "action, message",
    [(40, "out of range"), (-1, "out of range"), (1.5, "1.5"), ("3", "'3'"), (True, "True"), (np.array([1, 2]), r"array\(\[1, 2\]\)")],
)
def test_bad_actions(action, message):
    env = gym.make("KALM/CLEVRRobot-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"goal": [0, 0, 0, 1, -1, -1, -1, -1, -1, -1]}, "itself"),
        ({"goal": [1, 2, 3]}, "neither"),
        ({"initial_state": [np.nan] + [0.0] * 9}, "non-finite"),
        ({"initial_state": scene(red=(0.55, 0.2))}, r"balls \[0\] outside"),
        ({"initial_state": scene(cyan=(0.0, 0.65))}, r"balls \[4\] outside"),
        ({"initial_state": np.zeros(8)}, r"shape \(10,\)"),
        ({"instruction": "move the red ball ✓"}, "✓"),
        ({"instruction": 42}, "42"),
        ({"goals": None}, "goals"),
    ],
)
def test_bad_reset_options(options, message):
    env = gym.make("KALM/CLEVRRobot-v0")
    with pytest.raises(ValueError, match=message):
        env.reset(seed=0, options=options)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"level": "trian"}, "trian"), ({"reward_mode": "shaped"}, "shaped"), ({"render_mode": "human"}, "human"), ({"width": 0}, "width")],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kalm_envs.env.ClevrRobotEnv(**kwargs)


def test_pickled_env_continues_identically():
    env = gym.make("KALM/CLEVRRobot-Hard-v0", render_mode="rgb_array")
    env.reset(seed=5)
    env.render()
    env.step(3)
    clone = pickle.loads(pickle.dumps(env))
    for action in (10, 20, 33):
        a = env.step(action)
        b = clone.step(action)
        np.testing.assert_array_equal(a[0]["observation"], b[0]["observation"])
        assert a[1:4] == b[1:4]
    assert clone.render().shape == (64, 64, 3)


def test_render_frames():
    env = gym.make("KALM/CLEVRRobot-v0", render_mode="rgb_array", width=96, height=80)
    env.reset(seed=2)
    first = env.render()
    assert first.shape == (80, 96, 3) and first.dtype == np.uint8
    assert first.std() > 5  # not a blank frame
    for action in (0, 8, 16):
        env.step(action)
    assert np.abs(env.render().astype(int) - first).sum() > 0
    no_mode = gym.make("KALM/CLEVRRobot-v0")
    no_mode.reset(seed=2)
    assert no_mode.render() is None


def test_fresh_process_make_by_module_path_without_torch():
    code = (
        "import sys, gymnasium as gym\n"
        "env = gym.make('kalm_envs:KALM/CLEVRRobot-Hard-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert env.spec.max_episode_steps == 50\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(obs['instruction'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip()


def test_reset_never_jams_when_early_balls_block_the_box():
    # with seed 246 the first four balls leave no room for the fifth; placing it by rejection
    # alone looped forever, so the scene must be redrawn
    env = gym.make("KALM/CLEVRRobot-v0")
    for seed in (246, 1483, 1529):
        obs, _ = env.reset(seed=seed)
        balls = obs["observation"].reshape(5, 2)
        gaps = np.linalg.norm(balls[:, None] - balls[None], axis=2) + np.eye(5)
        assert gaps.min() >= 0.36 - 1e-6


def test_vector_env_carries_each_episodes_instruction():
    from kalm_envs.vector import make_vector_env

    vec = make_vector_env("hard", 2)
    try:
        obs, info = vec.reset(seed=[11, 12])
        for _ in range(3):
            obs, *_ , info = vec.step(np.array([0, 9]))
        singles = [gym.make(ENV_IDS["hard"]) for _ in range(2)]
        expected = []
        for single, seed, action in zip(singles, (11, 12), (0, 9), strict=True):
            single.reset(seed=seed)
            for _ in range(3):
                step = single.step(action)
            expected.append(step[0])
        assert list(obs["instruction"]) == [e["instruction"] for e in expected]
        np.testing.assert_array_equal(obs["observation"], np.stack([e["observation"] for e in expected]))
    finally:
        vec.close()
    with pytest.raises(ValueError, match="medium"):
        make_vector_env("medium", 2)
