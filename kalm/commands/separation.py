"""``kalm separation``: how well instruction encoders tell the goals of each level apart."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm_envs import LEVELS
from kalm_envs.separation import (
    HARD_GOALS, MAX_HARD_GOALS, MAX_WORDINGS, NEAR_DUPLICATE_COSINE, markdown_table, separation,
)
from kalm_envs.text_encoders import DEFAULT_ENCODER, ENCODER_NAMES, TextEncoder, make_encoder
from kalm_envs.validation import check_int, check_seed

HELP = "count, per level and encoder, instructions that embed like those of another goal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", action="append", default=[], choices=ENCODER_NAMES,
                        help=f"encoder to measure (repeatable; default: {DEFAULT_ENCODER} and hashed)")
    parser.add_argument("--policy", action="append", default=[], type=path_argument, metavar="DIR",
                        help="also measure the encoder saved with this trained policy (repeatable)")
    parser.add_argument("--levels", nargs="+", choices=[*LEVELS, "all"], default=["all"])
    parser.add_argument("--threshold", type=float, default=NEAR_DUPLICATE_COSINE,
                        help="cosine at or above which two instructions count as near duplicates")
    parser.add_argument("--hard-goals", type=int, default=HARD_GOALS, help="distinct hard goals drawn")
    parser.add_argument("--max-wordings", type=int, default=MAX_WORDINGS, help="wordings kept per goal")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hard goals and kept wordings")
    add_json_flag(parser)


def _encoders(args: argparse.Namespace) -> list[TextEncoder]:
    names = list(dict.fromkeys(args.encoder)) or ([DEFAULT_ENCODER, "hashed"] if not args.policy else [])
    encoders = [make_encoder(name) for name in names]
    for directory in args.policy:
        if not directory.is_dir():
            raise FileNotFoundError(f"--policy folder {str(directory)!r} does not exist")
        from kalm_rl.policy import load_policy

        encoders.append(load_policy(directory).encoder)
    return encoders


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    if not -1.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold {args.threshold} must lie in [-1, 1]")
    check_int(args.hard_goals, "--hard-goals", 1, MAX_HARD_GOALS)
    check_seed(args.seed, "--seed")
    levels = list(LEVELS) if "all" in args.levels else list(dict.fromkeys(args.levels))
    encoders = _encoders(args)
    rows = [separation(encoder, level, args.threshold, args.hard_goals, args.max_wordings, args.seed)
            for level in levels for encoder in encoders]
    return {"rows": [row.to_dict() for row in rows]}, markdown_table(rows), 0
