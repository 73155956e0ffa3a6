"""Generated bad inputs for the fuzz suite (``tests/test_fuzz_inputs.py``), one :class:`Case` each.

Every case calls the package at one of its boundaries (the env, goals, language, encoders, the
dataset reader, verify, the KALM importer, configs, policies, the command line) with one bad
value, and says what a clean refusal looks like: an exception of a kind in :data:`CLEAN_ERRORS`
(or one the package defines) whose message holds every string of ``needles``. Cases with
``accept=True`` are documented acceptances (numpy integers where an int is asked for, an int where
a float is): they must run without an error.

Corrupt datasets are copies of one small valid dataset (:class:`Workspace`), written by the
package's own writer from oracle episodes, then damaged the way each case says.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

NAN, INF = float("nan"), float("inf")
LONG_ID = "kalm/" + "x" * 300 + "-v0"


class CliFailure(Exception):
    """A ``kalm`` command that exited non-zero: its code and what it printed."""

    def __init__(self, code: int, output: str) -> None:
        super().__init__(f"exit {code}: {output}")
        self.code, self.output = code, output


class VerifyFailed(Exception):
    """:func:`kalm_envs.verify.verify_dataset` reported failed checks (its table)."""


CLEAN_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, FileNotFoundError, FileExistsError, CliFailure, VerifyFailed,
)


@dataclass(frozen=True)
class Case:
    """One fuzz input: ``call(workspace)`` must raise a clean error naming every ``needle``
    (``accept=False``) or return (``accept=True``). ``exit_codes``: the codes a CLI case may end with."""

    name: str
    call: Callable[[Workspace], Any]
    needles: tuple[str, ...] = ()
    accept: bool = False
    exit_codes: tuple[int, ...] = (2,)


def is_clean_error(error: BaseException) -> bool:
    """Whether ``error`` is of a kind a caller is told to expect (not a crash from deep inside)."""
    module = type(error).__module__.split(".")[0]
    return isinstance(error, CLEAN_ERRORS) or module in ("kalm", "kalm_envs", "kalm_gen", "kalm_rl")


def outcome(case: Case, workspace: Workspace) -> tuple[str, str]:
    """``(kind, detail)``: kind is ``accepted``, ``clean``, ``silent`` (a bad input that passed),
    ``refused`` (a documented acceptance that raised) or ``traceback`` (an error of another kind,
    or one whose message does not name the value)."""
    try:
        case.call(workspace)
    except Exception as error:  # noqa: BLE001 - classifying every outcome is the point
        message = str(error)
        if case.accept:
            return "refused", f"{type(error).__name__}: {message}"
        if isinstance(error, CliFailure) and (error.code not in case.exit_codes or "Traceback" in error.output):
            return "traceback", message
        if is_clean_error(error) and all(n.lower() in message.lower() for n in case.needles):
            return "clean", message
        return "traceback", f"{type(error).__name__}: {message}"
    return ("accepted", "") if case.accept else ("silent", "")


# ---------------------------------------------------------------------------------------------
# The workspace: a Minari root with one valid dataset, and corrupt copies made on demand.

BASE_ID = "kalm/fuzz/base-v0"


class Workspace:
    """A folder with its own Minari root (``MINARI_DATASETS_PATH`` must point at :attr:`root`
    while cases run), a 3-episode train dataset, a KALM-format dict and a saved policy."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.root = self.folder / "minari"
        self._copies: dict[str, Path] = {}
        self._base: Path | None = None
        self._policy: Path | None = None

    def base(self) -> Path:
        """The valid dataset's folder (built on first use)."""
        if self._base is None:
            from kalm_envs import ENV_IDS
            from kalm_envs.minari_io import write_dataset
            from kalm_envs.oracle import oracle_episodes

            episodes = oracle_episodes("train", [0, 1, 2], epsilon=0.2)
            self._base = write_dataset(BASE_ID, episodes, ENV_IDS["train"], "fuzz base", {"seed": 0},
                                       (0.0, 1.0), "oracle")
        return self._base

    def corrupt(self, name: str, damage: Callable[[Path], None]) -> Path:
        """A copy of the base dataset at ``<folder>/copies/<name>`` damaged by ``damage(copy)``."""
        if name not in self._copies:
            copy = self.folder / "copies" / name
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(self.base(), copy)
            damage(copy)
            self._copies[name] = copy
        return self._copies[name]

    def kalm_data(self) -> dict[str, np.ndarray]:
        """The base dataset's episodes in KALM's padded format (see :mod:`kalm_envs.kalm_import`)."""
        from kalm_envs.goals import Goal
        from kalm_envs.minari_io import read_episodes

        episodes = read_episodes(self.base())
        n, width = len(episodes), 50
        data = {
            "observations": np.zeros((n, width, 10), np.float32),
            "next_observations": np.zeros((n, width, 10), np.float32),
            "actions": np.zeros((n, width), np.int64),
            "rewards": np.zeros((n, width, 1), np.float32),
            "terminals": np.zeros((n, width, 1), np.float32),
            "masks": np.zeros((n, width), np.float32),
            "goals": np.zeros((n, width, 6), np.float32),
            "instructions": np.array([[e.instruction] for e in episodes], dtype=object),
        }
        for i, e in enumerate(episodes):
            t = e.length
            data["observations"][i, :t] = e.observations[:-1]
            data["next_observations"][i, :t] = e.observations[1:]
            data["actions"][i, :t] = e.actions
            data["rewards"][i, :t, 0] = e.rewards
            data["terminals"][i, :t, 0] = e.terminations
            data["masks"][i, :t] = 1
            data["goals"][i, :] = Goal.from_array(e.goal).to_kalm()
        return data

    def kalm_file(self, name: str, change: Callable[[dict], Any]) -> Path:
        """A KALM-format ``.npy`` of the base episodes, changed in place by ``change(data)`` or
        replaced by what it returns (when not None)."""
        path = self.folder / "kalm" / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.kalm_data()
        result = change(data)
        np.save(path, data if result is None else result, allow_pickle=True)
        return path

    def policy(self) -> Path:
        """A saved tiny BC policy (hashed encoder)."""
        if self._policy is None:
            from kalm_envs.text_encoders import make_encoder
            from kalm_rl.learners import make_learner
            from kalm_rl.policy import save_policy

            encoder = make_encoder("hashed", dim=16)
            learner = make_learner("bc", 10 + 16, {"hidden": (8,)})
            self._policy = save_policy(self.folder / "policy.pt", learner, encoder)
        return self._policy


