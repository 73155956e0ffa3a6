"""Running the whole pipeline: the stages in order, each reused when its folder is complete."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kalm.pipeline.cache import run_stage
from kalm.pipeline.presets import apply_override, get_preset
from kalm.pipeline.report import write_run_report
from kalm.pipeline.stages import STAGES, check_settings, pin_published_model

MINARI_ENV = "MINARI_DATASETS_PATH"


@contextlib.contextmanager
def minari_root(path: Path) -> Iterator[Path]:
    """Point Minari (and :mod:`kalm_envs.minari_io`) at ``path`` for the block; restore after."""
    previous = os.environ.get(MINARI_ENV)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MINARI_ENV] = str(path.resolve())
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MINARI_ENV, None)
        else:
            os.environ[MINARI_ENV] = previous


def resolve_settings(preset: str, overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """The preset's settings with every ``stage.key=value`` override applied, checked, and a
    published model pinned by its checksum (:func:`~kalm.pipeline.stages.pin_published_model`)."""
    settings = get_preset(preset)
    for override in overrides:
        apply_override(settings, override)
    check_settings(settings)
    pin_published_model(settings)
    return settings


def run_pipeline(
    preset: str, overrides: Sequence[str] = (), name: str | None = None, output_root: str | Path = "runs",
    command: str = "",
) -> dict[str, Any]:
    """Run (or resume, or reuse) every stage into ``output_root/name`` (default name: the
    preset's) and write the report; return the report data.

    Datasets live in the run's own Minari root ``output_root/name/minari``. Raises ``ValueError``
    for an unknown preset, a bad override or a bad setting, before any stage runs.
    """
    started = time.perf_counter()
    settings = resolve_settings(preset, overrides)
    name = name or preset
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"run name {name!r} must be a plain folder name")
    run_dir = Path(output_root) / name
    records = {}
    with minari_root(run_dir / "minari"):
        for stage, (work, upstream) in STAGES.items():
            print(f"kalm run: {stage} ...", file=sys.stderr, flush=True)
            record = run_stage(run_dir / "stages", stage, settings[stage], {u: records[u] for u in upstream}, work)
            status = "reused" if record.reused else f"done in {record.seconds:.1f} s"
            print(f"kalm run: {stage} {status} (stages/{record.folder.name})", file=sys.stderr, flush=True)
            records[stage] = record
        return write_run_report(run_dir, preset, settings, records, command, time.perf_counter() - started)
