"""Sub-commands of ``kalm``.

Each module has ``HELP``, ``add_arguments(parser)`` and ``run(args) -> (report, text, exit code)``:
the CLI prints ``text`` and, when ``--json`` was given, ``report`` as one JSON line after it.
"""

import argparse
from pathlib import Path


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Give a command that reports figures its ``--json`` flag."""
    parser.add_argument("--json", action="store_true", help="end the output with one JSON line")


def path_argument(text: str) -> Path:
    """``type=`` of a path option: ``text`` as a Path; an empty one is refused (``Path("")`` would
    silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a path: it is empty")
    return Path(text)
