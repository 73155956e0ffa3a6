"""Faults of the dataset writers (issue 15): a KALM file that would run code or fail verify,
dataset ids that reach outside the Minari root, two builds of one id, a killed multi-worker
build, and a disk that fills up. Everything runs for real: MuJoCo rollouts, Minari datasets on
disk, subprocesses killed with SIGKILL, writes refused by the OS (``RLIMIT_FSIZE``)."""

import contextlib
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import minari
import numpy as np
import psutil
import pytest

from kalm.cli import main
from kalm_envs.collector import build_dataset
from kalm_envs.dataset_paths import dataset_dir, staging_dir
from kalm_envs.dataset_specs import get_spec
from kalm_envs.kalm_import import import_kalm, read_kalm_file
from kalm_envs.minari_io import DatasetError, write_dataset
from kalm_envs.oracle import oracle_episodes
from kalm_envs.registration import ENV_IDS
from kalm_envs.verify import verify_dataset
from kalm_gen.imagine_dataset import write_imagined_dataset

REAL = "kalm/clevr-robot/real-v0"
KALM_DIR = Path(__file__).resolve().parents[2] / "shared" / "external" / "kalm"
KALM_FILE = KALM_DIR / "clevr_robot.npy"
REPO = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, relative to it."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def _kalm_command(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    """``kalm ARGV`` in a subprocess whose Minari root is the test's."""
    return subprocess.run([sys.executable, "-m", "kalm.cli", *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "MUJOCO_GL": "egl"}, timeout=120, **kwargs)


def _error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not progress bars (which redraw themselves after a ``\\r``)."""
    lines = stderr.replace("\r", "\n").splitlines()
    return [line for line in lines if line.strip() and not line.endswith("ep/s]")]


# ---------------------------------------------------------------------------------------------
# 1. import-kalm never runs code from its input


def _kalm_subset(trajectories: int = 3) -> dict:
    """The first trajectories of KALM's released file (trusted test data, so numpy may unpickle it)."""
    data = np.load(KALM_FILE, allow_pickle=True).item()
    return {key: value[:trajectories] if isinstance(value, np.ndarray) else value for key, value in data.items()}


