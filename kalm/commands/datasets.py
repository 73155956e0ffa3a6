"""``kalm datasets``: list, build, inspect, verify and import the Minari datasets."""

from __future__ import annotations

import argparse
from typing import Any

from kalm.commands import add_json_flag, path_argument
from kalm_envs.collector import REF_EPISODES, build_dataset
from kalm_envs.dataset_checks import check_files, dataset_folder, read_dataset
from kalm_envs.dataset_paths import dataset_dir, datasets_root
from kalm_envs.dataset_specs import get_spec, list_specs
from kalm_envs.kalm_import import import_kalm
from kalm_envs.minari_io import read_metadata
from kalm_envs.replay import label_audit
from kalm_envs.rollout import unpack_episodes
from kalm_envs.validation import check_count
from kalm_envs.verify import verify_dataset

HELP = "list, build, inspect, verify and import the Minari datasets"
#: Rollouts imagined together when an imagined spec is built: fixed, so that a build is repeatable
#: (a batch's padding changes float sums), and larger than kalm imagine's default for speed.
IMAGINED_BUILD_BATCH = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="published dataset ids and whether each is built here")
    build = sub.add_parser("build", help="build a dataset from its spec: simulator rollouts (an interrupted "
                           "build resumes) or, for an imagined spec, its published grounded model's")
    build.add_argument("id")
    build.add_argument("--episodes", type=int, help="episodes instead of the spec's count")
    build.add_argument("--workers", type=int, default=1, help="worker processes")
    build.add_argument("--ref-episodes", type=int, default=REF_EPISODES,
                       help="random-policy and oracle episodes behind the reference scores")
    info = sub.add_parser("info", help="a dataset's card and, if built, its metadata")
    info.add_argument("id")
    verify = sub.add_parser("verify", help="check a built dataset; exits non-zero on any failure")
    verify.add_argument("id")
    kalm = sub.add_parser("import-kalm", help="import KALM's released npy file as a Minari dataset (the file is a "
                          "pickle, which could run code: only numpy arrays and plain values are unpickled, any "
                          "other object is refused)")
    kalm.add_argument("path", type=path_argument)
    kalm.add_argument("id")
    kalm.add_argument("--ref-episodes", type=int, default=REF_EPISODES,
                      help="random-policy and oracle episodes behind the reference scores")
    replay = sub.add_parser("replay", help="replay each episode's pushes in the simulator: how far the dataset's "
                            "states and success labels hold (for imagined data: the claim --imagined-episodes "
                            "successful trusts)")
    replay.add_argument("id")
    replay.add_argument("--episodes", type=int, help="only the first this many episodes (default: all)")
    for command in (build, info, verify, kalm, replay):
        add_json_flag(command)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    return _ACTIONS[args.action](args)


def _list(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    rows = {spec_id: dataset_dir(spec_id).exists() for spec_id in list_specs()}
    lines = [f"{'id':<40}{'episodes':>10}  built", *(
        f"{spec_id:<40}{spec.episodes:>10}  {'yes' if rows[spec_id] else 'no'}"
        for spec_id, spec in list_specs().items()
    ), f"root: {datasets_root()}"]
    return {"datasets": rows, "root": str(datasets_root())}, "\n".join(lines), 0


def _build(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    spec = get_spec(args.id)
    if spec.source == "imagined":  # rollouts of the spec's published grounded model, at its temperature
        from kalm_gen.imagine_dataset import write_imagined_dataset

        path = write_imagined_dataset(spec.model, spec.level, episodes=args.episodes, dataset_id=spec.id,
                                      batch_size=IMAGINED_BUILD_BATCH, ref_episodes=args.ref_episodes,
                                      workers=args.workers, progress=True)
    else:
        path = build_dataset(spec, episodes=args.episodes, workers=args.workers, ref_episodes=args.ref_episodes)
    report = verify_dataset(args.id)
    summary = {"id": args.id, "path": str(path), "episodes": report.episodes, "steps": report.steps,
               "success_rate": read_metadata(args.id)["kalm"]["success_rate"], "verified": report.ok}
    return summary, report.table(), 0 if report.ok else 1


def _info(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    """The card, and for a built dataset its metadata, once its files pass
    :func:`~kalm_envs.dataset_checks.check_files` (a damaged or foreign dataset is an error)."""
    specs = list_specs()
    try:
        folder = dataset_folder(args.id)
    except FileNotFoundError:
        folder = None
    if args.id not in specs and folder is None:
        raise ValueError(f"dataset {args.id!r} has no spec and is not built; known ids: {sorted(specs)}")
    text = specs[args.id].card() if args.id in specs else f"# {args.id}\n"
    summary: dict[str, Any] = {"id": args.id, "built": folder is not None}
    if folder is not None:
        check_files(folder)
        metadata = read_metadata(folder)
        summary.update({k: metadata.get(k) for k in ("total_episodes", "total_steps", "ref_min_score", "ref_max_score")})
        summary["provenance"] = metadata.get("kalm", {})
        text += "\n## This copy\n\n" + "\n".join(f"- {k}: {v}" for k, v in summary.items() if k != "id")
    return summary, text, 0


def _verify(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    report = verify_dataset(args.id)
    summary = {"id": args.id, "ok": report.ok, "episodes": report.episodes, "steps": report.steps,
               "checks": report.checks}
    return summary, report.table(), 0 if report.ok else 1


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _replay(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    level, packed = read_dataset(args.id)
    episodes = unpack_episodes(packed)
    if args.episodes is not None:
        episodes = episodes[: check_count(args.episodes, "--episodes")]
    audit = label_audit(level, episodes)
    error = "-" if audit["state_error_mean"] is None else f"{audit['state_error_mean']:.3f} m"
    text = "\n".join([
        f"{args.id} ({level}): {audit['episodes']} episodes replayed in the simulator",
        f"reach the goal in the simulator: {_percent(audit['replay_match_rate'])}",
        f"labelled successful (goal met in the dataset's own last state): {audit['labelled_successful']}, "
        f"of which the simulator confirms {_percent(audit['confirmed_rate'])}",
        f"not labelled successful, yet reaching the goal in the simulator: {_percent(audit['unlabelled_replay_rate'])}",
        f"state error after each push: mean {error}",
    ])
    return {"id": args.id, "level": level, **audit}, text, 0


def _import_kalm(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    path = import_kalm(args.path, args.id, ref_episodes=args.ref_episodes)
    report = verify_dataset(args.id)
    summary = {"id": args.id, "path": str(path), "episodes": report.episodes, "steps": report.steps,
               "verified": report.ok}
    return summary, report.table(), 0 if report.ok else 1


_ACTIONS = {"list": _list, "build": _build, "info": _info, "verify": _verify, "import-kalm": _import_kalm,
            "replay": _replay}
