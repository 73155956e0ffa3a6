"""Reading and writing CLEVR-Robot episodes as Minari datasets (HDF5 backend).

Writes are atomic: a dataset is first created in a hidden staging folder inside the Minari root
(``<root>/.kalm-staging/``, which Minari's listings skip) and renamed into place only when
complete. Reads go straight to the HDF5 file with h5py's low-level API, one read per field of an
episode.

Beside Minari's ``main_data.hdf5`` our writer leaves ``kalm_index.npz``: the same episodes packed
into flat arrays (:func:`kalm_envs.rollout.pack_episodes`) with the content checksum. Minari
ignores it; :func:`read_packed` uses it when its checksum matches the metadata's, which makes
loading a large dataset tens of times faster than opening each episode's HDF5 datasets.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.namespace import create_namespace, list_local_namespaces
from minari.storage import get_dataset_path

from kalm_envs.dataset_specs import package_version
from kalm_envs.rollout import Episode, load_packed, pack_episodes, save_episodes

STAGING_DIR = ".kalm-staging"
HDF5_FILE = Path("data") / "main_data.hdf5"
INDEX_FILE = Path("data") / "kalm_index.npz"
METADATA_KEY = "kalm"  # key of our provenance block in the Minari metadata


class DatasetError(ValueError):
    """A dataset is missing, truncated or malformed; the message names the file and the problem."""


def datasets_root() -> Path:
    """Minari's local datasets folder (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    return Path(get_dataset_path())


def dataset_dir(dataset_id: str) -> Path:
    """Folder of ``dataset_id`` under :func:`datasets_root`."""
    return datasets_root() / dataset_id


def staging_dir(dataset_id: str) -> Path:
    """Hidden work folder of a build of ``dataset_id``, inside the Minari root."""
    return datasets_root() / STAGING_DIR / dataset_id.replace("/", "__")


def episode_buffer(episode: Episode, index: int) -> EpisodeBuffer:
    """Minari buffer of one episode: observations and infos have ``T + 1`` entries."""
    steps = episode.length + 1
    return EpisodeBuffer(
        id=index,
        seed=episode.seed if episode.seed >= 0 else None,
        observations={
            "observation": episode.observations,
            "instruction": [episode.instruction] * steps,
        },
        actions=episode.actions,
        rewards=list(episode.rewards),
        terminations=list(episode.terminations),
        truncations=list(episode.truncations),
        infos={"goal": np.repeat(episode.goal[None], steps, axis=0), "is_success": episode.successes},
    )


def content_checksum(episodes: Iterable[Episode]) -> str:
    """SHA-256 over every field of every episode, in order; stored in and checked against metadata."""
    digest = hashlib.sha256()
    for episode in episodes:
        digest.update(np.int64(episode.seed).tobytes())
        digest.update(episode.instruction.encode())
        for array, dtype in (
            (episode.goal, np.int64),
            (episode.observations, np.float32),
            (episode.actions, np.int64),
            (episode.rewards, np.float64),
            (episode.terminations, np.bool_),
            (episode.truncations, np.bool_),
            (episode.successes, np.bool_),
        ):
            digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()


@contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari's writer at ``path`` for the duration of the block."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def write_dataset(
    dataset_id: str,
    episodes: Sequence[Episode],
    env_id: str,
    description: str,
    provenance: dict[str, Any],
    ref_scores: tuple[float, float],
    algorithm_name: str,
) -> Path:
    """Create ``dataset_id`` from ``episodes``, atomically; return its folder.

    The dataset is assembled in ``staging_dir(dataset_id)``, renamed into place, and the staging
    folder (with whatever a resumable build kept there) is removed. ``provenance`` (JSON-able) is stored under the ``kalm`` metadata key together with the episode
    count and :func:`content_checksum`. ``ref_scores`` are the (random, expert) mean returns.
    """
    final = dataset_dir(dataset_id)
    if final.exists():
        raise FileExistsError(f"dataset {dataset_id} already exists at {final}")
    root = datasets_root()
    work = staging_dir(dataset_id) / "minari"
    shutil.rmtree(work, ignore_errors=True)
    with _minari_root(work), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*author_email")  # we publish no e-mail address
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=[episode_buffer(e, i) for i, e in enumerate(episodes)],
            env=env_id,
            eval_env=env_id,
            algorithm_name=algorithm_name,
            author="KALM-Gym developers",
            code_permalink=f"kalm-gym {package_version()} ({provenance.get('build_command', 'python API')})",
            ref_min_score=float(ref_scores[0]),
            ref_max_score=float(ref_scores[1]),
            description=description,
            requirements=["kalm-gym"],
            data_format="hdf5",
        )
        checksum = content_checksum(episodes)
        dataset.storage.update_metadata({METADATA_KEY: {**provenance, "checksum": checksum}})
        save_episodes(work / dataset_id / INDEX_FILE, episodes, checksum=np.array(checksum))
    namespace = dataset_id.rsplit("/", 1)[0]
    with _minari_root(root):
        if namespace not in list_local_namespaces():
            create_namespace(namespace)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(work / dataset_id, final)
    shutil.rmtree(work.parent)
    if not any(work.parent.parent.iterdir()):
        work.parent.parent.rmdir()
    return final


