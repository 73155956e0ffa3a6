"""The ``kalm`` command line: one sub-command per module in :mod:`kalm.commands`.

Every command that reports figures prints a human-readable table and, with ``--json``, one JSON
object as its last line of output. Bad input exits with status 2 and a message naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from kalm.commands import (
    datasets,
    evaluate,
    goal_probe,
    ground,
    imagine,
    imagine_eval,
    oracle,
    publish,
    run,
    separation,
    train,
)

COMMANDS = {
    "oracle": oracle,
    "datasets": datasets,
    "ground": ground,
    "imagine": imagine,
    "imagine-eval": imagine_eval,
    "goal-probe": goal_probe,
    "publish": publish,
    "train": train,
    "evaluate": evaluate,
    "separation": separation,
    "run": run,
}


#: What a command raises for bad user input: a bad value or setting (ValueError, which includes
#: the package's DatasetError; TypeError, which includes InvalidTypeError), or a file that is
#: missing, already there or unreadable (OSError). Any other exception is a bug and keeps its
#: traceback.
USER_ERRORS = (ValueError, TypeError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kalm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. A :data:`USER_ERRORS` error, or running out of memory,
    becomes status 2 and one line on stderr, ``kalm COMMAND: error: MESSAGE`` (no traceback);
    argparse exits with 2 itself."""
    args = build_parser().parse_args(argv)
    try:
        report, text, code = COMMANDS[args.command].run(args)
    except USER_ERRORS as error:
        message = " ".join(str(error).split())  # one line
        print(f"kalm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except MemoryError as error:  # sizes within the checked bounds can still exceed this machine's memory
        detail = " ".join(str(error).split()) or "no detail"
        print(f"kalm {args.command}: error: out of memory ({detail}); use fewer episodes or smaller batches",
              file=sys.stderr)
        return 2
    print(text)
    if getattr(args, "json", False):
        print(json.dumps(report, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
