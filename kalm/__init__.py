"""KALM-Gym command line and end-to-end pipeline (``kalm`` console script)."""
