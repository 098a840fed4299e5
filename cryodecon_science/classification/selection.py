"""Automatic selection of 2D classes: measured features, one named rule per feature, the decision and its reasons.

Features of class k (average A_k from ``streaming.class_averages``, white density, box centre c = (B//2, B//2),
particle radius R = d/2):

* ``resolution_0143_angstrom`` / ``resolution_05_angstrom``: half-set FRC resolution (``resolution``).
* ``particle_count``: particles whose most probable class is k, all batches; ``particle_fraction``: the class's
  share of the effective (decayed, posterior-weighted) particle number W_k / Σ W.
* ``centre_offset_px``: |centre of mass of A_k⁺ = max(A_k, 0) within the inscribed circle − c|.
* ``mask_fit_fraction``: Σ_{ρ ≤ R} (A_k⁺)² / Σ_{ρ ≤ B/2} (A_k⁺)², the share of the positive density's power inside
  the particle circle.  Squaring lets the particle's density outweigh the weak positive noise the average keeps
  in its background, so a clean class scores near 1, density spread over the box (an average of noise: about the
  area ratio R²/(B/2)²) or beyond the circle (neighbours, aggregates, ice) scores low.
* ``contrast``: RMS of A_k inside the particle circle over its RMS in the annulus R + w < ρ ≤ B/2 beyond the mask
  edge w: how far the density stands out from what the average makes of the background.

Rules (``SelectionCriteria``, defaults are the constants below), in this order; a class is selected when it passes
all, and ``reasons`` lists every rule it fails: ``few_particles``, ``low_resolution``, ``off_centre``,
``outside_mask``, ``low_contrast``.  These are what an expert reads off a class gallery and what cryoSPARC's Select
2D shows (resolution, particle count), in the spirit of RELION-4's automated class ranker (Kimanius et al. 2021,
Biochem. J. 478:4169), which scores classes from such features; here each is a transparent threshold instead of a
trained score.  Lengths are fractions of the particle diameter, so one set serves every sampling.  The FRC of 2D
classes is not gold-standard (``resolution``): noise aligned against a common reference reaches a finite resolution,
so a class of empty picks is caught by its shape and contrast more than by its FRC.

Particles (``select_particles``).  A selected class still holds some junk: empty picks and edge contamination that
the E-step had to put somewhere.  Each particle carries the log Bayes factor of its class's model against
background alone, ln B_i = ln p(x_i | k) − ln p(x_i | noise) (``ClassAssignments.log_evidence_ratio``,
marginalised over the pose grid), which the class's signal makes large for a particle (ln B ≈ ½‖M‖²/σ² ≈ tens at
SNR 0.1) and the best chance fit among ~10³ poses leaves near 0 for an empty pick.  A particle is kept when its
class is selected and ln B ≥ ``MIN_LOG_EVIDENCE_RATIO`` = 3, B ≥ 20, "strong evidence" on the scale of Kass &
Raftery (1995, J. Am. Stat. Assoc. 90:773), the per-particle test RELION and cryoSPARC leave to class selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.classification.geometry import MASK_EDGE_PX, centre_of_mass_offset_px, centred_radius_px
from cryodecon_science.classification.resolution import frc_resolution
from cryodecon_science.classification.streaming import ClassAssignments, ClassificationState, class_averages

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MIN_EVEN_SHARE_FRACTION = 0.25
"""A class with less than a quarter of an even share (W_k / Σ W < 0.25 / K) is too small to judge (and to use).
Relative to 1/K, so that asking for more classes (finer views, each with fewer particles) does not reject good ones."""
MAX_RESOLUTION_DIAMETER_FRACTION = 0.4
"""A class whose FRC-0.143 resolution is coarser than 0.4 d shows no detail finer than a blob of the particle's size."""
MAX_CENTRE_OFFSET_DIAMETER_FRACTION = 0.15
"""A class whose density's centre of mass lies more than 0.15 d from the box centre holds mis-centred picks."""
MIN_MASK_FIT_FRACTION = 0.9
"""A class with less than 90 % of its positive density's power inside the particle circle holds neighbours,
aggregates or contamination larger than the particle, or noise."""
MIN_CONTRAST = 3.0
"""A class whose density is less than 3 × the RMS of its own background is noise aligned to itself."""

