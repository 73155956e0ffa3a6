"""The per-level evaluator, its policy adapters and ``kalm evaluate``."""

import json
import zlib

import gymnasium as gym
import numpy as np
import pytest
from kalm.cli import main
from kalm_envs import ENV_IDS, Goal
from kalm_envs.oracle import oracle_episodes
from kalm_envs.rollout import run_episode
from kalm_envs.wrappers import make_flat_env
from kalm_rl.evaluation import (
    EVAL_SEED,
    RandomPolicy,
    ScriptedOracleBaseline,
    conditions_met,
    evaluate_policies,
    evaluate_policy,
    markdown_table,
    write_report,
)
from kalm_rl.policy_adapters import flatten_observations, from_d3rlpy, from_sb3
from PIL import Image


class CountingPolicy:
    """Wraps a policy and records the size of every batch it is called with."""

    def __init__(self, policy):
        self.policy = policy
        self.batch_sizes = []

    def act_batch(self, observations):
        self.batch_sizes.append(len(observations))
        return self.policy.act_batch(observations)


class HashPolicy:
    """A deterministic policy of the observation alone: a push chosen by a hash of it."""

    def act_batch(self, observations):
        return np.array([zlib.crc32(o["observation"].tobytes() + o["instruction"].encode()) % 40
                         for o in observations])


def test_random_policy_repeats_for_the_same_seed():
    policy = RandomPolicy(seed=1)
    first = evaluate_policy(policy, "train", episodes=20, batch_envs=20)
    again = evaluate_policy(policy, "train", episodes=20, batch_envs=20)  # reseeded, not continued
    other = evaluate_policy(RandomPolicy(seed=2), "train", episodes=20, batch_envs=20)
    np.testing.assert_array_equal(first.lengths, again.lengths)
    assert not np.array_equal(first.lengths, other.lengths)


def test_results_are_deterministic_and_independent_of_batching():
    first = evaluate_policy(HashPolicy(), "easy", episodes=20, batch_envs=20)
    again = evaluate_policy(HashPolicy(), "easy", episodes=20, batch_envs=20)
    rebatched = evaluate_policy(HashPolicy(), "easy", episodes=20, batch_envs=7)
    for other in (again, rebatched):
        np.testing.assert_array_equal(first.successes, other.successes)
        np.testing.assert_array_equal(first.lengths, other.lengths)
        assert first.success_rate == other.success_rate
    np.testing.assert_array_equal(first.seeds, EVAL_SEED + np.arange(20))
    assert first.successes.dtype == bool and first.episodes == 20
    assert first.success_rate == pytest.approx(first.successes.mean())
    assert first.mean_length == pytest.approx(first.lengths.mean())
    assert set(first.success_by_family) == {"move"}
    shifted = evaluate_policy(HashPolicy(), "easy", episodes=20, seed=5, batch_envs=20)
    np.testing.assert_array_equal(shifted.seeds, EVAL_SEED + 5 + np.arange(20))


@pytest.mark.parametrize("level", ["train", "hard"])
def test_lockstep_batches_match_episodes_run_alone(level):
    policy = CountingPolicy(HashPolicy())
    result = evaluate_policy(policy, level, episodes=12, batch_envs=5)
    assert max(policy.batch_sizes) == 5 and min(policy.batch_sizes) >= 1
    env = gym.make(ENV_IDS[level])
    alone = [run_episode(env, lambda obs, info: int(policy.policy.act_batch([obs])[0]), int(s))
             for s in result.seeds]
    np.testing.assert_array_equal(result.successes, [e.success for e in alone])
    np.testing.assert_array_equal(result.lengths, [e.length for e in alone])
    families = {Goal.from_array(e.goal).family for e in alone}
    assert set(result.success_by_family) == families


def test_plain_callables_are_called_per_observation():
    seen = []

    def push_red_right(observation):
        seen.append(observation["instruction"])
        return 0

    result = evaluate_policy(push_red_right, "easy", episodes=4, batch_envs=2)
    assert len(seen) == result.lengths.sum() and all(isinstance(t, str) for t in seen)


@pytest.mark.parametrize("bad", [40, -1])
def test_out_of_range_actions_raise_naming_the_value(bad):
    with pytest.raises(ValueError, match=f"action {bad}"):
        evaluate_policy(lambda observation: bad, "easy", episodes=2)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="medium"):
        evaluate_policy(RandomPolicy(), "medium", episodes=2)
    with pytest.raises(ValueError, match="medium"):
        evaluate_policies({"random": [RandomPolicy()]}, ["easy", "medium"], episodes=2)
    with pytest.raises(ValueError, match="episodes"):
        evaluate_policies({"random": [RandomPolicy()]}, ["easy"], episodes=0)
    with pytest.raises(ValueError, match="2.5"):
        evaluate_policy(lambda observation: 2.5, "easy", episodes=1)


def test_groups_report_mean_and_standard_error_over_their_policies():
    policies = [RandomPolicy(seed=s) for s in (0, 1, 2)]
    report = evaluate_policies(
        {"random": policies, "single": [RandomPolicy(seed=9)]}, ["easy", "train"], episodes=10
    )
    for level in ("easy", "train"):
        row = report["methods"]["random"][level]
        rates = np.array(row["per_policy"])
        expected = [evaluate_policy(p, level, episodes=10).success_rate for p in policies]
        np.testing.assert_allclose(rates, expected)
        assert row["success_rate"] == pytest.approx(rates.mean())
        assert row["stderr"] == pytest.approx(rates.std(ddof=1) / np.sqrt(3))
        assert report["methods"]["single"][level]["stderr"] == 0.0
    assert report["levels"] == ["easy", "train"] and report["episodes"] == 10
    table = markdown_table(report)
    easy = report["methods"]["random"]["easy"]
    cell = f"{100 * easy['success_rate']:.1f} ± {100 * easy['stderr']:.1f}"
    assert table.splitlines()[0] == "| method | easy | train |"
    assert f"| random | {cell} |" in table


