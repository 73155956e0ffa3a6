"""Mixed text / trajectory sequences: what the grounded LM reads and what it is trained to predict.

A sequence is a list of positions. Text positions hold token ids; trajectory slots hold a ball
state ``S`` (10 floats, m) or an action ``A`` (0..39), which :class:`kalm_gen.grounded_lm.GroundedLM`
writes into the embedding sequence. Targets sit on the position that predicts them:

- a state slot ``S_t`` predicts the action ``a_t`` that follows it (cross-entropy);
- an action slot ``A_t`` predicts the next state ``S_{t+1}`` as a change from ``S_t``
  (mean squared error in units of :data:`STATE_SCALE`);
- a text position predicts the next token where the text is a target (cross-entropy).

Three grounding tasks (DESIGN.md section 5):

| task | layout | loss on |
|---|---|---|
| ``rollout`` (goal -> rollout) | ``"Instruction: <text>\\nRollout:"`` S0 A0 S1 ... S_T | actions and states |
| ``explain`` (rollout -> goal) | ``"Rollout:"`` S0 A0 ... S_T ``"\\nInstruction: <text><eos>"`` | instruction tokens |
| ``dynamics`` (one step) | ``"Dynamics:"`` S_t A_t S_{t+1} | the next state |

Rollout and explain sequences also carry their goal's clause list (ball A, ball B, direction of
each clause: :func:`kalm_gen.goal_fields.clause_fields_of`) at every position, and mark one *goal
slot* where a goal-first model names the goal: a rollout's first state slot, and an explanation's
last prompt position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kalm_gen.goal_fields import CLAUSE_LIST_WIDTH, NO_CLAUSE_LIST

TEXT, STATE_SLOT, ACTION_SLOT = 0, 1, 2
IGNORE = -100  # target value meaning "no loss here" (PyTorch's cross-entropy default)
STATE_SCALE = 0.1  # m: state changes are predicted in tenths of a metre
TASKS = ("rollout", "explain", "dynamics")


def rollout_prompt(instruction: str) -> str:
    """Text before the trajectory slots of a goal -> rollout sequence."""
    return f"Instruction: {instruction}\nRollout:"


EXPLAIN_PROMPT = "Rollout:"
EXPLAIN_ANSWER = "\nInstruction:"
DYNAMICS_PROMPT = "Dynamics:"

@dataclass
class Sequence:
    """One example, all arrays of length ``L`` (positions).

    Attributes:
        token_ids: int64 token id at text positions, 0 at slots.
        kinds: int8, :data:`TEXT`, :data:`STATE_SLOT` or :data:`ACTION_SLOT`.
        states: ``(L, 10)`` float32 state at state slots, else 0.
        actions: int64 action at action slots, else 0.
        token_targets: int64 next-token target at text positions, else :data:`IGNORE`.
        action_targets: int64 next action at state slots, else :data:`IGNORE`.
        state_targets: ``(L, 10)`` float32 scaled next-state change at action slots.
        state_target_mask: bool, where ``state_targets`` counts.
        goal_fields: ``(L, 9)`` int64 the goal's clause list at every position
            (:func:`~kalm_gen.goal_fields.clause_fields_of`; -1: none).
        goal_slot: bool, where a goal-first model names the goal (at most one position).
        task: which grounding task built it.
    """

    token_ids: np.ndarray
    kinds: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    token_targets: np.ndarray
    action_targets: np.ndarray
    state_targets: np.ndarray
    state_target_mask: np.ndarray
    goal_fields: np.ndarray
    goal_slot: np.ndarray
    task: str

    def __len__(self) -> int:
        return len(self.kinds)


class SequenceBuilder:
    """Appends text and trajectory pieces, then freezes them into a :class:`Sequence`."""

    def __init__(self, task: str, goal_fields: np.ndarray = NO_CLAUSE_LIST) -> None:
        self.task = task
        self.goal = np.asarray(goal_fields, dtype=np.int64)
        self.goal_position: int | None = None
        self.token_ids: list[int] = []
        self.kinds: list[int] = []
        self.states: list[np.ndarray] = []
        self.actions: list[int] = []
        self.token_targets: list[int] = []
        self.action_targets: list[int] = []
        self.state_targets: list[np.ndarray] = []
        self.state_target_mask: list[bool] = []

    def _append(self, kind: int, token: int = 0, state: np.ndarray | None = None, action: int = 0) -> None:
        self.kinds.append(kind)
        self.token_ids.append(token)
        self.states.append(np.zeros(10, np.float32) if state is None else np.asarray(state, np.float32))
        self.actions.append(action)
        self.token_targets.append(IGNORE)
        self.action_targets.append(IGNORE)
        self.state_targets.append(np.zeros(10, np.float32))
        self.state_target_mask.append(False)

    def mark_goal_slot(self, position: int) -> None:
        """Make ``position`` the sequence's goal slot."""
        self.goal_position = position

    def text(self, token_ids: list[int], target: bool = False) -> None:
        """Append text; with ``target`` the position before each token learns to predict it."""
        for token in token_ids:
            if target:
                self.token_targets[-1] = token
            self._append(TEXT, token=token)

    def trajectory(self, states: np.ndarray, actions: np.ndarray, targets: bool) -> None:
        """Append ``S0 A0 S1 ... S_T`` (``states`` ``(T+1, 10)``, ``actions`` ``(T,)``).

        With ``targets`` every state slot learns its next action and every action slot the next
        state change.
        """
        for t, action in enumerate(actions):
            self._append(STATE_SLOT, state=states[t])
            if targets:
                self.action_targets[-1] = int(action)
            self._append(ACTION_SLOT, action=int(action))
            if targets:
                self.state_targets[-1] = (states[t + 1] - states[t]) / STATE_SCALE
                self.state_target_mask[-1] = True
        self._append(STATE_SLOT, state=states[len(actions)])

    def build(self) -> Sequence:
        goal_slot = np.zeros(len(self.kinds), dtype=bool)
        if self.goal_position is not None:
            goal_slot[self.goal_position] = True
        return Sequence(
            token_ids=np.array(self.token_ids, dtype=np.int64),
            kinds=np.array(self.kinds, dtype=np.int8),
            states=np.stack(self.states).astype(np.float32),
            actions=np.array(self.actions, dtype=np.int64),
            token_targets=np.array(self.token_targets, dtype=np.int64),
            action_targets=np.array(self.action_targets, dtype=np.int64),
            state_targets=np.stack(self.state_targets).astype(np.float32),
            state_target_mask=np.array(self.state_target_mask, dtype=bool),
            goal_fields=np.tile(self.goal, (len(self.kinds), 1)),
            goal_slot=goal_slot,
            task=self.task,
        )


