"""Imagined rollouts (kalm_gen.imagine), imagined datasets, imagination quality and their commands.

Everything runs on the tiny random test LM. Models with "rigged" heads (the state head's last
layer set to a constant change) make the generated states predictable, so stopping at success,
at the step limit and at invalid states can be checked exactly.
"""

from __future__ import annotations

import argparse
import copy
import json

import minari
import numpy as np
import pytest
import torch

from kalm.commands import imagine as imagine_command
from kalm.commands import imagine_eval as imagine_eval_command
from kalm_envs.collector import build_dataset
from kalm_envs.dataset_specs import get_spec, imagined_temperature, list_specs, published_id
from kalm_envs.goals import Goal
from kalm_envs.language import instruction_variants
from kalm_envs.minari_io import read_episodes, read_metadata
from kalm_envs.oracle import oracle_episodes
from kalm_envs.predicates import is_success, transition_outcome
from kalm_envs.replay import label_audit
from kalm_envs.verify import verify_dataset
from kalm_gen.grounded_lm import GroundedLM, GroundedLMConfig, to_tensors
from kalm_gen.imagine import (
    ImaginedEpisode,
    act_in_simulator,
    imagine_rollouts,
    imagine_rollouts_no_cache,
    imagine_tasks,
    level_tasks,
    state_valid,
)
from kalm_gen.imagine_dataset import model_checksum, write_imagined_dataset
from kalm_gen.quality import (
    EXPLANATION_KEYS,
    QUALITY_SEED,
    ROLLOUT_KEYS,
    explain_episodes,
    replay_rollouts,
    rollout_quality,
    score_explanations,
)
from kalm_gen.grounding_data import collate_examples
from kalm_gen.sequences import explain_sequence
from kalm_gen.train import GroundingObjective
from kalm_gen.tiny import make_tiny_lm
from tests.helpers import scene, temporary_minari_root

RED, BLUE, GREEN, CYAN = 0, 1, 2, 4
BEHIND, LEFT, RIGHT = 0, 1, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm")


@pytest.fixture(scope="module")
def model(tiny_dir):
    """A tiny LM with an unbounded (delta) state head, which :func:`rigged` can drive anywhere."""
    return GroundedLM.from_config(GroundedLMConfig(base_model=str(tiny_dir), finetune="full", head_hidden=32,
                                                   state_head="delta"))


def rigged(model: GroundedLM, change: list[float]) -> GroundedLM:
    """A copy whose state head always predicts ``change`` (units of STATE_SCALE, i.e. 0.1 m)."""
    copy_ = copy.deepcopy(model)
    last = copy_.state_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(change, dtype=torch.float32))
    return copy_


def drift(dx: float) -> list[float]:
    """Red ball moves ``dx`` * 0.1 m along +x per step, nothing else moves."""
    return [dx] + [0.0] * 9


@pytest.fixture(scope="module")
def easy_tasks():
    return level_tasks("easy", 6, 0)


@pytest.fixture(scope="module")
def rephrase_tasks():
    return level_tasks("rephrase", 6, 0)


# --- generation -------------------------------------------------------------------------------


def test_level_tasks_follow_the_env(easy_tasks):
    import gymnasium as gym

    from kalm_envs import ENV_IDS

    env = gym.make(ENV_IDS["easy"])
    observation, info = env.reset(seed=3)
    assert easy_tasks.instructions[3] == observation["instruction"]
    assert np.array_equal(easy_tasks.goals[3], info["goal"])
    assert np.array_equal(easy_tasks.initial_states[3], observation["observation"])
    assert easy_tasks.seeds.tolist() == list(range(6))


