"""Implicit Q-learning (Kostrikov et al., 2022) for discrete actions.

Three objectives on disjoint networks, summed into one step:

- value: expectile regression of ``V(s)`` towards ``min(Q1_t, Q2_t)(s, a)`` with expectile
  ``tau_expectile`` (> 0.5 leans towards the best actions the data took, never querying others);
- critic: both ``Q_i(s, a)`` towards ``r + gamma (1 - terminal) V(s')``;
- policy: advantage-weighted behaviour cloning, weights ``exp(beta (Q_t - V))`` capped at 100.

The policy samples from its own logits (temperature 1; greedy with ``temperature=0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kalm_envs.validation import check_float
from kalm_rl.data import Batch
from kalm_rl.learners.base import Learner, QLearnerConfig
from kalm_rl.networks import gather, mlp, td_target

MAX_WEIGHT = 100.0


@dataclass
class IQLConfig(QLearnerConfig):
    """``expectile`` in (0, 1) of the value regression; ``beta``: inverse temperature of the
    policy's advantage weights, per unit of scaled reward (advantages are about 0.1 here)."""

    expectile: float = 0.7
    beta: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.expectile = check_float(self.expectile, "expectile", 0.0, 1.0, low_open=True, high_open=True)
        self.beta = check_float(self.beta, "beta", 0.0)


class IQL(Learner):
    name = "iql"
    Config = IQLConfig

    def __init__(self, input_dim: int, config: IQLConfig) -> None:
        super().__init__(input_dim, config)
        self.q1 = mlp(input_dim, config.hidden)
        self.q2 = mlp(input_dim, config.hidden)
        self.value = mlp(input_dim, config.hidden, 1)
        self.policy = mlp(input_dim, config.hidden)
        self.q1_target = self.target_of(self.q1)
        self.q2_target = self.target_of(self.q2)

    def losses(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            q_target = torch.minimum(gather(self.q1_target(batch.inputs), batch.actions),
                                     gather(self.q2_target(batch.inputs), batch.actions))
            next_values = self.value(batch.next_inputs).squeeze(1)
            targets = td_target(batch.rewards, batch.terminals, next_values, self.config.gamma)
        values = self.value(batch.inputs).squeeze(1)
        diff = q_target - values
        weight = torch.where(diff < 0, 1.0 - self.config.expectile, self.config.expectile)
        value_loss = (weight * diff.square()).mean()
        critic_loss = (F.mse_loss(gather(self.q1(batch.inputs), batch.actions), targets)
                       + F.mse_loss(gather(self.q2(batch.inputs), batch.actions), targets))
        advantages = diff.detach()
        weights = torch.exp(self.config.beta * advantages).clamp(max=MAX_WEIGHT)
        nll = F.cross_entropy(self.policy(batch.inputs), batch.actions, reduction="none")
        policy_loss = (weights * nll).mean()
        loss = value_loss + critic_loss + policy_loss
        return loss, {"loss": loss.detach(), "value": value_loss.detach(), "critic": critic_loss.detach(),
                      "policy": policy_loss.detach(), "advantage": advantages.mean()}

    def action_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.policy(inputs)
