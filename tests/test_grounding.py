"""Grounding data and training (kalm_gen.grounding_data, kalm_gen.train, kalm ground).

Everything runs on a 6-episode real-v0 dataset built into a temporary Minari root and, except
for one LoRA step on the real SmolLM2, on a tiny random Llama with a character tokenizer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kalm_envs.collector import build_dataset
from kalm_envs.dataset_checks import dataset_level
from kalm_envs.dataset_specs import get_spec
from kalm_envs.goals import Goal
from kalm_envs.language import instruction_variants, parse_instruction
from kalm_envs.minari_io import read_episodes, write_dataset
from kalm_envs.registration import ENV_IDS
from kalm_gen.grounding_data import (
    GroundingData,
    GroundingSampler,
    load_grounding_episodes,
)
from kalm_gen.sequences import EXPLAIN_ANSWER, TASKS, TEXT
from kalm_gen.train import (
    CHECKPOINT_MARKER,
    CONFIG_FILE,
    LOG_FILE,
    GroundingTrainConfig,
    complete_checkpoints,
    latest_checkpoint,
    train_grounding,
)
from tests.helpers import temporary_minari_root, write_cartpole_dataset

REAL = "kalm/clevr-robot/real-v0"
CUSTOM = "kalm/clevr-robot/custom-wording-v0"
OTHER = "other/cartpole/test-v0"
REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    """A Minari root with a 6-episode real-v0, the same episodes worded otherwise, and a CartPole
    dataset."""
    path = tmp_path_factory.mktemp("minari")
    with temporary_minari_root(path):
        build_dataset(get_spec(REAL), episodes=6, shard_size=100, progress=False, ref_episodes=2)
        episodes = read_episodes(REAL)
        for i, episode in enumerate(episodes):
            episode.instruction = f"Nudge ball number {i} somewhere nice."
        write_dataset(CUSTOM, episodes, ENV_IDS["train"], "custom wordings", {}, (0.0, 1.0), "test")
        write_cartpole_dataset(OTHER)
        yield path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kalm_gen.tiny import make_tiny_lm

    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm")


def _tiny_config(tiny: Path, output: Path, **changes) -> GroundingTrainConfig:
    values = dict(
        datasets=[REAL], output=str(output), base_model=str(tiny), finetune="full", head_hidden=32,
        lr=3e-3, warmup_steps=5, batch_size=6, steps=20, eval_every=10, checkpoint_every=100,
        val_fraction=0.0, seed=0,
    )
    values.update(changes)
    return GroundingTrainConfig(**values)


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / LOG_FILE).read_text().splitlines()]


class _WholeTextTokenizer:
    """Each text is one token: sequences can be read back exactly."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<eos>": 0}

    def __call__(self, text: str) -> list[int]:
        return [self.ids.setdefault(text, len(self.ids))]

    def text(self, token: int) -> str:
        return {v: k for k, v in self.ids.items()}[token]


def _instruction(sequence, tokenizer: _WholeTextTokenizer) -> str:
    """The instruction of a rollout or explain sequence made with :class:`_WholeTextTokenizer`."""
    texts = [tokenizer.text(int(t)) for t, k in zip(sequence.token_ids, sequence.kinds, strict=True) if k == TEXT]
    if sequence.task == "rollout":
        return texts[0].removeprefix("Instruction: ").removesuffix("\nRollout:")
    assert texts[-3] == EXPLAIN_ANSWER and texts[-1] == "<eos>"
    return texts[-2].removeprefix(" ")


# --- data ------------------------------------------------------------------------------------------


def test_dataset_levels_and_bad_datasets(root: Path) -> None:
    with temporary_minari_root(root):
        assert dataset_level(REAL) == "train"
        assert dataset_level(root / REAL) == "train"  # a folder works too
        with pytest.raises(ValueError, match=f"{OTHER}.*CartPole-v1"):
            dataset_level(OTHER)
        with pytest.raises(ValueError, match=OTHER):
            load_grounding_episodes([REAL, OTHER])
        with pytest.raises(FileNotFoundError, match="kalm/clevr-robot/missing-v0"):
            load_grounding_episodes(["kalm/clevr-robot/missing-v0"])