def test_cache_and_no_cache_give_identical_greedy_rollouts(model, rephrase_tasks):
    args = (model, rephrase_tasks.goals, rephrase_tasks.instructions, rephrase_tasks.initial_states, "rephrase")
    cached = imagine_rollouts(*args, batch_size=4)  # two batches; rows leave the batch as they end
    plain = imagine_rollouts_no_cache(*args, batch_size=4)
    single = imagine_rollouts(*args, batch_size=1)  # no padding at all
    assert {e.length for e in cached} != {50}, "the random model should end some rollouts early"
    for a, b, c in zip(cached, plain, single, strict=True):
        assert isinstance(a, ImaginedEpisode) and a.length <= 50
        assert np.array_equal(a.actions, b.actions) and np.array_equal(a.actions, c.actions)
        assert a.invalid_step == b.invalid_step == c.invalid_step
        # same sums in a different order: float32 rounding only
        np.testing.assert_allclose(a.observations, b.observations, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.observations, c.observations, rtol=0, atol=1e-6)
    # forced to the step limit and sampled: still the same, and independent of the batch size
    forced = dict(max_steps=12, stop_early=False, temperature=1.0, seed=7)
    a_runs = imagine_rollouts(*args, batch_size=4, **forced)
    b_runs = imagine_rollouts_no_cache(*args, batch_size=6, **forced)
    assert all(e.length == 12 for e in a_runs)
    assert [e.actions.tolist() for e in a_runs] == [e.actions.tolist() for e in b_runs]
    other_seed = imagine_rollouts(*args, batch_size=4, **{**forced, "seed": 8})
    assert [e.actions.tolist() for e in a_runs] != [e.actions.tolist() for e in other_seed]


def test_rollouts_stop_at_success_step_limit_and_invalid_states(model):
    """Red drifts 0.02 m to the right per step: 'red right of blue' holds from step 11 on; a goal
    about unmoved balls never holds, so red leaves the workbench (x > 0.6) at step 41, or, started
    further left, the rollout runs into the 50-step limit."""
    start = scene(red=(-0.21, 0.2), blue=(0.0, 0.2))
    far_left = scene(red=(-0.55, 0.2), blue=(0.0, 0.2))
    reach = Goal.relation(RED, BLUE, RIGHT)
    never = Goal.relation(GREEN, CYAN, BEHIND)
    goals = [reach, never, never]
    instructions = ["Put the red ball right of the blue ball.", "Put the green ball behind the cyan ball.",
                    "Put the green ball behind the cyan ball."]
    states = np.stack([start, start, far_left]).astype(np.float32)
    assert not is_success(states, np.stack([g.to_array() for g in goals]), states).any()
    lm = rigged(model, drift(0.2))
    for generate in (imagine_rollouts, imagine_rollouts_no_cache):
        success, invalid, limit = generate(lm, goals, instructions, states, "rephrase", batch_size=3, seeds=[5, 6, 7])
        assert success.length == 11 and success.success and not success.invalid
        assert success.terminations.tolist() == [False] * 10 + [True] and not success.truncations.any()
        assert success.rewards[-1] == 100.0 and success.seed == 5
        assert invalid.length == 40 and invalid.invalid_step == 41 and not invalid.success
        assert invalid.truncations.tolist() == [False] * 39 + [True] and not invalid.terminations.any()
        assert invalid.invalid_state[0] > 0.6 and state_valid(invalid.observations).all()
        assert limit.length == 50 and not limit.invalid and limit.truncations[-1] and not limit.terminations.any()
        np.testing.assert_allclose(success.observations[:, 0], -0.21 + 0.02 * np.arange(12), atol=1e-5)
        for episode in (success, invalid, limit):
            n = episode.length
            goal = np.repeat(episode.goal[None], n + 1, axis=0)
            initial = np.repeat(episode.observations[:1], n + 1, axis=0)
            rewards, done = transition_outcome(episode.observations[:-1], episode.observations[1:], goal[1:], initial[1:])
            assert np.array_equal(rewards, episode.rewards)
            assert np.array_equal(done, episode.terminations)
            assert np.array_equal(is_success(episode.observations, goal, initial), episode.successes)


def test_easy_rollouts_stop_after_one_push(model):
    """Red drifts 0.16 m to the right per step: after the one step of an easy rollout, "move red
    right" holds; every rollout ends there, terminated as in the env, met or not."""
    goals = [Goal.move(RED, RIGHT), Goal.move(RED, LEFT), Goal.move(BLUE, RIGHT)]
    instructions = ["Push the red ball to the right.", "Push the red ball to the left.", "Push the blue ball to the right."]
    states = np.stack([scene(red=(0.0, 0.2), blue=(-0.3, 0.2))] * 3).astype(np.float32)
    reached, wrong_way, other_ball = imagine_rollouts(rigged(model, drift(1.6)), goals, instructions, states, "easy")
    assert [e.length for e in (reached, wrong_way, other_ball)] == [1, 1, 1]
    assert reached.success and reached.terminations.tolist() == [True] and not reached.truncations.any()
    for episode in (wrong_way, other_ball):
        assert not episode.success and episode.terminations.tolist() == [True] and not episode.truncations.any()
    with pytest.raises(ValueError, match=r"max_steps 2 must lie in \[1, 1\], the most steps of an episode of the easy level"):
        imagine_rollouts(model, goals, instructions, states, "easy", max_steps=2)


