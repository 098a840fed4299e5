"""Motion-correction settings: global alignment only, or MotionCor2-style patch (local) correction too."""

from __future__ import annotations

import dagster as dg
from pydantic import field_validator


class MotionSettings(dg.ConfigurableResource):
    """How ``raw_micrographs`` corrects movies (``cryodecon_science.motion.align_movie``).

    ``patch_grid``: ``[]`` (default) for global alignment only; ``[gy, gx]`` (MotionCor2 uses 5 × 5) to fit
    local motion as well — the deformation polynomial in x, y and time of MotionCor2, its spatial order
    chosen by BIC — which costs 2–3× the time of global alignment on a CPU (``benchmarks/results/
    motion_cpu.md``) and belongs on a GPU.
    """

    patch_grid: list[int] = []

    @field_validator("patch_grid")
    @classmethod
    def _grid(cls, grid: list[int]) -> list[int]:
        if grid and (len(grid) != 2 or min(grid) < 1 or max(grid) < 2):
            raise ValueError(f"patch_grid must be [] or [gy, gx] with both >= 1 and one >= 2, got {grid}")
        return grid


def parse_patch_grid(text: str) -> list[int]:
    """``"5x5"`` → ``[5, 5]``; ``""`` or ``"none"`` → ``[]`` (``CRYODECON_MOTION_PATCHES``)."""
    text = text.strip().lower()
    if text in ("", "none", "off", "0"):
        return []
    try:
        return [int(part) for part in text.split("x")]
    except ValueError as exc:
        raise ValueError(f"CRYODECON_MOTION_PATCHES must look like 5x5, got {text!r}") from exc
