"""Standard JSON text of results that may hold NaN or infinite floats (JSON has no token for them)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["finite_or_none", "strict_json"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, in nested dicts, lists and tuples too.

    Args:
        value: a float, or a dict, list or tuple of them (other values are returned as they are).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, indent: int | None = 1) -> str:
    """``value`` as standard JSON: non-finite floats become null, never the ``NaN``/``Infinity`` tokens.

    Args:
        value: what to write (see :func:`finite_or_none`).
        indent: as in ``json.dumps``.
    """
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False)
