"""Reading the package's own torch files (policies, learner and grounding checkpoints) with one
clear error for a damaged one."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

_DAMAGED = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile,
            AttributeError, KeyError, IndexError)
"""What ``torch.load`` raises for a truncated, overwritten or foreign file."""


def read_torch_file(path: str | Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of ``path`` onto the CPU (tensors, numbers, strings and
    containers of them: loading never runs code); ``ValueError`` naming the file and ``what`` it
    should be (e.g. ``"kalm_rl policy file"``) when it cannot be read, ``FileNotFoundError`` when
    it is missing."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _DAMAGED as error:
        raise ValueError(f"{path} is not a readable {what} ({type(error).__name__}: {_summary(error)}); "
                         "it is damaged or was written by something else") from error


def _summary(error: BaseException) -> str:
    """The line of a ``torch.load`` error that says what is wrong with the file: after
    ``WeightsUnpickler error:`` when the weights-only unpickler refused it (the lines before are
    advice about trusting the file), else its first line."""
    text = str(error)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if marker else text).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]
