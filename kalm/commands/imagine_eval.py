"""``kalm imagine-eval``: how well a grounded LM imagines rollouts and explains real ones."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kalm.commands import add_json_flag
from kalm.commands.imagine import set_threads
from kalm_gen.imagine import DEFAULT_BATCH_SIZE
from kalm_gen.imagine_dataset import IMAGINED_LEVELS
from kalm_gen.quality import QUALITY_SEED, held_out_episodes, imagination_quality

HELP = "imagination quality of a grounded LM: goal match, simulator consistency, explanation accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="folder written by GroundedLM.save")
    parser.add_argument("--levels", nargs="+", choices=IMAGINED_LEVELS, default=list(IMAGINED_LEVELS))
    parser.add_argument("--episodes", type=int, default=50, help="imagined rollouts per level")
    parser.add_argument("--seed", type=int, default=QUALITY_SEED, help="rollout i: task of env.reset(seed + i)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--real-dataset", help="dataset id whose last --real-episodes episodes "
                                               "(held out of training) measure explanation accuracy")
    parser.add_argument("--real-episodes", type=int, default=50)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a busy "
                                                    "machine 1 can be several times faster for small batches)")
    add_json_flag(parser)


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.3f}"


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    from kalm_gen.grounded_lm import GroundedLM

    set_threads(args.threads)
    if args.episodes < 1:
        raise ValueError(f"--episodes {args.episodes} must be at least 1")
    if not args.model.is_dir():
        raise FileNotFoundError(f"no grounded LM folder at {args.model}")
    real = held_out_episodes(args.real_dataset, args.real_episodes) if args.real_dataset else None
    model = GroundedLM.load(args.model)
    report = imagination_quality(model, args.levels, args.episodes, args.seed, args.batch_size, real)
    report.update({"command": "imagine-eval", "model": str(args.model), "real_dataset": args.real_dataset})
    lines = [f"{'level':<10}{'episodes':>9}{'goal match':>12}{'replay match':>14}{'err mean m':>12}"
             f"{'err max m':>11}{'off bench':>11}{'mean steps':>12}"]
    for level, row in report["levels"].items():
        lines.append(
            f"{level:<10}{row['episodes']:>9}{_fmt(row['goal_match_rate'], True):>12}"
            f"{_fmt(row['replay_match_rate'], True):>14}{_fmt(row['state_error_mean']):>12}"
            f"{_fmt(row['state_error_max']):>11}{_fmt(row['out_of_workbench_rate'], True):>11}"
            f"{row['mean_length']:>12.2f}"
        )
    if "explanation" in report:
        explanation = report["explanation"]
        lines.append(f"explanation on {explanation['episodes']} held-out episodes of {args.real_dataset}: "
                     f"accuracy {explanation['accuracy']:.1%}, parsed {explanation['parse_rate']:.1%}")
        lines += [f"  {'ok ' if ex['correct'] else 'bad'} {ex['instruction']!r} -> {ex['generated']!r}"
                  for ex in explanation["examples"]]
    else:
        lines.append("explanation: not measured (give --real-dataset)")
    return report, "\n".join(lines), 0

