"""``kalm goal-probe``: does a language model read novel wordings of a goal better than the
learner's instruction encoder? (:mod:`kalm_gen.goal_probe`)"""

from __future__ import annotations

import argparse
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm.commands.imagine import set_threads
from kalm_envs.text_encoders import DEFAULT_ENCODER, ENCODER_NAMES, make_encoder
from kalm_envs.validation import check_int
from kalm_gen.base_model import DEFAULT_BASE_MODEL
from kalm_gen.published import resolve_model
from kalm_gen.goal_probe import GoalProbeConfig, markdown_table, probe_encoder, probe_language_model

BASE_READERS = ("lora", "frozen")
HELP = ("how well a language model (trained with LoRA on the train wordings, or a grounded model's "
        "frozen states) and instruction encoders name the goal of unseen rephrase wordings")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL,
                        help=f"base LM whose reader learns with LoRA (default {DEFAULT_BASE_MODEL}; a local "
                             "model folder or .gguf file)")
    parser.add_argument("--num-layers", type=int, nargs="*", default=[12],
                        help="one LoRA reader per depth: keep the base's first N decoder layers (0: all of "
                             "them; none given: no base-model reader)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--base-readers", nargs="+", choices=BASE_READERS, default=["lora"],
                        help="how each depth is read: lora (its LoRA weights learn with the head) and/or "
                             "frozen (its pretrained states as they are, the head alone)")
    parser.add_argument("--model", action="append", default=[], type=path_argument, metavar="NAME_OR_DIR",
                        help="also read a grounded model's frozen states (a published name or a folder; "
                             "repeatable)")
    parser.add_argument("--encoder", action="append", default=[], choices=ENCODER_NAMES,
                        help=f"instruction encoder to read (repeatable; default {DEFAULT_ENCODER})")
    parser.add_argument("--steps", type=int, default=GoalProbeConfig.steps, help="training steps of each reader")
    parser.add_argument("--eval-texts", type=int, default=GoalProbeConfig.eval_texts,
                        help="wordings sampled per level for the accuracies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    config = GoalProbeConfig(steps=args.steps, eval_texts=args.eval_texts, seed=args.seed)
    depths = [check_int(n, "--num-layers", 0) for n in args.num_layers]
    check_int(args.lora_rank, "--lora-rank", 1)
    encoders = [make_encoder(name) for name in dict.fromkeys(args.encoder or [DEFAULT_ENCODER])]
    models = [resolve_model(name) for name in args.model]  # a bad name fails before any training
    set_threads(args.threads)
    from kalm_gen.grounded_lm import GroundedLM, GroundedLMConfig

    results = [probe_encoder(encoder, config) for encoder in encoders]
    for depth in depths:
        model = GroundedLM.from_config(GroundedLMConfig(
            base_model=args.base_model, lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank,
            num_layers=depth or None,
        ), seed=args.seed)
        layers = len(model._causal_lm().get_decoder().layers)
        if "frozen" in args.base_readers:  # first: the LoRA reader changes the model
            results.append(probe_language_model(model, f"{args.base_model}, {layers} layers (frozen)",
                                                train_lm=False, config=config))
        if "lora" in args.base_readers:
            results.append(probe_language_model(model, f"{args.base_model}, {layers} layers, LoRA {args.lora_rank}",
                                                train_lm=True, config=config))
    for name, folder in zip(args.model, models, strict=True):
        results.append(probe_language_model(GroundedLM.load(folder), f"{name} (frozen)", train_lm=False, config=config))
    return {"config": config.__dict__, "rows": [r.to_dict() for r in results]}, markdown_table(results), 0
