"""Grounded models shipped inside the package, loaded by name (``kalm imagine --model
kalm-smollm2-v0``).

A published model is a folder under ``kalm_gen/models/<name>/`` written by
:meth:`kalm_gen.grounded_lm.GroundedLM.save` (config, heads, LoRA adapter, tokenizer; its base
model is the embedded SmolLM2, found on local disk) plus ``MODEL_CARD.md``: the command that
built it, the checksum of its training data, its steps, losses and quality table. It is built by
the package's own commands (``kalm ground``, then :func:`publish_model`), and rebuilt the same way.

:func:`resolve_model` turns what a user passes as ``--model`` into a folder: a published name, or
a folder holding a saved grounded LM.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "MODEL_CARD", "publish_model", "published_held_out", "published_models", "resolve_model"]

DEFAULT_MODEL = "kalm-smollm2-v0"
MODEL_CARD = "MODEL_CARD.md"
#: What a published model was trained on: ``{"datasets": [...], "held_out_seeds": [start, stop]}``
#: (the reset seeds of real-v0 episodes it never saw, which measure its explanations).
TRAINING_FILE = "training.json"
_CONFIG_FILE = "grounded_lm.json"  # kalm_gen.grounded_lm.CONFIG_FILE, without importing torch


def _models_dir() -> Path:
    return Path(str(resources.files("kalm_gen").joinpath("models")))


def published_models() -> dict[str, Path]:
    """Every model shipped in the package: name -> folder."""
    folder = _models_dir()
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / _CONFIG_FILE).is_file()}


def resolve_model(value: str | Path) -> Path:
    """The folder of a published model name, or ``value`` itself when it is a folder holding a
    saved grounded LM; ``FileNotFoundError`` naming the value and the published names otherwise."""
    published = published_models()
    if str(value) in published:
        return published[str(value)]
    folder = Path(value)
    if (folder / _CONFIG_FILE).is_file():
        return folder
    raise FileNotFoundError(
        f"{str(value)!r} is neither a published grounded model ({sorted(published) or 'none shipped'}) "
        f"nor a folder holding a saved one ({_CONFIG_FILE})"
    )


def published_held_out(name: str) -> list[int]:
    """``[start, stop)``: the reset seeds of the real-v0 episodes published model ``name`` never
    trained on."""
    return list(json.loads((resolve_model(name) / TRAINING_FILE).read_text())["held_out_seeds"])


def publish_model(
    model_dir: Path, name: str, card: str, training: dict, destination: Path | None = None
) -> Path:
    """Copy the saved model ``model_dir`` with its model ``card`` (markdown) and ``training``
    (see :data:`TRAINING_FILE`) to ``destination/name`` (default: the package's
    ``kalm_gen/models``), replacing an older copy only once the new one is complete."""
    start, stop = training["held_out_seeds"]
    if not 0 <= start < stop:
        raise ValueError(f"held_out_seeds {training['held_out_seeds']} must be a range [start, stop)")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"model name {name!r} must be a plain folder name")
    source = resolve_model(model_dir)
    target_root = Path(destination) if destination is not None else _models_dir()
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target_root))
    try:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                copy = staging / path.relative_to(source)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
        (staging / MODEL_CARD).write_text(card)
        (staging / TRAINING_FILE).write_text(json.dumps(training, indent=2, sort_keys=True) + "\n")
        staging.chmod(0o755)
        final = target_root / name
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
