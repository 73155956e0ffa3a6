"""Behaviour cloning: imitate the dataset's actions (cross-entropy), ignoring rewards."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kalm_rl.data import Batch
from kalm_rl.learners.base import Learner, LearnerConfig
from kalm_rl.networks import mlp


class BC(Learner):
    """A policy network ``(B, input_dim) -> (B, 40)`` logits trained by maximum likelihood."""

    name = "bc"
    Config = LearnerConfig

    def __init__(self, input_dim: int, config: LearnerConfig) -> None:
        super().__init__(input_dim, config)
        self.policy = mlp(input_dim, config.hidden)

    def losses(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.cross_entropy(self.policy(batch.inputs), batch.actions)
        return loss, {"loss": loss.detach()}

    def action_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.policy(inputs)
