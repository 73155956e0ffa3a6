"""The work of each stage of ``kalm run``: real and oracle data, grounding, imagination, training,
evaluation.

Each stage is ``work(folder, settings, upstream) -> JSON result`` (see :mod:`kalm.pipeline.cache`)
and runs with ``MINARI_DATASETS_PATH`` pointing at the run's own Minari root. Datasets get ids in
a namespace named after the stage folder that made them (``pipeline/data-<hash12>/real-v0``), so
datasets of other settings never collide. Every piece of work that already exists (a dataset,
a finished grounding or training run) is kept when an interrupted stage runs again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kalm.pipeline.cache import StageRecord, StageWork
from kalm.pipeline.presets import per_level
from kalm_envs import ENV_IDS
from kalm_envs.collector import build_dataset
from kalm_envs.dataset_paths import dataset_dir
from kalm_envs.dataset_specs import NAMESPACE, get_spec, published_id
from kalm_envs.minari_io import read_metadata
from kalm_envs.validation import check_count, check_int, check_seed, check_str
from kalm_gen.imagine_dataset import IMAGINED_LEVELS

REAL_SPEC = f"{NAMESPACE}/real-v0"
SOURCES = ("real", "real+imagined", "real+oracle")
"""Training data of each method: real only, plus the imagined datasets, plus the oracle ones."""
GROUNDING_KEYS = ("finetune", "lora_rank", "head_hidden", "steps", "batch_size", "lr", "warmup_steps",
                  "eval_every", "checkpoint_every", "val_fraction", "seed")
TRAIN_KEYS = ("real_fraction", "imagined_episodes", "encoder", "updates", "batch_size", "checkpoint_every", "validation_fraction",
              "select", "device")


def _dataset_id(folder: Path, spec_id: str) -> str:
    """The id in ``folder``'s namespace of a dataset made like the published ``spec_id``."""
    return f"pipeline/{folder.name}/{spec_id.rsplit('/', 1)[1]}"


def in_level_order(per_level: Mapping[str, Any]) -> list[Any]:
    """The values of a ``{level: value}`` mapping of the imagined levels, in
    :data:`~kalm_gen.imagine_dataset.IMAGINED_LEVELS` order whatever the mapping's own order (the
    order of a policy's datasets is part of its training run)."""
    return [per_level[level] for level in IMAGINED_LEVELS]


def build_data(folder: Path, settings: dict[str, Any], upstream: Mapping[str, StageRecord]) -> dict[str, Any]:
    """The real dataset (spec ``real-v0``) and the oracle datasets of the imagined levels."""
    specs = {"real": (REAL_SPEC, settings["real_episodes"])}
    specs.update({level: (published_id("oracle", level), episodes)
                  for level, episodes in per_level(settings["oracle_episodes"], "data.oracle_episodes").items()})
    ids = {}
    for key, (spec_id, episodes) in specs.items():
        ids[key] = _dataset_id(folder, spec_id)
        if not dataset_dir(ids[key]).exists():
            build_dataset(replace(get_spec(spec_id), id=ids[key]), episodes=episodes, workers=settings["workers"],
                          progress=False, ref_episodes=settings["ref_episodes"])
    return {"real": ids["real"], "real_episodes": settings["real_episodes"],
            "oracle": {level: ids[level] for level in IMAGINED_LEVELS}}


def grounding_config(settings: dict[str, Any], dataset: str, output: Path, base_model: str, episodes: int):
    """The :class:`~kalm_gen.train.GroundingTrainConfig` of the ground stage: the last
    ``held_out`` of the real dataset's ``episodes`` are left out (they measure explanation);
    ``num_layers`` 0 keeps every layer of the LM."""
    from kalm_gen.train import GroundingTrainConfig

    return GroundingTrainConfig(datasets=[dataset], output=str(output), base_model=base_model,
                                max_episodes=episodes - settings["held_out"], num_layers=settings["num_layers"] or None,
                                **{key: settings[key] for key in GROUNDING_KEYS})


