"""``kalm run``: the whole KALM pipeline from one command.

Real and oracle data -> grounding the LM -> imagined rollouts and their quality -> offline
learners on real, real + imagined and real + oracle data -> evaluation on every level -> report.
Each stage is cached by a hash of its settings and its inputs (:mod:`kalm.pipeline.cache`);
presets are in :mod:`kalm.pipeline.presets`.
"""

from kalm.pipeline.runner import resolve_settings, run_pipeline

__all__ = ["resolve_settings", "run_pipeline"]
