"""``kalm train``: train an offline learner (BC, CQL, IQL, BCQ) on real and imagined datasets.

Runs :func:`kalm_rl.trainer.train_policy`. An output folder that holds a checkpoint of the same
run is resumed; a finished run is extended when ``--updates`` grows.
"""

from __future__ import annotations

import argparse
from typing import Any

from kalm.assignments import parse_assignment
from kalm.commands import add_json_flag, path_argument
from kalm_envs.text_encoders import DEFAULT_ENCODER, ENCODER_NAMES

HELP = "train an offline learner (bc, cql, iql, bcq) on real and imagined Minari datasets"


def parse_ratio(text: str) -> float:
    """``"R:I"`` (real to imagined rows per batch, e.g. ``1:1`` or ``3:1``) -> the real fraction."""
    real, sep, imagined = text.partition(":")
    try:
        r, i = float(real), float(imagined)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio {text!r} is not REAL:IMAGINED, e.g. 1:1") from None
    if not sep or r <= 0 or i <= 0:
        raise argparse.ArgumentTypeError(f"ratio {text!r} needs two positive parts, e.g. 1:1 or 3:1")
    return r / (r + i)


def parse_param(text: str) -> tuple[str, Any]:
    """``name=value``; the value is read as JSON when it can be (``alpha=0.5``, ``hidden=[64,64]``)."""
    assignment = parse_assignment(text)
    if assignment is None:
        raise argparse.ArgumentTypeError(f"setting {text!r} is not NAME=VALUE")
    return assignment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algorithm", required=True, help="bc, cql, iql or bcq")
    parser.add_argument("--datasets", nargs="+", required=True, metavar="ID", help="real datasets (ids or folders)")
    parser.add_argument("--imagined", nargs="+", default=[], metavar="ID",
                        help="imagined datasets (or oracle ones, for the upper bound)")
    parser.add_argument("--ratio", type=parse_ratio, default=0.5, metavar="R:I",
                        help="real:imagined rows per batch when --imagined is given (default 1:1)")
    parser.add_argument("--imagined-episodes", default="all", metavar="WHICH",
                        help="all (default): every imagined episode; successful: only those whose last "
                             "generated state meets their goal (the generator's claim; no simulator is run); "
                             "progress: only the pushes of those that bring the goal closer (the env's dense reward > 0); "
                             "final-push: only the last push of each of those, the one that reached the goal")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, choices=ENCODER_NAMES,
                        help=f"instruction encoder (default {DEFAULT_ENCODER}: hashed n-grams and ordered word pairs)")
    parser.add_argument("--param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                        help="learner setting, e.g. alpha=0.5 or hidden=[256,256] (repeatable)")
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reward-scale", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=1_000)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--temperature", type=float,
                        help="acting temperature saved with the policy (default: the algorithm's; 0: greedy)")
    parser.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                        help="share of episodes held out; their figures are logged as val_* (default 0: none)")
    parser.add_argument("--select", default="last",
                        help="weights saved as the policy: last (default), or those at the lowest val_loss "
                             "or the highest val_agreement (needs --validation-fraction)")
    parser.add_argument("--output", required=True, type=path_argument,
                        help="run folder: config, checkpoint, log.jsonl, policy.pt")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-progress", action="store_true")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    import torch

    from kalm_rl.trainer import TrainConfig, train_policy

    if args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be at least 1")
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        algorithm=args.algorithm, datasets=list(args.datasets), imagined=list(args.imagined),
        real_fraction=args.ratio, imagined_episodes=args.imagined_episodes, encoder=args.encoder, params=dict(args.param), updates=args.updates,
        batch_size=args.batch_size, reward_scale=args.reward_scale, seed=args.seed,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, output=str(args.output),
        temperature=args.temperature, validation_fraction=args.validation_fraction, select=args.select,
        device=args.device,
    )
    summary = train_policy(config, progress=not args.no_progress)
    last = summary["last_log"] or {}
    losses = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step")
    speed = summary["updates_per_s"]
    lines = [
        f"{config.algorithm}: {config.updates} updates ({summary['updates_run']} in this call"
        + (f", {speed:.0f} updates/s" if speed else "") + ")",
        f"transitions: {summary['transitions']['real']} real, {summary['transitions']['imagined']} imagined",
        f"last losses: {losses or '-'}",
        f"policy: {summary['policy']} (weights of update {summary['selected_step']})",
    ]
    return summary, "\n".join(lines), 0