def test_non_finite_states_are_flagged(model, easy_tasks):
    episodes = imagine_rollouts(rigged(model, [float("nan")] * 10), easy_tasks.goals, easy_tasks.instructions,
                                easy_tasks.initial_states, "easy")
    assert all(e.invalid_step == 1 and e.length == 0 and np.isnan(e.invalid_state).all() for e in episodes)
    assert state_valid(np.array([[0.0] * 10, [np.inf] + [0.0] * 9, [0.0, 0.71] + [0.0] * 8,
                                 [-0.6, -0.3, 0.6, 0.7] + [0.0] * 6])).tolist() == [True, False, False, True]


def test_bad_generation_input(model, easy_tasks):
    args = (model, easy_tasks.goals, easy_tasks.instructions, easy_tasks.initial_states)
    with pytest.raises(ValueError, match="hrad"):
        imagine_rollouts(*args, "hrad")
    with pytest.raises(ValueError, match="hrad"):
        level_tasks("hrad", 3, 0)
    with pytest.raises(ValueError, match="counts differ"):
        imagine_rollouts(model, easy_tasks.goals, easy_tasks.instructions[:2], easy_tasks.initial_states, "easy")
    with pytest.raises(ValueError, match=r"max_steps 2 must lie in \[1, 1\]"):
        imagine_rollouts(*args, "easy", max_steps=2)
    with pytest.raises(ValueError, match=r"max_steps 51 must lie in \[1, 50\]"):
        imagine_rollouts(*args, "rephrase", max_steps=51)


# --- datasets ---------------------------------------------------------------------------------


def test_imagined_specs_build_from_the_published_model(tmp_path, monkeypatch, capsys):
    """Each imagined spec names a published model (v2: the one-relation goal-first model on
    rephrase and easy, the clause-list model with the relational push model on hard);
    ``kalm datasets build`` imagines it with that model (the real SmolLM2 with the shipped
    adapter), verified, and a second build is identical; the simulator's builder and a bad model
    name are refused with what to do."""
    from kalm.cli import main
    from kalm_envs.minari_io import read_packed
    from kalm_gen.published import DEFAULT_MODEL, published_models

    assert DEFAULT_MODEL in published_models()
    specs = list_specs()
    models = {"rephrase": "kalm-smollm2-goal-v0", "easy": "kalm-smollm2-goal-v0", "hard": "kalm-smollm2-relational-v0"}
    for level, model in models.items():
        spec = specs[published_id("imagined", level)]
        assert spec.source == "imagined" and spec.level == level and spec.model == model in published_models()
        assert f"kalm datasets build {spec.id}" in spec.card() and model in spec.card()
    assert specs["kalm/clevr-robot/oracle-easy-v1"].source == "oracle" and not specs["kalm/clevr-robot/oracle-easy-v1"].model
    with pytest.raises(ValueError, match="kalm datasets build kalm/clevr-robot/imagined-easy-v2"):
        build_dataset(get_spec(published_id("imagined", "easy")))
    easy = published_id("imagined", "easy")
    checksums = []
    for name in ("a", "b"):
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / name))
        assert main(["datasets", "build", easy, "--episodes", "4"]) == 0
        kalm = read_metadata(easy)["kalm"]
        assert kalm["generator"]["config"]["state_head"] == "bounded" and kalm["episodes"] == 4
        assert f"--model {models['easy']}" in kalm["build_command"]
        checksums.append(kalm["checksum"])
        assert len(read_packed(easy)["lengths"]) == 4
    assert checksums[0] == checksums[1]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "c"))  # no --model: the spec's
    assert main(["imagine", "--level", "easy", "--episodes", "2", "--ref-episodes", "1"]) == 0
    assert f"--model {models['easy']}" in read_metadata(easy)["kalm"]["build_command"]
    capsys.readouterr()
    assert main(["imagine", "--model", "kalm-nonesuch-v9", "--level", "easy", "--episodes", "2"]) == 2
    assert "kalm-nonesuch-v9" in capsys.readouterr().err


