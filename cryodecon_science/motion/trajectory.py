"""Drift trajectories: RELION's accumulated-motion statistics and polynomial smoothing in time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def fit_polynomial(shifts_px: FloatArray, degree: int) -> FloatArray:
    """Least-squares polynomial in frame index for each shift component (smooth trajectory)."""
    t = np.arange(shifts_px.shape[0], dtype=np.float64)
    fitted = np.empty_like(shifts_px)
    for axis in range(2):
        coefficients = np.polynomial.polynomial.polyfit(t, shifts_px[:, axis], degree)
        fitted[:, axis] = np.polynomial.polynomial.polyval(t, coefficients)
    return fitted


# RELION's default exposure that separates "early" from "late" motion (``--dose_motionstats_cutoff``), e⁻/Å².
EARLY_MOTION_EXPOSURE_E_PER_ANGSTROM2 = 4.0


@dataclass(frozen=True)
class AccumulatedMotion:
    """Path length of the global trajectory, Å, as RELION's motion statistics report it
    (``rlnAccumMotionTotal``/``Early``/``Late``; Zivanov et al. 2018, eLife 7:e42166): the sum of
    |s_f − s_{f−1}|·pixel over frames f = 1…n−1, split by whether the exposure accumulated at the start of
    frame f, pre-exposure + f·dose per frame, is at most the early cut-off (4 e⁻/Å²).  Early motion is
    the fast, beam-induced motion that hurts high resolution most.  ``early``/``late`` are None when
    the dose per frame is unknown."""

    total_angstrom: float
    early_angstrom: float | None
    late_angstrom: float | None


def accumulated_motion(
    shifts_px: FloatArray,
    pixel_size_angstrom: float,
    dose_per_frame_e_per_angstrom2: float | None = None,
    pre_exposure_e_per_angstrom2: float = 0.0,
    early_exposure_e_per_angstrom2: float = EARLY_MOTION_EXPOSURE_E_PER_ANGSTROM2,
) -> AccumulatedMotion:
    """Total, early and late path length of a trajectory (n_frames, 2) [dy, dx] px (``AccumulatedMotion``)."""
    shifts = np.asarray(shifts_px, dtype=np.float64)
    if shifts.ndim != 2 or shifts.shape[1] != 2 or not pixel_size_angstrom > 0:
        raise ValueError(f"need shifts (n, 2) and pixel_size_angstrom > 0, got {shifts.shape}, {pixel_size_angstrom}")
    steps = np.linalg.norm(np.diff(shifts, axis=0), axis=1) * pixel_size_angstrom
    total = float(steps.sum())
    if dose_per_frame_e_per_angstrom2 is None or not dose_per_frame_e_per_angstrom2 > 0:
        return AccumulatedMotion(total, None, None)
    exposure_at_start = pre_exposure_e_per_angstrom2 + dose_per_frame_e_per_angstrom2 * np.arange(1, shifts.shape[0])
    early = exposure_at_start <= early_exposure_e_per_angstrom2
    return AccumulatedMotion(total, float(steps[early].sum()), float(steps[~early].sum()))
