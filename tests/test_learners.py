"""Offline learners (kalm_rl): data mixing, discounting, learning, checkpoints and bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kalm.cli import main as kalm_main
from kalm.commands.train import parse_ratio
from kalm_envs.loader import load_transitions
from kalm_envs.minari_io import read_episodes, write_dataset
from kalm_envs.oracle import oracle_episodes
from kalm_envs.registration import ENV_IDS
from kalm_envs.text_encoders import HashedNgramEncoder
from kalm_rl.data import OfflineData
from kalm_rl.evaluation import RandomPolicy, evaluate_policy
from kalm_rl.learners import LEARNERS, make_learner
from kalm_rl.networks import td_target
from kalm_rl.policy import LearnerPolicy, load_policy, save_policy
from kalm_rl.trainer import CHECKPOINT_FILE, LOG_FILE, TrainConfig, best_file, train_policy
from tests.helpers import temporary_minari_root, write_cartpole_dataset

REAL = "kalm/test/real-v0"
IMAGINED = "kalm/test/imagined-v0"
NOISY = "kalm/test/noisy-v0"
FEW = "kalm/test/few-v0"
OTHER = "other/cartpole/test-v0"
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    """A Minari root with oracle episodes on train goals (the "real" data), a few oracle episodes
    on hard goals (standing in for imagined data), random-policy episodes (most end in a
    time-limit truncation) and a CartPole dataset."""
    path = tmp_path_factory.mktemp("minari")
    with temporary_minari_root(path):
        real = oracle_episodes("train", range(1000), epsilon=0.1, workers=2)
        write_dataset(REAL, real, ENV_IDS["train"], "oracle train", {}, (0.0, 1.0), "oracle")
        write_dataset(FEW, real[:500], ENV_IDS["train"], "500 oracle episodes", {}, (0.0, 1.0), "oracle")
        imagined = oracle_episodes("hard", range(10**6, 10**6 + 20), epsilon=0.1)
        write_dataset(IMAGINED, imagined, ENV_IDS["hard"], "stand-in", {}, (0.0, 1.0), "oracle")
        noisy = oracle_episodes("train", range(20), epsilon=1.0)
        write_dataset(NOISY, noisy, ENV_IDS["train"], "random", {}, (0.0, 1.0), "random")
        write_cartpole_dataset(OTHER)
        yield path


def test_td_target_bootstraps_through_truncations_only():
    rewards = torch.tensor([1.0, 0.5, 0.5])
    terminals = torch.tensor([1.0, 0.0, 0.0])  # a termination, a truncation, an ordinary step
    next_values = torch.tensor([10.0, 2.0, 4.0])
    expected = torch.tensor([1.0, 0.5 + 0.9 * 2.0, 0.5 + 0.9 * 4.0])
    assert torch.allclose(td_target(rewards, terminals, next_values, 0.9), expected)


def test_terminal_flags_are_terminations_not_truncations(root):
    with temporary_minari_root(root):
        transitions = load_transitions(NOISY)
    assert transitions.truncations.any() and transitions.terminations.any()
    data = OfflineData(transitions, [], HashedNgramEncoder())
    assert torch.equal(data.terminals.bool(), torch.as_tensor(transitions.terminations))
    assert not data.terminals[torch.as_tensor(transitions.truncations)].any()


@pytest.mark.parametrize("fraction, real_rows", [(0.5, 128), (0.75, 192)])
def test_batches_mix_real_and_imagined_as_asked(root, fraction, real_rows):
    with temporary_minari_root(root):
        transitions = load_transitions([REAL, IMAGINED])
    data = OfflineData(transitions, [1], HashedNgramEncoder(), real_fraction=fraction)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        batch = data.sample(256, generator)
        assert int((batch.sources == 0).sum()) == real_rows
        assert int((batch.sources == 1).sum()) == 256 - real_rows
    # far fewer imagined transitions than real ones, yet they fill their share of every batch
    assert len(data.imagined_rows) * 5 < len(data.real_rows)


def test_validation_split_holds_out_whole_episodes_of_each_group(root):
    with temporary_minari_root(root):
        data = OfflineData(load_transitions([REAL, IMAGINED]), [1], HashedNgramEncoder())
    train, held_out = data.split_episodes(0.1, seed=3)
    for rows in ("real_rows", "imagined_rows"):
        kept, held = getattr(train, rows), getattr(held_out, rows)
        assert len(kept) + len(held) == len(getattr(data, rows)) and len(held) > 0
        kept_episodes, held_episodes = set(data.episode_ids[kept].tolist()), set(data.episode_ids[held].tolist())
        assert not kept_episodes & held_episodes
        assert len(held_episodes) == round(0.1 * (len(kept_episodes) + len(held_episodes)))
    again, _ = data.split_episodes(0.1, seed=3)
    other, _ = data.split_episodes(0.1, seed=4)
    assert torch.equal(again.real_rows, train.real_rows) and not torch.equal(other.real_rows, train.real_rows)
    batch = held_out.sample(64, torch.Generator().manual_seed(0))
    assert (batch.sources == 1).sum() == 32  # the held-out batch keeps the 1:1 mix
    with pytest.raises(ValueError, match="fraction 1.0"):
        data.split_episodes(1.0, seed=0)


def test_successful_imagined_episodes_are_those_the_env_marked_successful(root, tmp_path):
    with temporary_minari_root(root):
        transitions = load_transitions([REAL, IMAGINED, NOISY])
        real, noisy = read_episodes(REAL)[:20], read_episodes(NOISY)
        stand_ins = read_episodes(IMAGINED) + noisy
    everything = OfflineData(transitions, [1, 2], HashedNgramEncoder())
    successful = OfflineData(transitions, [1, 2], HashedNgramEncoder(), imagined_episodes="successful")
    # the env's own success flags, recorded while collecting, against the predicates on stored states
    expected = sum(len(e.actions) for e in stand_ins if e.successes[-1])
    assert 0 < expected < len(everything.imagined_rows)
    assert len(successful.imagined_rows) == expected
    assert torch.equal(successful.real_rows, everything.real_rows)  # real data is never filtered
    kept = set(successful.episode_ids[successful.imagined_rows].tolist())
    assert all(bool(successful.rewards[successful.episode_ids == e].sum() > 0) for e in kept)

    with temporary_minari_root(tmp_path):
        write_dataset("kalm/test/some-real-v0", real, ENV_IDS["train"], "oracle", {}, (0.0, 1.0), "oracle")
        failures = [e for e in noisy if not e.successes[-1]]
        write_dataset("kalm/test/failures-v0", failures, ENV_IDS["train"], "failures", {}, (0.0, 1.0), "random")
        only_failures = load_transitions(["kalm/test/some-real-v0", "kalm/test/failures-v0"])
    with pytest.raises(ValueError, match="no imagined episode reaches its goal"):
        OfflineData(only_failures, [1], HashedNgramEncoder(), imagined_episodes="successful")
    with pytest.raises(ValueError, match="'succesful'"):
        OfflineData(transitions, [1, 2], HashedNgramEncoder(), imagined_episodes="succesful")


def test_final_push_keeps_the_push_that_reached_each_goal(root):
    """``final-push``: one row per successful imagined episode, its last, which the env marked as the
    step that met the goal; the real rows are untouched."""
    with temporary_minari_root(root):
        transitions = load_transitions([REAL, IMAGINED, NOISY])
        stand_ins = read_episodes(IMAGINED) + read_episodes(NOISY)
    final = OfflineData(transitions, [1, 2], HashedNgramEncoder(), imagined_episodes="final-push")
    successful = OfflineData(transitions, [1, 2], HashedNgramEncoder(), imagined_episodes="successful")
    reached = [e for e in stand_ins if e.successes[-1]]
    assert len(final.imagined_rows) == len(reached) < len(successful.imagined_rows)
    assert torch.equal(final.real_rows, successful.real_rows)
    rows = final.imagined_rows
    assert len(set(final.episode_ids[rows].tolist())) == len(rows)  # one row an episode
    assert bool(final.terminals[rows].all())  # each is the step the env ended at the goal
    assert sorted(final.actions[rows].tolist()) == sorted(int(e.actions[-1]) for e in reached)


def test_progress_keeps_the_pushes_that_bring_the_goal_closer(root):
    """``progress``: of the successful imagined episodes, exactly the pushes whose dense reward,
    recomputed from the stored states, is positive; each episode's goal-meeting push among them."""
    from kalm_envs.predicates import transition_outcome

    with temporary_minari_root(root):
        transitions = load_transitions([REAL, IMAGINED, NOISY])
    progress = OfflineData(transitions, [1, 2], HashedNgramEncoder(), imagined_episodes="progress")
    successful = OfflineData(transitions, [1, 2], HashedNgramEncoder(), imagined_episodes="successful")
    assert torch.equal(progress.real_rows, successful.real_rows)
    rows = successful.imagined_rows.numpy()
    firsts = {int(e): int(np.flatnonzero(transitions.episode_ids == e)[0]) for e in np.unique(transitions.episode_ids[rows])}
    initial = transitions.observations[[firsts[int(e)] for e in transitions.episode_ids[rows]]]
    reward, _ = transition_outcome(transitions.observations[rows], transitions.next_observations[rows],
                                   transitions.goals[rows], initial)
    assert progress.imagined_rows.tolist() == rows[reward > 0].tolist()
    assert 0 < len(progress.imagined_rows) < len(rows)  # the stand-ins' random pushes make some no progress
    goal_met = rows[transitions.terminations[rows]]
    assert len(goal_met) and set(goal_met.tolist()) <= set(progress.imagined_rows.tolist())


