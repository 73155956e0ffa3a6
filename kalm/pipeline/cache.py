"""Stage folders keyed by a hash of their inputs, finished once a completion marker is written.

A stage of run ``R`` works in ``R/stages/<stage>-<hash12>/``, where ``hash12`` is the first 12 hex
digits of the SHA-256 of the stage's name, its settings (all but :data:`UNHASHED`) and the hashes
of the stages it reads from. So a changed setting changes the hash of its stage and of every
stage downstream of it, and only those are redone; the others' folders are found complete.

``complete.json`` (the marker) is written last and atomically; it holds the settings, the
upstream hashes, the seconds the work took and the stage's JSON result, its keys in the order the
work made them. The record handed downstream is that result as read back from JSON, in a run that
did the work as in one that found it done, so a resumed run sees the same values in the same order. A folder without the
marker is an unfinished stage: its work is run again in the same folder, where the grounding and
training runs resume from their checkpoints and the dataset builds keep their finished shards.
Paths in a result are relative (to the stage folder, or Minari ids under the run's root), so a
run folder can be moved.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kalm_envs.atomic import atomic_write_text, remove_stale_temporaries

MARKER = "complete.json"
UNHASHED = ("workers", "device")
"""Settings that change how fast a stage runs, not what it produces (``device``: up to float
rounding, as when ``kalm train`` resumes a run on another device)."""


@dataclass
class StageRecord:
    """One stage of this run.

    Attributes:
        stage: the stage's name; ``hash``: its 12 hex digits; ``folder``: its folder.
        reused: True when the folder was already complete (nothing was run).
        seconds: wall time of the stage in this run (s); ``built_seconds``: of the run that built it.
        result: the stage's JSON result.
    """

    stage: str
    hash: str
    folder: Path
    reused: bool
    seconds: float
    built_seconds: float
    result: dict[str, Any]


StageWork = Callable[[Path, dict[str, Any], Mapping[str, StageRecord]], dict[str, Any]]
"""``work(folder, settings, upstream records) -> JSON result`` of one stage."""


def stage_hash(stage: str, settings: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    """12 hex digits identifying a stage's output: its name, hashed settings and upstream hashes."""
    identity = {
        "stage": stage,
        "settings": {k: v for k, v in settings.items() if k not in UNHASHED},
        "upstream": dict(upstream),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def run_stage(
    stages_dir: Path, stage: str, settings: dict[str, Any], upstream: Mapping[str, StageRecord], work: StageWork
) -> StageRecord:
    """The record of ``stage``: read from its complete folder, or made by running ``work`` there."""
    started = time.perf_counter()
    key = stage_hash(stage, settings, {name: record.hash for name, record in upstream.items()})
    folder = Path(stages_dir) / f"{stage}-{key}"
    marker = folder / MARKER
    if marker.is_file():
        stored = json.loads(marker.read_text())
        return StageRecord(stage, key, folder, True, time.perf_counter() - started, stored["seconds"],
                           stored["result"])
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # a marker write killed mid-way
    result = json.loads(json.dumps(work(folder, settings, upstream)))  # as a reused stage reads it back
    seconds = time.perf_counter() - started
    atomic_write_text(marker, json.dumps({
        "stage": stage, "hash": key, "settings": settings,
        "upstream": {name: record.hash for name, record in upstream.items()},
        "seconds": seconds, "finished": time.time(), "result": result,
    }, indent=2) + "\n")
    return StageRecord(stage, key, folder, False, seconds, seconds, result)
