"""The report of a pipeline run: ``report.md``, ``report.json`` and two figures in the run folder.

``report.md`` holds the success per level (mean ± standard error over seeds) with its bar chart
(``success.png``), the imagination quality table, the simulator-vs-imagined trajectory figure
(``trajectories.png``), the timings of every stage, the command line and package versions.
Every file is written atomically.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from kalm.pipeline.cache import StageRecord
from kalm.pipeline.figures import matching_pair, trajectory_figure
from kalm_envs.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from kalm_envs.minari_io import read_episodes
from kalm_rl.evaluation import bar_chart, markdown_table

PACKAGES = ("torch", "transformers", "gymnasium", "minari", "mujoco", "kalm-gym")
FILES = {"report": "report.md", "data": "report.json", "chart": "success.png", "trajectories": "trajectories.png"}


def versions() -> dict[str, str | None]:
    """Python and the versions of :data:`PACKAGES` (None when one is not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _metres(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def quality_table(imagine: Mapping[str, Any]) -> str:
    """Markdown: per imagined level, the imagined dataset and the rollout quality metrics (of the
    level's model); then each model's explanation accuracy on held-out real episodes, when
    measured."""
    lines = [
        "| level | dataset episodes | dataset success | cut invalid | quality episodes | goal match "
        "| replay match | state error mean (m) | state error max (m) | off workbench | mean steps |",
        "|---|" + "---:|" * 10,
    ]
    for level, row in imagine["quality"]["levels"].items():
        dataset = imagine["datasets"][level]
        lines.append(
            f"| {level} | {dataset['episodes']} | {_percent(dataset['success_rate'])} | {dataset['invalid']} "
            f"| {row['episodes']} | {_percent(row['goal_match_rate'])} | {_percent(row['replay_match_rate'])} "
            f"| {_metres(row['state_error_mean'])} | {_metres(row['state_error_max'])} "
            f"| {_percent(row['out_of_workbench_rate'])} | {row['mean_length']:.1f} |"
        )
    for name, explanation in imagine["quality"]["explanations"].items():
        lines.append(f"\nExplanation by `{name}` of {explanation['episodes']} real episodes it did not train on: "
                     f"accuracy {_percent(explanation['accuracy'])}, parsed {_percent(explanation['parse_rate'])}.")
    return "\n".join(lines)


def timing_table(records: Mapping[str, StageRecord]) -> str:
    """Markdown: per stage, its folder, whether it was reused and its seconds."""
    lines = ["| stage | folder | reused | seconds (this run) | seconds (when built) |", "|---|---|---|---:|---:|"]
    lines += [f"| {name} | `stages/{r.folder.name}` | {'yes' if r.reused else 'no'} | {r.seconds:.1f} "
              f"| {r.built_seconds:.1f} |" for name, r in records.items()]
    return "\n".join(lines)


def _trajectory_pairs(records: Mapping[str, StageRecord]) -> list[tuple[str, Any, Any]]:
    """Per imagined level, a simulator (oracle dataset) and an imagined episode of the same task."""
    pairs = []
    for level, imagined_id in records["imagine"].result["imagined"].items():
        pair = matching_pair(read_episodes(records["data"].result["oracle"][level]), read_episodes(imagined_id))
        if pair is not None:
            pairs.append((level, *pair))
    return pairs


def write_run_report(
    run_dir: Path, preset: str, settings: Mapping[str, Any], records: Mapping[str, StageRecord],
    command: str, seconds: float,
) -> dict[str, Any]:
    """Write the report files into ``run_dir``; return the report data (JSON-able)."""
    evaluation = records["evaluate"].result
    imagine = records["imagine"].result
    remove_stale_temporaries(run_dir)  # of a report write killed mid-way
    files = {key: run_dir / name for key, name in FILES.items()}
    with atomic_path(files["chart"]) as tmp:
        bar_chart(evaluation, tmp)
    pairs = _trajectory_pairs(records)
    with atomic_path(files["trajectories"]) as tmp:
        trajectory_figure(pairs, tmp)
    report = {
        "command": command,
        "preset": preset,
        "run": str(run_dir),
        "settings": settings,
        "stages": {name: {"hash": r.hash, "folder": str(r.folder), "reused": r.reused,
                          "seconds": round(r.seconds, 2), "built_seconds": round(r.built_seconds, 2)}
                   for name, r in records.items()},
        "seconds": round(seconds, 2),
        "evaluation": evaluation,
        "imagination": imagine,
        "grounding": records["ground"].result,
        "versions": versions(),
        "files": {key: str(path) for key, path in files.items()},
    }
    trajectory_note = ", ".join(f"{level}: seed {simulated.seed}" for level, simulated, _ in pairs) or "none"
    text = "\n".join([
        f"# KALM pipeline run `{run_dir.name}` (preset `{preset}`)",
        "",
        "## Success per level",
        "",
        f"Mean success over {len(settings['train']['seeds'])} seed(s) ± standard error, "
        f"{evaluation['episodes']} evaluation episodes per level and policy, the same episodes for "
        "every method. `random`: a uniform push every step (the floor). Learners are "
        "`algorithm/data`: real data only, real + imagined rollouts (rephrase, easy, hard; "
        f"{_imagined_use(settings['train'])}), "
        "real + oracle rollouts of those levels (the upper bound of imagined data). `scripted "
        "oracle`: the simulator-planning oracle, which reads the structured goal (the ceiling).",
        "",
        markdown_table(evaluation),
        "",
        f"![success per level]({FILES['chart']})",
        "",
        "## Imagination quality",
        "",
        quality_table(imagine),
        "",
        "## Simulator and imagined trajectories",
        "",
        f"Ball paths seen from above (solid: the simulator's oracle rollout, dashed: the grounded LM's "
        f"rollout for the same goal and initial state; {trajectory_note}).",
        "",
        f"![trajectories]({FILES['trajectories']})",
        "",
        "## Stages",
        "",
        timing_table(records),
        "",
        f"Total: {seconds:.1f} s.",
        "",
        "## Reproduce",
        "",
        f"```\n{command}\n```",
        "",
        "| package | version |",
        "|---|---|",
        *(f"| {name} | {version or '-'} |" for name, version in report["versions"].items()),
        "",
        "Settings:",
        "",
        f"```json\n{json.dumps(settings, indent=2, sort_keys=True)}\n```",
        "",
    ])
    atomic_write_text(files["data"], json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic_write_text(files["report"], text)
    return report


def _imagined_use(train: dict[str, Any]) -> str:
    """How the train stage mixed imagined rows in, e.g. ``1:1, every episode``."""
    real = train["real_fraction"]
    ratio = f"{real / (1 - real):g}:1"
    which = {"successful": "only episodes whose imagined last state meets the goal",
             "progress": "only the pushes that bring the goal closer, of episodes whose imagined last state meets the goal",
             "final-push": "only the last push of episodes whose imagined last state meets the goal",
             }.get(train["imagined_episodes"], "every episode")
    return f"{ratio}, {which}"
