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


# Top-level entries of a result larger than this (JSON bytes) are per-item data: written beside the summary
# as ``<name>.items.json``, which git ignores (rerun the benchmark to regenerate it).
ITEMS_THRESHOLD_BYTES = 16_000


def write_results(name: str, result: dict[str, Any], markdown_text: str) -> Path:
    """Write ``results/<name>.json`` (summary), ``results/<name>.items.json`` (per-item data) and ``<name>.md``.

    Returns the summary's path.  ``read_results`` merges the two files back.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    ready = json_ready(result)
    items = {k: v for k, v in ready.items() if len(json.dumps(v)) > ITEMS_THRESHOLD_BYTES}
    summary = {k: v for k, v in ready.items() if k not in items}
    out = RESULTS / f"{name}.json"
    items_path = RESULTS / f"{name}.items.json"
    if items:
        summary["items_file"] = {"path": items_path.name, "keys": sorted(items)}
        items_path.write_text(json.dumps(items, indent=1))
    out.write_text(json.dumps(summary, indent=1))
    out.with_suffix(".md").write_text(markdown_text.rstrip("\n") + "\n")
    return out


def read_results(name: str) -> dict[str, Any]:
    """A result written by ``write_results``, its per-item data merged back (which must be present)."""
    summary: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    items_file = summary.pop("items_file", None)
    if items_file:
        summary.update(json.loads((RESULTS / items_file["path"]).read_text()))
    return summary


def ls_psnr_db(estimate: np.ndarray, clean: np.ndarray) -> float:
    """PSNR (dB) of a·estimate + b against clean, (a, b) least squares; peak = clean's max − min."""
    x = estimate.astype(np.float64).ravel()
    y = clean.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    mse = float(np.mean((design @ coef - y) ** 2))
    return 10.0 * math.log10(float(y.max() - y.min()) ** 2 / mse)
