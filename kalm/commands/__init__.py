"""Sub-commands of ``kalm``.

Each module has ``HELP``, ``add_arguments(parser)`` and ``run(args) -> (report, text, exit code)``:
the CLI prints ``text`` and, when ``--json`` was given, ``report`` as one JSON line after it.
"""

import argparse


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Give a command that reports figures its ``--json`` flag."""
    parser.add_argument("--json", action="store_true", help="end the output with one JSON line")