def cli(*argv: str) -> str:
    """Run ``kalm ARGV`` in this process; :class:`CliFailure` when it exits non-zero."""
    from kalm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 2
    if code:
        raise CliFailure(code, err.getvalue() + out.getvalue())
    return out.getvalue()


def verified(dataset: Path) -> None:
    """:class:`VerifyFailed` with the report's table when ``verify`` finds a problem."""
    from kalm_envs.verify import verify_dataset

    report = verify_dataset(dataset)
    if not report.ok:
        raise VerifyFailed(report.table())


# ---------------------------------------------------------------------------------------------
# Damage done to dataset copies.

def _h5(copy: Path) -> h5py.File:
    return h5py.File(copy / "data" / "main_data.hdf5", "r+")


def _index(copy: Path) -> Path:
    return copy / "data" / "kalm_index.npz"


def _metadata_file(copy: Path) -> Path:
    return copy / "data" / "metadata.json"


def _edit_metadata(copy: Path, change: Callable[[dict], Any]) -> None:
    """Apply ``change`` to the copy's ``metadata.json`` in place."""
    metadata = json.loads(_metadata_file(copy).read_text())
    change(metadata)
    _metadata_file(copy).write_text(json.dumps(metadata))


def _set_h5(field: str, value: Any, episode: int = 1, row: Any = 0) -> Callable[[Path], None]:
    def damage(copy: Path) -> None:
        with _h5(copy) as file:
            data = file[f"episode_{episode}/{field}"]
            array = data[()]
            array[row] = value
            del file[f"episode_{episode}/{field}"]
            file[f"episode_{episode}/{field}"] = array
    return damage


def _set_index(field: str, value: Any, row: Any = 0, reseal: bool = False) -> Callable[[Path], None]:
    """Change one entry of the index; ``reseal``: store the new content's checksums in the index
    and in the metadata too (a consistent but bad dataset, as a buggy writer would leave)."""
    def damage(copy: Path) -> None:
        from kalm_envs.minari_io import content_checksum, index_checksum
        from kalm_envs.rollout import load_packed, unpack_episodes

        packed = load_packed(_index(copy))
        array = packed[field].copy()
        array[row] = value
        packed[field] = array
        if reseal:
            checksum = content_checksum(unpack_episodes(packed))
            packed["checksum"] = np.array(checksum)
            index = index_checksum(packed)
            _edit_metadata(copy, lambda m: m["kalm"].update(checksum=checksum, index_checksum=index))
        with open(_index(copy), "wb") as handle:
            np.savez(handle, **packed)
    return damage


def _reseal_h5(copy: Path) -> None:
    """Store the HDF5 content's checksum in the metadata (and drop the index)."""
    from kalm_envs.minari_io import content_checksum, read_episodes

    _index(copy).unlink()
    checksum = content_checksum(read_episodes(copy))
    _edit_metadata(copy, lambda m: m["kalm"].update(checksum=checksum))


def _then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(copy: Path) -> None:
        for step in steps:
            step(copy)
    return damage


def _drop_index(copy: Path) -> None:
    _index(copy).unlink()


def _bytes(path_of: Callable[[Path], Path], mode: str) -> Callable[[Path], None]:
    def damage(copy: Path) -> None:
        path = path_of(copy)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if mode == "truncate" else b"\x00garbage" * 64)
    return damage


def _delete_episode(copy: Path) -> None:
    with _h5(copy) as file:
        del file["episode_2"]


