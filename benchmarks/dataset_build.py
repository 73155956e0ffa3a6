"""Building real-v0: episodes/s and env steps/s with 1 and 2 worker processes, in one run.

Each configuration builds ``--episodes`` episodes into its own temporary Minari root
(``--repeats`` times, interleaved; medians shown) and the 2-worker rate is compared with the
1-worker rate. The projected time of the published 10,000 episodes is printed next to the
10-minute target. Usage: ``python benchmarks/dataset_build.py [--episodes N] [--repeats R] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SPEC_ID = "kalm/clevr-robot/real-v0"
PUBLISHED_EPISODES = 10_000
TARGET_SECONDS = 600


def build_once(episodes: int, workers: int) -> tuple[float, int]:
    """Seconds to build ``episodes`` episodes (reference episodes excluded) and env steps taken."""
    from kalm_envs.collector import build_dataset
    from kalm_envs.dataset_specs import get_spec
    from kalm_envs.minari_io import read_metadata

    root = Path(tempfile.mkdtemp(prefix="kalm-build-"))
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    start = time.perf_counter()
    build_dataset(get_spec(SPEC_ID), episodes=episodes, workers=workers, progress=False, ref_episodes=1)
    seconds = time.perf_counter() - start
    steps = read_metadata(SPEC_ID)["total_steps"]
    shutil.rmtree(root)
    return seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[int, list[tuple[float, int]]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for workers in results:
            results[workers].append(build_once(args.episodes, workers))
    rows = {}
    for workers, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        steps = statistics.median(n for _, n in runs)
        rows[workers] = {"seconds": seconds, "episodes_per_s": args.episodes / seconds, "steps_per_s": steps / seconds}
    speedup = rows[2]["episodes_per_s"] / rows[1]["episodes_per_s"]
    projected = PUBLISHED_EPISODES / rows[2]["episodes_per_s"]
    print(f"building {args.episodes} episodes of {SPEC_ID}, {args.repeats} repeats (medians), {os.cpu_count()} CPUs")
    print(f"{'workers':<9}{'seconds':>9}{'episodes/s':>12}{'env steps/s':>13}")
    for workers, row in rows.items():
        print(f"{workers:<9}{row['seconds']:>9.1f}{row['episodes_per_s']:>12.1f}{row['steps_per_s']:>13.0f}")
    print(f"2 workers vs 1: {speedup:.2f}x")
    print(f"projected {PUBLISHED_EPISODES} episodes with 2 workers: {projected:.0f} s (target <= {TARGET_SECONDS} s: "
          f"{'met' if projected <= TARGET_SECONDS else 'MISSED'})")
    if args.json:
        print(json.dumps({"rows": rows, "speedup_2_vs_1": speedup, "projected_seconds": projected}))


if __name__ == "__main__":
    main()
