"""``kalm publish``: ship a finished grounding run as a named model with its model card.

Reads the run folder of ``kalm ground`` (its config, log and ``final/`` model, or with
``--checkpoint STEP`` that complete checkpoint, its losses taken from the log), measures the
model's imagination quality (``kalm imagine-eval --diagnose``, explanations on the real-v0
episodes it never trained on), and writes ``kalm_gen/models/<name>/``: the saved model,
``training.json`` (its data and held-out seeds) and ``MODEL_CARD.md`` (the command that trained
it, the data checksum, steps, losses and the quality table). ``kalm imagine --model <name>`` and
``kalm datasets build kalm/clevr-robot/imagined-<level>-vN`` then use it.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm_envs.validation import check_count

HELP = "ship a finished grounding run as a named model (kalm_gen/models/NAME) with its model card"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=path_argument, help="output folder of a finished kalm ground run")
    parser.add_argument("--name", required=True, help="model name, e.g. kalm-smollm2-v0")
    parser.add_argument("--checkpoint", type=int, metavar="STEP",
                        help="publish the run's complete checkpoint of this step instead of its final model")
    parser.add_argument("--episodes", type=int, default=50, help="imagined rollouts per level for the quality table")
    parser.add_argument("--real-episodes", type=int, default=50, help="held-out real episodes explained")
    parser.add_argument("--destination", type=path_argument, help="models folder (default: the package's kalm_gen/models)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    add_json_flag(parser)


def held_out_seeds(config: dict[str, Any]) -> list[int]:
    """``[start, stop)``: reset seeds of the episodes of the run's one dataset it left out."""
    from kalm_envs.minari_io import read_metadata

    if len(config["datasets"]) != 1 or config["max_episodes"] is None:
        raise ValueError("a published model trains on the first --max-episodes episodes of one dataset, so "
                         f"that the rest measure it; this run used {config['datasets']} with max_episodes "
                         f"{config['max_episodes']}")
    kalm = read_metadata(config["datasets"][0])["kalm"]
    spec = kalm.get("spec") or {}
    if "seed" not in spec:
        raise ValueError(f"dataset {config['datasets'][0]} was not built from a spec: its episodes' seeds are unknown")
    total = int(kalm.get("episodes", spec["episodes"]))
    if config["max_episodes"] >= total:
        raise ValueError(f"max_episodes {config['max_episodes']} leaves none of the {total} episodes out")
    return [spec["seed"] + config["max_episodes"], spec["seed"] + total]


def ground_command(config: dict[str, Any]) -> str:
    """The ``kalm ground`` command line that trains ``config`` (a GroundingTrainConfig dict)."""
    weights = ",".join(f"{k}={v:g}" for k, v in config["task_weights"].items())
    parts = [
        "kalm ground", "--datasets", *config["datasets"], "--output", config["output"],
        "--base-model", config["base_model"], "--finetune", config["finetune"], "--lora-rank", config["lora_rank"],
        "--head-hidden", config["head_hidden"], "--steps", config["steps"], "--batch-size", config["batch_size"],
        "--lr", config["lr"], "--warmup-steps", config["warmup_steps"], "--eval-every", config["eval_every"],
        "--checkpoint-every", config["checkpoint_every"], "--val-fraction", config["val_fraction"],
        "--seed", config["seed"], "--task-weights", weights, "--precision", config["precision"],
        "--pack-length", config["pack_length"] or 0, "--state-head", config["state_head"],
    ]
    if config["max_episodes"] is not None:
        parts += ["--max-episodes", config["max_episodes"]]
    if config["num_layers"] is not None:
        parts += ["--num-layers", config["num_layers"]]
    if config.get("action_head", "hidden") != "hidden":
        parts += ["--action-head", config["action_head"]]
    if config.get("action_fit_updates"):
        parts += ["--action-fit-updates", config["action_fit_updates"]]
    if config.get("state_fit_updates"):
        parts += ["--state-fit-updates", config["state_fit_updates"]]
    if config.get("explain_fit_updates"):
        parts += ["--explain-fit-updates", config["explain_fit_updates"]]
    if config.get("goal_clauses", 1) != 1:
        parts += ["--goal-clauses", config["goal_clauses"]]
    if config.get("compound_fraction"):
        parts += ["--compound-fraction", config["compound_fraction"]]
    if config.get("move_fraction"):
        parts += ["--move-fraction", config["move_fraction"]]
    if config.get("init_model") is not None:
        parts += ["--init-model", config["init_model"]]
    return " ".join(str(p) for p in parts)


