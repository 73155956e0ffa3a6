"""How good a grounded LM's imagination is (``kalm imagine-eval``).

Per level, on tasks drawn as for the imagined datasets (:func:`kalm_gen.imagine.level_tasks`),
rollouts are imagined (actions picked as the level's imagined spec picks them, or at a given
temperature) and measured:

| metric | meaning |
|---|---|
| ``goal_match_rate`` | the level's predicate (``is_success``) holds in the rollout's final generated state |
| ``replay_match_rate`` | the generated actions, replayed open-loop in the real env from the same initial state and goal, reach the goal |
| ``state_error_mean`` / ``state_error_max`` | per-step error between generated and replayed states: mean distance (m) of the five ball centres, averaged / maximised over all replayed steps |
| ``out_of_workbench_rate`` | rollouts cut at an invalid state (see :mod:`kalm_gen.imagine`) |
| ``wall_crossing_rate`` | rollouts with a generated ball centre beyond the walls' limits (x +-0.47, y -0.17..0.57 m) by more than 2 cm where the ball did not start: a bounded state head keeps every ball in the box, so this is what shows a ball pushed through a wall |

Explanation (rollout -> text) is measured on REAL episodes the model did not train on (by
convention the last episodes of a dataset, see :func:`held_out_episodes`): the instruction is
greedily decoded after ``"\\nInstruction:"`` with the KV cache, parsed with
:func:`kalm_envs.language.parse_instruction` and compared with the episode's true goal. A
goal-first model explains with its goal head instead, and a model with an explanation head with
that (:func:`head_explanations`: the train wording of the relation named at the same position);
the report says which (``source``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kalm_envs.dataset_specs import imagined_temperature
from kalm_envs.goals import Goal
from kalm_envs.language import parse_instruction
from kalm_envs.replay import replay_actions
from kalm_envs.rollout import Episode
from kalm_gen.diagnostics import (
    action_agreement,
    beyond_walls,
    error_by_horizon,
    explanation_parts,
    one_step_errors,
)
from kalm_gen.goal_fields import clause_fields_of, head_targets, named_confidence, named_fields, relation_of
from kalm_gen.imagine import (
    DEFAULT_BATCH_SIZE,
    ImaginationTasks,
    ImaginedEpisode,
    act_in_simulator,
    imagine_tasks,
    level_tasks,
)
from kalm_gen.sequences import TEXT, explain_prefix

QUALITY_SEED = 3_000_000  # tasks far from the datasets' seeds (0.., 1000000.., refs 11000000..)
DEFAULT_MAX_NEW_TOKENS = 128
ROLLOUT_KEYS = (
    "episodes", "goal_match_rate", "replay_match_rate", "state_error_mean", "state_error_max",
    "out_of_workbench_rate", "mean_length",
)
EXPLANATION_KEYS = ("episodes", "accuracy", "parse_rate", "examples")


def replay_rollouts(level: str, tasks: ImaginationTasks, rollouts: Sequence[Episode]) -> dict[str, Any]:
    """Replay each rollout's actions in the real env with its task's goal, wording and initial
    state (:func:`kalm_envs.replay.replay_actions`, which says what the result holds)."""
    return replay_actions(level, tasks.goals, tasks.instructions, tasks.initial_states, rollouts)


def goal_logits_at_goal_slots(model: Any, sequences: Sequence[Any], batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """Goal first: ``(N, W)`` float32 goal-head logits at the goal slot of each of ``sequences``
    (:class:`~kalm_gen.sequences.Sequence`, each with one goal slot), on the CPU."""
    hidden = model.goal_slot_hidden(list(sequences), batch_size)
    with torch.no_grad():
        return model.goal_head(hidden.to(next(model.parameters()).device)).float().cpu()


def named_at_goal_slots(model: Any, sequences: Sequence[Any], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Goal first: ``(N, F)`` int64 fields the goal head names at the goal slot of each of
    ``sequences``; ``F`` is 3, or 9 for a clause-list head."""
    return named_fields(goal_logits_at_goal_slots(model, sequences, batch_size), model.goal_field_sizes).numpy()


