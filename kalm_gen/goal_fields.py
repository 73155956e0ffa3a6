"""A goal as fields a model can name: ball A, ball B and direction, for one clause or a list.

A relation goal of one clause ("ball A in direction of ball B") and a move goal (ball A,
direction; no ball B) are fully described by three fields (:func:`goal_fields_of`); the compound
goals of the hard level are not, and have no fields (-1).

A *clause list* (:func:`clause_fields_of`, ``3 * MAX_CLAUSES`` = 9 fields) also describes the
hard level's pairs and triples: up to three clauses, each ball A, ball B, direction, where ball A
:data:`NO_CLAUSE` ends the list. A model with a clause-list goal head names that (field sizes
:func:`field_sizes`), and acts on one clause at a time (:func:`pursued_clause`). Line-ups and
gatherings have no fields in either form.

A *move* ("move ball A in a direction") has no ball B. A goal head names one as a relation of ball
A to itself, ball B = ball A (:func:`move_fields`): ball A in the direction of where it started.
No relation goal relates a ball to itself, so the class is free; :func:`relation_of` and
:func:`pursued_clause` already treat it as a goal that is not a relation.

Used by the goal-first grounded model (:class:`~kalm_gen.grounded_lm.GroundedLM` with
``action_head="goal"``) and by the goal probe (:mod:`kalm_gen.goal_probe`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from kalm_envs.goals import MAX_CLAUSES, Goal, GoalKind
from kalm_envs.physics import N_BALLS
from kalm_envs.predicates import relation_holds

#: Sizes of the fields: ball A (5 balls), ball B (5 balls), direction (4).
GOAL_FIELD_SIZES = (5, 5, 4)
#: Width of a goal's logits and one-hot code.
GOAL_WIDTH = sum(GOAL_FIELD_SIZES)
#: The fields of a goal that has none (-1 each).
NO_GOAL = np.full(3, -1, dtype=np.int64)
#: Ball-A class of a clause-list head meaning "no clause here": the list has ended.
NO_CLAUSE = N_BALLS
#: Fields of a clause list: three per clause.
CLAUSE_LIST_WIDTH = 3 * MAX_CLAUSES
#: The clause list of a goal that has none (-1 each).
NO_CLAUSE_LIST = np.full(CLAUSE_LIST_WIDTH, -1, dtype=np.int64)


def goal_fields_of(goal_array: np.ndarray) -> np.ndarray:
    """``(3,)`` int64 ball A, ball B and direction of a ``(10,)`` goal array: a relation goal of
    one clause gives its clause, a move goal its ball, -1 and its direction; every other goal
    :data:`NO_GOAL` (:func:`single_clause` of its clause list)."""
    return single_clause(clause_fields_of(goal_array))


def clause_fields_of(goal_array: np.ndarray) -> np.ndarray:
    """``(9,)`` int64 clause list of a ``(10,)`` goal array: a relations goal (one clause, a pair or
    a triple) gives its clauses, then ball A :data:`NO_CLAUSE` (ball B and direction -1) for each
    clause it does not have; a move goal its ball, -1, its direction and -1 after (unknown: a
    move is not a list of relations); a line-up or gathering -1 throughout."""
    goal = Goal.from_array(goal_array)
    fields = np.full((MAX_CLAUSES, 3), -1, dtype=np.int64)
    if goal.kind is GoalKind.RELATIONS:
        fields[:, 0] = NO_CLAUSE
        fields[:len(goal.clauses)] = goal.clauses
    elif goal.kind is GoalKind.MOVE:
        fields[0] = goal.clauses[0]
    return fields.reshape(-1)


def move_fields(ball: int, direction: int) -> np.ndarray:
    """``(9,)`` int64 clause list a goal head names for "move ``ball`` in ``direction``" (0-3, as
    :mod:`kalm_envs.goals`): the relation of the ball to itself, then the end of the list."""
    fields = np.full((MAX_CLAUSES, 3), -1, dtype=np.int64)
    fields[:, 0] = NO_CLAUSE
    fields[0] = (ball, ball, direction)
    return fields.reshape(-1)


def single_clause(fields: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``(..., 3)`` the one-clause fields (:func:`goal_fields_of`) of clause lists ``(..., 9)``:
    the first clause where it is the only one, -1 where there are more (or none)."""
    more = (fields[..., 3:4] >= 0) & (fields[..., 3:4] != NO_CLAUSE)
    return fields[..., :3] * ~more + -1 * more


def field_sizes(clauses: int) -> tuple[int, ...]:
    """Class counts of the fields a goal head of ``clauses`` clauses names: one clause
    :data:`GOAL_FIELD_SIZES`; a list (6, 5, 4) per clause, ball A's sixth class :data:`NO_CLAUSE`."""
    if clauses == 1:
        return GOAL_FIELD_SIZES
    return (N_BALLS + 1, *GOAL_FIELD_SIZES[1:]) * clauses


