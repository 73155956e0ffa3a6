"""Env step throughput: the registered env against its bare physics, and 2 async workers against 1.

Every figure is shown next to its reference from the same run; the repeats are interleaved and
medians are shown (ratios are medians of the per-repeat ratios of adjacent runs).

1. ``env``: ``gym.make(ENV_ID)``, the full registered stack (TimeLimit, OrderEnforcing,
   PassiveEnvChecker around ``ClevrRobotEnv``), stepping random actions pre-drawn from a seeded rng
   and resetting whenever an episode ends. Reference ``raw``: a bare
   :class:`kalm_envs.physics.ClevrPhysics` doing the same pushes (pusher teleported behind the
   ball, 40 ``mj_step`` substeps) and placing the balls wherever the env's resets put them, so
   both simulate the very same trajectory (checked: the final ball centres are equal).
   Target: env time / raw time - 1 <= 15 %.
2. :func:`kalm_envs.vector.make_vector_env` (an ``AsyncVectorEnv`` with pipes instead of shared
   memory and each worker pinned to its own CPU) with 2 workers against 1, the same total number
   of env steps, random actions from a seeded rng, the default autoreset mode (NEXT_STEP: the step
   after an episode's end is a reset). Target: speed-up >= 1.7. For information: plain unpinned
   ``AsyncVectorEnv`` (``shared_memory=False``), ``SyncVectorEnv`` with 1 env, and gymnasium's
   default shared memory, which reads the ``Text`` instruction back only once, when the vector env
   is built, so every batch carries a stale placeholder (its instructions are checked and
   flagged).
3. For information, the machine's parallel capacity, the ceiling of any speed-up above: the same
   bare-physics pushes in 2 processes at once against 1 process doing both shares in turn.

Usage: ``python benchmarks/env_speed.py [--repeats 5] [--steps 2000] [--seed 0] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from multiprocessing.pool import Pool

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv

import kalm_envs  # noqa: F401  (registers the env ids)
from kalm_envs.physics import N_ACTIONS, ClevrPhysics
from kalm_envs.vector import make_vector_env

ENV_ID = "KALM/CLEVRRobot-v0"
OVERHEAD_TARGET = 0.15
SPEEDUP_TARGET = 1.7
WARMUP_STEPS = 100
CAPACITY_WARNING = 1.8  # parallel capacity below which the speed-up figures are flagged


def make_env() -> gym.Env:
    """The registered env, as ``gym.make`` builds it."""
    return gym.make(ENV_ID)


def record_resets(
    env: gym.Env, actions: np.ndarray, seed: int
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Step ``env`` untimed through ``actions`` from ``reset(seed)``; note where its episodes start.

    Returns:
        ``({step index: initial ball centres}, final ball centres)``; index 0 is the first episode.
    """
    env.reset(seed=seed)
    resets = {0: env.unwrapped.physics.ball_positions().copy()}
    for i, action in enumerate(actions):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
            resets[i + 1] = env.unwrapped.physics.ball_positions().copy()
    return resets, env.unwrapped.physics.ball_positions().copy()


def time_env(env: gym.Env, actions: np.ndarray, seed: int) -> float:
    """Seconds to step the registered env through ``actions``, resetting when an episode ends."""
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def time_raw(physics: ClevrPhysics, actions: list[int], resets: dict[int, np.ndarray]) -> float:
    """Seconds for the same pushes on bare physics, balls placed where the env's resets put them."""
    physics.set_ball_positions(resets[0])
    start = time.perf_counter()
    for i, action in enumerate(actions):
        if i and i in resets:
            physics.set_ball_positions(resets[i])
        physics.push(action)
    return time.perf_counter() - start