def task_prompts(model: Any, tasks: ImaginationTasks) -> list[Any]:
    """Each task's rollout prompt up to its goal slot: the wording, then the initial state."""
    from kalm_gen.sequences import rollout_sequence

    no_actions = np.zeros(0, dtype=np.int64)
    return [rollout_sequence(model.tokenize, text, state[None], no_actions)
            for text, state in zip(tasks.instructions, tasks.initial_states, strict=True)]


def reading_confidence(model: Any, tasks: ImaginationTasks, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Goal first: ``(N,)`` float32 probability the goal head gives the goal it names for each
    task (:func:`~kalm_gen.goal_fields.named_confidence`), from its wording and initial state."""
    logits = goal_logits_at_goal_slots(model, task_prompts(model, tasks), batch_size)
    return named_confidence(logits, model.goal_field_sizes).numpy()


def goal_naming(model: Any, tasks: ImaginationTasks, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Goal first: how often the goal head names the task's goal from its wording and initial
    state (what a rollout acts on). ``tasks``: those whose goal has fields for the head (one
    relation or a move; for a clause-list head also pairs and triples); ``right``: the share of
    them named right in every field the goal has (a move goal: ball A and direction; a clause
    list: each clause, in the goal's order, and the end of the list)."""
    named = named_at_goal_slots(model, task_prompts(model, tasks), batch_size)
    truth = head_targets(np.array([clause_fields_of(goal) for goal in tasks.goals]).reshape(len(named), -1),
                         model.config.goal_clauses)
    has_fields = truth[:, 0] >= 0
    right = ((named == truth) | (truth < 0)).all(1)[has_fields]  # a move goal has no ball B
    return {"tasks": int(has_fields.sum()), "right": float(right.mean()) if right.size else None}


def rollout_quality(
    model: Any, level: str, episodes: int = 50, seed: int = QUALITY_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE, max_steps: int | None = None, diagnose: bool = False,
    temperature: float | None = None, sample_seed: int = 0,
) -> dict[str, Any]:
    """The rollout metrics of the module docstring on ``episodes`` tasks of ``level``; rollouts
    stop at ``max_steps`` (default: the level's steps, 1 push on easy, 50 on the others). Actions
    are greedy at ``temperature`` 0, else drawn at that temperature with ``sample_seed`` (as
    :func:`~kalm_gen.imagine.imagine_tasks` does), in the imagined and the closed-loop runs; None
    takes the level's imagined spec's (:func:`~kalm_envs.dataset_specs.imagined_temperature`). With
    ``diagnose``, ``error_by_horizon`` and ``one_step`` (:mod:`kalm_gen.diagnostics`) too, and
    ``goal_matched_replay``: how many rollouts reach the goal in their own states and the share of
    those the simulator confirms (the precision of the model's claim, which is what a filter on
    imagined success trusts), and ``closed_loop``: the success rate and mean length of the model's
    actions run as a policy in the simulator (:func:`~kalm_gen.imagine.act_in_simulator`),
    which is what its rollouts would reach with a perfect state head. A goal-first model's row
    also holds ``goal_naming`` (:func:`goal_naming`)."""
    tasks = level_tasks(level, episodes, seed)
    temperature = imagined_temperature(level) if temperature is None else temperature
    acting = {"max_steps": max_steps, "batch_size": batch_size, "temperature": temperature, "seed": sample_seed}
    rollouts: list[ImaginedEpisode] = imagine_tasks(model, tasks, **acting)
    replay = replay_rollouts(level, tasks, rollouts)
    row = {
        "level": level,
        "seed": seed,
        "temperature": temperature,
        "episodes": len(rollouts),
        "goal_match_rate": float(np.mean([e.success for e in rollouts])),
        "replay_match_rate": replay["replay_match_rate"],
        "state_error_mean": replay["state_error_mean"],
        "state_error_max": replay["state_error_max"],
        "out_of_workbench_rate": float(np.mean([e.invalid for e in rollouts])),
        "mean_length": float(np.mean([e.length for e in rollouts])),
        "wall_crossing_rate": float(np.mean([beyond_walls(e) for e in rollouts])),
    }
    if model.goal_head is not None:
        row["goal_naming"] = goal_naming(model, tasks, batch_size)
    if diagnose:
        row["error_by_horizon"] = error_by_horizon(replay["replayed"], rollouts)
        row["one_step"] = one_step_errors(level, rollouts)
        claimed = [hit for hit, e in zip(replay["replay_success"], rollouts) if e.success]
        row["goal_matched_replay"] = {"rollouts": len(claimed),
                                      "replay_match_rate": float(np.mean(claimed)) if claimed else None}
        acted = act_in_simulator(model, tasks, **acting)
        row["closed_loop"] = {"success_rate": float(np.mean([e.success for e in acted])),
                              "mean_length": float(np.mean([e.length for e in acted]))}
    return row


def _explain_prefix(model: Any, episode: Episode) -> dict[str, np.ndarray]:
    sequence = explain_prefix(model.tokenize, episode.observations, episode.actions).build()
    return {"token_ids": sequence.token_ids, "kinds": sequence.kinds.astype(np.int64),
            "states": sequence.states, "actions": sequence.actions}


def explain_episodes(
    model: Any, episodes: Sequence[Episode], batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy rollout -> instruction text of each episode (KV cache; left-padded batches; a row
    that produced ``eos`` keeps decoding with the batch but its further tokens are discarded)."""
    from transformers import DynamicCache

    from kalm_gen.grounded_lm import evaluating

    device = next(model.parameters()).device
    texts: list[str] = []
    with evaluating(model):
        for start in range(0, len(episodes), batch_size):
            prefixes = [_explain_prefix(model, e) for e in episodes[start:start + batch_size]]
            width = max(len(p["token_ids"]) for p in prefixes)
            rows = len(prefixes)
            arrays = {
                "token_ids": np.zeros((rows, width), np.int64), "kinds": np.full((rows, width), TEXT, np.int64),
                "states": np.zeros((rows, width, 10), np.float32), "actions": np.zeros((rows, width), np.int64),
            }
            mask = np.zeros((rows, width), np.int64)
            for row, prefix in enumerate(prefixes):
                size = len(prefix["token_ids"])
                for key in arrays:
                    arrays[key][row, width - size:] = prefix[key]
                mask[row, width - size:] = 1
            tensors = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
            attention = torch.as_tensor(mask, device=device)
            embeddings = model.embed(tensors["token_ids"], tensors["kinds"], tensors["states"], tensors["actions"])
            out = model.decode(embeddings, attention, past_key_values=DynamicCache(),
                               position_ids=(attention.cumsum(-1) - 1).clamp(min=0))
            generated = [[] for _ in range(rows)]
            finished = np.zeros(rows, dtype=bool)
            for _ in range(max_new_tokens):
                tokens = model.text_logits(out.last_hidden_state[:, -1]).argmax(-1)
                for row, token in enumerate(tokens.tolist()):
                    if finished[row]:
                        continue
                    if token == model.eos_id:
                        finished[row] = True
                    else:
                        generated[row].append(token)
                if finished.all():
                    break
                attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
                step_ids = tokens[:, None]
                zeros = torch.zeros_like(step_ids)
                embeddings = model.embed(step_ids, zeros + TEXT, torch.zeros(rows, 1, 10, device=device), zeros)
                out = model.decode(embeddings, attention, past_key_values=out.past_key_values,
                                   position_ids=(attention.cumsum(-1) - 1)[:, -1:])
            texts += [model.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    return texts


def head_explanations(model: Any, episodes: Sequence[Episode], batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
    """Each episode's explanation as the train wording of the goal a head names at the end of the
    explain prompt: the explanation head's relation (:mod:`kalm_gen.explain_head`) when the model
    has one, else the goal head's (goal first; an empty text when it names no goal: a ball
    related to itself)."""
    from kalm_gen.explain_head import explained_goals
    from kalm_gen.goal_probe import train_wording

    if model.explain_head is not None:
        goals = explained_goals(model, [(e.observations, e.actions) for e in episodes], batch_size)
    else:
        prefixes = [explain_prefix(model.tokenize, e.observations, e.actions).build() for e in episodes]
        goals = [relation_of(fields) for fields in named_at_goal_slots(model, prefixes, batch_size)]
    return ["" if goal is None else train_wording(goal) for goal in goals]


def explanation_source(model: Any) -> str:
    """What explains a model's rollouts: ``"explain head"``, ``"goal head"`` or ``"text"``."""
    return "explain head" if model.explain_head is not None else "goal head" if model.goal_head is not None else "text"


def score_explanations(texts: Sequence[str], episodes: Sequence[Episode], examples: int = 3) -> dict[str, Any]:
    """Accuracy (parsed goal == true goal) and parse rate of explanation ``texts``."""
    if len(texts) != len(episodes):
        raise ValueError(f"{len(texts)} texts for {len(episodes)} episodes")
    parsed = [parse_instruction(text) for text in texts]
    truth = [Goal.from_array(e.goal) for e in episodes]
    correct = [p is not None and p == g for p, g in zip(parsed, truth, strict=True)]
    n = max(len(texts), 1)
    return {
        "episodes": len(texts),
        "accuracy": sum(correct) / n,
        "parse_rate": sum(p is not None for p in parsed) / n,
        "examples": [{"instruction": e.instruction, "generated": t, "correct": c}
                     for e, t, c in list(zip(episodes, texts, correct, strict=True))[:examples]],
    }


def explanation_quality(
    model: Any, episodes: Sequence[Episode], batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Explanation accuracy of the model on real ``episodes``; see :func:`score_explanations`."""
    if not episodes:
        raise ValueError("no episodes to explain")
    return score_explanations(explain_episodes(model, episodes, batch_size, max_new_tokens), episodes)


def held_out_episodes(dataset_id: str, count: int) -> list[Episode]:
    """The last ``count`` episodes of a dataset: by convention held out of the LM's training."""
    from kalm_envs.dataset_checks import read_dataset
    from kalm_envs.rollout import unpack_episodes

    if count < 1:
        raise ValueError(f"count {count} must be at least 1")
    return unpack_episodes(read_dataset(dataset_id)[1])[-count:]


def imagination_quality(
    model: Any, levels: Sequence[str] = ("rephrase", "easy", "hard"), episodes: int = 50,
    seed: int = QUALITY_SEED, batch_size: int = DEFAULT_BATCH_SIZE,
    real_episodes: Sequence[Episode] | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    diagnose: bool = False, temperature: float | None = None, sample_seed: int = 0,
) -> dict[str, Any]:
    """Rollout metrics per level (actions chosen as :func:`rollout_quality` says) and, given
    real episodes, explanation metrics; with
    ``diagnose`` the figures of :mod:`kalm_gen.diagnostics` as well (the explanation's parts and
    the action agreement on the real episodes)."""
    report: dict[str, Any] = {"levels": {
        level: rollout_quality(model, level, episodes, seed, batch_size, diagnose=diagnose,
                               temperature=temperature, sample_seed=sample_seed)
        for level in levels
    }, "sample_seed": sample_seed}
    if real_episodes:
        source = explanation_source(model)
        if source == "text":
            texts = explain_episodes(model, real_episodes, batch_size, max_new_tokens)
        else:
            texts = head_explanations(model, real_episodes, batch_size)
        report["explanation"] = {**score_explanations(texts, real_episodes), "source": source}
        if diagnose:
            report["explanation"]["parts"] = explanation_parts(texts, real_episodes)
            report["action_agreement"] = action_agreement(model, real_episodes, batch_size)
            # the same one-step comparison on real steps: what the simulator itself gives when it
            # restarts from ball centres alone (no spins, no contacts)
            report["one_step_floor"] = one_step_errors("train", real_episodes)
    return report
