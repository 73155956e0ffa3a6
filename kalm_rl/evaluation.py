"""Success rate of goal-conditioned policies per goal level, on fixed evaluation episodes.

Episode ``i`` of a level is reset with seed ``EVAL_SEED + seed + i`` (``seed`` defaults to 0), so
every method meets the same goals and initial states, none of them in a dataset (dataset seeds are
below 2,000,000). A policy sees only what the env observes, ``{"observation": (10,) float32,
"instruction": str}``, and is either

- an object with ``act_batch(observations: Sequence[dict]) -> (B,) ints`` (one call per step for
  all running episodes, so a neural policy gets a batch), or
- a plain callable ``observation -> int``.

The scripted oracle (:class:`ScriptedOracleBaseline`) is the one exception: it reads the
structured goal, so it runs the same episodes itself (``evaluate_level``) instead of acting on
observations. It is the ceiling of the success table.

>>> from kalm_rl.evaluation import RandomPolicy, evaluate_policy
>>> result = evaluate_policy(RandomPolicy(seed=0), "easy", episodes=10)
>>> result.successes.shape
(10,)

This module never imports torch; matplotlib is imported only to draw the chart.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from kalm_envs import ENV_IDS, N_ACTIONS, Goal
from kalm_envs.atomic import atomic_path
from kalm_envs.predicates import condition_status
from kalm_envs.validation import check_count, check_int, check_seed

__all__ = [
    "EVAL_SEED",
    "BatchPolicy",
    "LevelResult",
    "Policy",
    "PolicyError",
    "RandomPolicy",
    "ScriptedOracleBaseline",
    "as_batch_policy",
    "bar_chart",
    "conditions_met",
    "episode_seeds",
    "evaluate_policies",
    "evaluate_policy",
    "markdown_table",
    "write_report",
]

EVAL_SEED = 5_000_000
REPORT_FILES = ("evaluation.json", "evaluation.md", "evaluation.png")


@runtime_checkable
class BatchPolicy(Protocol):
    """A policy that acts on a batch of observation dicts at once."""

    def act_batch(self, observations: Sequence[dict[str, Any]]) -> np.ndarray:
        """``(B,)`` integer actions in ``[0, 40)``, one per observation."""
        ...


Policy = BatchPolicy | Callable[[dict[str, Any]], int]


class _PerObservation:
    """:class:`BatchPolicy` around a plain callable ``observation -> int``."""

    def __init__(self, act: Callable[[dict[str, Any]], int]) -> None:
        self.act = act

    def act_batch(self, observations: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.asarray([self.act(observation) for observation in observations])


def as_batch_policy(policy: Policy) -> BatchPolicy:
    """``policy`` itself if it has ``act_batch``, else a wrapper calling it per observation."""
    if isinstance(policy, BatchPolicy):
        return policy
    if callable(policy):
        return _PerObservation(policy)
    raise TypeError(f"policy {policy!r} has no act_batch() and is not callable")


class RandomPolicy:
    """Uniformly random pushes (0..39), a fresh draw at every step.

    Draws come from one numpy Generator; :func:`evaluate_policy` reseeds it from ``seed``, the
    level and the evaluation seed (``reseed``), so an evaluation repeats exactly for the same
    ``batch_envs``. (A policy that depends only on the observation would be a poor stand-in for
    random: pushing a ball against a wall leaves the observation unchanged, and it would repeat
    that push until the time limit.)
    """

    label = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = check_seed(seed)
        self.rng = np.random.default_rng(self.seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng([self.seed, int(seed)])

    def act_batch(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.rng.integers(N_ACTIONS, size=len(observations), dtype=np.int64)

    def __call__(self, observation: Mapping[str, Any]) -> int:
        return int(self.rng.integers(N_ACTIONS))


class ScriptedOracleBaseline:
    """The scripted oracle (:class:`kalm_envs.oracle.ScriptedOracle`, no random pushes) on the
    evaluation episodes: the same goals and initial states as every policy, but it sees the
    structured goal, which a policy never does. ``workers`` processes run its episodes."""

    label = "scripted oracle"

    def __init__(self, workers: int = 1) -> None:
        self.workers = check_int(workers, "workers", low=1)

    def evaluate_level(self, level: str, episodes: int, seed: int = 0) -> LevelResult:
        """The oracle's :class:`LevelResult` on the evaluation episodes of ``level``."""
        from kalm_envs.oracle import oracle_episodes

        _check_level(level)
        seeds = episode_seeds(episodes, seed)
        run = oracle_episodes(level, seeds.tolist(), epsilon=0.0, workers=self.workers)
        goals = np.stack([e.goal for e in run])
        return _level_result(
            level,
            seeds,
            np.array([e.success for e in run], dtype=bool),
            np.array([e.length for e in run], dtype=np.int64),
            goals,
            conditions_met(np.stack([e.observations[-1] for e in run]), goals,
                           np.stack([e.observations[0] for e in run])),
        )