@pytest.fixture(scope="module")
def written(model, tmp_path_factory):
    """Saved drifting models, two imagined rephrase datasets of the slow one (all kept, invalid
    dropped) and an imagined easy dataset of the fast one."""
    folder = tmp_path_factory.mktemp("model") / "grounded"
    rigged(model, drift(0.1)).save(folder)
    fast = tmp_path_factory.mktemp("model") / "fast"
    rigged(model, drift(1.6)).save(fast)
    with temporary_minari_root(tmp_path_factory.mktemp("minari")) as root:
        settings = dict(episodes=10, seed=0, batch_size=4, ref_episodes=2)
        kept = write_imagined_dataset(folder, "rephrase", **settings)
        dropped = write_imagined_dataset(folder, "rephrase", dataset_id="test/imagined-dropped-v0",
                                         drop_invalid=True, **settings)
        easy = write_imagined_dataset(fast, "easy", **settings)
        yield {"folder": folder, "root": root, "kept": kept, "dropped": dropped, "easy": easy}


def test_written_dataset_verifies_loads_and_has_provenance(written):
    dataset_id = published_id("imagined", "rephrase")
    assert verify_dataset(dataset_id).ok
    dataset = minari.load_dataset(dataset_id)
    assert dataset.total_episodes == 10
    assert dataset.recover_environment().spec.id == "KALM/CLEVRRobot-Rephrase-v0"
    metadata = read_metadata(dataset_id)
    kalm = metadata["kalm"]
    assert kalm["source"] == "imagined" and kalm["level"] == "rephrase" and kalm["seed"] == 0
    assert kalm["generator"]["model_sha256"] == model_checksum(written["folder"])
    assert kalm["generator"]["base_model"] == kalm["generator"]["config"]["base_model"]
    generation = kalm["generation"]
    # the rephrase spec draws its actions at its temperature, with sample seed 0
    assert generation["decoding"] == "sampled" and generation["temperature"] == imagined_temperature("rephrase") > 0
    assert generation["sample_seed"] == 0 and generation["max_steps"] == 50 and generation["batch_size"] == 4
    assert "invalid_rule" in generation and generation["drop_invalid"] is False
    counts = kalm["counts"]
    assert counts["generated"] == 10 and 0 < counts["invalid"] < 10 and counts["dropped"] == 0
    assert metadata["ref_min_score"] is not None and metadata["ref_max_score"] is not None
    # the stored episodes are what the generator makes of the env's tasks
    lm = GroundedLM.load(written["folder"])
    again = imagine_tasks(lm, level_tasks("rephrase", 10, 0), batch_size=4, temperature=generation["temperature"])
    stored = read_episodes(dataset_id)
    assert [e.actions.tolist() for e in stored] == [e.actions.tolist() for e in again]
    assert [e.seed for e in stored] == list(range(10))
    assert sum(e.invalid for e in again) == counts["invalid"]
    assert counts["cut_episodes"] == [i for i, e in enumerate(e for e in again if e.length) if e.invalid]


def test_written_easy_dataset_is_one_push_per_episode(written):
    """The fast model moves red 0.16 m in its one step: exactly the "move red right" goals succeed."""
    dataset_id = published_id("imagined", "easy")
    assert dataset_id == "kalm/clevr-robot/imagined-easy-v2" and verify_dataset(dataset_id).ok
    env = minari.load_dataset(dataset_id).recover_environment()
    assert env.spec.id == "KALM/CLEVRRobot-Easy-v1"
    kalm = read_metadata(dataset_id)["kalm"]
    assert kalm["generation"]["max_steps"] == 1 and "--max-steps" not in kalm["build_command"]
    stored = read_episodes(dataset_id)
    assert stored and all(e.length == 1 for e in stored)
    assert [e.success for e in stored] == [Goal.from_array(e.goal) == Goal.move(RED, RIGHT) for e in stored]
    assert all(e.terminations.tolist() == [True] and not e.truncations.any() for e in stored)


def test_drop_invalid_drops_the_cut_rollouts(written):
    kept = read_metadata(published_id("imagined", "rephrase"))["kalm"]["counts"]
    report = verify_dataset("test/imagined-dropped-v0")
    counts = read_metadata("test/imagined-dropped-v0")["kalm"]["counts"]
    assert report.ok and report.episodes == 10 - kept["invalid"]
    assert counts["dropped"] == counts["invalid"] == kept["invalid"]
    assert all(not e.truncations.any() or e.length == 50 for e in read_episodes("test/imagined-dropped-v0"))