MIN_LOG_EVIDENCE_RATIO = 3.0
"""A particle is kept only when its class's model explains it at least e³ ≈ 20 times better than background alone
(module docstring)."""

RULES = ("few_particles", "low_resolution", "off_centre", "outside_mask", "low_contrast")
"""Rule names in the order they are checked (``ClassSelection.reasons``)."""


@dataclass(frozen=True)
class SelectionCriteria:
    """Thresholds of the selection rules (module docstring); diameters fractions of the particle diameter d."""

    min_even_share_fraction: float = MIN_EVEN_SHARE_FRACTION
    max_resolution_diameter_fraction: float = MAX_RESOLUTION_DIAMETER_FRACTION
    max_centre_offset_diameter_fraction: float = MAX_CENTRE_OFFSET_DIAMETER_FRACTION
    min_mask_fit_fraction: float = MIN_MASK_FIT_FRACTION
    min_contrast: float = MIN_CONTRAST

    def __post_init__(self) -> None:
        for name in ("max_resolution_diameter_fraction", "max_centre_offset_diameter_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("min_even_share_fraction", "min_mask_fit_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if not self.min_contrast >= 0:
            raise ValueError("min_contrast must be >= 0")


@dataclass(frozen=True, eq=False)
class ClassSelection:
    """Every feature of every class, the decision and the rules each rejected class failed.

    Attributes
    ----------
    particle_count : ndarray, shape (K,), int64
    particle_fraction : ndarray, shape (K,), float64
    resolution_0143_angstrom, resolution_05_angstrom : ndarray, shape (K,), float64
        Å; inf when not even the first ring is resolved.
    centre_offset_px : ndarray, shape (K,), float64
    mask_fit_fraction : ndarray, shape (K,), float64
    contrast : ndarray, shape (K,), float64
    selected : ndarray, shape (K,), bool
    reasons : tuple of tuple of str
        Per class, the failed rules in ``RULES`` order; empty for a selected class.
    criteria : SelectionCriteria
        The thresholds applied.
    particle_diameter_angstrom, pixel_size_angstrom : float
        d and the sampling the features were measured with.
    """

    particle_count: IntArray
    particle_fraction: FloatArray
    resolution_0143_angstrom: FloatArray
    resolution_05_angstrom: FloatArray
    centre_offset_px: FloatArray
    mask_fit_fraction: FloatArray
    contrast: FloatArray
    selected: BoolArray
    reasons: tuple[tuple[str, ...], ...]
    criteria: SelectionCriteria
    particle_diameter_angstrom: float
    pixel_size_angstrom: float

    @property
    def selected_classes(self) -> IntArray:
        """Indices of the selected classes, ascending."""
        return np.flatnonzero(self.selected).astype(np.int64)


def _checked_averages(averages: npt.ArrayLike | torch.Tensor) -> torch.Tensor:
    data = averages.detach() if isinstance(averages, torch.Tensor) else torch.as_tensor(np.asarray(averages))
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"averages must have shape (K, B, B), got {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("averages contain NaN or Inf")
    return data.to(torch.float64)


def centre_offset_px(averages: npt.ArrayLike | torch.Tensor) -> FloatArray:
    """|centre of mass of max(A, 0) within the inscribed circle − (B//2, B//2)| of each average (K, B, B), pixels."""
    offset = centre_of_mass_offset_px(_checked_averages(averages))
    return np.asarray(torch.linalg.vector_norm(offset, dim=1).cpu().numpy(), dtype=np.float64)


def mask_fit_fraction(averages: npt.ArrayLike | torch.Tensor, radius_px: float) -> FloatArray:
    """Σ_{ρ ≤ R} max(A, 0)² / Σ_{ρ ≤ B/2} max(A, 0)² of each average (K, B, B); 0 for one with no positive part."""
    data = _checked_averages(averages)
    box = data.shape[-1]
    radius = centred_radius_px(box, data.device).to(torch.float64)
    positive = data.clamp_min(0.0) ** 2
    inside = (positive * (radius <= radius_px)).sum(dim=(-2, -1))
    total = (positive * (radius <= box / 2)).sum(dim=(-2, -1))
    fit = torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total))
    return np.asarray(fit.cpu().numpy(), dtype=np.float64)


