"""The offline learners, by name: ``bc``, ``cql``, ``iql``, ``bcq``."""

from __future__ import annotations

from typing import Any

from kalm_rl.learners.base import Learner, LearnerConfig, QLearnerConfig
from kalm_rl.learners.bc import BC
from kalm_rl.learners.bcq import BCQ
from kalm_rl.learners.cql import CQL
from kalm_rl.learners.iql import IQL

LEARNERS: dict[str, type[Learner]] = {cls.name: cls for cls in (BC, CQL, IQL, BCQ)}

__all__ = ["LEARNERS", "Learner", "LearnerConfig", "QLearnerConfig", "make_learner"]


def learner_class(algorithm: str) -> type[Learner]:
    """The learner class named ``algorithm``; an unknown name is an error listing the known ones."""
    try:
        return LEARNERS[algorithm]
    except KeyError:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from {sorted(LEARNERS)}") from None


def make_learner(algorithm: str, input_dim: int, params: dict[str, Any] | None = None) -> Learner:
    """A fresh learner: ``params`` override the defaults of its ``Config`` (e.g. ``{"alpha": 0.5}``)."""
    cls = learner_class(algorithm)
    return cls(input_dim, cls.Config.from_params(dict(params or {})))
