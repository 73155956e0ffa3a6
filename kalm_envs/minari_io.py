"""Reading and writing CLEVR-Robot episodes as Minari datasets (HDF5 backend).

Writes are atomic: a dataset is first created in a hidden staging folder inside the Minari root
(``<root>/.kalm-staging/``, which Minari's listings skip; see :mod:`kalm_envs.dataset_paths`) and
renamed into place only when complete. Reads go straight to the HDF5 file with h5py's low-level API, one read per field of an
episode.

Beside Minari's ``main_data.hdf5`` our writer leaves ``kalm_index.npz``: the same episodes packed
into flat arrays (:func:`kalm_envs.rollout.pack_episodes`) with the content checksum. Minari
ignores it; :func:`read_packed` reads it instead of the HDF5 file, which makes loading a large
dataset tens of times faster than opening each episode's HDF5 datasets, and recomputes its
checksum: content that does not match the checksum stored in the metadata (a changed or damaged
index or HDF5 file) is a :class:`DatasetError` naming the file, never read as if sound.
What the arrays hold (ranges, goals, finite values) is checked one level up, by
:func:`kalm_envs.dataset_checks.read_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer

from kalm_envs.dataset_paths import dataset_build, datasets_root, resolve_dataset
from kalm_envs.dataset_specs import package_version
from kalm_envs.rollout import PACKED_FIELDS, Episode, load_packed, pack_episodes, save_episodes
from kalm_envs.workers import ChildError, run_in_child

HDF5_FILE = Path("data") / "main_data.hdf5"
INDEX_FILE = Path("data") / "kalm_index.npz"
METADATA_KEY = "kalm"  # key of our provenance block in the Minari metadata
INDEX_CHECKSUM_KEY = "index_checksum"  # key of index_checksum() in that block (datasets since issue 14)


class DatasetError(ValueError):
    """A dataset is missing, truncated or malformed; the message names the file and the problem."""


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


#: The dtype each packed field is hashed in.
_CANONICAL = {"lengths": np.int64, "seeds": np.int64, "goals": np.int64, "observations": np.float32,
              "successes": np.bool_, "actions": np.int64, "rewards": np.float64, "terminations": np.bool_,
              "truncations": np.bool_}


def content_checksum(episodes: Sequence[Episode]) -> str:
    """SHA-256 over every field of every episode, in order; stored in and checked against metadata."""
    return packed_checksum(pack_episodes(episodes)) if episodes else hashlib.sha256().hexdigest()


def packed_checksum(packed: dict[str, np.ndarray], source: str | Path = "packed episodes") -> str:
    """:func:`content_checksum` of packed episodes (:func:`kalm_envs.rollout.pack_episodes`): per
    episode its seed, instruction, goal, states, actions, rewards, terminations, truncations and
    successes, each in its canonical dtype. Arrays are converted once and each episode's rows are
    hashed as views (about 15 ms per 1,000 episodes). ``DatasetError`` naming ``source`` when the
    arrays do not fit together (ragged, or values of another type)."""
    try:
        lengths = np.asarray(packed["lengths"], dtype=np.int64)
        steps = np.concatenate([[0], np.cumsum(lengths)])
        states = steps + np.arange(len(lengths) + 1)
        arrays = {key: np.ascontiguousarray(packed[key], dtype=dtype) for key, dtype in _CANONICAL.items()}
        if steps[-1] != len(arrays["actions"]) or states[-1] != len(arrays["observations"]):
            raise ValueError(f"{len(arrays['actions'])} steps where the lengths make {steps[-1]}")
        digest = hashlib.sha256()
        for i, instruction in enumerate(packed["instructions"].tolist()):
            digest.update(arrays["seeds"][i : i + 1])
            digest.update(str(instruction).encode())
            digest.update(arrays["goals"][i])
            digest.update(arrays["observations"][states[i] : states[i + 1]])
            for key in ("actions", "rewards", "terminations", "truncations"):
                digest.update(arrays[key][steps[i] : steps[i + 1]])
            digest.update(arrays["successes"][states[i] : states[i + 1]])
        return digest.hexdigest()
    except (ValueError, TypeError, IndexError, KeyError) as error:
        raise DatasetError(f"{source}: malformed packed episodes ({error})") from error


def index_checksum(packed: dict[str, np.ndarray], source: str | Path = "packed episodes") -> str:
    """SHA-256 over the packed arrays, each whole (shape, then bytes in its canonical dtype), in
    :data:`~kalm_envs.rollout.PACKED_FIELDS` order: what :func:`read_packed` compares an index
    with (a few ms for a large dataset, where :func:`packed_checksum` goes episode by episode).
    ``DatasetError`` naming ``source`` when a field is missing or not of its kind."""
    digest = hashlib.sha256()
    try:
        for key in PACKED_FIELDS:
            array = np.asarray(packed[key])
            digest.update(f"{key}{array.shape}".encode())
            if key == "instructions":
                digest.update("\x00".join(array.astype(str).tolist()).encode())
            else:
                digest.update(np.ascontiguousarray(array, dtype=_CANONICAL[key]))
    except (KeyError, ValueError, TypeError) as error:
        raise DatasetError(f"{source}: malformed packed episodes ({error})") from error
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

    Holds the id's build lock (:func:`~kalm_envs.dataset_paths.dataset_build`; a builder that
    holds it already keeps it). A child process (:func:`~kalm_envs.workers.run_in_child`: HDF5
    segfaults when a write fails) assembles the Minari dataset in ``staging_dir(dataset_id)``
    (:func:`_write_staged`); it is then moved into place in one rename, together with the
    namespace folders it needs (:func:`_move_into_place`), and the staging folder (with whatever a
    resumable build kept there) is removed. ``provenance`` (JSON-able) is stored under the ``kalm``
    metadata key together with :func:`content_checksum` (``checksum``) and :func:`index_checksum`
    (``index_checksum``). ``ref_scores`` are the (random, expert) mean returns.

    Raises:
        ValueError: a bad id (:func:`~kalm_envs.dataset_paths.check_dataset_id`).
        FileExistsError: the dataset exists.
        kalm_envs.dataset_paths.DatasetBusyError: another process is building it.
        OSError: a write failed (disk full, file size limit): the message names the dataset, the
            OS error and the file. Nothing is visible then under the id or its namespaces; the
            hidden staging folder stays, with the shards that a resumed build reuses.
    """
    minari_args = {
        "env": env_id,
        "eval_env": env_id,
        "algorithm_name": algorithm_name,
        "author": "KALM-Gym developers",
        "code_permalink": f"kalm-gym {package_version()} ({provenance.get('build_command', 'python API')})",
        "ref_min_score": float(ref_scores[0]),
        "ref_max_score": float(ref_scores[1]),
        "description": description,
        "requirements": ["kalm-gym"],
        "data_format": "hdf5",
    }
    with dataset_build(dataset_id) as staging:
        work = staging / "minari"
        shutil.rmtree(work, ignore_errors=True)
        try:
            run_in_child(lambda: _write_staged(work, dataset_id, episodes, provenance, minari_args))
        except ChildError as failure:
            shutil.rmtree(work, ignore_errors=True)  # half written: of no use to a resumed build
            raise _write_error(dataset_id, work, failure) from failure
        final = _move_into_place(work, dataset_id)
        shutil.rmtree(staging)
    return final


