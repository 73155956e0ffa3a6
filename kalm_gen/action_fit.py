"""Fitting a goal-first action head on its own, before grounding.

A goal-first model (:class:`~kalm_gen.grounded_lm.GroundedLM` with ``action_head="goal"``) acts
on the goal's fields and the ball state alone, so its action head can learn from every recorded
transition without running the language model: thousands of updates of hundreds of transitions
take seconds, where grounding steps see a few dozen actions each. :func:`fit_goal_action_head`
does that; grounding leaves the head as the fit left it.

The head over-fits real-v0 within a few thousand updates (its recorded actions are 20% random
pushes), so the fit holds out a share of the episodes it is given and keeps the head of the
update count with the lowest held-out loss.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kalm_gen.goal_fields import single_clause

FIT_BATCH = 512  #: transitions per update
FIT_LR = 1e-3  #: Adam learning rate
CHECK_EVERY = 250  #: updates between two held-out checks
HELD_OUT = 0.1  #: share of the episodes held out to pick the update count


def goal_transitions(episodes: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Every step of ``episodes`` (with ``states``, ``actions`` and ``goal_fields``, as
    :class:`~kalm_gen.grounding_data.GroundingEpisode`): ``states`` ``(N, 10)`` float32 (m) before
    each action, ``goals`` ``(N, 3)`` int64 fields of the one clause acted on (-1 for a goal of
    several: :func:`~kalm_gen.goal_fields.single_clause`), ``actions`` ``(N,)`` int64."""
    return {
        "states": torch.as_tensor(np.concatenate([e.states[:-1] for e in episodes]), dtype=torch.float32),
        "goals": torch.as_tensor(np.concatenate([np.tile(single_clause(e.goal_fields), (e.length, 1))
                                                 for e in episodes])),
        "actions": torch.as_tensor(np.concatenate([e.actions for e in episodes]), dtype=torch.int64),
    }


def _loss(model: Any, data: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
    picked = data if rows is None else {key: value[rows] for key, value in data.items()}
    return F.cross_entropy(model.goal_action_logits(picked["states"], picked["goals"]), picked["actions"])


def fit_goal_action_head(model: Any, episodes: Sequence[Any], updates: int, seed: int = 0) -> dict[str, Any]:
    """Train ``model.action_head`` (goal first) for up to ``updates`` Adam updates of
    :data:`FIT_BATCH` transitions, drawn at random from all but a held-out :data:`HELD_OUT` of
    ``episodes`` (by episode, seeded), to predict the recorded action (cross-entropy, nats); every
    :data:`CHECK_EVERY` updates the loss on the held-out transitions is measured, and the head
    ends as it was at the lowest one. The head's ``requires_grad`` flags are left as they were.

    Returns ``updates``, ``kept_update`` (the update count kept), ``transitions`` (trained on),
    ``initial_loss``, ``held_out_losses`` (``[update, loss]`` pairs) and ``seconds``."""
    if model.goal_head is None:
        raise ValueError(f"this model's action head is {model.config.action_head!r}: only a goal-first head fits alone")
    if len(episodes) < 2:
        raise ValueError(f"the action fit needs at least 2 episodes (one held out), got {len(episodes)}")
    started = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(episodes))
    cut = max(1, int(round(HELD_OUT * len(episodes))))
    held_out = goal_transitions([episodes[i] for i in order[:cut]])
    data = goal_transitions([episodes[i] for i in order[cut:]])
    count = len(data["actions"])
    generator = torch.Generator().manual_seed(seed)
    head = model.action_head
    frozen = [not p.requires_grad for p in head.parameters()]
    head.requires_grad_(True)  # a head frozen for grounding still fits here
    optimizer = torch.optim.Adam(head.parameters(), lr=FIT_LR)

    def held_out_loss() -> float:
        with torch.no_grad():
            return _loss(model, held_out).item()

    checks = [[0, held_out_loss()]]
    best = (checks[0][1], 0, copy.deepcopy(head.state_dict()))
    initial = None
    for update in range(1, updates + 1):
        loss = _loss(model, data, torch.randint(count, (min(FIT_BATCH, count),), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        initial = loss.item() if initial is None else initial
        if update % CHECK_EVERY == 0 or update == updates:
            checks.append([update, held_out_loss()])
            if checks[-1][1] < best[0]:
                best = (checks[-1][1], update, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    for parameter, was_frozen in zip(head.parameters(), frozen, strict=True):
        parameter.requires_grad_(not was_frozen)
    return {"updates": updates, "kept_update": best[1], "transitions": count, "initial_loss": initial,
            "held_out_losses": checks, "seconds": round(time.perf_counter() - started, 2)}
