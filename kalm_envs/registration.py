"""Gymnasium ids of the CLEVR-Robot levels, registered with string entry points."""

from gymnasium.envs.registration import register, registry

MAX_EPISODE_STEPS = 50
ENV_IDS: dict[str, str] = {
    "train": "KALM/CLEVRRobot-v0",
    "rephrase": "KALM/CLEVRRobot-Rephrase-v0",
    "easy": "KALM/CLEVRRobot-Easy-v0",
    "hard": "KALM/CLEVRRobot-Hard-v0",
}


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` (idempotent)."""
    for level, env_id in ENV_IDS.items():
        if env_id not in registry:
            register(
                id=env_id,
                entry_point="kalm_envs.env:ClevrRobotEnv",
                max_episode_steps=MAX_EPISODE_STEPS,
                kwargs={"level": level},
            )