def _write_staged(
    work: Path, dataset_id: str, episodes: Sequence[Episode], provenance: dict[str, Any], minari_args: dict[str, Any]
) -> None:
    """Write the Minari dataset (HDF5 file, metadata, our index) under the Minari root ``work``;
    ``minari_args`` go to ``minari.create_dataset_from_buffers``."""
    with _minari_root(work), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*author_email")  # we publish no e-mail address
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id, buffer=[episode_buffer(e, i) for i, e in enumerate(episodes)], **minari_args
        )
        packed = pack_episodes(episodes)
        checksum = packed_checksum(packed)
        dataset.storage.update_metadata({METADATA_KEY: {**provenance, "checksum": checksum,
                                                        INDEX_CHECKSUM_KEY: index_checksum(packed)}})
        save_episodes(work / dataset_id / INDEX_FILE, episodes, checksum=np.array(checksum))


def _move_into_place(work: Path, dataset_id: str) -> Path:
    """Rename the staged ``dataset_id`` from the staged Minari root ``work`` into the Minari root,
    in one rename: the first of its namespace folders missing there (the staged one holds
    Minari's namespace metadata and, below it, the dataset), else the dataset folder. Its folder."""
    root, parts = datasets_root(), Path(dataset_id).parts
    for depth in range(1, len(parts) + 1):
        target = root.joinpath(*parts[:depth])
        if not target.exists():
            os.rename(work.joinpath(*parts[:depth]), target)
            return root / dataset_id
    raise FileExistsError(f"dataset {dataset_id} already exists at {root / dataset_id}")


#: An OS error in the text of an exception: h5py's ``errno = 28`` or Python's ``[Errno 28]``,
#: and the file: h5py's ``filename = '...'`` or Python's ``[Errno 28] No space left on device: '...'``.
_ERRNO = re.compile(r"errno = (\d+)|\[Errno (\d+)\]")
_FILENAME = re.compile(r"filename = '([^']*)'|\[Errno \d+\] [^\n]*?: '([^']*)'")


def _write_error(dataset_id: str, work: Path, failure: ChildError) -> BaseException:
    """What to raise for a failed :func:`_write_staged`: an ``OSError`` naming the dataset, the OS
    error and its file (``work`` when unknown) when the child reported one; else the exception
    the child raised; else an ``OSError`` saying how the child ended."""
    for text in failure.reports:
        number = _ERRNO.search(text)
        if number is not None:
            errno = int(number.group(1) or number.group(2))
            name = _FILENAME.search(text)
            filename = (name.group(1) or name.group(2)) if name is not None else str(work)
            return OSError(errno, f"writing dataset {dataset_id} failed: {os.strerror(errno)}", filename)
    if failure.error is not None:
        return failure.error
    return OSError(f"writing dataset {dataset_id} in {work} failed: {failure}")


