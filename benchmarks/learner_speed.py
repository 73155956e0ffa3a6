"""Our BC and CQL against d3rlpy's DiscreteBC and DiscreteCQL: updates/s and success on train goals.

Same transitions (``kalm_envs.adapters.to_d3rlpy_arrays`` gives d3rlpy every one of ours), the
same network (hidden layers ``--hidden``, ReLU, plain MLP), batch size, learning rate, discount,
reward scale and CQL ``alpha``, and ``--threads`` torch threads each (default 1). d3rlpy lives in
its own virtual environment (it pins gymnasium 1.0.0; ``tests/helpers.py::d3rlpy_python`` builds
it once under ``.cache``) and runs in a child process that times its own ``fit`` loop; ours times
``learner.update(data.sample(...))``. Both timings leave out loading and building. The two sides
alternate ``--repeats`` times; medians are printed with their ratio next to the 3x target.

Success: each side trains ``--success-updates`` updates for each of ``--seeds`` seeds and its
greedy policy is evaluated on ``--episodes`` train-goal episodes, the same seeded episodes for both
(d3rlpy's policy comes back as TorchScript through ``save_policy``, which exports the argmax only);
mean and standard error over seeds. Our float32 policy at its default sampling temperature (what
``kalm train`` ships) is reported below them.

Ceiling: the time our float32 update spends in its matrix products (``aten::addmm`` and
``aten::mm`` under ``torch.profiler``, which run near this core's peak FLOP rate) bounds what a
float32 update of the same network and batch can reach even with no other cost:
``ceiling = d3rlpy's seconds per update / our matrix-product seconds per update`` (CPU runs only).
The same profile counts the update's top-level torch operations, each of which costs a fixed
overhead on top of its arithmetic.

``--device cuda`` runs both sides on a GPU (ours synchronises before reading the clock); d3rlpy's
venv then needs a CUDA build of torch.

Ours runs twice, in float32 (as d3rlpy) and with ``precision=bfloat16`` (autocast; d3rlpy has no
such mode); both are printed against d3rlpy. Differences we cannot remove: d3rlpy updates its
CQL target network by copying it every ``target_update_interval`` updates (set to ``1 / tau`` =
200), ours by Polyak averaging; ours multiplies ball coordinates by ``kalm_rl.data.STATE_SCALE``
before the network.

Usage: ``python benchmarks/learner_speed.py [--dataset ID] [--updates N] [--repeats R]
[--success-updates N] [--seeds S] [--episodes E] [--threads T] [--device D] [--json]``; without
``--dataset`` a 300-episode oracle dataset is built in a temporary Minari root (about 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kalm_envs.adapters import to_d3rlpy_arrays  # noqa: E402
from kalm_envs.loader import load_transitions  # noqa: E402
from kalm_envs.text_encoders import HashedNgramEncoder  # noqa: E402
from kalm_rl.data import OfflineData  # noqa: E402
from kalm_rl.devices import resolve_device  # noqa: E402
from kalm_rl.evaluation import evaluate_policies  # noqa: E402
from kalm_rl.learners import make_learner  # noqa: E402
from kalm_rl.policy import LearnerPolicy  # noqa: E402
from kalm_rl.policy_adapters import FlatPolicy  # noqa: E402
from tests.helpers import d3rlpy_python  # noqa: E402

TARGET = 3.0
PRECISIONS = ("float32", "bfloat16")
ALGORITHMS = {"bc": "DiscreteBCConfig", "cql": "DiscreteCQLConfig"}

D3RLPY_SCRIPT = """
import json, sys, time, numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
import d3rlpy
from d3rlpy.dataset import MDPDataset
arrays = np.load(args["data"])
dataset = MDPDataset(**{k: arrays[k] for k in arrays.files}, action_size=40)
d3rlpy.seed(args["seed"])
encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=args["hidden"])
common = dict(batch_size=args["batch_size"], encoder_factory=encoder, learning_rate=args["lr"],
              reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(args["reward_scale"]))
if args["algorithm"] == "bc":
    config = d3rlpy.algos.DiscreteBCConfig(beta=0.0, **common)
else:
    config = d3rlpy.algos.DiscreteCQLConfig(gamma=args["gamma"], alpha=args["alpha"],
                                            target_update_interval=args["target_update_interval"], **common)
algo = config.create(device=args["device"])
algo.build_with_dataset(dataset)
start = time.perf_counter()
algo.fit(dataset, n_steps=args["updates"], n_steps_per_epoch=args["updates"], show_progress=False,
         save_interval=10**9, logger_adapter=d3rlpy.logging.NoopAdapterFactory())
