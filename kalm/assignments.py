"""``NAME=VALUE`` command-line settings, shared by ``kalm train --param`` and ``kalm run --set``."""

from __future__ import annotations

import json
from typing import Any


def parse_assignment(text: str) -> tuple[str, Any] | None:
    """``"name=value"`` -> ``(name, value)``, the value read as JSON when it can be (``0.5``,
    ``[64, 64]``) and kept as text otherwise; None when ``text`` has no ``=`` or an empty name."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        return None
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value
