"""Artifact removal before restoration, each step tied to the causal-graph node that produces the artifact.

=================================  =====================  ===========================================
step                               causal node            what it removes
=================================  =====================  ===========================================
:func:`replace_hot_pixels`         ``detector_noise``     isolated pixels far above their neighbourhood
                                                          (hot/dead detector elements, cosmic hits)
:func:`remove_detector_stripes`    ``detector_noise``     row/column offsets from readout electronics
                                                          (the stripe pattern of integrating detectors)
:func:`flatten_ice_gradient`       ``ice_thickness``      the smooth intensity gradient of a wedge of ice
                                                          (inelastic loss grows with thickness)
:func:`normalise_excluded_areas`   ``ice_thickness``      the intensity step at a carbon edge, so that
                                                          filters do not ring at it
=================================  =====================  ===========================================

Each function is pure (array in, array and a frozen :class:`ArtifactCorrection` record out) and preserves
the image's mean counts, so the dose rule and the noise-split statistics downstream stay valid.  They are
switched on and off by the pipeline's ``RestorationSettings``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cryodecon_science.picking import excluded_area_mask

FloatArray = npt.NDArray[np.float64]
Float32Image = npt.NDArray[np.float32]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class ArtifactCorrection:
    """What one artifact step changed.

    Attributes
    ----------
    step : str
        Function name.
    causal_node : str
        The node of ``causal.build_causal_graph`` the artifact belongs to.
    pixels_changed : int
        Pixels whose value changed by more than rounding.
    magnitude : float
        Step-specific size of the artifact (documented per function), with its unit in ``unit``.
    unit : str
        Unit of ``magnitude``.
    """

    step: str
    causal_node: str
    pixels_changed: int
    magnitude: float
    unit: str


def _as_image(image: npt.ArrayLike) -> FloatArray:
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2 or min(data.shape) < 8:
        raise ValueError(f"image must be 2-D and at least 8 × 8, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("image contains NaN or Inf")
    return data


def replace_hot_pixels(image: npt.ArrayLike, k_sigma: float = 8.0) -> tuple[Float32Image, ArtifactCorrection]:
    """Replace pixels more than ``k_sigma`` robust σ from the mean of their 8 neighbours by their median.

    Shot noise in counts has σ = √λ; a hot pixel or a cosmic-ray hit is a single pixel many σ above its
    neighbourhood (its neighbours share the specimen signal, it alone carries the defect).  The residual
    r = x − mean(8 neighbours) follows the specimen, which varies slowly on the pixel scale, so its robust
    spread (1.4826 × MAD, over the whole image) is the noise; pixels with |r| > k·σ are replaced by the
    median of their 8 neighbours.  O(n): a 3 × 3 box sum, and medians only where pixels are flagged.
    ``magnitude``: replaced pixels per million.
    """
    data = _as_image(image)
    if not k_sigma > 0:
        raise ValueError(f"k_sigma must be > 0, got {k_sigma}")
    neighbours = (ndimage.uniform_filter(data, size=3, mode="reflect") * 9.0 - data) / 8.0
    residual = data - neighbours
    sample = residual.ravel()[:: max(1, residual.size // 1_000_000)]
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(sample - np.median(sample))))
    if not sigma > 0:
        sigma = float(np.std(residual)) or 1.0
    bad = np.abs(residual) > k_sigma * sigma
    out = data.copy()
    ys, xs = np.nonzero(bad)
    if ys.size:
        padded = np.pad(data, 1, mode="reflect")
        offsets = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1)]
        ring = np.stack([padded[ys + dy, xs + dx] for dy, dx in offsets], axis=1)
        out[ys, xs] = np.median(ring, axis=1)
    count = int(ys.size)
    return out.astype(np.float32), ArtifactCorrection(
        "replace_hot_pixels", "detector_noise", count, 1e6 * count / data.size, "per million pixels"
    )


def remove_detector_stripes(
    image: npt.ArrayLike, smoothing_px: float = 16.0
) -> tuple[Float32Image, ArtifactCorrection]:
    """Subtract per-row and per-column offsets that a smooth intensity profile does not explain.

    Readout stripes add a constant to a whole row (or column); the specimen does not: averaged along a
    full row, particles and ice give a profile that varies slowly from row to row.  The offsets are the
    row-mean profile minus its Gaussian-smoothed version (σ = ``smoothing_px`` rows), then the same for
    columns after the rows are corrected; both are removed, which keeps the image mean.  On an image
    without stripes the offsets are shot noise averaged along a row (σ/√nx).  O(n).
    ``magnitude``: RMS of the removed offsets, in counts.
    """
    data = _as_image(image)
    if not smoothing_px > 0:
        raise ValueError(f"smoothing_px must be > 0, got {smoothing_px}")
    row_profile = data.mean(axis=1)
    rows = row_profile - ndimage.gaussian_filter1d(row_profile, smoothing_px, mode="reflect")
    corrected = data - rows[:, None]
    column_profile = corrected.mean(axis=0)
    columns = column_profile - ndimage.gaussian_filter1d(column_profile, smoothing_px, mode="reflect")
    out = corrected - columns[None, :]
    changed = int(np.count_nonzero(np.abs(rows[:, None] + columns[None, :]) > 1e-9))
    rms = float(np.sqrt(np.mean(rows**2) + np.mean(columns**2)))
    return out.astype(np.float32), ArtifactCorrection(
        "remove_detector_stripes", "detector_noise", changed, rms, "counts"
    )


def flatten_ice_gradient(image: npt.ArrayLike, order: int = 2) -> tuple[Float32Image, ArtifactCorrection]:
    """Divide out a smooth polynomial intensity trend (a wedge of ice), keeping the mean counts.

    In thicker ice fewer electrons reach the detector unscattered, I/I₀ = exp(−t/λ) (Beer–Lambert; Rice et
    al. 2018, J. Struct. Biol. 204:38), so a wedge of ice appears as a smooth multiplicative gradient
    across the field.  A least-squares polynomial of total degree ``order`` in (x, y) fitted to the counts
    models it; the image is divided by the fit normalised to its mean, which flattens the gradient while
    keeping mean counts and the local contrast of particles (a multiplicative correction, like a gain).
    ``magnitude``: the peak-to-peak relative intensity of the fitted trend (dimensionless).
    """
    data = _as_image(image)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    ny, nx = data.shape
    step = max(1, min(ny, nx) // 128)  # fit on a subsampled grid: the trend is smooth
    yy, xx = np.mgrid[0:ny:step, 0:nx:step]
    y = 2.0 * yy.ravel() / max(ny - 1, 1) - 1.0
    x = 2.0 * xx.ravel() / max(nx - 1, 1) - 1.0
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    design = np.stack([x**i * y**j for i, j in terms], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, data[::step, ::step].ravel(), rcond=None)
    gy, gx = np.mgrid[0:ny, 0:nx]
    fy, fx = 2.0 * gy / max(ny - 1, 1) - 1.0, 2.0 * gx / max(nx - 1, 1) - 1.0
    trend = sum(c * fx**i * fy**j for c, (i, j) in zip(coefficients, terms, strict=True))
    mean = float(np.mean(trend))
    if not (mean > 0 and float(np.min(trend)) > 0):
        raise ValueError("the fitted intensity trend is not positive: the image is not in counts")
    relative = np.asarray(trend, dtype=np.float64) / mean
    out = data / relative
    return out.astype(np.float32), ArtifactCorrection(
        "flatten_ice_gradient", "ice_thickness", int(data.size), float(np.ptp(relative)), "relative intensity"
    )


def normalise_excluded_areas(
    image: npt.ArrayLike, excluded_mask: npt.ArrayLike, blend_px: float = 8.0
) -> tuple[Float32Image, ArtifactCorrection]:
    """Scale carbon/contamination areas to the hole's mean counts, blended over ``blend_px``.

    At a carbon edge the counts step down by tens of per cent (``picking.excluded_area_mask``); a Fourier
    filter applied across that step rings along the edge for many pixels into the hole.  Multiplying the
    excluded area by mean(hole)/mean(excluded) removes the step but keeps the contrast within each area;
    a Gaussian-blurred mask (σ = ``blend_px``) avoids a new edge.  ``magnitude``: the relative step
    1 − mean(excluded)/mean(hole) that was removed.
    """
    data = _as_image(image)
    mask = np.asarray(excluded_mask, dtype=bool)
    if mask.shape != data.shape:
        raise ValueError(f"excluded_mask must have shape {data.shape}, got {mask.shape}")
    if not mask.any() or mask.all():
        return data.astype(np.float32), ArtifactCorrection(
            "normalise_excluded_areas", "ice_thickness", 0, 0.0, "relative intensity"
        )
    hole, excluded = float(data[~mask].mean()), float(data[mask].mean())
    if not (hole > 0 and excluded > 0):
        raise ValueError("mean counts must be positive in both areas")
    weight = np.clip(ndimage.gaussian_filter(mask.astype(np.float64), blend_px), 0.0, 1.0)
    gain = 1.0 + weight * (hole / excluded - 1.0)
    out = data * gain
    changed = int(np.count_nonzero(weight > 1e-3))
    return out.astype(np.float32), ArtifactCorrection(
        "normalise_excluded_areas", "ice_thickness", changed, 1.0 - excluded / hole, "relative intensity"
    )


def stripe_rms_counts(image: npt.ArrayLike) -> float:
    """RMS of row and column means about the image mean: the size of a stripe pattern, in counts."""
    data = _as_image(image)
    rows = data.mean(axis=1) - data.mean()
    columns = data.mean(axis=0) - data.mean()
    return math.sqrt(float(np.mean(rows**2) + np.mean(columns**2)))


ARTIFACT_STEPS = ("hot_pixels", "stripes", "ice_gradient", "carbon_edges")


def remove_artifacts(
    image: npt.ArrayLike, pixel_size_angstrom: float, steps: tuple[str, ...]
) -> tuple[Float32Image, tuple[ArtifactCorrection, ...]]:
    """Apply the named steps in the order of ``ARTIFACT_STEPS`` (a step not named is skipped).

    ``carbon_edges`` finds the excluded areas with ``picking.excluded_area_mask`` (after the hot pixels
    are gone, so a cosmic ray cannot bias the thickness map).

    Raises
    ------
    ValueError
        For an unknown step name, or an image the steps reject.
    """
    unknown = sorted(set(steps) - set(ARTIFACT_STEPS))
    if unknown:
        raise ValueError(f"unknown artifact steps {unknown}; known: {ARTIFACT_STEPS}")
    data = np.asarray(image, dtype=np.float32)
    corrections: list[ArtifactCorrection] = []
    if "hot_pixels" in steps:
        data, record = replace_hot_pixels(data)
        corrections.append(record)
    if "stripes" in steps:
        data, record = remove_detector_stripes(data)
        corrections.append(record)
    if "ice_gradient" in steps:
        data, record = flatten_ice_gradient(data)
        corrections.append(record)
    if "carbon_edges" in steps:
        data, record = normalise_excluded_areas(data, excluded_area_mask(data, pixel_size_angstrom))
        corrections.append(record)
    return data, tuple(corrections)