def ground(folder: Path, settings: dict[str, Any], upstream: Mapping[str, StageRecord]) -> dict[str, Any]:
    """Ground the base model (``tiny``: a tiny random LM written into the stage folder) on the
    real dataset; resumes from the checkpoints in ``folder/grounding``. With ``published`` set
    (a published model's name, or one per imagined level) nothing is trained: the stage hands
    those models on. ``models``: per imagined level, the model that imagines it."""
    from kalm_gen.train import train_grounding

    if settings["published"]:
        from kalm_gen.published import published_held_out

        models = per_level(settings["published"], "ground.published")
        return {"models": models, "published": True,
                "held_out_seeds": {name: published_held_out(name) for name in dict.fromkeys(models.values())}}
    base_model = settings["base_model"]
    if base_model == "tiny":
        from kalm_gen.tiny import make_tiny_lm

        base_model = str(make_tiny_lm(folder / "tiny-lm", seed=settings["seed"]).resolve())
    data = upstream["data"].result
    config = grounding_config(settings, data["real"], folder / "grounding", base_model, data["real_episodes"])
    summary = train_grounding(config, progress=False)
    return {"models": per_level("grounding/final", "models"), "held_out": settings["held_out"],
            **{key: summary[key] for key in ("steps", "train_losses", "val_losses", "initial_train_losses")}}


def imagine(folder: Path, settings: dict[str, Any], upstream: Mapping[str, StageRecord]) -> dict[str, Any]:
    """Imagined datasets of every imagined level (the tasks of the oracle datasets, episode by
    episode), each from its level's model, and the imagination quality of each model: rollouts on
    the levels it imagines, explanations of real episodes it did not train on (``explanations``,
    by model)."""
    from kalm_gen.grounded_lm import GroundedLM
    from kalm_gen.imagine_dataset import write_imagined_dataset
    from kalm_gen.quality import imagination_quality

    grounded = upstream["ground"]
    episodes = per_level(settings["episodes"], "imagine.episodes")
    levels_of: dict[str, list[str]] = {}
    # a ground stage finished before models were per level holds one ``model``
    models = grounded.result.get("models") or per_level(grounded.result["model"], "model")
    for level, name in models.items():
        levels_of.setdefault(name, []).append(level)
    ids, datasets, rollouts, explanations = {}, {}, {}, {}
    for name, levels in levels_of.items():
        model_dir = name if grounded.result.get("published") else grounded.folder / name
        model = GroundedLM.load(model_dir)
        for level in levels:
            ids[level] = _dataset_id(folder, published_id("imagined", level))
            if not dataset_dir(ids[level]).exists():
                write_imagined_dataset(model_dir, level, episodes=episodes[level], batch_size=settings["batch_size"],
                                       dataset_id=ids[level], ref_episodes=settings["ref_episodes"],
                                       workers=settings["workers"], model=model)
            kalm = read_metadata(ids[level])["kalm"]
            datasets[level] = {"episodes": kalm["episodes"], "success_rate": kalm["success_rate"],
                               "invalid": kalm["counts"]["invalid"], "dropped": kalm["counts"]["dropped"]}
        quality = imagination_quality(model, levels, settings["quality_episodes"], batch_size=settings["batch_size"],
                                      real_episodes=_unseen_real_episodes(name, settings, upstream))
        rollouts.update(quality["levels"])
        if "explanation" in quality:
            explanations[name] = quality["explanation"]
    return {"imagined": {level: ids[level] for level in IMAGINED_LEVELS},
            "datasets": {level: datasets[level] for level in IMAGINED_LEVELS},
            "quality": {"levels": {level: rollouts[level] for level in IMAGINED_LEVELS}, "explanations": explanations}}


def _unseen_real_episodes(name: str, settings: dict[str, Any], upstream: Mapping[str, StageRecord]) -> list | None:
    """Real episodes model ``name`` did not train on (``None``: none held out): up to
    ``quality_episodes`` of a published model's, rebuilt from their seeds; a grounded one's, the
    last ``ground.held_out`` of the run's real dataset."""
    from kalm_gen.quality import held_out_episodes

    grounded = upstream["ground"].result
    if grounded.get("published"):
        return held_out_real_episodes(grounded["held_out_seeds"][name], settings["quality_episodes"])
    held_out = grounded["held_out"]
    return held_out_episodes(upstream["data"].result["real"], held_out) if held_out else None


