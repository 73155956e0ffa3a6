"""Loading a dataset into flat transition arrays: our loader against iterating Minari episodes.

Both read the same dataset in the same run, interleaved, ``--repeats`` times; medians are shown.
Three ways are timed:

- ``minari``: ``minari.load_dataset(id).iterate_episodes()``, stacking obs[:-1] / obs[1:] etc.
  (the reference);
- ``kalm index``: ``kalm_envs.loader.load_transitions`` (reads ``kalm_index.npz``);
- ``kalm hdf5``: the same loader on a copy of the dataset without the index file (h5py
  low-level reads of every episode).

Usage: ``python benchmarks/dataset_io.py [--dataset ID] [--build-episodes N] [--repeats R] [--json]``.
Without ``--dataset`` it builds a real-v0 of ``--build-episodes`` episodes in a temporary root.
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

import numpy as np


def minari_flatten(dataset_id: str) -> int:
    import minari

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc", "goal")}
    texts = []
    for episode in minari.load_dataset(dataset_id).iterate_episodes():
        states = episode.observations["observation"]
        parts["obs"].append(states[:-1])
        parts["next"].append(states[1:])
        parts["act"].append(episode.actions)
        parts["rew"].append(episode.rewards)
        parts["term"].append(episode.terminations)
        parts["trunc"].append(episode.truncations)
        parts["goal"].append(episode.infos["goal"][:-1])
        texts += episode.observations["instruction"][:-1]
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return len(arrays["act"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="a built dataset id under MINARI_DATASETS_PATH")
    parser.add_argument("--build-episodes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="kalm-io-"))
    if args.dataset is None:
        os.environ["MINARI_DATASETS_PATH"] = str(scratch / "root")
        from kalm_envs.collector import build_dataset
        from kalm_envs.dataset_specs import get_spec

        args.dataset = "kalm/clevr-robot/real-v0"
        build_dataset(get_spec(args.dataset), episodes=args.build_episodes, workers=2, ref_episodes=10)
    from kalm_envs.loader import load_transitions
    from kalm_envs.dataset_paths import dataset_dir
    from kalm_envs.minari_io import INDEX_FILE

    no_index = scratch / "no-index"
    shutil.copytree(dataset_dir(args.dataset), no_index)
    (no_index / INDEX_FILE).unlink(missing_ok=True)

    ways = {
        "minari": lambda: minari_flatten(args.dataset),
        "kalm index": lambda: len(load_transitions(args.dataset)),
        "kalm hdf5": lambda: len(load_transitions(no_index)),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    counts = {}
    for _ in range(args.repeats):
        for name, load in ways.items():
            start = time.perf_counter()
            counts[name] = load()
            times[name].append(time.perf_counter() - start)
    assert len(set(counts.values())) == 1, f"the loaders disagree on the transition count: {counts}"
    shutil.rmtree(scratch)

    median = {name: statistics.median(t) for name, t in times.items()}
    reference = median["minari"]
    print(f"dataset {args.dataset}: {counts['minari']} transitions, {args.repeats} repeats (medians)")
    print(f"{'loader':<12}{'seconds':>10}{'speed-up vs minari':>20}")
    for name, seconds in median.items():
        print(f"{name:<12}{seconds:>10.3f}{reference / seconds:>19.1f}x")
    print(f"target: kalm >= 10x minari -> {'met' if reference / median['kalm index'] >= 10 else 'MISSED'}")
    if args.json:
        print(json.dumps({"transitions": counts["minari"], "median_seconds": median,
                          "speedup_index": reference / median["kalm index"],
                          "speedup_hdf5": reference / median["kalm hdf5"]}))


if __name__ == "__main__":
    main()
