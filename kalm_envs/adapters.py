"""Our flat transitions in the layouts other offline-RL libraries read.

Observations become one flat float32 vector per step: the 10 ball coordinates followed by the
instruction embedding of a :mod:`kalm_envs.text_encoders` encoder (default: hashed n-grams), the
same layout as :class:`kalm_envs.wrappers.EncodeInstruction`, so a policy trained on these arrays
runs in the wrapped env.

- :func:`to_corl_dict`: the D4RL ``qlearning_dataset`` dict that CORL-style code reads.
- :func:`to_d3rlpy_arrays` / :func:`to_d3rlpy`: d3rlpy's ``MDPDataset``. d3rlpy rebuilds each
  next observation from the following row of the same episode, so every episode that ends in a
  truncation gets its final observation as an extra row (action 0, reward 0, ``timeouts`` = 1)
  and no transition is lost; episodes that terminate end on their last step with ``terminals``
  = 1. Do not use d3rlpy's own ``get_minari``: it misaligns observations after the first episode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kalm_envs.loader import Transitions
from kalm_envs.text_encoders import HashedNgramEncoder, TextEncoder


def flat_observations(states: np.ndarray, instruction_ids: np.ndarray, transitions: Transitions, encoder: TextEncoder) -> np.ndarray:
    """``(N, 10 + dim)`` float32: ``states`` next to the embedding of each step's instruction."""
    embeddings = encoder.encode(transitions.instructions)
    return np.concatenate([states, embeddings[instruction_ids]], axis=1).astype(np.float32)


def to_corl_dict(transitions: Transitions, encoder: TextEncoder | None = None) -> dict[str, np.ndarray]:
    """D4RL-style dict: observations, actions, rewards, next_observations, terminals, timeouts."""
    encoder = encoder or HashedNgramEncoder()
    ids = transitions.instruction_ids
    return {
        "observations": flat_observations(transitions.observations, ids, transitions, encoder),
        "actions": transitions.actions.copy(),
        "rewards": transitions.rewards.astype(np.float32),
        "next_observations": flat_observations(transitions.next_observations, ids, transitions, encoder),
        "terminals": transitions.terminations.astype(np.float32),
        "timeouts": transitions.truncations.astype(np.float32),
    }


def to_d3rlpy_arrays(transitions: Transitions, encoder: TextEncoder | None = None) -> dict[str, np.ndarray]:
    """Keyword arrays of ``d3rlpy.dataset.MDPDataset``: observations, actions, rewards,
    terminals, timeouts, with one extra final row per episode that does not terminate."""
    encoder = encoder or HashedNgramEncoder()
    episode_ids = transitions.episode_ids
    last = np.flatnonzero(np.r_[episode_ids[1:] != episode_ids[:-1], True])  # last step per episode
    open_ended = last[~transitions.terminations[last]]
    at = open_ended + 1  # extra rows go right after those episodes' last step
    states = np.insert(transitions.observations, at, transitions.next_observations[open_ended], axis=0)
    ids = np.insert(transitions.instruction_ids, at, transitions.instruction_ids[open_ended])
    terminals = np.insert(transitions.terminations, at, False)
    timeouts = np.zeros(len(terminals), dtype=bool)
    timeouts[at + np.arange(len(at))] = True  # positions of the inserted rows
    return {
        "observations": flat_observations(states, ids, transitions, encoder),
        "actions": np.insert(transitions.actions, at, 0).astype(np.int64),
        "rewards": np.insert(transitions.rewards, at, 0.0).astype(np.float32),
        "terminals": terminals.astype(np.float32),
        "timeouts": timeouts.astype(np.float32),
    }


def to_d3rlpy(transitions: Transitions, encoder: TextEncoder | None = None) -> Any:
    """A ``d3rlpy.dataset.MDPDataset`` with discrete actions (needs ``pip install d3rlpy``)."""
    try:
        from d3rlpy.dataset import MDPDataset
    except ImportError as error:
        raise ImportError("to_d3rlpy needs d3rlpy: pip install d3rlpy (it pins gymnasium 1.0.0; "
                          "use its own environment if ours has a newer gymnasium)") from error
    arrays = to_d3rlpy_arrays(transitions, encoder)
    return MDPDataset(**arrays, action_size=40)
