"""Count what every fuzz case ends in: ``python -m tests.fuzz_report [--timeout S] [PREFIX ...]``.

Prints, per case group (the part of a case's name before ``/``), how many cases ended in each
outcome of :func:`tests.fuzz_cases.outcome` (``clean``, ``accepted``, ``traceback``, ``silent``,
``refused``), then every case that did not end as it should, and one JSON line of the totals,
among them ``cli_traceback``: the command-line cases (groups starting ``cli``) that ended in a
traceback, ran past the timeout or exited with another status. A case that runs longer than
``--timeout`` seconds is stopped and counts as a traceback (a bad size that is not refused may
run for hours). Give name prefixes to run only some cases.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path

from tests.fault_cases import fault_cases
from tests.fuzz_cases import Workspace, all_cases, outcome


class TimedOut(Exception):
    """A case ran past the timeout."""


def _alarm(signum, frame):  # noqa: ARG001 - a signal handler's signature
    raise TimedOut("ran past the timeout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    cases = [c for c in [*all_cases(), *fault_cases()] if not args.prefixes or c.name.startswith(tuple(args.prefixes))]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    wrong = []
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(folder) / "minari")
        workspace = Workspace(Path(folder))
        with contextlib.chdir(folder):
            for case in cases:
                signal.setitimer(signal.ITIMER_REAL, args.timeout)
                try:
                    kind, detail = outcome(case, workspace)
                except TimedOut as error:  # raised outside the case's own call
                    kind, detail = "traceback", str(error)
                signal.setitimer(signal.ITIMER_REAL, 0)
                counts[case.name.split("/")[0]][kind] += 1
                if kind != ("accepted" if case.accept else "clean"):
                    wrong.append(f"{case.name}: {kind}: {' '.join(detail.split())[:300]}")
    for group, counter in sorted(counts.items()):
        print(f"{group:<14}" + "  ".join(f"{kind} {n}" for kind, n in sorted(counter.items())))
    print("\n".join(wrong))
    totals = collections.Counter()
    for counter in counts.values():
        totals.update(counter)
    cli_tracebacks = sum(c["traceback"] for g, c in counts.items() if g.startswith("cli"))
    cli_cases = sum(sum(c.values()) for g, c in counts.items() if g.startswith("cli"))
    print(json.dumps({**totals, "cases": len(cases), "cli_cases": cli_cases, "cli_traceback": cli_tracebacks}))


if __name__ == "__main__":
    main()
