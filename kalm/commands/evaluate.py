"""``kalm evaluate``: success rate per goal level of trained policies and baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm_envs import ENV_IDS
from kalm_envs.validation import check_count, check_float, check_seed
from kalm_rl.evaluation import (
    EVAL_SEED,
    RandomPolicy,
    ScriptedOracleBaseline,
    evaluate_policies,
    markdown_table,
    write_report,
)

HELP = "evaluate trained policies and baselines on fixed episodes of each goal level"
BASELINES = ("random", "oracle")
"""``random``: a fresh uniform push every step; ``oracle``: the scripted oracle, which reads the
structured goal (the ceiling of the table)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="[LABEL=]DIR",
        help="a trained policy folder (repeatable); policies sharing a label are one method",
    )
    parser.add_argument("--baseline", action="append", default=[], choices=BASELINES,
                        help="random (uniform pushes) or oracle (the scripted oracle, the ceiling); "
                             "repeatable")
    parser.add_argument("--workers", type=int, default=1, help="processes for the oracle's episodes")
    parser.add_argument("--levels", nargs="+", choices=[*ENV_IDS, "all"], default=["all"])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per level")
    parser.add_argument(
        "--seed", type=int, default=0, help=f"episode i is reset with {EVAL_SEED} + seed + i"
    )
    parser.add_argument("--output", type=path_argument, default=Path("runs/evaluate"), help="report folder")
    parser.add_argument("--temperature", type=float,
                        help="acting temperature of the trained policies (default: each one's saved "
                             "temperature; 0 acts greedily)")
    add_json_flag(parser)


def _split_spec(spec: str) -> tuple[str | None, Path]:
    """``LABEL=DIR`` -> (LABEL, DIR); ``DIR`` (or an existing path holding "=") -> (None, DIR)."""
    label, sep, directory = spec.partition("=")
    if not sep or Path(spec).exists():
        return None, Path(spec)
    if not label:
        raise ValueError(f"--policy {spec!r} has an empty label")
    return label, Path(directory)


def _load_groups(specs: list[str], temperature: float | None) -> tuple[dict[str, list[Any]], dict[str, list[str]]]:
    """Policies by method label, and the folders they came from."""
    parsed = [_split_spec(spec) for spec in specs]
    for _, directory in parsed:
        if not directory.is_dir():
            raise FileNotFoundError(f"--policy folder {str(directory)!r} does not exist")
    groups: dict[str, list[Any]] = {}
    sources: dict[str, list[str]] = {}
    if parsed:
        from kalm_rl.policy import load_policy

        for label, directory in parsed:
            policy = load_policy(directory, temperature)
            name = label or policy.label
            groups.setdefault(name, []).append(policy)
            sources.setdefault(name, []).append(str(directory))
    return groups, sources


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    if not args.policy and not args.baseline:
        raise ValueError("nothing to evaluate: give at least one --policy or --baseline")
    check_count(args.episodes, "--episodes")
    check_seed(args.seed, "--seed")
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers} must be at least 1")
    if args.temperature is not None:
        check_float(args.temperature, "--temperature", 0.0)
    levels = list(ENV_IDS) if "all" in args.levels else list(dict.fromkeys(args.levels))
    groups, sources = _load_groups(args.policy, args.temperature)
    baselines = {"random": lambda: RandomPolicy(seed=args.seed),
                 "oracle": lambda: ScriptedOracleBaseline(workers=args.workers)}
    for baseline in dict.fromkeys(args.baseline):
        policy = baselines[baseline]()
        if policy.label in groups:
            raise ValueError(f"policy label {policy.label!r} is also the name of a --baseline")
        groups[policy.label] = [policy]
        sources[policy.label] = ["baseline"]
    report = {"command": "evaluate", "sources": sources, "temperature": args.temperature}
    report.update(evaluate_policies(groups, levels, args.episodes, args.seed))
    paths = write_report(report, args.output)
    text = markdown_table(report) + "\n\nwrote " + ", ".join(str(p) for p in paths)
    return {**report, "files": [str(p) for p in paths]}, text, 0
