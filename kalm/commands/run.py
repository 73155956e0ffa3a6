"""``kalm run``: the whole pipeline (data, grounding, imagination, training, evaluation, report)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm.pipeline.presets import PRESETS

HELP = "run the whole KALM pipeline from one preset, reusing finished stages, and write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="smoke", help=f"one of {', '.join(PRESETS)} (default smoke)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="change one setting of the preset, the value as JSON (repeatable), "
                             "e.g. evaluate.episodes=50 or 'train.algorithms=[\"bc\",\"iql\"]'")
    parser.add_argument("--name", help="run folder name (default: the preset's name)")
    parser.add_argument("--output-root", type=path_argument, default=Path("runs"), help="folder of the runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a small shared CPU more is slower)")
    add_json_flag(parser)


def command_line(args: argparse.Namespace) -> str:
    """The ``kalm run`` command line that repeats this run."""
    words = ["kalm", "run", "--preset", args.preset, "--name", args.name or args.preset,
             "--output-root", str(args.output_root), "--threads", str(args.threads)]
    for override in args.overrides:
        words += ["--set", override]
    return shlex.join(words + (["--json"] if args.json else []))


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    import torch

    from kalm.pipeline import run_pipeline
    from kalm_rl.evaluation import markdown_table

    if args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be at least 1")
    torch.set_num_threads(args.threads)
    report = run_pipeline(args.preset, args.overrides, args.name, args.output_root, command_line(args))
    lines = [markdown_table(report["evaluation"]), "", f"{'stage':<10}{'reused':>8}{'seconds':>10}"]
    lines += [f"{stage:<10}{'yes' if row['reused'] else 'no':>8}{row['seconds']:>10.1f}"
              for stage, row in report["stages"].items()]
    lines += [f"total {report['seconds']:.1f} s; report: {report['files']['report']}"]
    return report, "\n".join(lines), 0
