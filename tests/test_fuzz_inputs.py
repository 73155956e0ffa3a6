"""The fuzz suite: every generated bad input of :mod:`tests.fuzz_cases` (over 900, across the env,
goals, language, encoders, corrupt datasets, the KALM importer, configs, policies and the command
line) and of :mod:`tests.fault_cases` (damaged policy, model and checkpoint files, seeds and sizes
out of range, empty paths, every ``kalm run --set`` setting) must end in a clean error that names
it, and every documented acceptance must be accepted. ``python -m tests.fuzz_report`` counts the
outcomes (the figures quoted in issue notes)."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fault_cases import fault_cases
from tests.fuzz_cases import LONG_ID, Workspace, all_cases, outcome
from tests.helpers import temporary_minari_root

CASES = [*all_cases(), *fault_cases()]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One valid dataset (and its corrupt copies) in a Minari root of its own; the working folder
    moves there too, so that a command that would write ``runs/`` writes nothing in the repo."""
    folder = tmp_path_factory.mktemp("fuzz")
    with temporary_minari_root(folder / "minari"), contextlib.chdir(folder):
        yield Workspace(folder)


def test_the_suite_is_large_enough():
    bad = [case for case in CASES if not case.accept]
    assert len(bad) >= 500 and len(CASES) - len(bad) >= 50
    assert {case.name.split("/")[0] for case in bad} >= {
        "env", "make", "goal", "language", "encoder", "loader", "verify", "importer", "train", "ground",
        "policy", "cli", "cli-info", "cli-verify", "cli-fault"}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_by_name_and_documented_input_is_accepted(case, workspace):
    kind, detail = outcome(case, workspace)
    expected = "accepted" if case.accept else "clean"
    assert kind == expected, f"{case.name}: expected {expected}, got {kind}: {detail}"


def test_a_refused_command_prints_one_line_and_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kalm.cli", "datasets", "info", LONG_ID], capture_output=True,
                         text=True, env={**os.environ, "MINARI_DATASETS_PATH": str(tmp_path)}, cwd=REPO)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "xxxxxxxx" in out.stderr and "255" in out.stderr
