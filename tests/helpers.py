"""Shared helpers for the test suite: hand-made scenes, a Minari root for module fixtures."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from kalm_envs.physics import N_BALLS

#: Parking spots far from each other, used for balls a test does not care about.
PARKED = np.array([(-0.45, 0.55), (0.45, 0.55), (-0.45, -0.15), (0.45, -0.15), (0.0, 0.55)])


def scene(**balls: tuple[float, float]) -> np.ndarray:
    """A (10,) state: named balls (red=..., blue=...) where given, others at distinct parking spots."""
    from kalm_envs.physics import COLORS

    state = PARKED.copy()
    for name, xy in balls.items():
        state[COLORS.index(name)] = xy
    return state.reshape(2 * N_BALLS)


@contextmanager
def temporary_minari_root(path: Path) -> Iterator[Path]:
    """Point Minari at ``path`` for a module-scoped fixture (``monkeypatch`` is function-scoped)."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
