"""Why imagined rollouts go wrong: the figures behind the quality table (``kalm imagine-eval
--diagnose``).

| function | question it answers |
|---|---|
| :func:`error_by_horizon` | how the gap between generated and replayed states grows with the step |
| :func:`one_step_errors` | what a single generated step gets wrong: the simulator is reset to each generated state ``S_t`` and pushed with ``a_t``; the generated ``S_{t+1}`` is compared ball by ball with the simulated one, split into the pushed ball and the others, and counted as a wall crossing (a generated ball beyond the walls' limits that the simulator keeps inside) or a drift (a ball the simulator leaves in place that the model moves) |
| :func:`action_agreement` | whether the action head picks the oracle's push on real held-out episodes (teacher forcing: the real prefix is given) |
| :func:`explanation_parts` | which part of an explanation is wrong: the goal kind, the direction, the first or the second ball |

Distances are in metres, between ball centres. A simulator restarted from ball centres alone
does not repeat a recorded step exactly (spins and contacts are not in the state): on real steps
the same comparison gives about 1 cm for the pushed ball and 0.4 cm for the others, the floor
that ``kalm imagine-eval --diagnose`` prints beside the model's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kalm_envs.goals import Goal
from kalm_envs.language import parse_instruction
from kalm_envs.physics import BALL_X_LIMITS, BALL_Y_LIMITS, N_BALLS, PUSH_DIRECTIONS
from kalm_envs.registration import ENV_IDS
from kalm_envs.rollout import Episode

#: A ball "moves" in a step when its centre moves more than this (m).
MOVE_TOLERANCE = 0.01
#: A generated centre "crosses a wall" when it lies this far (m) beyond the walls' limits.
WALL_TOLERANCE = 0.02
_LOW = np.array([BALL_X_LIMITS[0], BALL_Y_LIMITS[0]])
_HIGH = np.array([BALL_X_LIMITS[1], BALL_Y_LIMITS[1]])


def _ball_gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(..., 5)`` distances between the ball centres of states ``a`` and ``b`` ``(..., 10)``."""
    gap = (np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(*np.shape(a)[:-1], N_BALLS, 2)
    return np.hypot(gap[..., 0], gap[..., 1])


def beyond_walls(rollout: Episode) -> bool:
    """Whether a generated ball centre of ``rollout`` lies beyond the walls' limits (by more
    than :data:`WALL_TOLERANCE`) where that ball was not beyond them at the start."""
    start = _beyond_walls(rollout.observations[0])
    return any((_beyond_walls(state) & ~start).any() for state in rollout.observations[1:])


def _beyond_walls(state: np.ndarray) -> np.ndarray:
    """``(5,)`` bool: ball centres more than :data:`WALL_TOLERANCE` beyond the walls' limits."""
    balls = np.asarray(state, np.float64).reshape(N_BALLS, 2)
    return ((balls < _LOW - WALL_TOLERANCE) | (balls > _HIGH + WALL_TOLERANCE)).any(axis=1)


def error_by_horizon(replayed: Sequence[np.ndarray], rollouts: Sequence[Episode]) -> list[float]:
    """Mean over rollouts of the mean ball-centre error (m) at step ``t = 1, 2, ...``: entry
    ``t - 1`` averages the rollouts that reached step ``t``. ``replayed[i]`` holds the simulator's
    states ``(T_i + 1, 10)`` for rollout ``i``'s actions."""
    by_step: dict[int, list[float]] = {}
    for states, rollout in zip(replayed, rollouts, strict=True):
        steps = min(len(states), len(rollout.observations)) - 1
        for t in range(1, steps + 1):
            by_step.setdefault(t, []).append(float(_ball_gaps(rollout.observations[t], states[t]).mean()))
    return [float(np.mean(by_step[t])) for t in sorted(by_step)]


def one_step_errors(level: str, rollouts: Sequence[Episode]) -> dict[str, Any]:
    """Every generated step ``S_t, a_t -> S_{t+1}`` against the simulator's step from ``S_t``.

    Returns ``steps`` (compared), ``unplaceable_steps`` (skipped: the generated ``S_t`` lies
    outside the box the simulator accepts as a state), ``pushed_error`` / ``other_error`` (mean
    centre error of the pushed ball / of the other balls, m), ``wall_crossing_rate`` (share of steps with a generated
    ball beyond the walls that the simulator keeps inside), ``drift_rate`` (share of steps where a
    ball the simulator leaves in place moves in the generated state; both by more than
    :data:`MOVE_TOLERANCE`), ``drift_per_step`` (mean such drift, m, over every left-in-place ball)
    and ``wall_crossing_pushed_share`` (of the crossings, the share of the pushed ball).
    """
    import gymnasium as gym

    import kalm_envs  # noqa: F401  (registers the env ids)

    env = gym.make(ENV_IDS[level])
    pushed_errors, other_errors, drifts = [], [], []
    crossings = crossing_pushed = drifting = steps = unplaceable = 0
    try:
        for rollout in rollouts:
            for t, action in enumerate(rollout.actions):
                before, generated = rollout.observations[t], rollout.observations[t + 1]
                try:
                    env.reset(options={"goal": rollout.goal, "initial_state": before.astype(np.float64)})
                except ValueError:  # a generated state the simulator cannot start from
                    unplaceable += 1
                    continue
                observation, *_ = env.step(int(action))
                simulated = observation["observation"].astype(np.float64)
                pushed = int(action) // len(PUSH_DIRECTIONS)
                gaps = _ball_gaps(generated, simulated)
                others = np.arange(N_BALLS) != pushed
                pushed_errors.append(gaps[pushed])
                other_errors.extend(gaps[others])
                still = (_ball_gaps(simulated, before) <= MOVE_TOLERANCE) & others
                moved = _ball_gaps(generated, before)
                drifts.extend(moved[still])
                drifting += bool((moved[still] > MOVE_TOLERANCE).any())
                crossed = _beyond_walls(generated) & ~_beyond_walls(simulated)
                crossings += bool(crossed.any())
                crossing_pushed += bool(crossed[pushed])
                steps += 1
    finally:
        env.close()
    return {
        "steps": steps,
        "unplaceable_steps": unplaceable,
        "pushed_error": float(np.mean(pushed_errors)) if steps else None,
        "other_error": float(np.mean(other_errors)) if steps else None,
        "wall_crossing_rate": crossings / steps if steps else None,
        "wall_crossing_pushed_share": crossing_pushed / crossings if crossings else None,
        "drift_rate": drifting / steps if steps else None,
        "drift_per_step": float(np.mean(drifts)) if drifts else None,
    }


def action_agreement(model: Any, episodes: Sequence[Episode], batch_size: int = 16) -> dict[str, Any]:
    """Teacher-forced greedy actions of ``model`` at every state of real ``episodes`` (their
    recorded instruction and trajectory as the prompt; a goal-first model acts on the goal it
    names) against the scripted oracle's push from that state (``oracle_agreement``) and the
    recorded push (``recorded_agreement``)."""
    from kalm_gen.grounded_lm import evaluating, to_tensors
    from kalm_gen.sequences import collate, rollout_sequence

    chosen: list[np.ndarray] = []
    with evaluating(model):
        for start in range(0, len(episodes), batch_size):
            chunk = episodes[start:start + batch_size]
            batch = to_tensors(collate([rollout_sequence(model.tokenize, e.instruction, e.observations, e.actions)
                                        for e in chunk]))
            hidden = model.hidden_states(batch)
            for row in range(len(chunk)):
                slots = batch["action_targets"][row] >= 0
                goal = model.name_goal(hidden[row, batch["goal_slot"][row]][0])  # goal first: at the goal slot
                logits = model.action_logits(hidden[row, slots], batch["states"][row, slots], goal)
                chosen.append(logits.argmax(-1).numpy())
    oracle_hits = recorded_hits = total = 0
    for episode, actions, best in zip(episodes, chosen, oracle_pushes(episodes), strict=True):
        oracle_hits += int((actions == best).sum())
        recorded_hits += int((actions == episode.actions).sum())
        total += len(actions)
    return {"steps": total, "oracle_agreement": oracle_hits / max(total, 1),
            "recorded_agreement": recorded_hits / max(total, 1)}


def oracle_pushes(episodes: Sequence[Episode]) -> list[np.ndarray]:
    """Per episode, the ``(T,)`` int64 push the noise-free scripted oracle would make from each of
    its states before the last (for the episode's goal), to set against the recorded ones."""
    from kalm_envs.oracle import ScriptedOracle

    oracle = ScriptedOracle(epsilon=0.0, seed=0)
    pushes = []
    for episode in episodes:
        info = {"goal": episode.goal}
        oracle.reset({"observation": episode.observations[0]}, info)
        pushes.append(np.array([oracle.act({"observation": state}, info) for state in episode.observations[:-1]],
                               dtype=np.int64))
    return pushes


def explanation_parts(texts: Sequence[str], episodes: Sequence[Episode]) -> dict[str, Any]:
    """Of the explanations that parse, the share naming the right goal kind, and among those of
    the right kind the share with the right direction and first ball, and (two-ball relations)
    the right second ball. ``confused_balls`` counts ``(true, named)`` colour pairs of wrong
    first balls."""
    parsed = [(parse_instruction(text), Goal.from_array(e.goal)) for text, e in zip(texts, episodes, strict=True)]
    parsed = [(p, g) for p, g in parsed if p is not None]
    same_kind = [(p, g) for p, g in parsed if p.kind == g.kind and len(p.clauses) == len(g.clauses)]
    with_clause = [(p.clauses[0], g.clauses[0]) for p, g in same_kind if g.clauses]
    two_ball = [(pc, gc) for pc, gc in with_clause if gc[1] >= 0]
    confused: dict[str, int] = {}
    for pc, gc in with_clause:
        if pc[0] != gc[0]:
            key = f"{gc[0]}->{pc[0]}"
            confused[key] = confused.get(key, 0) + 1

    def share(pairs: list, index: int) -> float | None:
        return sum(pc[index] == gc[index] for pc, gc in pairs) / len(pairs) if pairs else None

    return {
        "parsed": len(parsed),
        "kind_rate": len(same_kind) / len(parsed) if parsed else None,
        "first_ball_rate": share(with_clause, 0),
        "second_ball_rate": share(two_ball, 1),
        "direction_rate": share(with_clause, 2),
        "confused_balls": dict(sorted(confused.items(), key=lambda kv: -kv[1])),
    }
