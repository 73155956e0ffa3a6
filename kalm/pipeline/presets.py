"""Pipeline presets: every setting of every stage of ``kalm run``, as plain nested dicts.

A preset maps each stage (see :data:`kalm.pipeline.stages.STAGES`) to its settings; ``--set
stage.key=value`` replaces one of them. Sizes are counts of episodes (per dataset or per level),
grounding steps (optimizer steps of ``batch_size`` sequences) and learner updates (gradient steps
of ``batch_size`` transitions).

- ``smoke``: a tiny random LM and tiny data; the whole pipeline in well under 3 minutes on a
  CPU (the test suite runs it).
- ``default``: the published grounded SmolLM2-135M models imagine the novel levels, each level
  with the model its published imagined spec names (``ground.published``, see
  :mod:`kalm_gen.published`); no grounding. Sized to finish within 20 minutes on 2 cores: 200
  oracle and imagined episodes on rephrase and hard (up to 50 pushes each), 2,000 on easy (one
  push each).
- ``scratch``: the default's sizes, but SmolLM2-135M with LoRA is grounded from scratch on the
  run's real data (``ground.steps`` steps) and imagines every level.
- ``paper``: the KALM paper's data sizes (10,000 real episodes; 2,000 imagined and oracle
  episodes per level, the published specs' counts), three seeds; meant for a GPU.

The settings of :data:`PER_LEVEL_SETTINGS` take one value for every imagined level or a
``{level: value}`` mapping of all of them (:func:`per_level`), e.g. ``--set
'imagine.episodes={"rephrase": 50, "easy": 500, "hard": 50}'``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kalm.assignments import parse_assignment
from kalm_envs.dataset_specs import get_spec, published_id
from kalm_gen.imagine_dataset import IMAGINED_LEVELS

PER_LEVEL_SETTINGS: frozenset[tuple[str, str]] = frozenset({
    ("data", "oracle_episodes"), ("ground", "published"), ("imagine", "episodes"),
})
"""``(stage, key)`` of the settings that may differ per imagined level: an easy episode is one push
and the others up to 50, and the published imagined specs name a model per level."""
SPEC_MODELS: dict[str, str] = {level: get_spec(published_id("imagined", level)).model for level in IMAGINED_LEVELS}
"""Per imagined level, the published model its published imagined spec is built from."""
DEMO_EPISODES: dict[str, int] = {"rephrase": 200, "easy": 2000, "hard": 200}
"""Oracle and imagined episodes per level of the default and scratch presets."""

SMOKE: dict[str, dict[str, Any]] = {
    "data": {"real_episodes": 40, "oracle_episodes": 10, "ref_episodes": 2, "workers": 1},
    "ground": {
        "published": "", "base_model": "tiny", "finetune": "full", "lora_rank": 16, "head_hidden": 32, "num_layers": 0, "steps": 30,
        "batch_size": 6, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10, "checkpoint_every": 10,
        "val_fraction": 0.1, "held_out": 4, "seed": 0,
    },
    "imagine": {"episodes": 8, "batch_size": 16, "ref_episodes": 2, "quality_episodes": 4, "workers": 1},
    "train": {
        "algorithms": ["bc"], "seeds": [0], "updates": 300, "batch_size": 128, "real_fraction": 0.5,
        "imagined_episodes": "all", "encoder": "ordered", "params": {"hidden": [64, 64]}, "checkpoint_every": 100,
        "validation_fraction": 0.0, "select": "last", "device": "cpu",
    },
    "evaluate": {"episodes": 10, "seed": 0, "workers": 1},
}

SCRATCH: dict[str, dict[str, Any]] = {
    "data": {"real_episodes": 1000, "oracle_episodes": dict(DEMO_EPISODES), "ref_episodes": 20, "workers": 2},
    "ground": {
        "published": "", "base_model": "smollm2", "finetune": "lora", "lora_rank": 16, "head_hidden": 256, "num_layers": 12, "steps": 150,
        "batch_size": 8, "lr": 5e-4, "warmup_steps": 10, "eval_every": 75, "checkpoint_every": 25,
        "val_fraction": 0.03, "held_out": 20, "seed": 0,
    },
    "imagine": {"episodes": dict(DEMO_EPISODES), "batch_size": 25, "ref_episodes": 20, "quality_episodes": 20, "workers": 2},
    "train": {
        "algorithms": ["bc", "cql"], "seeds": [0, 1], "updates": 3000, "batch_size": 256, "real_fraction": 0.5,
        "imagined_episodes": "successful", "encoder": "ordered", "params": {}, "checkpoint_every": 500,
        "validation_fraction": 0.0, "select": "last", "device": "cpu",
    },
    "evaluate": {"episodes": 100, "seed": 0, "workers": 2},
}

DEFAULT: dict[str, dict[str, Any]] = copy.deepcopy(SCRATCH)
DEFAULT["ground"]["published"] = dict(SPEC_MODELS)

PAPER: dict[str, dict[str, Any]] = {
    "data": {"real_episodes": 10_000, "oracle_episodes": 2000, "ref_episodes": 100, "workers": 2},
    "ground": {
        "published": "", "base_model": "smollm2", "finetune": "lora", "lora_rank": 16, "head_hidden": 256, "num_layers": 0, "steps": 10_000,
        "batch_size": 16, "lr": 2e-4, "warmup_steps": 200, "eval_every": 500, "checkpoint_every": 500,
        "val_fraction": 0.02, "held_out": 100, "seed": 0,
    },
    "imagine": {"episodes": 2000, "batch_size": 64, "ref_episodes": 100, "quality_episodes": 100, "workers": 2},
    "train": {
        "algorithms": ["bc", "cql", "iql", "bcq"], "seeds": [0, 1, 2], "updates": 50_000, "batch_size": 256,
        "real_fraction": 0.5, "imagined_episodes": "all", "encoder": "ordered", "params": {}, "checkpoint_every": 1000,
        "validation_fraction": 0.0, "select": "last", "device": "cpu",
    },
    "evaluate": {"episodes": 200, "seed": 0, "workers": 2},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"smoke": SMOKE, "default": DEFAULT, "scratch": SCRATCH, "paper": PAPER}


def get_preset(name: str) -> dict[str, dict[str, Any]]:
    """A fresh copy of preset ``name``; ``ValueError`` naming it and the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def per_level(value: Any, name: str) -> dict[str, Any]:
    """A setting of :data:`PER_LEVEL_SETTINGS` as ``{level: value}`` in imagined-level order: one
    value is every level's; a mapping must name exactly the imagined levels (``ValueError``
    naming ``name`` and the levels otherwise)."""
    if not isinstance(value, dict):
        return {level: value for level in IMAGINED_LEVELS}
    if set(value) != set(IMAGINED_LEVELS):
        raise ValueError(f"{name} {json.dumps(value)} must give a value for each of the levels "
                         f"{list(IMAGINED_LEVELS)}, and for no other key")
    return {level: value[level] for level in IMAGINED_LEVELS}


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"stage.key=value"`` -> ``(stage, key, value)``; the value is read as JSON when it can be
    (``ground.steps=50``, ``train.algorithms=["bc"]``), else kept as a string."""
    name, value = parse_assignment(text) or ("", None)
    stage, dot, key = name.partition(".")
    if not dot or not stage or not key:
        raise ValueError(f"--set {text!r} is not STAGE.KEY=VALUE (e.g. evaluate.episodes=50)")
    return stage, key, value


def apply_override(settings: dict[str, dict[str, Any]], text: str) -> None:
    """Set one ``stage.key=value`` in ``settings``; ``ValueError`` naming an unknown stage or key,
    or a value of another type than the preset's (an int where a float is expected is fine; a
    setting of :data:`PER_LEVEL_SETTINGS` takes one value or a mapping, whichever the preset has)."""
    stage, key, value = parse_override(text)
    if stage not in settings:
        raise ValueError(f"--set {text!r}: unknown stage {stage!r}; stages: {list(settings)}")
    if key not in settings[stage]:
        raise ValueError(f"--set {text!r}: stage {stage!r} has no setting {key!r}; "
                         f"settings: {sorted(settings[stage])}")
    old = settings[stage][key]
    if (stage, key) in PER_LEVEL_SETTINGS:
        if isinstance(value, dict):
            settings[stage][key] = value  # its levels and values are checked with the other settings
            return
        old = next(iter(old.values())) if isinstance(old, dict) else old
    same_type = isinstance(value, type(old)) and isinstance(value, bool) == isinstance(old, bool)
    if not (same_type or (isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool))):
        raise ValueError(f"--set {text!r}: {stage}.{key} takes a {type(old).__name__} "
                         f"(preset value {json.dumps(old)}), not {json.dumps(value)}")
    settings[stage][key] = value
