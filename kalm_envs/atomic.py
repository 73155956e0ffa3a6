"""Writing files so that a reader never sees a half-written one."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

_TEMPORARY = re.compile(r"\..+\.tmp-(\d+)")
"""Name of :func:`atomic_path`'s temporary file: ``.NAME.tmp-PID``."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, rename it
    onto ``path`` in one step. On an error the temporary file is removed and ``path`` is untouched;
    an ``OSError`` that names no file (a failed write: disk full, file size limit) is raised again
    naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # matches _TEMPORARY
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if error.errno is None or error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` when its process was
    killed mid-write (those of processes still running are kept); return what was deleted."""
    stale = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
        match = _TEMPORARY.fullmatch(path.name)
        if match and path.is_file() and int(match[1]) != os.getpid() and not _alive(int(match[1])):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale
