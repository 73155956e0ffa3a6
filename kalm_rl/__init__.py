"""Offline learners and per-level evaluation (not built yet: issue 5)."""
