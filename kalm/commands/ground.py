"""``kalm ground``: ground a language model in CLEVR-Robot on Minari datasets (LoRA or full).

Runs :func:`kalm_gen.train.train_grounding`; an output folder that already holds a checkpoint of
the same run is resumed. Several processes: ``accelerate launch --multi_gpu --num_processes N
-m kalm.cli ground ...`` (on a CPU-only machine too: the processes join with gloo).
"""

from __future__ import annotations

import argparse
from typing import Any

from kalm.commands import add_json_flag, path_argument

HELP = "ground a language model in CLEVR-Robot (rollout, explanation and dynamics tasks)"


def _task_weights(text: str) -> dict[str, float]:
    """``rollout=1,explain=1,dynamics=2`` -> a dict."""
    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"task weight {part!r} is not NAME=WEIGHT")
        try:
            weights[name.strip()] = float(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"task weight {part!r}: {value!r} is not a number") from error
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", nargs="+", required=True, metavar="ID",
                        help="Minari dataset ids (or dataset folders) of our spaces")
    parser.add_argument("--base-model", default="smollm2",
                        help="'smollm2' (embedded SmolLM2-135M-Instruct), a local model folder or a .gguf file")
    parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--head-hidden", type=int, default=256, help="hidden width of the state encoder and head")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step and process")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--output", required=True, type=path_argument,
                        help="run folder: checkpoints, log.jsonl, final/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of episodes held out")
    parser.add_argument("--max-episodes", type=int, help="at most this many episodes per dataset")
    parser.add_argument("--task-weights", type=_task_weights, default=None, metavar="rollout=1,explain=1,dynamics=1",
                        help="relative frequency of each task in a batch (default equal)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="bf16: bfloat16 autocast (auto: bf16 on a GPU that supports it, else fp32)")
    parser.add_argument("--pack-length", type=int, default=512, metavar="N",
                        help="pack examples into rows of N positions (0: one padded example a row)")
    parser.add_argument("--num-layers", type=int, help="keep only the LM's first N decoder layers")
    parser.add_argument("--state-head", choices=("bounded", "delta", "mlp", "relational"), default="bounded",
                        help="bounded: predicted balls stay in the box of initial states; mlp, relational: bounded, "
                        "from a push model over the state and the action instead of the LM (relational: one model "
                        "shared by the five balls; fit either with --state-fit-updates)")
    parser.add_argument("--state-fit-updates", type=int, default=0, metavar="N",
                        help="with --state-head mlp or relational: fit the state head alone on every training "
                        "transition for N updates before grounding")
    parser.add_argument("--action-head", choices=("hidden", "goal"), default="hidden",
                        help="hidden: actions linear in the LM's hidden state; goal: goal first, the LM names "
                        "ball A, ball B and direction, an MLP acts on them and the ball state")
    parser.add_argument("--action-fit-updates", type=int, default=0, metavar="N",
                        help="goal first: fit the action head alone on every training transition for N updates "
                        "before grounding (seconds)")
    parser.add_argument("--goal-clauses", type=int, choices=(1, 3), default=1,
                        help="goal first: clauses the goal head names (3: a clause list, for pairs and triples)")
    parser.add_argument("--compound-fraction", type=float, default=0.0, metavar="F",
                        help="with --goal-clauses 3: share of rollout examples that teach compound goals made of "
                        "two or three train wordings")
    parser.add_argument("--move-fraction", type=float, default=0.0, metavar="F",
                        help="with --action-head goal: share of rollout examples that teach the goal head moves (a "
                        "train wording without its reference ball); the action fit learns moves by hindsight too")
    parser.add_argument("--explain-fit-updates", type=int, default=0, metavar="N",
                        help="after the last step, fit an explanation head alone for N updates: it names the relation "
                        "a rollout reached from the LM's hidden state and the relations of its first and last states")
    parser.add_argument("--init-model", metavar="MODEL",
                        help="start from this grounded model (published name or folder) instead of the base model")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on an idle "
                        "2-core machine 2 threads train 1.4x faster than 1, on a busy one 1 can be faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(parser)


def config_from_args(args: argparse.Namespace):
    from kalm_gen.grounding_data import DEFAULT_TASK_WEIGHTS
    from kalm_gen.train import GroundingTrainConfig

    return GroundingTrainConfig(
        datasets=list(args.datasets), output=str(args.output), base_model=args.base_model,
        finetune=args.finetune, lora_rank=args.lora_rank, head_hidden=args.head_hidden, lr=args.lr,
        warmup_steps=args.warmup_steps, batch_size=args.batch_size, steps=args.steps,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
        task_weights=dict(args.task_weights or DEFAULT_TASK_WEIGHTS), val_fraction=args.val_fraction,
        max_episodes=args.max_episodes, precision=args.precision,
        pack_length=args.pack_length or None, num_layers=args.num_layers, state_head=args.state_head,
        action_head=args.action_head, init_model=args.init_model, action_fit_updates=args.action_fit_updates,
        goal_clauses=args.goal_clauses, compound_fraction=args.compound_fraction, move_fraction=args.move_fraction,
        state_fit_updates=args.state_fit_updates, explain_fit_updates=args.explain_fit_updates,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    from kalm_gen.train import train_grounding

    config = config_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    summary = train_grounding(config, progress=not args.no_progress)
    if not summary.get("main_process", True):
        return summary, "", 0
    train, val = summary["train_losses"], summary["val_losses"]
    rows = ["rollout", "rollout_action", "rollout_state", "explain", "dynamics"]
    rows += [name for name in ("rollout_goal", "explain_goal") if name in train or name in val]  # goal first
    lines = [f"{'loss':<16}{'train':>10}{'val':>10}"]
    lines += [f"{name:<16}{_fmt(train.get(name)):>10}{_fmt(val.get(name)):>10}" for name in rows]
    resumed = summary.get("resumed_from")
    status = "already complete" if summary.get("already_complete") else (
        f"resumed from step {resumed}" if resumed is not None else "from scratch")
    rate = summary.get("positions_per_s")
    lines += [
        f"steps: {summary['steps']} ({status}), {summary['num_processes']} process(es), "
        f"batch {summary['batch_size']} per process",
        f"episodes: {summary['train_episodes']} train, {summary['val_episodes']} val",
        f"wall time: {summary['wall_s']:.1f} s, training {summary.get('train_s', 0):.1f} s, "
        f"{rate if rate is not None else '-'} positions/s",
        f"final model: {summary['final_model']}",
    ]
    return summary, "\n".join(lines), 0