seconds = time.perf_counter() - start
if args.get("policy"):
    algo.save_policy(args["policy"])
print(json.dumps({"updates_per_s": args["updates"] / seconds}))
"""


def build_dataset(root: Path, episodes: int) -> str:
    from kalm_envs.minari_io import write_dataset
    from kalm_envs.oracle import oracle_episodes
    from kalm_envs.registration import ENV_IDS

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    dataset_id = "kalm/bench/train-v0"
    real = oracle_episodes("train", range(episodes), epsilon=0.2, workers=2)
    write_dataset(dataset_id, real, ENV_IDS["train"], "benchmark data", {}, (0.0, 1.0), "oracle")
    return dataset_id


def settings(args: argparse.Namespace, algorithm: str, precision: str) -> dict:
    """The learner settings both sides share (d3rlpy computes in float32 only)."""
    params = {"hidden": args.hidden, "lr": args.lr, "precision": precision}
    if algorithm == "cql":
        params.update(gamma=args.gamma, alpha=args.alpha, tau=args.tau)
    return params


def ours(data: OfflineData, args: argparse.Namespace, algorithm: str, updates: int, precision: str = "float32",
         seed: int = 0):
    """Train our learner for ``updates``; returns (updates/s, learner)."""
    torch.manual_seed(seed)
    learner = make_learner(algorithm, data.input_dim, settings(args, algorithm, precision)).to(args.device)
    generator = torch.Generator().manual_seed(seed)
    learner.update(data.sample(args.batch_size, generator))  # warm-up: allocations, optimizer state
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(updates):
        learner.update(data.sample(args.batch_size, generator))
    synchronize(args.device)
    return updates / (time.perf_counter() - start), learner


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def theirs(python: Path, data_file: Path, args: argparse.Namespace, algorithm: str, updates: int,
           policy: Path | None = None, seed: int = 0) -> float:
    """Train d3rlpy's learner for ``updates`` in its venv; returns its updates/s."""
    spec = {"data": str(data_file), "algorithm": algorithm, "updates": updates, "seed": seed,
            "hidden": args.hidden, "batch_size": args.batch_size, "lr": args.lr, "gamma": args.gamma,
            "alpha": args.alpha, "reward_scale": args.reward_scale,
            "target_update_interval": round(1 / args.tau), "policy": str(policy) if policy else None,
            "threads": args.threads, "device": f"{args.device.type}:{args.device.index or 0}"}
    out = subprocess.run([str(python), "-c", D3RLPY_SCRIPT, json.dumps(spec)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])["updates_per_s"]


def profile_update(data: OfflineData, args: argparse.Namespace, algorithm: str,
                   updates: int = 50) -> tuple[float, float]:
    """``(seconds in matrix products, top-level torch operations)`` per float32 update of ours,
    sampling included (profiled; CPU only). An operation is top-level when no other ``aten::``
    operation called it."""
    _, learner = ours(data, args, algorithm, 1)
    generator = torch.Generator().manual_seed(1)
    with torch.profiler.profile() as profiler:
        for _ in range(updates):
            learner.update(data.sample(args.batch_size, generator))
    micros = sum(e.self_cpu_time_total for e in profiler.key_averages() if e.key in ("aten::addmm", "aten::mm"))
    operations = sum(e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
                     for e in profiler.events())
    return micros / 1e6 / updates, operations / updates


def train_success(data: OfflineData, data_file: Path, python: Path, args: argparse.Namespace, algorithm: str,
                  folder: Path) -> dict:
    """Greedy train-goal success of each side (and our sampling policy) over ``args.seeds`` seeds."""
    groups: dict[str, list] = {"d3rlpy": [], **{p: [] for p in PRECISIONS}, "float32 sampling": []}
    for seed in range(args.seeds):
        policy_file = folder / f"{algorithm}-{seed}.pt"
        theirs(python, data_file, args, algorithm, args.success_updates, policy=policy_file, seed=seed)
        groups["d3rlpy"].append(d3rlpy_policy(policy_file))
        for precision in PRECISIONS:
            _, learner = ours(data, args, algorithm, args.success_updates, precision, seed)
            groups[precision].append(LearnerPolicy(learner, HashedNgramEncoder(), temperature=0.0))
            if precision == "float32":
                groups["float32 sampling"].append(LearnerPolicy(learner, HashedNgramEncoder()))
    report = evaluate_policies(groups, "train", episodes=args.episodes)
    return {side: {k: row["train"][k] for k in ("success_rate", "stderr", "per_policy")}
            for side, row in report["methods"].items()}


