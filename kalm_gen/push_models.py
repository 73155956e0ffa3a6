"""World models of one push that read the ball state and the action, never the language model.

A grounded LM's own state head reads the hidden state at an action slot. The models here are the
alternative :class:`~kalm_gen.grounded_lm.GroundedLM` uses when ``state_head`` is one of
:data:`PUSH_MODEL_HEADS`: they map the state before a push ``(N, 10)`` (m) and the push ``(N,)``
(int64, ball ``action // 8``, direction ``action % 8``) to ``(N, 10)`` logit-space moves of the
ball centres, which :meth:`~kalm_gen.grounded_lm.GroundedLM.next_state` turns into a next state
inside the walls' box. They are fitted alone on real transitions
(:func:`kalm_gen.action_fit.fit_state_head`).

- ``"mlp"`` (:class:`PushMLP`): one MLP over the whole state and the action (one-hot). It must
  learn every ball's physics for every colour separately.
- ``"relational"`` (:class:`RelationalPush`): one MLP shared by the five balls, which predicts one
  ball's move from what matters to it: its own place (for the walls), whether it is the pushed
  ball, the push's direction, where the pushed ball is relative to it, and where its four
  neighbours are, nearest first. The physics does not depend on colour, so a rule learnt for one
  ball holds for all five, and a ball far from the push is told so directly. Fitted on real-v0
  (``kalm ground --state-head relational --state-fit-updates 8000 ...``, README "A relational
  push model"), its held-out squared error of the change is 0.027 against the MLP's 0.090
  (the ``state_fit`` record of the run's log).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kalm_envs.physics import N_ACTIONS, N_BALLS, PUSH_DIRECTIONS, STATE_DIM
from kalm_gen.sequences import STATE_SCALE

N_PUSH_DIRECTIONS = len(PUSH_DIRECTIONS)  #: 8 push directions (not the 4 of a relation, kalm_envs.goals.N_DIRECTIONS)
_DIRECTIONS = torch.tensor(PUSH_DIRECTIONS, dtype=torch.float32)
#: Inputs per ball of :class:`RelationalPush`: own place 2, pushed 1, direction one-hot 8 and
#: vector 2, pushed ball relative 2, four neighbours relative 8.
RELATIONAL_FEATURES = 2 + 1 + N_PUSH_DIRECTIONS + 2 + 2 + 2 * (N_BALLS - 1)


class PushMLP(nn.Sequential):
    """Three-layer MLP ``(10 + 40) -> hidden -> hidden -> 10`` over the state (tenths of a metre)
    and the one-hot action."""

    def __init__(self, hidden: int) -> None:
        super().__init__(nn.Linear(STATE_DIM + N_ACTIONS, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                         nn.GELU(), nn.Linear(hidden, STATE_DIM))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # noqa: D102
        code = F.one_hot(action.long(), N_ACTIONS).to(state.dtype)
        return super().forward(torch.cat([state / STATE_SCALE, code], dim=-1))


class RelationalPush(nn.Module):
    """One MLP ``23 -> hidden -> hidden -> 2`` applied to each ball's features
    (:func:`ball_features`)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.ball_model = nn.Sequential(nn.Linear(RELATIONAL_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                        nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.ball_model(ball_features(state, action)).flatten(-2)


def ball_features(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``(..., 5, 23)`` inputs of :class:`RelationalPush` for states ``(..., 10)`` (m) and pushes
    ``(...,)``; places are in tenths of a metre. Neighbours are ordered by distance, nearest
    first, so that no feature says which colour a ball has."""
    lead = state.shape[:-1]
    places = state.reshape(*lead, N_BALLS, 2) / STATE_SCALE
    ball, direction = action.long() // N_PUSH_DIRECTIONS, action.long() % N_PUSH_DIRECTIONS
    pushed = F.one_hot(ball, N_BALLS).to(state.dtype)
    pushed_place = (pushed.unsqueeze(-1) * places).sum(-2)  # (..., 2)
    offsets = places.unsqueeze(-3) - places.unsqueeze(-2)  # [..., j, k]: ball k seen from ball j
    distance = offsets.norm(dim=-1) + torch.eye(N_BALLS, dtype=state.dtype, device=state.device) * 1e6
    nearest = distance.argsort(dim=-1)[..., : N_BALLS - 1]
    neighbours = torch.gather(offsets, -2, nearest.unsqueeze(-1).expand(*nearest.shape, 2))
    per_push = torch.cat([F.one_hot(direction, N_PUSH_DIRECTIONS).to(state.dtype),
                          _DIRECTIONS.to(state)[direction]], dim=-1)
    return torch.cat([
        places, pushed.unsqueeze(-1), per_push.unsqueeze(-2).expand(*lead, N_BALLS, per_push.shape[-1]),
        pushed_place.unsqueeze(-2) - places, neighbours.flatten(-2),
    ], dim=-1)


PUSH_MODELS: dict[str, type[nn.Module]] = {"mlp": PushMLP, "relational": RelationalPush}
PUSH_MODEL_HEADS = tuple(PUSH_MODELS)  #: the state-head names that are push models


def build_push_model(kind: str, hidden: int) -> nn.Module:
    """A fresh push model of ``kind`` (one of :data:`PUSH_MODEL_HEADS`), ``hidden`` wide."""
    if kind not in PUSH_MODELS:
        raise ValueError(f"push model {kind!r} is not one of {PUSH_MODEL_HEADS}")
    return PUSH_MODELS[kind](hidden)
