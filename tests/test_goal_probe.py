"""The goal probe (kalm_gen.goal_probe, kalm goal-probe): readers of the goal in an instruction.

Encoders are read for real; language models are a tiny random Llama with a character tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kalm_envs.goals import TRAIN_GOALS
from kalm_envs.separation import level_instructions
from kalm_envs.text_encoders import make_encoder
from kalm.commands.goal_probe import TranslatedPolicy, true_goal_wording
from kalm_envs.language import instruction_variants, parse_instruction
from kalm_envs.oracle import ScriptedOracle
from kalm_gen.goal_probe import FIELDS, PROBE_LEVELS, GoalProbeConfig, goal_fields, probe_encoder, probe_language_model
from kalm_gen.grounded_lm import GroundedLM, GroundedLMConfig
from kalm_rl.evaluation import RandomPolicy, evaluate_policy
from tests.fuzz_cases import CliFailure, Workspace, cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kalm_gen.tiny import make_tiny_lm

    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm")


class Blank:
    """An encoder whose features say nothing about the text."""

    def encode(self, texts):
        return np.ones((len(texts), 8), np.float32)

    def config(self):
        return {"name": "blank"}


def test_goal_fields_name_ball_a_ball_b_and_direction() -> None:
    texts, numbers = level_instructions("rephrase", max_wordings=10**9)
    fields = goal_fields(numbers)
    assert fields.shape == (len(texts), 3)
    for row in range(0, len(texts), 97):  # what each wording says, read back by the language's parser
        assert (tuple(fields[row]),) == parse_instruction(texts[row]).clauses
    assert len(set(map(tuple, fields))) == 80


def test_encoder_reader_learns_from_what_the_features_carry() -> None:
    config = GoalProbeConfig(steps=300, eval_texts=400, seed=1)
    ordered, _ = probe_encoder(make_encoder("ordered"), config, progress=False)
    blank, _ = probe_encoder(Blank(), config, progress=False)
    assert ordered.texts == {"train": 400, "rephrase": 400}
    assert ordered.accuracy["train"]["goal"] >= 0.9
    # rephrase templates never occur in train: the n-gram reader carries part of them
    assert 0.1 < ordered.accuracy["rephrase"]["goal"] < ordered.accuracy["train"]["goal"]
    # features that say nothing leave the reader at the most frequent field value
    assert blank.accuracy["train"]["goal"] < 0.05
    assert all(blank.accuracy[level][field] <= 0.4 for level in PROBE_LEVELS for field in FIELDS)
    assert ordered.name == "encoder ordered" and blank.name == "encoder blank"


def test_a_frozen_model_is_left_as_it_was_and_a_trained_one_learns(tiny: Path) -> None:
    config = GoalProbeConfig(steps=100, batch_size=32, lr=3e-3, eval_texts=200, seed=0)
    model = GroundedLM.from_config(GroundedLMConfig(base_model=str(tiny), finetune="full", head_hidden=16), seed=0)
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    frozen, _ = probe_language_model(model, "tiny (frozen)", train_lm=False, config=config, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.lm.state_dict().items())
    trained, reader = probe_language_model(model, "tiny", train_lm=True, config=config, progress=False)
    assert any(not torch.equal(before[k], v) for k, v in model.lm.state_dict().items())
    assert not model.training
    # the LM's own weights learn to name the goal, which its frozen random states hide
    assert trained.accuracy["train"]["goal"] > frozen.accuracy["train"]["goal"] + 0.3
    assert trained.texts == {"train": 200, "rephrase": 200}
    texts, numbers = level_instructions("train", max_wordings=10**9)
    named = reader.name_goals(texts[::7])
    assert np.mean((named == goal_fields(numbers[::7])).all(1)) == pytest.approx(trained.accuracy["train"]["goal"], abs=0.1)


class TrainWordingOracle:
    """Acts as the scripted oracle for instructions worded as in train, at random otherwise."""

    def __init__(self) -> None:
        self.goals = {text: goal for goal in TRAIN_GOALS for text in instruction_variants(goal, "train")}
        self.random = RandomPolicy(seed=0)
        self.oracle = ScriptedOracle(epsilon=0.0, seed=0)
        self.label = "train-wording oracle"

    def reseed(self, seed):
        self.random.reseed(seed)

    def act_batch(self, observations):
        actions = self.random.act_batch(observations)
        for i, observation in enumerate(observations):
            goal = self.goals.get(observation["instruction"])
            if goal is not None:
                info = {"goal": goal.to_array()}
                self.oracle.reset(observation, info)
                actions[i] = self.oracle.act(observation, info)
        return actions


def test_translations_decide_what_a_policy_reads() -> None:
    policy = TrainWordingOracle()
    assert true_goal_wording("Nudge the red ball so that it sits at the front of the blue ball.") in policy.goals
    _, ordered = probe_encoder(make_encoder("ordered"), GoalProbeConfig(steps=300, eval_texts=10), progress=False)
    success = {name: evaluate_policy(TranslatedPolicy(policy, translate), "rephrase", 60).success_rate
               for name, translate in (("raw", lambda text: text), ("reader", ordered.translate),
                                       ("true", true_goal_wording))}
    # rephrase wordings are never train wordings: raw, the policy acts at random
    assert success["true"] >= 0.95 > success["reader"] > success["raw"] + 0.1
    text = "Nudge the red ball so that it sits at the front of the blue ball."
    assert parse_instruction(ordered.translate(text)) is not None


def test_command_prints_a_row_per_reader_and_refuses_bad_values(tiny: Path, tmp_path: Path) -> None:
    out = cli("goal-probe", "--base-model", str(tiny), "--num-layers", "1", "2", "--steps", "2",
              "--eval-texts", "5", "--encoder", "hashed", "--base-readers", "frozen", "lora", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    names = [row["name"] for row in report["rows"]]
    assert names[0] == "encoder hashed"
    assert [n.split(", ", 1)[1] for n in names[1:]] == [
        "1 layers (frozen)", "1 layers, LoRA 16", "2 layers (frozen)", "2 layers, LoRA 16"]
    assert all(row["texts"] == {"train": 5, "rephrase": 5} for row in report["rows"])
    assert "| chance |" in out
    policy = Workspace(tmp_path).policy()
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(policy, twin / policy.name)
    out = cli("goal-probe", "--num-layers", "--encoder", "hashed", "--steps", "2", "--eval-texts", "5",
              "--policy", str(policy.parent), "--policy", str(twin), "--episodes", "6", "--json")
    success = json.loads(out.strip().splitlines()[-1])["policies"]["success"][str(policy.parent)]
    assert set(success) == {"own reading", "encoder hashed", "true goal"}
    from kalm_rl.policy import load_policy

    assert success["own reading"] == evaluate_policy(load_policy(policy.parent), "rephrase", 6).success_rate
    own = f"{100 * success['own reading']:.1f}"
    assert f"| own reading | {own} | {own} | {own} ± 0.0 |" in out
    for argv, needle in ((("--steps", "0"), "steps"), (("--eval-texts", "0"), "eval_texts"),
                         (("--num-layers", "-1"), "--num-layers"), (("--model", "/nonexistent/m"), "/nonexistent/m"),
                         (("--base-readers", "full"), "full"), (("--policy", "/nonexistent/p"), "/nonexistent/p"),
                         (("--episodes", "0"), "--episodes")):
        with pytest.raises(CliFailure, match=needle):
            cli("goal-probe", "--base-model", str(tiny), "--steps", "1", *argv)


class NamedReader:
    """A goal reader that names what ``name_of(text)`` says (a perfect or a wrong reader)."""

    def __init__(self, name, name_of):
        self.name, self.name_of = name, name_of

    def name_goals(self, texts):
        return np.array([self.name_of(text) for text in texts], dtype=np.int64).reshape(-1, 3)


def test_read_oracle_acts_on_the_goal_the_reader_names() -> None:
    from kalm_envs.dataset_specs import get_spec, published_id
    from kalm_envs.oracle import oracle_episodes
    from kalm_gen.goal_probe import read_oracle_episodes

    spec = get_spec(published_id("oracle", "rephrase"))
    perfect = NamedReader("perfect", lambda text: parse_instruction(text).clauses[0])
    run, stats = read_oracle_episodes(perfect, 12)
    # a perfect reader's oracle is the rephrase oracle dataset's, episode for episode
    reference = oracle_episodes("rephrase", range(spec.seed, spec.seed + 12), spec.epsilon)
    assert stats["named_right"] == 1.0 and stats["episodes"] == 12
    assert all(np.array_equal(a.actions, b.actions) and a.instruction == b.instruction for a, b in zip(run, reference))
    # a reader naming the first ball's relation to itself gives nothing; one naming another goal
    # makes the oracle push elsewhere while the episode keeps the true goal and its success
    assert read_oracle_episodes(NamedReader("none", lambda text: (1, 1, 0)), 4)[1]["episodes"] == 0
    wrong, wrong_stats = read_oracle_episodes(
        NamedReader("wrong", lambda text: (lambda a, b, d: (a, b, (d + 2) % 4))(*parse_instruction(text).clauses[0])), 12)
    assert wrong_stats["named_right"] == 0.0
    assert [e.goal.tolist() for e in wrong] == [e.goal.tolist() for e in reference]
    assert wrong_stats["success_rate"] < stats["success_rate"]


def test_command_writes_a_read_oracle_dataset_per_reader(tmp_path: Path, monkeypatch) -> None:
    from kalm_envs.minari_io import read_episodes

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    out = cli("goal-probe", "--num-layers", "--encoder", "hashed", "--steps", "2", "--eval-texts", "5",
              "--oracle-data", "3", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    stats = report["oracle_data"]["kalm/bounds/read-oracle-rephrase-encoder-hashed-v0"]
    episodes = read_episodes("kalm/bounds/read-oracle-rephrase-encoder-hashed-v0")
    assert len(episodes) == stats["episodes"] <= 3 and stats["tasks"] == 3
    reached = np.mean([e.success for e in episodes]) if episodes else 0.0  # the figure of what was written
    assert stats["success_rate"] == pytest.approx(reached)
    with pytest.raises(CliFailure, match="--oracle-data"):
        cli("goal-probe", "--num-layers", "--encoder", "hashed", "--oracle-data", "0")
