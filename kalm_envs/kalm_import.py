"""Importing the CLEVR-Robot data released with KALM (``numpy.save``'d dicts) as Minari datasets.

KALM's format (see ``shared/external/kalm/README.md``): padded arrays of 50 steps with a validity
``masks`` array, ``observations`` and ``next_observations`` of 10 ball coordinates, int ``actions``,
``rewards`` ``(n, 50, 1)``, ``terminals`` ``(n, 50, 1)``, 6-number ``goals`` per step and several
wordings per trajectory in ``instructions``. Each imported episode keeps the first wording (the
others go to the metadata count only); ``infos["is_success"]`` is recomputed with our predicates,
and an episode of 50 steps (the time limit of the train env they are imported into) that does not
terminate is truncated. A trajectory that our env would not record so (a terminal where the goal
is not met or a success without one, a short trajectory that does not terminate, rewards other
than the env's dense reward) is refused, naming it: ``kalm datasets verify`` would refuse the
dataset.

**The file is a pickle.** ``numpy.save`` stores a dict as a pickled object array, and unpickling
can run any code the file's author chose. :func:`read_kalm_file` therefore never calls
``numpy.load(allow_pickle=True)``: it reads the ``.npy`` header itself, loads a plain array with
``allow_pickle=False``, and unpickles an object array with :class:`_ArrayUnpickler`, which builds
numpy arrays, numpy scalars and plain Python values only and refuses every other global (e.g.
``os.system``) with a :class:`~kalm_envs.minari_io.DatasetError` naming the file and the global.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kalm_envs.collector import REF_EPISODES, REF_SEED_OFFSET, ref_episodes_option, reference_scores
from kalm_envs.dataset_checks import check_packed
from kalm_envs.dataset_paths import check_dataset_id, dataset_build
from kalm_envs.dataset_specs import package_version
from kalm_envs.goals import Goal
from kalm_envs.minari_io import DatasetError, write_dataset
from kalm_envs.predicates import is_success
from kalm_envs.registration import ENV_IDS, EPISODE_STEPS
from kalm_envs.rollout import Episode, pack_episodes
from kalm_envs.validation import check_int
from kalm_envs.verify import episode_problems

_REQUIRED_KEYS = ("observations", "next_observations", "actions", "rewards", "terminals", "masks", "goals", "instructions")
#: The globals that pickled numpy arrays and scalars refer to, as (module, name): all that a
#: ``numpy.save``'d dict of arrays needs. ``numpy._core`` is numpy 2's name for ``numpy.core``;
#: ``_codecs.encode`` rebuilds bytes in pickles of protocol 0 to 2.
_ARRAY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
#: What reading a damaged or foreign file can raise (a refused global is a DatasetError, let through).
_READ_ERRORS = (OSError, ValueError, TypeError, AttributeError, EOFError, IndexError, KeyError, OverflowError,
                MemoryError, pickle.UnpicklingError)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain Python values (str, numbers, lists, dicts,
    tuples) only: any other global of the pickle is a ``DatasetError`` naming ``path`` and it,
    raised before anything of it is called."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise DatasetError(f"{self.path} is refused: its pickle calls {module}.{name}, which a KALM file of "
                               f"numpy arrays never does (unpickling it could run any code)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 renamed numpy.core
            return super().find_class(module, name)


def _load_npy(path: Path) -> Any:
    """The array saved in the ``.npy`` file ``path`` (format 1.0 or 2.0), read without running code
    from it: a plain array with ``allow_pickle=False``, an object array (KALM's files: a dict
    pickled in a 0-d array) with :class:`_ArrayUnpickler`."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version not in _NPY_HEADERS:
            raise ValueError(f"npy format version {version[0]}.{version[1]} is not one of 1.0, 2.0")
        _, _, dtype = _NPY_HEADERS[version](handle)
        if not dtype.hasobject:
            handle.seek(0)
            return np.lib.format.read_array(handle, allow_pickle=False)
        return _ArrayUnpickler(handle, path).load()


def read_kalm_file(path: Path) -> list[Episode]:
    """KALM trajectories of ``path`` as episodes, read without running code from the file
    (:func:`_load_npy`); ``DatasetError`` names the file and what is malformed or refused: a global
    of its pickle other than numpy's, the padded arrays (:func:`_check_padded`), the episodes with
    the dataset reader's checks (:func:`kalm_envs.dataset_checks.check_packed`, on the train level),
    then with ``verify``'s (:func:`kalm_envs.verify.episode_problems`, naming the trajectory)."""
    try:
        loaded = _load_npy(path)
        data = loaded.item() if isinstance(loaded, np.ndarray) else loaded
    except DatasetError:
        raise
    except _READ_ERRORS as error:
        raise DatasetError(f"{path} is not a KALM numpy file: {error}") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a KALM numpy file: it holds a {type(data).__name__}, not a dict")
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise DatasetError(f"{path} lacks KALM keys {missing}")
    data = {key: np.asarray(data[key]) for key in _REQUIRED_KEYS}
    lengths = _check_padded(path, data)
    episodes = []
    for i, steps in enumerate(lengths.tolist()):
        try:
            goal = Goal.from_kalm(data["goals"][i][0]).to_array()
        except ValueError as error:
            raise DatasetError(f"{path}: trajectory {i} has a bad goal: {error}") from error
        states = np.concatenate([data["observations"][i][:steps], data["next_observations"][i][steps - 1 : steps]])
        states = states.astype(np.float32)
        terminations = data["terminals"][i][:steps].reshape(steps).astype(bool)
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = not terminations[-1] and steps == EPISODE_STEPS["train"]
        goals = np.repeat(goal[None], steps + 1, axis=0)
        episodes.append(
            Episode(
                seed=-1,
                instruction=str(np.ravel(data["instructions"][i])[0]),
                goal=goal,
                observations=states,
                actions=data["actions"][i][:steps].reshape(steps).astype(np.int64),
                rewards=data["rewards"][i][:steps].reshape(steps).astype(np.float64),
                terminations=terminations,
                truncations=truncations,
                successes=is_success(states, goals, np.repeat(states[:1], steps + 1, axis=0)),
            )
        )
    check_packed(pack_episodes(episodes), "train", {}, path)
    for i, episode in enumerate(episodes):
        problems = [problem for _, problem in episode_problems(episode)]
        if problems:
            raise DatasetError(f"{path}: trajectory {i} is not what our env records, so `kalm datasets verify` "
                               f"would refuse the dataset: {'; '.join(problems)}")
    return episodes


