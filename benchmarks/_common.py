"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on
``sys.path``)."""

import json
import math
from pathlib import Path
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


RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, result: dict[str, Any], markdown_text: str) -> Path:
    """Write ``results/<name>.json`` (``json_ready``) and ``results/<name>.md``; return the JSON path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(json_ready(result), indent=1))
    out.with_suffix(".md").write_text(markdown_text.rstrip("\n") + "\n")
    return out


def ls_psnr_db(estimate: np.ndarray, clean: np.ndarray) -> float:
    """PSNR (dB) of a·estimate + b against clean, (a, b) least squares; peak = clean's max − min."""
    x = estimate.astype(np.float64).ravel()
    y = clean.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    mse = float(np.mean((design @ coef - y) ** 2))
    return 10.0 * math.log10(float(y.max() - y.min()) ** 2 / mse)
