"""``kalm oracle``: success rate of the scripted oracle per goal level."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

from kalm.commands import add_json_flag, path_argument
from kalm_envs import ENV_IDS, Goal
from kalm_envs.oracle import oracle_episodes
from kalm_envs.rollout import Episode
from kalm_envs.validation import check_count, check_seed

HELP = "run the scripted oracle on seeded episodes and report its success rate per level"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--level", choices=[*ENV_IDS, "all"], default="all")
    parser.add_argument("--episodes", type=int, default=500, help="episodes per level")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i")
    parser.add_argument("--epsilon", type=float, default=0.0, help="random-push probability")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--frame", type=path_argument, help="save a PNG of each level's first episode end")
    add_json_flag(parser)


def summarize(episodes: list[Episode]) -> dict[str, Any]:
    """Success rate, mean length and per-family success rate of a list of episodes."""
    by_family: dict[str, list[bool]] = defaultdict(list)
    for episode in episodes:
        by_family[Goal.from_array(episode.goal).family].append(episode.success)
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "mean_length": float(np.mean([e.length for e in episodes])),
        "success_by_family": {f: float(np.mean(v)) for f, v in sorted(by_family.items())},
    }


def render_episode_end(level: str, episode: Episode, size: int = 256) -> np.ndarray:
    """Replay ``episode`` in a rendering env and return its final frame, ``(size, size, 3)``."""
    env = gym.make(ENV_IDS[level], render_mode="rgb_array", width=size, height=size)
    env.reset(seed=episode.seed)
    for action in episode.actions:
        env.step(int(action))
    frame = env.render()
    env.close()
    return frame


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    check_count(args.episodes, "--episodes")
    check_seed(args.seed, "--seed")
    levels = list(ENV_IDS) if args.level == "all" else [args.level]
    seeds = list(range(args.seed, args.seed + args.episodes))
    report: dict[str, Any] = {"command": "oracle", "seed": args.seed, "epsilon": args.epsilon}
    frames = []
    for level in levels:
        episodes = oracle_episodes(level, seeds, args.epsilon, args.workers, progress=True)
        report[level] = summarize(episodes)
        if args.frame:
            frames.append(render_episode_end(level, episodes[0]))
    if args.frame:
        args.frame.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(frames, axis=1)).save(args.frame)
        report["frame"] = str(args.frame)
    lines = [f"{'level':<10}{'episodes':>10}{'success':>10}{'mean steps':>12}"]
    for level in levels:
        row = report[level]
        lines.append(
            f"{level:<10}{row['episodes']:>10}{row['success_rate']:>10.1%}{row['mean_length']:>12.2f}"
        )
    if args.frame:
        lines.append(f"frame: {args.frame} (levels left to right: {', '.join(levels)})")
    return report, "\n".join(lines), 0