def hdf5_path(dataset_id_or_dir: str | Path) -> Path:
    """HDF5 file of a dataset given by its folder or by id (under the Minari root,
    :func:`~kalm_envs.dataset_paths.resolve_dataset`)."""
    folder = resolve_dataset(dataset_id_or_dir)
    path = folder / HDF5_FILE
    if not path.is_file():
        raise DatasetError(f"no Minari HDF5 dataset at {folder} (expected {path})")
    return path


def read_metadata(dataset_id_or_dir: str | Path) -> dict[str, Any]:
    """The dataset's Minari metadata, including our ``kalm`` block; ``DatasetError`` naming the file
    when it is missing, not JSON, or not a JSON object (our ``kalm`` block, when there, must be one
    too)."""
    folder = hdf5_path(dataset_id_or_dir).parent
    path = folder / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable dataset metadata ({error})") from error
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY, {}), dict):
        raise DatasetError(f"{path}: the dataset metadata must be a JSON object with an object under "
                           f"{METADATA_KEY!r}, got {str(metadata)[:80]}")
    return metadata


def stored_checksum(metadata: dict[str, Any]) -> str | None:
    """The content checksum our writer stored in the metadata (None for a dataset written elsewhere)."""
    checksum = metadata.get(METADATA_KEY, {}).get("checksum")
    return None if checksum is None else str(checksum)


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


def episode_count(dataset_id_or_dir: str | Path) -> int:
    """How many episode groups the HDF5 file holds (opens it, reads no data); ``DatasetError``
    naming the file when it does not open (truncated, not HDF5)."""
    path = hdf5_path(dataset_id_or_dir)
    try:
        with h5py.File(path, "r") as file:
            return len(file)  # Minari's root holds one group per episode and nothing else
    except OSError as error:
        raise DatasetError(f"{path} is truncated or corrupted: {error}") from error


def read_index(dataset_id_or_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of the dataset's ``kalm_index.npz`` (packed episodes, without its ``checksum``
    entry), or None when it has none; ``DatasetError`` naming the file when it is unreadable or
    lacks a packed field."""
    path = hdf5_path(dataset_id_or_dir).parent.parent / INDEX_FILE
    if not path.is_file():
        return None
    try:
        packed = load_packed(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path} is truncated or corrupted: {error}") from error
    missing = sorted(set(PACKED_FIELDS) - set(packed))
    if missing:
        raise DatasetError(f"{path} lacks the packed field(s) {missing}; delete it to read {HDF5_FILE.name}")
    packed.pop("checksum", None)
    return packed


def read_packed(
    dataset_id_or_dir: str | Path, check: Callable[[dict[str, np.ndarray]], None] | None = None
) -> dict[str, np.ndarray]:
    """A dataset's episodes as packed flat arrays (see :func:`kalm_envs.rollout.pack_episodes`),
    from ``kalm_index.npz`` when there is one (the HDF5 file is then only opened, to count its
    episodes), else from the HDF5 file. The content is compared with the metadata's checksum: an
    index with :func:`index_checksum` (fast; datasets written since issue 14), else with
    :func:`packed_checksum`. ``check(packed)``, when given, runs before the checksum is
    compared (:func:`kalm_envs.dataset_checks.read_dataset` passes its array checks, so that a
    damaged value is named, not only the checksum's mismatch).

    Raises:
        DatasetError: naming the file, when a file is truncated or corrupted, the HDF5 file holds
            fewer or more episodes than the index, or the content's checksum differs from the one
            stored in the metadata (a dataset written elsewhere has none, and is not compared).
    """
    hdf5 = hdf5_path(dataset_id_or_dir)
    folder = hdf5.parent.parent
    metadata = read_metadata(folder)
    expected = stored_checksum(metadata)
    packed = read_index(folder)
    if packed is None:
        source, packed = hdf5, pack_episodes(read_episodes(folder))
    else:
        source = folder / INDEX_FILE
        in_hdf5 = episode_count(folder)
        if in_hdf5 != len(packed["lengths"]):
            raise DatasetError(f"{hdf5} holds {in_hdf5} episodes but {source.name} "
                               f"{len(packed['lengths'])}: an episode is missing; rebuild the dataset")
    if check is not None:
        check(packed)
    if source.name == INDEX_FILE.name and INDEX_CHECKSUM_KEY in metadata.get(METADATA_KEY, {}):
        actual, expected = index_checksum(packed, source), str(metadata[METADATA_KEY][INDEX_CHECKSUM_KEY])
    elif expected is not None:
        actual = packed_checksum(packed, source)
    else:
        return packed  # written elsewhere: no checksum to compare with
    if actual != expected:
        raise DatasetError(f"{source}: the content's checksum {actual[:12]}... differs from the one in the "
                           f"dataset's metadata ({expected[:12]}...): the file was changed or damaged after "
                           f"it was written; rebuild the dataset")
    return packed



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