def held_out_real_episodes(seeds: list[int], count: int) -> list:
    """The first ``count`` real-v0 episodes of the seed range ``[start, stop)``, simulated again
    (an episode of a dataset is a function of its seed)."""
    from kalm_envs.oracle import oracle_episodes

    spec = get_spec(REAL_SPEC)
    start, stop = seeds
    return oracle_episodes(spec.level, list(range(start, min(stop, start + count))), spec.epsilon)


def train_config(settings: dict[str, Any], algorithm: str, seed: int, real: str, extra: list[str], output: Path):
    """The :class:`~kalm_rl.trainer.TrainConfig` of one policy of the train stage."""
    from kalm_rl.trainer import TrainConfig

    return TrainConfig(algorithm=algorithm, datasets=[real], imagined=extra, params=dict(settings["params"]),
                       seed=seed, output=str(output), **{key: settings[key] for key in TRAIN_KEYS})


def train(folder: Path, settings: dict[str, Any], upstream: Mapping[str, StageRecord]) -> dict[str, Any]:
    """One policy per algorithm, data source and seed; each resumes from its own checkpoint."""
    from kalm_rl.trainer import train_policy

    data = upstream["data"].result
    extra = {"real": [], "real+imagined": in_level_order(upstream["imagine"].result["imagined"]),
             "real+oracle": in_level_order(data["oracle"])}
    policies: dict[str, list[str]] = {}
    for algorithm in settings["algorithms"]:
        for source in SOURCES:
            for seed in settings["seeds"]:
                relative = f"policies/{algorithm}/{source}/seed-{seed}"
                train_policy(train_config(settings, algorithm, seed, data["real"], extra[source], folder / relative),
                             progress=False)
                policies.setdefault(f"{algorithm}/{source}", []).append(relative)
    return {"policies": policies}


def evaluate(folder: Path, settings: dict[str, Any], upstream: Mapping[str, StageRecord]) -> dict[str, Any]:
    """Every policy on every level, between the floor and the ceiling of the table: a random
    policy first, the scripted oracle (which reads the structured goal) last. The seeds of one
    algorithm and data source are one method."""
    from kalm_rl.evaluation import RandomPolicy, ScriptedOracleBaseline, evaluate_policies, write_report
    from kalm_rl.policy import load_policy

    trained = upstream["train"]
    groups: dict[str, list[Any]] = {RandomPolicy.label: [RandomPolicy(settings["seed"])]}
    groups.update({label: [load_policy(trained.folder / relative) for relative in folders]
                   for label, folders in trained.result["policies"].items()})
    groups[ScriptedOracleBaseline.label] = [ScriptedOracleBaseline(settings["workers"])]
    report = evaluate_policies(groups, list(ENV_IDS), settings["episodes"], settings["seed"])
    write_report(report, folder)
    return report


STAGES: dict[str, tuple[StageWork, tuple[str, ...]]] = {
    "data": (build_data, ()),
    "ground": (ground, ("data",)),
    "imagine": (imagine, ("data", "ground")),
    "train": (train, ("data", "imagine")),
    "evaluate": (evaluate, ("train",)),
}
"""Each stage's work and the stages it reads from, in the order they run."""


def pin_published_model(settings: dict[str, dict[str, Any]]) -> None:
    """Add ``ground.published_sha256`` (per published model the ground stage hands on, SHA-256
    over its files): the name alone would let a model republished under the same name reuse
    imagination of the old one, while the checksum changes the ground stage's hash and so every
    stage after it."""
    if settings["ground"]["published"]:
        from kalm_gen.imagine_dataset import model_checksum
        from kalm_gen.published import resolve_model

        names = dict.fromkeys(per_level(settings["ground"]["published"], "ground.published").values())
        settings["ground"]["published_sha256"] = {name: model_checksum(resolve_model(name)) for name in names}


