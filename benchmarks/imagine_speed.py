"""Imagining rollouts: the KV-cache generator against the no-cache reference (KALM's way).

Same model, same prompts (goals, wordings and initial states of ``env.reset(seed=i)`` of the
level's env), greedy actions, every rollout forced to ``--steps`` steps (no stop at success or at
an invalid state). Both generators run in the same process, interleaved, ``--repeats`` times after
one warm-up call each; every repeat asserts that both give the same actions and states (states to
1e-4 m: the two compute the same sums in different orders). Medians are shown, with the speed-up
next to the 10x target.

Usage: ``python benchmarks/imagine_speed.py [--tiny] [--rollouts N] [--steps T] [--repeats R]
[--batch-size B] [--level L] [--threads N] [--json]``. The default model is the real SmolLM2-135M-Instruct with
fresh LoRA and heads (``GroundedLM.from_config(GroundedLMConfig())``); ``--tiny`` uses the tiny
random test LM instead (seconds; its per-call overhead dominates, so the ratio is not the point).

What to expect on 2 CPU cores: the cached decoder reads all weights for a handful of positions per
call, so at small batches it is bound by memory bandwidth and barely gains from a second thread,
while the reference is compute-bound and does; the ratio therefore grows with the batch size.
On a machine shared with other work, torch's spin-waiting threads can make the cached decoder's
many small operations several times slower: ``--threads 1`` gives steadier figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TARGET = 10.0


def load_model(tiny: bool):
    from kalm_gen.grounded_lm import GroundedLM, GroundedLMConfig

    if tiny:
        from kalm_gen.tiny import make_tiny_lm

        folder = make_tiny_lm(Path(tempfile.mkdtemp(prefix="kalm-tiny-")) / "tiny")
        config = GroundedLMConfig(base_model=str(folder), finetune="full", head_hidden=32)
    else:
        config = GroundedLMConfig()
    return GroundedLM.from_config(config, seed=0), config


def same(a, b) -> float:
    """Largest state gap (m) between two lists of rollouts; AssertionError if actions differ."""
    gap = 0.0
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.actions, y.actions), "cached and reference actions differ"
        diff = np.abs(x.observations.astype(np.float64) - y.observations)
        assert np.array_equal(np.isnan(x.observations), np.isnan(y.observations))
        gap = max(gap, float(np.nanmax(diff)) if diff.size else 0.0)
    assert gap <= 1e-4, f"cached and reference states differ by {gap} m"
    return gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random test LM instead of SmolLM2")
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, help="default: all rollouts in one batch")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--level", default="rephrase", help="a level of 50-step episodes (easy ones are one push)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from kalm_gen.imagine import imagine_rollouts, imagine_rollouts_no_cache, level_tasks

    model, config = load_model(args.tiny)
    tasks = level_tasks(args.level, args.rollouts, 0)
    batch = args.batch_size or args.rollouts
    common = dict(level=args.level, max_steps=args.steps, batch_size=batch, stop_early=False)

    def run(generate, steps=args.steps):
        start = time.perf_counter()
        rollouts = generate(model, tasks.goals, tasks.instructions, tasks.initial_states, **{**common, "max_steps": steps})
        return time.perf_counter() - start, rollouts

    run(imagine_rollouts, 2)  # warm-up: lazy initialisation of torch and transformers
    run(imagine_rollouts_no_cache, 2)
    times: dict[str, list[float]] = {"kv cache": [], "no cache": []}
    gaps = []
    for _ in range(args.repeats):
        cached_time, cached = run(imagine_rollouts)
        plain_time, plain = run(imagine_rollouts_no_cache)
        assert all(e.length == args.steps for e in cached + plain)
        gaps.append(same(cached, plain))
        times["kv cache"].append(cached_time)
        times["no cache"].append(plain_time)
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["no cache"] / medians["kv cache"]
    model_name = f"tiny random LM ({config.base_model})" if args.tiny else "SmolLM2-135M-Instruct + fresh LoRA/heads"
    print(f"model: {model_name}; {args.rollouts} rollouts x {args.steps} steps, batch {batch}, greedy, "
          f"{args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"{'generator':<12}{'median s':>10}{'rollouts/s':>12}{'steps/s':>10}")
    for name, seconds in medians.items():
        print(f"{name:<12}{seconds:>10.2f}{args.rollouts / seconds:>12.3f}{args.rollouts * args.steps / seconds:>10.1f}")
    print(f"speed-up {ratio:.1f}x (target {TARGET:.0f}x: {'met' if ratio >= TARGET else 'NOT met'}); "
          f"same greedy actions, states within {max(gaps):.1e} m")
    if args.json:
        print(json.dumps({
            "model": model_name, "rollouts": args.rollouts, "steps": args.steps, "batch_size": batch,
            "repeats": args.repeats, "seconds": times, "median_seconds": medians,
            "rollouts_per_s": {k: args.rollouts / v for k, v in medians.items()}, "speedup": ratio,
            "target": TARGET, "max_state_gap_m": max(gaps),
        }))


if __name__ == "__main__":
    main()