@dataclass
class LevelResult:
    """One policy's episodes on one level; ``N`` is the number of episodes.

    Attributes:
        level: ``"train"``, ``"rephrase"``, ``"easy"`` or ``"hard"``.
        episodes: N.
        seeds: ``(N,)`` int64 reset seeds, ``EVAL_SEED + seed + i``.
        successes: ``(N,)`` bool, whether the goal held when each episode ended.
        lengths: ``(N,)`` int64 steps taken (at most the level's limit: 1 on easy, else 50).
        success_rate: mean of ``successes``, in [0, 1].
        mean_length: mean of ``lengths`` (steps).
        success_by_family: success rate per goal family (relation, move, pair, ...).
        conditions_met: ``(N,)`` float, share of each goal's conditions that held when its episode
            ended (see :func:`conditions_met`): partial progress on the goals that failed.
        conditions_by_family: mean of ``conditions_met`` per goal family.
    """

    level: str
    episodes: int
    seeds: np.ndarray
    successes: np.ndarray
    lengths: np.ndarray
    success_rate: float
    mean_length: float
    success_by_family: dict[str, float]
    conditions_met: np.ndarray
    conditions_by_family: dict[str, float]


def conditions_met(final_states: np.ndarray, goals: np.ndarray, initial_states: np.ndarray) -> np.ndarray:
    """``(N,)`` share in [0, 1] of each goal's conditions that hold in its final state.

    ``final_states`` and ``initial_states`` are ``(N, 10)`` ball centres (m), ``goals`` ``(N, 10)``
    goal arrays. A condition is one relation of a relation goal, the move of a move goal, one
    consecutive pair of the line-up or one ball near the centre of a gather goal
    (:func:`kalm_envs.predicates.condition_status`).
    """
    satisfied, used = condition_status(final_states, goals, initial_states)
    return (satisfied & used).sum(axis=1) / used.sum(axis=1)


def _check_level(level: str) -> None:
    if not isinstance(level, str) or level not in ENV_IDS:
        raise ValueError(f"level {level!r} is not one of {tuple(ENV_IDS)}")


class PolicyError(RuntimeError):
    """A policy under evaluation raised; the message names the policy, the level, the step and
    the policy's own error (chained as ``__cause__``, with its traceback)."""


def episode_seeds(episodes: int, seed: int = 0) -> np.ndarray:
    """``(episodes,)`` int64 reset seeds of a level's evaluation episodes (``episodes`` >= 1 and
    ``seed`` integers, Python or numpy)."""
    episodes = check_count(episodes, "episodes")
    return EVAL_SEED + check_seed(seed) + np.arange(episodes, dtype=np.int64)


def _checked_actions(actions: Any, count: int) -> np.ndarray:
    """``(count,)`` int64 actions, or ValueError naming the first bad value."""
    array = np.asarray(actions)
    if array.shape != (count,):
        raise ValueError(f"policy returned actions of shape {array.shape}, expected ({count},)")
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"policy returned action {array.tolist()[0]!r} (dtype {array.dtype}); actions must "
            f"be integers in [0, {N_ACTIONS})"
        )
    outside = (array < 0) | (array >= N_ACTIONS)
    if outside.any():
        raise ValueError(
            f"policy returned action {int(array[outside][0])}; actions must be integers "
            f"in [0, {N_ACTIONS})"
        )
    return array.astype(np.int64)


def _act(policy: BatchPolicy, observations: list[dict[str, Any]], label: str, step: int) -> np.ndarray:
    """``policy.act_batch(observations)``, checked; whatever the policy raises becomes a
    :class:`PolicyError` naming it (the original error is its ``__cause__``)."""
    try:
        actions = policy.act_batch(observations)
    except Exception as error:  # noqa: BLE001 - a caller's code: named and re-raised, never swallowed
        raise PolicyError(f"policy {label} raised {type(error).__name__} at step {step}: {error}") from error
    return _checked_actions(actions, len(observations))


