"""The CLEVR-Robot Gymnasium environment with natural-language goals."""

from __future__ import annotations

from collections.abc import Mapping
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
from kalm_envs.validation import InvalidTypeError, check_choice, check_int, check_numbers

#: Walls bound ball centres to x in [-0.47, 0.47], y in [-0.17, 0.57]; the box adds the reset slack.
OBSERVATION_LOW = np.tile(np.array([-0.6, -0.3], dtype=np.float32), N_BALLS)
OBSERVATION_HIGH = np.tile(np.array([0.6, 0.7], dtype=np.float32), N_BALLS)
RESET_OPTIONS = ("goal", "instruction", "initial_state")
RENDER_MODES = ("rgb_array",)
MAX_RENDER_SIZE = 4096
"""Largest rendered width or height in pixels (MuJoCo's off-screen buffer fails far above it)."""
_METADATA = {"render_modes": list(RENDER_MODES), "render_fps": 2.5}
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
        width, height: rendered frame size in pixels, integers in [1, 4096].

    Every argument is checked here, and a bad one is a ``ValueError`` naming it
    (:class:`~kalm_envs.validation.InvalidTypeError`, also a ``TypeError``, for a wrong type).
    """

    @property
    def metadata(self) -> dict[str, Any]:  # type: ignore[override]
        """Render modes and frame rate. An instance property, not a class attribute, so that
        ``gym.make(..., render_mode="human")`` hands ``"human"`` to ``__init__``, which refuses it
        with a message, instead of wrapping the env in Gymnasium's ``HumanRendering`` (which
        needs pygame and a display, and fails deep inside Gymnasium without them)."""
        return _METADATA

    def __init__(
        self,
        level: str = "train",
        reward_mode: str = "dense",
        render_mode: str | None = None,
        width: int = 64,
        height: int = 64,
    ) -> None:
        self.level = check_choice(level, "level", LEVELS)
        self.reward_mode = check_choice(reward_mode, "reward_mode", REWARD_MODES)
        self.render_mode = check_choice(render_mode, "render_mode", (None, *RENDER_MODES))
        self.width = check_int(width, "width", 1, MAX_RENDER_SIZE)
        self.height = check_int(height, "height", 1, MAX_RENDER_SIZE)
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

        ``seed``: None or a non-negative integer (Python or numpy). ``options``: None or a dict, all
        keys optional: ``goal`` (a :class:`Goal`, our (10,) array or KALM's (6,) array, of
        numbers), ``instruction`` (a non-empty str; default: rendered from the goal with this env's
        ``np_random``), ``initial_state`` ((10,) numbers: ball centres, finite, inside
        x [-0.5, 0.5], y [-0.3, 0.6]); a key given as None is left out.
        Without a goal, one of this level's goals is drawn that is not already met in the initial
        state and, for move goals, leaves the ball room to travel (:func:`move_has_room`).
        A bad seed or option is a ``ValueError`` naming it (``InvalidTypeError``, also a
        ``TypeError``, for a wrong type), raised before the env changes.
        """
        given = self._checked_options(options)
        super().reset(seed=None if seed is None else check_int(seed, "seed", low=0))
        state = given.get("initial_state")
        if state is None:
            state = sample_ball_positions(self.np_random)
        self.physics.set_ball_positions(state)
        self._initial_state = state[None].copy()
        self._state = state[None].copy()
        self._goal = given["goal"] if "goal" in given else self._draw_unmet_goal()
        self._goal_array = self._goal.to_array()[None]
        self._goals = GoalBatch(self._goal_array)
        self._progress = goal_progress(self._state, self._goals, self._initial_state)
        if "instruction" in given:
            self._instruction = given["instruction"]
        else:
            self._instruction = render_instruction(self._goal, self.level, self.np_random)
        return self._observation(), self._info(bool(self._progress.success[0]))

    @staticmethod
    def _checked_options(options: Any) -> dict[str, Any]:
        """The given (not None) reset options, checked and converted: ``initial_state`` a (10,)
        float64 array, ``goal`` a :class:`Goal`, ``instruction`` a str."""
        if options is None:
            return {}
        if not isinstance(options, Mapping):
            raise InvalidTypeError(f"reset options {options!r} ({type(options).__name__}) must be a dict or None")
        unknown = [key for key in options if key not in RESET_OPTIONS]
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; allowed: {list(RESET_OPTIONS)}")
        checks = {"initial_state": check_initial_state, "goal": coerce_goal, "instruction": validate_instruction}
        return {key: checks[key](value) for key, value in options.items() if value is not None}

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
    """Validate a (10,) initial state of numbers: finite, every ball inside x [-0.5, 0.5],
    y [-0.3, 0.6]. Strings, booleans and other non-numbers are an ``InvalidTypeError``."""
    state = check_numbers(initial_state, "initial_state").astype(np.float64)
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