def _env_spec(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(copy: Path) -> None:
        def edit(metadata: dict) -> None:
            spec = json.loads(metadata["env_spec"])
            change(spec)
            metadata["env_spec"] = json.dumps(spec)
        _edit_metadata(copy, edit)
    return damage


#: (name, damage, needle): content damage that every reader and verify must catch.
CONTENT_DAMAGE: list[tuple[str, Callable[[Path], None], str]] = []
for _where, _make in (("h5", lambda f, v, r=0: _then(_set_h5(f, v, row=r), _drop_index)),
                      ("h5-resealed", lambda f, v, r=0: _then(_set_h5(f, v, row=r), _reseal_h5))):
    CONTENT_DAMAGE += [
        (f"{_where}-action-40", _make("actions", 40), "action"),
        (f"{_where}-action-neg", _make("actions", -3), "action"),
        (f"{_where}-obs-nan", _make("observations/observation", NAN, (0, 3)), "non-finite"),
        (f"{_where}-obs-inf", _make("observations/observation", INF, (0, 0)), "non-finite"),
        (f"{_where}-obs-off-table", _make("observations/observation", 9.0, (0, 1)), "observation"),
        (f"{_where}-reward-nan", _make("rewards", NAN), "non-finite"),
        (f"{_where}-goal-kind", _make("infos/goal", 9, (slice(None), 0)), "goal"),
        (f"{_where}-goal-self", _make("infos/goal", [0, 2, 2, 0, -1, -1, -1, -1, -1, -1], slice(None)), "goal"),
        (f"{_where}-goal-level", _make("infos/goal", [1, 0, -1, 2, -1, -1, -1, -1, -1, -1], slice(None)), "goal"),
    ]
for _name, _field, _value, _row, _needle in (
    ("action-41", "actions", 41, 0, "action"),
    ("obs-nan", "observations", NAN, (0, 2), "non-finite"),
    ("reward-inf", "rewards", -INF, 0, "non-finite"),
    ("goal-kind", "goals", 7, (0, 0), "goal"),
    ("goal-ball", "goals", 6, (1, 1), "goal"),
    ("instruction-empty", "instructions", "", 0, "instruction"),
    ("length-short", "lengths", 1, 0, "length"),
):
    CONTENT_DAMAGE += [
        (f"index-{_name}", _set_index(_field, _value, _row), _needle),
        (f"index-resealed-{_name}", _set_index(_field, _value, _row, reseal=True), _needle),
    ]
CONTENT_DAMAGE += [
    ("h5-tampered-reward", _then(_set_h5("rewards", 55.0), _drop_index), "checksum"),
    ("h5-tampered-obs", _then(_set_h5("observations/observation", 0.01, row=(1, 4)), _drop_index), "checksum"),
    ("index-tampered-seed", _set_index("seeds", 99, 0), "checksum"),
    ("index-garbage", _bytes(_index, "garbage"), "kalm_index.npz"),
    ("index-truncated", _bytes(_index, "truncate"), "kalm_index.npz"),
    ("index-missing-key", lambda c: np.savez(_index(c), lengths=np.array([1])), "kalm_index.npz"),
    ("missing-episode", _delete_episode, "episode"),
    ("h5-truncated", _bytes(lambda c: c / "data" / "main_data.hdf5", "truncate"), "main_data.hdf5"),
    ("h5-garbage", _bytes(lambda c: c / "data" / "main_data.hdf5", "garbage"), "main_data.hdf5"),
    ("metadata-index-checksum", lambda c: _edit_metadata(c, lambda m: m["kalm"].update(index_checksum="0" * 64)),
     "checksum"),
    ("metadata-episodes", lambda c: _edit_metadata(c, lambda m: m.update(total_episodes=7)), "episodes"),
    ("metadata-steps", lambda c: _edit_metadata(c, lambda m: m.update(total_steps=1)), "steps"),
    ("metadata-list", lambda c: _metadata_file(c).write_text("[1, 2]"), "metadata"),
    ("metadata-garbage", lambda c: _metadata_file(c).write_text("{not json"), "metadata"),
    ("metadata-missing", lambda c: _metadata_file(c).unlink(), "metadata"),
    ("metadata-no-checksum-bad-action", _then(_set_h5("actions", 45), _drop_index,
                                              lambda c: _edit_metadata(c, lambda m: m["kalm"].pop("checksum"))), "action"),
    ("spec-foreign", _env_spec(lambda s: s.update(id="CartPole-v1")), "CartPole-v1"),
    ("spec-level-kwarg", _env_spec(lambda s: s["kwargs"].update(level="hard")), "level"),
    ("spec-reward-mode", _env_spec(lambda s: s["kwargs"].update(reward_mode="sparse")), "reward_mode"),
    ("spec-entry-point", _env_spec(lambda s: s.update(entry_point="gymnasium.envs:CartPoleEnv")), "entry_point"),
    ("spec-time-limit", _env_spec(lambda s: s.update(max_episode_steps=5)), "max_episode_steps"),
    ("spec-other-level", _env_spec(lambda s: s.update(id="KALM/CLEVRRobot-Hard-v0", kwargs={"level": "hard"})), "goal"),
    ("spec-not-json", lambda c: _edit_metadata(c, lambda m: m.update(env_spec="{oops")), "env_spec"),
]
#: Damage to the files themselves, which ``kalm datasets info`` must notice too.
STRUCTURAL = ("h5-truncated", "h5-garbage", "spec-foreign", "metadata-list", "metadata-garbage",
              "metadata-missing", "missing-episode", "metadata-episodes", "spec-not-json")


def dataset_cases() -> Iterator[Case]:
    from kalm_envs.loader import load_transitions

    for name, damage, needle in CONTENT_DAMAGE:
        def copy(w: Workspace, name: str = name, damage: Callable = damage) -> Path:
            return w.corrupt(name, damage)
        yield Case(f"loader/{name}", lambda w, c=copy: load_transitions(c(w)), (name, needle))
        yield Case(f"verify/{name}", lambda w, c=copy: verified(c(w)), (needle,))
        yield Case(f"cli-verify/{name}", lambda w, c=copy: cli("datasets", "verify", c(w)), (needle,), exit_codes=(1, 2))
        if name in STRUCTURAL:
            yield Case(f"cli-info/{name}", lambda w, c=copy: cli("datasets", "info", c(w)), (name, needle))
            yield Case(f"cli-train/{name}", lambda w, c=copy, n=name: cli(
                "train", "--algorithm", "bc", "--datasets", c(w), "--updates", "1", "--output", w.folder / f"run-{n}"),
                (needle,))
    yield Case("loader/base", lambda w: load_transitions(w.base()), accept=True)
    # The loader reads a sound index and only opens the HDF5 file (to count its episodes), so a
    # value changed inside the HDF5 file under an intact index is found by verify, not the loader.
    tampered = _set_h5("rewards", 55.0)
    yield Case("loader/h5-tampered-under-index", lambda w: load_transitions(w.corrupt("h5-under-index", tampered)),
               accept=True)
    yield Case("verify/h5-tampered-under-index", lambda w: verified(w.corrupt("h5-under-index", tampered)),
               ("rewards", "checksum", "index"))
    yield Case("verify/base", lambda w: verified(w.base()), accept=True)
    yield Case("loader/no-index", lambda w: load_transitions(w.corrupt("no-index", _drop_index)), accept=True)
    yield Case("loader/no-checksum", lambda w: load_transitions(w.corrupt("no-checksum", lambda c: _edit_metadata(
        c, lambda m: m["kalm"].pop("checksum")))), accept=True)
    for bad in (5, None, 1.5, b"kalm/x-v0", ["a", 5], [], "", LONG_ID, "kalm/fuzz/absent-v0", "../../etc"):
        needle = "at least one" if bad == [] else ("5" if bad == ["a", 5] else repr(bad)[:40])
        yield Case(f"loader/id-{bad!r:.30}", lambda w, b=bad: load_transitions(b), (needle,))
    for bad in (LONG_ID, "kalm/fuzz/absent-v0", "", "no-version"):
        yield Case(f"verify/id-{bad:.30}", lambda w, b=bad: verified(b), (bad[:30] or "''",))
        yield Case(f"cli-info/id-{bad:.30}", lambda w, b=bad: cli("datasets", "info", b), (bad[:30],))
        yield Case(f"cli-verify/id-{bad:.30}", lambda w, b=bad: cli("datasets", "verify", b), (bad[:30],))


def importer_cases() -> Iterator[Case]:
    from kalm_envs.kalm_import import read_kalm_file

    def put(key: str, value: Any, index: Any) -> Callable[[dict], None]:
        def change(data: dict) -> None:
            data[key] = np.array(data[key], dtype=object if key == "instructions" else data[key].dtype)
            data[key][index] = value
        return change

    changes: list[tuple[str, Callable[[dict], Any], str]] = [
        ("action-40", put("actions", 40, (0, 0)), "action"),
        ("action-neg", put("actions", -1, (1, 0)), "action"),
        ("action-float", lambda d: d.update(actions=d["actions"] + 0.5), "action"),
        ("instruction-empty", put("instructions", "", (0, 0)), "instruction"),
        ("instruction-blank", put("instructions", "   ", (1, 0)), "instruction"),
        ("instruction-number", put("instructions", 5, (0, 0)), "instruction"),
        ("instruction-charset", put("instructions", "push ☃", (0, 0)), "instruction"),
        ("mask-short", lambda d: d.update(masks=d["masks"][:, :10]), "mask"),
        ("mask-fewer-rows", lambda d: d.update(masks=d["masks"][:1]), "mask"),
        ("mask-gap", put("masks", 0, (0, 0)), "mask"),
        ("mask-two", put("masks", 2, (0, 0)), "mask"),
        ("reward-inf", put("rewards", INF, (0, 0, 0)), "reward"),
        ("reward-nan", put("rewards", NAN, (2, 0, 0)), "reward"),
        ("obs-nan", put("observations", NAN, (0, 0, 4)), "observation"),
        ("next-obs-inf", put("next_observations", -INF, (0, 0, 1)), "observation"),
        ("obs-shape", lambda d: d.update(observations=d["observations"][:, :, :8]), "observations"),
        ("actions-rows", lambda d: d.update(actions=d["actions"][:2]), "actions"),
        ("goal-flags", put("goals", 0, (0, 0)), "goal"),
        ("goal-direction", put("goals", 7, (1, 0, 5)), "goal"),
        ("terminal-nan", put("terminals", NAN, (0, 0, 0)), "terminals"),
        ("not-a-dict", lambda d: [1, 2, 3], "KALM"),
        ("missing-key", lambda d: {k: v for k, v in d.items() if k != "masks"}, "masks"),
    ]
    for name, change, needle in changes:
        yield Case(f"importer/{name}", lambda w, n=name, c=change: read_kalm_file(w.kalm_file(n, c)), (needle,))
    yield Case("importer/garbage", lambda w: read_kalm_file(_garbage(w.folder / "garbage.npy")), ("garbage.npy",))
    yield Case("importer/missing", lambda w: read_kalm_file(w.folder / "absent.npy"), ("absent.npy",))
    yield Case("importer/base", lambda w: read_kalm_file(w.kalm_file("base", lambda d: None)), accept=True)
    yield Case("cli-import/missing", lambda w: cli("datasets", "import-kalm", w.folder / "absent.npy", "kalm/fuzz/imp-v0"),
               ("absent.npy",))
    yield Case("cli-import/action", lambda w: cli("datasets", "import-kalm", w.kalm_file("action-40", put(
        "actions", 40, (0, 0))), "kalm/fuzz/imp-v0"), ("action",))


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not numpy at all" * 10)
    return path


# ---------------------------------------------------------------------------------------------
# The env, goals, language, encoders.

BAD_SEEDS = (-1, -100, "abc", "", 1.5, NAN, [1, 2], (3,), {}, True, b"7", 1 + 2j)
BAD_OPTIONS = (5, "goal", [], [("goal", 1)], 1.5, True, object())
BAD_GOALS = (["1"] * 10, ["1", "2", "0", "0", "0", "1"], "abc", 5, 1.5, [0] * 9, [0] * 11, [NAN] * 10,
             [0, 0, 0, 1, -1, -1, -1, -1, -1, -1], [0, 0, 1, 9, -1, -1, -1, -1, -1, -1],
             [7, -1, -1, -1, -1, -1, -1, -1, -1, -1], [0, -1, -1, -1, 0, 1, 1, -1, -1, -1],
             [0, 0.5, 1, 1, -1, -1, -1, -1, -1, -1], [1, 1, 1, 0, 0, 0, 0, -1, -1, -1],
             [1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1], {"a": 1}, [[0, 1, 2]], [None] * 10, [True] * 6)
BAD_INSTRUCTIONS = ("", "   ", 5, b"push", ["push"], "x" * 1000, "push the ball ☃", "tab\there", 1.5)
BAD_STATES = (["0.1"] * 10, "abc", [0.0] * 9, [[0.0] * 10], [NAN] * 10, [INF] + [0.0] * 9, [5.0] * 10,
              [0.0, -0.9] + [0.0] * 8, {"x": 1}, [None] * 10, [1j] * 10, [0.0] * 11)


def env_cases() -> Iterator[Case]:
    import gymnasium as gym

    from kalm_envs import ENV_IDS

    def reset(level: str = "train", **kwargs: Any) -> Any:
        env = gym.make(ENV_IDS[level])
        try:
            return env.reset(**kwargs)
        finally:
            env.close()

    for level in ENV_IDS:
        for seed in BAD_SEEDS:
            yield Case(f"env/{level}/seed={seed!r}", lambda w, l=level, s=seed: reset(l, seed=s), ("seed",))
        for seed in (np.int64(3), np.int32(4), np.uint8(5), 2**40, 0, None):
            yield Case(f"env/{level}/seed-ok={seed!r}", lambda w, l=level, s=seed: reset(l, seed=s), accept=True)
    for options in BAD_OPTIONS:
        yield Case(f"env/options={options!r:.30}", lambda w, o=options: reset(options=o), ("options",))
    for key in ("goals", "seed", "state", 1):
        yield Case(f"env/option-key={key!r}", lambda w, k=key: reset(options={k: 1}), (repr(key),))
    for level in ("train", "hard"):
        for i, goal in enumerate(BAD_GOALS):
            yield Case(f"env/{level}/goal-{i}={goal!r:.30}", lambda w, l=level, g=goal: reset(l, options={"goal": g}),
                       ("goal",))
    for text in BAD_INSTRUCTIONS:
        yield Case(f"env/instruction={text!r:.30}", lambda w, t=text: reset(options={"instruction": t}),
                   ("instruction",))
    for i, state in enumerate(BAD_STATES):
        yield Case(f"env/initial_state-{i}={state!r:.30}", lambda w, s=state: reset(options={"initial_state": s}),
                   ("initial_state",))
    from kalm_envs.goals import Goal

    yield Case("env/goal-ok-numpy", lambda w: reset(options={"goal": np.array([0, 0, 1, 1] + [-1] * 6, np.int32)}),
               accept=True)
    yield Case("env/goal-ok-kalm-floats", lambda w: reset(options={"goal": [1.0, 2.0, 0, 0, 0, 1.0]}), accept=True)
    yield Case("env/goal-ok-Goal", lambda w: reset("hard", options={"goal": Goal.line_up()}), accept=True)
    yield Case("env/state-ok-ints", lambda w: reset(options={"initial_state": [0] * 10}), accept=True)
    yield Case("env/options-ok-none-values", lambda w: reset(options={"goal": None, "instruction": None}), accept=True)

    def make(**kwargs: Any) -> Any:
        env = gym.make(ENV_IDS["train"], **kwargs)
        try:
            env.reset(seed=0)
            return env.render()
        finally:
            env.close()

    for name in ("width", "height"):
        for size in (True, False, 0, -1, 1.5, "64", 100_000, None, NAN, [64]):
            yield Case(f"make/{name}={size!r}", lambda w, n=name, s=size: make(render_mode="rgb_array", **{n: s}),
                       (name,))
        yield Case(f"make/{name}-ok-numpy", lambda w, n=name: make(render_mode="rgb_array", **{n: np.int64(16)}),
                   accept=True)
    for mode in ("human", "rgb", 5, "", "ansi", "rgb_array_list", "depth_array"):
        yield Case(f"make/render_mode={mode!r}", lambda w, m=mode: make(render_mode=m), ("render_mode",))
    for level in (5, "medium", "", None, "Train"):
        yield Case(f"make/level={level!r}", lambda w, l=level: gym.make(ENV_IDS["train"], level=l), ("level",))
    for mode in ("x", 5, None, "Dense"):
        yield Case(f"make/reward_mode={mode!r}", lambda w, m=mode: gym.make(ENV_IDS["train"], reward_mode=m),
                   ("reward_mode",))
    yield Case("make/unknown-kwarg", lambda w: gym.make(ENV_IDS["train"], colour="red"), ("colour",))

    def step(action: Any) -> Any:
        env = gym.make(ENV_IDS["train"])
        try:
            env.reset(seed=0)
            return env.step(action)
        finally:
            env.close()

    for action in (-1, 40, 1000, 1.5, "a", None, [1, 2], NAN, True, np.array([3]), 2.0):
        yield Case(f"env/step={action!r}", lambda w, a=action: step(a), ("action",))
    for action in (np.int64(3), np.array(5), 0, 39, np.uint8(7)):
        yield Case(f"env/step-ok={action!r}", lambda w, a=action: step(a), accept=True)


BAD_BALLS = (0.5, None, "1", -1, 5, 99, True, NAN, [0], 1.0)


def goal_cases() -> Iterator[Case]:
    from kalm_envs.goals import Goal, coerce_goal, sample_goal

    for bad in BAD_BALLS:
        for slot, args in (("a", (bad, 1, 1)), ("b", (0, bad, 1)), ("direction", (0, 1, bad))):
            yield Case(f"goal/relation-{slot}={bad!r}", lambda w, a=args: Goal.relation(*a), (repr(bad),))
        yield Case(f"goal/move-ball={bad!r}", lambda w, b=bad: Goal.move(b, 0), (repr(bad),))
        yield Case(f"goal/move-direction={bad!r}", lambda w, b=bad: Goal.move(0, b), (repr(bad),))
        yield Case(f"goal/gather={bad!r}", lambda w, b=bad: Goal.gather(b), (repr(bad),))
    for clauses in ([], [(0, 1)], [(0, 1, 1)] * 4, [(0, 0, 1)], [(0, 1, 1), (1, 0, 2)], "abc", 5, None,
                    [("a", 1, 1)], [(0.5, 1, 1)]):
        yield Case(f"goal/relations={clauses!r:.30}", lambda w, c=clauses: Goal.relations(c), ("clause",))
    for i, bad in enumerate(BAD_GOALS):
        yield Case(f"goal/coerce-{i}={bad!r:.30}", lambda w, b=bad: coerce_goal(b), ("goal",))
        if np.ndim(bad) == 1 and len(bad) == 10:
            yield Case(f"goal/from_array-{i}={bad!r:.30}", lambda w, b=bad: Goal.from_array(b), ("goal",))
    for bad in ([1, 2, 0, 0], [1, 1, 0, 0, 0, 0], [1, 2, 0, 0, 0, 5], [1, 2, 0, 0, 0, NAN], "122000",
                ["1", "2", "0", "0", "0", "1"], [1, 2, 0, 0, 0, 0.5]):
        yield Case(f"goal/from_kalm={bad!r:.40}", lambda w, b=bad: Goal.from_kalm(b), ("kalm goal",))
    for level in ("medium", 5, None, ""):
        yield Case(f"goal/sample-level={level!r}", lambda w, l=level: sample_goal(l, np.random.default_rng(0)),
                   ("level",))
    for args in ((np.int64(0), np.int64(1), np.int64(2)), (np.uint8(3), 1, 0), (0, 1, np.int32(3))):
        yield Case(f"goal/relation-ok={args!r}", lambda w, a=args: _equal(Goal.relation(*a), Goal.relation(
            *(int(v) for v in a))), accept=True)


def _equal(left: Any, right: Any) -> None:
    if left != right or hash(left) != hash(right):
        raise AssertionError(f"{left} != {right}")


def language_cases() -> Iterator[Case]:
    from kalm_envs.goals import Goal
    from kalm_envs.language import instruction_variants, parse_instruction, render_instruction, validate_instruction

    for bad in (None, 5, b"push the red ball", ["push"], 1.5, {"text": "x"}):
        yield Case(f"language/parse={bad!r}", lambda w, b=bad: parse_instruction(b), ("text", type(bad).__name__))
        yield Case(f"language/validate={bad!r}", lambda w, b=bad: validate_instruction(b), ("instruction",))
    for bad in ("", "  ", "\t", "x" * 600, "ünïcode", "new\nline"):
        yield Case(f"language/validate={bad!r:.20}", lambda w, b=bad: validate_instruction(b), ("instruction",))
    goal = Goal.relation(0, 1, 1)
    for bad in (None, 5, "goal", [0, 0, 1, 1] + [-1] * 6):
        yield Case(f"language/render-goal={bad!r:.30}", lambda w, b=bad: render_instruction(
            b, "train", np.random.default_rng(0)), ("goal",))
    for bad in ("medium", None, 5):
        yield Case(f"language/render-level={bad!r}", lambda w, b=bad: render_instruction(
            goal, b, np.random.default_rng(0)), ("level",))
        yield Case(f"language/variants-level={bad!r}", lambda w, b=bad: instruction_variants(goal, b), ("level",))
    for bad in (None, 5, "rng", np.random.RandomState(0)):
        yield Case(f"language/render-rng={bad!r:.30}", lambda w, b=bad: render_instruction(goal, "train", b), ("rng",))
    yield Case("language/render-easy-goal-on-train", lambda w: render_instruction(
        Goal.move(0, 1), "train", np.random.default_rng(0)), ("train",))
    for text in ("", "hello", "Push the red ball to the left of the red ball."):
        yield Case(f"language/parse-none={text!r:.20}", lambda w, t=text: _is_none(parse_instruction(t)), accept=True)


def _is_none(value: Any) -> None:
    if value is not None:
        raise AssertionError(f"expected None, got {value!r}")


def encoder_cases() -> Iterator[Case]:
    from kalm_envs.text_encoders import encoder_from_config, make_encoder

    for name in ("x", 5, None, "", "Hashed"):
        yield Case(f"encoder/name={name!r}", lambda w, n=name: make_encoder(n), (repr(name),))
    for encoder in ("hashed", "ordered"):
        for key, values in (("dim", (0, 1, -5, 1.5, "64", True, NAN, None)),
                            ("seed", ("s", 1.5, None, True, NAN)),
                            ("char_weight", (NAN, INF, -1.0, "a", None)),
                            ("cache_size", (-1, 1.5, "10", True)),
                            ("word_ngram_range", ((0, 1), (2, 1), "ab", 5, (1.5, 2))),
                            ("char_ngram_range", ((0, 3), (5, 3), "ab"))):
            for value in values:
                yield Case(f"encoder/{encoder}-{key}={value!r}", lambda w, e=encoder, k=key, v=value: make_encoder(
                    e, **{k: v}), (key,))
        yield Case(f"encoder/{encoder}-unknown-kwarg", lambda w, e=encoder: make_encoder(e, width=3), ("width",))
        for texts in ("a str", None, 5, [1], [None], ["ok", b"bytes"], [["nested"]]):
            yield Case(f"encoder/{encoder}-encode={texts!r}", lambda w, e=encoder, t=texts: make_encoder(e).encode(t),
                       ("encode",))
        yield Case(f"encoder/{encoder}-ok-numpy-dim", lambda w, e=encoder: make_encoder(e, dim=np.int64(32)),
                   accept=True)
        yield Case(f"encoder/{encoder}-ok-int-weight", lambda w, e=encoder: make_encoder(e, char_weight=1),
                   accept=True)
    for key, value in (("pair_window", 0), ("pair_window", 1.5), ("pair_weight", NAN), ("pair_weight", 0.0),
                       ("pair_weight", "a")):
        yield Case(f"encoder/ordered-{key}={value!r}", lambda w, k=key, v=value: make_encoder(
            "ordered", **{k: v}), (key,))
    for cfg in (None, 5, {"dim": 3}, {"name": "nope"}, "hashed"):
        yield Case(f"encoder/from_config={cfg!r}", lambda w, c=cfg: encoder_from_config(c), ("config" if not (
            isinstance(cfg, dict) and "name" in cfg) else "nope",))


# ---------------------------------------------------------------------------------------------
# Configs, policies.

TRAIN_BAD: dict[str, tuple[Any, ...]] = {
    "algorithm": (5, "x", None, "BC"),
    "datasets": ("abc", [], [5], None, 5, [None]),
    "output": (5, None, ""),
    "imagined": ("abc", [5], None),
    "real_fraction": (NAN, INF, 0.0, 1.0, "a", None, True),
    "imagined_episodes": ("some", 5, None),
    "encoder": ("x", 5, None),
    "params": ("lr=1", [1], None),
    "updates": (0, -5, 1.5, "10", NAN, True, None),
    "batch_size": (0, 2.5, "256", None),
    "reward_scale": (NAN, INF, -INF, 0, -1.0, "a", None, True),
    "seed": ("a", 1.5, None, True, NAN, -1),
    "checkpoint_every": (0, 1.5, "5"),
    "log_every": (0, 0.5, "1"),
    "temperature": (NAN, INF, -1.0, "a", True),
    "validation_fraction": (NAN, -0.1, 1.0, "0.1", INF),
    "select": ("best", 5, None),
    "device": ("gpu", 5, None, "cuda:x"),
}
TRAIN_OK: dict[str, tuple[Any, ...]] = {
    "seed": (np.int64(3), 0), "updates": (np.int32(5),), "batch_size": (np.int64(32),),
    "reward_scale": (1, np.float32(0.5)), "temperature": (0, None, 2), "real_fraction": (np.float64(0.3),),
    "datasets": (("a", "b"), [Path("a")]),
}
LEARNER_BAD: dict[str, dict[str, tuple[Any, ...]]] = {
    "bc": {"lr": (NAN, INF, -1.0, 0, "a", None), "hidden": ((), (0,), (-4,), "ab", (1.5,), 5, (NAN,)),
           "precision": ("fp16", 5)},
    "cql": {"alpha": (NAN, INF, -1.0, "a", None), "gamma": (NAN, 1.0, -0.1, "a"), "tau": (NAN, 0.0, 1.5)},
    "iql": {"expectile": (NAN, 0.0, 1.0, "a"), "beta": (NAN, INF, -1.0)},
    "bcq": {"threshold": (NAN, -0.1, 1.1), "q_temperature": (NAN, INF, 0.0, -1.0)},
}
GROUND_BAD: dict[str, tuple[Any, ...]] = {
    "steps": (1.5, "10", 0, -1, NAN, True, None),
    "seed": ("s", 1.5, None, True),
    "warmup_steps": (NAN, -1, 1.5, "3"),
    "lr": (NAN, INF, 0, -1e-4, "a"),
    "batch_size": (0, 1.5, "8"),
    "lora_rank": (0, 2.5, "16"),
    "lora_alpha": (0, NAN, "a"),
    "head_hidden": (0, 1.5),
    "eval_every": (0, 1.5),
    "checkpoint_every": (0, "1"),
    "weight_decay": (NAN, -1.0, "a"),
    "min_lr_ratio": (NAN, -0.1, 1.5),
    "grad_clip": (NAN, -1.0, "a"),
    "val_fraction": (NAN, 1.0, -0.5),
    "max_episodes": (0, 1.5, "5"),
    "num_layers": (0, 1.5, "a"),
    "pack_length": (0, 1.5, "512"),
    "finetune": ("half", 5),
    "schedule": ("linear", None),
    "state_head": ("wide", 5),
    "precision": ("fp16", 5),
    "task_weights": ({"rollout": NAN}, {"rollout": -1.0}, {"nope": 1.0}, "abc"),
    "datasets": ([], [5], 5, None),
    "base_model": (5, None),
}
GROUND_OK: dict[str, tuple[Any, ...]] = {
    "steps": (np.int64(10),), "seed": (np.int32(1),), "lr": (1,), "warmup_steps": (np.int64(2),),
    "datasets": ("one-id", Path("folder")),
}


def config_cases() -> Iterator[Case]:
    def train(**changes: Any) -> Any:
        from kalm_rl.trainer import TrainConfig

        values = {"algorithm": "bc", "datasets": ["d"], "output": "out", **changes}
        return TrainConfig(**values).validate()

    for key, values in TRAIN_BAD.items():
        for value in values:
            extra = {"imagined": ["i"]} if key == "real_fraction" else {}
            yield Case(f"train/{key}={value!r}", lambda w, k=key, v=value, e=extra: train(**{k: v}, **e),
                       (key.replace("_", " ") if key in ("real_fraction", "reward_scale", "validation_fraction",
                                                         "imagined_episodes") else key,))
        for value in TRAIN_OK.get(key, ()):
            extra = {"imagined": ["i"]} if key == "real_fraction" else {}
            yield Case(f"train/{key}-ok={value!r}", lambda w, k=key, v=value, e=extra: train(**{k: v}, **e),
                       accept=True)
    for algorithm, settings in LEARNER_BAD.items():
        for key, values in settings.items():
            for value in values:
                yield Case(f"train/params-{algorithm}-{key}={value!r}", lambda w, a=algorithm, k=key, v=value: train(
                    algorithm=a, params={k: v}), (_learner_word(key),))
    yield Case("train/params-unknown", lambda w: train(params={"nope": 1}), ("nope",))
    for algorithm, key, value in (("cql", "alpha", 1), ("bc", "lr", 1), ("bc", "hidden", [np.int64(8)]),
                                  ("iql", "beta", np.float32(3.0))):
        yield Case(f"train/params-{algorithm}-{key}-ok={value!r}", lambda w, a=algorithm, k=key, v=value: train(
            algorithm=a, params={k: v}), accept=True)

    def ground(**changes: Any) -> Any:
        from kalm_gen.train import GroundingTrainConfig

        values = {"datasets": ["d"], "output": "out", **changes}
        return GroundingTrainConfig(**values).validate()

    for key, values in GROUND_BAD.items():
        for value in values:
            needle = "nope" if value == {"nope": 1.0} else ("task_weights" if key == "task_weights" else key)
            yield Case(f"ground/{key}={value!r}", lambda w, k=key, v=value: ground(**{k: v}), (needle,))
        for value in GROUND_OK.get(key, ()):
            yield Case(f"ground/{key}-ok={value!r}", lambda w, k=key, v=value: ground(**{k: v}), accept=True)


def _learner_word(key: str) -> str:
    return {"lr": "learning rate", "hidden": "hidden"}.get(key, key)


class _Raises:
    label = "raises"

    def act_batch(self, observations: Any) -> Any:
        raise ZeroDivisionError("the policy divided by zero")


class _Returns:
    def __init__(self, value: Any) -> None:
        self.value, self.label = value, f"returns {value!r}"

    def act_batch(self, observations: Any) -> Any:
        value = self.value(len(observations)) if callable(self.value) else self.value
        return value


def policy_cases() -> Iterator[Case]:
    from kalm_rl.evaluation import RandomPolicy, evaluate_policy

    for policy in (None, 5, "random", [1, 2], object()):
        yield Case(f"policy/evaluate-policy={policy!r:.20}", lambda w, p=policy: evaluate_policy(p, "train", 1),
                   ("policy",))
    yield Case("policy/raises", lambda w: evaluate_policy(_Raises(), "easy", 1), ("raises", "divided by zero"))
    yield Case("policy/callable-raises", lambda w: evaluate_policy(lambda o: [][1], "easy", 1), ("IndexError",))
    for value in (-1, 40, 1.5, "a", None, NAN):
        yield Case(f"policy/returns={value!r}", lambda w, v=value: evaluate_policy(
            _Returns(lambda n, v=v: [v] * n), "easy", 1), ("action",))
    yield Case("policy/returns-shape", lambda w: evaluate_policy(_Returns(np.zeros((2, 2), int)), "easy", 1),
               ("shape",))
    for key, values in (("level", ("medium", 5, None)), ("episodes", (0, -1, 1.5, "a", NAN, True, None)),
                        ("seed", ("a", 1.5, None, NAN)), ("batch_envs", (0, 1.5, "a", None))):
        for value in values:
            yield Case(f"policy/evaluate-{key}={value!r}", lambda w, k=key, v=value: evaluate_policy(
                RandomPolicy(), **{"level": "easy", "episodes": 1, k: v}), (key,))
    yield Case("policy/evaluate-ok-numpy", lambda w: evaluate_policy(RandomPolicy(), "easy", np.int64(1),
                                                                     seed=np.int64(2), batch_envs=np.int32(1)),
               accept=True)
    yield Case("policy/returns-ok-numpy", lambda w: evaluate_policy(_Returns(lambda n: np.full(n, 3, np.uint8)),
                                                                    "easy", 1), accept=True)

    for value in (INF, NAN, -1.0, "a", -INF):
        yield Case(f"policy/saved-temperature={value!r}", lambda w, v=value: _load_policy(
            _policy_saved_with(w, v)), ("temperature",))
    for value in (INF, NAN, -0.5, "hot", True):
        yield Case(f"policy/load-temperature={value!r}", lambda w, v=value: _load_policy(w.policy(), v),
                   ("temperature",))
    yield Case("policy/load-ok-int-temperature", lambda w: _load_policy(w.policy(), 1), accept=True)
    yield Case("policy/load-missing", lambda w: _load_policy(w.folder / "nope"), ("nope",))
    yield Case("policy/load-garbage", lambda w: _load_policy(_garbage(w.folder / "garbage.pt")), ("garbage.pt",))


def _load_policy(path: Path, temperature: Any = None) -> Any:
    from kalm_rl.policy import load_policy

    return load_policy(path, temperature)


def _policy_saved_with(workspace: Workspace, temperature: Any) -> Path:
    """A copy of the workspace's policy file whose saved acting temperature is ``temperature``."""
    import torch

    payload = torch.load(workspace.policy(), weights_only=True)
    payload["temperature"] = temperature
    path = workspace.folder / f"policy-temperature-{temperature}.pt"
    torch.save(payload, path)
    return path


# ---------------------------------------------------------------------------------------------
# The command line (in this process: ``kalm.cli.main``).

CLI_BAD: list[tuple[tuple[str, ...], str]] = [
    (("oracle", "--episodes", "0"), "--episodes 0"),
    (("oracle", "--episodes", "-3"), "-3"),
    (("oracle", "--episodes", "abc"), "abc"),
    (("oracle", "--level", "medium"), "medium"),
    (("oracle", "--seed", "x"), "x"),
    (("oracle", "--seed", "-1"), "seed"),
    (("oracle", "--workers", "0"), "workers"),
    (("oracle", "--epsilon", "nan"), "epsilon"),
    (("oracle", "--epsilon", "2"), "epsilon"),
    (("datasets", "build", "kalm/clevr-robot/real-v9"), "real-v9"),
    (("datasets", "build", "kalm/clevr-robot/real-v0", "--episodes", "0"), "episodes"),
    (("datasets", "build", "kalm/clevr-robot/real-v0", "--workers", "0"), "workers"),
    (("datasets", "info", "kalm/fuzz/absent-v0"), "absent-v0"),
    (("datasets", "nope"), "nope"),
    (("train", "--algorithm", "x", "--datasets", "d", "--output", "o"), "'x'"),
    (("train", "--algorithm", "bc", "--datasets", "kalm/fuzz/absent-v0", "--output", "o"), "absent-v0"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--updates", "0"), "updates"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--updates", "1.5"), "1.5"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--seed", "a"), "'a'"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--temperature", "nan"), "temperature"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--temperature", "inf"), "temperature"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--reward-scale", "nan"), "reward scale"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--param", "lr=nan"), "learning rate"),
    (("train", "--algorithm", "cql", "--datasets", "d", "--output", "o", "--param", "alpha=nan"), "alpha"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--param", "lr"), "lr"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--param", "hidden=[0]"), "hidden"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--ratio", "a:b"), "a:b"),
    (("train", "--algorithm", "bc", "--datasets", "d", "--output", "o", "--threads", "0"), "threads"),
    (("evaluate", "--episodes", "0", "--baseline", "random"), "episodes"),
    (("evaluate", "--levels", "medium"), "medium"),
    (("evaluate", "--policy", "p=/nonexistent/run"), "/nonexistent/run"),
    (("evaluate", "--baseline", "random", "--workers", "0"), "workers"),
    (("evaluate", "--baseline", "random", "--temperature", "inf", "--episodes", "1"), "temperature"),
    (("separation", "--encoder", "x"), "'x'"),
    (("separation", "--hard-goals", "0"), "hard"),
    (("separation", "--max-wordings", "-1"), "wordings"),
    (("separation", "--threshold", "nan"), "threshold"),
    (("goal-probe", "--steps", "0"), "steps"),
    (("goal-probe", "--eval-texts", "-3"), "eval_texts"),
    (("goal-probe", "--num-layers", "-1"), "--num-layers"),
    (("goal-probe", "--lora-rank", "0"), "--lora-rank"),
    (("goal-probe", "--encoder", "x"), "'x'"),
    (("goal-probe", "--model", "/nonexistent/model"), "/nonexistent/model"),
    (("run", "--preset", "nope"), "nope"),
    (("run", "--set", "train.updates=abc"), "train.updates"),
    (("run", "--set", "train.updates=1.5"), "train.updates"),
    (("run", "--set", "nope.x=1"), "nope"),
    (("run", "--set", "evaluate.episodes=0"), "evaluate.episodes"),
    (("run", "--set", "evaluate.episodes=\"5\""), "evaluate.episodes"),
    (("run", "--set", "train.seeds=\"ab\""), "train.seeds"),
    (("run", "--threads", "0"), "threads"),
    (("imagine", "--model", "/nonexistent/model", "--level", "easy", "--id", "kalm/fuzz/im-v0"), "/nonexistent/model"),
    (("imagine", "--model", "kalm-smollm2-v0", "--level", "medium"), "medium"),
    (("imagine", "--model", "kalm-smollm2-v0", "--level", "easy", "--episodes", "0"), "episodes"),
    (("ground", "--datasets", "kalm/fuzz/absent-v0", "--output", "g"), "absent-v0"),
    (("ground", "--datasets", "d", "--output", "g", "--steps", "0"), "steps"),
    (("ground", "--datasets", "d", "--output", "g", "--lr", "nan"), "lr"),
    (("publish", "/nonexistent/model", "--name", "x"), "/nonexistent/model"),
    (("nope",), "nope"),
]


def cli_cases() -> Iterator[Case]:
    for argv, needle in CLI_BAD:
        yield Case(f"cli/{' '.join(argv)}", lambda w, a=argv: cli(*a), (needle,))
    yield Case("cli/datasets-list-ok", lambda w: cli("datasets", "list"), accept=True)


def all_cases() -> list[Case]:
    """Every case, in a fixed order; names are unique."""
    cases = [*env_cases(), *goal_cases(), *language_cases(), *encoder_cases(), *dataset_cases(),
             *importer_cases(), *config_cases(), *policy_cases(), *cli_cases()]
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AssertionError(f"duplicate case names {duplicates}")
    return cases

