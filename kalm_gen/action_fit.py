"""Fitting a goal-first action head, or a push-model state head, on its own, before grounding.

A goal-first model (:class:`~kalm_gen.grounded_lm.GroundedLM` with ``action_head="goal"``) acts
on the goal's fields and the ball state alone, so its action head can learn from every recorded
transition without running the language model: thousands of updates of hundreds of transitions
take seconds, where grounding steps see a few dozen actions each. :func:`fit_goal_action_head`
does that; grounding leaves the head as the fit left it.

A push-model state head (``"mlp"`` or ``"relational"``, :mod:`kalm_gen.push_models`) reads the
state and the action, not the LM, so it fits the same way (:func:`fit_state_head`): a world
model of one push, where the LM's own state head is off by 12-13 cm for the pushed ball
(``kalm imagine-eval --diagnose``, README "Imagined data").

:func:`fit_head` is the fit itself, for any head and rows: the explanation head
(:func:`kalm_gen.explain_head.fit_explain_head`) fits through it on one row per episode.

With ``moves``, the action fit also learns to act on a *move* goal (ball B = ball A,
:func:`~kalm_gen.goal_fields.move_fields`), which real data never asks for, by hindsight
(:func:`move_transitions`): every recorded push is an example of each move it achieved.

The action head over-fits real-v0 within a few thousand updates (its recorded actions are 20%
random pushes), so a fit holds out a share of the episodes it is given and keeps the head of the
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

from kalm_envs.goals import DIRECTION_VECTORS
from kalm_envs.physics import N_BALLS
from kalm_envs.predicates import MOVE_MIN_DISPLACEMENT
from kalm_gen.goal_fields import CLAUSE_LIST_WIDTH, move_fields, single_clause
from kalm_gen.push_models import PUSH_MODEL_HEADS
from kalm_gen.sequences import STATE_SCALE

FIT_BATCH = 512  #: transitions per update
FIT_LR = 1e-3  #: Adam learning rate
CHECK_EVERY = 250  #: updates between two held-out checks
HELD_OUT = 0.1  #: share of the episodes held out to pick the update count


def fit_transitions(episodes: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Every step of ``episodes`` (with ``states``, ``actions`` and ``goal_fields``, as
    :class:`~kalm_gen.grounding_data.GroundingEpisode`): ``states`` ``(N, 10)`` float32 (m) before
    each action and ``next_states`` after it, ``goals`` ``(N, 3)`` int64 fields of the one clause
    acted on (-1 for a goal of several: :func:`~kalm_gen.goal_fields.single_clause`), ``actions``
    ``(N,)`` int64."""
    return {
        "states": torch.as_tensor(np.concatenate([e.states[:-1] for e in episodes]), dtype=torch.float32),
        "next_states": torch.as_tensor(np.concatenate([e.states[1:] for e in episodes]), dtype=torch.float32),
        "goals": torch.as_tensor(np.concatenate([np.tile(single_clause(e.goal_fields), (e.length, 1))
                                                 for e in episodes])),
        "actions": torch.as_tensor(np.concatenate([e.actions for e in episodes]), dtype=torch.int64),
    }


