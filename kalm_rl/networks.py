"""Networks and the small pieces of arithmetic that the learners share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NUM_ACTIONS = 40
"""CLEVR-Robot's ``Discrete(40)``: 5 balls x 8 push directions."""


def mlp(input_dim: int, hidden: Sequence[int], output_dim: int = NUM_ACTIONS) -> nn.Sequential:
    """Fully connected ReLU network ``input_dim -> hidden... -> output_dim`` (no output activation)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(input_dim, width), nn.ReLU()]
        input_dim = width
    layers.append(nn.Linear(input_dim, output_dim))
    return nn.Sequential(*layers)


def td_target(rewards: torch.Tensor, terminals: torch.Tensor, next_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """One-step target ``r + gamma * (1 - terminal) * V(s')``, all ``(B,)``.

    ``terminals`` is 1 only where the episode *terminated* at ``s'``; a time-limit truncation is
    0, so the value of ``s'`` is bootstrapped there as at any other step.
    """
    return rewards + gamma * (1.0 - terminals) * next_values


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Move every parameter of ``target`` a fraction ``tau`` towards ``source`` (Polyak)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def gather(values: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``values[i, actions[i]]``: ``(B, A)``, ``(B,)`` -> ``(B,)``."""
    return values.gather(1, actions.unsqueeze(1)).squeeze(1)
