"""Areas of a micrograph where no particle should be picked: carbon film and contamination."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

# Smoothing σ of the thickness map: about two particle diameters, so a particle's own contrast averages out
# while a carbon edge stays sharp to within the smoothing length.
EXCLUSION_SMOOTHING_ANGSTROM = 250.0
# Fraction of electrons missing, relative to the median of the field, that marks carbon or contamination:
# 15 % ⇔ t = −λ_in·ln(0.85) ≈ 57 nm more material at λ_in ≈ 350 nm (300 kV, vitreous ice).
EXCLUSION_RELATIVE_DROP = 0.15


def excluded_area_mask(
    counts: npt.NDArray[np.floating],
    pixel_size_angstrom: float,
    smoothing_angstrom: float = EXCLUSION_SMOOTHING_ANGSTROM,
    relative_drop: float = EXCLUSION_RELATIVE_DROP,
) -> npt.NDArray[np.bool_]:
    """Areas of carbon film or surface contamination: where the smoothed counts drop well below the median.

    Carbon support film and contamination (ice crystals, frost, ethane) are thicker than the vitreous ice
    over the hole.  More material scatters more electrons outside the objective aperture (and, with an
    energy filter, removes the inelastic ones), so fewer reach the detector: I/I₀ = exp(−t/λ) (Beer–
    Lambert; the log-ratio thickness method of Malis, Cheng & Egerton 1988, J. Electron Microsc. Tech.
    8:193, and Rice et al. 2018, J. Struct. Biol. 204:38 for cryo-EM ice).  With the counts low-passed
    by a Gaussian of σ = ``smoothing_angstrom`` (L), the mask is L < (1 − drop)·median(L).  Particles
    picked there do not sit in thin ice over the hole: the packing rule of ``scores`` rejects them.

    Parameters
    ----------
    counts : ndarray, shape (ny, nx)
        Raw (not restored) micrograph in counts per pixel, gain-normalised.
    pixel_size_angstrom : float
        Å per pixel.
    smoothing_angstrom : float
        σ of the Gaussian low-pass, Å (default 250 Å).
    relative_drop : float
        drop ∈ (0, 1): fraction of missing electrons that marks an excluded area (default 0.15).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True on carbon/contamination.
    """
    data = np.asarray(counts, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"counts must be 2-D [y, x], got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("counts contain NaN or Inf")
    if not (pixel_size_angstrom > 0 and smoothing_angstrom > 0 and 0.0 < relative_drop < 1.0):
        raise ValueError("pixel_size_angstrom and smoothing_angstrom must be > 0 and relative_drop in (0, 1)")
    # The map is smooth on the scale σ: compute it on blocks of σ/8 pixels (block means, then the Gaussian
    # in block units) and expand back; a 4096² image then costs a 4096²/b² filter instead of a 1000-px kernel.
    sigma_px = smoothing_angstrom / pixel_size_angstrom
    block = max(1, int(sigma_px // 8))
    ny, nx = data.shape
    padded = np.pad(data, ((0, (-ny) % block), (0, (-nx) % block)), mode="edge")
    binned = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block).mean(axis=(1, 3))
    smoothed = ndimage.gaussian_filter(binned, sigma_px / block, mode="reflect")
    reference = float(np.median(smoothed))
    if not reference > 0:
        raise ValueError("the micrograph has no counts: the thickness map is undefined")
    mask = np.repeat(np.repeat(smoothed < (1.0 - relative_drop) * reference, block, axis=0), block, axis=1)
    return np.asarray(mask[:ny, :nx])
