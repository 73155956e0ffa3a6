"""Grounding throughput on this machine: float32 against each speed option, in one run.

Every option is a separate ``kalm ground`` process (so its peak memory and thread count are its
own) on the same episodes, from the same initial weights, with the same batches: only the option
differs. Each trains ``--steps`` optimizer steps of ``--batch-size`` sequences; the figure is the
median over the steps after ``--skip`` of non-padding positions per second (the step time is
the one ``kalm ground`` logs), next to the float32 reference of this run, plus the process's peak
memory and its mean training loss over the last 5 steps (same examples, so a lever that changes
the result shows here). The bf16 option trains only :data:`BF16_STEPS` steps (see there).

Options:

| name | what changes against the reference (float32, 1 thread, one padded example a row, all layers) |
|---|---|
| bf16 | bfloat16 autocast |
| 2 threads | torch uses both cores |
| packed | examples packed into rows of 512 positions |
| N layers | only the LM's first N decoder layers |
| combined | packing and two threads, with and without fewer layers (bf16 does not pay on an AVX2 CPU) |

Gradient checkpointing is never enabled by ``kalm ground`` (it trades speed for memory), so it has
no row.

Usage: ``python benchmarks/ground_speed.py [--dataset ID] [--episodes N] [--steps N] [--skip N]
[--batch-size B] [--layers N] [--only NAME ...]``. Without ``--dataset`` the first 300 episodes of a
fresh real-v0 build in a temporary Minari root are used. Run it on an otherwise idle machine: a
second thread only pays when the other core is free.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REFERENCE = {"precision": "fp32", "threads": 1, "pack_length": 0, "num_layers": None}
TARGET = 4.0  # x the reference positions/s
#: bfloat16 autocast without native bf16 instructions (AVX2 CPUs) runs ~10x slower than float32:
#: its option trains only this many steps (its loss is then not comparable and not shown).
BF16_STEPS = 3


def options(layers: int) -> dict[str, dict]:
    """Option name -> the settings that differ from :data:`REFERENCE`."""
    return {
        "fp32 (reference)": {},
        "bf16": {"precision": "bf16", "steps": BF16_STEPS},
        "2 threads": {"threads": 2},
        "packed": {"pack_length": 512},
        f"{layers} layers": {"num_layers": layers},
        "packed + 2 threads": {"pack_length": 512, "threads": 2},
        f"packed + 2 threads + {layers} layers": {"pack_length": 512, "threads": 2, "num_layers": layers},
    }


def run_option(dataset: str, root: str, work: Path, settings: dict, args: argparse.Namespace) -> dict:
    """One ``kalm ground`` process; its per-step log and summary."""
    settings = {**REFERENCE, "steps": args.steps, **settings}
    output = Path(tempfile.mkdtemp(prefix="ground-", dir=work))
    command = [
        sys.executable, "-m", "kalm.cli", "ground", "--datasets", dataset, "--output", str(output),
        "--steps", str(settings["steps"]), "--batch-size", str(args.batch_size), "--lr", "2e-4",
        "--eval-every", str(10 * args.steps), "--checkpoint-every", str(10 * args.steps),
        "--val-fraction", "0", "--max-episodes", str(args.episodes), "--seed", "0",
        "--precision", settings["precision"], "--pack-length", str(settings["pack_length"]),
        "--threads", str(settings["threads"]), "--no-progress", "--json",
    ]
    if settings["num_layers"]:
        command += ["--num-layers", str(settings["num_layers"])]
    env = {**os.environ, "MINARI_DATASETS_PATH": root, "OMP_NUM_THREADS": str(settings["threads"])}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"kalm ground failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    steps = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("kind") == "train"]
    full = settings["steps"] == args.steps
    rates = [r["positions"] / r["seconds"] for r in steps[args.skip if full else 1:]]
    return {
        "steps": settings["steps"],
        "positions_per_s": statistics.median(rates),
        "peak_rss_mb": summary["peak_rss_mb"],
        "loss": statistics.mean(r["total"] for r in steps[-5:] if "total" in r) if full else None,
        "positions_per_step": statistics.mean(r["positions"] for r in steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="a Minari dataset id (default: a fresh real-v0 build)")
    parser.add_argument("--episodes", type=int, default=300, help="episodes of the dataset to use")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--skip", type=int, default=4, help="first steps left out of the median")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12, help="layers kept in the fewer-layers option")
    parser.add_argument("--only", nargs="+", help="run only these options (and the reference)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args()
    if args.steps <= args.skip + 1:
        parser.error(f"--steps {args.steps} must exceed --skip {args.skip} by at least 2")

    work = Path(tempfile.mkdtemp(prefix="kalm-ground-speed-"))
    root = os.environ.get("MINARI_DATASETS_PATH", "")
    dataset = args.dataset
    if dataset is None:
        root = str(work / "minari")
        os.environ["MINARI_DATASETS_PATH"] = root
        from dataclasses import replace

        from kalm_envs.collector import build_dataset
        from kalm_envs.dataset_specs import get_spec

        dataset = "bench/clevr-robot/real-v0"
        build_dataset(replace(get_spec("kalm/clevr-robot/real-v0"), id=dataset), episodes=args.episodes,
                      progress=False, ref_episodes=2)

    chosen = options(args.layers)
    if args.only:
        unknown = sorted(set(args.only) - set(chosen))
        if unknown:
            parser.error(f"unknown option(s) {unknown}; options: {list(chosen)}")
        chosen = {name: s for name, s in chosen.items() if not s or name in args.only}
    results = {}
    for name, settings in chosen.items():
        results[name] = run_option(dataset, root, work, settings, args)
        print(f"  {name}: {results[name]['positions_per_s']:.1f} positions/s", file=sys.stderr, flush=True)

    reference = results["fp32 (reference)"]
    print(f"grounding SmolLM2-135M + LoRA r16, batch {args.batch_size}, {args.steps} steps "
          f"(median of the last {args.steps - args.skip}), "
          f"{reference['positions_per_step']:.0f} non-padding positions per step")
    print(f"{'option':<42}{'positions/s':>12}{'x fp32':>8}{'peak MB':>9}{'loss':>8}{'x fp32':>8}")
    for name, r in results.items():
        loss = (f"{r['loss']:>8.3f}{r['loss'] / reference['loss']:>8.3f}" if r["loss"] is not None
                else f"{'-':>8}{'-':>8}")
        print(f"{name:<42}{r['positions_per_s']:>12.1f}{r['positions_per_s'] / reference['positions_per_s']:>8.2f}"
              f"{r['peak_rss_mb']:>9.0f}{loss}")
    best = max(results.values(), key=lambda r: r["positions_per_s"])
    print(f"best: {best['positions_per_s'] / reference['positions_per_s']:.2f}x the float32 reference "
          f"(target {TARGET:g}x)")
    if args.json:
        print(json.dumps({"results": results, "target": TARGET}, sort_keys=True))


if __name__ == "__main__":
    main()
