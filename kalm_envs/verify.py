"""Checking a dataset on disk against our env ids and spaces, our predicates and its stored checksum."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kalm_envs.dataset_checks import check_packed, dataset_level
from kalm_envs.goals import Goal
from kalm_envs.minari_io import (
    HDF5_FILE,
    INDEX_CHECKSUM_KEY,
    INDEX_FILE,
    METADATA_KEY,
    DatasetError,
    hdf5_path,
    index_checksum,
    packed_checksum,
    read_episodes,
    read_index,
    read_metadata,
    stored_checksum,
)
from kalm_envs.predicates import is_success, transition_outcome
from kalm_envs.registration import EPISODE_STEPS
from kalm_envs.rollout import Episode, pack_episodes

_MAX_LISTED = 5  # offending episodes named per failed check


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_dataset`: each check's name mapped to its problems (empty = passed)."""

    dataset: str
    episodes: int = 0
    steps: int = 0
    checks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.checks.values())

    def fail(self, check: str, problem: str) -> None:
        problems = self.checks.setdefault(check, [])
        if len(problems) < _MAX_LISTED:
            problems.append(problem)
        elif len(problems) == _MAX_LISTED:
            problems.append("... (more)")

    def table(self) -> str:
        lines = [f"{self.dataset}: {self.episodes} episodes, {self.steps} steps"]
        for check, problems in self.checks.items():
            lines.append(f"  {'ok  ' if not problems else 'FAIL'} {check}")
            lines += [f"         {p}" for p in problems]
        lines.append("verify: " + ("passed" if self.ok else "FAILED"))
        return "\n".join(lines)


def verify_dataset(dataset_id_or_dir: str | Path) -> VerifyReport:
    """Run every check on the HDF5 file (and the index beside it); never raises on bad content,
    only on an unreadable HDF5 file or metadata (:class:`~kalm_envs.minari_io.DatasetError`).

    Checks: ``env`` (:func:`~kalm_envs.dataset_checks.dataset_level`, and no episode over its
    level's limit), ``contents`` (:func:`~kalm_envs.dataset_checks.check_packed`: shapes, counts,
    action range, finite values, goals, instructions), ``index`` (``kalm_index.npz`` readable and
    holding what the HDF5 file holds), ``repeated fields``, ``predicates``, ``rewards`` (these two
    only on sound contents) and ``checksum`` (the HDF5 content against the metadata's).
    """
    report = VerifyReport(str(dataset_id_or_dir))
    episodes = read_episodes(dataset_id_or_dir)
    metadata = read_metadata(dataset_id_or_dir)
    report.episodes, report.steps = len(episodes), sum(e.length for e in episodes)
    for name in ("env", "lengths", "contents", "index", "repeated fields", "predicates", "rewards", "checksum"):
        report.checks[name] = []
    level = _check_env(dataset_id_or_dir, episodes, report)
    packed = pack_episodes(episodes) if episodes else None
    try:
        if packed is None:
            raise DatasetError(f"dataset {str(dataset_id_or_dir)!r} holds no episode")
        check_packed(packed, level, metadata, dataset_id_or_dir)
    except DatasetError as error:
        report.fail("contents", str(error))
    _check_index(dataset_id_or_dir, packed, level, metadata, report)
    _check_repeated_fields(hdf5_path(dataset_id_or_dir), report)
    if not report.checks["contents"]:
        for index, episode in enumerate(episodes):
            for check, problem in episode_problems(episode):
                report.fail(check, f"episode {index}: {problem}")
    stored = stored_checksum(metadata)
    if stored is None:
        report.fail("checksum", "no checksum in the dataset metadata")
    elif packed is None or stored != packed_checksum(packed):
        report.fail("checksum", f"content does not match the stored checksum {stored[:12]}...")
    return report


