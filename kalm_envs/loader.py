"""Minari datasets of our spaces as flat transition arrays, for offline learners."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kalm_envs.dataset_checks import read_dataset
from kalm_envs.validation import check_paths


@dataclass
class Transitions:
    """``N`` transitions of one or more datasets, aligned per episode as ``obs[:-1] -> obs[1:]``.

    Attributes:
        observations, next_observations: ``(N, 10)`` float32 ball centres (m).
        actions: ``(N,)`` int64. rewards: ``(N,)`` float32.
        terminations, truncations: ``(N,)`` bool (a truncation is not a terminal state).
        goals: ``(N, 10)`` int64 goal arrays.
        instruction_ids: ``(N,)`` int32 index into ``instructions`` (each distinct text once).
        sources: ``(N,)`` int16 index into ``source_names`` (the dataset each came from).
        episode_ids: ``(N,)`` int32 running episode number over all loaded datasets.
        timesteps: ``(N,)`` int16 step index within the episode.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    goals: np.ndarray
    instruction_ids: np.ndarray
    instructions: list[str]
    sources: np.ndarray
    source_names: list[str]
    episode_ids: np.ndarray
    timesteps: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def instruction_texts(self) -> np.ndarray:
        """``(N,)`` instruction string of every transition."""
        return np.asarray(self.instructions, dtype=object)[self.instruction_ids]


def load_transitions(datasets: str | Path | Sequence[str | Path]) -> Transitions:
    """Flatten one or more datasets (ids under the Minari root, or dataset folders).

    Every dataset is read and checked (:func:`kalm_envs.dataset_checks.read_dataset`: its env and
    spaces, the stored checksum, shapes, action range, goals, finite values, counts) before any is
    flattened.

    Raises:
        FileNotFoundError: a dataset does not exist. ValueError: a dataset is not of our spaces,
            or is damaged (:class:`~kalm_envs.minari_io.DatasetError`); the message names it.
    """
    names = check_paths([datasets] if isinstance(datasets, str | Path) else datasets, "datasets")
    packs = [read_dataset(name)[1] for name in names]
    vocabulary: dict[str, int] = {}
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    first_episode = 0
    for source, packed in enumerate(packs):
        lengths = packed["lengths"]
        episode = np.repeat(np.arange(len(lengths)), lengths)  # episode of every transition
        starts = np.cumsum(lengths) - lengths  # first transition of every episode
        state = np.arange(lengths.sum()) + episode  # obs index: skips each episode's last state
        text_ids = np.array([vocabulary.setdefault(str(t), len(vocabulary)) for t in packed["instructions"]])
        parts["observations"].append(packed["observations"][state])
        parts["next_observations"].append(packed["observations"][state + 1])
        for key in ("actions", "terminations", "truncations"):
            parts[key].append(packed[key])
        parts["rewards"].append(packed["rewards"].astype(np.float32))
        parts["goals"].append(packed["goals"][episode])
        parts["instruction_ids"].append(text_ids[episode].astype(np.int32))
        parts["sources"].append(np.full(len(episode), source, dtype=np.int16))
        parts["episode_ids"].append((episode + first_episode).astype(np.int32))
        parts["timesteps"].append((np.arange(len(episode)) - starts[episode]).astype(np.int16))
        first_episode += len(lengths)
    return Transitions(
        **{key: np.concatenate(value) for key, value in parts.items()},
        instructions=list(vocabulary),
        source_names=[str(n) for n in names],
    )
