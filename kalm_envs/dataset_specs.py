"""Published dataset ids and how each is built: the TOML specs in ``kalm_envs/datasets/``.

A spec names the dataset id, the goal level, the episode count, the seed of episode 0 (episode
``i`` is reset with ``seed + i``), the oracle's random-push probability, and a one-line
description. ``card.md`` beside the specs is the dataset card, filled in from a spec.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import metadata, resources

from kalm_envs.goals import LEVELS
from kalm_envs.registration import ENV_IDS

NAMESPACE = "kalm/clevr-robot"


@dataclass(frozen=True)
class DatasetSpec:
    """How one published dataset is built."""

    id: str
    level: str
    episodes: int
    seed: int
    epsilon: float
    description: str

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"dataset {self.id}: level {self.level!r} is not one of {LEVELS}")
        if self.episodes < 1:
            raise ValueError(f"dataset {self.id}: episodes {self.episodes} must be at least 1")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"dataset {self.id}: epsilon {self.epsilon} must lie in [0, 1]")

    @property
    def env_id(self) -> str:
        return ENV_IDS[self.level]

    def card(self) -> str:
        """The markdown dataset card of this spec."""
        template = resources.files("kalm_envs").joinpath("datasets/card.md").read_text()
        return template.format(**asdict(self), env_id=self.env_id, version=package_version())


def package_version() -> str:
    """Installed version of the ``kalm-gym`` distribution, or ``unknown`` from a bare checkout."""
    try:
        return metadata.version("kalm-gym")
    except metadata.PackageNotFoundError:
        return "unknown"


def list_specs() -> dict[str, DatasetSpec]:
    """Every packaged spec, by dataset id."""
    folder = resources.files("kalm_envs").joinpath("datasets")
    specs = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            spec = DatasetSpec(**tomllib.loads(entry.read_text()))
            specs[spec.id] = spec
    return specs


def get_spec(dataset_id: str) -> DatasetSpec:
    """The spec of ``dataset_id``; ``ValueError`` listing the known ids otherwise."""
    specs = list_specs()
    if dataset_id not in specs:
        raise ValueError(f"no dataset spec for {dataset_id!r}; known ids: {sorted(specs)}")
    return specs[dataset_id]
