"""Killed and failed runs of ``kalm train``: a retry with corrected settings is not blocked, and a
save killed mid-write leaves no temporary file behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kalm.cli import main as kalm_main
from kalm_envs.atomic import atomic_write_text, remove_stale_temporaries
from kalm_rl.trainer import CHECKPOINT_FILE, CONFIG_FILE
from tests.fuzz_cases import Workspace
from tests.helpers import temporary_minari_root

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def base_dataset(tmp_path):
    """A 3-episode train dataset in a Minari root of its own: (root, id)."""
    with temporary_minari_root(tmp_path / "minari") as root:
        Workspace(tmp_path).base()
        yield root, "kalm/fuzz/base-v0"


def _train(dataset: str, output: Path, *extra: str) -> list[str]:
    return ["train", "--algorithm", "bc", "--datasets", dataset, "--encoder", "hashed", "--param", "hidden=[8]",
            "--output", str(output), "--no-progress", *extra]


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_train_killed_before_its_first_checkpoint_can_be_retried_with_other_settings(base_dataset, tmp_path):
    root, dataset = base_dataset
    output = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "kalm.cli", *_train(dataset, output, "--updates", "10000000", "--checkpoint-every",
                                                   "10000000", "--batch-size", "4")],
        cwd=REPO, env={**os.environ, "MINARI_DATASETS_PATH": str(root)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (output / CONFIG_FILE).is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert (output / CONFIG_FILE).is_file() and not (output / CHECKPOINT_FILE).exists()
    assert kalm_main(_train(dataset, output, "--updates", "3", "--batch-size", "8")) == 0
    assert json.loads((output / CONFIG_FILE).read_text())["batch_size"] == 8
    assert (output / "policy.pt").is_file()


def test_a_run_with_a_checkpoint_still_refuses_other_settings(base_dataset, tmp_path, capsys):
    root, dataset = base_dataset
    output = tmp_path / "run"
    assert kalm_main(_train(dataset, output, "--updates", "2", "--batch-size", "4")) == 0
    assert kalm_main(_train(dataset, output, "--updates", "3", "--batch-size", "8")) == 2
    assert "settings ['batch_size'] differ" in capsys.readouterr().err


def test_a_checkpoint_save_killed_mid_write_leaves_no_temporary_file(base_dataset, tmp_path):
    root, dataset = base_dataset
    output = tmp_path / "run"
    assert kalm_main(_train(dataset, output, "--updates", "2", "--batch-size", "4")) == 0
    killed = output / f".{CHECKPOINT_FILE}.tmp-{_dead_pid()}"  # what a save killed mid-write leaves
    killed.write_bytes(b"half a checkpoint")
    assert kalm_main(_train(dataset, output, "--updates", "3", "--batch-size", "4")) == 0
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == []


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f".a.json.tmp-{_dead_pid()}"
    live = tmp_path / f".b.json.tmp-{os.getppid()}"  # a running process (this one's parent)
    other = tmp_path / ".c.json.tmp-notapid"
    for path in (dead, live, other):
        path.write_text("x")
    atomic_write_text(tmp_path / "d.json", "{}")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "d.json"])


OUT_OF_MEMORY = """
import resource, sys
import kalm.commands.separation, kalm_envs.separation  # imported before the limit
from kalm.cli import main
size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 150 * 2**20, size + 150 * 2**20))
sys.exit(main(sys.argv[1:]))
"""
"""Run ``kalm ARGV`` with 150 MB of address space to spare after the imports."""


def test_running_out_of_memory_is_one_line_not_a_traceback():
    """10,000 hard goals are allowed, but their 300 MB of sentence vectors do not fit in 150 MB:
    numpy's MemoryError ends the command with status 2 and one line."""
    out = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY, "separation", "--levels", "hard", "--hard-goals",
                          "10000", "--encoder", "hashed"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "kalm separation: error: out of memory" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


class _Payload:
    """Pickles as a call that creates ``marker``: what a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_grounding_checkpoint_is_loaded_without_running_code(tmp_path):
    """Resuming ``kalm ground`` from a checkpoint whose state file was replaced by a pickle that
    would create a file: refused by name, and the file is never created."""
    import shutil

    import torch

    from tests.fault_cases import _ground_argv

    with temporary_minari_root(tmp_path / "minari"):
        workspace = Workspace(tmp_path)
        run = tmp_path / "ground"
        assert kalm_main([str(a) for a in _ground_argv(workspace, run, steps=2)]) == 0
        shutil.rmtree(run / "final")  # as if killed after checkpoint-1
        marker = tmp_path / "payload-ran"
        torch.save({"step": 1, "rng": _Payload(marker)}, run / "checkpoint-1" / "training_state.pt")
        assert kalm_main([str(a) for a in _ground_argv(workspace, run, steps=2)]) == 2
    assert not marker.exists()
