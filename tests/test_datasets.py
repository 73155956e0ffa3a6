"""Minari datasets: build, reload elsewhere, alignment, atomic and resumable builds, verify,
the KALM importer, the flat loader and the adapters."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from kalm_envs import ENV_IDS
from kalm_envs.collector import build_dataset
from kalm_envs.dataset_specs import DatasetSpec, get_spec, list_specs, published_id
from kalm_envs.kalm_import import import_kalm
from kalm_envs.loader import load_transitions
from kalm_envs.dataset_paths import dataset_dir, staging_dir
from kalm_envs.minari_io import DatasetError, read_episodes, read_metadata
from kalm_envs.minari_io import write_dataset
from kalm_envs.oracle import oracle_episodes
from kalm_envs.rollout import Episode, run_episode
from kalm_envs.verify import verify_dataset
from tests.helpers import temporary_minari_root

REAL = "kalm/clevr-robot/real-v0"
HARD = "kalm/clevr-robot/oracle-hard-v0"
KALM_FILE = Path(__file__).resolve().parents[2] / "shared" / "external" / "kalm" / "clevr_robot.npy"


@pytest.fixture(scope="module")
def built_real(tmp_path_factory):
    """A 12-episode real-v0 in its own root, shared by the read-only tests."""
    with temporary_minari_root(tmp_path_factory.mktemp("real")) as root:
        build_dataset(get_spec(REAL), episodes=12, shard_size=5, progress=False, ref_episodes=4)
        yield root


def test_specs_cover_the_published_ids():
    specs = list_specs()
    assert set(specs) == {REAL, HARD, "kalm/clevr-robot/oracle-easy-v1", "kalm/clevr-robot/oracle-rephrase-v0",
                          "kalm/clevr-robot/imagined-rephrase-v2", "kalm/clevr-robot/imagined-easy-v2",
                          "kalm/clevr-robot/imagined-hard-v2"}
    assert specs[REAL].episodes == 10_000 and specs[REAL].level == "train"
    assert published_id("oracle", "hard") == HARD and published_id("imagined", "easy") == "kalm/clevr-robot/imagined-easy-v2"
    assert specs[published_id("oracle", "easy")].env_id == ENV_IDS["easy"] == "KALM/CLEVRRobot-Easy-v1"
    assert "one push" in specs["kalm/clevr-robot/oracle-easy-v1"].description
    assert "on easy, the episode's one push" in specs["kalm/clevr-robot/oracle-easy-v1"].card()
    assert specs["kalm/clevr-robot/oracle-easy-v1"].epsilon == 0.0  # a random push would be a failed episode
    with pytest.raises(ValueError, match="'imagined' on level 'train'"):
        published_id("imagined", "train")
    card = specs[HARD].card()
    for needle in ("infos[\"goal\"]", "Reward", "Citation", "kalm datasets build " + HARD, "pang2024kalm"):
        assert needle in card
    with pytest.raises(ValueError, match="real-v9"):
        get_spec("kalm/clevr-robot/real-v9")


def test_imagined_specs_say_how_their_actions_are_picked():
    """The 50-step levels draw the model's actions at temperature 1, the one-push level takes its
    greedy action; the card says which, and a temperature is refused where it means nothing."""
    specs = list_specs()
    temperatures = {spec.level: spec.temperature for spec in specs.values() if spec.source == "imagined"}
    assert temperatures == {"rephrase": 1.0, "easy": 0.0, "hard": 1.0}
    assert "actions drawn at temperature 1 (sample seed 0)" in specs[published_id("imagined", "hard")].card()
    assert "greedy actions from its action head" in specs[published_id("imagined", "easy")].card()
    imagined = specs[published_id("imagined", "hard")]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"temperature {bad} must be a finite number >= 0"):
            DatasetSpec(**{**asdict(imagined), "temperature": bad})
    with pytest.raises(ValueError, match="oracle-hard-v0: temperature 1.0 .* 0 unless the spec is imagined"):
        DatasetSpec(**{**asdict(specs[HARD]), "temperature": 1.0})


def test_metadata_and_reload_in_a_fresh_process(built_real):
    metadata = read_metadata(REAL)
    assert metadata["total_episodes"] == 12
    for key in ("env_spec", "eval_env_spec", "ref_min_score", "ref_max_score", "author", "description", "code_permalink", "requirements"):
        assert metadata.get(key) is not None, key
    assert np.isfinite([metadata["ref_min_score"], metadata["ref_max_score"]]).all()
    provenance = metadata["kalm"]
    assert provenance["spec"]["episodes"] == 12 and provenance["spec"]["seed"] == 0
    assert len(provenance["checksum"]) == 64
    code = (
        "import minari, numpy as np\n"
        f"ds = minari.load_dataset('{REAL}')\n"
        "assert 'kalm_envs' not in __import__('sys').modules\n"
        "episode = next(ds.iterate_episodes())\n"
        "env = ds.recover_environment()\n"
        "obs, info = env.reset(seed=0)\n"
        "obs, reward, term, trunc, info = env.step(int(episode.actions[0]))\n"
        "print(ds.total_episodes, len(episode.actions), sorted(episode.infos))\n"
    )
    env = {**os.environ, "MINARI_DATASETS_PATH": str(built_real)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "12"


def test_episodes_replay_exactly_in_the_env(built_real):
    env = gym.make("KALM/CLEVRRobot-v0")
    dataset = minari.load_dataset(REAL)
    for episode, ours in zip(dataset.iterate_episodes(), read_episodes(REAL), strict=True):
        obs, info = env.reset(seed=int(ours.seed))
        assert obs["instruction"] == episode.observations["instruction"][0]
        np.testing.assert_array_equal(obs["observation"], episode.observations["observation"][0])
        for t, action in enumerate(episode.actions):
            obs, reward, terminated, truncated, info = env.step(int(action))
            np.testing.assert_array_equal(obs["observation"], episode.observations["observation"][t + 1])
            assert reward == pytest.approx(episode.rewards[t])
            assert (terminated, truncated) == (episode.terminations[t], episode.truncations[t])
            np.testing.assert_array_equal(info["goal"], episode.infos["goal"][t + 1])
        assert len(episode.observations["observation"]) == len(episode.actions) + 1


def test_flat_loader_is_aligned_with_minari_episodes(built_real):
    transitions = load_transitions(REAL)
    start = 0
    for number, episode in enumerate(minari.load_dataset(REAL).iterate_episodes()):
        steps = len(episode.actions)
        block = slice(start, start + steps)
        states = episode.observations["observation"]
        np.testing.assert_array_equal(transitions.observations[block], states[:-1])
        np.testing.assert_array_equal(transitions.next_observations[block], states[1:])
        np.testing.assert_array_equal(transitions.actions[block], episode.actions)
        np.testing.assert_allclose(transitions.rewards[block], episode.rewards, rtol=1e-6)
        np.testing.assert_array_equal(transitions.terminations[block], episode.terminations)
        np.testing.assert_array_equal(transitions.goals[block], episode.infos["goal"][:-1])
        assert set(transitions.instruction_texts[block]) == {episode.observations["instruction"][0]}
        assert (transitions.episode_ids[block] == number).all()
        start += steps
    assert start == len(transitions)


def test_loader_reads_the_hdf5_alone_when_the_index_is_gone(built_real, tmp_path):
    with_index = load_transitions(REAL)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(dataset_dir(REAL)), str(copy)], check=True)
    (copy / "data" / "kalm_index.npz").unlink()
    without = load_transitions(copy)
    for field in ("observations", "next_observations", "actions", "rewards", "goals", "episode_ids", "timesteps"):
        np.testing.assert_array_equal(getattr(with_index, field), getattr(without, field))


def test_two_sources_keep_their_labels(minari_root):
    for dataset_id, level in (("kalm/test/a-v0", "train"), ("kalm/test/b-v0", "easy")):
        episodes = oracle_episodes(level, range(4))
        write_dataset(dataset_id, episodes, ENV_IDS[level], "t", {}, (0.0, 1.0), "oracle")
    both = load_transitions(["kalm/test/a-v0", "kalm/test/b-v0"])
    first = load_transitions("kalm/test/a-v0")
    assert both.source_names == ["kalm/test/a-v0", "kalm/test/b-v0"]
    assert (both.sources[: len(first)] == 0).all() and (both.sources[len(first) :] == 1).all()
    assert both.episode_ids.max() == 7
    with pytest.raises(ValueError, match="at least one"):
        load_transitions([])


def _start_build(root: Path, dataset_id: str, episodes: int, shard_size: int) -> subprocess.Popen:
    code = (
        "from kalm_envs.collector import build_dataset\n"
        "from kalm_envs.dataset_specs import get_spec\n"
        f"build_dataset(get_spec('{dataset_id}'), episodes={episodes}, shard_size={shard_size}, progress=False, ref_episodes=2)\n"
    )
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root)}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def test_killed_build_leaves_nothing_and_resumes(minari_root, tmp_path, monkeypatch):
    process = _start_build(minari_root, HARD, episodes=12, shard_size=3)
    work = staging_dir(HARD)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("shard-*.npz"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    shards = sorted(work.glob("shard-*.npz"))
    assert 2 <= len(shards) < 4, "the build should have been killed midway"
    assert not dataset_dir(HARD).exists()
    assert HARD not in minari.list_local_datasets()
    kept_seeds = {int(seed) for path in shards for seed in np.load(path)["seeds"]}

    simulated: list[int] = []

    def counting(level, seeds, *args, **kwargs):
        simulated.extend(seeds)
        return oracle_episodes(level, seeds, *args, **kwargs)

    monkeypatch.setattr("kalm_envs.collector.oracle_episodes", counting)
    build_dataset(get_spec(HARD), episodes=12, shard_size=3, progress=False, ref_episodes=2)
    assert kept_seeds and not kept_seeds & set(simulated)  # finished shards were not redone
    assert verify_dataset(HARD).ok
    assert HARD in minari.list_local_datasets()
    assert not work.exists()
    resumed = read_metadata(HARD)["kalm"]["checksum"]

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "clean"))
    build_dataset(get_spec(HARD), episodes=12, shard_size=3, progress=False, ref_episodes=2)
    assert read_metadata(HARD)["kalm"]["checksum"] == resumed  # the resumed build is the same data


def test_build_refuses_to_overwrite(built_real):
    with pytest.raises(FileExistsError, match="already exists"):
        build_dataset(get_spec(REAL), episodes=3, progress=False, ref_episodes=2)


def test_corrupted_and_truncated_files_are_reported(built_real, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(dataset_dir(REAL)), str(copy)], check=True)
    with h5py.File(copy / "data" / "main_data.hdf5", "r+") as file:
        file["episode_3/rewards"][0] += 5.0
    report = verify_dataset(copy)
    assert not report.ok
    assert report.checks["checksum"] and report.checks["rewards"] and not report.checks["lengths"]
    assert "episode 3" in report.checks["rewards"][0]

    data = copy / "data" / "main_data.hdf5"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated or corrupted"):
        read_episodes(copy)
    with pytest.raises(DatasetError, match="no Minari HDF5 dataset"):
        read_episodes(tmp_path / "nowhere")


def test_verify_cli_exits_nonzero_on_a_bad_dataset(built_real, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(dataset_dir(REAL)), str(copy)], check=True)
    with h5py.File(copy / "data" / "main_data.hdf5", "r+") as file:
        file["episode_0/infos/is_success"][0] = True
    out = subprocess.run([sys.executable, "-m", "kalm.cli", "datasets", "verify", str(copy), "--json"], capture_output=True, text=True)
    assert out.returncode == 1
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["ok"] and report["checks"]["predicates"]
    assert "FAIL" in out.stdout


def _multi_push_easy_episode(seed: int, rng: np.random.Generator, limit: int = 5) -> Episode:
    """An easy episode as the retired KALM/CLEVRRobot-Easy-v0 recorded it: random pushes until the
    goal holds or ``limit`` pushes (v0 allowed 50). The bare env goes on after the first push,
    which the registered v1 env ends."""
    env = gym.make(ENV_IDS["easy"]).unwrapped
    observation, info = env.reset(seed=seed)
    states, actions, rewards, successes = [observation["observation"]], [], [], [info["is_success"]]
    while len(actions) < limit and not successes[-1]:
        actions.append(int(rng.integers(40)))
        observation, reward, _, _, info = env.step(actions[-1])
        states.append(observation["observation"])
        rewards.append(reward)
        successes.append(info["is_success"])
    terminations = np.array(successes[1:], dtype=bool)
    truncations = np.zeros(len(actions), dtype=bool)
    truncations[-1] = not terminations[-1]
    return Episode(seed, env.instruction, info["goal"], np.stack(states), np.array(actions, dtype=np.int64),
                   np.array(rewards), terminations, truncations, np.array(successes, dtype=bool))


def test_easy_data_of_the_retired_50_step_env_is_refused(minari_root):
    """Easy episodes of several pushes, as KALM/CLEVRRobot-Easy-v0 recorded them: under the v1 id
    verify flags their lengths; under their own (retired) id the reader and verify refuse them."""
    rng = np.random.default_rng(0)
    episodes = [_multi_push_easy_episode(seed, rng) for seed in range(6)]
    assert max(e.length for e in episodes) > 1
    write_dataset("kalm/test/easy-old-v0", episodes, ENV_IDS["easy"], "t", {}, (0.0, 1.0), "random")
    report = verify_dataset("kalm/test/easy-old-v0")
    assert not report.checks["env"] and any("over the easy level's limit of 1" in p for p in report.checks["lengths"])

    metadata_file = dataset_dir("kalm/test/easy-old-v0") / "data" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    env_spec = json.loads(metadata["env_spec"])
    metadata["env_spec"] = json.dumps({**env_spec, "id": "KALM/CLEVRRobot-Easy-v0", "max_episode_steps": 50})
    metadata_file.write_text(json.dumps(metadata))
    expected = r"retired env KALM/CLEVRRobot-Easy-v0: the easy level changed to one push .* kalm/clevr-robot/oracle-easy-v1"
    with pytest.raises(ValueError, match=expected):
        load_transitions("kalm/test/easy-old-v0")
    report = verify_dataset("kalm/test/easy-old-v0")
    assert not report.ok and "kalm/clevr-robot/imagined-easy-v2" in report.checks["env"][0]
    out = subprocess.run([sys.executable, "-m", "kalm.cli", "datasets", "verify", "kalm/test/easy-old-v0"],
                         capture_output=True, text=True, env={**os.environ, "MINARI_DATASETS_PATH": str(minari_root)})
    assert out.returncode == 1 and "FAIL env" in out.stdout and "one push" in out.stdout


def test_kalm_import_round_trips_every_transition(minari_root):
    import_kalm(KALM_FILE, "kalm/clevr-robot/kalm-release-v0", ref_episodes=3)
    report = verify_dataset("kalm/clevr-robot/kalm-release-v0")
    assert report.ok, report.table()
    assert (report.episodes, report.steps) == (80, 898)
    source = np.load(KALM_FILE, allow_pickle=True).item()
    transitions = load_transitions("kalm/clevr-robot/kalm-release-v0")
    valid = source["masks"].astype(bool)
    np.testing.assert_array_equal(transitions.observations, source["observations"][valid])
    np.testing.assert_array_equal(transitions.next_observations, source["next_observations"][valid])
    np.testing.assert_array_equal(transitions.actions, source["actions"][valid])
    np.testing.assert_allclose(transitions.rewards, source["rewards"][valid][:, 0])
    np.testing.assert_array_equal(transitions.terminations, source["terminals"][valid][:, 0])


def test_kalm_import_rejects_a_bad_file(minari_root, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, {"observations": np.zeros((1, 50, 10))}, allow_pickle=True)
    with pytest.raises(DatasetError, match="lacks KALM keys"):
        import_kalm(bad, "kalm/test/bad-v0")
    with pytest.raises(DatasetError, match="no KALM file"):
        import_kalm(tmp_path / "missing.npy", "kalm/test/bad-v0")
    assert not dataset_dir("kalm/test/bad-v0").exists()