def _check_padded(path: Path, data: dict[str, np.ndarray]) -> np.ndarray:
    """``(n,)`` trajectory lengths, after checking KALM's padded arrays: ``masks`` ``(n, W)`` of
    1..1 0..0 with at least one step; every other array ``n`` trajectories of ``W`` steps (states
    of 10 numbers, goals of 6, rewards and terminals one number a step, integer actions,
    terminals 0 or 1); ``next_observations[t]`` equal to ``observations[t + 1]`` within a
    trajectory; an instruction (a str) per trajectory."""
    masks = data["masks"]
    if masks.ndim != 2 or masks.dtype.kind not in "iufb":
        raise DatasetError(f"{path}: masks have shape {masks.shape} and dtype {masks.dtype}, expected (n, 50) numbers")
    n, width = masks.shape
    lengths = masks.sum(axis=1).astype(np.int64)
    for i, mask in enumerate(masks):
        if not np.isin(mask, (0, 1)).all() or lengths[i] < 1 or not mask[: lengths[i]].all():
            raise DatasetError(f"{path}: trajectory {i} has a mask that is not 1..1 0..0: {mask.tolist()}")
    shapes = {"observations": (n, width, 10), "next_observations": (n, width, 10), "goals": (n, width, 6),
              "actions": (n, width), "rewards": (n, width), "terminals": (n, width)}
    for key, shape in shapes.items():
        array = data[key]
        if key in ("actions", "rewards", "terminals") and array.ndim == 3 and array.shape[2] == 1:
            array = data[key] = array[:, :, 0]
        if array.shape != shape or array.dtype.kind not in "iufb":
            raise DatasetError(f"{path}: {key} have shape {array.shape} and dtype {array.dtype}, expected {shape} "
                               f"numbers to match the masks")
    valid = masks.astype(bool)
    actions = data["actions"][valid]
    if not np.array_equal(actions, np.round(actions)):
        raise DatasetError(f"{path}: actions must be integers, got {actions[actions != np.round(actions)][0]!r}")
    following = valid[:, 1:]  # steps whose next observation is also the next step's observation
    if not np.array_equal(data["next_observations"][:, :-1][following], data["observations"][:, 1:][following],
                          equal_nan=False):
        raise DatasetError(f"{path}: next_observations differ from the following step's observations (or are not "
                           f"finite)")
    terminals = data["terminals"][valid]
    if not np.isin(terminals, (0, 1)).all():
        raise DatasetError(f"{path}: terminals must be 0 or 1, got {terminals[~np.isin(terminals, (0, 1))][0]!r}")
    if len(data["instructions"]) != n:
        raise DatasetError(f"{path}: instructions hold {len(data['instructions'])} trajectories, masks {n}")
    for i, wordings in enumerate(data["instructions"]):
        first = np.ravel(wordings)[0] if np.size(wordings) else None
        if not isinstance(first, str):
            raise DatasetError(f"{path}: trajectory {i} has instruction {first!r}, not a str")
    return lengths


def import_kalm(path: Path, dataset_id: str, workers: int = 1, ref_episodes: int = REF_EPISODES) -> Path:
    """Write KALM's file at ``path`` as the Minari dataset ``dataset_id``; return its folder.

    Reference scores come from ``ref_episodes`` random and oracle episodes on train goals. The
    import holds the id's build lock (:mod:`kalm_envs.dataset_paths`) from start to end.

    Raises:
        ValueError: a bad id (:func:`~kalm_envs.dataset_paths.check_dataset_id`), or a file that is
            not KALM's or holds a trajectory that would fail ``verify`` (``DatasetError``).
        FileExistsError: the dataset exists; ``DatasetBusyError`` (an ``OSError``): another
            process is building it; ``OSError``: a write failed (the message names the file).
    """
    check_dataset_id(dataset_id)
    check_int(ref_episodes, "ref_episodes", low=1)
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no KALM file at {path}")
    with dataset_build(dataset_id) as work:
        episodes = read_kalm_file(path)
        provenance = {
            "source": "KALM release (github.com/CharlieBrown-v1/KALM, data/)",
            "file": path.name,
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "wordings_kept": "first of each trajectory's instructions",
            "build_command": f"kalm datasets import-kalm {path.name} {dataset_id}" + ref_episodes_option(ref_episodes),
            "kalm_gym_version": package_version(),
        }
        ref_scores = reference_scores("train", REF_SEED_OFFSET, workers, work, ref_episodes)
        return write_dataset(
            dataset_id, episodes, ENV_IDS["train"],
            f"CLEVR-Robot trajectories released with KALM ({path.name}), imported into our spaces.",
            provenance, ref_scores, algorithm_name="KALM release",
        )
