"""Checking a dataset on disk against our env ids and spaces, our predicates and its stored checksum."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from kalm_envs.dataset_checks import dataset_level
from kalm_envs.goals import Goal
from kalm_envs.language import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH
from kalm_envs.minari_io import METADATA_KEY, content_checksum, hdf5_path, read_episodes, read_metadata
from kalm_envs.physics import N_ACTIONS, STATE_DIM
from kalm_envs.predicates import is_success, transition_outcome
from kalm_envs.registration import EPISODE_STEPS
from kalm_envs.rollout import Episode

_CHARSET = frozenset(INSTRUCTION_CHARSET)
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
    """Run every check; never raises on bad content, only on an unreadable file."""
    report = VerifyReport(str(dataset_id_or_dir))
    episodes = read_episodes(dataset_id_or_dir)
    metadata = read_metadata(dataset_id_or_dir)
    report.episodes, report.steps = len(episodes), sum(e.length for e in episodes)
    for name in ("env", "lengths", "spaces", "finite values", "repeated fields", "predicates", "rewards", "checksum"):
        report.checks[name] = []
    if report.episodes != metadata.get("total_episodes") or report.steps != metadata.get("total_steps"):
        report.fail("lengths", f"metadata says {metadata.get('total_episodes')} episodes, "
                               f"{metadata.get('total_steps')} steps")
    _check_env(dataset_id_or_dir, episodes, report)
    _check_repeated_fields(hdf5_path(dataset_id_or_dir), report)
    for index, episode in enumerate(episodes):
        _check_episode(index, episode, report)
    stored = metadata.get(METADATA_KEY, {}).get("checksum")
    if stored is None:
        report.fail("checksum", "no checksum in the dataset metadata")
    elif stored != content_checksum(episodes):
        report.fail("checksum", f"content does not match the stored checksum {stored[:12]}...")
    return report


def _check_env(dataset_id_or_dir: str | Path, episodes: list[Episode], report: VerifyReport) -> None:
    """The env must be a current level's id with our spaces, and no episode longer than its limit."""
    try:
        level = dataset_level(dataset_id_or_dir)
    except ValueError as error:
        report.fail("env", str(error))
        return
    limit = EPISODE_STEPS[level]
    for index, episode in enumerate(episodes):
        if episode.length > limit:
            report.fail("lengths", f"episode {index}: {episode.length} steps, over the {level} level's "
                                   f"limit of {limit}")


def _check_repeated_fields(path: Path, report: VerifyReport) -> None:
    """Goal and instruction must be the same at every step of an episode."""
    with h5py.File(path, "r") as file:
        for name in file:
            goals = file[name]["infos/goal"][()]
            instructions = file[name]["observations/instruction"][()]
            if not (goals == goals[0]).all() or len(set(instructions.tolist())) != 1:
                report.fail("repeated fields", f"{name}: goal or instruction changes within it")


def _check_episode(index: int, episode: Episode, report: VerifyReport) -> None:
    where = f"episode {index}"
    steps = episode.length
    if steps < 1 or episode.observations.shape != (steps + 1, STATE_DIM) or episode.successes.shape != (steps + 1,):
        report.fail("lengths", f"{where}: {steps} actions but observations {episode.observations.shape}, "
                               f"infos {episode.successes.shape}")
        return
    if not all(len(a) == steps for a in (episode.rewards, episode.terminations, episode.truncations)):
        report.fail("lengths", f"{where}: rewards/terminations/truncations are not {steps} long")
        return
    if episode.actions.min() < 0 or episode.actions.max() >= N_ACTIONS:
        report.fail("spaces", f"{where}: action outside [0, {N_ACTIONS})")
    bad_chars = set(episode.instruction) - _CHARSET
    if bad_chars or not 0 < len(episode.instruction) <= MAX_INSTRUCTION_LENGTH:
        report.fail("spaces", f"{where}: instruction {episode.instruction!r} is outside the Text space")
    try:
        Goal.from_array(episode.goal)
    except ValueError as error:
        report.fail("spaces", f"{where}: {error}")
        return
    if not (np.isfinite(episode.observations).all() and np.isfinite(episode.rewards).all()):
        report.fail("finite values", f"{where}: non-finite observation or reward")
        return
    goals = np.repeat(episode.goal[None], steps + 1, axis=0)
    initial = np.repeat(episode.observations[:1], steps + 1, axis=0)
    success = is_success(episode.observations, goals, initial)
    if not np.array_equal(success, episode.successes):
        first = int(np.flatnonzero(success != episode.successes)[0])
        report.fail("predicates", f"{where}: is_success at step {first} disagrees with the predicates")
    if not np.array_equal(success[1:] | Goal.from_array(episode.goal).one_push, episode.terminations):
        report.fail("predicates", f"{where}: terminations disagree with the predicates")
    if episode.terminations[:-1].any() or episode.truncations[:-1].any():
        report.fail("predicates", f"{where}: the episode goes on after it ended")
    if not (episode.terminations[-1] or episode.truncations[-1]):
        report.fail("predicates", f"{where}: the last step neither terminates nor truncates")
    rewards, _ = transition_outcome(episode.observations[:-1], episode.observations[1:], goals[1:], initial[1:])
    if not np.allclose(rewards, episode.rewards, atol=1e-3):
        report.fail("rewards", f"{where}: rewards differ from the env's dense reward by up to "
                               f"{np.abs(rewards - episode.rewards).max():.3g}")