def contrast(averages: npt.ArrayLike | torch.Tensor, radius_px: float, edge_px: float = MASK_EDGE_PX) -> FloatArray:
    """RMS of A within ρ ≤ R over its RMS in R + w < ρ ≤ B/2, per average (K, B, B).

    inf for a zero background; NaN when the box leaves no background beyond the mask edge (R + w ≥ B/2), and then
    :func:`select_classes` does not apply the contrast rule.
    """
    data = _checked_averages(averages)
    box = data.shape[-1]
    radius = centred_radius_px(box, data.device).to(torch.float64)
    inside = radius <= radius_px
    annulus = (radius > radius_px + edge_px) & (radius <= box / 2)
    if not bool(annulus.any()):
        return np.full(data.shape[0], np.nan, dtype=np.float64)
    signal = data[:, inside].pow(2).mean(dim=1).sqrt()
    background = data[:, annulus].pow(2).mean(dim=1).sqrt()
    ratio = torch.where(background > 0, signal / background.clamp_min(1e-300), torch.full_like(signal, np.inf))
    return np.asarray(ratio.cpu().numpy(), dtype=np.float64)


def select_classes(state: ClassificationState, criteria: SelectionCriteria | None = None) -> ClassSelection:
    """Measure every class of ``state`` and keep those that pass every rule (module docstring).

    Parameters
    ----------
    state : ClassificationState
        Classes after one or more ``update_classes`` calls.
    criteria : SelectionCriteria, optional
        Thresholds; the module constants by default.

    Returns
    -------
    ClassSelection
    """
    rules = criteria or SelectionCriteria()
    diameter_angstrom = state.particle_diameter_angstrom
    diameter_px = diameter_angstrom / state.pixel_size_angstrom
    radius_px = 0.5 * diameter_px
    averages = class_averages(state)
    resolution = frc_resolution(state.numerator[0], state.numerator[1], state.pixel_size_angstrom)
    effective = state.effective_count
    fraction = effective / effective.sum() if effective.sum() > 0 else np.zeros_like(effective)
    offset = centre_offset_px(averages)
    fit = mask_fit_fraction(averages, radius_px)
    ratio = contrast(averages, radius_px)
    failed = np.stack(
        [
            fraction * len(fraction) < rules.min_even_share_fraction,
            ~(resolution.resolution_0143_angstrom <= rules.max_resolution_diameter_fraction * diameter_angstrom),
            offset > rules.max_centre_offset_diameter_fraction * diameter_px,
            fit < rules.min_mask_fit_fraction,
            ratio < rules.min_contrast,
        ],
        axis=1,
    )
    reasons = tuple(tuple(rule for rule, bad in zip(RULES, row, strict=True) if bad) for row in failed)
    return ClassSelection(
        particle_count=state.particle_count.copy(),
        particle_fraction=np.asarray(fraction, dtype=np.float64),
        resolution_0143_angstrom=resolution.resolution_0143_angstrom,
        resolution_05_angstrom=resolution.resolution_05_angstrom,
        centre_offset_px=offset,
        mask_fit_fraction=fit,
        contrast=ratio,
        selected=np.asarray(~failed.any(axis=1), dtype=np.bool_),
        reasons=reasons,
        criteria=rules,
        particle_diameter_angstrom=float(diameter_angstrom),
        pixel_size_angstrom=float(state.pixel_size_angstrom),
    )


def select_particles(
    assignments: ClassAssignments,
    selection: ClassSelection,
    min_log_evidence_ratio: float = MIN_LOG_EVIDENCE_RATIO,
) -> BoolArray:
    """The particles to keep: assigned to a selected class and ln B ≥ ``min_log_evidence_ratio`` against
    background (module docstring); (n,) bool in the order of ``assignments``.

    Raises
    ------
    ValueError
        Assignments to classes the selection does not have.
    """
    n_classes = selection.selected.shape[0]
    if assignments.class_index.size and not (
        0 <= assignments.class_index.min() <= assignments.class_index.max() < n_classes
    ):
        raise ValueError(f"assignments name classes outside 0 … {n_classes - 1}")
    in_selected = selection.selected[assignments.class_index]
    return np.asarray(in_selected & (assignments.log_evidence_ratio >= min_log_evidence_ratio), dtype=np.bool_)