def test_validation_keeps_the_best_weights_and_select_picks_them(root, tmp_path):
    run = tmp_path / "run"
    summary = _train(root, run, "bc", updates=1500, validation_fraction=0.1, params={"hidden": [64]})
    log = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    assert all({"val_loss", "val_agreement"} <= record.keys() for record in log)
    lowest_loss = min(log, key=lambda record: record["val_loss"])["step"]
    highest_agreement = max(log, key=lambda record: record["val_agreement"])["step"]
    assert summary["best_steps"] == {"val_loss": lowest_loss, "val_agreement": highest_agreement}
    assert summary["selected_step"] == 1500
    with temporary_minari_root(root):
        assert 0.85 < summary["transitions"]["real"] / len(load_transitions(REAL)) < 0.95
    # a rerun may change only the selection: no training, the policy becomes the kept weights
    again = _train(root, run, "bc", updates=1500, validation_fraction=0.1, params={"hidden": [64]},
                   select="val_loss")
    assert again["updates_run"] == 0 and again["selected_step"] == lowest_loss
    policy = torch.load(run / "policy.pt", weights_only=True)["state_dict"]
    kept = torch.load(best_file(run, "val_loss"), weights_only=True)
    assert all(torch.equal(policy[k], kept[k]) for k in kept)
    final = torch.load(run / CHECKPOINT_FILE, weights_only=True)["learner"]
    assert (lowest_loss == 1500) == all(torch.equal(final[k], kept[k]) for k in kept)


