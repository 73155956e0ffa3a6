"""``kalm imagine``: imagine rollouts of a level's goals with a saved grounded LM, as a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm_envs.collector import REF_EPISODES
from kalm_envs.dataset_specs import get_spec, published_id
from kalm_envs.minari_io import read_metadata
from kalm_envs.verify import verify_dataset
from kalm_gen.imagine import DEFAULT_BATCH_SIZE
from kalm_gen.imagine_dataset import IMAGINED_LEVELS, STATE_SOURCES, write_imagined_dataset

HELP = "imagine rollouts for a level's goals with a grounded LM and write them as a Minari dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=path_argument,
                        help="a published grounded model or a folder written by GroundedLM.save (default: the "
                             "model the level's published imagined spec names)")
    parser.add_argument("--level", choices=IMAGINED_LEVELS, required=True)
    parser.add_argument("--episodes", type=int, help="rollouts (default: the published spec's 2000)")
    parser.add_argument("--seed", type=int, help="episode i imagines the task of env.reset(seed + i) "
                                                 "(default: the spec's, as the level's oracle dataset)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rollouts generated together")
    parser.add_argument("--id", help="dataset id (default: the level's published one, "
                                     "kalm/clevr-robot/imagined-<level>-vN)")
    parser.add_argument("--drop-invalid", action="store_true",
                        help="drop rollouts cut at a non-finite or out-of-workbench state")
    add_sampling_arguments(parser)
    parser.add_argument("--max-steps", type=int, help="steps per rollout, at most the level's steps "
                                                      "(default: that limit, 1 on easy and 50 on the others)")
    parser.add_argument("--states", choices=STATE_SOURCES, default="model",
                        help="where next states come from: the model's state head (imagination, the default) or "
                             "the simulator (closed-loop runs of the model's actions: the bound of a perfect "
                             "state head)")
    parser.add_argument("--min-goal-confidence", type=float, default=0.0, metavar="P",
                        help="goal first: imagine only the tasks whose goal the goal head names with probability "
                             "at least P (the generator abstains on the others; default 0: every task)")
    parser.add_argument("--ref-episodes", type=int, default=REF_EPISODES,
                        help="random-policy and oracle episodes behind the reference scores")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for the reference scores")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a busy "
                                                    "machine 1 can be several times faster for small batches)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    set_threads(args.threads)
    spec = get_spec(published_id("imagined", args.level))
    dataset_id = spec.id if args.id is None else args.id
    model = Path(spec.model) if args.model is None else args.model
    path = write_imagined_dataset(
        model, args.level, episodes=args.episodes, seed=args.seed, batch_size=args.batch_size,
        dataset_id=dataset_id, drop_invalid=args.drop_invalid, temperature=args.temperature,
        sample_seed=args.sample_seed, max_steps=args.max_steps, ref_episodes=args.ref_episodes,
        workers=args.workers, progress=True, states=args.states, min_goal_confidence=args.min_goal_confidence,
    )
    report = verify_dataset(dataset_id)
    metadata = read_metadata(dataset_id)
    kalm = metadata["kalm"]
    counts = kalm["counts"]
    summary = {
        "id": dataset_id, "path": str(path), "level": args.level, "episodes": report.episodes,
        "steps": report.steps, "generated": counts["generated"], "invalid": counts["invalid"],
        "dropped": counts["dropped"], "success_rate": kalm["success_rate"],
        "ref_scores": [metadata.get("ref_min_score"), metadata.get("ref_max_score")],
        "model_sha256": kalm["generator"]["model_sha256"], "verified": report.ok,
    }
    abstained = kalm["generation"].get("abstained", 0)
    lines = [
        *([f"abstained on {abstained} tasks whose goal the model reads with confidence below "
           f"{args.min_goal_confidence:g}"] if abstained else []),
        f"imagined {counts['generated']} rollouts of {args.level} goals: {counts['succeeded']} reach the goal, "
        f"{counts['invalid']} cut at an invalid state, {counts['dropped']} dropped",
        f"wrote {dataset_id} ({report.episodes} episodes, {report.steps} steps, success rate "
        f"{kalm['success_rate']:.1%}) at {path}",
        report.table(),
    ]
    return summary, "\n".join(lines), 0 if report.ok else 1


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--temperature`` and ``--sample-seed``: how the grounded LM's actions are chosen."""
    parser.add_argument("--temperature", type=float,
                        help="0: greedy actions; T > 0: actions drawn from softmax(logits / T) (default: the "
                             "level's imagined spec's, 1 on rephrase and hard, 0 on easy)")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the action sampling")


def set_threads(threads: int | None) -> None:
    """Apply a ``--threads`` option (None: leave torch's default)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads} must be at least 1")
        import torch

        torch.set_num_threads(threads)