class _RunsCode:
    """Pickles as a call of ``function(*args)``: what a crafted file would hold."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("payload", ["open", "system"])
def test_import_kalm_refuses_a_pickle_that_would_run_code(payload, minari_root, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = _RunsCode(open, str(marker), "w") if payload == "open" else _RunsCode(os.system, f"touch {marker}")
    crafted = tmp_path / "crafted.npy"
    np.save(crafted, {**_kalm_subset(), "masks": evil}, allow_pickle=True)
    global_name = "io.open" if payload == "open" else f"{os.system.__module__}.system"
    with pytest.raises(DatasetError, match=f"crafted.npy is refused: its pickle calls {global_name}"):
        read_kalm_file(crafted)
    assert main(["datasets", "import-kalm", str(crafted), "kalm/test/crafted-v0", "--ref-episodes", "1"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("kalm datasets: error:") and "crafted.npy" in message and global_name in message
    assert not marker.exists()
    assert _tree(minari_root) == set()


def test_import_kalm_still_reads_numpy_pickles_of_every_protocol(tmp_path):
    """KALM's two released files (``numpy.core`` globals, protocol 3), and the same dict pickled by
    this numpy (``numpy._core``) with protocol 2, which rebuilds bytes with ``_codecs.encode``."""
    episodes = read_kalm_file(KALM_FILE)
    assert len(episodes) == 80 and sum(e.length for e in episodes) == 898
    with pytest.raises(DatasetError, match="lacks KALM keys"):  # unpickled, but not a trajectory file
        read_kalm_file(KALM_DIR / "clevr_rephrase_prompt.npy")
    again = tmp_path / "protocol-2.npy"
    array = np.array(_kalm_subset(80), dtype=object)
    with open(again, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(array))
        pickle.dump(array, handle, protocol=2)
    assert [e.rewards.tolist() for e in read_kalm_file(again)] == [e.rewards.tolist() for e in episodes]


# ---------------------------------------------------------------------------------------------
# 2. import-kalm makes no dataset that verify would refuse


def _set_reward(data: dict) -> str:
    data["rewards"][1, 0, 0] += 5.0
    return "trajectory 1 .* rewards differ from the env's dense reward by up to 5"


def _terminal_too_early(data: dict) -> str:
    data["terminals"][0, 0, 0] = True
    return "trajectory 0 .* terminations disagree with the predicates at step 0"


def _cut_before_success(data: dict) -> str:
    data["masks"][2, 4] = 0  # trajectory 2 now ends one step before its success
    return "trajectory 2 .* the last step \\(step 3\\) neither terminates nor truncates"


@pytest.mark.parametrize("change", [_set_reward, _terminal_too_early, _cut_before_success])
def test_import_kalm_refuses_trajectories_that_verify_would_fail(change, minari_root, tmp_path):
    data = _kalm_subset()
    expected = change(data)
    path = tmp_path / "bad.npy"
    np.save(path, data, allow_pickle=True)
    with pytest.raises(DatasetError, match=f"bad.npy: {expected}"):
        import_kalm(path, "kalm/test/bad-v0", ref_episodes=1)
    assert _tree(minari_root) == set()


# ---------------------------------------------------------------------------------------------
# 3. dataset ids never reach outside the Minari root

BAD_IDS = ["../escaped-v0", "kalm/../../escaped-v0", "kalm/./x-v0", "kalm//x-v0", "kalm/x-v0/", "kalm\\x-v0",
           "kalm/no-version", "ABSOLUTE"]


def _bad_id(name: str, tmp_path: Path) -> str:
    return str(tmp_path / "outside" / "x-v0") if name == "ABSOLUTE" else name


def _writers(tmp_path: Path) -> dict:
    episodes = oracle_episodes("train", range(1))
    return {
        "dataset_dir": dataset_dir,
        "staging_dir": staging_dir,
        "write_dataset": lambda i: write_dataset(i, episodes, ENV_IDS["train"], "t", {}, (0.0, 1.0), "test"),
        "build_dataset": lambda i: build_dataset(replace(get_spec(REAL), id=i), episodes=1, progress=False,
                                                 ref_episodes=1),
        "import_kalm": lambda i: import_kalm(KALM_FILE, i, ref_episodes=1),
        "write_imagined_dataset": lambda i: write_imagined_dataset(tmp_path / "no-model", "hard", episodes=1,
                                                                   dataset_id=i, ref_episodes=1),
    }


@pytest.mark.parametrize("name", BAD_IDS)
def test_a_bad_dataset_id_is_refused_by_every_writer_before_anything_is_written(name, minari_root, tmp_path, capsys):
    bad = _bad_id(name, tmp_path)
    writers = _writers(tmp_path)
    before = _tree(tmp_path)
    for writer, call in writers.items():
        with pytest.raises(ValueError, match="dataset id") as error:
            call(bad)
        assert repr(bad)[:60] in str(error.value), writer
        assert _tree(tmp_path) == before, writer
    commands = {
        "import-kalm": ["datasets", "import-kalm", str(KALM_FILE), bad, "--ref-episodes", "1"],
        "imagine": ["imagine", "--model", str(tmp_path / "no-model"), "--level", "hard", "--episodes", "1", "--id", bad],
    }
    for command in commands.values():
        assert main(command) == 2
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1 and "dataset id" in message and repr(bad)[:60] in message
    assert _tree(tmp_path) == before


def test_imagine_refuses_an_explicitly_empty_id(minari_root, tmp_path, capsys):
    assert main(["imagine", "--model", str(tmp_path / "no-model"), "--level", "hard", "--id", ""]) == 2
    assert "dataset id '' must not be empty" in capsys.readouterr().err
    assert _tree(minari_root) == set()


def test_a_folder_is_still_read_and_a_bad_id_is_not_looked_up_outside_the_root(minari_root, tmp_path, monkeypatch):
    episodes = oracle_episodes("train", range(2))
    folder = write_dataset("kalm/test/read-v0", episodes, ENV_IDS["train"], "t", {}, (0.0, 1.0), "test")
    outside = tmp_path / "outside-v0"
    folder.rename(outside)
    assert verify_dataset(outside).ok  # a folder given by its path
    monkeypatch.chdir(minari_root / "kalm")
    with pytest.raises(DatasetError, match="no Minari HDF5 dataset at ../outside-v0"):
        verify_dataset("../outside-v0")  # ... from the cwd, never joined to the Minari root


# ---------------------------------------------------------------------------------------------
# 4. two builds of one id


def test_a_second_build_of_an_id_fails_at_once_naming_the_first_and_a_killed_one_blocks_nothing(
    minari_root, capsys
):
    holding = ("import sys, time\nfrom kalm_envs.dataset_paths import build_lock\n"
               "with build_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", holding, REAL], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["datasets", "build", REAL, "--episodes", "3", "--ref-episodes", "1"]) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("kalm datasets: error: dataset kalm/clevr-robot/real-v0 is being built by "
                                  f"process {holder.pid}") and len(message.splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert not dataset_dir(REAL).exists()
    assert main(["datasets", "build", REAL, "--episodes", "3", "--ref-episodes", "1"]) == 0  # the lock died with it
    assert verify_dataset(REAL).ok
    assert list(minari.list_local_datasets()) == [REAL]
    assert not (minari_root / ".kalm-staging").exists()  # the lock file went with the staging area


# ---------------------------------------------------------------------------------------------
# 5. a killed --workers 2 build leaves no orphans


def test_killing_a_two_worker_build_kills_its_workers(minari_root):
    build = subprocess.Popen([sys.executable, "-m", "kalm.cli", "datasets", "build", REAL, "--episodes", "400",
                              "--workers", "2"], cwd=REPO, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        parent = psutil.Process(build.pid)
        deadline = time.time() + 60
        while len(workers) < 2 and time.time() < deadline and build.poll() is None:
            workers = [child for child in parent.children() if child.cmdline() == parent.cmdline()]  # forked
            time.sleep(0.05)
        assert len(workers) == 2, "the build should have started its two workers"
        build.send_signal(signal.SIGKILL)
        build.wait()
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their parent"
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(build.pid, signal.SIGKILL)
        build.wait()


# ---------------------------------------------------------------------------------------------
# 6. a full disk


def _file_size_limit(limit: int):
    """A ``preexec_fn`` that makes a write past ``limit`` bytes fail with EFBIG (CPython ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("argv, limit, written", [
    (["datasets", "build", REAL, "--episodes", "30", "--ref-episodes", "1"], 4_000, "shard-00000.npz"),
    (["datasets", "import-kalm", str(KALM_FILE), "kalm/test/full-v0", "--ref-episodes", "1"], 50_000,
     "main_data.hdf5"),
], ids=["build-shard", "import-hdf5"])
def test_a_full_disk_is_one_clear_error_and_leaves_nothing_visible(argv, limit, written, minari_root):
    out = _kalm_command(*argv, preexec_fn=_file_size_limit(limit))
    lines = _error_lines(out.stderr)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("kalm datasets: error: [Errno 27]"), lines[:5]
    assert "File too large" in lines[0] and f"{written}'" in lines[0]
    assert {path.name for path in minari_root.iterdir()} <= {".kalm-staging"}  # hidden: what a resume reuses
    assert minari.list_local_datasets() == {}


def test_ids_that_flatten_alike_get_staging_folders_of_their_own(minari_root):
    from kalm_envs.dataset_paths import lock_file, staging_dir

    ids = ("kalm/a__b/c-v0", "kalm/a/b__c-v0", "kalm/" + "x" * 240 + "/y-v0")
    folders = [staging_dir(i) for i in ids]
    assert len(set(folders)) == 2 + 1 and len({lock_file(i) for i in ids}) == 3
    assert all(len(folder.name) <= 255 and folder.parent.name == ".kalm-staging" for folder in folders)