def test_batch_rows_match_the_dataset(root):
    with temporary_minari_root(root):
        transitions = load_transitions(REAL)
    encoder = HashedNgramEncoder()
    data = OfflineData(transitions, [], encoder, reward_scale=0.5)
    rows = torch.tensor([0, 7, len(transitions) - 1])
    batch = data.batch(rows)
    texts = [transitions.instruction_texts[i] for i in rows]
    assert np.allclose(batch.inputs[:, 10:].numpy(), encoder.encode(texts))
    assert np.allclose(batch.next_inputs[:, :10].numpy() / 2.0, transitions.next_observations[rows])
    assert np.allclose(batch.rewards.numpy(), 0.5 * transitions.rewards[rows])


def test_batch_gathers_only_the_fields_a_learner_reads(root):
    with temporary_minari_root(root):
        data = OfflineData(load_transitions(REAL), [], HashedNgramEncoder())
    batch = data.sample(32, torch.Generator().manual_seed(0))
    make_learner("bc", data.input_dim, {}).update(batch)
    assert {"inputs", "actions"} <= vars(batch).keys()
    assert not {"next_states", "next_inputs", "rewards", "terminals"} & vars(batch).keys()


def _train(root: Path, output: Path, algorithm: str, updates: int, **overrides) -> dict:
    settings = {"datasets": [REAL], **overrides}
    config = TrainConfig(algorithm=algorithm, output=str(output), updates=updates, log_every=100,
                         checkpoint_every=500, **settings)
    with temporary_minari_root(root):
        return train_policy(config, progress=False)