def move_transitions(episodes: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Hindsight move rows of ``episodes``' steps: for every step and every ball it displaced by at
    least :data:`~kalm_envs.predicates.MOVE_MIN_DISPLACEMENT` (0.15 m) along a direction (0-3), a
    row whose goal is that move (fields ``(ball, ball, direction)``) and whose action is the step's.
    A diagonal push can give two rows, a collision a row for the ball it hit. Keys and shapes as
    :func:`fit_transitions`."""
    before = np.concatenate([e.states[:-1] for e in episodes])
    after = np.concatenate([e.states[1:] for e in episodes])
    actions = np.concatenate([e.actions for e in episodes])
    shift = (after - before).reshape(-1, N_BALLS, 2) @ DIRECTION_VECTORS.T  # (N, 5 balls, 4 directions), m
    step, ball, direction = np.nonzero(shift >= MOVE_MIN_DISPLACEMENT)
    goals = np.array([move_fields(b, d) for b, d in zip(ball, direction, strict=True)],
                     dtype=np.int64).reshape(-1, CLAUSE_LIST_WIDTH)
    return {
        "states": torch.as_tensor(before[step], dtype=torch.float32),
        "next_states": torch.as_tensor(after[step], dtype=torch.float32),
        "goals": torch.as_tensor(single_clause(goals)),
        "actions": torch.as_tensor(actions[step], dtype=torch.int64),
    }


def transitions_and_moves(episodes: Sequence[Any]) -> dict[str, torch.Tensor]:
    """:func:`fit_transitions` rows of ``episodes`` followed by their :func:`move_transitions` rows."""
    parts = [fit_transitions(episodes), move_transitions(episodes)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _action_loss(model: Any, picked: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy (nats) of the recorded actions under the goal-first action head."""
    return F.cross_entropy(model.goal_action_logits(picked["states"], picked["goals"]), picked["actions"])


def _state_loss(model: Any, picked: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of the predicted change, in :data:`~kalm_gen.sequences.STATE_SCALE`
    units, as grounding's state loss."""
    before = picked["states"]
    change = (model.next_state(None, before, picked["actions"]) - before) / STATE_SCALE
    return ((change - (picked["next_states"] - before) / STATE_SCALE) ** 2).mean()


def fit_goal_action_head(model: Any, episodes: Sequence[Any], updates: int, seed: int = 0,
                         moves: bool = False) -> dict[str, Any]:
    """Train ``model.action_head`` (goal first) to predict the recorded action (cross-entropy,
    nats) from the goal's fields and the state, as :func:`fit_head` says; with ``moves``, on the
    hindsight move rows too (:func:`transitions_and_moves`)."""
    if model.goal_head is None:
        raise ValueError(f"this model's action head is {model.config.action_head!r}: only a goal-first head fits alone")
    rows = transitions_and_moves if moves else fit_transitions
    return fit_head(model, model.action_head, _action_loss, episodes, updates, seed, rows=rows)


def fit_state_head(model: Any, episodes: Sequence[Any], updates: int, seed: int = 0) -> dict[str, Any]:
    """Train a push-model state head to predict the next state from the state and the action (mean
    squared error of the change, in tenths of a metre), as :func:`fit_head` says."""
    if not model.reads_action:
        raise ValueError(f"this model's state head is {model.config.state_head!r}: only a push model "
                         f"({', '.join(PUSH_MODEL_HEADS)}) fits alone")
    return fit_head(model, model.state_head, _state_loss, episodes, updates, seed)


def fit_head(model: Any, head: torch.nn.Module, loss: Any, episodes: Sequence[Any], updates: int,
             seed: int, rows: Any = fit_transitions) -> dict[str, Any]:
    """Train ``head`` alone for up to ``updates`` Adam updates of :data:`FIT_BATCH` rows drawn at
    random from ``rows(episodes)`` (a dict of tensors of one row each: by default
    :func:`fit_transitions`) of all but a held-out :data:`HELD_OUT` of ``episodes`` (by episode,
    seeded), on ``loss(model, batch)``; every :data:`CHECK_EVERY` updates the loss on the held-out
    rows is measured, and the head ends as it was at the lowest one. The head's
    ``requires_grad`` flags are left as they were.

    Returns ``updates``, ``kept_update`` (the update count kept), ``rows`` (trained on),
    ``initial_loss``, ``held_out_losses`` (``[update, loss]`` pairs) and ``seconds``."""
    if len(episodes) < 2:
        raise ValueError(f"fitting a head alone needs at least 2 episodes (one held out), got {len(episodes)}")
    started = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(episodes))
    cut = max(1, int(round(HELD_OUT * len(episodes))))
    held_out = rows([episodes[i] for i in order[:cut]])
    data = rows([episodes[i] for i in order[cut:]])
    count = len(next(iter(data.values())))
    generator = torch.Generator().manual_seed(seed)
    frozen = [not p.requires_grad for p in head.parameters()]
    head.requires_grad_(True)  # a head frozen for grounding still fits here
    optimizer = torch.optim.Adam(head.parameters(), lr=FIT_LR)

    def held_out_loss() -> float:
        with torch.no_grad():
            return loss(model, held_out).item()

    checks = [[0, held_out_loss()]]
    best = (checks[0][1], 0, copy.deepcopy(head.state_dict()))
    initial = None
    for update in range(1, updates + 1):
        rows = torch.randint(count, (min(FIT_BATCH, count),), generator=generator)
        value = loss(model, {key: tensor[rows] for key, tensor in data.items()})
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        initial = value.item() if initial is None else initial
        if update % CHECK_EVERY == 0 or update == updates:
            checks.append([update, held_out_loss()])
            if checks[-1][1] < best[0]:
                best = (checks[-1][1], update, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    for parameter, was_frozen in zip(head.parameters(), frozen, strict=True):
        parameter.requires_grad_(not was_frozen)
    return {"updates": updates, "kept_update": best[1], "rows": count, "initial_loss": initial,
            "held_out_losses": checks, "seconds": round(time.perf_counter() - started, 2)}
