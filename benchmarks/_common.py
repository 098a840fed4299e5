"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on
``sys.path``)."""

import math
from typing import Any

import numpy as np


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float as None (strict JSON has no ∞ or NaN)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value
