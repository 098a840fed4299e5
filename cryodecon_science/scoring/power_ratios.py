"""Restored-to-raw power ratios in frequency bands: what LogicScore's restoration rules measure."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from cryodecon_science.optics import frequency_grid_per_angstrom

FloatArray = npt.NDArray[np.float64]


def _band_power(
    image: npt.NDArray[np.floating],
    pixel_size_angstrom: float,
    mask_of_k: Callable[[FloatArray], npt.NDArray[np.bool_]],
) -> tuple[float, int]:
    """Σ |FFT(x − mean)|² over the full-plane frequencies selected by ``mask_of_k(|k|)``, and their count.

    Uses ``rfft2`` with each interior column counted twice (its Hermitian mirror), so the sum equals the
    sum over the full ``fft2`` plane.
    """
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {data.shape}")
    spectrum = np.fft.rfft2(data - data.mean())
    ky, kx = frequency_grid_per_angstrom(data.shape, pixel_size_angstrom, rfft=True)
    k = np.hypot(ky, kx)
    weight = np.full(spectrum.shape, 2.0)
    weight[:, 0] = 1.0
    if data.shape[1] % 2 == 0:
        weight[:, -1] = 1.0
    selected = mask_of_k(k)
    power = float(np.sum(weight[selected] * np.abs(spectrum[selected]) ** 2))
    count = int(np.sum(weight[selected]))
    return power, count


def _power_ratio(
    raw: npt.NDArray[np.floating],
    restored: npt.NDArray[np.floating],
    pixel_size_angstrom: float,
    mask_of_k: Callable[[FloatArray], npt.NDArray[np.bool_]],
    band_text: str,
) -> float:
    if np.shape(raw) != np.shape(restored):
        raise ValueError(f"raw {np.shape(raw)} and restored {np.shape(restored)} must have the same shape")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
    raw_power, count = _band_power(raw, pixel_size_angstrom, mask_of_k)
    if count == 0:
        raise ValueError(f"the band {band_text} holds no frequency of this image")
    if not raw_power > 0:
        raise ValueError(f"the raw image has no power in the band {band_text}")
    restored_power, _ = _band_power(restored, pixel_size_angstrom, mask_of_k)
    return restored_power / raw_power


def low_frequency_power_ratio(
    raw: npt.NDArray[np.floating],
    restored: npt.NDArray[np.floating],
    pixel_size_angstrom: float,
    band_angstrom: tuple[float, float] = (200.0, 40.0),
) -> float:
    """Ratio of restored to raw power in a low-frequency band.

    R = Σ_{k∈B} |F_restored(k)|² / Σ_{k∈B} |F_raw(k)|²,  B = {k : 1/d_low ≤ |k| ≤ 1/d_high}

    with the means removed (the band excludes k = 0 anyway) and sums over the full Fourier plane
    (Parseval).  The 200–40 Å default covers the particles' overall shape, where the SNR is highest.

    Parameters
    ----------
    raw, restored : ndarray, shape (ny, nx)
        The micrograph before and after restoration, [y, x], same shape.
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    band_angstrom : (float, float)
        (d_low, d_high), resolutions in Å with d_low > d_high.

    Raises
    ------
    ValueError
        On mismatched shapes, an empty band or a raw image with no power in the band.
    """
    d_low, d_high = band_angstrom
    if not d_low > d_high > 0:
        raise ValueError(f"band_angstrom must be (d_low, d_high) with d_low > d_high > 0, got {band_angstrom}")
    k_low, k_high = 1.0 / d_low, 1.0 / d_high
    return _power_ratio(
        raw, restored, pixel_size_angstrom, lambda k: (k >= k_low) & (k <= k_high), f"{d_low}–{d_high} Å"
    )


def power_beyond_ratio(
    raw: npt.NDArray[np.floating],
    restored: npt.NDArray[np.floating],
    pixel_size_angstrom: float,
    cutoff_angstrom: float,
) -> float:
    """Ratio of restored to raw power at all frequencies finer than ``cutoff_angstrom``.

    R = Σ_{|k| > 1/d} |F_restored(k)|² / Σ_{|k| > 1/d} |F_raw(k)|², summed over the full Fourier plane
    up to its corners (|k| ≤ √2 · Nyquist).

    Parameters
    ----------
    raw, restored : ndarray, shape (ny, nx)
        The micrograph before and after restoration, [y, x], same shape.
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    cutoff_angstrom : float
        d, typically the CTF fit resolution, Å.

    Raises
    ------
    ValueError
        On mismatched shapes, a cutoff finer than the image's corner frequency (empty band) or a raw
        image with no power there.
    """
    if not cutoff_angstrom > 0:
        raise ValueError(f"cutoff_angstrom must be positive, got {cutoff_angstrom}")
    k_cut = 1.0 / cutoff_angstrom
    return _power_ratio(raw, restored, pixel_size_angstrom, lambda k: k > k_cut, f"finer than {cutoff_angstrom} Å")
