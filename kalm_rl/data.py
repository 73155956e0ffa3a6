"""Offline transitions as torch tensors, and batches that mix real and imagined data.

A policy input is the scaled state next to the instruction's embedding: ``(B, 10 + D)``
float32, ``D`` the text encoder's ``dim``. Embeddings are computed once per distinct instruction
and gathered per batch, so the dataset holds ``N x 10`` states, not ``N x (10 + D)`` inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from kalm_envs.loader import Transitions
from kalm_envs.predicates import is_success, transition_outcome
from kalm_envs.text_encoders import TextEncoder

STATE_SCALE = 2.0
"""Ball coordinates (m) are multiplied by this before the networks see them: x in [-1, 1], y in [-0.6, 1.2]."""
IMAGINED_EPISODES = ("all", "successful", "progress", "final-push")
"""Which imagined rows a run samples: every one; only those of episodes whose last state meets the
goal; only the pushes of such episodes that bring the goal closer; or only the last push of each
such episode (the push that reached the goal)."""


def episode_reached_goal(transitions: Transitions) -> np.ndarray:
    """``(N,)`` bool: the transition's episode ends in a state that meets the episode's goal.

    Judged on the stored states with the env's success predicates (the episode's first and last
    state and its goal), so for imagined data it is the generator's own claim: no simulator is run.
    Rows must be grouped by episode in time order, as :func:`kalm_envs.loader.load_transitions` gives.
    """
    if len(transitions) == 0:
        return np.zeros(0, dtype=bool)
    starts, ends = _episode_bounds(transitions.episode_ids)
    reached = is_success(transitions.next_observations[ends], transitions.goals[ends],
                         transitions.observations[starts])
    return np.repeat(reached, ends - starts + 1)


def _episode_bounds(episodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)``: the first and last row of each episode, rows grouped by episode."""
    starts = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])
    return starts, np.r_[starts[1:], len(episodes)] - 1


def progress_rows(transitions: Transitions) -> np.ndarray:
    """``(N,)`` bool: the push brings its episode's goal closer.

    Judged on the stored states with the env's dense reward, recomputed whatever reward the
    dataset was labelled with: a relation or move goal's target distance shrinks, a compound goal
    gains a condition, or the goal is met. A push of a ball the goal does not name, one blocked by
    a wall, or one away from the target is not progress. Rows are grouped by episode as for
    :func:`episode_reached_goal`.
    """
    if len(transitions) == 0:
        return np.zeros(0, dtype=bool)
    starts, ends = _episode_bounds(transitions.episode_ids)
    initial = transitions.observations[np.repeat(starts, ends - starts + 1)]
    reward, _ = transition_outcome(transitions.observations, transitions.next_observations,
                                   transitions.goals, initial, "dense")
    return reward > 0


def episode_last_rows(transitions: Transitions) -> np.ndarray:
    """``(N,)`` bool: the transition is its episode's last (rows grouped by episode, as for
    :func:`episode_reached_goal`)."""
    episodes = transitions.episode_ids
    return np.r_[episodes[1:] != episodes[:-1], True] if len(episodes) else np.zeros(0, dtype=bool)


