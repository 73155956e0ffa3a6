"""Grounding a language model in CLEVR-Robot and imagining rollouts (not built yet: issue 4)."""