def test_split_by_episode_and_task_mixing(root: Path) -> None:
    with temporary_minari_root(root):
        episodes = load_grounding_episodes([REAL, CUSTOM])  # 12 episodes, ids 0..11
    assert [e.episode_id for e in episodes] == list(range(12))
    tokenizer = _WholeTextTokenizer()
    data = GroundingData(episodes, tokenizer, 0, val_fraction=0.25, seed=3)
    train_ids = {e.episode_id for e in data.train_episodes}
    val_ids = {e.episode_id for e in data.val_episodes}
    assert len(val_ids) == 3 and len(train_ids) == 9 and not train_ids & val_ids
    other = GroundingData(episodes, tokenizer, 0, val_fraction=0.25, seed=4)
    assert {e.episode_id for e in other.val_episodes} != val_ids  # the split follows the seed

    # validation: every task of every held-out episode, nothing else
    val_batches = data.val_batches(batch_size=2)
    seen = Counter()
    for batch in val_batches:
        assert set(batch["episode_ids"].tolist()) <= val_ids
        assert len(set(batch["task_ids"].tolist())) == 1  # one task per validation batch
        seen.update(zip(batch["episode_ids"].tolist(), batch["task_ids"].tolist(), strict=True))
    assert seen == Counter({(e, t): 1 for e in val_ids for t in range(len(TASKS))})
    halves = data.val_batches(2, rank=0, world_size=2) + data.val_batches(2, rank=1, world_size=2)
    assert len(halves) == len(val_batches)

    # training: only training episodes, each epoch visits every one, every batch mixes the tasks
    counts = Counter()
    for index in range(30):
        batch = data.train_batch(index, 6)
        assert set(batch["episode_ids"].tolist()) <= train_ids
        assert sorted(Counter(batch["task_ids"].tolist()).values()) == [2, 2, 2]
        counts.update(batch["episode_ids"].tolist())
    assert set(counts) == train_ids and set(counts.values()) == {20}  # 180 examples, 20 epochs

    weighted = GroundingData(episodes, tokenizer, 0, {"rollout": 2, "explain": 1, "dynamics": 1}, 0.25, 3)
    for index in range(10):
        assert Counter(weighted.train_batch(index, 8)["task_ids"].tolist()) == {0: 4, 1: 2, 2: 2}
    no_dynamics = GroundingData(episodes, tokenizer, 0, {"rollout": 1, "explain": 1}, 0.25, 3)
    tasks = Counter()
    for index in range(20):
        tasks.update(no_dynamics.train_batch(index, 3)["task_ids"].tolist())
    assert set(tasks) == {0, 1} and abs(tasks[0] - tasks[1]) <= 6
    small = Counter()
    for index in range(300):
        small.update(data.train_batch(index, 2)["task_ids"].tolist())
    assert all(abs(small[t] / 600 - 1 / 3) < 0.05 for t in range(3))  # batch < tasks: mixed over batches

    # batches are a function of the index: a resumed run sees the same ones
    again = GroundingData(episodes, tokenizer, 0, val_fraction=0.25, seed=3)
    for index in (0, 7, 29):
        first, second = data.train_batch(index, 6), again.train_batch(index, 6)
        assert all(np.array_equal(first[key], second[key]) for key in first)
    ranks = [GroundingSampler(data, 6, rank, 2, start_step=5) for rank in (0, 1)]
    assert np.array_equal(next(ranks[0])["episode_ids"], data.train_batch(10, 6)["episode_ids"])
    assert np.array_equal(next(ranks[1])["episode_ids"], data.train_batch(11, 6)["episode_ids"])
    tensors = next(GroundingSampler(data, 6, device="cpu"))
    import torch

    assert isinstance(tensors["token_ids"], torch.Tensor) and tensors["task_ids"].tolist() == \
        data.train_batch(0, 6)["task_ids"].tolist()

    with pytest.raises(ValueError, match="no training episode"):
        GroundingData(episodes[:1], tokenizer, 0, val_fraction=0.5)
    with pytest.raises(ValueError, match="unknown task"):
        GroundingData(episodes, tokenizer, 0, {"rollout": 1, "planning": 1})