def policy_inputs(states: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """``(B, 10)`` states (m) and ``(B, D)`` instruction embeddings -> ``(B, 10 + D)`` inputs."""
    return torch.cat([states * STATE_SCALE, embeddings], dim=1)


class _Gathered:
    """A :class:`Batch` field: the batch's rows of the data's tensor of the same name, gathered on
    first access and then kept in the batch's ``__dict__`` (which later reads find first)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, batch: Batch | None, owner: type | None = None) -> torch.Tensor:
        if batch is None:
            return self
        value = getattr(batch._data, self.name).index_select(0, batch.rows)
        batch.__dict__[self.name] = value
        return value


class Batch:
    """``B`` transitions ready for a learner, gathered from their :class:`OfflineData` on first
    access, so a learner pays only for the fields it reads (behaviour cloning never gathers
    ``next_states`` or ``rewards``).

    Attributes:
        rows: ``(B,)`` int64 row indices into the data, on the data's device.
        states, next_states: ``(B, 10)`` float32 ball centres (m) at ``s`` and ``s'``.
        embeddings: ``(B, D)`` float32 instruction embeddings.
        actions: ``(B,)`` int64. rewards: ``(B,)`` float32, already multiplied by the reward scale.
        terminals: ``(B,)`` float32, 1 only where the episode *terminated* at ``s'``; a time-limit
            truncation keeps 0, so the learner bootstraps from ``s'`` there.
        sources: ``(B,)`` int64, the :class:`OfflineData` source index of each row.
    """

    states = _Gathered()
    next_states = _Gathered()
    actions = _Gathered()
    rewards = _Gathered()
    terminals = _Gathered()
    sources = _Gathered()

    def __init__(self, data: OfflineData, rows: torch.Tensor) -> None:
        self._data = data
        self.rows = rows

    @cached_property
    def embeddings(self) -> torch.Tensor:
        return self._data.embeddings.index_select(0, self._data.text_ids.index_select(0, self.rows))

    @cached_property
    def inputs(self) -> torch.Tensor:
        """``(B, 10 + D)`` policy inputs at ``s``."""
        return policy_inputs(self.states, self.embeddings)

    @cached_property
    def next_inputs(self) -> torch.Tensor:
        """``(B, 10 + D)`` policy inputs at ``s'`` (built only for learners that bootstrap)."""
        return policy_inputs(self.next_states, self.embeddings)


class OfflineData:
    """Transitions of one or more datasets, each tagged as ``real`` or ``imagined``.

    ``real_fraction`` of every batch comes from the real datasets and the rest from the imagined
    ones (oracle datasets take the imagined slot for the upper-bound run). Within a group rows are
    drawn uniformly with replacement. With no imagined data every row is real.

    ``imagined_episodes`` ``"successful"`` keeps only the imagined episodes whose last state meets
    their goal (:func:`episode_reached_goal`); ``"progress"`` only the pushes of those that bring the
    goal closer (:func:`progress_rows`: drops the pushes of a misread goal's balls and the pushes
    away from the target); ``"final-push"`` only the last push of each of those (the one that
    reached the goal, without the pushes that led to where it was made); ``"all"`` keeps every row.
    """

    def __init__(
        self,
        transitions: Transitions,
        imagined_sources: Sequence[int],
        encoder: TextEncoder,
        real_fraction: float = 0.5,
        reward_scale: float = 0.01,
        imagined_episodes: str = "all",
    ) -> None:
        if imagined_episodes not in IMAGINED_EPISODES:
            raise ValueError(f"imagined episodes {imagined_episodes!r} is not one of {IMAGINED_EPISODES}")
        sources = torch.as_tensor(transitions.sources.astype(np.int64))
        imagined = torch.isin(sources, torch.as_tensor(list(imagined_sources), dtype=torch.int64))
        self.real_rows = torch.nonzero(~imagined).flatten()
        if len(self.real_rows) == 0:
            raise ValueError("no real transitions: give at least one real dataset")
        if imagined_episodes != "all" and imagined.any():
            kept = imagined & torch.as_tensor(episode_reached_goal(transitions))
            if imagined_episodes == "final-push":
                kept &= torch.as_tensor(episode_last_rows(transitions))
            elif imagined_episodes == "progress":
                kept &= torch.as_tensor(progress_rows(transitions))
            if not kept.any():
                raise ValueError("no imagined episode reaches its goal: nothing is left to sample "
                                 f"with imagined episodes {imagined_episodes!r}")
            imagined = kept
        self.imagined_rows = torch.nonzero(imagined).flatten()
        if len(self.imagined_rows) and not 0.0 < real_fraction < 1.0:
            raise ValueError(f"real fraction {real_fraction} must lie strictly between 0 and 1 "
                             "when imagined data is given")
        self.real_fraction = real_fraction if len(self.imagined_rows) else 1.0
        self.states = torch.as_tensor(transitions.observations)
        self.next_states = torch.as_tensor(transitions.next_observations)
        self.actions = torch.as_tensor(transitions.actions, dtype=torch.int64)
        self.rewards = torch.as_tensor(transitions.rewards * reward_scale, dtype=torch.float32)
        self.terminals = torch.as_tensor(transitions.terminations, dtype=torch.float32)
        self.text_ids = torch.as_tensor(transitions.instruction_ids.astype(np.int64))
        self.episode_ids = torch.as_tensor(transitions.episode_ids.astype(np.int64))
        self.embeddings = torch.as_tensor(encoder.encode(transitions.instructions), dtype=torch.float32)
        self.sources = sources
        self.input_dim = self.states.shape[1] + self.embeddings.shape[1]
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> OfflineData:
        """Move the tensors that batches gather from to ``device`` (in place; returns self). The row
        pools and ``episode_ids`` stay on the CPU: rows are drawn there with the caller's generator,
        so a seed gives the same batches on every device."""
        for name in ("states", "next_states", "actions", "rewards", "terminals", "text_ids", "embeddings", "sources"):
            setattr(self, name, getattr(self, name).to(device))
        self.device = torch.device(device)
        return self

    def __len__(self) -> int:
        return len(self.actions)

    def real_rows_per_batch(self, batch_size: int) -> int:
        """How many rows of a ``batch_size`` batch are real (the rest are imagined)."""
        return round(batch_size * self.real_fraction)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of ``batch_size`` rows, ``real_rows_per_batch`` of them real."""
        n_real = self.real_rows_per_batch(batch_size)
        rows = self.real_rows[torch.randint(len(self.real_rows), (n_real,), generator=generator)]
        if n_real < batch_size:
            picks = torch.randint(len(self.imagined_rows), (batch_size - n_real,), generator=generator)
            rows = torch.cat([rows, self.imagined_rows[picks]])
        return self.batch(rows)

    def split_episodes(self, fraction: float, seed: int) -> tuple[OfflineData, OfflineData]:
        """``(train, held_out)``: a ``fraction`` of the real episodes and of the imagined ones, drawn
        with ``seed``, move to ``held_out``; every transition of an episode stays on one side.

        Both share this data's tensors and differ only in the rows they sample. A group with fewer
        than two episodes keeps them all for training.

        Raises:
            ValueError: ``fraction`` outside ``(0, 1)``.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction {fraction} must lie strictly between 0 and 1")
        generator = torch.Generator().manual_seed(seed)
        held_out = torch.zeros(len(self), dtype=torch.bool)
        for rows in (self.real_rows, self.imagined_rows):
            episodes = torch.unique(self.episode_ids[rows])
            count = min(max(1, round(fraction * len(episodes))), len(episodes) - 1)
            if count > 0:
                picked = episodes[torch.randperm(len(episodes), generator=generator)[:count]]
                held_out[rows] = torch.isin(self.episode_ids[rows], picked)
        return self._restricted_to(~held_out), self._restricted_to(held_out)

    def _restricted_to(self, keep: torch.Tensor) -> OfflineData:
        """A shallow copy that samples only the rows where ``keep`` (``(N,)`` bool) is set."""
        view = copy.copy(self)
        view.real_rows = self.real_rows[keep[self.real_rows]]
        view.imagined_rows = self.imagined_rows[keep[self.imagined_rows]]
        if len(view.imagined_rows) == 0:
            view.real_fraction = 1.0
        return view

    def batch(self, rows: torch.Tensor) -> Batch:
        """The transitions at ``rows`` (``(B,)`` int64), on this data's device."""
        return Batch(self, rows.to(self.device))