def _loss_table(summary: dict[str, Any]) -> list[str]:
    rows = ["| loss | first step | last 10 steps | validation |", "|---|---:|---:|---:|"]
    for key in ("rollout_action", "rollout_state", "explain", "dynamics", "rollout_goal", "explain_goal"):
        values = [summary[part].get(key) for part in ("initial_train_losses", "train_losses", "val_losses")]
        if all(v is None for v in values):  # the goal losses of a model without a goal head
            continue
        rows.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    return rows


def _explain_fit_line(summary: dict[str, Any]) -> list[str]:
    """The card's line on the explanation head's fit, when the run made one."""
    fit = summary.get("explain_fit")
    if not fit:
        return []
    losses = dict(fit["held_out_losses"])
    return [f"- explanation head: fitted alone after the last step on {fit['rows']} episodes, "
            f"{fit['updates']} updates, the head of update {fit['kept_update']} kept (held-out loss "
            f"{losses[0]:.3f} -> {losses[fit['kept_update']]:.3f} nats), {fit['seconds'] / 60:.1f} min"]


def _spec_build(name: str) -> str:
    """``, or `kalm datasets build ID``` for the last packaged imagined spec built from model
    ``name``; empty when no spec names it."""
    from kalm_envs.dataset_specs import list_specs

    built = sorted(spec.id for spec in list_specs().values() if spec.model == name)
    return f", or `kalm datasets build {built[-1]}`" if built else ""


def _action_head_words(config: dict[str, Any]) -> str:
    if config.get("action_head", "hidden") == "goal":
        named = ("a list of up to three clauses, each ball A, ball B and direction" if config.get("goal_clauses", 1) == 3
                 else "ball A, ball B and direction")
        return (f"a goal head (it names {named}) with a goal-first action head (an MLP over "
                "the named goal and the ball state)")
    return "an action head"


def model_card(name: str, config: dict[str, Any], summary: dict[str, Any], checksum: str, seeds: list[int],
               quality_text: list[str], quality_command: str, train_wall_s: float) -> str:
    """The markdown model card."""
    layers = "all" if config["num_layers"] is None else f"the first {config['num_layers']}"
    lines = [
        f"# {name}",
        "",
        f"SmolLM2-135M-Instruct grounded in CLEVR-Robot by KALM-Gym: {layers} decoder layers, LoRA rank "
        f"{config['lora_rank']} on the attention projections, a state encoder, an action embedding, "
        f"{_action_head_words(config)}, a {config['state_head']} state head"
        f"{' and an explanation head' if config.get('explain_fit_updates') else ''}. It imagines rollouts for novel goals: "
        f"`kalm imagine --model {name} --level hard`{_spec_build(name)}.",
        "",
        "## Training",
        "",
        f"- command: `{ground_command(config)}`",
        f"- data: the first {config['max_episodes']} episodes of `{config['datasets'][0]}` (content checksum "
        f"`{checksum}`); episodes of reset seeds {seeds[0]}..{seeds[1] - 1} were left out and measure explanations",
        f"- steps: {summary['steps']} of {summary['batch_size']} sequences"
        + (f" (the checkpoint at step {summary['steps']} of a run planned for {summary['planned_steps']}: "
           "the learning rate had not decayed to its end)" if "planned_steps" in summary else ""),
        f"- wall time: {train_wall_s / 3600:.2f} h on {summary.get('device', 'cpu')}",
        *_explain_fit_line(summary),
        "",
        *_loss_table(summary),
        "",
        "## Quality",
        "",
        f"`{quality_command}`",
        "",
        "```text",
        *quality_text,
        "```",
        "",
        f"Published {datetime.now(timezone.utc).strftime('%Y-%m-%d')} with `kalm publish`.",
        "",
    ]
    return "\n".join(lines)


