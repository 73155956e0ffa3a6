"""The explanation head: which relation a rollout reached, named from the LM's hidden state at the
end of the explain prompt and from the relations that hold in the rollout's first and last states.

A goal-first model without it explains with its goal head at that position and names 6-12% of
held-out real-v0 goals right (``kalm imagine-eval --diagnose``): the pushed ball nearly always,
the reference ball and the direction rarely, because the LM does not hold which relations its
states meet. Those relations are a function of the ball centres (the env's predicates,
:func:`kalm_envs.predicates.relation_holds`), so the head is handed them with the hidden state
(:func:`rollout_features`). It names one relation, a joint class over (ball A, ball B,
direction) (:data:`N_CLASSES`; a ball related to itself is never named), as a real-v0 goal is one
relation.

It is fitted alone (:func:`fit_explain_head`) on the LM's hidden states once grounding has
finished; grounding does not train it. Before it was built, a session script (not in the
repository; README "Explanations that name the relation") fitted MLPs on the frozen LM of
``kalm-smollm2-goal-v0`` (1,500 training episodes): over the hidden state alone they named 16% of
200 held-out real-v0 goals right, over these features alone 53%, over both 74%. The published
``kalm-smollm2-relational-v1`` names 70.5% (``kalm imagine-eval --model kalm-smollm2-relational-v1
--levels easy --episodes 10 --real-dataset kalm/clevr-robot/real-v0 --real-episodes 200``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kalm_envs.goals import N_DIRECTIONS, Goal
from kalm_envs.physics import N_BALLS, PUSH_DIRECTIONS
from kalm_envs.predicates import relation_holds
from kalm_gen.goal_fields import single_clause
from kalm_gen.sequences import STATE_SCALE, explain_prefix

N_CLASSES = N_BALLS * N_BALLS * N_DIRECTIONS
"""Relations (ball A, ball B, direction), class ``(a * 5 + b) * 4 + d``; those with ``a == b`` are masked."""
_A, _B, _D = (axis.ravel() for axis in np.meshgrid(range(N_BALLS), range(N_BALLS), range(N_DIRECTIONS), indexing="ij"))
FEATURE_WIDTH = 3 * N_CLASSES + N_BALLS + 2 * N_BALLS
"""Per rollout: every relation at the start, at the end, and whether it became true; the share of
the pushes each ball got; each ball's displacement (x, y) in :data:`~kalm_gen.sequences.STATE_SCALE` units."""
EXPLAIN_FIT_EPISODES = 2000
"""Training episodes an explanation fit reads (the first ones of one relation): the LM's forward
pass over each whole trajectory is the fit's cost."""


def relation_class(a: int, b: int, d: int) -> int:
    """The joint class of relation (ball ``a``, ball ``b``, direction ``d``)."""
    return (a * N_BALLS + b) * N_DIRECTIONS + d


def rollout_features(states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """``(FEATURE_WIDTH,)`` float32 features of a rollout of ``states`` ``(T + 1, 10)`` (ball
    centres, m) and ``actions`` ``(T,)``; see :data:`FEATURE_WIDTH`."""
    states = np.asarray(states, dtype=np.float64)
    ends = states[[0, -1]].reshape(2, N_BALLS, 2)
    start, end = relation_holds(ends, np.tile(_A, (2, 1)), np.tile(_B, (2, 1)), np.tile(_D, (2, 1)))
    actions = np.asarray(actions, dtype=np.int64)
    shares = np.bincount(actions // len(PUSH_DIRECTIONS), minlength=N_BALLS) / max(len(actions), 1)
    moved = (states[-1] - states[0]) / STATE_SCALE
    return np.concatenate([start, end, end & ~start, shares, moved]).astype(np.float32)


class ExplainHead(nn.Module):
    """``(N, width)`` hidden states and ``(N, FEATURE_WIDTH)`` rollout features -> ``(N,
    N_CLASSES)`` logits; a ball related to itself gets a logit far below any other."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.net = nn.Sequential(nn.Linear(width + FEATURE_WIDTH, hidden), nn.GELU(), nn.Linear(hidden, N_CLASSES))
        self.register_buffer("self_relation", torch.as_tensor(_A == _B), persistent=False)

    def forward(self, hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        logits = self.net(torch.cat([self.norm(hidden), features], dim=-1))
        return logits.masked_fill(self.self_relation, -1e4)


def explain_inputs(model: Any, rollouts: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int) -> dict[str, torch.Tensor]:
    """``hidden`` ``(N, width)``: the LM's hidden state at the end of each rollout's explain prompt
    (:func:`~kalm_gen.sequences.explain_prefix`), and ``features`` ``(N, FEATURE_WIDTH)``, of
    ``(states, actions)`` pairs; float32 on the CPU."""
    prefixes = [explain_prefix(model.tokenize, states, actions).build() for states, actions in rollouts]
    return {"hidden": model.goal_slot_hidden(prefixes, batch_size),
            "features": torch.as_tensor(np.stack([rollout_features(s, a) for s, a in rollouts]))}


def explained_goals(model: Any, rollouts: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int) -> list[Goal]:
    """The relation the explanation head names for each ``(states, actions)`` rollout."""
    inputs = explain_inputs(model, rollouts, batch_size)
    with torch.no_grad():
        named = model.explain_head(inputs["hidden"], inputs["features"]).argmax(-1).numpy()
    return [Goal.relation(int(_A[c]), int(_B[c]), int(_D[c])) for c in named]


def _fit_rows(model: Any, episodes: Sequence[Any], batch_size: int) -> dict[str, torch.Tensor]:
    """The explanation fit's rows of grounding episodes: :func:`explain_inputs` and ``labels``
    ``(N,)`` int64, the class of each episode's goal."""
    rows = explain_inputs(model, [(e.states, e.actions) for e in episodes], batch_size)
    fields = [single_clause(e.goal_fields) for e in episodes]
    rows["labels"] = torch.as_tensor([relation_class(*(int(v) for v in f)) for f in fields], dtype=torch.int64)
    return rows


def _explain_loss(model: Any, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy (nats) of the episodes' goals under the explanation head."""
    return F.cross_entropy(model.explain_head(rows["hidden"], rows["features"]), rows["labels"])


def fit_explain_head(model: Any, episodes: Sequence[Any], updates: int, seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Train ``model.explain_head`` alone to name the goal of the first
    :data:`EXPLAIN_FIT_EPISODES` one-relation ``episodes`` (grounding episodes) from their
    trajectories, as :func:`kalm_gen.action_fit.fit_head` says; the LM's hidden states are
    computed once, in eval mode, ``batch_size`` prompts at a time."""
    from kalm_gen.action_fit import fit_head

    if model.explain_head is None:
        raise ValueError("this model has no explanation head to fit (GroundedLMConfig.explain_head)")
    relations = [e for e in episodes if (single_clause(e.goal_fields) >= 0).all()][:EXPLAIN_FIT_EPISODES]
    return fit_head(model, model.explain_head, _explain_loss, relations, updates, seed,
                    rows=lambda chosen: _fit_rows(model, chosen, batch_size))
