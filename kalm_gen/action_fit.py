"""Fitting a goal-first action head on its own, before grounding.

A goal-first model (:class:`~kalm_gen.grounded_lm.GroundedLM` with ``action_head="goal"``) acts
on the goal's fields and the ball state alone, so its action head can learn from every recorded
transition without running the language model: thousands of updates of hundreds of transitions
take seconds, where grounding steps see a few dozen actions each. :func:`fit_goal_action_head`
does that; grounding then trains it further with the rest of the model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

FIT_BATCH = 512  #: transitions per update
FIT_LR = 1e-3  #: Adam learning rate
LAST_WINDOW = 100  #: the final loss is the mean over this many last updates


def goal_transitions(episodes: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Every step of ``episodes`` (with ``states``, ``actions`` and ``goal_fields``, as
    :class:`~kalm_gen.grounding_data.GroundingEpisode`): ``states`` ``(N, 10)`` float32 (m) before
    each action, ``goals`` ``(N, 3)`` int64 fields, ``actions`` ``(N,)`` int64."""
    return {
        "states": torch.as_tensor(np.concatenate([e.states[:-1] for e in episodes]), dtype=torch.float32),
        "goals": torch.as_tensor(np.concatenate([np.tile(e.goal_fields, (e.length, 1)) for e in episodes])),
        "actions": torch.as_tensor(np.concatenate([e.actions for e in episodes]), dtype=torch.int64),
    }


def fit_goal_action_head(model: Any, episodes: Sequence[Any], updates: int, seed: int = 0) -> dict[str, Any]:
    """Train ``model.action_head`` (goal first) for ``updates`` Adam updates of
    :data:`FIT_BATCH` transitions drawn at random from ``episodes`` to predict the recorded
    action (cross-entropy, nats); the head's ``requires_grad`` flags are left as they were. Returns ``updates``, ``transitions``, ``initial_loss``,
    ``final_loss`` and ``seconds``."""
    if model.goal_head is None:
        raise ValueError(f"this model's action head is {model.config.action_head!r}: only a goal-first head fits alone")
    started = time.perf_counter()
    data = goal_transitions(episodes)
    count = len(data["actions"])
    generator = torch.Generator().manual_seed(seed)
    head = model.action_head
    frozen = [not p.requires_grad for p in head.parameters()]
    head.requires_grad_(True)  # a head frozen for grounding still fits here
    optimizer = torch.optim.Adam(head.parameters(), lr=FIT_LR)
    losses = []
    for _ in range(updates):
        rows = torch.randint(count, (min(FIT_BATCH, count),), generator=generator)
        loss = F.cross_entropy(model.goal_action_logits(data["states"][rows], data["goals"][rows]), data["actions"][rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for parameter, was_frozen in zip(head.parameters(), frozen, strict=True):
        parameter.requires_grad_(not was_frozen)
    return {"updates": updates, "transitions": count, "initial_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(losses[-LAST_WINDOW:])) if losses else None,
            "seconds": round(time.perf_counter() - started, 2)}
