"""The explanation head (:mod:`kalm_gen.explain_head`): its rollout features, its fit after
grounding, saving and loading, and the published model's explanations of real episodes.

A tiny random Llama stands in for SmolLM2 where the code paths are checked; the published model
is the real SmolLM2 with its shipped adapter and heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kalm_envs.collector import build_dataset
from kalm_envs.dataset_specs import get_spec
from kalm_envs.goals import Goal
from kalm_gen.explain_head import (
    FEATURE_WIDTH, N_CLASSES, ExplainHead, explain_inputs, explained_goals, relation_class, rollout_features,
)
from kalm_gen.train import GroundingTrainConfig, train_grounding
from tests.helpers import temporary_minari_root

REAL = "kalm/clevr-robot/real-v0"
EXPLAINING_MODEL = "kalm-smollm2-relational-v1"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scene(*balls: tuple[float, float]) -> np.ndarray:
    return np.asarray(balls, dtype=np.float32).ravel()


def test_rollout_features_hold_the_relations_pushes_and_moves_of_a_rollout() -> None:
    """Red (0) starts far right of blue (1) and ends 0.2 m to its left; three pushes, two of red."""
    start = _scene((0.4, 0.2), (0.0, 0.2), (-0.4, 0.5), (-0.4, -0.1), (0.4, -0.1))
    end = _scene((-0.2, 0.2), (0.0, 0.2), (-0.4, 0.5), (-0.4, -0.1), (0.4, -0.1))
    features = rollout_features(np.stack([start, start, end]), np.array([0 * 8 + 1, 3 * 8, 0 * 8 + 5]))
    assert features.shape == (FEATURE_WIDTH,) and features.dtype == np.float32
    red_left_of_blue, blue_right_of_red = relation_class(0, 1, 1), relation_class(1, 0, 3)
    start_rel, end_rel, became = features[:N_CLASSES], features[N_CLASSES:2 * N_CLASSES], features[2 * N_CLASSES:3 * N_CLASSES]
    assert not start_rel[red_left_of_blue] and end_rel[red_left_of_blue] and became[red_left_of_blue]
    assert became[blue_right_of_red]
    assert not start_rel[relation_class(0, 1, 3)]  # 0.4 m apart: too far for "right of" at the start
    assert became.sum() == (end_rel > start_rel).sum()  # became true: true at the end only
    shares = features[3 * N_CLASSES:3 * N_CLASSES + 5]
    assert np.allclose(shares, [2 / 3, 0, 0, 1 / 3, 0])
    assert np.allclose(features[-10:], (end - start) / 0.1, atol=1e-5)


def test_the_head_never_names_a_ball_related_to_itself() -> None:
    torch.manual_seed(0)
    head = ExplainHead(8, 16)
    with torch.no_grad():
        head.net[-1].bias.copy_(torch.where(head.self_relation, 100.0, 0.0))  # pushed towards a == b
        named = head(torch.randn(32, 8), torch.randn(32, FEATURE_WIDTH)).argmax(-1)
    assert not head.self_relation[named].any()


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model grounded for 4 steps with an explanation fit of 300 updates after them:
    (Minari root, run folder)."""
    from kalm_gen.tiny import make_tiny_lm

    root, folder = tmp_path_factory.mktemp("minari"), tmp_path_factory.mktemp("runs")
    with temporary_minari_root(root):
        build_dataset(get_spec(REAL), episodes=8, shard_size=100, progress=False, ref_episodes=2)
        train_grounding(_config(make_tiny_lm(folder / "lm"), folder / "explain", explain_fit_updates=300), progress=False)
    return root, folder


def _config(base: Path, output: Path, **changes) -> GroundingTrainConfig:
    values = dict(datasets=[REAL], output=str(output), base_model=str(base), finetune="full", head_hidden=32,
                  lr=3e-3, warmup_steps=1, batch_size=4, steps=4, eval_every=100, checkpoint_every=100,
                  val_fraction=0.0, seed=0, action_head="goal")
    return GroundingTrainConfig(**{**values, **changes})


