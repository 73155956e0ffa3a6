"""What every offline learner shares: its configuration, one update step and target networks.

A learner is an ``nn.Module`` built from ``(input_dim, config)``. Subclasses define ``losses``
(one scalar to minimise plus figures to log) and ``action_scores`` (the greedy policy is their
argmax). Where a learner has several networks with separate objectives (IQL, BCQ), their losses
touch disjoint parameters, so one backward pass and one Adam step over the sum equal separate
optimisers with the same learning rate.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from kalm_envs.validation import InvalidTypeError, check_choice, check_float, check_int
from kalm_rl.data import Batch
from kalm_rl.networks import soft_update


PRECISIONS = ("float32", "bfloat16")


@dataclass
class LearnerConfig:
    """Settings every learner has. ``hidden``: widths of the hidden layers of each network.
    ``precision``: ``bfloat16`` computes the losses under autocast (weights, optimiser state and
    acting stay float32); faster on CPUs with AVX-512 BF16 or AMX (``benchmarks/learner_speed.py``
    prints both) and on GPUs with bfloat16 tensor cores, at 3 significant digits per matmul output."""

    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    precision: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.hidden, str | bytes) or not isinstance(self.hidden, Sequence) or not self.hidden:
            raise InvalidTypeError(f"hidden widths {self.hidden!r} must be a non-empty list of positive integers")
        self.hidden = tuple(check_int(w, "hidden width", low=1) for w in self.hidden)
        self.lr = check_float(self.lr, "learning rate", 0.0, low_open=True)
        check_choice(self.precision, "precision", PRECISIONS)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LearnerConfig:
        """A config from ``name -> value``; an unknown name is an error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QLearnerConfig(LearnerConfig):
    """Settings of learners with a temporal-difference critic.

    ``gamma``: discount per push (0.9: goals take about 6 pushes, and with 0.99 every state's
    value is within a few percent of the success reward, which leaves too little to rank pushes
    by). ``tau``: Polyak rate of the target networks per update.
    """

    gamma: float = 0.9
    tau: float = 0.005

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gamma = check_float(self.gamma, "gamma", 0.0, 1.0, high_open=True)
        self.tau = check_float(self.tau, "tau", 0.0, 1.0, low_open=True)


class Learner(nn.Module):
    """Base class; see the module docstring."""

    name: ClassVar[str]
    Config: ClassVar[type[LearnerConfig]] = LearnerConfig
    temperature: ClassVar[float] = 1.0
    """Default acting temperature: the policy samples from ``softmax(action_scores / T)``."""

    def __init__(self, input_dim: int, config: LearnerConfig) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.config = config
        self._targets: list[tuple[nn.Module, nn.Module]] = []  # (target, online) pairs
        self.optimizer: torch.optim.Optimizer | None = None

    def target_of(self, network: nn.Module) -> nn.Module:
        """A frozen copy of ``network`` that follows it by Polyak averaging after each update.

        Assign the result to an attribute (``self.q_target = self.target_of(self.q)``) so that it
        is saved and restored with the learner's ``state_dict``.
        """
        target = copy.deepcopy(network).requires_grad_(False)
        self._targets.append((target, network))
        return target

    def losses(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def action_scores(self, inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """``(B, input_dim)`` -> ``(B, 40)`` logits of the acting distribution at temperature 1:
        log-probabilities for policy learners, values (in scaled reward units) for Q-learners.
        ``-inf`` marks an action the learner never takes."""
        raise NotImplementedError

    def make_optimizer(self) -> None:
        """Adam over every trainable parameter (call once, after the networks exist)."""
        params = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr, fused=True)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``; returns the logged figures (0-d tensors)."""
        if self.optimizer is None:
            self.make_optimizer()
        device_type = next(self.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            loss, logs = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for target, online in self._targets:
            soft_update(target, online, self.config.tau)
        return logs

    @torch.no_grad()
    def validation_figures(self, batch: Batch) -> dict[str, float]:
        """The figures :meth:`update` logs, computed on held-out ``batch`` without updating, as
        ``val_<name>``, plus ``val_agreement``: the share of rows whose greedy action is the data's."""
        _, logs = self.losses(batch)
        agreement = (self.action_scores(batch.inputs).argmax(dim=1) == batch.actions).float().mean()
        return {f"val_{name}": float(value) for name, value in logs.items()} | {"val_agreement": float(agreement)}

    @torch.no_grad()
    def act(self, inputs: torch.Tensor, temperature: float = 0.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B,)`` int64 actions for ``(B, input_dim)`` inputs: the argmax of the scores at
        temperature 0, else a draw from ``softmax(scores / temperature)``."""
        scores = self.action_scores(inputs)
        if temperature == 0:
            return scores.argmax(dim=1)
        probabilities = torch.softmax(scores / temperature, dim=1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
