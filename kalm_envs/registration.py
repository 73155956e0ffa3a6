"""Gymnasium ids of the CLEVR-Robot levels, registered with string entry points.

Episodes of every id are truncated after 50 pushes (``TimeLimit``). An easy goal is judged after
one push (as in KALM and ImagineBench): the env *terminates* the episode after it, met or not
(:attr:`kalm_envs.goals.Goal.one_push`), so an easy episode is one step long and no value is
bootstrapped past it. A level whose meaning changed gets a new version and
its old id is no longer registered, so ``gym.make`` of the old id raises Gymnasium's
``DeprecatedEnv`` naming the new one; :data:`RETIRED_ENV_IDS` says what changed.
"""

from gymnasium.envs.registration import register, registry

EPISODE_STEPS: dict[str, int] = {"train": 50, "rephrase": 50, "easy": 1, "hard": 50}
"""Most pushes in an episode of each level's goals (easy: its one push)."""
MAX_EPISODE_STEPS = max(EPISODE_STEPS.values())
"""The ``TimeLimit`` of every id, in pushes: where an episode that has not ended is truncated."""
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
    """Register every id in :data:`ENV_IDS` with the time limit :data:`MAX_EPISODE_STEPS`
    (idempotent). It also bounds a goal posed through ``reset(options=...)`` that is not of the
    level, e.g. a relation on the easy id."""
    for level, env_id in ENV_IDS.items():
        if env_id not in registry:
            register(
                id=env_id,
                entry_point="kalm_envs.env:ClevrRobotEnv",
                max_episode_steps=MAX_EPISODE_STEPS,
                kwargs={"level": level},
            )
