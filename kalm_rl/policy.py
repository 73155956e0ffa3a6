"""A trained learner as a policy over observation dicts, saved with the encoder it was trained on.

``policy.pt`` holds everything needed to act: the algorithm and its settings, the input width, the
instruction encoder's ``config()`` and the learner's weights. :func:`load_policy` rebuilds it as a
:class:`LearnerPolicy` (a :class:`~kalm_rl.policy_adapters.FlatPolicy`) that
:mod:`kalm_rl.evaluation` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kalm_envs.atomic import atomic_path
from kalm_envs.text_encoders import TextEncoder
from kalm_envs.torch_files import read_torch_file
from kalm_envs.validation import check_float
from kalm_rl.data import policy_inputs
from kalm_rl.learners import Learner, make_learner
from kalm_rl.policy_adapters import FlatPolicy

POLICY_FILE = "policy.pt"
FORMAT = 1


def save_policy(path: str | Path, learner: Learner, encoder: TextEncoder, label: str | None = None,
                temperature: float | None = None) -> Path:
    """Write ``learner``, ``encoder.config()`` and the acting temperature (default: the learner's)
    to ``path`` (a run folder or a ``.pt`` file)."""
    path = Path(path)
    file = path / POLICY_FILE if path.suffix != ".pt" else path
    payload = {
        "format": FORMAT,
        "algorithm": learner.name,
        "label": label or learner.name,
        "params": learner.config.to_dict(),
        "input_dim": learner.input_dim,
        "temperature": learner.temperature if temperature is None else float(temperature),
        "encoder": dict(encoder.config()),
        "state_dict": learner.state_dict(),
    }
    with atomic_path(file) as tmp:
        torch.save(payload, tmp)
    return file


class LearnerPolicy(FlatPolicy):
    """Acts with a learner: a draw from ``softmax(action_scores / temperature)`` per observation
    (the argmax at temperature 0).

    In this env a deterministic policy that pushes a ball against a wall sees the same
    observation again and repeats itself until the time limit; sampling lets it out, which is
    why the learners act stochastically by default. Draws come from one seeded generator that
    :func:`kalm_rl.evaluation.evaluate_policy` reseeds per level (``reseed``), so an evaluation
    with the same seed and batch size repeats exactly.

    Policies act on the CPU: a learner trained on a GPU is moved there (in place).
    """

    def __init__(self, learner: Learner, encoder: Any, label: str | None = None,
                 temperature: float | None = None) -> None:
        super().__init__(self._predict, encoder, label or learner.name)
        self.learner = learner.eval().cpu()
        self.temperature = check_float(learner.temperature if temperature is None else temperature,
                                       "temperature", 0.0)
        self.generator = torch.Generator().manual_seed(0)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def _predict(self, flat: np.ndarray) -> np.ndarray:
        """``(B, 10 + D)`` float32 flat observations -> ``(B,)`` int64 actions."""
        inputs = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        return self.learner.act(policy_inputs(inputs[:, :10], inputs[:, 10:]), self.temperature,
                                self.generator).numpy()


def load_policy(path: str | Path, temperature: float | None = None) -> LearnerPolicy:
    """The policy saved at ``path`` (a run folder of ``kalm train`` or its ``policy.pt``), acting
    at ``temperature`` (default: the saved one; 0 for greedy).

    Raises:
        FileNotFoundError: no saved policy there (for a run folder: training has not finished).
        ValueError: the file is not a policy of this package, or a saved setting (the acting
            temperature: a finite number >= 0) is bad; the message names the file or the value.
    """
    path = Path(path)
    file = path / POLICY_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no trained policy at {path} (expected {file}; has training finished?)")
    payload = read_torch_file(file, "kalm_rl policy file")
    keys = ("algorithm", "input_dim", "params", "state_dict", "temperature", "encoder", "label")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or any(k not in payload for k in keys):
        raise ValueError(f"{file} is not a kalm_rl policy file (format {FORMAT})")
    saved = payload["temperature"] if temperature is None else temperature
    try:
        learner = make_learner(payload["algorithm"], payload["input_dim"], payload["params"])
        learner.load_state_dict(payload["state_dict"])
        return LearnerPolicy(learner, payload["encoder"], payload["label"], saved)
    except (ValueError, TypeError, KeyError, RuntimeError) as error:  # saved settings or weights that do not fit
        raise ValueError(f"{file} holds a policy that cannot be rebuilt: {' '.join(str(error).split())[:300]}") from error
