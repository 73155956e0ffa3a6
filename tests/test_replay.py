"""``kalm datasets replay``: a dataset's pushes replayed in the simulator, against its own states
and success labels."""

import json
from dataclasses import replace

import numpy as np

from kalm.cli import main as kalm_main
from kalm_envs import ENV_IDS
from kalm_envs.minari_io import write_dataset
from kalm_envs.oracle import oracle_episodes
from kalm_envs.replay import label_audit


def _write(dataset_id, episodes):
    write_dataset(dataset_id, episodes, ENV_IDS["train"], "replay test", {"seed": 0}, (0.0, 1.0), "oracle")


def test_simulated_episodes_replay_exactly_and_their_labels_hold(minari_root, capsys):
    episodes = oracle_episodes("train", list(range(8)), epsilon=1.0)  # uniform pushes: some miss the goal
    labels = [e.success for e in episodes]
    assert any(labels) and not all(labels)
    _write("kalm/test/simulated-v0", episodes)
    assert kalm_main(["datasets", "replay", "kalm/test/simulated-v0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["episodes"] == 8 and report["labelled_successful"] == sum(labels)
    assert report["confirmed_rate"] == 1.0 and report["unlabelled_replay_rate"] == 0.0
    assert report["state_error_max"] < 1e-4 and report["level"] == "train"


def test_pushes_that_do_not_produce_the_states_are_caught():
    """Every push turned by one direction: the stored states (and labels) no longer follow from
    the pushes, as in an imagined rollout whose model got the dynamics wrong."""
    episodes = [e for e in oracle_episodes("train", list(range(12)), epsilon=0.0) if e.success][:6]
    turned = [replace(e, actions=(e.actions // 8) * 8 + (e.actions % 8 + 1) % 8) for e in episodes]
    honest, claimed = label_audit("train", episodes), label_audit("train", turned)
    assert honest["confirmed_rate"] == 1.0 and claimed["labelled_successful"] == len(episodes)
    assert claimed["confirmed_rate"] < 1.0 and claimed["state_error_mean"] > 0.01
    assert claimed["replay_match_rate"] == claimed["confirmed_rate"]


def test_replay_refuses_bad_input_by_name(minari_root, capsys):
    _write("kalm/test/few-v0", oracle_episodes("train", [0, 1], epsilon=0.0))
    assert kalm_main(["datasets", "replay", "kalm/test/absent-v0"]) == 2
    assert "absent-v0" in capsys.readouterr().err
    assert kalm_main(["datasets", "replay", "kalm/test/few-v0", "--episodes", "0"]) == 2
    assert "--episodes 0" in capsys.readouterr().err
    assert kalm_main(["datasets", "replay", "kalm/test/few-v0", "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 1
    assert np.isfinite(label_audit("train", [])["replay_match_rate"])
