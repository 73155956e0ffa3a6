"""MuJoCo simulation of the CLEVR-Robot table: five balls and a point-mass pusher.

The model is compiled once per :class:`ClevrPhysics` from the packaged MJCF asset; resets only
write joint positions and velocities. Units are metres and seconds throughout. A scene state is
the flat ``(10,)`` float array ``[x_red, y_red, x_blue, y_blue, ..., x_cyan, y_cyan]`` of ball
centres, in the fixed colour order of :data:`COLORS`.
"""

from __future__ import annotations

from importlib import resources

import mujoco
import numpy as np

COLORS: tuple[str, ...] = ("red", "blue", "green", "purple", "cyan")
N_BALLS = len(COLORS)
STATE_DIM = 2 * N_BALLS
BALL_RADIUS = 0.13
TABLE_Z = -0.325
BALL_Z = TABLE_Z + BALL_RADIUS

#: Unit-ish push directions indexed by ``action % 8`` (the diagonals are 0.8 per axis, as in KALM).
PUSH_DIRECTIONS = np.array(
    [(1, 0), (0, 1), (-1, 0), (0, -1), (0.8, 0.8), (-0.8, 0.8), (0.8, -0.8), (-0.8, -0.8)],
    dtype=np.float64,
)
N_ACTIONS = N_BALLS * len(PUSH_DIRECTIONS)
PUSH_OFFSET = 0.15  # m behind the ball centre where the pusher is placed before a push
PUSH_SUBSTEPS = 40  # 0.01 s MuJoCo steps per push, i.e. 0.4 s

#: Range of sampled initial ball centres (m); wider than the walls allow, as in CLEVR-Robot.
INIT_X_RANGE = (-0.5, 0.5)
INIT_Y_RANGE = (-0.3, 0.5)
MIN_SURFACE_GAP = 0.1  # m between ball surfaces at reset
#: Where the walls keep ball centres (m): wall planes at x = +-0.6, y = -0.3 and y = 0.7.
BALL_X_LIMITS = (-0.47, 0.47)
BALL_Y_LIMITS = (-0.17, 0.57)
#: Box that a given initial state must lie in (m), wide enough for states recorded elsewhere.
STATE_X_LIMITS = (-0.5, 0.5)
STATE_Y_LIMITS = (-0.3, 0.6)

_PLACEMENT_TRIES = 1000  # draws per scene before sample_ball_positions starts the scene again
_FREE_QPOS = 7  # qpos entries of one free joint (xyz + quaternion)
_FREE_QVEL = 6
_PUSHER_QPOS = slice(N_BALLS * _FREE_QPOS, N_BALLS * _FREE_QPOS + 2)
_PUSHER_QVEL = slice(N_BALLS * _FREE_QVEL, N_BALLS * _FREE_QVEL + 2)
_BALL_XY_QPOS = np.array([[i * _FREE_QPOS, i * _FREE_QPOS + 1] for i in range(N_BALLS)]).ravel()


def load_model() -> mujoco.MjModel:
    """Compile the packaged CLEVR-Robot MJCF asset."""
    xml = resources.files("kalm_envs").joinpath("assets/clevr_robot.xml").read_text()
    return mujoco.MjModel.from_xml_string(xml)


def sample_ball_positions(rng: np.random.Generator) -> np.ndarray:
    """Draw a ``(10,)`` scene state: centres uniform in the init box, surfaces >= 0.1 m apart.

    Balls are placed one by one by rejection; when a ball finds no room in
    :data:`_PLACEMENT_TRIES` draws (the earlier balls can block the box), the whole scene is
    drawn again, so the loop always ends.
    """
    min_dist = 2 * BALL_RADIUS + MIN_SURFACE_GAP
    while True:
        placed: list[np.ndarray] = []
        for _ in range(_PLACEMENT_TRIES):
            candidate = np.array([rng.uniform(*INIT_X_RANGE), rng.uniform(*INIT_Y_RANGE)])
            if all(np.hypot(*(candidate - other)) >= min_dist for other in placed):
                placed.append(candidate)
                if len(placed) == N_BALLS:
                    return np.concatenate(placed)


class ClevrPhysics:
    """One MuJoCo model and data pair with the CLEVR-Robot push primitive.

    Attributes:
        model: the compiled ``mujoco.MjModel``.
        data: its ``mujoco.MjData``.
    """

    def __init__(self) -> None:
        self.model = load_model()
        self.data = mujoco.MjData(self.model)

    def set_ball_positions(self, state: np.ndarray) -> None:
        """Place the balls at the ``(10,)`` centres, at rest on the table, pusher parked aside."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[_BALL_XY_QPOS] = state
        self.data.qpos[_PUSHER_QPOS] = (0.0, -1.0)  # off the workbench, out of the way
        mujoco.mj_forward(self.model, self.data)

    def ball_positions(self) -> np.ndarray:
        """Current ``(10,)`` float64 ball centres."""
        return self.data.qpos[_BALL_XY_QPOS]

    def push(self, action: int) -> None:
        """Push ball ``action // 8`` in direction ``action % 8`` for 0.4 s of simulated time.

        The pusher is teleported to ``ball_xy - 0.15 * direction`` at rest, ball velocities are
        kept, and the motors hold ``ctrl = direction`` for 40 substeps.
        """
        ball, direction = divmod(action, len(PUSH_DIRECTIONS))
        vector = PUSH_DIRECTIONS[direction]
        start = ball * _FREE_QPOS
        data = self.data
        data.qpos[_PUSHER_QPOS] = data.qpos[start : start + 2] - PUSH_OFFSET * vector
        data.qvel[_PUSHER_QVEL] = 0.0
        data.ctrl[:] = vector
        mujoco.mj_step(self.model, data, nstep=PUSH_SUBSTEPS)

    def get_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copy of the full ``(qpos, qvel)`` physics state, for lookahead and restore."""
        return self.data.qpos.copy(), self.data.qvel.copy()

    def set_state(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        """Restore a state taken with :meth:`get_state`."""
        self.data.qpos[:], self.data.qvel[:] = state
        mujoco.mj_forward(self.model, self.data)