def test_instructions_redrawn_among_the_goal_wordings(root: Path) -> None:
    with temporary_minari_root(root):
        episodes = load_grounding_episodes([REAL, CUSTOM])
    for episode in episodes[:6]:  # our wordings: every variant of the goal at the train level
        variants = instruction_variants(Goal.from_array(episode.goal), "train")
        assert episode.recorded_instruction in variants and episode.wordings == tuple(variants)
    for episode in episodes[6:]:  # not one of ours (as in KALM's data): kept as recorded
        assert episode.wordings == (episode.recorded_instruction,)

    tokenizer = _WholeTextTokenizer()
    data = GroundingData(episodes, tokenizer, 0, val_fraction=0.0, seed=1)
    used: dict[int, set[str]] = {e.episode_id: set() for e in episodes}
    for index in range(40):  # 40 batches of 6: 20 epochs of the 12 episodes
        plan, _ = data.batch_plan(index, 6)
        for (episode, task), sequence in zip(plan, data.train_sequences(index, 6), strict=True):
            assert sequence.task == task
            if task != "dynamics":
                used[episode.episode_id].add(_instruction(sequence, tokenizer))
    for episode in episodes[:6]:
        texts = used[episode.episode_id]
        assert len(texts) >= 4, texts
        assert texts <= set(episode.wordings)
        assert {parse_instruction(t) for t in texts} == {Goal.from_array(episode.goal)}
    for episode in episodes[6:]:
        assert used[episode.episode_id] == {episode.recorded_instruction}


# --- training ----------------------------------------------------------------------------------------


