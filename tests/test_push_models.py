"""Push models (kalm_gen.push_models): the relational model's per-ball features, its colour
symmetry, and fitting one on simulator transitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kalm_envs.physics import ClevrPhysics, sample_ball_positions
from kalm_gen.push_models import (
    PUSH_MODEL_HEADS,
    RELATIONAL_FEATURES,
    PushMLP,
    RelationalPush,
    ball_features,
    build_push_model,
)

#: Five ball centres (m), red, blue, green, purple, cyan.
PLACES = torch.tensor([[0.0, 0.0, 0.3, 0.0, -0.1, 0.05, 0.4, 0.5, -0.4, 0.2]])


def test_ball_features_say_which_ball_is_pushed_where_and_list_neighbours_nearest_first() -> None:
    action = torch.tensor([1 * 8 + 2])  # push blue in direction 2, (-1, 0)
    features = ball_features(PLACES, action)[0]
    assert features.shape == (5, RELATIONAL_FEATURES)
    places = PLACES.view(5, 2) / 0.1
    assert torch.allclose(features[:, :2], places)
    assert features[:, 2].tolist() == [0, 1, 0, 0, 0]
    assert features[:, 3:11].argmax(-1).tolist() == [2] * 5 and torch.allclose(features[:, 11:13], torch.tensor([-1.0, 0.0]))
    assert torch.allclose(features[:, 13:15], places[1] - places)
    # red's neighbours, nearest first: green (0.11 m), blue (0.3 m), cyan (0.45 m), purple (0.64 m)
    expected = torch.cat([places[k] - places[0] for k in (2, 1, 4, 3)])
    assert torch.allclose(features[0, 15:], expected)


def test_the_relational_model_treats_every_colour_alike_and_the_mlp_does_not() -> None:
    """Swapping two balls' colours in the state and the action swaps their predicted moves."""
    torch.manual_seed(0)
    swap = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9]  # blue <-> green
    action, swapped_action = torch.tensor([1 * 8 + 5]), torch.tensor([2 * 8 + 5])
    relational, mlp = RelationalPush(32), PushMLP(32)
    with torch.no_grad():
        moves = relational(PLACES, action)
        assert torch.allclose(relational(PLACES[:, swap], swapped_action), moves[:, swap], atol=1e-6)
        assert not torch.allclose(mlp(PLACES[:, swap], swapped_action), mlp(PLACES, action)[:, swap], atol=1e-3)


def test_push_models_take_any_leading_shape_and_unknown_kinds_are_refused() -> None:
    states, actions = torch.rand(2, 3, 10), torch.randint(40, (2, 3))
    for kind in PUSH_MODEL_HEADS:
        model = build_push_model(kind, 16)
        assert model(states, actions).shape == (2, 3, 10)
        assert torch.allclose(model(states[1], actions[1]), model(states, actions)[1], atol=1e-6)
    with pytest.raises(ValueError, match="push model 'gnn' is not one of"):
        build_push_model("gnn", 16)


def test_a_relational_model_fitted_on_simulated_pushes_predicts_held_out_ones() -> None:
    """Fitted on 600 simulated pushes, the relational model predicts 200 others' changes better
    than 'nothing moves' does, by a wide margin."""
    rng = np.random.default_rng(0)
    physics = ClevrPhysics()
    before, after, actions = [], [], []
    for _ in range(800):
        physics.set_ball_positions(sample_ball_positions(rng))
        action = int(rng.integers(40))
        before.append(physics.ball_positions().copy())
        physics.push(action)
        after.append(physics.ball_positions().copy())
        actions.append(action)
    states, nexts = torch.tensor(np.array(before), dtype=torch.float32), torch.tensor(np.array(after), dtype=torch.float32)
    actions_t = torch.tensor(actions)
    torch.manual_seed(0)
    model = RelationalPush(64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        rows = torch.randint(600, (128,))
        loss = ((states[rows] + 0.1 * model(states[rows], actions_t[rows]) - nexts[rows]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = states[600:] + 0.1 * model(states[600:], actions_t[600:])
    still = ((states[600:] - nexts[600:]) ** 2).mean()
    assert ((predicted - nexts[600:]) ** 2).mean() < 0.3 * still


def test_the_published_relational_model_predicts_pushes_it_never_saw() -> None:
    """``kalm-smollm2-relational-v0`` (the clause-list model with a relational push model): on
    200 random pushes from hard tasks' scenes, simulated here, its pushed ball lands within a
    few centimetres of the simulator's, where 'nothing moves' is off by about 18 cm."""
    from kalm_gen.grounded_lm import GroundedLM
    from kalm_gen.imagine import level_tasks

    model = GroundedLM.load("kalm-smollm2-relational-v0")
    assert model.config.state_head == "relational" and model.config.goal_clauses == 3
    rng = np.random.default_rng(7)
    physics = ClevrPhysics()
    before, after, actions = [], [], []
    for state in level_tasks("hard", 200, seed=7).initial_states:
        physics.set_ball_positions(state)
        physics.push(int(rng.integers(40)))  # a first push brings every ball inside the walls
        before.append(physics.ball_positions().copy())
        actions.append(int(rng.integers(40)))
        physics.push(actions[-1])
        after.append(physics.ball_positions().copy())
    states, nexts = (torch.tensor(np.array(x), dtype=torch.float32) for x in (before, after))
    with torch.no_grad():
        predicted = model.next_state(None, states, torch.tensor(actions))
    error = (predicted - nexts).view(-1, 5, 2).norm(dim=-1)
    still = (states - nexts).view(-1, 5, 2).norm(dim=-1)
    pushed = torch.nn.functional.one_hot(torch.tensor(actions) // 8, 5).bool()
    assert error[pushed].mean() < min(0.05, 0.25 * still[pushed].mean())
    assert error[~pushed].mean() < 0.02
