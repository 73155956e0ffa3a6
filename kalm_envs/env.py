"""The CLEVR-Robot Gymnasium environment with natural-language goals."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from kalm_envs.goals import GOAL_ARRAY_LEN, LEVELS, Goal, coerce_goal, move_has_room, sample_goal
from kalm_envs.language import (
    INSTRUCTION_CHARSET,
    MAX_INSTRUCTION_LENGTH,
    render_instruction,
    validate_instruction,
)
from kalm_envs.physics import (
    N_ACTIONS,
    N_BALLS,
    STATE_DIM,
    STATE_X_LIMITS,
    STATE_Y_LIMITS,
    ClevrPhysics,
    sample_ball_positions,
)
from kalm_envs.predicates import (
    REWARD_MODES,
    GoalBatch,
    GoalProgress,
    goal_progress,
    is_success,
    outcome_between,
)

#: Walls bound ball centres to x in [-0.47, 0.47], y in [-0.17, 0.57]; the box adds the reset slack.
OBSERVATION_LOW = np.tile(np.array([-0.6, -0.3], dtype=np.float32), N_BALLS)
OBSERVATION_HIGH = np.tile(np.array([0.6, 0.7], dtype=np.float32), N_BALLS)
RESET_OPTIONS = ("goal", "instruction", "initial_state")
_MAX_GOAL_DRAWS = 1000


class ClevrRobotEnv(gym.Env):
    """Five balls on a table, pushed one at a time towards a goal given in words.

    Observation: ``{"observation": (10,) float32 ball centres (m), "instruction": str}``.
    Action: ``Discrete(40)``, ball ``a // 8`` pushed in direction ``a % 8``.
    Reward: see :func:`kalm_envs.predicates.transition_outcome` (``reward_mode`` dense or sparse).
    ``terminated`` is True when the goal holds, or after the single push of an easy (move) goal,
    met or not; ``info`` holds ``goal`` ((10,) int64 array, see
    :mod:`kalm_envs.goals`) and ``is_success`` at reset and at every step.

    Args:
        level: goal level, one of ``train``, ``rephrase``, ``easy``, ``hard``.
        reward_mode: ``dense`` (KALM's shaping) or ``sparse`` (1 on success).
        render_mode: ``None`` or ``"rgb_array"``.
        width, height: rendered frame size in pixels.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2.5}

    def __init__(
        self,
        level: str = "train",
        reward_mode: str = "dense",
        render_mode: str | None = None,
        width: int = 64,
        height: int = 64,
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"level {level!r} is not one of {LEVELS}")
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode {reward_mode!r} is not one of {REWARD_MODES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not one of [None, 'rgb_array']")
        for name, size in (("width", width), ("height", height)):
            if not isinstance(size, int | np.integer) or size <= 0:
                raise ValueError(f"{name} {size!r} must be a positive integer")
        self.level = level
        self.reward_mode = reward_mode
        self.render_mode = render_mode
        self.width, self.height = int(width), int(height)
        self.observation_space = spaces.Dict(
            {
                "observation": spaces.Box(OBSERVATION_LOW, OBSERVATION_HIGH, dtype=np.float32),
                "instruction": spaces.Text(
                    max_length=MAX_INSTRUCTION_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET
                ),
            }
        )
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.physics = ClevrPhysics()
        self._renderer: mujoco.Renderer | None = None
        self._goal: Goal | None = None
        self._goal_array = np.full((1, GOAL_ARRAY_LEN), -1, dtype=np.int64)
        self._instruction = ""
        self._initial_state = np.zeros((1, STATE_DIM))
        self._state = np.zeros((1, STATE_DIM))
        self._goals: GoalBatch | None = None  # self._goal_array, decoded once per episode
        self._progress: GoalProgress | None = None  # of self._state, so a step judges one state

    @property
    def goal(self) -> Goal:
        """The structured goal of the current episode."""
        if self._goal is None:
            raise RuntimeError("call reset() before reading the goal")
        return self._goal

    @property
    def instruction(self) -> str:
        """The instruction text of the current episode."""
        return self._instruction

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode.

        Options (all optional): ``goal`` (a :class:`Goal`, our (10,) array or KALM's (6,) array),
        ``instruction`` (str; default: rendered from the goal with this env's ``np_random``),
        ``initial_state`` ((10,) ball centres, finite, inside x [-0.5, 0.5], y [-0.3, 0.6]).
        Without a goal, one of this level's goals is drawn that is not already met in the initial
        state and, for move goals, leaves the ball room to travel (:func:`move_has_room`).
        """
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; allowed: {list(RESET_OPTIONS)}")
        if options.get("initial_state") is not None:
            state = check_initial_state(options["initial_state"])
        else:
            state = sample_ball_positions(self.np_random)
        self.physics.set_ball_positions(state)
        self._initial_state = state[None].copy()
        self._state = state[None].copy()
        if options.get("goal") is not None:
            self._goal = coerce_goal(options["goal"])
        else:
            self._goal = self._draw_unmet_goal()
        self._goal_array = self._goal.to_array()[None]
        self._goals = GoalBatch(self._goal_array)
        self._progress = goal_progress(self._state, self._goals, self._initial_state)
        if options.get("instruction") is not None:
            instruction = options["instruction"]
            if not isinstance(instruction, str):
                raise ValueError(f"instruction {instruction!r} must be a str")
            self._instruction = validate_instruction(instruction)
        else:
            self._instruction = render_instruction(self._goal, self.level, self.np_random)
        return self._observation(), self._info(bool(self._progress.success[0]))

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Push once (0.4 s of simulation) and judge the goal on the new ball centres.

        ``terminated`` when the goal holds, and after the push of a one-push goal (an easy move
        goal) whether it holds or not; ``info["is_success"]`` says which."""
        if self._goal is None:
            raise RuntimeError("call reset() before step()")
        self.physics.push(check_action(action))
        self._state = self.physics.ball_positions()[None].copy()
        progress = goal_progress(self._state, self._goals, self._initial_state)
        reward, success = outcome_between(self._progress, progress, self.reward_mode)
        self._progress = progress
        met = bool(success[0])
        return self._observation(), float(reward[0]), met or self._goal.one_push, False, self._info(met)

    def render(self) -> np.ndarray | None:
        """``(height, width, 3)`` uint8 frame from the overview camera, or None without a mode."""
        if self.render_mode is None:
            return None
        if self._renderer is None:
            visual = self.physics.model.vis.global_
            visual.offwidth = max(visual.offwidth, self.width)
            visual.offheight = max(visual.offheight, self.height)
            self._renderer = mujoco.Renderer(self.physics.model, self.height, self.width)
        self._renderer.update_scene(self.physics.data, camera="overview")
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_renderer"] = None
        return state

    def _draw_unmet_goal(self) -> Goal:
        for _ in range(_MAX_GOAL_DRAWS):
            goal = sample_goal(self.level, self.np_random)
            met = is_success(self._state, goal.to_array()[None], self._initial_state)[0]
            if not met and move_has_room(goal, self._state[0]):
                return goal
        raise RuntimeError(f"no {self.level} goal unmet in state {self._state[0].tolist()}")

    def _observation(self) -> dict[str, Any]:
        return {"observation": self._state[0].astype(np.float32), "instruction": self._instruction}

    def _info(self, success: bool) -> dict[str, Any]:
        return {"goal": self._goal_array[0].copy(), "is_success": success}


def check_action(action: Any) -> int:
    """Return ``action`` as an int in [0, 40); ``ValueError`` naming it otherwise."""
    value = np.asarray(action)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"action {action!r} must be a single integer in [0, {N_ACTIONS})")
    index = int(value)
    if not 0 <= index < N_ACTIONS:
        raise ValueError(f"action {index} is out of range [0, {N_ACTIONS})")
    return index


def check_initial_state(initial_state: Any) -> np.ndarray:
    """Validate a (10,) initial state: finite, every ball inside x [-0.5, 0.5], y [-0.3, 0.6]."""
    state = np.asarray(initial_state, dtype=np.float64)
    if state.shape != (STATE_DIM,):
        raise ValueError(f"initial_state must have shape ({STATE_DIM},), got {state.shape}")
    if not np.all(np.isfinite(state)):
        raise ValueError(f"initial_state {state.tolist()} has non-finite values")
    x, y = state[0::2], state[1::2]
    outside = (
        (x < STATE_X_LIMITS[0]) | (x > STATE_X_LIMITS[1])
        | (y < STATE_Y_LIMITS[0]) | (y > STATE_Y_LIMITS[1])
    )
    if np.any(outside):
        balls = np.flatnonzero(outside).tolist()
        raise ValueError(
            f"initial_state {state.tolist()} puts balls {balls} outside x {STATE_X_LIMITS}, "
            f"y {STATE_Y_LIMITS}"
        )
    return state
