"""Shared helpers for the test suite: hand-made scenes."""

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