def test_a_closed_loop_dataset_holds_the_simulators_states_and_labels(written):
    """``states="simulator"``: the drifting model's own states leave the workbench (the kept dataset
    above has cut rollouts), but written closed-loop its episodes are the simulator's, so a replay
    confirms every state and every label, and the provenance and build command say so."""
    write_imagined_dataset(written["folder"], "rephrase", episodes=6, seed=0, batch_size=4, ref_episodes=2,
                           dataset_id="test/closed-loop-v0", states="simulator")
    assert verify_dataset("test/closed-loop-v0").ok
    kalm = read_metadata("test/closed-loop-v0")["kalm"]
    assert "simulator" in kalm["generation"]["states"] and kalm["build_command"].endswith("--states simulator --ref-episodes 2")
    assert kalm["counts"]["invalid"] == 0 and read_metadata(published_id("imagined", "rephrase"))["kalm"]["counts"]["invalid"] > 0
    audit = label_audit("rephrase", read_episodes("test/closed-loop-v0"))
    assert audit["state_error_max"] < 1e-6 and audit["confirmed_rate"] in (None, 1.0)
    assert audit["unlabelled_replay_rate"] in (None, 0.0)
    with pytest.raises(ValueError, match="states 'oracle'"):
        write_imagined_dataset(written["folder"], "rephrase", episodes=2, dataset_id="test/closed-bad-v0", states="oracle")
    assert not (written["root"] / "test" / "closed-bad-v0").exists()


def test_writer_bad_input(written, model, tmp_path):
    folder = written["folder"]
    with pytest.raises(ValueError, match="hrad"):
        write_imagined_dataset(folder, "hrad", episodes=2)
    with pytest.raises(ValueError, match="imagined levels"):
        write_imagined_dataset(folder, "train", episodes=2)
    with pytest.raises(FileNotFoundError, match="neither a published grounded model"):
        write_imagined_dataset(tmp_path / "missing", "easy", episodes=2, dataset_id="test/missing-v0")
    with pytest.raises(FileExistsError):
        write_imagined_dataset(folder, "rephrase", episodes=2)
    with pytest.raises(ValueError, match=r"max_steps 2 must lie in \[1, 1\]"):
        write_imagined_dataset(folder, "easy", episodes=2, dataset_id="test/long-easy-v0", max_steps=2)
    nan_dir = tmp_path / "nan"
    rigged(model, [float("nan")] * 10).save(nan_dir)
    with pytest.raises(ValueError, match="invalid"):
        write_imagined_dataset(nan_dir, "easy", episodes=2, dataset_id="test/nan-v0", ref_episodes=1)


# --- quality ----------------------------------------------------------------------------------


def test_rollout_quality_metrics(model):
    report = rollout_quality(model, "hard", episodes=3, batch_size=3)
    assert set(ROLLOUT_KEYS) <= set(report)
    for key in ("goal_match_rate", "replay_match_rate", "out_of_workbench_rate"):
        assert 0.0 <= report[key] <= 1.0
    assert report["state_error_mean"] is None or 0 <= report["state_error_mean"] <= report["state_error_max"]
    still = rollout_quality(rigged(model, [0.0] * 10), "easy", episodes=2, diagnose=True)
    assert still["goal_match_rate"] == 0.0 and still["out_of_workbench_rate"] == 0.0 and still["mean_length"] == 1
    assert still["goal_matched_replay"] == {"rollouts": 0, "replay_match_rate": None}
    diagnosed = rollout_quality(model, "easy", episodes=4, diagnose=True)
    claimed = diagnosed["goal_matched_replay"]
    assert claimed["rollouts"] == round(4 * diagnosed["goal_match_rate"])
    assert (claimed["replay_match_rate"] is None) == (claimed["rollouts"] == 0)