def rollout_sequence(
    tokenize, instruction: str, states: np.ndarray, actions: np.ndarray, goal_fields: np.ndarray = NO_CLAUSE_LIST,
) -> Sequence:
    """Goal -> rollout: the instruction, then the trajectory with action and state targets; the
    goal slot is the first state slot.

    ``tokenize(text) -> list[int]`` is the LM tokenizer without special tokens; ``goal_fields``
    the goal's clause list (:func:`kalm_gen.goal_fields.clause_fields_of`).
    """
    builder = SequenceBuilder("rollout", goal_fields)
    builder.text(tokenize(rollout_prompt(instruction)))
    builder.mark_goal_slot(len(builder.kinds))
    builder.trajectory(states, actions, targets=True)
    return builder.build()


def explain_prefix(tokenize, states: np.ndarray, actions: np.ndarray, goal_fields: np.ndarray = NO_CLAUSE_LIST) -> SequenceBuilder:
    """Rollout -> goal up to where the answer starts: the trajectory and the answer prompt, whose
    last position is the goal slot."""
    builder = SequenceBuilder("explain", goal_fields)
    builder.text(tokenize(EXPLAIN_PROMPT))
    builder.trajectory(states, actions, targets=False)
    builder.text(tokenize(EXPLAIN_ANSWER))
    builder.mark_goal_slot(len(builder.kinds) - 1)
    return builder


