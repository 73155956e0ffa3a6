"""Grounding a language model in CLEVR-Robot: train a :class:`~kalm_gen.grounded_lm.GroundedLM`
on the three grounding tasks (rollout, explain, dynamics) of Minari episodes.

:func:`train_grounding` runs on one process or under ``accelerate launch`` (DDP; ``gloo`` on
CPU), on CUDA with bf16 autocast when the GPU supports it. Process ``r`` of ``n`` trains on
batch ``step * n + r`` of :class:`~kalm_gen.grounding_data.GroundingData` (``batch_size`` is
per process), and only the main process writes files.

The output folder holds:

- ``grounding_config.json``: the :class:`GroundingTrainConfig` of the run;
- ``log.jsonl``: one JSON object a line: ``start``/``resume`` events, per-task ``train`` losses
  (every step, averaged over all processes), ``val`` losses, ``final``;
- ``checkpoint-<step>/``: ``model/`` (:meth:`GroundedLM.save`), ``training_state.pt``
  (optimizer, scheduler, rng, step), the config, and ``checkpoint_complete.json`` (written last);
- ``final/``: the trained model (:meth:`GroundedLM.save`) and ``training_summary.json``;
- ``.lock``: held by the running main process, so that two runs never share a folder.

Checkpoints and the final model are written into a hidden temporary folder renamed into place
once complete, and only a folder holding its completion marker counts, so a killed run never
leaves a half-written checkpoint that looks complete. The last two checkpoints are kept.

Resuming: a run whose output folder already holds a complete checkpoint continues from the
latest one (model, optimizer, scheduler and rng restored; batches are a function of the step,
so it sees the batches it would have seen). The config must be the one stored in the folder
(anything but ``output``); another config is an error. A folder with a complete ``final/``
returns the stored summary without training.

Run from a shell as ``python -m kalm_gen.train --config CONFIG.json``, or ``kalm ground``.
Several processes: ``accelerate launch --multi_gpu --num_processes 2 -m kalm_gen.train --config
CONFIG.json``, on a CPU-only machine too (torchrun starts the processes; without CUDA they join
with gloo). ``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate
1.x (its CPU launcher needs mpirun and a hostfile for more).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kalm_envs.atomic import atomic_write_text
from kalm_envs.dataset_checks import dataset_level
from kalm_envs.torch_files import read_torch_file
from kalm_envs.validation import (
    InvalidTypeError, check_choice, check_count, check_float, check_int, check_path, check_paths, check_seed,
    check_str,
)
from kalm_gen.goal_fields import goal_field_loss, head_targets
from kalm_gen.grounded_lm import GroundedLM, GroundedLMConfig, to_tensors
from kalm_gen.grounding_data import (
    DEFAULT_TASK_WEIGHTS,
    GroundingData,
    GroundingSampler,
    load_grounding_episodes,
    normalize_task_weights,
)
from kalm_gen.push_models import PUSH_MODEL_HEADS
from kalm_gen.sequences import IGNORE, STATE_SCALE, TASKS

__all__ = ["GroundingObjective", "GroundingTrainConfig", "latest_checkpoint", "read_log", "summarize_log", "train_grounding"]

CONFIG_FILE = "grounding_config.json"
LOG_FILE = "log.jsonl"
FINAL_DIR = "final"
CHECKPOINT_MARKER = "checkpoint_complete.json"
PRECISIONS = ("auto", "bf16", "fp32")
SUMMARY_FILE = "training_summary.json"
STATE_FILE = "training_state.pt"
LOCK_FILE = ".lock"
KEEP_CHECKPOINTS = 2
TRAIN_WINDOW = 10  # final train losses: mean over this many last steps
#: Loss components, each a mean over its target positions: (name, task, target kind).
COMPONENTS: tuple[tuple[str, str, str], ...] = (
    ("rollout_action", "rollout", "action"),
    ("rollout_state", "rollout", "state"),
    ("explain", "explain", "text"),
    ("dynamics", "dynamics", "state"),
    ("rollout_goal", "rollout", "goal"),  # goal-first models only: the goal head at goal slots
    ("explain_goal", "explain", "goal"),
)
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


@dataclass
class GroundingTrainConfig:
    """One grounding run.

    Attributes:
        datasets: Minari dataset ids (under the Minari root) or dataset folders, of our spaces.
        output: the run's folder (checkpoints, log, final model).
        base_model: ``"smollm2"``, a local model folder or a ``.gguf`` file.
        finetune: ``"lora"`` or ``"full"``.
        lora_rank: LoRA rank; ``lora_alpha`` defaults to twice the rank.
        head_hidden: hidden width of the state encoder and state head.
        lr: peak learning rate (AdamW), reached after ``warmup_steps``, then cosine decay to
            ``min_lr_ratio * lr`` at ``steps`` (``schedule="constant"``: no decay).
        batch_size: sequences per step and process.
        steps: optimizer steps in all.
        eval_every: validation every this many steps (and at the end).
        checkpoint_every: a checkpoint every this many steps.
        seed: model init, split, batches, wordings.
        task_weights: relative frequency of rollout, explain and dynamics examples.
        val_fraction: share of episodes held out (whole episodes) for validation.
        max_episodes: at most this many episodes of each dataset (the first ones).
        num_layers: keep the LM's first this many decoder layers (None: all).
        state_head: ``"bounded"``, ``"delta"``, ``"mlp"`` or ``"relational"`` (see
            :class:`~kalm_gen.grounded_lm.GroundedLMConfig`).
        action_head: ``"hidden"`` or ``"goal"`` (goal first; see
            :class:`~kalm_gen.grounded_lm.GroundedLMConfig`).
        init_model: start from this grounded model (a published name or a saved model's folder)
            instead of the base model: its LM, adapter, state encoder and heads; the action head
            too when ``action_head`` is the model's, else new heads (:meth:`GroundedLM.replace_action_head`).
            The model's structure (base model, finetune, LoRA, head width, layers, state head) must
            be the config's, except that a push-model ``state_head`` (``"mlp"``, ``"relational"``)
            replaces any other state head with a new one. None: a fresh model.
        action_fit_updates: goal first: before the first step, fit the action head alone on every
            training transition for this many updates (:func:`kalm_gen.action_fit.fit_goal_action_head`;
            logged as ``action_fit``). 0: none. Grounding itself leaves a goal-first action head
            as it is (its inputs do not depend on the LM): this fit is its training.
        state_fit_updates: with a push-model ``state_head``, before the first step, fit the state head alone
            on every training transition for this many updates
            (:func:`kalm_gen.action_fit.fit_state_head`; logged as ``state_fit``); grounding leaves
            it as it is. 0: none.
        explain_fit_updates: after the last step, give the model an explanation head (a new one
            unless ``init_model`` has one) and fit it alone for this many updates on the final
            LM's hidden states (:func:`kalm_gen.explain_head.fit_explain_head`; logged as
            ``explain_fit``, and in the summary). 0: none (a head ``init_model`` has is kept as it is).
        goal_clauses: goal first: clauses the goal head names, 1 or 3 (a clause list; see
            :class:`~kalm_gen.grounded_lm.GroundedLMConfig`).
        compound_fraction: share of training rollout examples that teach a clause-list goal head
            compound goals made of train wordings (:class:`~kalm_gen.grounding_data.GroundingData`);
            needs ``goal_clauses=3``. 0: none.
        move_fraction: goal first: share of training rollout examples that teach the goal head to
            name a move from a train wording without its reference ball
            (:class:`~kalm_gen.grounding_data.GroundingData`); the action fit then learns moves by
            hindsight too (:func:`kalm_gen.action_fit.move_transitions`). 0: none.
        precision: ``"bf16"`` (bfloat16 autocast, on a CPU as well), ``"fp32"``, or ``"auto"``:
            bf16 on a GPU that supports it, else fp32 (``benchmarks/ground_speed.py``: on an AVX2
            CPU bf16 autocast is about 12x slower than fp32).
        pack_length: pack several examples into rows of this many positions
            (:func:`kalm_gen.sequences.pack`) instead of one padded example a row; None pads.
    """

    datasets: list[str]
    output: str
    base_model: str = "smollm2"
    finetune: str = "lora"
    lora_rank: int = 16
    lora_alpha: int | None = None
    head_hidden: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    batch_size: int = 8
    steps: int = 1000
    eval_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    val_fraction: float = 0.1
    max_episodes: int | None = None
    num_layers: int | None = None
    state_head: str = "bounded"
    action_head: str = "hidden"
    init_model: str | None = None
    action_fit_updates: int = 0
    state_fit_updates: int = 0
    explain_fit_updates: int = 0
    goal_clauses: int = 1
    compound_fraction: float = 0.0
    move_fraction: float = 0.0
    precision: str = "auto"
    pack_length: int | None = 512

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str | Path):
            self.datasets = [self.datasets]
        self.datasets = check_paths(self.datasets, "datasets", allow_empty=True)
        self.output = check_path(self.output, "output")
        if not isinstance(self.task_weights, Mapping):
            raise InvalidTypeError(f"task_weights {self.task_weights!r} must be a mapping of task names to weights")
        self.task_weights = {k: check_float(v, f"task_weights[{k!r}]", 0.0) for k, v in self.task_weights.items()}

    def validate(self) -> None:
        """``ValueError`` (``InvalidTypeError``, also a ``TypeError``, for a value of the wrong
        type) naming the first bad setting; see :mod:`kalm_envs.validation` for what each kind of
        setting accepts."""
        check_paths(self.datasets, "datasets")
        check_path(self.base_model, "base_model")
        check_choice(self.finetune, "finetune", ("lora", "full"))
        check_choice(self.schedule, "schedule", ("cosine", "constant"))
        for name in ("lora_rank", "head_hidden", "steps", "eval_every", "checkpoint_every"):
            check_int(getattr(self, name), name, low=1)
        check_count(self.batch_size, "batch_size")
        for name in ("lora_alpha", "max_episodes", "pack_length"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, low=1)
        check_seed(self.seed)
        check_int(self.warmup_steps, "warmup_steps", low=0)
        check_float(self.lr, "lr", 0.0, low_open=True)
        check_float(self.weight_decay, "weight_decay", 0.0)
        check_float(self.min_lr_ratio, "min_lr_ratio", 0.0, 1.0)
        check_float(self.grad_clip, "grad_clip", 0.0)  # 0: no clipping
        check_float(self.val_fraction, "val_fraction", 0.0, 1.0, high_open=True)
        check_choice(self.precision, "precision", PRECISIONS)
        normalize_task_weights(self.task_weights)
        self.model_config()  # num_layers, state_head and action_head
        check_int(self.action_fit_updates, "action_fit_updates", low=0)
        if self.action_fit_updates and self.action_head != "goal":
            raise ValueError(f"action_fit_updates {self.action_fit_updates} needs action_head 'goal', "
                             f"not {self.action_head!r}")
        check_int(self.state_fit_updates, "state_fit_updates", low=0)
        if self.state_fit_updates and self.state_head not in PUSH_MODEL_HEADS:
            raise ValueError(f"state_fit_updates {self.state_fit_updates} needs a state_head in {PUSH_MODEL_HEADS}, "
                             f"not {self.state_head!r}")
        check_int(self.explain_fit_updates, "explain_fit_updates", low=0)
        check_float(self.compound_fraction, "compound_fraction", 0.0, 1.0, high_open=True)
        if self.compound_fraction and self.goal_clauses == 1:
            raise ValueError(f"compound_fraction {self.compound_fraction} needs goal_clauses 3, not 1")
        check_float(self.move_fraction, "move_fraction", 0.0, 1.0 - self.compound_fraction, high_open=True)
        if self.move_fraction and self.action_head != "goal":
            raise ValueError(f"move_fraction {self.move_fraction} needs action_head 'goal', not {self.action_head!r}")
        if self.init_model is not None:
            from kalm_gen.published import resolve_model

            resolve_model(check_str(self.init_model, "init_model"))

    def model_config(self) -> GroundedLMConfig:
        return GroundedLMConfig(
            base_model=self.base_model, finetune=self.finetune, lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank,
            head_hidden=self.head_hidden, num_layers=self.num_layers, state_head=self.state_head,
            action_head=self.action_head, goal_clauses=self.goal_clauses, explain_head=self.explain_fit_updates > 0,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GroundingTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown grounding config field(s) {unknown}")
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """What must match for a run to resume another (everything but ``output``)."""
        values = self.to_dict()
        values.pop("output")
        return values


class GroundingObjective(nn.Module):
    """Per-task losses of a collated batch (with ``task_ids``); what DDP wraps.

    ``forward`` returns ``loss`` (the sum of the component means present in the batch), and
    ``sums`` and ``counts`` ``(len(COMPONENTS),)`` (detached) to average over batches and
    processes. Text logits are computed only at text targets.
    """

    def __init__(self, model: GroundedLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = self.model
        hidden = model.hidden_states(batch)
        task = batch["position_tasks"]
        masks = {
            "action": batch["action_targets"] != IGNORE,
            "state": batch["state_target_mask"].bool(),
            "text": batch["token_targets"] != IGNORE,
        }
        if model.goal_head is not None:  # fields only where the goal has them (e.g. not a line-up)
            goal_targets = head_targets(batch["goal_fields"], model.config.goal_clauses)
            masks["goal"] = batch["goal_slot"].bool() & (goal_targets[..., 0] >= 0)
        errors = {}  # per target position, over every task
        if masks["action"].any():
            where = masks["action"]
            # teacher forcing: a goal-first head acts on the true goal's clause that the state lacks
            logits = model.action_logits(hidden[where], batch["states"][where], batch["goal_fields"][where]).float()
            errors["action"] = F.cross_entropy(logits, batch["action_targets"][where], reduction="none")
        if masks["state"].any():
            # an action slot always follows the state slot of the state it acts on
            before = torch.roll(batch["states"], 1, dims=1)[masks["state"]]
            acted = batch["actions"][masks["state"]]  # the action slot holds the action taken
            change = (model.next_state(hidden[masks["state"]], before, acted) - before) / STATE_SCALE
            errors["state"] = ((change - batch["state_targets"][masks["state"]].float()) ** 2).mean(-1)
        if masks["text"].any():
            logits = model.text_logits(hidden[masks["text"]]).float()
            errors["text"] = F.cross_entropy(logits, batch["token_targets"][masks["text"]], reduction="none")
        if "goal" in masks and masks["goal"].any():
            errors["goal"] = goal_field_loss(model.goal_head(hidden[masks["goal"]]), goal_targets[masks["goal"]],
                                             model.goal_field_sizes)
        # every trainable head takes part in every step (DDP needs all parameters used): a head
        # without a target in this batch adds zero times its output at one position
        zero = hidden.sum() * 0.0
        first = (hidden[:, :1], batch["states"][:, :1], batch["goal_fields"][:, :1])
        heads = {"action": (lambda: model.action_logits(*first), model.action_head),
                 "state": (lambda: model.next_state(first[0], first[1], batch["actions"][:, :1]), model.state_head),
                 "text": (lambda: model.text_logits(first[0]), model._causal_lm().get_output_embeddings())}
        if model.goal_head is not None:
            heads["goal"] = (lambda: model.goal_head(first[0]), model.goal_head)
        for kind, (output, module) in heads.items():
            if kind not in errors and any(p.requires_grad for p in module.parameters()):
                zero = zero + output().float().sum() * 0.0
        loss, sums, counts = zero, [], []
        for _, task_name, kind in COMPONENTS:
            if kind not in errors:
                sums.append(zero.detach())
                counts.append(torch.zeros((), device=hidden.device))
                continue
            selected = task[masks[kind]] == TASKS.index(task_name)
            count = selected.sum()
            total = (errors[kind] * selected).sum()
            if count > 0:
                loss = loss + total / count
            sums.append(total.detach())
            counts.append(count.to(total.dtype))
        return {"loss": loss, "sums": torch.stack(sums).float(), "counts": torch.stack(counts).float()}


# --- losses as reported ------------------------------------------------------------------------------


def _component_means(sums: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    return {name: float(s / c) for (name, _, _), s, c in zip(COMPONENTS, sums, counts, strict=True) if c > 0}


def task_losses(components: dict[str, float]) -> dict[str, float]:
    """Per-task losses from component means: rollout = action CE + state MSE."""
    losses = dict(components)
    if "rollout_action" in components and "rollout_state" in components:
        losses["rollout"] = components["rollout_action"] + components["rollout_state"]
    if {"rollout", "explain", "dynamics"} <= set(losses):
        losses["total"] = losses["rollout"] + losses["explain"] + losses["dynamics"]
    return losses


# --- the output folder --------------------------------------------------------------------------------


def _checkpoint_complete(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, else ``None``."""
    match = _CHECKPOINT_NAME.fullmatch(folder.name)
    if match is None or not folder.is_dir():
        return None
    try:
        marker = json.loads((folder / CHECKPOINT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    step = int(match[1])
    if marker.get("step") != step or not (folder / STATE_FILE).is_file() or not (folder / "model").is_dir():
        return None
    return step


def complete_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint in ``output``, oldest first."""
    if not Path(output).is_dir():
        return []
    found = [(_checkpoint_complete(p), p) for p in Path(output).iterdir()]
    return sorted((step, p) for step, p in found if step is not None)


def latest_checkpoint(output: Path) -> tuple[int, Path] | None:
    """The complete checkpoint of the highest step in ``output``, or ``None``."""
    found = complete_checkpoints(output)
    return found[-1] if found else None


def _final_complete(output: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(output) / FINAL_DIR / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _remove_tree(folder: Path) -> None:
    """Delete ``folder`` so that no reader ever sees it half-deleted: rename it aside first."""
    if not folder.exists():
        return
    aside = folder.with_name(f".{folder.name}.deleting-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _publish(staging: Path, final: Path) -> None:
    """Rename the complete ``staging`` folder to ``final`` (replacing an older one)."""
    staging.chmod(0o755)
    if final.exists():
        _remove_tree(final)
    os.rename(staging, final)


def _prepare_output(config: GroundingTrainConfig) -> Path:
    """Create the output folder, check or store the config, sweep leftovers of killed runs."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    stored_file = output / CONFIG_FILE
    if stored_file.is_file():
        try:
            stored = json.loads(stored_file.read_text())
        except ValueError as error:
            raise ValueError(f"{stored_file} is unreadable ({error}); delete it or use a new output") from error
        stored.pop("output", None)
        current = config.identity()
        if stored != current:
            differences = [
                f"{key}: stored {stored.get(key)!r}, now {current.get(key)!r}"
                for key in sorted(set(stored) | set(current)) if stored.get(key) != current.get(key)
            ]
            raise ValueError(
                f"output folder {output} holds a grounding run with another config "
                f"({'; '.join(differences)}); resume with the same settings, or use a new --output"
            )
    else:
        atomic_write_text(stored_file, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    for leftover in output.iterdir():  # staging folders of checkpoints killed while being written
        if leftover.name.startswith(".") and (".tmp-" in leftover.name or ".deleting-" in leftover.name):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return output


def read_log(output: Path) -> list[dict[str, Any]]:
    """The records of ``output/log.jsonl`` in order, up to a line cut by a kill."""
    path = Path(output) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            break
    return records


def _reset_log(output: Path, keep_until: int, event: dict[str, Any]) -> None:
    """Keep the log records up to step ``keep_until`` (what a resumed run has done), add ``event``."""
    kept = [r for r in read_log(output) if r.get("step", 0) <= keep_until] if keep_until > 0 else []
    lines = [json.dumps(r, sort_keys=True) for r in [*kept, event]]
    atomic_write_text(output / LOG_FILE, "\n".join(lines) + "\n")


# --- rng state ----------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """Every global generator's state in types ``torch.load(weights_only=True)`` reads back (numpy's
    key array as a tensor), so a checkpoint can be loaded without unpickling arbitrary objects."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position,
                                                     has_gauss, gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- training -----------------------------------------------------------------------------------------


def _schedule(config: GroundingTrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _mixed_precision(precision: str) -> str:
    """accelerate's ``mixed_precision`` for a config's ``precision``."""
    if precision == "auto":  # on a CPU without bf16 instructions (AVX2) bf16 is ~10x slower
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if precision == "bf16" else "no"


def train_grounding(config: GroundingTrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume training) a grounded LM; return a summary.

    The summary holds ``steps``, ``resumed_from`` (a step or ``None``), ``initial_train_losses``
    (the first step's), ``train_losses`` (mean of the last steps), ``val_losses`` (the last
    validation), ``wall_s``, ``train_s`` (time in training steps), ``positions`` and
    ``positions_per_s`` (non-padding sequence positions processed in this call, all processes),
    ``peak_rss_mb``, the folders, and the run's sizes.

    Raises:
        FileNotFoundError: a dataset or the base model does not exist.
        ValueError: a bad setting, a dataset of another env or spaces, or an output folder
            holding a run with another config.
    """
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:  # transformers' own bars (loading and writing shards) would flood the output
        hf_logging.disable_progress_bar()
    try:
        with contextlib.ExitStack() as stack:
            return _train(config, progress, stack)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _exclusive(output: Path):
    """Hold ``output/.lock`` for the run: a second run into the same folder is refused. The
    operating system drops the lock when its holder dies, so a killed run blocks nobody."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no guard
        yield
        return
    with (output / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another grounding run is writing to {output} (it holds {LOCK_FILE})") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train(config: GroundingTrainConfig, progress: bool, stack: contextlib.ExitStack) -> dict[str, Any]:
    from accelerate import Accelerator

    from kalm_gen.base_model import resolve_base_model

    started = time.perf_counter()
    config.validate()
    for dataset in config.datasets:  # fail on bad input before any heavy work
        dataset_level(dataset)
    resolve_base_model(config.base_model, progress=progress)

    accelerator = Accelerator(
        # without CUDA, cpu=True is what makes accelerate join torchrun-started processes with
        # gloo (MULTI_CPU) instead of leaving each process alone
        cpu=not torch.cuda.is_available(),
        mixed_precision=_mixed_precision(config.precision),
    )
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    output = Path(config.output)
    problem: list[Any] = [None]
    if main:
        try:
            output.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_exclusive(output))
            _prepare_output(config)
        except (ValueError, OSError) as error:
            problem = [f"{type(error).__name__}: {error}"]
            if world == 1:
                raise
    if world > 1:  # the other processes must not wait for a main process that gave up
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(problem, from_process=0)
        if problem[0] is not None:
            raise ValueError(problem[0])

    finished = _final_complete(output)
    if finished is not None and finished.get("steps") == config.steps:
        return {**finished, "already_complete": True, "main_process": main,
                "wall_s": round(time.perf_counter() - started, 2)}

    latest = latest_checkpoint(output)
    start_step = 0
    if latest is not None:
        start_step, checkpoint = latest
        model = GroundedLM.load(checkpoint / "model")
        state = read_torch_file(checkpoint / STATE_FILE, "grounding checkpoint")
    else:
        model = _initial_model(config)
        state = None
    if main:
        event = {"event": "resume" if latest else "start", "step": start_step, "time": time.time(),
                 "num_processes": world}
        _reset_log(output, start_step, event)

    episodes = load_grounding_episodes(config.datasets, config.max_episodes)
    data = GroundingData(
        episodes, model.tokenize, model.eos_id, config.task_weights, config.val_fraction, config.seed,
        config.compound_fraction, config.move_fraction,
    )

    if model.goal_head is not None:
        # goal first, the action head reads the true goal and the state, never the LM: grounding
        # batches would only add noise to what the action fit learnt from every transition
        model.action_head.requires_grad_(False)
    if model.reads_action:  # a push model is trained by the state fit alone
        model.state_head.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in parameters)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if main:
            _set_rng_state(state["rng"])
        else:
            torch.manual_seed(config.seed * 1000 + rank + start_step)
    else:
        torch.manual_seed(config.seed * 1000 + rank)
    objective, optimizer = accelerator.prepare(GroundingObjective(model), optimizer)
    device = accelerator.device

    def evaluate() -> dict[str, float]:
        inner = accelerator.unwrap_model(objective)
        inner.eval()
        totals = torch.zeros(2 * len(COMPONENTS), device=device)
        with torch.no_grad(), accelerator.autocast():
            for batch in data.val_batches(config.batch_size, rank, world):
                result = inner(to_tensors(batch, device))
                totals += torch.cat([result["sums"], result["counts"]])
        inner.train()
        totals = accelerator.reduce(totals, reduction="sum").cpu().numpy()
        return task_losses(_component_means(totals[:len(COMPONENTS)], totals[len(COMPONENTS):]))

    def log(record: dict[str, Any]) -> None:
        if main:
            with (output / LOG_FILE).open("a") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    if state is None and config.action_fit_updates:
        from kalm_gen.action_fit import fit_goal_action_head

        log({"kind": "action_fit", **fit_goal_action_head(model, data.train_episodes, config.action_fit_updates,
                                                          seed=config.seed, moves=config.move_fraction > 0)})
    if state is None and config.state_fit_updates:
        from kalm_gen.action_fit import fit_state_head

        log({"kind": "state_fit", **fit_state_head(model, data.train_episodes, config.state_fit_updates,
                                                   seed=config.seed)})

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start_step, desc="grounding", unit="step",
               disable=not (main and progress), dynamic_ncols=True)
    sampler = GroundingSampler(data, config.batch_size, rank, world, start_step, device=device,
                               pack_length=config.pack_length)
    smoothed: dict[str, float] = {}
    positions = 0
    train_seconds = 0.0
    step = start_step
    objective.train()
    with bar:  # closes on an error too, so the error is not glued to the bar's line
        while step < config.steps:
            tick = time.perf_counter()
            batch = next(sampler)
            with accelerator.autocast():
                result = objective(batch)
            accelerator.backward(result["loss"])
            if config.grad_clip > 0:
                accelerator.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            stats = torch.cat([result["sums"], result["counts"], batch["attention_mask"].sum().float()[None]])
            stats = accelerator.reduce(stats, reduction="sum").cpu().numpy()
            train_seconds += time.perf_counter() - tick
            positions += int(stats[-1])
            losses = task_losses(_component_means(stats[:len(COMPONENTS)], stats[len(COMPONENTS):-1]))
            log({"kind": "train", "step": step, **losses, "lr": scheduler.get_last_lr()[0],
                 "positions": int(stats[-1]), "seconds": round(time.perf_counter() - tick, 4)})
            for name in ("rollout", "explain", "dynamics"):  # the bar shows moving averages
                if name in losses:
                    smoothed[name] = 0.9 * smoothed.get(name, losses[name]) + 0.1 * losses[name]
            bar.set_postfix({name: f"{value:.3f}" for name, value in smoothed.items()}, refresh=False)
            bar.update(1)
            if data.val_episodes and (step % config.eval_every == 0 or step == config.steps):
                val = evaluate()
                log({"kind": "val", "step": step, **val})
                if main and progress:
                    bar.write(f"step {step} val " + " ".join(f"{k}={v:.4f}" for k, v in val.items()))
            if step % config.checkpoint_every == 0 and step < config.steps:
                accelerator.wait_for_everyone()
                if main:
                    model_now = accelerator.unwrap_model(objective).model
                    _save_checkpoint(output, step, model_now, optimizer, scheduler, config)
                accelerator.wait_for_everyone()

    accelerator.wait_for_everyone()
    records = read_log(output)
    summary = _summary(config, records, start_step, latest is not None, data, trainable, world)
    summary.update({
        "wall_s": round(time.perf_counter() - started, 2),
        "train_s": round(train_seconds, 2),
        "positions": positions,
        "positions_per_s": round(positions / train_seconds, 1) if train_seconds > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(device),
        "mixed_precision": accelerator.mixed_precision,
    })
    if torch.cuda.is_available():
        summary["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    final_model = accelerator.unwrap_model(objective).model
    if main and config.explain_fit_updates:
        from kalm_gen.explain_head import fit_explain_head

        summary["explain_fit"] = fit_explain_head(final_model, data.train_episodes, config.explain_fit_updates,
                                                  seed=config.seed)
        log({"kind": "explain_fit", **summary["explain_fit"]})
    if main:
        _save_final(output, final_model, summary)
        log({"kind": "final", "step": step, "time": time.time()})
    accelerator.wait_for_everyone()
    summary["main_process"] = main
    return summary


def _initial_model(config: GroundingTrainConfig) -> GroundedLM:
    """A fresh model, or ``config.init_model`` with the config's action head and goal head (a
    new goal head when the clause counts differ; the fitted action MLP is kept)."""
    if config.init_model is None:
        return GroundedLM.from_config(config.model_config(), seed=config.seed)
    model = GroundedLM.load(config.init_model)  # a published name or a folder
    wanted, found = asdict(config.model_config()), asdict(model.config)
    for name in ("base_model", "finetune", "lora_rank", "lora_alpha", "head_hidden", "num_layers", "state_head"):
        if name == "state_head" and wanted[name] in PUSH_MODEL_HEADS:
            continue  # a new push model replaces any other state head (below)
        if wanted[name] != found[name]:
            raise ValueError(f"init_model {config.init_model!r} has {name}={found[name]!r}, the config {wanted[name]!r}")
    if model.config.action_head != config.action_head:
        model.replace_action_head(config.action_head, seed=config.seed)
    if model.config.goal_clauses != config.goal_clauses:
        model.replace_goal_head(config.goal_clauses, seed=config.seed)
    if model.config.state_head != config.state_head:
        model.replace_state_head(config.state_head, seed=config.seed)
    if config.explain_fit_updates and model.explain_head is None:
        model.add_explain_head(seed=config.seed)
    return model


def _save_checkpoint(
    output: Path, step: int, model: GroundedLM, optimizer, scheduler, config: GroundingTrainConfig
) -> Path:
    """Write ``checkpoint-<step>`` atomically, then drop all but the last checkpoints."""
    staging = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.tmp-", dir=output))
    model.save(staging / "model")
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": _rng_state()}
    torch.save(state, staging / STATE_FILE)
    (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    (staging / CHECKPOINT_MARKER).write_text(json.dumps({"step": step, "time": time.time()}) + "\n")
    final = output / f"checkpoint-{step}"
    _publish(staging, final)
    for _, old in complete_checkpoints(output)[:-KEEP_CHECKPOINTS]:
        _remove_tree(old)
    return final


def _save_final(output: Path, model: GroundedLM, summary: dict[str, Any]) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=f".{FINAL_DIR}.tmp-", dir=output))
    model.save(staging)
    (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    final = output / FINAL_DIR
    _publish(staging, final)
    return final


def summarize_log(records: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """The losses of a run's log records: ``initial_train_losses`` (the first value of each),
    ``train_losses`` (mean of the last :data:`TRAIN_WINDOW` steps), ``val_losses`` and
    ``val_step`` (the last validation), with ``steps``."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    keys = ("rollout", "rollout_action", "rollout_state", "explain", "dynamics", "total", "rollout_goal",
            "explain_goal")

    def means(rows: list[dict[str, Any]]) -> dict[str, float]:
        out = {}
        for key in keys:
            values = [r[key] for r in rows if key in r]
            if values:
                out[key] = float(np.mean(values))
        return out

    initial: dict[str, float] = {}
    for row in train:  # the first value of each loss (a task may be absent from the first batch)
        for key in keys:
            if key in row and key not in initial:
                initial[key] = row[key]
    return {
        "steps": steps,
        "initial_train_losses": initial,
        "train_losses": means(train[-TRAIN_WINDOW:]),
        "val_losses": {k: v for k, v in val[-1].items() if k in keys} if val else {},
        "val_step": val[-1]["step"] if val else None,
    }


def _summary(config, records, start_step, resumed, data, trainable, world) -> dict[str, Any]:
    return {
        **summarize_log(records, config.steps),
        "start_step": start_step,
        "resumed_from": start_step if resumed else None,
        "train_episodes": len(data.train_episodes),
        "val_episodes": len(data.val_episodes),
        "trainable_parameters": trainable,
        "num_processes": world,
        "batch_size": config.batch_size,
        "output": str(Path(config.output)),
        "final_model": str(Path(config.output) / FINAL_DIR),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m kalm_gen.train --config CONFIG.json``: train and print the summary as JSON."""
    parser = argparse.ArgumentParser(prog="python -m kalm_gen.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="a GroundingTrainConfig as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = GroundingTrainConfig.from_dict(json.loads(args.config.read_text()))
    summary = train_grounding(config, progress=not args.no_progress)
    if summary["main_process"]:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