def test_acting_in_the_simulator_takes_the_simulators_states_and_labels(model):
    """Closed-loop runs of the model's actions hold exactly the states the simulator reaches with
    those actions (a replay matches them to float32 rounding) and its success labels, whatever the
    state head says: a head rigged to throw every ball off the workbench changes nothing."""
    tasks = level_tasks("hard", 4, 7)
    acted = act_in_simulator(model, tasks, batch_size=3)
    thrown = act_in_simulator(rigged(model, [9.0] * 10), tasks, batch_size=3)
    replay = replay_rollouts("hard", tasks, acted)
    assert replay["state_error_max"] < 1e-6
    assert [e.success for e in acted] == replay["replay_success"]
    assert not any(e.invalid for e in acted) and [e.length for e in acted] == [len(r) - 1 for r in replay["replayed"]]
    for ours, theirs in zip(acted, thrown, strict=True):
        assert np.array_equal(ours.observations, theirs.observations) and np.array_equal(ours.actions, theirs.actions)
    imagined = imagine_tasks(rigged(model, [9.0] * 10), tasks, batch_size=3)
    assert all(e.invalid for e in imagined)  # the same rigged head, on its own states, leaves the bench
    row = rollout_quality(model, "hard", episodes=4, seed=7, batch_size=3, diagnose=True)
    assert row["closed_loop"] == {"success_rate": float(np.mean([e.success for e in acted])),
                                  "mean_length": float(np.mean([e.length for e in acted]))}


def test_diagnostics_of_simulated_and_drifting_rollouts(model):
    """Simulator rollouts restarted from their recorded ball centres come back within the
    simulator's own floor (centres alone do not hold spins and contacts) and never cross a wall,
    and greedy actions agree with their noise-free oracle as often as with their record; a model
    that slides the red ball 2 cm a step drifts far above that floor, its error growing with the
    horizon."""
    from kalm_gen.diagnostics import action_agreement, error_by_horizon, one_step_errors

    episodes = oracle_episodes("train", [5, 6, 7], 0.0)
    exact = one_step_errors("train", episodes)
    assert exact["steps"] == sum(e.length for e in episodes) and exact["unplaceable_steps"] == 0
    assert exact["pushed_error"] < 0.03 and exact["other_error"] < 0.01 and exact["wall_crossing_rate"] == 0
    agreement = action_agreement(model, episodes, batch_size=2)
    assert agreement["steps"] == exact["steps"]
    assert agreement["oracle_agreement"] == agreement["recorded_agreement"]  # epsilon 0: the oracle's pushes

    tasks = level_tasks("rephrase", 4, 0)
    sliding = imagine_rollouts(rigged(model, drift(0.2)), tasks.goals, tasks.instructions, tasks.initial_states,
                               "rephrase", max_steps=6, stop_early=False)
    report = one_step_errors("rephrase", sliding)
    assert report["drift_rate"] > 0.5 and report["drift_per_step"] > 2 * exact["drift_per_step"]
    replay = replay_rollouts("rephrase", tasks, sliding)
    horizon = error_by_horizon(replay["replayed"], sliding)
    assert len(horizon) == 6 and horizon[-1] > horizon[0]


def test_explanation_parts_name_what_is_wrong():
    from kalm_gen.diagnostics import explanation_parts

    episodes = oracle_episodes("train", [0, 1, 2, 3], 0.0)
    right = explanation_parts([e.instruction for e in episodes], episodes)
    assert right["parsed"] == 4 and right["kind_rate"] == right["first_ball_rate"] == 1.0
    assert right["second_ball_rate"] == right["direction_rate"] == 1.0 and right["confused_balls"] == {}
    swapped = []
    for e in episodes:  # the same relation with its first ball replaced
        goal = Goal.from_array(e.goal)
        a, b, d = goal.clauses[0]
        other = next(c for c in range(5) if c not in (a, b))
        swapped.append(instruction_variants(Goal.relation(other, b, d), "train")[0])
    wrong = explanation_parts(swapped, episodes)
    assert wrong["first_ball_rate"] == 0.0 and wrong["second_ball_rate"] == 1.0
    assert sum(wrong["confused_balls"].values()) == 4


def test_replaying_simulator_rollouts_is_consistent():
    """Oracle rollouts are exact simulations: replaying them reproduces their states and outcome."""
    tasks = level_tasks("easy", 3, 40)
    episodes = oracle_episodes("easy", list(range(40, 43)), 0.0)
    replay = replay_rollouts("easy", tasks, episodes)
    assert replay["state_error_max"] < 1e-4
    assert replay["replay_success"] == [e.success for e in episodes]


