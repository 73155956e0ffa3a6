"""A goal as three fields a model can name: ball A, ball B and direction.

A relation goal of one clause ("ball A in direction of ball B") and a move goal (ball A,
direction; no ball B) are fully described by these fields; the compound goals of the hard level
(pairs and triples of relations, line-ups, gatherings) are not, and have no fields (-1).

Used by the goal-first grounded model (:class:`~kalm_gen.grounded_lm.GroundedLM` with
``action_head="goal"``) and by the goal probe (:mod:`kalm_gen.goal_probe`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from kalm_envs.goals import Goal

#: Sizes of the fields: ball A (5 balls), ball B (5 balls), direction (4).
GOAL_FIELD_SIZES = (5, 5, 4)
#: Width of a goal's logits and one-hot code.
GOAL_WIDTH = sum(GOAL_FIELD_SIZES)
#: The fields of a goal that has none (-1 each).
NO_GOAL = np.full(3, -1, dtype=np.int64)


def goal_fields_of(goal_array: np.ndarray) -> np.ndarray:
    """``(3,)`` int64 ball A, ball B and direction of a ``(10,)`` goal array: a relation goal of
    one clause gives its clause, a move goal its ball, -1 and its direction; every other goal
    :data:`NO_GOAL`."""
    goal = Goal.from_array(goal_array)
    if goal.family in ("relation", "move"):
        return np.array(goal.clauses[0], dtype=np.int64)
    return NO_GOAL.copy()


def relation_of(fields: np.ndarray) -> Goal | None:
    """The relation goal that named fields ``(3,)`` (ball A, ball B, direction) describe; None when
    they relate a ball to itself, which no goal does."""
    a, b, direction = (int(v) for v in fields)
    return None if a == b else Goal.relation(a, b, direction)


def goal_one_hot(fields: torch.Tensor) -> torch.Tensor:
    """``(..., 14)`` float32 one-hot code of goal fields ``(..., 3)`` int64; a field of -1 is all
    zeros."""
    parts = [F.one_hot(fields[..., i].clamp(min=-1) + 1, size + 1)[..., 1:]
             for i, size in enumerate(GOAL_FIELD_SIZES)]
    return torch.cat(parts, dim=-1).float()


def goal_field_loss(logits: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
    """``(B,)`` summed cross-entropy of the three fields (nats); ``logits`` ``(B, 14)``,
    ``fields`` ``(B, 3)`` int64, where a field of -1 adds nothing."""
    parts = torch.split(logits.float(), GOAL_FIELD_SIZES, dim=-1)
    return sum(F.cross_entropy(part, fields[:, i], ignore_index=-1, reduction="none")
               for i, part in enumerate(parts))


def named_fields(logits: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` int64 fields that goal logits ``(..., 14)`` name (the likeliest of each)."""
    parts = torch.split(logits.float(), GOAL_FIELD_SIZES, dim=-1)
    return torch.stack([part.argmax(-1) for part in parts], dim=-1)
