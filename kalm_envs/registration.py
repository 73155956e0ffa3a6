"""Gymnasium ids of the CLEVR-Robot levels, registered with string entry points.

Each level has its own time limit: an easy goal is judged after one push (as in KALM and
ImagineBench), the other levels allow 50. A level whose meaning changed gets a new version and
its old id is no longer registered, so ``gym.make`` of the old id raises Gymnasium's
``DeprecatedEnv`` naming the new one; :data:`RETIRED_ENV_IDS` says what changed.
"""

from gymnasium.envs.registration import register, registry

EPISODE_STEPS: dict[str, int] = {"train": 50, "rephrase": 50, "easy": 1, "hard": 50}
"""Time limit of each level, in pushes (``TimeLimit`` truncation)."""
MAX_EPISODE_STEPS = max(EPISODE_STEPS.values())
"""The longest time limit of any level, in pushes."""
ENV_IDS: dict[str, str] = {
    "train": "KALM/CLEVRRobot-v0",
    "rephrase": "KALM/CLEVRRobot-Rephrase-v0",
    "easy": "KALM/CLEVRRobot-Easy-v1",
    "hard": "KALM/CLEVRRobot-Hard-v0",
}
RETIRED_ENV_IDS: dict[str, tuple[str, str]] = {
    "KALM/CLEVRRobot-Easy-v0": ("easy", "the easy level changed to one push per episode (it allowed 50) in v1"),
}
"""Ids no longer registered: their level and what changed in its current id."""


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` with its level's time limit (idempotent)."""
    for level, env_id in ENV_IDS.items():
        if env_id not in registry:
            register(
                id=env_id,
                entry_point="kalm_envs.env:ClevrRobotEnv",
                max_episode_steps=EPISODE_STEPS[level],
                kwargs={"level": level},
            )