def time_vector(vec: VectorEnv, actions: np.ndarray, seed: int) -> tuple[float, float, bool]:
    """Step ``vec`` through the ``(T, num_envs)`` actions.

    Returns:
        ``(seconds, main-process CPU seconds, whether the last observation's instructions are the
        envs' actual ones)``.
    """
    vec.reset(seed=seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    for action in actions:
        obs, *_ = vec.step(action)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return elapsed, cpu, tuple(obs["instruction"]) == tuple(vec.get_attr("instruction"))


def replay_in_process(
    job: tuple[list[int], dict[int, np.ndarray], int],
) -> tuple[float, float, int]:
    """Pool worker: replay ``(actions, resets)`` on bare physics ``times`` times.

    Returns:
        ``(start, end, pid)``: ``time.perf_counter`` stamps (one clock for all processes on Linux).
    """
    actions, resets, times = job
    physics = ClevrPhysics()
    start = time.perf_counter()
    for _ in range(times):
        time_raw(physics, actions, resets)
    return start, time.perf_counter(), os.getpid()


def time_parallel(pool: Pool, job: tuple, processes: int) -> float:
    """Seconds from the first start to the last end when ``processes`` workers run ``job`` each."""
    stamps = pool.map(replay_in_process, [job] * processes, chunksize=1)
    if len({pid for _, _, pid in stamps}) != processes:
        raise RuntimeError("the pool ran the shares in fewer processes than asked")
    return max(end for _, end, _ in stamps) - min(start for start, _, _ in stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="env steps per timed run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    # 1. one process: the registered env against bare physics on the same trajectory.
    env = gym.make(ENV_ID)
    physics = ClevrPhysics()
    actions = rng.integers(0, N_ACTIONS, args.steps)
    action_ints = actions.tolist()
    resets, env_final = record_resets(env, actions, args.seed)
    time_raw(physics, action_ints, resets)
    if not np.array_equal(physics.ball_positions(), env_final):
        raise RuntimeError("bare physics did not reproduce the env's trajectory")

    # 2. vector envs: the same total env steps for every layout.
    vectors: dict[str, VectorEnv] = {
        "async1": AsyncVectorEnv([make_env], shared_memory=False),
        "async2": AsyncVectorEnv([make_env] * 2, shared_memory=False),
        "sync1": SyncVectorEnv([make_env]),
        "async2_shm": AsyncVectorEnv([make_env] * 2),
        "kalm1": make_vector_env(ENV_ID, 1),
        "kalm2": make_vector_env(ENV_ID, 2),
    }
    vector_actions = {
        name: rng.integers(0, N_ACTIONS, (args.steps // vec.num_envs, vec.num_envs))
        for name, vec in vectors.items()
    }
    for name, vec in vectors.items():
        time_vector(vec, vector_actions[name][:WARMUP_STEPS], args.seed)

    # 3. parallel capacity: half the raw pushes, once in each of 2 processes or twice in one.
    half = args.steps // 2
    half_actions, half_resets = action_ints[:half], {i: s for i, s in resets.items() if i < half}
    pool = multiprocessing.get_context("fork").Pool(2)

    names = ("raw", "env", *vectors, "procs1", "procs2")
    times: dict[str, list[float]] = {name: [] for name in names}
    fresh_instructions = {name: True for name in vectors}
    main_cpu: dict[str, list[float]] = {name: [] for name in vectors}
    for _ in range(args.repeats):
        times["raw"].append(time_raw(physics, action_ints, resets))
        times["env"].append(time_env(env, actions, args.seed))
        for name, vec in vectors.items():
            elapsed, cpu, fresh = time_vector(vec, vector_actions[name], args.seed)
            times[name].append(elapsed)
            main_cpu[name].append(cpu)
            fresh_instructions[name] &= fresh
        times["procs1"].append(time_parallel(pool, (half_actions, half_resets, 2), 1))
        times["procs2"].append(time_parallel(pool, (half_actions, half_resets, 1), 2))
    pool.close()
    for vec in vectors.values():
        vec.close()
    env.close()

    steps = {name: args.steps for name in ("raw", "env")}
    steps.update({name: vector_actions[name].size for name in vectors})
    steps.update(procs1=2 * half, procs2=2 * half)
    rate = {name: steps[name] / statistics.median(times[name]) for name in times}

    def paired(numerator: str, denominator: str) -> float:
        """Median over repeats of the time per env step of ``numerator`` over ``denominator``'s."""
        return statistics.median(
            (a / steps[numerator]) / (b / steps[denominator])
            for a, b in zip(times[numerator], times[denominator], strict=True)
        )

    overhead = paired("env", "raw") - 1
    speedup = paired("kalm1", "kalm2")
    capacity = paired("procs1", "procs2")
    rows = [
        ("env steps/s, gym.make (vs raw physics)", rate["env"], rate["raw"],
         f"overhead {overhead:+.1%}", f"<= {OVERHEAD_TARGET:+.0%}",
         "PASS" if overhead <= OVERHEAD_TARGET else "FAIL"),
        ("make_vector_env 2 workers (vs 1 worker)", rate["kalm2"], rate["kalm1"],
         f"speed-up {speedup:.2f}x", f">= {SPEEDUP_TARGET:.2f}x",
         "PASS" if speedup >= SPEEDUP_TARGET else "FAIL"),
        ("AsyncVectorEnv 2 unpinned (vs 1 worker)", rate["async2"], rate["async1"],
         f"speed-up {paired('async1', 'async2'):.2f}x", "-", "info"),
        ("SyncVectorEnv 1 env (vs AsyncVectorEnv 1)", rate["sync1"], rate["async1"],
         f"{1 / paired('sync1', 'async1'):.2f}x", "-", "info"),
        ("AsyncVectorEnv 2, shared memory (vs without)", rate["async2_shm"], rate["async2"],
         f"{1 / paired('async2_shm', 'async2'):.2f}x", "-",
         "info" + ("" if fresh_instructions["async2_shm"] else "; STALE instructions")),
        ("bare physics, 2 processes (vs 1 process)", rate["procs2"], rate["procs1"],
         f"capacity {capacity:.2f}x", "-", "info"),
    ]

    print(f"cpu count: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}); {ENV_ID}; "
          f"{args.steps} env steps per run; medians of {args.repeats} interleaved repeats")
    header = ("figure", "value", "reference", "ratio", "target", "result")
    widths = (46, 9, 9, 18, 9, 6)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for figure, value, reference, ratio, target, result in rows:
        cells = (figure, f"{value:.0f}", f"{reference:.0f}", ratio, target, result)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    print("per env step: " + ", ".join(f"{name} {1e6 / rate[name]:.0f} us" for name in times))
    print("main-process CPU per env step: " + ", ".join(
        f"{name} {1e6 * statistics.median(main_cpu[name]) / steps[name]:.0f} us" for name in vectors
    ))
    print(f"vector-env instructions equal to the envs' own: {fresh_instructions}")
    if capacity < CAPACITY_WARNING:
        print(f"WARNING: 2 processes ran only {capacity:.2f}x as fast as 1: the CPUs are busy "
              "with other work (or fewer than 2), so the speed-ups say little about the env")
    if args.json:
        print(json.dumps({
            "cpu_count": os.cpu_count(),
            "env_id": ENV_ID,
            "steps": args.steps,
            "repeats": args.repeats,
            "steps_per_s": rate,
            "env_overhead": overhead,
            "async2_speedup": speedup,
            "parallel_capacity": capacity,
            "overhead_pass": overhead <= OVERHEAD_TARGET,
            "speedup_pass": speedup >= SPEEDUP_TARGET,
            "vector_instructions_fresh": fresh_instructions,
            "vector_main_cpu_s": main_cpu,
            "times_s": times,
        }))


if __name__ == "__main__":
    main()
