"""Policies trained elsewhere on flat observations, as policies for :mod:`kalm_rl.evaluation`.

A model trained on :func:`kalm_envs.wrappers.make_flat_env` sees ``(10 + D,)`` float32 vectors:
the ball centres followed by the instruction's embedding (``D = encoder.dim``). The adapters
build the same vectors from a batch of observation dicts with the same encoder and call the model
once per batch:

>>> from stable_baselines3 import PPO                         # doctest: +SKIP
>>> from kalm_rl.evaluation import evaluate_policy            # doctest: +SKIP
>>> policy = from_sb3(PPO.load("ppo_easy.zip"))               # doctest: +SKIP
>>> evaluate_policy(policy, "easy")                           # doctest: +SKIP

Pass the encoder the model was trained with (an instance, a name or a ``config()`` dict); the
default is the env wrapper's default, the 512-d ``ordered`` encoder (hashed n-grams and ordered
word pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kalm_envs.text_encoders import TextEncoder
from kalm_envs.wrappers import EncoderSpec, resolve_encoder

__all__ = ["FlatPolicy", "flatten_observations", "from_d3rlpy", "from_sb3"]


def flatten_observations(
    observations: Sequence[Mapping[str, Any]], encoder: TextEncoder
) -> np.ndarray:
    """``(B, 10 + D)`` float32: each state followed by its instruction's embedding, as
    :class:`kalm_envs.wrappers.EncodeInstruction` builds one observation."""
    states = np.stack([np.asarray(o["observation"], dtype=np.float32) for o in observations])
    embeddings = encoder.encode([o["instruction"] for o in observations])
    return np.concatenate([states, embeddings.astype(np.float32, copy=False)], axis=1)


class FlatPolicy:
    """A policy over observation dicts from ``predict: (B, 10 + D) float32 -> (B,) actions``.

    Args:
        predict: the model's batched action function.
        encoder: instruction encoder spec (see :func:`kalm_envs.wrappers.resolve_encoder`).
        label: name of the method in reports.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], Any],
        encoder: EncoderSpec = None,
        label: str = "policy",
    ) -> None:
        self.predict = predict
        self.encoder = resolve_encoder(encoder)
        self.label = label

    def act_batch(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(B,)`` actions for ``B`` observation dicts (one model call)."""
        return np.asarray(self.predict(flatten_observations(observations, self.encoder))).reshape(
            len(observations)
        )

    def __call__(self, observation: Mapping[str, Any]) -> int:
        return int(self.act_batch([observation])[0])


def from_sb3(model: Any, encoder: EncoderSpec = None, label: str = "sb3") -> FlatPolicy:
    """Adapt a Stable-Baselines3 model: ``model.predict(batch, deterministic=True)``."""
    return FlatPolicy(lambda batch: model.predict(batch, deterministic=True)[0], encoder, label)


def from_d3rlpy(algo: Any, encoder: EncoderSpec = None, label: str = "d3rlpy") -> FlatPolicy:
    """Adapt a d3rlpy algorithm (or any object with ``predict((B, 10 + D) float32) -> (B,)``)."""
    return FlatPolicy(algo.predict, encoder, label)