def test_scripted_oracle_runs_the_same_episodes_as_the_policies(tmp_path, capsys):
    oracle = ScriptedOracleBaseline(workers=1)
    result = oracle.evaluate_level("train", episodes=6, seed=3)
    policy_run = evaluate_policy(RandomPolicy(0), "train", episodes=6, seed=3)
    np.testing.assert_array_equal(result.seeds, policy_run.seeds)
    # the same goals: the oracle's own episodes of those seeds, reset by the evaluator's env
    episodes = oracle_episodes("train", result.seeds.tolist())
    assert result.successes.tolist() == [e.success for e in episodes]
    assert result.lengths.tolist() == [e.length for e in episodes]
    assert result.success_rate > policy_run.success_rate
    assert evaluate_policy(oracle, "train", episodes=6, seed=3).successes.tolist() == result.successes.tolist()
    np.testing.assert_array_equal(result.conditions_met[result.successes], 1.0)
    report = evaluate_policies({"random": [RandomPolicy(0)], oracle.label: [oracle]}, ["easy"], episodes=8)
    assert list(report["methods"]) == ["random", "scripted oracle"]
    assert report["methods"]["scripted oracle"]["easy"]["success_rate"] > 0.5
    argv = ["evaluate", "--baseline", "random", "--baseline", "oracle", "--levels", "easy",
            "--episodes", "8", "--output", str(tmp_path), "--json"]
    assert main(argv) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli["methods"]["scripted oracle"] == report["methods"]["scripted oracle"]
    with pytest.raises(ValueError, match="workers 0"):
        ScriptedOracleBaseline(workers=0)


def test_conditions_met_counts_the_share_of_a_goals_conditions():
    # red (0) left of blue (1) holds; green (2) behind cyan (4) does not: 1 of 2 conditions.
    state = np.array([-0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.0, 0.3])
    pair = Goal.relations([(0, 1, 1), (2, 4, 0)]).to_array()
    single = Goal.relation(0, 1, 1).to_array()
    met = conditions_met(np.stack([state, state]), np.stack([pair, single]), np.stack([state, state]))
    np.testing.assert_allclose(met, [0.5, 1.0])
    result = evaluate_policy(RandomPolicy(0), "hard", episodes=10)
    assert result.conditions_met.shape == (10,) and np.all((result.conditions_met >= 0) & (result.conditions_met <= 1))
    np.testing.assert_array_equal(result.conditions_met[result.successes], 1.0)
    assert set(result.conditions_by_family) == set(result.success_by_family)


def test_write_report_writes_json_markdown_and_png(tmp_path):
    report = evaluate_policies(
        {"a": [RandomPolicy(0), RandomPolicy(1)], "b": [RandomPolicy(2)]}, ["easy", "hard"], 4
    )
    paths = write_report(report, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "evaluation.json",
        "evaluation.md",
        "evaluation.png",
    ]
    assert json.loads(paths[0].read_text()) == report
    assert paths[1].read_text().strip() == markdown_table(report)
    with Image.open(paths[2]) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_cli_evaluates_baselines_and_needs_something_to_evaluate(tmp_path, capsys):
    output = tmp_path / "report"
    argv = ["evaluate", "--baseline", "random", "--levels", "easy", "--episodes", "10"]
    assert main([*argv, "--output", str(output), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["methods"]["random"]["easy"]["per_policy"][0] == pytest.approx(
        evaluate_policy(RandomPolicy(0), "easy", episodes=10).success_rate
    )
    assert lines[0] == "| method | easy |"
    assert {p.name for p in output.iterdir()} == {
        "evaluation.json",
        "evaluation.md",
        "evaluation.png",
    }
    assert main(["evaluate", "--levels", "easy", "--output", str(tmp_path / "none")]) == 2
    assert "--policy or --baseline" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_flattened_observations_match_the_flat_env_wrapper():
    env, flat = gym.make(ENV_IDS["hard"]), make_flat_env("hard")
    observation, _ = env.reset(seed=7)
    expected, _ = flat.reset(seed=7)
    got = flatten_observations([observation, observation], flat.encoder)
    assert got.shape == (2, 10 + flat.encoder.dim) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], expected)


def test_sb3_and_d3rlpy_adapters_run_through_the_evaluator():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", make_flat_env("easy"), device="cpu", seed=0)
    policy = from_sb3(model)
    result = evaluate_policy(policy, "easy", episodes=6, batch_envs=3)
    assert result.episodes == 6 and 0.0 <= result.success_rate <= 1.0
    unbatched = evaluate_policy(policy, "easy", episodes=6, batch_envs=1)
    np.testing.assert_array_equal(unbatched.successes, result.successes)
    observation, _ = gym.make(ENV_IDS["easy"]).reset(seed=0)
    assert 0 <= policy(observation) < 40

    class ConstantAlgo:
        def predict(self, batch):
            assert batch.dtype == np.float32 and batch.shape[1] == 10 + 512  # the ordered encoder
            return np.full(len(batch), 3)

    result = evaluate_policy(from_d3rlpy(ConstantAlgo()), "easy", episodes=4, batch_envs=4)
    assert result.episodes == 4