def _train_wall_seconds(run_dir: Path, until: int) -> float:
    """Sum of the logged step times of the run up to step ``until``."""
    from kalm_gen.train import read_log

    return sum(r.get("seconds", 0.0) for r in read_log(run_dir) if r.get("kind") == "train" and r["step"] <= until)


def _model_and_summary(run_dir: Path, checkpoint: int | None) -> tuple[Path, dict[str, Any]]:
    """The model folder to publish and its training summary (for a checkpoint: from the log)."""
    from kalm_gen.train import complete_checkpoints, read_log, summarize_log

    if checkpoint is None:
        summary_file = run_dir / "final" / "training_summary.json"
        if not summary_file.is_file():
            raise FileNotFoundError(f"{run_dir} holds no finished grounding run ({summary_file} is missing); "
                                    "pass --checkpoint STEP to publish a checkpoint")
        return run_dir / "final", json.loads(summary_file.read_text())
    folders = dict(complete_checkpoints(run_dir))
    if checkpoint not in folders:
        raise FileNotFoundError(f"{run_dir} holds no complete checkpoint of step {checkpoint}; "
                                f"complete ones: {sorted(folders)}")
    config = json.loads((run_dir / "grounding_config.json").read_text())
    records = [r for r in read_log(run_dir) if r.get("step", 0) <= checkpoint]
    summary = summarize_log(records, checkpoint)
    summary.update({"batch_size": config["batch_size"], "planned_steps": config["steps"]})
    return folders[checkpoint] / "model", summary


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    from kalm.commands.imagine import set_threads
    from kalm.commands.imagine_eval import quality_lines
    from kalm.pipeline.stages import held_out_real_episodes
    from kalm_envs.minari_io import read_metadata
    from kalm_gen.grounded_lm import GroundedLM
    from kalm_gen.published import publish_model
    from kalm_gen.quality import imagination_quality

    set_threads(args.threads)
    check_count(args.episodes, "--episodes")
    check_count(args.real_episodes, "--real-episodes")
    model_dir, summary = _model_and_summary(args.run_dir, args.checkpoint)
    config = json.loads((args.run_dir / "grounding_config.json").read_text())
    seeds = held_out_seeds(config)
    checksum = read_metadata(config["datasets"][0])["kalm"]["checksum"]
    model = GroundedLM.load(model_dir)
    real = held_out_real_episodes(seeds, args.real_episodes)
    quality = imagination_quality(model, episodes=args.episodes, real_episodes=real, diagnose=True)
    source = f"real-v0 episodes of seeds {seeds[0]}..{seeds[0] + len(real) - 1}"
    text = quality_lines(quality, source)
    command = (f"kalm imagine-eval --model {args.name} --episodes {args.episodes} --diagnose "
               f"(explanations: {len(real)} held-out real-v0 episodes)")
    card = model_card(args.name, config, summary, checksum, seeds, text, command,
                      _train_wall_seconds(args.run_dir, summary["steps"]))
    training = {"datasets": config["datasets"], "max_episodes": config["max_episodes"], "checksum": checksum,
                "held_out_seeds": seeds, "steps": summary["steps"]}
    folder = publish_model(model_dir, args.name, card, training, args.destination)
    return ({"name": args.name, "folder": str(folder), "quality": quality, "training": training},
            f"published {args.name} at {folder}\n" + "\n".join(text), 0)
