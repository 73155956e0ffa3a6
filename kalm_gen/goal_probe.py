"""Does a language model carry a goal from the training wordings to novel ones?

Imagined rollouts can only teach a learner a novel wording that the LM itself understands
better than the learner's own instruction encoder does. This probe measures that premise in
minutes, before hours of grounding.

Every goal of the train and rephrase levels is one relation: ball A, ball B, direction (80
goals). A *goal reader* learns to name the three from the train wordings only, then reads the
rephrase wordings, whose templates never occur in train:

- on a language model (:func:`probe_language_model`): a linear head on the LM's last hidden
  state at the end of the rollout prompt (``"Instruction: <text>\\nRollout:"``, the position the
  grounded LM starts a rollout from), trained with the LM's own LoRA weights
  (``train_lm=True``: what the base model can learn from the train wordings) or on its frozen
  states (``train_lm=False``: what a grounded model already holds);
- on a fixed instruction encoder (:func:`probe_encoder`): the same linear head on the
  encoder's features, the reference of what the learner reads from an instruction.

Accuracies are the share of sampled wordings whose field (or whole goal) the reader names
right; chance is 1/5 for a ball, 1/4 for the direction and 1/80 for the goal. Train accuracy
is measured on wordings the reader was trained on (it shows that the reader learnt); rephrase
accuracy is the transfer.

A trained :class:`GoalReader` also *translates* a wording into a train wording of the goal it
names (:meth:`GoalReader.translate`): ``kalm goal-probe --policy DIR`` runs a trained learner on
the rephrase level with every instruction so translated, the success that imagined data from a
generator acting on this reading could at best teach it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kalm_envs.goals import TRAIN_GOALS, Goal
from kalm_envs.language import instruction_variants
from kalm_envs.separation import level_instructions
from kalm_envs.validation import check_float, check_int, check_seed
from kalm_gen.goal_fields import (
    GOAL_FIELD_SIZES, GOAL_WIDTH, goal_field_loss, goal_fields_of, named_fields, relation_of,
)
from kalm_gen.sequences import rollout_prompt

#: The levels the probe reads: the reader learns on the first, the second measures transfer.
PROBE_LEVELS = ("train", "rephrase")
#: The novel level whose wordings readers translate and act on.
POLICY_LEVEL = "rephrase"
FIELDS = ("ball_a", "ball_b", "direction")
MAX_STEPS = 100_000
MAX_BATCH = 4096


@dataclass(frozen=True)
class GoalProbeConfig:
    """How a goal reader is trained and measured.

    Attributes:
        steps: optimizer steps (AdamW), each on ``batch_size`` train wordings drawn at random.
        batch_size: wordings per step.
        lr: learning rate of a reader that trains a language model's weights (LoRA) with its head.
        head_lr: learning rate of a reader that trains its head alone (on a fixed encoder or a
            frozen model).
        eval_texts: wordings sampled per level for the accuracies (all of them when fewer).
        seed: head initialisation, training draws and evaluation sample.
    """

    steps: int = 150
    batch_size: int = 32
    lr: float = 5e-4
    head_lr: float = 1e-2
    eval_texts: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", 1, MAX_STEPS)
        check_int(self.batch_size, "batch_size", 1, MAX_BATCH)
        check_int(self.eval_texts, "eval_texts", 1)
        check_float(self.lr, "lr", 0.0, 1.0, low_open=True)
        check_float(self.head_lr, "head_lr", 0.0, 1.0, low_open=True)
        check_seed(self.seed, "seed")


@dataclass(frozen=True)
class GoalProbeResult:
    """One reader's accuracies.

    Attributes:
        name: what was read (a model or an encoder).
        accuracy: per level of :data:`PROBE_LEVELS`, the share (0..1) of its sampled wordings
            with each field of :data:`FIELDS` right, and ``goal``: all three right.
        texts: wordings sampled per level.
        seconds: wall time of training and measuring (s).
    """

    name: str
    accuracy: dict[str, dict[str, float]]
    texts: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def goal_fields(goal_numbers: np.ndarray) -> np.ndarray:
    """``(N, 3)`` int64 ball A, ball B and direction of train-goal numbers ``(N,)``."""
    return np.array([TRAIN_GOALS[int(n)].clauses[0] for n in goal_numbers], dtype=np.int64).reshape(-1, 3)


def train_wording(goal: Goal) -> str:
    """The first train wording of ``goal``: what a reader's translation hands a learner."""
    return instruction_variants(goal, "train")[0]