def hdf5_path(dataset_id_or_dir: str | Path) -> Path:
    """HDF5 file of a dataset given by id (under the Minari root) or by its folder."""
    folder = Path(dataset_id_or_dir)
    if not folder.is_dir():
        folder = dataset_dir(str(dataset_id_or_dir))
    path = folder / HDF5_FILE
    if not path.is_file():
        raise DatasetError(f"no Minari HDF5 dataset at {folder} (expected {path})")
    return path


def read_metadata(dataset_id_or_dir: str | Path) -> dict[str, Any]:
    """The dataset's Minari metadata, including our ``kalm`` block."""
    from minari.dataset.minari_storage import MinariStorage

    return MinariStorage.read_raw_metadata(hdf5_path(dataset_id_or_dir).parent)


def read_episodes(dataset_id_or_dir: str | Path) -> list[Episode]:
    """Every episode of a dataset, in order, read with h5py's low-level API (one read per field).

    ``Episode.goal`` and ``Episode.instruction`` are taken from the first step; ``verify`` checks
    that the other steps repeat them.
    """
    path = hdf5_path(dataset_id_or_dir)
    try:
        with h5py.File(path, "r") as file:
            names = sorted((n for n in file if n.startswith("episode_")), key=lambda n: int(n[8:]))
            return [_read_episode(file.id, name, int(file[name].attrs.get("seed", -1))) for name in names]
    except (OSError, KeyError, ValueError) as error:
        raise DatasetError(f"{path} is truncated or corrupted: {error}") from error


def read_packed(dataset_id_or_dir: str | Path) -> dict[str, np.ndarray]:
    """A dataset's episodes as packed flat arrays (see :func:`kalm_envs.rollout.pack_episodes`).

    Uses ``kalm_index.npz`` when present and matching the metadata checksum, else the HDF5 file.
    """
    index = hdf5_path(dataset_id_or_dir).parent.parent / INDEX_FILE
    if index.is_file():
        expected = read_metadata(dataset_id_or_dir).get(METADATA_KEY, {}).get("checksum")
        packed = load_packed(index)
        if expected is not None and str(packed.pop("checksum", "")) == expected:
            return packed
    return pack_episodes(read_episodes(dataset_id_or_dir))


def _read_field(file_id: h5py.h5f.FileID, name: str, first_only: bool = False) -> np.ndarray:
    """Read dataset ``name`` (or its first row) straight into a new array, bypassing h5py's
    high-level layer, which costs several times more per call."""
    dataset = h5py.h5d.open(file_id, name.encode())
    shape = dataset.shape
    if not first_only:
        out = np.empty(shape, dtype=dataset.dtype)
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out
    file_space = dataset.get_space()
    file_space.select_hyperslab((0,) * len(shape), (1,) + shape[1:])
    out = np.empty((1,) + shape[1:], dtype=dataset.dtype)
    dataset.read(h5py.h5s.create_simple(out.shape), file_space, out)
    return out[0]


def _read_episode(file_id: h5py.h5f.FileID, name: str, seed: int) -> Episode:
    instruction = _read_field(file_id, f"{name}/observations/instruction", first_only=True)
    return Episode(
        seed=seed,
        instruction=instruction.decode() if isinstance(instruction, bytes) else str(instruction),
        goal=_read_field(file_id, f"{name}/infos/goal", first_only=True).astype(np.int64),
        observations=_read_field(file_id, f"{name}/observations/observation"),
        actions=_read_field(file_id, f"{name}/actions").astype(np.int64),
        rewards=_read_field(file_id, f"{name}/rewards").astype(np.float64),
        terminations=_read_field(file_id, f"{name}/terminations").astype(bool),
        truncations=_read_field(file_id, f"{name}/truncations").astype(bool),
        successes=_read_field(file_id, f"{name}/infos/is_success").astype(bool),
    )
