"""CLEVR-Robot with natural-language goals as Gymnasium environments.

Importing this package registers one environment id per goal level (episodes end after 50
pushes, easy ones after one; ``EPISODE_STEPS`` holds each level's limit):

| id | level |
|---|---|
| ``KALM/CLEVRRobot-v0`` | train: 80 relation goals in train wordings |
| ``KALM/CLEVRRobot-Rephrase-v0`` | the same goals in unseen wordings |
| ``KALM/CLEVRRobot-Easy-v1`` | move one ball in a direction, judged after one push |
| ``KALM/CLEVRRobot-Hard-v0`` | several relations at once, line-up, gathering |

This package never imports torch or transformers. On a machine without a display and with
``MUJOCO_GL`` unset, it selects headless EGL rendering (``MUJOCO_GL=egl``) before MuJoCo loads.
"""

import os

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

from kalm_envs.goals import LEVELS, Goal, GoalKind
from kalm_envs.physics import COLORS, N_ACTIONS
from kalm_envs.registration import ENV_IDS, EPISODE_STEPS, MAX_EPISODE_STEPS, register_envs

register_envs()

__all__ = ["COLORS", "ENV_IDS", "EPISODE_STEPS", "LEVELS", "MAX_EPISODE_STEPS", "N_ACTIONS", "Goal", "GoalKind"]