def test_an_explanation_fit_after_grounding_keeps_its_best_head(explained) -> None:
    """The fit runs on the final model, is logged and summarised, keeps the head of the lowest
    held-out loss, and the saved model explains with that head."""
    import json

    from kalm_gen.grounded_lm import GroundedLM
    from kalm_gen.train import read_log

    root, folder = explained
    fit = next(record for record in read_log(folder / "explain") if record.get("kind") == "explain_fit")
    summary = json.loads((folder / "explain" / "final" / "training_summary.json").read_text())
    assert {"kind": "explain_fit", **summary["explain_fit"]} == fit
    losses = dict(fit["held_out_losses"])
    assert list(losses) == [0, 250, 300] and losses[fit["kept_update"]] == min(losses.values())
    assert fit["rows"] == 7  # one of the eight episodes held out
    model = GroundedLM.load(folder / "explain" / "final")
    assert model.config.explain_head and "explain_head" in model.head_names
    assert not any(p.requires_grad for p in model.explain_head.parameters())  # grounding leaves it alone
    from kalm_envs.minari_io import read_episodes

    with temporary_minari_root(root):
        episodes = read_episodes(REAL)
    rollouts = [(e.observations, e.actions) for e in episodes]
    inputs = explain_inputs(model, rollouts, batch_size=3)
    assert inputs["hidden"].shape == (8, model.lm.config.hidden_size) and inputs["features"].shape == (8, FEATURE_WIDTH)
    with torch.no_grad():
        classes = model.explain_head(inputs["hidden"], inputs["features"]).argmax(-1)
    expected = [Goal.relation(int(c) // 20, int(c) // 4 % 5, int(c) % 4) for c in classes]
    assert explained_goals(model, rollouts, batch_size=5) == expected


def test_a_model_with_an_explanation_head_grounds_on_without_changing_it(explained, tmp_path: Path) -> None:
    """Started from a model with an explanation head and no new fit, grounding steps leave the
    head as it was, and imagine-eval's explanations come from it."""
    from kalm_envs.minari_io import read_episodes
    from kalm_gen.grounded_lm import GroundedLM
    from kalm_gen.quality import imagination_quality

    root, folder = explained
    with temporary_minari_root(root):
        train_grounding(_config(folder / "lm", tmp_path / "on", init_model=str(folder / "explain" / "final")),
                        progress=False)
        episodes = read_episodes(REAL)
    before, after = GroundedLM.load(folder / "explain" / "final"), GroundedLM.load(tmp_path / "on" / "final")
    for a, b in zip(before.explain_head.parameters(), after.explain_head.parameters(), strict=True):
        assert torch.equal(a, b)
    report = imagination_quality(after, ["easy"], episodes=2, real_episodes=episodes[:3])
    assert report["explanation"]["source"] == "explain head" and report["explanation"]["parse_rate"] == 1.0


def test_bad_explanation_settings_are_refused_with_their_name(tmp_path: Path) -> None:
    from kalm_gen.grounded_lm import GroundedLMConfig

    with pytest.raises(ValueError, match="explain_fit_updates -1"):
        _config(tmp_path, tmp_path / "x", explain_fit_updates=-1).validate()
    with pytest.raises(TypeError, match="explain_head 'yes'"):
        GroundedLMConfig(explain_head="yes")


def test_the_published_explaining_model_names_most_held_out_real_goals() -> None:
    """The published model with an explanation head names the goal of more than half of 100
    real-v0 episodes it never trained on, simulated again from their seeds (its goal head alone
    names 6-12%)."""
    from kalm_envs.oracle import oracle_episodes
    from kalm_gen.grounded_lm import GroundedLM
    from kalm_gen.published import published_held_out
    from kalm_gen.quality import head_explanations, score_explanations

    model = GroundedLM.load(EXPLAINING_MODEL)
    assert model.explain_head is not None
    start, _ = published_held_out(EXPLAINING_MODEL)
    spec = get_spec(REAL)
    episodes = oracle_episodes(spec.level, list(range(start, start + 100)), spec.epsilon)
    assert score_explanations(head_explanations(model, episodes), episodes)["accuracy"] > 0.5
