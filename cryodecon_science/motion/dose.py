"""Dose weighting of aligned frames (Grant & Grigorieff 2015, eLife 4:e06980).

Critical exposure N_e(k) = a·k^b + c, a = 0.245, b = −1.665, c = 2.81 e⁻/Å² (k in Å⁻¹, fitted at
300 kV; multiplied by 0.8 at 200 kV), frame filter q_f(k) = exp(−N_f / (2 N_e(k))) with N_f the exposure
at the middle of frame f (pre-exposure + (f + ½)·dose per frame), normalised per frequency to
w_f = q_f / √(Σ_g q_g²) (Σ_f w_f² = 1, their eq. 9 / unblur / MotionCor2).  The dose-weighted sum of
``correction.align_movie`` is √n · Σ_f w_f(k) Â_f(k): the √n makes its k = 0 term (total counts) and its
noise power equal to the unweighted sum's, so it can replace the aligned sum without rescaling.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Grant & Grigorieff 2015 critical-exposure fit N_e(k) = a k^b + c at 300 kV (e⁻/Å², k in Å⁻¹).
_CRITICAL_EXPOSURE_A = 0.245
_CRITICAL_EXPOSURE_B = -1.665
_CRITICAL_EXPOSURE_C = 2.81
# Their scale factor for 200 kV (the exposure curve is fitted at 300 kV).
_VOLTAGE_SCALE = {300.0: 1.0, 200.0: 0.8}


def critical_exposure_e_per_angstrom2(k_per_angstrom: npt.ArrayLike, voltage_kv: float = 300.0) -> FloatArray:
    """Critical exposure N_e(k) = (a·k^b + c)·s of Grant & Grigorieff 2015 (eLife 4:e06980, Fig. 2).

    Parameters
    ----------
    k_per_angstrom : array_like
        Spatial frequency |k|, Å⁻¹ (k = 0 gives +∞: the mean is not damaged).
    voltage_kv : float
        300 (s = 1, where a = 0.245, b = −1.665, c = 2.81 e⁻/Å² were fitted) or 200 (s = 0.8, their
        scaling for 200 kV).

    Returns
    -------
    ndarray float64
        N_e in e⁻/Å², the shape of ``k_per_angstrom``.
    """
    scale = _VOLTAGE_SCALE.get(float(voltage_kv))
    if scale is None:
        raise ValueError(f"critical exposure is calibrated for 300 and 200 kV only, got {voltage_kv}")
    k = np.abs(np.asarray(k_per_angstrom, dtype=np.float64))
    with np.errstate(divide="ignore"):
        power = np.where(k > 0, np.power(np.where(k > 0, k, 1.0), _CRITICAL_EXPOSURE_B), np.inf)
    return np.asarray(scale * (_CRITICAL_EXPOSURE_A * power + _CRITICAL_EXPOSURE_C), dtype=np.float64)


def dose_weights(
    k_per_angstrom: npt.ArrayLike,
    n_frames: int,
    dose_per_frame_e_per_angstrom2: float,
    *,
    pre_exposure_e_per_angstrom2: float = 0.0,
    voltage_kv: float = 300.0,
) -> FloatArray:
    """Per-frame, per-frequency exposure weights w_f(k) with Σ_f w_f(k)² = 1 (Grant & Grigorieff 2015).

    q_f(k) = exp(−N_f / (2 N_e(k))), N_f = pre-exposure + (f + ½)·dose per frame (the exposure at the
    middle of frame f), and w_f = q_f / √(Σ_g q_g²), the normalisation of their eq. 9 (also unblur's and
    MotionCor2's), which keeps the noise power of the weighted sum equal at every frequency.

    Parameters
    ----------
    k_per_angstrom : array_like
        Spatial frequencies |k|, Å⁻¹, any shape K.
    n_frames : int
        Frames in the movie (>= 1).
    dose_per_frame_e_per_angstrom2 : float
        Exposure per frame, e⁻/Å² (> 0).
    pre_exposure_e_per_angstrom2 : float
        Exposure before frame 0, e⁻/Å² (>= 0).
    voltage_kv : float
        300 or 200 (``critical_exposure_e_per_angstrom2``).

    Returns
    -------
    ndarray (n_frames, *K) float64
    """
    if n_frames < 1 or not dose_per_frame_e_per_angstrom2 > 0 or pre_exposure_e_per_angstrom2 < 0:
        raise ValueError("need n_frames >= 1, dose_per_frame_e_per_angstrom2 > 0, pre_exposure >= 0")
    critical = critical_exposure_e_per_angstrom2(k_per_angstrom, voltage_kv)
    exposure = pre_exposure_e_per_angstrom2 + (np.arange(n_frames, dtype=np.float64) + 0.5) * float(
        dose_per_frame_e_per_angstrom2
    )
    exposure = exposure.reshape((n_frames,) + (1,) * critical.ndim)
    q = np.exp(-exposure / (2.0 * critical[None]))
    return np.asarray(q / np.sqrt(np.sum(q**2, axis=0, keepdims=True)), dtype=np.float64)