def head_targets(clause_fields: np.ndarray | torch.Tensor, clauses: int) -> np.ndarray | torch.Tensor:
    """What a goal head of ``clauses`` clauses should name for clause lists ``(..., 9)``."""
    return single_clause(clause_fields) if clauses == 1 else clause_fields


def pursued_clause(goal: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` int64 the clause to act on in each of ``states`` ``(..., 10)`` (m), for goal
    fields ``(..., 3)`` (returned as they are) or clause lists ``(..., 9)``.

    A list's clauses run up to the first whose ball A is not a ball (:data:`NO_CLAUSE` or -1).
    The pursued clause is the first of them that does not hold in the state (a relation whose
    ball B is not a ball, or is ball A, counts as not holding), else the first clause; -1 where
    the list has none.
    """
    if goal.shape[-1] == 3:
        return goal
    clauses = goal.reshape(*goal.shape[:-1], MAX_CLAUSES, 3)
    usable = torch.cumprod(((clauses[..., 0] >= 0) & (clauses[..., 0] < N_BALLS)).long(), dim=-1).bool()
    flat = clauses.reshape(-1, MAX_CLAUSES, 3).cpu().numpy()
    checkable = (flat[..., 1] >= 0) & (flat[..., 1] != flat[..., 0])
    balls = states.detach().reshape(-1, N_BALLS, 2).cpu().numpy()
    holds = relation_holds(balls, flat[..., 0].clip(0, N_BALLS - 1), flat[..., 1].clip(0, N_BALLS - 1),
                           flat[..., 2].clip(0, 3)) & checkable
    open_ = usable & ~torch.as_tensor(holds, device=goal.device).reshape(usable.shape)
    first = torch.where(open_.any(-1), open_.float().argmax(-1), torch.zeros_like(open_[..., 0], dtype=torch.long))
    chosen = torch.gather(clauses, -2, first[..., None, None].expand(*first.shape, 1, 3)).squeeze(-2)
    return torch.where(usable[..., :1], chosen, torch.full_like(chosen, -1))


def relation_of(fields: np.ndarray) -> Goal | None:
    """The relation goal that the first clause of named fields ``(3,)`` or ``(9,)`` (ball A,
    ball B, direction) describes; None when it relates a ball to itself (or to no ball)."""
    a, b, direction = (int(v) for v in fields[:3])
    return None if a == b or not (0 <= a < N_BALLS and 0 <= b < N_BALLS) else Goal.relation(a, b, direction)


def goal_one_hot(fields: torch.Tensor) -> torch.Tensor:
    """``(..., 14)`` float32 one-hot code of goal fields ``(..., 3)`` int64; a field of -1 is all
    zeros."""
    parts = [F.one_hot(fields[..., i].clamp(min=-1) + 1, size + 1)[..., 1:]
             for i, size in enumerate(GOAL_FIELD_SIZES)]
    return torch.cat(parts, dim=-1).float()


def goal_field_loss(logits: torch.Tensor, fields: torch.Tensor, sizes: tuple[int, ...] = GOAL_FIELD_SIZES) -> torch.Tensor:
    """``(B,)`` summed cross-entropy of the fields (nats); ``logits`` ``(B, sum(sizes))``,
    ``fields`` ``(B, len(sizes))`` int64, where a field of -1 adds nothing."""
    parts = torch.split(logits.float(), sizes, dim=-1)
    return sum(F.cross_entropy(part, fields[:, i], ignore_index=-1, reduction="none")
               for i, part in enumerate(parts))


def named_confidence(logits: torch.Tensor, sizes: tuple[int, ...] = GOAL_FIELD_SIZES) -> torch.Tensor:
    """``(...,)`` float32 probability the head gives the goal it names (:func:`named_fields`): the
    product of each used field's top probability. A clause list uses ball A of each clause up to
    the first that names :data:`NO_CLAUSE`, and ball B and direction of each clause before it."""
    parts = torch.split(logits.float(), sizes, dim=-1)
    top = torch.stack([part.softmax(-1).max(-1).values for part in parts], dim=-1)
    if len(sizes) == 3:
        return top.prod(-1)
    clauses = top.reshape(*top.shape[:-1], -1, 3)
    names_ball = torch.stack([part.argmax(-1) < N_BALLS for part in parts[::3]], dim=-1)
    reached = torch.cat([torch.ones_like(names_ball[..., :1]), names_ball[..., :-1]], dim=-1).cumprod(-1).bool()
    used = torch.stack([reached, reached & names_ball, reached & names_ball], dim=-1)
    return torch.where(used, clauses, torch.ones_like(clauses)).flatten(-2).prod(-1)


def named_fields(logits: torch.Tensor, sizes: tuple[int, ...] = GOAL_FIELD_SIZES) -> torch.Tensor:
    """``(..., len(sizes))`` int64 fields that goal logits ``(..., sum(sizes))`` name (the
    likeliest class of each)."""
    parts = torch.split(logits.float(), sizes, dim=-1)
    return torch.stack([part.argmax(-1) for part in parts], dim=-1)
