"""Discrete batch-constrained Q-learning (Fujimoto et al., 2019, discrete variant).

A behaviour model ``G(a | s)`` is cloned from the data. Only actions with
``G(a | s) / max_a' G(a' | s) >= threshold`` may be chosen, both in the double-DQN target and by
the policy, so the critic is never asked about actions the data does not support.

Acting, softened: the policy samples an allowed action with probability proportional to
``G(a | s) exp(Q(s, a) / q_temperature)``, the behaviour model tilted towards higher values; at
acting temperature 0 it takes the argmax of that, which for a small ``q_temperature`` is BCQ's
``argmax`` of ``Q`` over the allowed actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kalm_envs.validation import check_float
from kalm_rl.data import Batch
from kalm_rl.learners.base import Learner, QLearnerConfig
from kalm_rl.networks import gather, mlp, td_target


@dataclass
class BCQConfig(QLearnerConfig):
    """``threshold`` in [0, 1]: relative behaviour probability an action needs to be allowed.
    The paper's 0.3 leaves too few actions here: the oracle data often has several equally good
    pushes, and a policy limited to one or two of them falls into loops. Compare with
    ``kalm train --algorithm bcq --param threshold=0.3`` and ``kalm evaluate --levels train``.
    ``q_temperature`` (scaled reward units): how strongly values tilt the behaviour model when
    acting."""

    threshold: float = 0.05
    q_temperature: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.threshold = check_float(self.threshold, "threshold", 0.0, 1.0)
        self.q_temperature = check_float(self.q_temperature, "q_temperature", 0.0, low_open=True)


class BCQ(Learner):
    name = "bcq"
    Config = BCQConfig

    def __init__(self, input_dim: int, config: BCQConfig) -> None:
        super().__init__(input_dim, config)
        self.q = mlp(input_dim, config.hidden)
        self.behaviour = mlp(input_dim, config.hidden)
        self.q_target = self.target_of(self.q)
        self._log_threshold = float(torch.tensor(config.threshold).log())

    def _allowed(self, behaviour_log_probs: torch.Tensor) -> torch.Tensor:
        """``(B, 40)`` bool: the actions the behaviour model deems likely enough."""
        log_ratio = behaviour_log_probs - behaviour_log_probs.max(dim=1, keepdim=True).values
        return log_ratio >= self._log_threshold  # -inf for threshold 0: every action allowed

    def losses(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            allowed = self._allowed(F.log_softmax(self.behaviour(batch.next_inputs), dim=1))
            next_actions = self.q(batch.next_inputs).masked_fill(~allowed, float("-inf")).argmax(dim=1)
            next_values = gather(self.q_target(batch.next_inputs), next_actions)
            targets = td_target(batch.rewards, batch.terminals, next_values, self.config.gamma)
        q_taken = gather(self.q(batch.inputs), batch.actions)
        td = F.mse_loss(q_taken, targets)
        imitation = F.cross_entropy(self.behaviour(batch.inputs), batch.actions)
        loss = td + imitation
        return loss, {"loss": loss.detach(), "td": td.detach(), "imitation": imitation.detach(),
                      "q": q_taken.detach().mean()}

    def action_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``log G(a | s) + Q(s, a) / q_temperature`` on allowed actions, -inf elsewhere."""
        log_probs = F.log_softmax(self.behaviour(inputs), dim=1)
        scores = log_probs + self.q(inputs) / self.config.q_temperature
        return scores.masked_fill(~self._allowed(log_probs), float("-inf"))
