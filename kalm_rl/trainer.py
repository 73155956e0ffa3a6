"""Training one offline learner on Minari datasets, with checkpoints, resume and a loss log.

A run folder holds:

- ``config.json``: the :class:`TrainConfig`; a rerun into the same folder must agree with it
  (only :data:`EXTENSIBLE` settings may change, so a finished run can be extended);
- ``checkpoint.pt``: learner, optimiser and sampler state at the last checkpoint (atomic);
- ``log.jsonl``: one JSON line per ``log_every`` updates with the mean of each logged figure;
- ``best-val_loss.pt``, ``best-val_agreement.pt``: the learner's weights at the lowest validation
  loss and at the highest validation agreement so far (runs with a validation fraction);
- ``policy.pt`` (see :mod:`kalm_rl.policy`) and ``summary.json``, written when training ends.

With ``validation_fraction`` > 0 that share of the episodes (of the real datasets and, separately,
of the imagined ones) is held out of training; every ``log_every`` updates the learner's figures on
a fixed sample of them join the log as ``val_<name>`` (``val_loss``, ``val_agreement``, ...).
``select`` picks the weights that become the policy; it may change on a rerun, which re-saves the
policy without training again.

An interrupted run resumes from its checkpoint and then follows the same trajectory as an
uninterrupted one: same batches, same weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from kalm_envs.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from kalm_envs.loader import load_transitions
from kalm_envs.text_encoders import DEFAULT_ENCODER, ENCODER_NAMES, make_encoder
from kalm_envs.torch_files import read_torch_file
from kalm_envs.validation import (
    InvalidTypeError, check_choice, check_count, check_float, check_int, check_path, check_paths, check_seed,
)
from kalm_rl.data import IMAGINED_EPISODES, Batch, OfflineData
from kalm_rl.devices import resolve_device
from kalm_rl.learners import Learner, learner_class, make_learner
from kalm_rl.policy import POLICY_FILE, save_policy

CONFIG_FILE, CHECKPOINT_FILE, LOG_FILE, SUMMARY_FILE = "config.json", "checkpoint.pt", "log.jsonl", "summary.json"
SELECT_SIGNS = {"val_loss": 1.0, "val_agreement": -1.0}
"""Validation figures a run may select its policy by, with the sign that makes smaller better."""
SELECTIONS = ("last", *SELECT_SIGNS)
VALIDATION_ROWS = 2048
"""Held-out transitions scored at each log step (a fixed sample, drawn once per run)."""
EXTENSIBLE = ("updates", "checkpoint_every", "log_every", "temperature", "select", "device")
"""Settings a rerun may change without starting over."""


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        algorithm: ``bc``, ``cql``, ``iql`` or ``bcq``; ``params`` override its defaults
            (e.g. ``{"alpha": 0.5, "hidden": [256, 256]}``).
        datasets: real dataset ids or folders; ``imagined``: imagined (or oracle) ones.
        real_fraction: share of each batch drawn from ``datasets`` when ``imagined`` is given
            (0.5 is the KALM paper's 1:1).
        imagined_episodes: ``all`` samples every imagined episode; ``successful`` only those whose
            last generated state meets their goal (:func:`kalm_rl.data.episode_reached_goal`);
            ``progress`` only the pushes of those that bring the goal closer
            (:func:`kalm_rl.data.progress_rows`); ``final-push`` only the last push of each of those.
        encoder: instruction encoder name (``ordered``, ``hashed`` or ``minilm``), saved with the
            policy.
        updates: gradient steps; ``batch_size``: transitions per step.
        reward_scale: rewards are multiplied by this (the success step's 100 becomes 1).
        output: the run folder.
        temperature: acting temperature saved with the policy (None: the algorithm's default).
        validation_fraction: share of episodes held out for validation figures (0: none).
        select: which weights become the policy: ``last``, or those at the lowest ``val_loss`` or
            the highest ``val_agreement`` seen at a log step (needs ``validation_fraction`` > 0).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (see :func:`kalm_rl.devices.resolve_device`);
            batches are drawn on the CPU either way, and the saved policy acts on the CPU.
    """

    algorithm: str
    datasets: list[str]
    output: str
    imagined: list[str] = field(default_factory=list)
    real_fraction: float = 0.5
    imagined_episodes: str = "all"
    encoder: str = DEFAULT_ENCODER
    params: dict[str, Any] = field(default_factory=dict)
    updates: int = 20_000
    batch_size: int = 256
    reward_scale: float = 0.01
    seed: int = 0
    checkpoint_every: int = 1_000
    log_every: int = 100
    temperature: float | None = None
    validation_fraction: float = 0.0
    select: str = "last"
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ``ValueError`` (``InvalidTypeError``, also a ``TypeError``, for a value of the
        wrong type) naming the first bad setting; see :mod:`kalm_envs.validation` for what each
        kind of setting accepts."""
        if not isinstance(self.params, Mapping):
            raise InvalidTypeError(f"params {self.params!r} must be a mapping of setting names to values")
        learner_class(self.algorithm).Config.from_params(dict(self.params))
        check_paths(self.datasets, "datasets")
        check_paths(self.imagined, "imagined", allow_empty=True)
        check_path(self.output, "output")
        if self.imagined:
            check_float(self.real_fraction, "real fraction", 0.0, 1.0, low_open=True, high_open=True)
        check_choice(self.imagined_episodes, "imagined episodes", IMAGINED_EPISODES)
        check_choice(self.encoder, "encoder", sorted(ENCODER_NAMES))
        for name in ("updates", "checkpoint_every", "log_every"):
            check_int(getattr(self, name), name, low=1)
        check_count(self.batch_size, "batch_size")
        check_seed(self.seed)
        check_float(self.reward_scale, "reward scale", 0.0, low_open=True)
        if self.temperature is not None:
            check_float(self.temperature, "temperature", 0.0)
        check_float(self.validation_fraction, "validation fraction", 0.0, 1.0, high_open=True)
        check_choice(self.select, "selection", SELECTIONS)
        if self.select != "last" and self.validation_fraction == 0:
            raise ValueError(f"select {self.select!r} needs a validation fraction above 0")
        if not isinstance(self.device, str):
            raise InvalidTypeError(f"device {self.device!r} must be a str such as 'cpu' or 'cuda:0'")
        resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that define the trajectory of training (all but :data:`EXTENSIBLE`)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXTENSIBLE}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _check_output(config: TrainConfig, output: Path) -> None:
    """Refuse a run folder that holds training of a different run; store the config. A folder
    without a checkpoint holds no training (a run that failed before its first one, say with a
    batch too large for memory), so its config is replaced. Temporary files of saves killed
    mid-write are removed."""
    stored = output / CONFIG_FILE
    if stored.is_file() and (output / CHECKPOINT_FILE).is_file():
        try:
            previous = TrainConfig.from_dict(json.loads(stored.read_text())).identity()
        except (ValueError, TypeError) as error:
            raise ValueError(f"{stored} is unreadable ({error}); delete {output} or choose a new --output") from error
        changed = sorted(k for k, v in config.identity().items() if json.loads(json.dumps(v)) != previous.get(k))
        if changed:
            raise ValueError(f"{output} holds a different run (settings {changed} differ); "
                             "choose a new --output or delete it")
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    atomic_write_text(stored, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def _read_log(output: Path, until: int) -> list[dict[str, Any]]:
    """Log records up to update ``until`` (later ones belong to work lost with an interruption)."""
    file = output / LOG_FILE
    if not file.is_file():
        return []
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= until]


def best_file(output: Path, figure: str) -> Path:
    """Where the weights at the best ``figure`` (a key of :data:`SELECT_SIGNS`) are kept."""
    return output / f"best-{figure}.pt"


@dataclass
class _Best:
    """The best value of one validation figure seen so far (``step`` 0: none yet)."""

    step: int = 0
    value: float = float("inf")  # the figure times its SELECT_SIGNS sign


def _save_checkpoint(output: Path, step: int, learner: Learner, generator: torch.Generator,
                     best: dict[str, _Best]) -> None:
    state = {"step": step, "learner": learner.state_dict(), "optimizer": learner.optimizer.state_dict(),
             "generator": generator.get_state(), "best": {k: asdict(v) for k, v in best.items()}}
    with atomic_path(output / CHECKPOINT_FILE) as tmp:
        torch.save(state, tmp)


def _restore(output: Path, learner: Learner, generator: torch.Generator) -> tuple[int, dict[str, _Best]]:
    """Load the checkpoint into ``learner`` and ``generator``; the update count it was taken at
    and the best validation figures up to then."""
    file = output / CHECKPOINT_FILE
    best = {figure: _Best() for figure in SELECT_SIGNS}
    if not file.is_file():
        return 0, best
    state = read_torch_file(file, "kalm train checkpoint")
    learner.load_state_dict(state["learner"])
    learner.optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    best.update({k: _Best(**v) for k, v in state.get("best", {}).items()})
    return int(state["step"]), best


def _track_best(output: Path, record: dict[str, Any], learner: Learner, best: dict[str, _Best]) -> None:
    """Save the learner's weights for every validation figure of ``record`` that beats its best
    so far (``best`` is updated in place)."""
    for figure, sign in SELECT_SIGNS.items():
        if sign * record[figure] < best[figure].value:
            best[figure] = _Best(record["step"], sign * record[figure])
            with atomic_path(best_file(output, figure)) as tmp:
                torch.save(learner.state_dict(), tmp)


def load_data(config: TrainConfig) -> tuple[OfflineData, Any]:
    """The run's batches source and its instruction encoder."""
    names = [*config.datasets, *config.imagined]
    transitions = load_transitions(names)
    encoder = make_encoder(config.encoder)
    imagined_sources = range(len(config.datasets), len(names))
    data = OfflineData(transitions, imagined_sources, encoder, config.real_fraction, config.reward_scale,
                       config.imagined_episodes)
    return data, encoder


