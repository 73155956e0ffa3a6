"""Grounding examples from Minari episodes: what :mod:`kalm_gen.train` feeds the grounded LM.

Episodes come from one or more datasets of our spaces (ids under the Minari root, or dataset
folders). Each episode yields examples of the three grounding tasks of
:mod:`kalm_gen.sequences`:

- ``rollout`` (instruction -> whole trajectory), ``explain`` (whole trajectory -> instruction),
  ``dynamics`` (one step ``S_t A_t -> S_{t+1}`` at a step drawn at random).

Instructions are re-drawn every time an episode is used: among every wording of its goal at its
dataset's level (:func:`kalm_envs.language.instruction_variants`), so the LM sees the goal under
many phrasings. An episode whose recorded instruction is not one of those wordings (e.g. KALM's
released data, imported with KALM's own phrasing) keeps its recorded text.

With a ``compound_fraction``, that share of the training rollout examples become *compound goal*
examples, for goal heads that name a clause list (:mod:`kalm_gen.goal_fields`): the train
wordings of two or three relation goals of the training episodes, joined into one instruction
(:data:`COMPOUND_JOINS`), followed by the episode's initial state, whose slot is the goal slot;
the goal head is the only target. Nothing else teaches the clause list's later clauses: real
data holds single relations only. Validation examples are never compound.

With a ``move_fraction``, that share of the training rollout examples become *move* examples: a
train wording of the episode's relation with its reference ball cut off
(:func:`reference_free_wording`: "Put the red ball to the left of the blue ball." becomes "Put the
red ball to the left."), then the initial state as the goal slot, and the goal head's target is
the move of ball A in that direction (:func:`~kalm_gen.goal_fields.move_fields`). Real data holds
no move goal; this is the only place a goal head learns to name one, and it sees no wording but
the train templates' own words.

Validation holds whole episodes out (a seeded fraction): no episode gives examples to both
splits.

Batches are a pure function of ``(seed, batch index)`` (:meth:`GroundingData.train_batch`), so
a resumed run sees exactly the batches it would have seen, and process ``r`` of ``n`` takes batch
``step * n + r`` (:class:`GroundingSampler`), so every process trains on different examples.
Within a batch the tasks are mixed in proportion to the task weights (systematic sampling: each
task gets the floor or ceiling of its share of the batch, never a batch without a task whose
share is at least one example).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kalm_envs.goals import MAX_CLAUSES, Goal, GoalKind
from kalm_envs.language import DIRECTION_PHRASES, instruction_variants
from kalm_envs.physics import COLORS
from kalm_envs.dataset_checks import dataset_level, read_dataset
from kalm_gen.goal_fields import clause_fields_of, move_fields
from kalm_gen.sequences import TASKS, Sequence as TokenSequence
from kalm_gen.sequences import collate, dynamics_sequence, explain_sequence, pack, rollout_sequence

__all__ = [
    "DEFAULT_TASK_WEIGHTS",
    "GroundingData",
    "GroundingEpisode",
    "GroundingSampler",
    "load_grounding_episodes",
    "normalize_task_weights",
    "split_episodes",
]

DEFAULT_TASK_WEIGHTS: dict[str, float] = {task: 1.0 for task in TASKS}
#: How a compound instruction joins two of its clauses' sentences, drawn for each join: the glue,
#: whether the sentence before keeps its closing full stop, and whether the one after starts in
#: lower case. Generic connectives only; the hard level's frames ("Two things: ...") never occur.
COMPOUND_JOINS: tuple[tuple[str, bool, bool], ...] = (
    (" ", True, False), (" Also, ", True, True), (" Then ", True, True), (", and ", False, True),
    ("; ", False, True), (" and ", False, True), (", ", False, True),
)
_PARTNER_TRIES = 20  # draws of a training episode for each later clause of a compound goal
#: The train wordings' relation phrases ("to the left of", ...), longest first, and the direction
#: of each; a train wording ends with one and then its reference ball.
_RELATION_PHRASES: dict[str, int] = dict(sorted(
    ((phrase, d) for d, phrases in enumerate(DIRECTION_PHRASES["rel"]) for phrase in phrases),
    key=lambda item: -len(item[0]),
))
_REFERENCE_AT_END = re.compile(
    r"(?P<phrase>" + "|".join(map(re.escape, _RELATION_PHRASES)) + r") (the )?(?P<colour>[a-z]+)( [a-z]+)?\.$"
)
TASK_INDEX: dict[str, int] = {task: i for i, task in enumerate(TASKS)}


@dataclass(frozen=True)
class GroundingEpisode:
    """One episode as the grounding tasks use it.

    Attributes:
        episode_id: running number over every loaded dataset (0, 1, ...).
        source: the dataset it came from (as given), and ``index`` its position there.
        level: the dataset's instruction level (train, rephrase, easy or hard).
        states: ``(T + 1, 10)`` float32; ``actions``: ``(T,)`` int64, ``T >= 1``.
        goal: ``(10,)`` int64 goal array; ``goal_fields`` its ``(9,)`` clause list
            (:func:`~kalm_gen.goal_fields.clause_fields_of`).
        recorded_instruction: the instruction stored in the dataset.
        wordings: the texts an instruction is drawn from: every wording of the goal at ``level``,
            or just the recorded instruction when it is not one of them.
    """

    episode_id: int
    source: str
    index: int
    level: str
    states: np.ndarray
    actions: np.ndarray
    goal: np.ndarray
    goal_fields: np.ndarray
    recorded_instruction: str
    wordings: tuple[str, ...]

    @property
    def length(self) -> int:
        return len(self.actions)


def _wordings(goal_array: np.ndarray, level: str, recorded: str, cache: dict) -> tuple[str, ...]:
    """Every wording of the goal at ``level`` if ``recorded`` is one of them, else ``(recorded,)``."""
    key = (tuple(int(v) for v in goal_array), level)
    if key not in cache:
        try:
            variants = tuple(instruction_variants(Goal.from_array(goal_array), level))
        except ValueError:  # a goal the level does not word (or a malformed goal array)
            variants = ()
        cache[key] = (variants, frozenset(variants))
    variants, lookup = cache[key]
    return variants if recorded in lookup else (recorded,)


def load_grounding_episodes(
    datasets: str | Path | Sequence[str | Path], max_episodes: int | None = None
) -> list[GroundingEpisode]:
    """Every episode (at most ``max_episodes`` per dataset, the first ones) of the datasets.

    Every dataset is read through :func:`kalm_envs.dataset_checks.read_dataset` (which refuses an
    episode without a step, among other damage). Raises ``FileNotFoundError`` for a missing
    dataset and ``ValueError`` for one of another env or spaces, a damaged one, or when no
    episode is left.
    """
    names = [datasets] if isinstance(datasets, str | Path) else list(datasets)
    if not names:
        raise ValueError("grounding needs at least one dataset")
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes {max_episodes} must be at least 1")
    for name in names:  # every dataset's metadata is checked before any is read
        dataset_level(name)
    episodes: list[GroundingEpisode] = []
    cache: dict = {}
    for name in names:
        level, packed = read_dataset(name)
        lengths = packed["lengths"]
        count = len(lengths) if max_episodes is None else min(max_episodes, len(lengths))
        step_starts = np.concatenate([[0], np.cumsum(lengths)])
        state_starts = np.concatenate([[0], np.cumsum(lengths + 1)])
        for i in range(count):
            recorded = str(packed["instructions"][i])
            goal = packed["goals"][i].astype(np.int64)
            episodes.append(GroundingEpisode(
                episode_id=len(episodes),
                source=str(name),
                index=i,
                level=level,
                states=packed["observations"][state_starts[i]:state_starts[i + 1]].astype(np.float32),
                actions=packed["actions"][step_starts[i]:step_starts[i + 1]].astype(np.int64),
                goal=goal,
                goal_fields=clause_fields_of(goal),
                recorded_instruction=recorded,
                wordings=_wordings(goal, level, recorded, cache),
            ))
    if not episodes:
        raise ValueError(f"datasets {[str(n) for n in names]} hold no episode with a step")
    return episodes


def split_episodes(
    episodes: Sequence[GroundingEpisode], val_fraction: float, seed: int
) -> tuple[list[GroundingEpisode], list[GroundingEpisode]]:
    """Hold out ``round(val_fraction * n)`` whole episodes (at least one when the fraction is
    positive), chosen with ``seed``; returns ``(train, val)``, each in the original order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction} must lie in [0, 1)")
    n = len(episodes)
    n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * n)))
    if n_val >= n:
        raise ValueError(
            f"val_fraction {val_fraction} of {n} episode(s) leaves no training episode; "
            "use more episodes or a smaller fraction"
        )
    held_out = set(np.random.default_rng([seed, 0x5EED]).permutation(n)[:n_val].tolist())
    train = [e for i, e in enumerate(episodes) if i not in held_out]
    val = [e for i, e in enumerate(episodes) if i in held_out]
    return train, val


