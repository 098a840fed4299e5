"""Detector defects of dose-fractionated movies: hot pixels found from the per-pixel sum over frames.

A pixel whose frame sum lies far above the robust spread of the image would pin the alignment to zero
shift; ``correction.align_movie`` replaces such pixels by the frame mean before anything else.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

# A pixel is a defect when its frame sum exceeds median + this many robust standard deviations.
_HOT_PIXEL_SIGMAS = 10.0


def hot_pixel_mask(frames: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """Pixels whose sum over frames exceeds median + 10 σ (σ = max(1.4826 MAD, √median), Poisson floor)."""
    total = frames.sum(axis=0, dtype=np.float64)
    median = float(np.median(total))
    mad_sigma = 1.4826 * float(np.median(np.abs(total - median)))
    sigma = max(mad_sigma, math.sqrt(max(median, 1.0)))
    return np.asarray(total > median + _HOT_PIXEL_SIGMAS * sigma, dtype=np.bool_)
