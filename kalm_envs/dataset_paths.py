"""Where datasets live: the Minari root, the dataset ids and the folders they name, and the
hidden staging area of builds with the per-id build locks.

An id names a folder under the Minari root, so every id that a dataset is written under, or whose
folder is computed, is checked first (:func:`check_dataset_id`): Minari's grammar
``namespace/.../name-vN`` and nothing that could reach outside the root.

A build of an id works in ``<root>/.kalm-staging/<id, / as __>-<sha12>/`` (:func:`staging_dir`;
Minari's listings skip the hidden folder) and holds the id's build lock for its whole run: an
``flock`` on the same name plus ``.lock``, which holds the pid of the build. A second build of
the same id fails at once (:class:`DatasetBusyError`, naming the id and that pid) rather than
waiting: a build can take hours, and a waiting one would only find the dataset built. The kernel
drops the lock when its holder dies, even by ``kill -9``, so a killed build never blocks the next
one (its lock file stays; the next build takes it over).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage import get_dataset_path

from kalm_envs.validation import check_path, check_str

STAGING_DIR = ".kalm-staging"
NAME_MAX = 255  # longest file or folder name (bytes) of the usual file systems
_ID_FORM = ("dataset ids are relative paths namespace/.../name-vN of letters, digits, '_' and '-' "
            "(e.g. kalm/clevr-robot/real-v0)")


class DatasetBusyError(OSError):
    """Another process holds the build lock of a dataset id; the message names the id and its pid."""


def datasets_root() -> Path:
    """Minari's local datasets folder (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    return Path(get_dataset_path())


def check_dataset_name(dataset: Any) -> str:
    """``dataset`` (a dataset id or folder) as a str; ``InvalidTypeError`` unless it is a str or
    ``Path``, ``ValueError`` naming it when it is empty or a part of it is longer than a file name
    may be."""
    name = check_path(dataset, "dataset")
    if any(len(part.encode()) > NAME_MAX for part in Path(name).parts):
        raise ValueError(f"dataset {name[:80]!r}... is not a dataset id or folder: a part of it is longer "
                         f"than {NAME_MAX} bytes")
    return name


def check_dataset_id(dataset_id: Any) -> str:
    """``dataset_id`` when it is an id that names a folder inside the Minari root: Minari's
    ``(namespace/)name-vN`` with no empty, ``.`` or ``..`` part, no backslash and not absolute.
    ``InvalidTypeError`` unless it is a str; ``ValueError`` naming it and what is wrong (Minari
    refuses most such ids too, but only when a build is done, after making folders from them)."""
    problem = _id_problem(check_str(dataset_id, "dataset id"))
    if problem is not None:
        raise ValueError(f"dataset id {dataset_id[:120]!r} {problem}; {_ID_FORM}")
    check_dataset_name(dataset_id)
    return dataset_id


def _id_problem(dataset_id: str) -> str | None:
    """What makes a non-empty str not a dataset id (None when it is one)."""
    parts = dataset_id.split("/")
    if dataset_id.startswith("/"):
        return "is an absolute path"
    if "\\" in dataset_id:
        return "holds a backslash"
    if "" in parts:
        return "has an empty part (a '//' or a trailing '/')"
    if "." in parts or ".." in parts:
        return "has a '.' or '..' part"
    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError):  # TypeError: Minari's parser without a version
        return "does not follow Minari's grammar"
    return None


def dataset_dir(dataset_id: str) -> Path:
    """Folder of ``dataset_id`` (:func:`check_dataset_id`) under :func:`datasets_root`."""
    return datasets_root() / check_dataset_id(dataset_id)


def resolve_dataset(dataset: str | Path) -> Path:
    """Where a reader looks for ``dataset`` (a folder, or an id under the Minari root): the folder
    itself when there is one, else the id's folder when it is a valid id, else ``dataset`` as a
    path (which does not exist, so the reader reports it missing). An id never reaches outside the
    root. ``ValueError`` as :func:`check_dataset_name`."""
    folder = Path(check_dataset_name(dataset))
    if folder.is_dir() or _id_problem(str(dataset)) is not None:
        return folder
    return datasets_root() / str(dataset)


def staging_dir(dataset_id: str) -> Path:
    """Hidden work folder of a build of ``dataset_id``, inside the Minari root: the id with ``/``
    as ``__`` (its first 200 characters, for people) and 12 hex digits of its SHA-256, so that
    two ids never share one (``a__b/c-v0`` and ``a/b__c-v0`` would) and the name fits any file
    system."""
    check_dataset_id(dataset_id)
    digest = hashlib.sha256(dataset_id.encode()).hexdigest()[:12]
    return datasets_root() / STAGING_DIR / f"{dataset_id.replace('/', '__')[:200]}-{digest}"


def lock_file(dataset_id: str) -> Path:
    """The build lock file of ``dataset_id``, beside its staging folder."""
    folder = staging_dir(dataset_id)
    return folder.with_name(folder.name + ".lock")


#: The build locks this process holds: lock file -> its open descriptor.
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def build_lock(dataset_id: str) -> Iterator[None]:
    """Hold the build lock of ``dataset_id`` for the block (re-entrant within a process; the
    module docstring says how it works). The lock file is removed on release, and the staging
    area with it when nothing else is left there.

    Raises:
        DatasetBusyError: another process holds the lock; the message names the id and its pid.
    """
    path = lock_file(dataset_id)
    if path in _HELD:
        yield
        return
    _HELD[path] = _acquire(path, dataset_id)
    try:
        yield
    finally:
        _release(path, _HELD.pop(path))


@contextlib.contextmanager
def dataset_build(dataset_id: str) -> Iterator[Path]:
    """Hold the build lock of ``dataset_id`` (:func:`build_lock`) and yield its staging folder
    (created; removed at the end if left empty). ``FileExistsError`` naming the dataset when it
    already exists, checked once the lock is held, so that of two builds the later one never
    redoes or overwrites the earlier one."""
    with build_lock(dataset_id):
        final = dataset_dir(dataset_id)
        if final.exists():
            raise FileExistsError(f"dataset {dataset_id} already exists at {final}")
        work = staging_dir(dataset_id)
        work.mkdir(parents=True, exist_ok=True)
        try:
            yield work
        finally:
            with contextlib.suppress(OSError):  # not empty (a resumable build's shards), or removed
                work.rmdir()


def _acquire(path: Path, dataset_id: str) -> int:
    """Open and ``flock`` the lock file ``path``, write this pid into it; its descriptor."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # a finishing build removed the empty staging area just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "(still starting)"
            os.close(fd)
            raise DatasetBusyError(
                f"dataset {dataset_id} is being built by process {holder}, which holds its build lock "
                f"{path}; wait for that build to finish or stop it (its lock goes with it)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _is_same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder removed the file while we opened it: lock the one there now


def _is_same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _release(path: Path, fd: int) -> None:
    """Remove the lock file, then unlock it, then remove the staging area if it is empty."""
    path.unlink(missing_ok=True)
    os.close(fd)
    with contextlib.suppress(OSError):  # another build's files are there, or it is gone already
        path.parent.rmdir()