def normalize_task_weights(weights: dict[str, float] | None) -> np.ndarray:
    """``(3,)`` task probabilities in :data:`kalm_gen.sequences.TASKS` order (missing tasks: 0)."""
    weights = dict(DEFAULT_TASK_WEIGHTS if weights is None else weights)
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in task weights; tasks are {list(TASKS)}")
    values = np.array([float(weights.get(task, 0.0)) for task in TASKS])
    if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise ValueError(f"task weights {weights} must be finite, non-negative and not all zero")
    return values / values.sum()


class GroundingData:
    """Train and validation examples of the grounding tasks, as collated batches.

    Args:
        episodes: from :func:`load_grounding_episodes`.
        tokenize: ``text -> token ids`` without special tokens (``GroundedLM.tokenize``).
        eos_id: the end-of-text token closing an explanation.
        task_weights: relative frequency of each task in training batches (default equal).
        val_fraction: share of episodes held out for validation.
        seed: drives the split, the batches, the wordings and the dynamics steps.
        compound_fraction: share of training rollout examples made compound-goal examples
            (see the module docstring); 0 makes none and draws nothing for them.
        move_fraction: share of training rollout examples made move examples (see the module
            docstring); 0 makes none. With ``compound_fraction``, the two shares add up to less than 1.
    """

    def __init__(
        self,
        episodes: Sequence[GroundingEpisode],
        tokenize: Callable[[str], list[int]],
        eos_id: int,
        task_weights: dict[str, float] | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        compound_fraction: float = 0.0,
        move_fraction: float = 0.0,
    ) -> None:
        if not 0.0 <= compound_fraction < 1.0:
            raise ValueError(f"compound_fraction {compound_fraction} must lie in [0, 1)")
        if not 0.0 <= move_fraction < 1.0 - compound_fraction:
            raise ValueError(f"move_fraction {move_fraction} must lie in [0, 1 - compound_fraction "
                             f"{compound_fraction})")
        self.compound_fraction = float(compound_fraction)
        self.move_fraction = float(move_fraction)
        self.tokenize = tokenize
        self.eos_id = int(eos_id)
        self.seed = int(seed)
        self.task_probabilities = normalize_task_weights(task_weights)
        self.train_episodes, self.val_episodes = split_episodes(episodes, val_fraction, seed)
        self._token_cache: dict[str, list[int]] = {}
        self._epoch_cache: dict[int, np.ndarray] = {}

    # --- single examples -------------------------------------------------------------------------

    def _tokens(self, text: str) -> list[int]:
        if text not in self._token_cache:
            self._token_cache[text] = list(self.tokenize(text))
        return self._token_cache[text]

    def example(
        self, episode: GroundingEpisode, task: str, rng: np.random.Generator, training: bool = False
    ) -> TokenSequence:
        """One sequence of ``task`` from ``episode``: a wording (rollout, explain) or a step
        (dynamics) drawn with ``rng``; a ``training`` rollout example is a compound-goal example
        (:meth:`compound_example`) with probability ``compound_fraction`` and a move example
        (:meth:`move_example`) with probability ``move_fraction``."""
        if training and task == "rollout" and (self.compound_fraction or self.move_fraction):
            draw = rng.random()
            special = (self.compound_example(episode, rng) if draw < self.compound_fraction else
                       self.move_example(episode, rng) if draw < self.compound_fraction + self.move_fraction else
                       None)
            if special is not None:
                return special
        if task == "dynamics":
            t = int(rng.integers(episode.length))
            return dynamics_sequence(
                self._tokens, episode.states[t], int(episode.actions[t]), episode.states[t + 1]
            )
        instruction = episode.wordings[int(rng.integers(len(episode.wordings)))]
        if task == "rollout":
            return rollout_sequence(self._tokens, instruction, episode.states, episode.actions, episode.goal_fields)
        if task == "explain":
            return explain_sequence(
                self._tokens, self.eos_id, instruction, episode.states, episode.actions, episode.goal_fields
            )
        raise ValueError(f"unknown task {task!r}; tasks are {list(TASKS)}")

    def compound_example(self, episode: GroundingEpisode, rng: np.random.Generator) -> TokenSequence | None:
        """Goal naming of a compound goal: ``episode``'s relation goal and one or two more from
        training episodes drawn with ``rng`` (no two clauses relating the same balls), their
        wordings joined into one instruction, then ``episode``'s initial state as the goal slot.
        None when the goal is not one relation or no partner is found."""
        members = self._compound_members(episode, rng)
        sentences = [member.wordings[int(rng.integers(len(member.wordings)))] for member, _ in members]
        if len(members) < 2:
            return None
        text = sentences[0]
        for sentence in sentences[1:]:
            glue, keep_stop, lower = COMPOUND_JOINS[int(rng.integers(len(COMPOUND_JOINS)))]
            text = (text if keep_stop else text.removesuffix(".")) + glue + (
                sentence[:1].lower() + sentence[1:] if lower else sentence)
        return self._goal_naming(text, episode, clause_fields_of(Goal.relations([c for _, c in members]).to_array()))

    def move_example(self, episode: GroundingEpisode, rng: np.random.Generator) -> TokenSequence | None:
        """Goal naming of a move: a wording of ``episode``'s relation goal drawn with ``rng``, its
        reference ball cut off (:func:`reference_free_wording`), then ``episode``'s initial state as
        the goal slot; the target is ball A moving in the relation's direction. None when the goal
        is not one relation or the wording has no reference ball to cut."""
        if not _single_relation(episode.goal):
            return None
        clause = Goal.from_array(episode.goal).clauses[0]
        text = reference_free_wording(episode.wordings[int(rng.integers(len(episode.wordings)))], clause)
        if text is None:
            return None
        return self._goal_naming(text, episode, move_fields(clause[0], clause[2]))

    def _goal_naming(self, text: str, episode: GroundingEpisode, fields: np.ndarray) -> TokenSequence:
        """A goal-naming example: ``text``, then ``episode``'s initial state as the goal slot, whose
        ``(9,)`` clause list ``fields`` is the only target (no actions, no later states)."""
        return rollout_sequence(self._tokens, text, episode.states[:1], episode.actions[:0], fields)

    def _compound_members(
        self, episode: GroundingEpisode, rng: np.random.Generator
    ) -> list[tuple[GroundingEpisode, tuple[int, int, int]]]:
        """``episode`` and the partners of its compound goal, each with its relation clause (2 or
        3 members in all; just ``episode`` when it or the training episodes offer no relation goal
        to join)."""
        if not _single_relation(episode.goal):
            return [(episode, ())]
        members = [(episode, Goal.from_array(episode.goal).clauses[0])]
        pairs = {frozenset(members[0][1][:2])}
        wanted = int(rng.integers(2, MAX_CLAUSES + 1))
        for _ in range(_PARTNER_TRIES):
            if len(members) == wanted:
                break
            partner = self.train_episodes[int(rng.integers(len(self.train_episodes)))]
            if _single_relation(partner.goal):
                clause = Goal.from_array(partner.goal).clauses[0]
                if frozenset(clause[:2]) not in pairs:
                    members.append((partner, clause))
                    pairs.add(frozenset(clause[:2]))
        return members

    # --- training batches ------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The training episodes' order in ``epoch`` (a seeded permutation)."""
        if epoch not in self._epoch_cache:
            if len(self._epoch_cache) > 4:
                self._epoch_cache.clear()
            rng = np.random.default_rng([self.seed, 0xE90C, epoch])
            self._epoch_cache[epoch] = rng.permutation(len(self.train_episodes))
        return self._epoch_cache[epoch]

    def task_counts(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """How many examples of each task a batch holds: systematic sampling of the weights."""
        cumulative = np.cumsum(self.task_probabilities)
        cumulative[int(np.flatnonzero(self.task_probabilities)[-1]):] = 1.0  # exact top edge
        edges = np.floor(cumulative * batch_size + rng.random()).astype(np.int64)
        return np.diff(np.concatenate([[0], edges]))

    def batch_plan(
        self, index: int, batch_size: int
    ) -> tuple[list[tuple[GroundingEpisode, str]], np.random.Generator]:
        """The ``(episode, task)`` pairs of training batch ``index`` and its example rng.

        Batch ``index`` takes positions ``index * batch_size ...`` of the endless episode stream
        (one seeded permutation of the training episodes per epoch after another).
        """
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be at least 1")
        rng = np.random.default_rng([self.seed, 0xBA7C, index])
        counts = self.task_counts(batch_size, rng)
        tasks = np.repeat(np.arange(len(TASKS)), counts)
        rng.shuffle(tasks)
        n = len(self.train_episodes)
        plan = []
        for offset, task in enumerate(tasks):
            position = index * batch_size + offset
            episode = self.train_episodes[int(self._epoch_order(position // n)[position % n])]
            plan.append((episode, TASKS[int(task)]))
        return plan, rng

    def train_sequences(self, index: int, batch_size: int) -> list[TokenSequence]:
        """The sequences of training batch ``index``."""
        plan, rng = self.batch_plan(index, batch_size)
        return [self.example(episode, task, rng, training=True) for episode, task in plan]

    def train_batch(self, index: int, batch_size: int, pack_length: int | None = None) -> dict[str, np.ndarray]:
        """Training batch ``index``, one sequence a row, or packed into rows of ``pack_length``
        positions (:func:`kalm_gen.sequences.pack`); plus ``task_ids`` and ``episode_ids``
        (one per sequence)."""
        plan, rng = self.batch_plan(index, batch_size)
        return collate_examples(
            [self.example(e, t, rng, training=True) for e, t in plan], [e.episode_id for e, _ in plan], pack_length
        )

    # --- validation --------------------------------------------------------------------------------

    def val_sequences(self) -> list[tuple[GroundingEpisode, TokenSequence]]:
        """One example of every task per validation episode, fixed by the seed."""
        examples = []
        for episode in self.val_episodes:
            rng = np.random.default_rng([self.seed, 0x7A1, episode.episode_id])
            examples += [(episode, self.example(episode, task, rng)) for task in TASKS]
        return examples

    def val_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> list[dict[str, np.ndarray]]:
        """Collated validation batches, each of one task; process ``rank`` of ``world_size``
        takes every ``world_size``-th batch."""
        by_task: dict[str, list[tuple[GroundingEpisode, TokenSequence]]] = {task: [] for task in TASKS}
        for episode, sequence in self.val_sequences():
            by_task[sequence.task].append((episode, sequence))
        batches = []
        for task in TASKS:
            items = by_task[task]
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                batches.append(collate_examples([s for _, s in chunk], [e.episode_id for e, _ in chunk]))
        return batches[rank::world_size]


def reference_free_wording(wording: str, clause: tuple[int, int, int]) -> str | None:
    """``wording`` of the relation ``clause`` ``(a, b, direction)`` with its reference ball cut off
    and the relation phrase's closing "of" dropped ("Move the red one to the left of the blue
    one." -> "Move the red one to the left."), or None when the wording does not end with the
    clause's relation phrase and ball B (every train template does; other wordings may not)."""
    match = _REFERENCE_AT_END.search(wording)
    if match is None or _RELATION_PHRASES[match["phrase"]] != clause[2] or match["colour"] != COLORS[clause[1]]:
        return None
    return wording[:match.start()] + match["phrase"].removesuffix(" of") + "."


def _single_relation(goal_array: np.ndarray) -> bool:
    """Whether a ``(10,)`` goal array is a relations goal of one clause."""
    return int(goal_array[0]) == GoalKind.RELATIONS and int(goal_array[4]) == -1


def collate_examples(
    sequences: Sequence[TokenSequence], episode_ids: Sequence[int], pack_length: int | None = None
) -> dict[str, np.ndarray]:
    """:func:`kalm_gen.sequences.collate` (or :func:`~kalm_gen.sequences.pack` into rows of
    ``pack_length`` positions) plus ``task_ids`` (index into TASKS) and ``episode_ids``, one per
    sequence."""
    batch = collate(list(sequences)) if pack_length is None else pack(list(sequences), pack_length)
    batch["task_ids"] = np.array([TASK_INDEX[s.task] for s in sequences], dtype=np.int64)
    batch["episode_ids"] = np.asarray(episode_ids, dtype=np.int64)
    return batch


class GroundingSampler:
    """Endless training batches for one process: process ``rank`` of ``world_size`` takes batch
    ``step * world_size + rank`` at each ``step``, starting at ``start_step``.

    Batches are collated (or, with ``pack_length``, packed) numpy arrays, or torch tensors on
    ``device`` when one is given.
    """

    def __init__(
        self, data: GroundingData, batch_size: int, rank: int = 0, world_size: int = 1,
        start_step: int = 0, device: Any = None, pack_length: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, {world_size})")
        self.data = data
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.step = start_step
        self.device = device
        self.pack_length = pack_length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = self.data.train_batch(self.step * self.world_size + self.rank, self.batch_size, self.pack_length)
        self.step += 1
        if self.device is None:
            return batch
        from kalm_gen.grounded_lm import to_tensors

        return to_tensors(batch, self.device)
