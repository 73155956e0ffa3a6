"""``kalm goal-probe``: does a language model read novel wordings of a goal better than the
learner's instruction encoder? (:mod:`kalm_gen.goal_probe`)

With ``--policy DIR`` a trained learner also runs the rephrase level on the benchmark's
evaluation episodes with every instruction translated by each reader into a train wording of the
goal it names (:meth:`kalm_gen.goal_probe.GoalReader.translate`), next to its own reading and to
a perfect reader's (the true goal's train wording).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kalm.commands import add_json_flag, path_argument
from kalm.commands.imagine import set_threads
from kalm_envs.language import parse_instruction
from kalm_envs.text_encoders import DEFAULT_ENCODER, ENCODER_NAMES, make_encoder
from kalm_envs.validation import check_count, check_int
from kalm_gen.base_model import DEFAULT_BASE_MODEL
from kalm_gen.goal_probe import (
    POLICY_LEVEL, GoalProbeConfig, GoalReader, markdown_table, probe_encoder, probe_language_model,
    read_oracle_episodes, train_wording,
)
from kalm_gen.published import resolve_model

BASE_READERS = ("lora", "frozen")
HELP = ("how well a language model (trained with LoRA on the train wordings, or a grounded model's "
        "frozen states) and instruction encoders name the goal of unseen rephrase wordings")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL,
                        help=f"base LM whose reader learns with LoRA (default {DEFAULT_BASE_MODEL}; a local "
                             "model folder or .gguf file)")
    parser.add_argument("--num-layers", type=int, nargs="*", default=[12],
                        help="one reader per depth: keep the base's first N decoder layers (0: all of them; "
                             "none given: no base-model reader)")
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the readers' training and samples")
    parser.add_argument("--policy", action="append", default=[], type=path_argument, metavar="DIR",
                        help="a trained learner (kalm train's folder) to run on rephrase with each reader's "
                             "translations (repeatable)")
    parser.add_argument("--episodes", type=int, default=200,
                        help="rephrase evaluation episodes of --policy (the benchmark's, evaluation seed 0)")
    parser.add_argument("--oracle-data", type=int, metavar="N",
                        help="write, per reader, kalm/bounds/read-oracle-rephrase-<reader>-v0: the rephrase "
                             "oracle dataset's first N tasks run by the oracle towards the goal the reader names")
    parser.add_argument("--workers", type=int, default=1, help="processes for the oracle's episodes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add_json_flag(parser)


class TranslatedPolicy:
    """A learner's policy acting on ``translate(instruction)`` in place of each instruction."""

    def __init__(self, policy: Any, translate: Callable[[str], str]) -> None:
        self.policy, self.translate = policy, translate
        self.label = getattr(policy, "label", "policy")

    def act_batch(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.policy.act_batch([{**o, "instruction": self.translate(o["instruction"])} for o in observations])

    def reseed(self, seed: int) -> None:
        """Reseed the wrapped policy's draws, where it draws (as :func:`evaluate_policy` does)."""
        if hasattr(self.policy, "reseed"):
            self.policy.reseed(seed)


def true_goal_wording(text: str) -> str:
    """The first train wording of the goal ``text`` words (a perfect reader's translation)."""
    return train_wording(parse_instruction(text))


def policy_success(directory: Path, readers: Sequence[GoalReader], episodes: int) -> dict[str, float]:
    """Rephrase success rate (0..1) of the policy in ``directory`` on its own reading, on each
    reader's translations and on the true goal's wording; the same episodes and draws for all."""
    from kalm_rl.evaluation import evaluate_policy
    from kalm_rl.policy import load_policy

    policy = load_policy(directory)
    translations: dict[str, Callable[[str], str]] = {
        "own reading": lambda text: text, **{r.name: r.translate for r in readers}, "true goal": true_goal_wording}
    return {name: evaluate_policy(TranslatedPolicy(policy, translate), POLICY_LEVEL, episodes).success_rate
            for name, translate in translations.items()}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    config = GoalProbeConfig(steps=args.steps, eval_texts=args.eval_texts, seed=args.seed)
    depths = [check_int(n, "--num-layers", 0) for n in args.num_layers]
    check_int(args.lora_rank, "--lora-rank", 1)
    check_count(args.episodes, "--episodes")
    if args.oracle_data is not None:
        check_count(args.oracle_data, "--oracle-data")
    check_int(args.workers, "--workers", 1)
    for directory in args.policy:
        if not directory.is_dir():
            raise FileNotFoundError(f"--policy folder {str(directory)!r} does not exist")
    encoders = [make_encoder(name) for name in dict.fromkeys(args.encoder or [DEFAULT_ENCODER])]
    models = [resolve_model(name) for name in args.model]  # a bad name fails before any training
    set_threads(args.threads)
    from kalm_gen.grounded_lm import GroundedLM, GroundedLMConfig

    probes = [probe_encoder(encoder, config) for encoder in encoders]
    for depth in depths:
        model = GroundedLM.from_config(GroundedLMConfig(
            base_model=args.base_model, lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank,
            num_layers=depth or None,
        ), seed=args.seed)
        layers = len(model._causal_lm().get_decoder().layers)
        if "frozen" in args.base_readers:  # first: the LoRA reader changes the model
            probes.append(probe_language_model(model, f"{args.base_model}, {layers} layers (frozen)",
                                               train_lm=False, config=config))
        if "lora" in args.base_readers:
            probes.append(probe_language_model(model, f"{args.base_model}, {layers} layers, LoRA {args.lora_rank}",
                                               train_lm=True, config=config))
    for name, folder in zip(args.model, models, strict=True):
        probes.append(probe_language_model(GroundedLM.load(folder), f"{name} (frozen)", train_lm=False, config=config))
    results = [result for result, _ in probes]
    report: dict[str, Any] = {"config": config.__dict__, "rows": [r.to_dict() for r in results]}
    text = markdown_table(results)
    if args.oracle_data:
        report["oracle_data"] = {dataset_id: stats for dataset_id, stats in
                                 (write_read_oracle(reader, args.oracle_data, args.workers) for _, reader in probes)}
        text += "\n\n" + "\n".join(
            f"{dataset_id}: {s['episodes']} episodes of {s['tasks']} tasks, goal named right {s['named_right']:.1%}, "
            f"true goal reached {s['success_rate']:.1%}" for dataset_id, s in report["oracle_data"].items())
    if args.policy:
        readers = [reader for _, reader in probes]
        success = {str(directory): policy_success(directory, readers, args.episodes) for directory in args.policy}
        report["policies"] = {"level": POLICY_LEVEL, "episodes": args.episodes, "success": success}
        text += "\n\n" + policy_table(success, args.episodes)
    return report, text, 0


def read_oracle_id(reader: GoalReader) -> str:
    """``kalm/bounds/read-oracle-rephrase-<reader>-v0``, the reader's name as lowercase words."""
    slug = re.sub(r"[^a-z0-9]+", "-", reader.name.lower()).strip("-")
    return f"kalm/bounds/read-oracle-{POLICY_LEVEL}-{slug}-v0"


def write_read_oracle(reader: GoalReader, episodes: int, workers: int) -> tuple[str, dict[str, Any]]:
    """Write :func:`~kalm_gen.goal_probe.read_oracle_episodes` of ``reader`` as a Minari dataset
    (with its figures and reference scores over 100 random and oracle episodes); its id and figures."""
    import tempfile

    from kalm_envs.collector import REF_SEED_OFFSET, reference_scores
    from kalm_envs.dataset_specs import get_spec, package_version, published_id
    from kalm_envs.minari_io import write_dataset
    from kalm_envs.registration import ENV_IDS

    dataset_id = read_oracle_id(reader)
    run, stats = read_oracle_episodes(reader, episodes, workers)
    with tempfile.TemporaryDirectory() as work:
        # the reference episodes of the rephrase oracle dataset, whose tasks these are
        scores = reference_scores(POLICY_LEVEL, get_spec(published_id("oracle", POLICY_LEVEL)).seed + REF_SEED_OFFSET,
                                  workers, Path(work))
    provenance = {"source": "read-oracle", "level": POLICY_LEVEL, "reader": reader.name, **stats,
                  "kalm_gym_version": package_version(),
                  "behaviour": "kalm_gen.goal_probe.read_oracle_episodes: the scripted oracle pushes towards the "
                               "goal the reader names; rewards and success are the true goal's"}
    write_dataset(dataset_id, run, ENV_IDS[POLICY_LEVEL],
                  f"The scripted oracle acting on the goal that {reader.name} reads in CLEVR-Robot rephrase wordings.",
                  provenance, scores, algorithm_name="ReadOracle")
    return dataset_id, stats


def policy_table(success: Mapping[str, Mapping[str, float]], episodes: int) -> str:
    """Success % of each policy (a column) per reading (a row), with the mean and standard error
    over the policies when there are several."""
    policies = list(success)
    readings = list(next(iter(success.values())))
    header = f"| {POLICY_LEVEL} success, {episodes} episodes | " + " | ".join(policies)
    header += " | mean ± s.e. |" if len(policies) > 1 else " |"
    lines = [header, "|---|" + "---:|" * (len(policies) + (len(policies) > 1))]
    for reading in readings:
        rates = np.array([success[p][reading] for p in policies]) * 100
        cells = [f"{rate:.1f}" for rate in rates]
        if len(policies) > 1:
            cells.append(f"{rates.mean():.1f} ± {rates.std(ddof=1) / np.sqrt(len(rates)):.1f}")
        lines.append(f"| {reading} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
