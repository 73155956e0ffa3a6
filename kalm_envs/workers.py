"""Worker processes that never outlive the process that started them.

Every pool of worker processes in the package comes from :func:`process_pool` (the gymnasium
vector env's workers call :func:`die_with_parent` themselves), and every one-off child from
:func:`run_in_child`. Each worker first calls :func:`die_with_parent`, so that a parent killed
with ``kill -9`` leaves no orphan computing on:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker as soon as its
  parent dies, even inside a long C call. It fires when the *thread* that forked the worker
  ends: our pools' workers are forked by the thread that submits to the pool (``fork`` start
  method: all of them in the first ``submit``), and that thread holds the pool in a ``with``
  block until it is shut down, so the thread outlives the workers unless the process dies;
- everywhere, a watchdog thread that blocks on multiprocessing's parent sentinel and ends the
  worker with ``os._exit`` when the parent has gone (other platforms, and a parent that died
  before ``prctl`` was called).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_MAX_REPORTS = 3  # unraisable exceptions a child reports (h5py can raise hundreds)


def die_with_parent() -> None:
    """Make this process (a multiprocessing worker) end when its parent process dies; a no-op in a
    process that multiprocessing did not start."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    threading.Thread(target=_exit_after, args=(parent,), name="die-with-parent", daemon=True).start()


def _exit_after(parent: Any) -> None:
    """Wait until ``parent`` (multiprocessing's parent process handle) has ended, then end this
    process at once."""
    parent.join()
    os._exit(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` forked processes, each of which dies with this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=die_with_parent)


class ChildError(Exception):
    """A :func:`run_in_child` task failed.

    Attributes:
        exitcode: the child's exit status; negative: the number of the signal that killed it.
        error: the exception the task raised (unpickled in this process), or None.
        reports: text of the exceptions the child reported: those that Python could only print
            (e.g. in h5py's deallocators), then the task's own.
    """

    def __init__(self, exitcode: int, error: BaseException | None, reports: list[str]) -> None:
        how = f"was killed by signal {-exitcode}" if exitcode < 0 else f"exited with {exitcode}"
        super().__init__(f"the child process {how}" + (f": {reports[-1].strip()}" if reports else ""))
        self.exitcode, self.error, self.reports = exitcode, error, reports


def run_in_child(task: Callable[[], None]) -> None:
    """Run ``task()`` in a forked child process (it dies with this one) and wait for it; a library
    that crashes its process (HDF5 segfaults when a write fails: disk full, file size limit) then
    ends the child, not this process. The task's effects on files are all that it returns.

    Raises:
        ChildError: the task raised, an unraisable exception was reported in the child (its
            work is then not to be trusted: h5py drops write errors of its deallocators), or the
            child died.
    """
    reader, writer = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_child_main, args=(task, writer), daemon=True)
    child.start()
    writer.close()
    messages = []
    while True:
        try:
            messages.append(reader.recv())
        except EOFError:
            break
    reader.close()
    child.join()
    if child.exitcode != 0:
        errors = [message for kind, message in messages if kind == "error"]
        raise ChildError(child.exitcode, errors[0] if errors else None,
                         [message for kind, message in messages if kind == "report"])


def _child_main(task: Callable[[], None], channel: Connection) -> None:
    """Body of a :func:`run_in_child` child: run ``task``; send ``("report", text)`` for the
    first exceptions that Python could only print (unraisable ones, and those that C code prints
    through ``sys.excepthook``, as h5py's deallocators do) and for the task's own, and
    ``("error", exception)`` for the latter; exit 1 after any of them."""
    die_with_parent()
    reported = []

    def report(exc_type: type[BaseException], exc_value: BaseException | None) -> None:
        if len(reported) < _MAX_REPORTS:
            channel.send(("report", "".join(traceback.format_exception_only(exc_type, exc_value))))
        reported.append(exc_type)

    sys.unraisablehook = lambda unraisable: report(unraisable.exc_type, unraisable.exc_value)
    sys.excepthook = lambda exc_type, exc_value, _: report(exc_type, exc_value)
    try:
        task()
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent
        channel.send(("report", traceback.format_exc()))
        try:
            channel.send(("error", error))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            channel.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))
        raise SystemExit(1) from None
    if reported:
        raise SystemExit(1)