def _run_lockstep(
    envs: list[gym.Env], policy: BatchPolicy, seeds: np.ndarray, label: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run one episode per seed, ``envs[j]`` for ``seeds[j]``, all stepping together.

    Returns ``(B,)`` bool successes, ``(B,)`` int64 lengths, ``(B, 10)`` int64 goals and ``(B,)``
    float shares of the goals' conditions met at the end.
    """
    observations, goals, successes = [], [], []
    for env, seed in zip(envs[: len(seeds)], seeds, strict=True):
        observation, info = env.reset(seed=int(seed))
        observations.append(observation)
        goals.append(np.asarray(info["goal"], dtype=np.int64))
        successes.append(bool(info["is_success"]))
    initial_states = np.stack([o["observation"] for o in observations])
    lengths = np.zeros(len(seeds), dtype=np.int64)
    running = list(range(len(seeds)))
    step = 0
    while running:
        actions = _act(policy, [observations[j] for j in running], label, step)
        step += 1
        still_running = []
        for j, action in zip(running, actions, strict=True):
            observation, _, terminated, truncated, info = envs[j].step(int(action))
            observations[j] = observation
            successes[j] = bool(info["is_success"])
            lengths[j] += 1
            if not (terminated or truncated):
                still_running.append(j)
        running = still_running
    goals_array = np.stack(goals)
    final_states = np.stack([o["observation"] for o in observations])
    met = conditions_met(final_states, goals_array, initial_states)
    return np.array(successes, dtype=bool), lengths, goals_array, met


def evaluate_policy(
    policy: Policy, level: str, episodes: int = 200, seed: int = 0, batch_envs: int = 50
) -> LevelResult:
    """Run ``policy`` on the evaluation episodes of ``level``.

    Episodes run in consecutive batches of ``batch_envs`` envs (``gym.make(ENV_IDS[level])``: 50
    pushes at most, one on easy) stepped in lockstep: at each step the policy is called once on the
    observations of the episodes still running. The scripted oracle
    (:class:`ScriptedOracleBaseline`) reads the structured goal, so it runs the same episodes
    itself (``batch_envs`` does not apply). Each episode is seeded on its own, so a policy
    whose action depends only on the observation gets the same results for any ``batch_envs``.
    A policy with a ``reseed(int)`` method (a sampling one) is reseeded from ``level`` and
    ``seed`` first, so its results repeat for the same ``seed`` and ``batch_envs``.

    Raises:
        ValueError: unknown ``level``, ``episodes`` or ``batch_envs`` not an integer >= 1, ``seed``
            not an integer, or a returned action that is not an integer in [0, 40) (the message
            names it). TypeError: ``policy`` neither has ``act_batch`` nor is callable.
        PolicyError: the policy raised (the message names the policy and its error).
    """
    if isinstance(policy, ScriptedOracleBaseline):
        return policy.evaluate_level(level, episodes, seed)
    _check_level(level)
    seeds = episode_seeds(episodes, seed)
    batch_envs = check_int(batch_envs, "batch_envs", low=1)
    batch_policy = as_batch_policy(policy)
    label = str(getattr(policy, "label", repr(policy)))
    if hasattr(policy, "reseed"):  # a sampling policy draws the same actions on every call
        policy.reseed(zlib.crc32(f"{level}/{seed}".encode()))
    envs = [gym.make(ENV_IDS[level]) for _ in range(min(batch_envs, episodes))]
    try:
        parts = [
            _run_lockstep(envs, batch_policy, seeds[start : start + batch_envs], label)
            for start in range(0, episodes, batch_envs)
        ]
    finally:
        for env in envs:
            env.close()
    successes, lengths, goals, met = (np.concatenate(column) for column in zip(*parts, strict=True))
    return _level_result(level, seeds, successes, lengths, goals, met)


def _level_result(
    level: str, seeds: np.ndarray, successes: np.ndarray, lengths: np.ndarray, goals: np.ndarray,
    met: np.ndarray,
) -> LevelResult:
    """A :class:`LevelResult` from ``(N,)`` seeds, successes, lengths and shares of conditions met,
    and ``(N, 10)`` goals."""
    families = [Goal.from_array(goal).family for goal in goals]

    def by_family(values: np.ndarray) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for family, value in zip(families, values, strict=True):
            groups[family].append(float(value))
        return {f: float(np.mean(v)) for f, v in sorted(groups.items())}

    return LevelResult(
        level=level,
        episodes=len(seeds),
        seeds=seeds,
        successes=successes,
        lengths=lengths,
        success_rate=float(successes.mean()),
        mean_length=float(lengths.mean()),
        success_by_family=by_family(successes),
        conditions_met=met,
        conditions_by_family=by_family(met),
    )


def _mean_and_stderr(rates: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (std with ddof=1 over sqrt(n); 0.0 for n = 1) of ``rates``."""
    values = np.asarray(rates, dtype=np.float64)
    if len(values) == 1:
        return float(values[0]), 0.0
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def evaluate_policies(
    groups: Mapping[str, Sequence[Policy]],
    levels: Sequence[str] | str = tuple(ENV_IDS),
    episodes: int = 200,
    seed: int = 0,
    batch_envs: int = 50,
) -> dict[str, Any]:
    """Evaluate every policy of every group on every level; a group is one method and its
    policies are that method's training seeds.

    Returns a JSON-friendly report::

        {"episodes": N, "seed": seed, "eval_seed": EVAL_SEED, "levels": [...],
         "methods": {name: {level: {"success_rate": mean over policies, "stderr": ...,
                                    "per_policy": [rate, ...], "mean_length": ...,
                                    "success_by_family": {family: mean rate},
                                    "conditions_by_family": {family: mean share of the
                                                             goal's conditions met at the end}},
                                    ...},
                 ...}}

    Raises ValueError naming an unknown level, for ``episodes`` below 1 or an empty group.
    """
    levels = [levels] if isinstance(levels, str) else list(levels)
    for level in levels:
        _check_level(level)
    check_count(episodes, "episodes")
    if not groups:
        raise ValueError("no policy to evaluate: groups is empty")
    for name, policies in groups.items():
        if len(policies) == 0:
            raise ValueError(f"method {name!r} has no policy")
    methods: dict[str, dict[str, Any]] = {}
    for name, policies in groups.items():
        methods[name] = {}
        for level in levels:
            results = [evaluate_policy(p, level, episodes, seed, batch_envs) for p in policies]
            rates = [r.success_rate for r in results]
            mean, stderr = _mean_and_stderr(rates)
            methods[name][level] = {
                "success_rate": mean,
                "stderr": stderr,
                "per_policy": rates,
                "mean_length": float(np.mean([r.mean_length for r in results])),
                "success_by_family": {
                    family: float(np.mean([r.success_by_family[family] for r in results]))
                    for family in results[0].success_by_family
                },
                "conditions_by_family": {
                    family: float(np.mean([r.conditions_by_family[family] for r in results]))
                    for family in results[0].conditions_by_family
                },
            }
    return {
        "episodes": int(episodes),
        "seed": int(seed),
        "eval_seed": EVAL_SEED,
        "levels": levels,
        "methods": methods,
    }


def markdown_table(report: Mapping[str, Any]) -> str:
    """Rows: methods; columns: levels; cells: mean success % ± standard error %."""
    levels = report["levels"]
    lines = [
        "| method | " + " | ".join(levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for name, row in report["methods"].items():
        cells = [
            f"{100 * row[lv]['success_rate']:.1f} ± {100 * row[lv]['stderr']:.1f}" for lv in levels
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(report: Mapping[str, Any], path: str | Path) -> None:
    """Write a PNG: per level, one bar per method (mean success %), standard-error whiskers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels, methods = report["levels"], report["methods"]
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(levels))
    figure = Figure(figsize=(1.6 + 1.4 * len(levels), 3.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for k, (name, row) in enumerate(methods.items()):
        means = [100 * row[level]["success_rate"] for level in levels]
        errors = [100 * row[level]["stderr"] for level in levels]
        offset = (k - (len(methods) - 1) / 2) * width
        axes.bar(x + offset, means, width, yerr=errors, capsize=3, label=name, color=f"C{k % 10}")
    axes.set_xticks(x, levels)
    axes.set_ylim(0, 100)
    axes.set_ylabel("success (%)")
    axes.set_title(f"success per level ({report['episodes']} episodes each)")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, format="png")


def write_report(report: Mapping[str, Any], output_dir: str | Path) -> list[Path]:
    """Write ``evaluation.json``, ``evaluation.md`` (the table) and ``evaluation.png`` (the chart)
    into ``output_dir`` (created if needed), each atomically; return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (output_dir / name for name in REPORT_FILES)
    texts = {
        json_path: json.dumps(report, indent=2, sort_keys=True) + "\n",
        md_path: markdown_table(report) + "\n",
    }
    for path, text in texts.items():
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    with atomic_path(png_path) as tmp:
        bar_chart(report, tmp)
    return [json_path, md_path, png_path]