def check_settings(settings: Mapping[str, dict[str, Any]]) -> None:
    """``ValueError`` naming the stage and the first bad setting, before any stage runs: every
    count, size, seed and name of every stage is checked here, not when its stage comes."""
    for stage, check in _SETTING_CHECKS.items():
        try:
            check(settings[stage], settings)
        except (ValueError, TypeError, OSError) as error:
            message = " ".join(str(error).split())
            raise ValueError(message if message.startswith(f"{stage}.") else f"{stage} settings: {message}") from error


def _check_data(data: dict[str, Any], settings: Mapping[str, dict[str, Any]]) -> None:
    for key in ("real_episodes", "ref_episodes"):
        check_count(data[key], f"data.{key}")
    _check_counts_per_level(data["oracle_episodes"], "data.oracle_episodes")
    check_int(data["workers"], "data.workers", low=1)


def _check_ground(ground: dict[str, Any], settings: Mapping[str, dict[str, Any]]) -> None:
    if ground["published"]:
        from kalm_gen.published import resolve_model

        for level, name in per_level(ground["published"], "ground.published").items():
            resolve_model(check_str(name, f"ground.published of {level}"))
        return
    _check_base_model(ground["base_model"])
    real_episodes = settings["data"]["real_episodes"]
    held_out = check_int(ground["held_out"], "ground.held_out", low=0)
    if held_out >= real_episodes:
        raise ValueError(f"ground.held_out {held_out} must lie in [0, data.real_episodes = {real_episodes})")
    grounding_config(ground, "data", Path("."), "model", real_episodes).validate()


def _check_base_model(value: Any) -> None:
    """The ground stage's base model: ``tiny``, the embedded SmolLM2 (installed), a ``.gguf`` file
    or a model folder; nothing is converted here."""
    from kalm_gen.base_model import DEFAULT_BASE_MODEL, default_gguf_path, resolve_base_model

    check_str(value, "ground.base_model")
    if value == "tiny":
        return
    if value == DEFAULT_BASE_MODEL:
        default_gguf_path()
    elif not (value.endswith(".gguf") and Path(value).is_file()):
        resolve_base_model(value, progress=False)


def _check_imagine(imagine: dict[str, Any], settings: Mapping[str, dict[str, Any]]) -> None:
    for key in ("batch_size", "ref_episodes", "quality_episodes"):
        check_count(imagine[key], f"imagine.{key}")
    _check_counts_per_level(imagine["episodes"], "imagine.episodes")
    check_int(imagine["workers"], "imagine.workers", low=1)


def _check_counts_per_level(value: Any, name: str) -> None:
    """A count, or a ``{level: count}`` mapping of the imagined levels."""
    for level, count in per_level(value, name).items():
        check_count(count, name if not isinstance(value, dict) else f"{name} of {level}")


def _check_train(train: dict[str, Any], settings: Mapping[str, dict[str, Any]]) -> None:
    from kalm_rl.learners import learner_class

    algorithms, seeds = train["algorithms"], train["seeds"]
    if not algorithms or not seeds:
        raise ValueError(f"train.algorithms {algorithms} and train.seeds {seeds} must not be empty")
    seeds = [check_seed(seed, "train.seeds item") for seed in seeds]
    for values, name in ((algorithms, "train.algorithms"), (seeds, "train.seeds")):
        if len(set(map(str, values))) != len(values):
            raise ValueError(f"{name} {values} name one twice: each trains its own policies")
    for algorithm in algorithms:
        learner_class(algorithm)
        train_config(train, algorithm, seeds[0], "real", ["imagined"], Path(".")).validate()


def _check_evaluate(evaluate: dict[str, Any], settings: Mapping[str, dict[str, Any]]) -> None:
    check_count(evaluate["episodes"], "evaluate.episodes")
    check_seed(evaluate["seed"], "evaluate.seed")
    check_int(evaluate["workers"], "evaluate.workers", low=1)


_SETTING_CHECKS = {"data": _check_data, "ground": _check_ground, "imagine": _check_imagine, "train": _check_train,
                   "evaluate": _check_evaluate}
"""Per stage, the check of its settings (given all settings, for those that depend on another stage's)."""
