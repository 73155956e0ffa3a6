"""Wrappers that flatten the ``{"observation", "instruction"}`` observation into one vector.

>>> from kalm_envs.wrappers import make_flat_env
>>> env = make_flat_env("easy")                       # ordered encoder, 10 + 512 values
>>> obs, info = env.reset(seed=0)
>>> obs.shape, obs.dtype
((522,), dtype('float32'))

This module never imports torch or transformers (the MiniLM encoder loads them itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kalm_envs.text_encoders import (
    DEFAULT_ENCODER,
    ENCODER_NAMES,
    BaseTextEncoder,
    TextEncoder,
    encoder_from_config,
    make_encoder,
)

__all__ = ["EncodeInstruction", "EncoderSpec", "make_flat_env", "resolve_encoder", "resolve_env_id"]


EncoderSpec = TextEncoder | str | Mapping[str, Any] | None


def resolve_encoder(encoder: EncoderSpec, **kwargs: Any) -> TextEncoder:
    """An encoder from an instance, a name (``"ordered"``, ``"hashed"``, ``"minilm"``), a
    ``config()`` or None.

    None gives the default encoder (:data:`~kalm_envs.text_encoders.DEFAULT_ENCODER`, the
    word-order-aware :class:`~kalm_envs.text_encoders.OrderedNgramEncoder`) with its defaults. ``kwargs``
    go to the constructor when ``encoder`` is a name or a config, and are refused otherwise.
    """
    if encoder is None:
        encoder = DEFAULT_ENCODER
    if isinstance(encoder, str):
        return make_encoder(encoder, **kwargs)
    if isinstance(encoder, Mapping):
        return encoder_from_config(encoder, **kwargs)
    if kwargs:
        raise ValueError(f"encoder arguments {sorted(kwargs)} given with an encoder instance")
    if not isinstance(encoder, BaseTextEncoder | TextEncoder):
        raise TypeError(f"encoder {encoder!r} has no name, dim, encode() and config()")
    return encoder


class EncodeInstruction(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Replace the Dict observation by ``concat(state, encoder.encode([instruction])[0])``.

    Input observation space: ``Dict(observation=Box((S,), float32), instruction=Text)``, S = 10
    for :class:`~kalm_envs.env.ClevrRobotEnv`.
    Output observation space: ``Box((S + D,), float32)``, D = ``encoder.dim``; bounds are the
    inner Box's on the first S entries and [-1, 1] on the D embedding entries (unit-norm rows).

    The instruction of an episode is encoded once (encoders cache per text). The text itself
    stays readable as ``env.unwrapped.instruction``; ``info`` is passed through unchanged.
    The wrapper is recorded in ``env.spec`` with the encoder's ``config()`` (for the built-in
    encoders), so ``env.spec.make()`` rebuilds it and the spec stays JSON-serialisable.

    Args:
        env: an environment with the Dict observation above.
        encoder: a :class:`~kalm_envs.text_encoders.TextEncoder`, a name or a ``config()`` dict;
            default :class:`~kalm_envs.text_encoders.OrderedNgramEncoder` ``()`` (512-d).
        state_key, instruction_key: the keys of the Dict observation.
    """

    def __init__(
        self,
        env: gym.Env,
        encoder: EncoderSpec = None,
        state_key: str = "observation",
        instruction_key: str = "instruction",
    ) -> None:
        text_encoder = resolve_encoder(encoder)
        builtin = isinstance(text_encoder, BaseTextEncoder) and text_encoder.name in ENCODER_NAMES
        recorded = text_encoder.config() if builtin else text_encoder
        gym.utils.RecordConstructorArgs.__init__(
            self, encoder=recorded, state_key=state_key, instruction_key=instruction_key
        )
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        keys = (state_key, instruction_key)
        if not isinstance(space, spaces.Dict) or any(k not in space.spaces for k in keys):
            raise ValueError(
                f"EncodeInstruction needs a Dict observation space with keys {state_key!r} and "
                f"{instruction_key!r}, got {space}"
            )
        state_space = space[state_key]
        if not isinstance(state_space, spaces.Box) or len(state_space.shape) != 1:
            raise ValueError(f"observation[{state_key!r}] must be a 1-d Box, got {state_space}")
        if not isinstance(space[instruction_key], spaces.Text):
            raise ValueError(
                f"observation[{instruction_key!r}] must be a Text space, "
                f"got {space[instruction_key]}"
            )
        self.encoder = text_encoder
        self.state_key = state_key
        self.instruction_key = instruction_key
        self.state_dim = int(state_space.shape[0])
        self.embedding_dim = int(self.encoder.dim)
        ones = np.ones(self.embedding_dim, dtype=np.float32)
        low = np.concatenate([state_space.low.astype(np.float32), -ones])
        high = np.concatenate([state_space.high.astype(np.float32), ones])
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation: Mapping[str, Any]) -> np.ndarray:
        """``(S + D,)`` float32: the state followed by the instruction's embedding."""
        state = np.asarray(observation[self.state_key], dtype=np.float32).reshape(self.state_dim)
        embedding = self.encoder.encode([observation[self.instruction_key]])[0]
        return np.concatenate([state, embedding.astype(np.float32, copy=False)])

    def split(self, observation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split flat observations ``(..., S + D)`` into ``(..., S)`` states and ``(..., D)``
        embeddings."""
        observation = np.asarray(observation)
        return observation[..., : self.state_dim], observation[..., self.state_dim :]


def resolve_env_id(env_id_or_level: str) -> str:
    """The registered id of a level (``"train"``, ``"rephrase"``, ``"easy"``, ``"hard"``); other
    strings are returned as they are."""
    from kalm_envs import ENV_IDS

    return ENV_IDS.get(env_id_or_level, env_id_or_level)


def make_flat_env(
    env_id_or_level: str,
    encoder: EncoderSpec = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    **env_kwargs: Any,
) -> EncodeInstruction:
    """``gym.make`` a KALM environment and wrap it in :class:`EncodeInstruction`.

    Args:
        env_id_or_level: an id such as ``"KALM/CLEVRRobot-v0"`` or a level name (``"train"``,
            ``"rephrase"``, ``"easy"``, ``"hard"``).
        encoder: an encoder instance, a name or a ``config()`` dict (see :func:`resolve_encoder`);
            None: the default encoder.
        encoder_kwargs: constructor arguments when ``encoder`` is a name or a config.
        **env_kwargs: passed to ``gym.make`` (``reward_mode``, ``render_mode``,
            ``max_episode_steps`` ...).

    Returns:
        The wrapped env; its observations are ``(10 + encoder.dim,)`` float32 vectors.
    """
    import kalm_envs  # noqa: F401  (registers the ids)

    text_encoder = resolve_encoder(encoder, **dict(encoder_kwargs or {}))
    env = gym.make(resolve_env_id(env_id_or_level), **env_kwargs)
    return EncodeInstruction(env, text_encoder)