def _check_env(dataset_id_or_dir: str | Path, episodes: list[Episode], report: VerifyReport) -> str | None:
    """The env must be a current level's id with our spaces, and no episode longer than its limit;
    returns the level (None when the env check failed)."""
    try:
        level = dataset_level(dataset_id_or_dir)
    except ValueError as error:
        report.fail("env", str(error))
        return None
    limit = EPISODE_STEPS[level]
    for index, episode in enumerate(episodes):
        if episode.length > limit:
            report.fail("lengths", f"episode {index}: {episode.length} steps, over the {level} level's "
                                   f"limit of {limit}")
    return level


def _check_index(
    dataset_id_or_dir: str | Path, packed: dict[str, np.ndarray] | None, level: str | None,
    metadata: dict[str, Any], report: VerifyReport,
) -> None:
    """``kalm_index.npz``, when there is one, must read, pass the array checks, hold exactly the
    HDF5 file's episodes and match the metadata's ``index_checksum`` (when it has one)."""
    try:
        index = read_index(dataset_id_or_dir)
        if index is None:
            return
        path = hdf5_path(dataset_id_or_dir).parent / INDEX_FILE.name
        check_packed(index, level, metadata, path)
        if packed is None or packed_checksum(index, path) != packed_checksum(packed):
            report.fail("index", f"{INDEX_FILE.name} does not hold the episodes of {HDF5_FILE.name} (its checksum "
                                 f"differs): delete it, or rebuild the dataset")
        fast = metadata.get(METADATA_KEY, {}).get(INDEX_CHECKSUM_KEY)
        if fast is not None and index_checksum(index, path) != fast:
            report.fail("index", f"{INDEX_FILE.name} does not match the metadata's {INDEX_CHECKSUM_KEY}, so every "
                                 f"reader refuses it: rebuild the dataset")
    except DatasetError as error:
        report.fail("index", str(error))


def _check_repeated_fields(path: Path, report: VerifyReport) -> None:
    """Goal and instruction must be the same at every step of an episode."""
    with h5py.File(path, "r") as file:
        for name in file:
            goals = file[name]["infos/goal"][()]
            instructions = file[name]["observations/instruction"][()]
            if not (goals == goals[0]).all() or len(set(instructions.tolist())) != 1:
                report.fail("repeated fields", f"{name}: goal or instruction changes within it")


def episode_problems(episode: Episode) -> list[tuple[str, str]]:
    """``(check, problem)`` for each way an episode whose arrays passed ``check_packed`` disagrees
    with our env: its successes, terminations and truncations (check ``predicates``) and its rewards
    (check ``rewards``) against the predicates and the env's dense reward; empty when it agrees."""
    problems = []
    goals = np.repeat(episode.goal[None], episode.length + 1, axis=0)
    initial = np.repeat(episode.observations[:1], episode.length + 1, axis=0)
    success = is_success(episode.observations, goals, initial)
    if not np.array_equal(success, episode.successes):
        first = int(np.flatnonzero(success != episode.successes)[0])
        problems.append(("predicates", f"is_success at step {first} disagrees with the predicates"))
    expected = success[1:] | Goal.from_array(episode.goal).one_push
    if not np.array_equal(expected, episode.terminations):
        step = int(np.flatnonzero(expected != episode.terminations)[0])
        problems.append(("predicates", f"terminations disagree with the predicates at step {step} (terminated "
                                       f"{bool(episode.terminations[step])}, goal met {bool(success[step + 1])})"))
    if episode.terminations[:-1].any() or episode.truncations[:-1].any():
        problems.append(("predicates", "the episode goes on after it ended"))
    if not (episode.terminations[-1] or episode.truncations[-1]):
        problems.append(("predicates", f"the last step (step {episode.length - 1}) neither terminates nor truncates"))
    rewards, _ = transition_outcome(episode.observations[:-1], episode.observations[1:], goals[1:], initial[1:])
    if not np.allclose(rewards, episode.rewards, atol=1e-3):
        problems.append(("rewards", f"rewards differ from the env's dense reward by up to "
                                    f"{np.abs(rewards - episode.rewards).max():.3g}"))
    return problems
