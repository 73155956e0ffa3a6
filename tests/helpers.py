"""Shared helpers for the test suite: hand-made scenes, Minari roots and datasets, the d3rlpy venv."""

import os
import subprocess
import sys
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


def write_cartpole_dataset(dataset_id: str) -> None:
    """A 3-step CartPole dataset under the current Minari root: a dataset of other spaces."""
    import warnings

    import minari
    from minari.data_collector import EpisodeBuffer

    buffer = EpisodeBuffer(
        id=0, observations=np.zeros((4, 4), np.float32), actions=[0, 1, 0], rewards=[1.0] * 3,
        terminations=[False, False, True], truncations=[False] * 3, infos={},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id, buffer=[buffer], env="CartPole-v1", algorithm_name="test",
            author="test", code_permalink="test", description="not ours", data_format="hdf5",
        )


D3RLPY_VENV = Path(__file__).resolve().parents[1] / ".cache" / "d3rlpy-venv"
"""d3rlpy pins gymnasium 1.0.0, so it gets a virtual environment of its own (tests, benchmarks)."""
D3RLPY_PYTHON = D3RLPY_VENV / "bin" / "python"


def d3rlpy_python() -> Path:
    """A virtual environment with d3rlpy 2.8.1 and the CPU torch wheel, built once and cached."""
    if not D3RLPY_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(D3RLPY_VENV)], check=True)
        pip = [str(D3RLPY_PYTHON), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "d3rlpy==2.8.1"], check=True)
    return D3RLPY_PYTHON
