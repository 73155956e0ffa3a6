"""Which torch device a training run computes on."""

from __future__ import annotations

import torch

DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first GPU torch sees, else the CPU).

    Raises:
        ValueError: naming ``name`` when it is not one of those or its GPU is not there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} is not available here: torch sees {torch.cuda.device_count()} GPU(s)")
    return device