def test_explanation_metric_parses_decoded_text(model):
    """A copy of the tiny LM overfitted on two real episodes' explanations decodes them back."""
    episodes = oracle_episodes("train", [0, 1], 0.0)
    lm = copy.deepcopy(model)
    batch = to_tensors(collate_examples(
        [explain_sequence(lm.tokenize, lm.eos_id, e.instruction, e.observations, e.actions) for e in episodes],
        [0, 1]))
    objective = GroundingObjective(lm)
    optimizer = torch.optim.Adam(lm.parameters(), lr=3e-3)
    for _ in range(400):
        loss = objective(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    texts = explain_episodes(lm, episodes, batch_size=2)
    assert texts == [e.instruction for e in episodes]
    report = score_explanations(texts, episodes)
    assert set(EXPLANATION_KEYS) <= set(report) and report["accuracy"] == 1.0 and report["parse_rate"] == 1.0
    # another wording of the same goal is right; a wrong goal or garbage is not
    goal = Goal.from_array(episodes[0].goal)
    other = next(t for t in instruction_variants(goal, "rephrase") if t != episodes[0].instruction)
    wrong = instruction_variants(Goal.relation(*[(c[1], c[0], c[2]) for c in goal.clauses][0]), "train")[0]
    scored = score_explanations([other, wrong], episodes[:1] * 2)
    assert scored["parse_rate"] == 1.0 and scored["accuracy"] == 0.5
    assert score_explanations(["::::"], episodes[:1])["parse_rate"] == 0.0


# --- commands ---------------------------------------------------------------------------------


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_commands(written, capsys):
    folder = str(written["folder"])
    report, text, code = imagine_command.run(_parse(imagine_command, [
        "--model", folder, "--level", "hard", "--episodes", "3", "--seed", "5", "--batch-size", "3",
        "--ref-episodes", "1", "--drop-invalid",
    ]))
    assert code == 0 and report["verified"] and report["id"] == published_id("imagined", "hard")
    assert report["episodes"] == report["generated"] - report["dropped"] and "verify: passed" in text
    json.dumps(report)
    report, text, code = imagine_eval_command.run(_parse(imagine_eval_command, [
        "--model", folder, "--levels", "easy", "--episodes", "2", "--real-dataset", published_id("imagined", "easy"),
        "--real-episodes", "2", "--threads", "1", "--diagnose",
    ]))
    assert code == 0 and "goal match" in text and "explanation (text) on 2 held-out episodes" in text
    acted = report["levels"]["easy"]["closed_loop"]
    assert f"easy closed loop (the model's actions on the simulator's states): success {acted['success_rate']:.1%}" in text
    assert set(ROLLOUT_KEYS) <= set(report["levels"]["easy"])
    assert 0.0 <= report["explanation"]["accuracy"] <= 1.0
    assert text.startswith("rollout actions: easy greedy") and report["levels"]["easy"]["temperature"] == 0.0
    json.dumps(report)
    sampled, text, _ = imagine_eval_command.run(_parse(imagine_eval_command, [
        "--model", folder, "--levels", "hard", "--episodes", "3", "--batch-size", "3", "--temperature", "5",
        "--sample-seed", "4", "--diagnose",
    ]))
    assert text.startswith("rollout actions: hard temperature 5 (sample seed 4)")
    saved, tasks = GroundedLM.load(folder), level_tasks("hard", 3, QUALITY_SEED)
    drawn = imagine_tasks(saved, tasks, batch_size=3, temperature=5.0, seed=4)
    acted = act_in_simulator(saved, tasks, batch_size=3, temperature=5.0, seed=4)
    row = sampled["levels"]["hard"]
    assert row["goal_match_rate"] == np.mean([e.success for e in drawn])
    assert row["mean_length"] == np.mean([e.length for e in drawn])
    assert row["closed_loop"]["mean_length"] == np.mean([e.length for e in acted])
    greedy = imagine_tasks(saved, tasks, batch_size=3)
    assert any(not np.array_equal(a.actions, b.actions) for a, b in zip(drawn, greedy, strict=True))
    # the replayed states follow the drawn actions, not the greedy ones
    assert row["state_error_mean"] == replay_rollouts("hard", tasks, drawn)["state_error_mean"]
    assert row["state_error_mean"] != replay_rollouts("hard", tasks, greedy)["state_error_mean"]
    with pytest.raises(ValueError, match=r"max_steps 2 must lie in \[1, 1\]"):
        imagine_command.run(_parse(imagine_command, ["--model", folder, "--level", "easy", "--max-steps", "2"]))
    with pytest.raises(SystemExit):
        _parse(imagine_command, ["--model", folder, "--level", "hrad"])
    assert "invalid choice: 'hrad'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="neither a published grounded model"):
        imagine_eval_command.run(_parse(imagine_eval_command, ["--model", folder + "-missing"]))