def test_packing_keeps_every_example_and_changes_no_loss(root: Path, tiny: Path) -> None:
    """Packed rows hold every example once, positions restart per example, and the losses of a
    packed batch equal those of the same examples padded one a row."""
    import torch

    from kalm_gen.grounded_lm import GroundedLM, to_tensors
    from kalm_gen.train import GroundingObjective

    with temporary_minari_root(root):
        episodes = load_grounding_episodes(REAL)
    model = GroundedLM.from_config(_tiny_config(tiny, root).model_config(), seed=0)
    data = GroundingData(episodes, model.tokenize, model.eos_id, val_fraction=0.0, seed=0)
    objective = GroundingObjective(model).eval()
    for index in range(4):
        sequences = data.train_sequences(index, 9)
        padded, packed = data.train_batch(index, 9), data.train_batch(index, 9, pack_length=64)
        lengths = sorted(len(s) for s in sequences)
        assert packed["attention_mask"].shape[0] < len(sequences)  # rows shared
        assert packed["attention_mask"].shape[1] <= max(64, lengths[-1])
        assert int(packed["attention_mask"].sum()) == sum(lengths) == int(padded["attention_mask"].sum())
        starts = [int(p) for row, mask in zip(packed["position_ids"], packed["attention_mask"], strict=True)
                  for p, prev, m in zip(row[1:], row[:-1], mask[1:], strict=True) if m and p != prev + 1]
        assert len(starts) + len(packed["attention_mask"]) == len(sequences) and set(starts) <= {0}
        for field in ("action_targets", "token_targets"):
            assert sorted(padded[field][padded[field] >= 0]) == sorted(packed[field][packed[field] >= 0])
        with torch.no_grad():
            a, b = objective(to_tensors(padded)), objective(to_tensors(packed))
        assert torch.equal(a["counts"], b["counts"])
        assert torch.allclose(a["sums"], b["sums"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="row_length 0"):
        data.train_batch(0, 3, pack_length=0)


def test_bounded_state_head_and_fewer_layers(tiny: Path, tmp_path: Path) -> None:
    """The bounded head keeps predicted balls in its box whatever it outputs, leaves a ball in
    place at output 0; a model with fewer layers saves and loads as such; old models load as
    delta heads."""
    import torch

    from kalm_gen.grounded_lm import BOX_HIGH, BOX_LOW, CONFIG_FILE as MODEL_CONFIG, GroundedLM

    config = _tiny_config(tiny, tmp_path, num_layers=1).model_config()
    model = GroundedLM.from_config(config, seed=0)
    assert len(model.lm.get_decoder().layers) == 1
    state = torch.tensor([[-0.5, -0.3, 0.5, 0.6, 0.0, 0.1, 0.2, -0.2, -0.4, 0.55]])
    hidden = torch.randn(64, 1, model.lm.config.hidden_size) * 1e3
    with torch.no_grad():
        wild = model.next_state(hidden, state.expand(64, 1, 10))
        last = model.state_head[-1]
        last.weight.zero_(), last.bias.zero_()
        still = model.next_state(hidden[:1, 0], state)
    assert torch.isfinite(wild).all() and (wild >= BOX_LOW).all() and (wild <= BOX_HIGH).all()
    inside = ((state - BOX_LOW) / (BOX_HIGH - BOX_LOW) > 0.01) & ((state - BOX_LOW) / (BOX_HIGH - BOX_LOW) < 0.99)
    assert torch.allclose(still[inside], state[inside], atol=1e-6)
    model.save(tmp_path / "m")
    loaded = GroundedLM.load(tmp_path / "m")
    assert len(loaded.lm.get_decoder().layers) == 1 and loaded.config.state_head == "bounded"
    values = json.loads((tmp_path / "m" / MODEL_CONFIG).read_text())
    del values["state_head"]
    (tmp_path / "m" / MODEL_CONFIG).write_text(json.dumps(values))
    assert GroundedLM.load(tmp_path / "m").config.state_head == "delta"
    for bad in ({"num_layers": 0}, {"state_head": "free"}, {"precision": "fp8"}, {"pack_length": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _tiny_config(tiny, tmp_path, **bad).validate()


def test_tiny_model_overfits_a_handful_of_episodes(root: Path, tiny: Path, tmp_path: Path) -> None:
    from kalm_gen.grounded_lm import GroundedLM

    config = _tiny_config(tiny, tmp_path / "run", steps=80)
    with temporary_minari_root(root):
        summary = train_grounding(config, progress=False)
    start, end = summary["initial_train_losses"], summary["train_losses"]
    for task in ("rollout", "explain", "dynamics"):
        assert np.isfinite(end[task])
        assert end[task] < 0.5 * start[task], (task, start[task], end[task])
    assert summary["train_episodes"] == 6 and summary["positions_per_s"] > 0
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records if r.get("kind") == "train"] == list(range(1, 81))
    model = GroundedLM.load(tmp_path / "run" / "final")
    assert model.config.finetune == "full" and model.config.head_hidden == 32


def test_publish_a_run_with_its_card(root: Path, tiny: Path, tmp_path: Path, capsys) -> None:
    """``kalm publish`` ships a finished run: the model loads from the published folder, the
    card names the training command, the data checksum and the quality table, and the held-out
    seeds are the episodes the run left out; a run that left none out is refused."""
    from kalm.cli import main
    from kalm_envs.minari_io import read_metadata
    from kalm_gen.grounded_lm import GroundedLM
    from kalm_gen.published import MODEL_CARD, published_held_out, resolve_model

    with temporary_minari_root(root):
        train_grounding(_tiny_config(tiny, tmp_path / "run", steps=4, checkpoint_every=2, max_episodes=4),
                        progress=False)
        train_grounding(_tiny_config(tiny, tmp_path / "all", steps=3), progress=False)
        assert main(["publish", str(tmp_path / "run"), "--name", "tiny-v0", "--episodes", "2",
                     "--real-episodes", "2", "--destination", str(tmp_path / "models"), "--json"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        checksum = read_metadata(REAL)["kalm"]["checksum"]
        assert main(["publish", str(tmp_path / "all"), "--name", "tiny-v1", "--destination",
                     str(tmp_path / "models")]) == 2
        assert "max_episodes None" in capsys.readouterr().err
        assert main(["publish", str(tmp_path / "run"), "--name", "tiny-v2", "--checkpoint", "2", "--episodes", "1",
                     "--real-episodes", "1", "--destination", str(tmp_path / "models")]) == 0
        assert main(["publish", str(tmp_path / "run"), "--name", "tiny-v3", "--checkpoint", "3",
                     "--destination", str(tmp_path / "models")]) == 2
        assert "complete ones: [2]" in capsys.readouterr().err
    assert "checkpoint at step 2 of a run planned for 4" in (tmp_path / "models" / "tiny-v2" / MODEL_CARD).read_text()
    folder = tmp_path / "models" / "tiny-v0"
    assert resolve_model(folder) == folder and report["training"]["held_out_seeds"] == [4, 6]
    card = (folder / MODEL_CARD).read_text()
    assert "kalm ground --datasets kalm/clevr-robot/real-v0" in card and "--max-episodes 4" in card
    assert checksum in card and "goal match" in card and "explanation (text) on 2 held-out" in card
    assert set(report["quality"]["levels"]) == {"rephrase", "easy", "hard"}
    assert "one_step_floor" in report["quality"] and "action_agreement" in report["quality"]
    GroundedLM.load(folder)
    assert not (tmp_path / "models" / "tiny-v1").exists()
    with pytest.raises(FileNotFoundError, match="kalm-nonesuch-v9"):
        published_held_out("kalm-nonesuch-v9")


def test_resume_after_kill(root: Path, tiny: Path, tmp_path: Path) -> None:
    from kalm_gen.grounded_lm import GroundedLM

    output = tmp_path / "run"
    config = _tiny_config(tiny, output, steps=30, checkpoint_every=4, eval_every=10, val_fraction=0.2)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    script = tmp_path / "slow_train.py"
    script.write_text(textwrap.dedent(f"""
        import json, time
        from kalm_gen.grounding_data import GroundingData
        from kalm_gen.train import GroundingTrainConfig, train_grounding
        batch = GroundingData.train_batch
        def slow(self, *args):  # slow steps down so that the kill lands mid-run
            time.sleep(0.15)
            return batch(self, *args)
        GroundingData.train_batch = slow
        config = GroundingTrainConfig.from_dict(json.loads(open({str(config_file)!r}).read()))
        train_grounding(config, progress=False)
    """))
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([str(PYTHON), str(script)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while latest_checkpoint(output) is None:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (output / "final").exists()
    killed_at, _ = latest_checkpoint(output)
    assert 4 <= killed_at < 30
    # leftovers a kill can leave: a staging folder, and a checkpoint folder without its marker
    (output / ".checkpoint-99.tmp-dead").mkdir()
    fake = output / f"checkpoint-{killed_at + 8}"
    (fake / "model").mkdir(parents=True)
    assert latest_checkpoint(output)[0] == killed_at  # an unmarked folder does not count

    with temporary_minari_root(root):
        with pytest.raises(ValueError, match="another config.*lr"):
            train_grounding(_tiny_config(tiny, output, steps=30, checkpoint_every=4, eval_every=10,
                                         val_fraction=0.2, lr=1e-3), progress=False)
        summary = train_grounding(config, progress=False)
    assert summary["resumed_from"] == killed_at and summary["steps"] == 30
    records = _records(output)
    events = [r for r in records if "event" in r]
    assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("resume", killed_at)]
    assert [r["step"] for r in records if r.get("kind") == "train"] == list(range(1, 31))
    assert [r["step"] for r in records if r.get("kind") == "val"] == [10, 20, 30]
    assert [step for step, _ in complete_checkpoints(output)] == [24, 28]  # the last two
    assert not any(p.name.startswith(".") for p in output.iterdir() if p.is_dir())
    assert (output / "checkpoint-28" / CHECKPOINT_MARKER).is_file()
    model = GroundedLM.load(output / "final")
    assert model.config.base_model == str(tiny)
    with temporary_minari_root(root):  # a finished run is not trained again
        assert train_grounding(config, progress=False)["already_complete"] is True


def test_resumed_lora_run_matches_an_uninterrupted_one(root: Path, tiny: Path, tmp_path: Path) -> None:
    """Model, optimizer, scheduler, rng and batches all restored: the same losses after resuming."""
    output = tmp_path / "run"
    config = _tiny_config(tiny, output, finetune="lora", lora_rank=4, steps=8, checkpoint_every=4,
                          eval_every=4, val_fraction=0.2, lr=1e-2)
    with temporary_minari_root(root):
        train_grounding(config, progress=False)
        straight = [r for r in _records(output) if "kind" in r and r["kind"] != "final"]
        import shutil

        shutil.rmtree(output / "final")  # as if killed after step 8: checkpoint-4 is the latest
        summary = train_grounding(config, progress=False)
    resumed = [r for r in _records(output) if "kind" in r and r["kind"] != "final"]
    assert summary["resumed_from"] == 4
    assert [(r["kind"], r["step"]) for r in resumed] == [(r["kind"], r["step"]) for r in straight]
    for first, second in zip(straight, resumed, strict=True):
        for key in ("rollout", "explain", "dynamics", "lr"):
            if key in first:
                assert second[key] == pytest.approx(first[key], rel=1e-4, abs=1e-6), (first["step"], key)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_accelerate_two_processes(root: Path, tiny: Path, tmp_path: Path) -> None:
    """Two gloo processes on CPU. ``accelerate launch --cpu --num_processes 2`` starts a single
    process (accelerate's simple launcher needs mpirun for several CPU processes); the torchrun
    launcher (``--multi_gpu``) starts two, which join with gloo without CUDA."""
    from kalm_gen.grounded_lm import GroundedLM

    output = tmp_path / "run"
    config = _tiny_config(tiny, output, steps=4, batch_size=3, eval_every=2, checkpoint_every=2, val_fraction=0.2)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    command = [
        str(PYTHON.parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "kalm_gen.train", "--config", str(config_file), "--no-progress",
    ]
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["num_processes"] == 2  # printed by the main process
    records = _records(output)
    assert records[0]["event"] == "start" and records[0]["num_processes"] == 2
    assert GroundedLM.load(output / "final").config.finetune == "full"

    # process r of 2 trained on batch 2 * step + r: the logged positions are those of both
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output / "final" / "tokenizer", local_files_only=True)
    with temporary_minari_root(root):
        episodes = load_grounding_episodes([REAL])
    data = GroundingData(episodes, lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
                         tokenizer.eos_token_id, config.task_weights, config.val_fraction, config.seed)
    train = [r for r in records if r.get("kind") == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for record in train:
        index = 2 * (record["step"] - 1)
        expected = sum(int(data.train_batch(i, 3)["attention_mask"].sum()) for i in (index, index + 1))
        assert record["positions"] == expected


def test_smollm2_lora_one_step(root: Path, tmp_path: Path) -> None:
    """One LoRA step on the real SmolLM2: finite losses, adapter weights moved."""
    import torch

    from kalm_gen.grounded_lm import GroundedLM

    config = GroundingTrainConfig(
        datasets=[REAL], output=str(tmp_path / "run"), base_model="smollm2", finetune="lora",
        lora_rank=4, batch_size=3, steps=1, lr=1e-3, val_fraction=0.0, seed=0,
    )
    with temporary_minari_root(root):
        summary = train_grounding(config, progress=False)
    for task in ("rollout", "explain", "dynamics"):
        assert np.isfinite(summary["train_losses"][task])
    trained = GroundedLM.load(tmp_path / "run" / "final")
    fresh = GroundedLM.from_config(config.model_config(), seed=config.seed)
    trained_lora = {k: v for k, v in trained.lm.state_dict().items() if "lora_" in k}
    fresh_lora = {k: v for k, v in fresh.lm.state_dict().items() if "lora_" in k}
    assert trained_lora and trained_lora.keys() == fresh_lora.keys()
    changed = [k for k in trained_lora if not torch.equal(trained_lora[k], fresh_lora[k])]
    assert any("lora_B" in k for k in changed)
    assert all(torch.isfinite(v).all() for v in trained_lora.values())
    base = {k: v for k, v in trained.lm.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(v, fresh.lm.state_dict()[k]) for k, v in base.items())  # base frozen

    # one generation with the trained SmolLM2: two imagined steps of a rephrase-level goal
    from kalm_gen.imagine import imagine_rollouts, level_tasks

    tasks = level_tasks("rephrase", 1, seed=3)
    trained.eval()
    (episode,) = imagine_rollouts(
        trained, tasks.goals, tasks.instructions, tasks.initial_states, "rephrase", max_steps=2
    )
    assert episode.length <= 2 and (episode.length >= 1 or episode.invalid)
    assert episode.observations.shape == (episode.length + 1, 10)
    assert np.isfinite(episode.observations).all() or episode.invalid


def test_bad_input(root: Path, tiny: Path, tmp_path: Path) -> None:
    import argparse

    from kalm.commands import ground

    with temporary_minari_root(root):
        with pytest.raises(FileNotFoundError, match="/no/such/model"):
            train_grounding(_tiny_config("/no/such/model", tmp_path / "a"), progress=False)
        with pytest.raises(ValueError, match=f"{OTHER}.*CartPole"):
            train_grounding(_tiny_config(tiny, tmp_path / "b", datasets=[OTHER]), progress=False)
        with pytest.raises(FileNotFoundError, match="kalm/clevr-robot/missing-v0"):
            train_grounding(_tiny_config(tiny, tmp_path / "c", datasets=["kalm/clevr-robot/missing-v0"]), progress=False)
        with pytest.raises(ValueError, match="finetune"):
            train_grounding(_tiny_config(tiny, tmp_path / "d", finetune="qlora"), progress=False)
        with pytest.raises(ValueError, match="steps"):
            train_grounding(_tiny_config(tiny, tmp_path / "e", steps=0), progress=False)
        assert not any((tmp_path / name).exists() for name in "abcde")  # nothing written

        import fcntl

        busy = tmp_path / "busy"
        busy.mkdir()
        with (busy / ".lock").open("a") as handle:  # a run in progress holds the folder's lock
            fcntl.flock(handle, fcntl.LOCK_EX)
            with pytest.raises(ValueError, match="another grounding run"):
                train_grounding(_tiny_config(tiny, busy), progress=False)

        parser = argparse.ArgumentParser()
        ground.add_arguments(parser)
        args = parser.parse_args([
            "--datasets", REAL, "--base-model", str(tiny), "--finetune", "full", "--steps", "3",
            "--batch-size", "3", "--lr", "1e-3", "--output", str(tmp_path / "cli"), "--seed", "2",
            "--head-hidden", "16", "--val-fraction", "0.2", "--task-weights", "rollout=2,explain=1,dynamics=1",
            "--no-progress", "--json",
        ])
        report, text, code = ground.run(args)
        assert code == 0 and report["steps"] == 3 and "explain" in text and "positions/s" in text
        assert set(report["val_losses"]) >= {"rollout", "explain", "dynamics"}
        stored = json.loads((tmp_path / "cli" / CONFIG_FILE).read_text())
        assert stored["task_weights"] == {"rollout": 2.0, "explain": 1.0, "dynamics": 1.0}
        with pytest.raises(SystemExit):
            parser.parse_args(["--datasets", REAL, "--output", "x", "--task-weights", "rollout"])
        bad = parser.parse_args(["--datasets", OTHER, "--output", str(tmp_path / "cli2"), "--base-model", str(tiny)])
        with pytest.raises(ValueError, match="CartPole"):
            ground.run(bad)
