"""``kalm imagine-eval``: how well a grounded LM imagines rollouts and explains real ones."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm.commands.imagine import add_sampling_arguments, set_threads
from kalm_envs.validation import check_count, check_float, check_seed
from kalm_gen.imagine import DEFAULT_BATCH_SIZE
from kalm_gen.imagine_dataset import IMAGINED_LEVELS
from kalm_gen.published import DEFAULT_MODEL, resolve_model
from kalm_gen.quality import QUALITY_SEED, held_out_episodes, imagination_quality

HELP = "imagination quality of a grounded LM: goal match, simulator consistency, explanation accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=path_argument, default=Path(DEFAULT_MODEL),
                        help=f"a published grounded model (default {DEFAULT_MODEL}) or a folder "
                             "written by GroundedLM.save")
    parser.add_argument("--levels", nargs="+", choices=IMAGINED_LEVELS, default=list(IMAGINED_LEVELS))
    parser.add_argument("--episodes", type=int, default=50, help="imagined rollouts per level")
    parser.add_argument("--seed", type=int, default=QUALITY_SEED, help="rollout i: task of env.reset(seed + i)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    add_sampling_arguments(parser)
    parser.add_argument("--real-dataset", help="dataset id whose last --real-episodes episodes "
                                               "(held out of training) measure explanation accuracy")
    parser.add_argument("--real-episodes", type=int, default=50)
    parser.add_argument("--diagnose", action="store_true",
                        help="also the figures behind the table: error by horizon, one-step errors (pushed "
                             "ball, others, wall crossings, drift), the closed-loop success of the model's actions "
                             "in the simulator, action agreement and explanation parts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a busy "
                                                    "machine 1 can be several times faster for small batches)")
    add_json_flag(parser)


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.3f}"


def quality_lines(report: dict[str, Any], real_source: str | None) -> list[str]:
    """The quality table of an :func:`~kalm_gen.quality.imagination_quality` report as text
    lines (with the diagnostics when it holds them); ``real_source`` names the real episodes."""
    temperatures = {level: row["temperature"] for level, row in report["levels"].items()}
    acting = ", ".join(f"{level} " + ("greedy" if t == 0 else f"temperature {t:g}") for level, t in temperatures.items())
    seeded = f" (sample seed {report['sample_seed']})" if any(temperatures.values()) else ""
    lines = [f"rollout actions: {acting}{seeded}",
             f"{'level':<10}{'episodes':>9}{'goal match':>12}{'replay match':>14}{'err mean m':>12}"
             f"{'err max m':>11}{'off bench':>11}{'walls':>8}{'mean steps':>12}"]
    for level, row in report["levels"].items():
        lines.append(
            f"{level:<10}{row['episodes']:>9}{_fmt(row['goal_match_rate'], True):>12}"
            f"{_fmt(row['replay_match_rate'], True):>14}{_fmt(row['state_error_mean']):>12}"
            f"{_fmt(row['state_error_max']):>11}{_fmt(row['out_of_workbench_rate'], True):>11}"
            f"{_fmt(row['wall_crossing_rate'], True):>8}{row['mean_length']:>12.2f}"
        )
        if "goal_naming" in row:
            naming = row["goal_naming"]
            lines.append(f"  {level} goal head: names the goal right in {_fmt(naming['right'], True)} of the "
                         f"{naming['tasks']} tasks whose goal has fields")
        if "one_step" in row:
            one = row["one_step"]
            horizon = row["error_by_horizon"]
            marks = [t for t in (1, 5, 10, 25, 50) if t <= len(horizon)]
            lines.append(f"  {level} error by step: " + ", ".join(f"t={t} {horizon[t - 1]:.3f}" for t in marks))
            lines.append(
                f"  {level} one step ({one['steps']} steps, {one['unplaceable_steps']} unplaceable): pushed ball "
                f"{_fmt(one['pushed_error'])} m, others {_fmt(one['other_error'])} m, wall crossings "
                f"{_fmt(one['wall_crossing_rate'], True)} (pushed ball {_fmt(one['wall_crossing_pushed_share'], True)}), "
                f"drift {_fmt(one['drift_rate'], True)} ({_fmt(one['drift_per_step'])} m a ball)"
            )
            claimed = row["goal_matched_replay"]
            lines.append(f"  {level} goal matched in {claimed['rollouts']} rollouts; the simulator confirms "
                         f"{_fmt(claimed['replay_match_rate'], True)} of them")
            acted = row["closed_loop"]
            lines.append(f"  {level} closed loop (the model's actions on the simulator's states): success "
                         f"{_fmt(acted['success_rate'], True)}, mean steps {acted['mean_length']:.2f}")
    if "explanation" in report:
        explanation = report["explanation"]
        lines.append(f"explanation ({explanation.get('source', 'text')}) on {explanation['episodes']} held-out "
                     f"episodes of {real_source}: "
                     f"accuracy {explanation['accuracy']:.1%}, parsed {explanation['parse_rate']:.1%}")
        lines += [f"  {'ok ' if ex['correct'] else 'bad'} {ex['instruction']!r} -> {ex['generated']!r}"
                  for ex in explanation["examples"]]
        if "parts" in explanation:
            parts = explanation["parts"]
            lines.append(f"  parts of the {parts['parsed']} parsed: kind {_fmt(parts['kind_rate'], True)}, "
                         f"direction {_fmt(parts['direction_rate'], True)}, first ball "
                         f"{_fmt(parts['first_ball_rate'], True)}, second ball {_fmt(parts['second_ball_rate'], True)}; "
                         f"wrong first balls (true->named) {parts['confused_balls']}")
        if "one_step_floor" in report:
            floor = report["one_step_floor"]
            lines.append(f"one-step floor: the real steps of those episodes re-simulated from their ball centres: "
                         f"pushed ball {_fmt(floor['pushed_error'])} m, others {_fmt(floor['other_error'])} m, drift "
                         f"{_fmt(floor['drift_rate'], True)} ({_fmt(floor['drift_per_step'])} m a ball)")
        if "action_agreement" in report:
            agreement = report["action_agreement"]
            lines.append(f"actions on the real episodes ({agreement['steps']} steps, teacher-forced): "
                         f"oracle's push {agreement['oracle_agreement']:.1%}, "
                         f"recorded push {agreement['recorded_agreement']:.1%}")
    else:
        lines.append("explanation: not measured (give --real-dataset)")
    return lines


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    from kalm_gen.grounded_lm import GroundedLM

    set_threads(args.threads)
    check_count(args.episodes, "--episodes")  # these before the model loads
    check_seed(args.seed, "--seed")
    check_count(args.batch_size, "--batch-size")
    if args.temperature is not None:
        check_float(args.temperature, "--temperature", 0.0)
    check_seed(args.sample_seed, "--sample-seed")
    resolve_model(args.model)  # a bad name fails before the real episodes are read
    real = held_out_episodes(args.real_dataset, args.real_episodes) if args.real_dataset else None
    model = GroundedLM.load(args.model)
    report = imagination_quality(model, args.levels, args.episodes, args.seed, args.batch_size, real,
                                 diagnose=args.diagnose, temperature=args.temperature,
                                 sample_seed=args.sample_seed)
    report.update({"command": "imagine-eval", "model": str(args.model), "real_dataset": args.real_dataset})
    lines = quality_lines(report, args.real_dataset)
    return report, "\n".join(lines), 0