@pytest.mark.parametrize("algorithm", sorted(LEARNERS))
def test_each_learner_learns_train_goals(root, tmp_path, algorithm):
    summary = _train(root, tmp_path / algorithm, algorithm, updates=3000)
    log = [json.loads(line) for line in (tmp_path / algorithm / LOG_FILE).read_text().splitlines()]
    assert len(log) == 30 and summary["updates_run"] == 3000
    first, last = log[0]["loss"], np.mean([r["loss"] for r in log[-3:]])
    assert last < 0.8 * first, (first, last)
    policy = load_policy(tmp_path / algorithm)
    learned = evaluate_policy(policy, "train", episodes=100, seed=1).success_rate
    random = evaluate_policy(RandomPolicy(seed=0), "train", episodes=100, seed=1).success_rate
    assert learned > random + 0.1, (learned, random)  # about 2 standard errors


def test_bc_on_a_few_hundred_oracle_episodes_beats_random_by_a_margin(root, tmp_path):
    # With the default (word-order-aware) encoding the policy knows which ball to move; with the
    # bag of n-grams it could not tell a goal from its swapped twin, and stayed near 65%.
    _train(root, tmp_path / "bc", "bc", updates=3000, datasets=[FEW])
    learned = evaluate_policy(load_policy(tmp_path / "bc"), "train", episodes=100, seed=2).success_rate
    random = evaluate_policy(RandomPolicy(seed=0), "train", episodes=100, seed=2).success_rate
    assert learned > random + 0.2, (learned, random)


@pytest.mark.parametrize("algorithm", ["bc", "cql"])
def test_bfloat16_updates_learn_like_float32(root, algorithm):
    with temporary_minari_root(root):
        data = OfflineData(load_transitions(REAL), [], HashedNgramEncoder())
    losses = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        # CQL's default alpha (4) makes its conservative term most of the loss, which falls slowly;
        # a small alpha leaves the TD term, whose fall in 300 updates is what this compares.
        params = {"hidden": [64, 64], "precision": precision, **({"alpha": 0.1} if algorithm == "cql" else {})}
        learner = make_learner(algorithm, data.input_dim, params)
        generator = torch.Generator().manual_seed(0)
        logs = [float(learner.update(data.sample(128, generator))["loss"]) for _ in range(300)]
        losses[precision] = (np.mean(logs[:20]), np.mean(logs[-20:]))
        assert all(p.dtype == torch.float32 for p in learner.parameters())  # master weights stay float32
    for first, last in losses.values():
        assert last < 0.9 * first, losses
    assert losses["bfloat16"][1] == pytest.approx(losses["float32"][1], rel=0.1), losses


def test_policy_round_trip_keeps_actions(root, tmp_path):
    with temporary_minari_root(root):
        transitions = load_transitions(REAL)
    data = OfflineData(transitions, [], HashedNgramEncoder())
    learner = make_learner("bcq", data.input_dim, {"hidden": [32]})
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        learner.update(data.sample(64, generator))
    save_policy(tmp_path, learner, HashedNgramEncoder(), temperature=0.0)
    observations = [{"observation": transitions.observations[i], "instruction": transitions.instruction_texts[i]}
                    for i in range(0, len(transitions), 97)]
    before = LearnerPolicy(learner, HashedNgramEncoder(), temperature=0.0).act_batch(observations)
    after = load_policy(tmp_path).act_batch(observations)
    assert np.array_equal(before, after) and len(set(before.tolist())) > 1


def test_resume_after_a_killed_run_matches_an_uninterrupted_one(root, tmp_path):
    """Kill ``kalm train`` after its first checkpoint; the rerun must end on the same weights."""
    args = ["--algorithm", "cql", "--datasets", REAL, "--updates", "1500", "--checkpoint-every", "300",
            "--param", "hidden=[64,64]", "--validation-fraction", "0.1", "--select", "val_loss", "--no-progress"]
    env = {"MINARI_DATASETS_PATH": str(root), "PATH": "/usr/bin:/bin"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "kalm.cli", "train", *args, "--output", str(killed)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / CHECKPOINT_FILE).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint_step = torch.load(killed / CHECKPOINT_FILE, weights_only=True)["step"]
    assert checkpoint_step < 1500 and not (killed / "policy.pt").exists()
    with temporary_minari_root(root):
        assert kalm_main(["train", *args, "--output", str(killed)]) == 0
        assert kalm_main(["train", *args, "--output", str(tmp_path / "straight")]) == 0
    resumed = torch.load(killed / "policy.pt", weights_only=True)["state_dict"]
    straight = torch.load(tmp_path / "straight" / "policy.pt", weights_only=True)["state_dict"]
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)
    steps = [json.loads(line)["step"] for line in (killed / LOG_FILE).read_text().splitlines()]
    assert steps == list(range(100, 1501, 100))  # no step logged twice, none missing