def explain_sequence(
    tokenize, eos_id: int, instruction: str, states: np.ndarray, actions: np.ndarray, goal_fields: np.ndarray = NO_CLAUSE_LIST,
) -> Sequence:
    """Rollout -> goal: the trajectory, then the instruction as the LM's target."""
    builder = explain_prefix(tokenize, states, actions, goal_fields)
    builder.text(tokenize(" " + instruction) + [eos_id], target=True)
    return builder.build()


def dynamics_sequence(tokenize, state: np.ndarray, action: int, next_state: np.ndarray) -> Sequence:
    """One step of dynamics: ``S_t A_t`` predicts ``S_{t+1}``."""
    builder = SequenceBuilder("dynamics")
    builder.text(tokenize(DYNAMICS_PROMPT))
    builder.trajectory(np.stack([state, next_state]), np.array([action]), targets=True)
    # only the state change is a target here; the action at S_t is given, not predicted
    sequence = builder.build()
    sequence.action_targets[:] = IGNORE
    return sequence


_FILLS = (
    ("token_ids", 0), ("kinds", TEXT), ("actions", 0), ("token_targets", IGNORE),
    ("action_targets", IGNORE), ("state_target_mask", False), ("goal_slot", False),
)


def _rows(sequences: list[Sequence], rows: list[list[int]], length: int) -> dict[str, np.ndarray]:
    """Lay ``sequences`` out in ``len(rows)`` rows of ``length`` positions: row ``r`` holds the
    sequences ``rows[r]`` one after the other, then padding. Adds ``attention_mask`` (1 at a
    sequence's positions), ``position_tasks`` (index into :data:`TASKS`, -1 at padding) and
    ``position_ids`` (restarting at 0 for each sequence and for the padding)."""
    batch: dict[str, np.ndarray] = {}
    for name, fill in _FILLS:
        batch[name] = np.full((len(rows), length), fill, dtype=getattr(sequences[0], name).dtype)
    for name in ("states", "state_targets"):
        batch[name] = np.zeros((len(rows), length, 10), dtype=np.float32)
    batch["goal_fields"] = np.full((len(rows), length, CLAUSE_LIST_WIDTH), -1, dtype=np.int64)
    batch["attention_mask"] = np.zeros((len(rows), length), dtype=np.int64)
    batch["position_tasks"] = np.full((len(rows), length), -1, dtype=np.int64)
    batch["position_ids"] = np.zeros((len(rows), length), dtype=np.int64)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            sequence, end = sequences[i], start + len(sequences[i])
            for name in (*(f for f, _ in _FILLS), "states", "state_targets", "goal_fields"):
                batch[name][r, start:end] = getattr(sequence, name)
            batch["attention_mask"][r, start:end] = 1
            batch["position_tasks"][r, start:end] = TASKS.index(sequence.task)
            batch["position_ids"][r, start:end] = np.arange(len(sequence))
            start = end
        batch["position_ids"][r, start:] = np.arange(length - start)
    return batch


def collate(sequences: list[Sequence]) -> dict[str, np.ndarray]:
    """One sequence a row, right-padded into ``(B, L_max)`` arrays (see :func:`_rows` for the
    extra fields)."""
    return _rows(sequences, [[i] for i in range(len(sequences))], max(len(s) for s in sequences))


def pack(sequences: list[Sequence], row_length: int) -> dict[str, np.ndarray]:
    """Several sequences a row: first-fit decreasing into rows of ``max(row_length, longest)``
    positions, so that short examples (a dynamics step is ~6 positions) fill the room a long one
    leaves instead of padding.

    Every sequence restarts ``position_ids`` at 0; decoding with these position ids and no 2D
    attention mask makes transformers confine each position's attention to its own sequence (its
    packed-sequence mask), so a packed sequence gives the same outputs as a padded one.
    """
    if row_length < 1:
        raise ValueError(f"row_length {row_length} must be at least 1")
    length = max(row_length, max(len(s) for s in sequences))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda k: (-len(sequences[k]), k)):
        fits = next((r for r, free in enumerate(room) if free >= len(sequences[i])), None)
        if fits is None:
            rows.append([])
            room.append(length)
            fits = len(rows) - 1
        rows[fits].append(i)
        room[fits] -= len(sequences[i])
    return _rows(sequences, rows, max(length - free for free in room))
