"""Adapters to d3rlpy (in its own virtual environment: it pins gymnasium 1.0.0) and CORL."""

import json
import subprocess

import numpy as np
import pytest

from kalm_envs.adapters import to_corl_dict, to_d3rlpy_arrays
from kalm_envs.loader import load_transitions
from kalm_envs.minari_io import write_dataset
from kalm_envs.oracle import oracle_episodes
from kalm_envs.text_encoders import HashedNgramEncoder
from tests.helpers import d3rlpy_python, temporary_minari_root



@pytest.fixture(scope="module")
def transitions(tmp_path_factory):
    """Random-policy episodes (most end in truncation) and oracle episodes (all terminate)."""
    with temporary_minari_root(tmp_path_factory.mktemp("minari")):
        episodes = oracle_episodes("train", range(8), epsilon=1.0) + oracle_episodes("train", range(8, 12))
        write_dataset("kalm/test/mixed-v0", episodes, "KALM/CLEVRRobot-v0", "test", {}, (0.0, 1.0), "mixed")
        loaded = load_transitions("kalm/test/mixed-v0")
    assert loaded.truncations.any() and loaded.terminations.any()
    return loaded


D3RLPY_SCRIPT = """
import json, sys, numpy as np
from d3rlpy.dataset import MDPDataset
arrays = dict(np.load(sys.argv[1]))
dataset = MDPDataset(**arrays, action_size=40)
episodes = dataset.episodes
np.savez(sys.argv[2], *[e.observations for e in episodes])
print(json.dumps({"episodes": len(episodes), "transitions": dataset.transition_count,
                  "terminated": [bool(e.terminated) for e in episodes]}))
"""


def test_d3rlpy_sees_our_episodes_and_every_transition(transitions, tmp_path):
    arrays = to_d3rlpy_arrays(transitions)
    np.savez(tmp_path / "in.npz", **arrays)
    out = subprocess.run(
        [str(d3rlpy_python()), "-c", D3RLPY_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    n_episodes = int(transitions.episode_ids.max()) + 1
    assert summary["episodes"] == n_episodes
    assert summary["transitions"] == len(transitions)
    embed = HashedNgramEncoder().encode(transitions.instructions)
    with np.load(tmp_path / "out.npz") as seen:
        for episode in range(n_episodes):
            rows = transitions.episode_ids == episode
            states = transitions.observations[rows]
            terminated = bool(transitions.terminations[rows][-1])
            if not terminated:
                states = np.concatenate([states, transitions.next_observations[rows][-1:]])
            expected = np.concatenate([states, embed[transitions.instruction_ids[rows][:1]].repeat(len(states), 0)], axis=1)
            np.testing.assert_allclose(seen[f"arr_{episode}"], expected, rtol=1e-6)
            assert summary["terminated"][episode] == terminated


def test_corl_dict_is_aligned(transitions):
    data = to_corl_dict(transitions)
    n = len(transitions)
    assert data["observations"].shape == (n, 10 + 256) == data["next_observations"].shape
    np.testing.assert_array_equal(data["observations"][:, :10], transitions.observations)
    np.testing.assert_array_equal(data["next_observations"][:, :10], transitions.next_observations)
    np.testing.assert_array_equal(data["terminals"], transitions.terminations.astype(np.float32))
    np.testing.assert_array_equal(data["timeouts"], transitions.truncations.astype(np.float32))
    # within an episode, each next observation is the following observation
    same = transitions.episode_ids[1:] == transitions.episode_ids[:-1]
    np.testing.assert_array_equal(data["next_observations"][:-1][same], data["observations"][1:][same])