def d3rlpy_policy(file: Path) -> FlatPolicy:
    """d3rlpy's TorchScript policy (flat observations -> actions) as a policy over dicts, on the
    CPU wherever it was trained (evaluation feeds it CPU tensors)."""
    module = torch.jit.load(str(file), map_location="cpu")

    def predict(flat: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(flat)).numpy()

    return FlatPolicy(predict, HashedNgramEncoder(), "d3rlpy")


def percent(success: dict) -> str:
    return f"{100 * success['success_rate']:.1f} ± {100 * success['stderr']:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="dataset id or folder (default: build a small one)")
    parser.add_argument("--build-episodes", type=int, default=300)
    parser.add_argument("--updates", type=int, default=300, help="updates per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--success-updates", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per side for success")
    parser.add_argument("--episodes", type=int, default=200, help="train-goal episodes per policy")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--tau", type=float, default=0.005)
    parser.add_argument("--reward-scale", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--device", type=resolve_device, default="cpu",
                        help="cpu (default), cuda or cuda:N, the same for both sides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    python = d3rlpy_python()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = args.dataset or build_dataset(tmp / "minari", args.build_episodes)
        transitions = load_transitions(dataset)
        data = OfflineData(transitions, [], HashedNgramEncoder(), reward_scale=args.reward_scale).to(args.device)
        data_file = tmp / "d3rlpy.npz"
        np.savez(data_file, **to_d3rlpy_arrays(transitions, HashedNgramEncoder()))
        report: dict = {"dataset": str(dataset), "transitions": len(transitions), "batch_size": args.batch_size,
                        "threads": args.threads,
                        "hidden": args.hidden, "updates_per_run": args.updates, "repeats": args.repeats}
        for algorithm in ALGORITHMS:
            runs: dict[str, list[float]] = {"float32": [], "bfloat16": [], "d3rlpy": []}
            for _ in range(args.repeats):
                for precision in PRECISIONS:
                    runs[precision].append(ours(data, args, algorithm, args.updates, precision)[0])
                runs["d3rlpy"].append(theirs(python, data_file, args, algorithm, args.updates))
            speed = {side: statistics.median(values) for side, values in runs.items()}
            speedup = {p: speed[p] / speed["d3rlpy"] for p in PRECISIONS}
            products, operations = profile_update(data, args, algorithm) if args.device.type == "cpu" else (None, None)
            report[algorithm] = {"updates_per_s": speed, "runs": runs, "speedup": speedup,
                                 "matrix_product_ms": 1e3 * products if products else None,
                                 "operations_per_update": operations,
                                 "float32_ceiling": 1 / speed["d3rlpy"] / products if products else None,
                                 "train_success": train_success(data, data_file, python, args, algorithm, tmp),
                                 "success_updates": args.success_updates, "seeds": args.seeds}
    print(f"{'':5}{'side':>10}{'upd/s':>8}{'vs d3rlpy':>11}{'target':>8}{'greedy success':>20}")
    for algorithm in ALGORITHMS:
        row = report[algorithm]
        success = row["train_success"]
        for side in (*PRECISIONS, "d3rlpy"):
            ratio = f"{row['speedup'][side]:.2f}x" if side in PRECISIONS else "1.00x"
            print(f"{algorithm:5}{side:>10}{row['updates_per_s'][side]:>8.0f}{ratio:>11}{TARGET:>7.1f}x"
                  f"{percent(success[side]):>20}")
        print(f"{algorithm:5}{'float32, sampling':>29}{'':>8}{percent(success['float32 sampling']):>20}")
        if row["float32_ceiling"] is not None:
            print(f"{algorithm:5} float32 matrix products take {row['matrix_product_ms']:.2f} ms of the "
                  f"{1e3 / row['updates_per_s']['float32']:.2f} ms update: with nothing else, float32 would "
                  f"reach {row['float32_ceiling']:.2f}x; the update runs {row['operations_per_update']:.0f} "
                  "top-level torch operations")
    print(f"{args.threads} torch thread(s) per side; medians of {args.repeats} alternating runs of {args.updates} "
          "updates; success after "
          f"{args.success_updates} updates, mean ± stderr over {args.seeds} seeds, {args.episodes} "
          "train-goal episodes each")
    if args.json:
        print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