@functools.cache
def _wordings(level: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Every wording of the 80 relation goals at ``level`` and its ``(N, 3)`` fields (built once;
    callers only read them)."""
    texts, numbers = level_instructions(level, max_wordings=10**9)
    fields = goal_fields(numbers)
    fields.setflags(write=False)
    return tuple(texts), fields


class GoalReader:
    """A trained goal reader: a linear head on ``features(texts) -> (B, width)`` (float32)."""

    def __init__(self, name: str, features: Callable[[list[str]], torch.Tensor], head: nn.Linear) -> None:
        self.name, self.features, self.head = name, features, head
        self._translations: dict[str, str] = {}

    def name_goals(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``(N, 3)`` int64 ball A, ball B and direction the reader names for ``texts``."""
        with torch.no_grad():
            return np.concatenate([named_fields(self.head(self.features(list(texts[start:start + batch_size])))).numpy()
                                   for start in range(0, len(texts), batch_size)]).astype(np.int64)

    def translate(self, text: str) -> str:
        """The first train wording of the goal the reader names for ``text`` (``text`` itself when
        it names a ball related to itself, which no goal is); remembered per text."""
        if text not in self._translations:
            goal = relation_of(self.name_goals([text])[0])
            self._translations[text] = text if goal is None else train_wording(goal)
        return self._translations[text]


def _fit_reader(
    name: str, features: Callable[[list[str]], torch.Tensor], width: int, extra: Sequence[nn.Parameter],
    lr: float, config: GoalProbeConfig, progress: bool,
) -> GoalReader:
    """Train a linear head on ``features`` (and ``extra`` weights) to name the goal fields of
    train wordings."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(config.seed)
    head = nn.Linear(width, GOAL_WIDTH)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) / width**0.5)
        head.bias.zero_()
    optimizer = torch.optim.AdamW([*extra, *head.parameters()], lr=lr)
    texts, fields = _wordings("train")
    rng = np.random.default_rng(config.seed)
    for _ in tqdm(range(config.steps), desc=f"goal probe {name}", disable=not progress, leave=False):
        rows = rng.integers(0, len(texts), config.batch_size)
        loss = goal_field_loss(head(features([texts[i] for i in rows])), torch.as_tensor(fields[rows])).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return GoalReader(name, features, head)


def _measure(reader: GoalReader, config: GoalProbeConfig, started: float) -> GoalProbeResult:
    """``reader``'s accuracies on a seeded sample of each level's wordings."""
    accuracy, counts = {}, {}
    for level in PROBE_LEVELS:
        texts, fields = _wordings(level)
        sample = np.sort(np.random.default_rng(config.seed + 1).permutation(len(texts))[:config.eval_texts])
        right = reader.name_goals([texts[i] for i in sample], config.batch_size) == fields[sample]
        accuracy[level] = {**{f: float(right[:, i].mean()) for i, f in enumerate(FIELDS)},
                           "goal": float(right.all(1).mean())}
        counts[level] = int(len(sample))
    return GoalProbeResult(reader.name, accuracy, counts, time.perf_counter() - started)


def probe_encoder(
    encoder: Any, config: GoalProbeConfig | None = None, progress: bool = True,
) -> tuple[GoalProbeResult, GoalReader]:
    """The goal reader on a fixed instruction encoder (:class:`kalm_envs.text_encoders.TextEncoder`):
    its accuracies and the reader."""
    config = config or GoalProbeConfig()
    started = time.perf_counter()

    def features(texts: list[str]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(encoder.encode(texts), dtype=np.float32))

    width = features(["probe"]).shape[-1]
    name = f"encoder {encoder.config().get('name', type(encoder).__name__)}"
    reader = _fit_reader(name, features, width, [], config.head_lr, config, progress)
    return _measure(reader, config, started), reader


def probe_language_model(
    model: Any, name: str, train_lm: bool = True, config: GoalProbeConfig | None = None, progress: bool = True,
) -> tuple[GoalProbeResult, GoalReader]:
    """The goal reader on a :class:`~kalm_gen.grounded_lm.GroundedLM`'s last hidden state at the
    end of the rollout prompt: its accuracies and the reader (which reads with ``model``).

    With ``train_lm`` the model's trainable LM weights (LoRA, or all of them when fully
    fine-tuned) learn with the head, and ``model`` is changed; without, the LM is frozen and left
    as it was. The model is left in eval mode.
    """
    config = config or GoalProbeConfig()
    started = time.perf_counter()
    lm_weights = [p for p in model.lm.parameters() if p.requires_grad] if train_lm else []
    model.train(train_lm)

    def features(texts: list[str]) -> torch.Tensor:
        prompts = [model.tokenize(rollout_prompt(text)) for text in texts]
        length = max(len(p) for p in prompts)
        token_ids = torch.zeros(len(prompts), length, dtype=torch.long)
        mask = torch.zeros(len(prompts), length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            token_ids[row, :len(prompt)] = torch.tensor(prompt)
            mask[row, :len(prompt)] = 1
        with torch.set_grad_enabled(train_lm and torch.is_grad_enabled()):
            embeddings = model._causal_lm().get_input_embeddings()(token_ids)
            hidden = model.decode(embeddings, mask).last_hidden_state
        return hidden[torch.arange(len(prompts)), mask.sum(1) - 1].float()

    width = model._causal_lm().config.hidden_size
    try:
        reader = _fit_reader(name, features, width, lm_weights, config.lr if train_lm else config.head_lr,
                             config, progress)
    finally:
        model.eval()
    return _measure(reader, config, started), reader


def read_oracle_episodes(reader: GoalReader, episodes: int, workers: int = 1) -> tuple[list[Any], dict[str, Any]]:
    """What a generator that reads rephrase wordings as ``reader`` does, and acts and imagines
    perfectly, would hand a learner: the rephrase oracle dataset's first ``episodes`` tasks (its
    seeds and random-push probability), each run by the scripted oracle towards the goal the
    reader names in the simulator. A task whose named goal relates a ball to itself (no goal) gets
    no episode. Episodes record the task's true goal, wording, rewards and success, so
    ``kalm train --imagined-episodes successful`` keeps those that reach it.

    Returns the episodes and ``{"tasks", "episodes", "named_right", "success_rate"}`` (shares
    0..1: of the tasks, the goal named right; of the episodes, the true goal reached)."""
    from kalm_envs.dataset_specs import get_spec, published_id
    from kalm_envs.oracle import oracle_episodes
    from kalm_gen.imagine import level_tasks

    spec = get_spec(published_id("oracle", POLICY_LEVEL))
    tasks = level_tasks(POLICY_LEVEL, episodes, spec.seed)
    named = reader.name_goals(tasks.instructions)
    truth = np.array([goal_fields_of(goal) for goal in tasks.goals])
    goals = [relation_of(fields) for fields in named]
    keep = [i for i, goal in enumerate(goals) if goal is not None]
    pursued = [goals[i].to_array() for i in keep]
    run = oracle_episodes(POLICY_LEVEL, [int(tasks.seeds[i]) for i in keep], spec.epsilon, workers,
                          pursued_goals=pursued)
    return run, {"tasks": episodes, "episodes": len(run), "named_right": float((named == truth).all(1).mean()),
                 "success_rate": float(np.mean([e.success for e in run])) if run else 0.0}


def markdown_table(results: Sequence[GoalProbeResult]) -> str:
    """One row per reader: per level, ball A / ball B / direction / whole goal accuracy (%)."""
    header = "| reader | " + " | ".join(f"{level} {field}" for level in PROBE_LEVELS
                                        for field in ("A", "B", "dir", "goal")) + " | s |"
    lines = [header, "|---|" + "---:|" * (4 * len(PROBE_LEVELS) + 1)]
    for result in results:
        cells = [f"{100 * result.accuracy[level][field]:.1f}" for level in PROBE_LEVELS for field in (*FIELDS, "goal")]
        lines.append(f"| {result.name} | " + " | ".join(cells) + f" | {result.seconds:.0f} |")
    chance_rates = [100 / size for size in GOAL_FIELD_SIZES] + [100 / len(TRAIN_GOALS)]
    chance = "| chance | " + " | ".join([f"{rate:.1f}" for rate in chance_rates] * len(PROBE_LEVELS)) + " | |"
    return "\n".join([*lines, chance])