def test_a_finished_run_is_extended_not_redone(root, tmp_path):
    first = _train(root, tmp_path / "run", "bc", updates=200)
    again = _train(root, tmp_path / "run", "bc", updates=200)
    longer = _train(root, tmp_path / "run", "bc", updates=300, device="auto")  # the device may change
    assert (first["updates_run"], again["updates_run"], longer["updates_run"]) == (200, 0, 100)
    with pytest.raises(ValueError, match="seed"):
        _train(root, tmp_path / "run", "bc", updates=300, seed=1)


def test_bad_configuration_is_refused_with_its_name(root, tmp_path):
    with pytest.raises(ValueError, match="'dqn'"):
        _train(root, tmp_path / "a", "dqn", updates=10)
    with pytest.raises(ValueError, match="'alhpa'"):
        _train(root, tmp_path / "b", "cql", updates=10, params={"alhpa": 1.0})
    with pytest.raises(ValueError, match="1.5"):
        _train(root, tmp_path / "c", "bc", updates=10, imagined=[IMAGINED], real_fraction=1.5)
    with pytest.raises(ValueError, match=f"{OTHER}.*CartPole"):
        _train(root, tmp_path / "d", "bc", updates=10, imagined=[OTHER])
    with pytest.raises(ValueError, match="'fp8'"):
        _train(root, tmp_path / "f", "bc", updates=10, params={"precision": "fp8"})
    with pytest.raises(ValueError, match="gamma 1.5"):
        _train(root, tmp_path / "e", "iql", updates=10, params={"gamma": 1.5})
    with pytest.raises(ValueError, match="'val_loss' needs a validation fraction"):
        _train(root, tmp_path / "g", "bc", updates=10, select="val_loss")
    with pytest.raises(ValueError, match="'best'"):
        _train(root, tmp_path / "h", "bc", updates=10, validation_fraction=0.1, select="best")
    with pytest.raises(ValueError, match="validation fraction 1.2"):
        _train(root, tmp_path / "i", "bc", updates=10, validation_fraction=1.2)
    with pytest.raises(ValueError, match="imagined episodes 'some'"):
        _train(root, tmp_path / "l", "bc", updates=10, imagined=[IMAGINED], imagined_episodes="some")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        _train(root, tmp_path / "j", "bc", updates=10, device="gpu")
    with pytest.raises(ValueError, match="'cuda:64' is not available"):
        _train(root, tmp_path / "k", "bc", updates=10, device="cuda:64")
    assert not any((tmp_path / name).exists() for name in "abcdefghijkl")
    for ratio in ("0:1", "1:0", "-1:1", "a:b", "2"):
        with pytest.raises(Exception, match=ratio):
            parse_ratio(ratio)
    assert parse_ratio("3:1") == 0.75


def test_cli_trains_and_evaluates(root, tmp_path, capsys):
    out = tmp_path / "bc"
    with temporary_minari_root(root):
        code = kalm_main(["train", "--algorithm", "bc", "--datasets", REAL, "--imagined", IMAGINED,
                          "--ratio", "3:1", "--imagined-episodes", "successful", "--updates", "200", "--output", str(out),
                          "--no-progress", "--json"])
        assert code == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        imagined = read_episodes(IMAGINED)
    assert summary["config"]["real_fraction"] == 0.75 and summary["config"]["imagined_episodes"] == "successful"
    assert summary["transitions"]["imagined"] == sum(len(e.actions) for e in imagined if e.successes[-1])
    with temporary_minari_root(root):
        code = kalm_main(["evaluate", "--policy", str(out), "--levels", "easy", "--episodes", "5",
                          "--output", str(tmp_path / "eval"), "--json"])
        assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "bc" in report["methods"] and (tmp_path / "eval" / "evaluation.png").is_file()
    with temporary_minari_root(root):
        assert kalm_main(["train", "--algorithm", "sac", "--datasets", REAL, "--output", str(tmp_path / "x")]) == 2
    assert "'sac'" in capsys.readouterr().err