def validation_batch(config: TrainConfig, data: OfflineData) -> tuple[OfflineData, Batch | None]:
    """``(training data, fixed held-out batch)``; the batch is None without a validation fraction."""
    if config.validation_fraction == 0:
        return data, None
    train, held_out = data.split_episodes(config.validation_fraction, config.seed)
    if len(held_out.real_rows) == 0:
        raise ValueError(f"validation fraction {config.validation_fraction}: the real data has too few "
                         "episodes to hold any out")
    return train, held_out.sample(VALIDATION_ROWS, torch.Generator().manual_seed(config.seed))


def train_policy(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or extend) the run ``config.output``; returns its summary.

    The summary holds the config, the number of transitions per source, the last logged losses,
    the update whose weights became the policy, updates per second of this call and the wall time.
    """
    config.validate()
    output = Path(config.output)
    device = resolve_device(config.device)
    data, encoder = load_data(config)  # bad datasets are refused before anything is written
    data, held_out = validation_batch(config, data.to(device))
    _check_output(config, output)
    torch.manual_seed(config.seed)
    learner = make_learner(config.algorithm, data.input_dim, config.params).to(device)
    learner.make_optimizer()
    generator = torch.Generator().manual_seed(config.seed)
    start, best = _restore(output, learner, generator)
    if start > config.updates:
        raise ValueError(f"{output} already holds {start} updates, more than --updates {config.updates}")
    records = _read_log(output, start)
    atomic_write_text(output / LOG_FILE, "".join(json.dumps(r) + "\n" for r in records))

    began = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    since = start
    bar = tqdm(total=config.updates, initial=start, disable=not progress, desc=f"kalm train {config.algorithm}",
               unit="upd", mininterval=1.0)
    learner.train()
    with bar, open(output / LOG_FILE, "a") as log:  # the bar closes on an error too
        for step in range(start + 1, config.updates + 1):
            for key, value in learner.update(data.sample(config.batch_size, generator)).items():
                sums[key] = sums[key] + value if key in sums else value.clone()
            if step % config.log_every == 0 or step == config.updates:
                record = {"step": step, **{k: float(v) / (step - since) for k, v in sums.items()}}
                if held_out is not None:
                    record |= learner.validation_figures(held_out)
                    _track_best(output, record, learner, best)
                log.write(json.dumps(record) + "\n")
                log.flush()
                records.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                sums, since = {}, step
            if step % config.checkpoint_every == 0 or step == config.updates:
                _save_checkpoint(output, step, learner, generator, best)
            bar.update(1)
    elapsed = time.perf_counter() - began
    selected = config.updates
    if config.select != "last":
        learner.load_state_dict(read_torch_file(best_file(output, config.select), "kalm train checkpoint"))
        selected = best[config.select].step
    save_policy(output, learner.cpu(), encoder, temperature=config.temperature)
    summary = {
        "config": config.to_dict(),
        "output": str(output),
        "policy": str(output / POLICY_FILE),
        "transitions": {"real": len(data.real_rows), "imagined": len(data.imagined_rows)},
        "selected_step": selected,
        "best_steps": {figure: b.step for figure, b in best.items()} if held_out is not None else None,
        "resumed_from": start,
        "updates_run": config.updates - start,
        "updates_per_s": (config.updates - start) / elapsed if elapsed > 0 and config.updates > start else None,
        "seconds": elapsed,
        "last_log": records[-1] if records else None,
    }
    atomic_write_text(output / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
