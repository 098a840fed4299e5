"""Exposure curation: accept or reject each exposure by the session's thresholds, naming every one it fails.

The thresholds are those a cryoSPARC Live user sets per session (Exposure Curation: CTF fit resolution,
defocus range, astigmatism, relative ice thickness, total full-frame motion, particle count), with the
quantities this pipeline measures:

=================================  ============================================================================
threshold (settings field)         measured value
=================================  ============================================================================
ctf_fit_resolution_max_angstrom    CTF fit resolution, Å (``CtfFit.fit_resolution_angstrom``; RELION
                                   ``rlnCtfMaxResolution``): fails when worse (larger) than the limit
defocus_min_angstrom,              mean defocus (U + V) / 2, Å, underfocus positive: fails outside [min, max]
defocus_max_angstrom
astigmatism_max_angstrom           U − V, Å (RELION ``rlnCtfAstigmatism``)
ice_thickness_index_max            the causal model's ``ice_thickness`` node (dimensionless, ∝ thickness; the
                                   micrograph's own measurement, ``causal.nodes``): not calibrated to nm nor to
                                   cryoSPARC's relative ice thickness, so set from a session's own distribution
total_motion_max_angstrom          total drift of a movie's trajectory, Å (pixels × pixel size); an exposure
                                   stored already summed has none measured
particles_min                      particles extracted from the exposure
=================================  ============================================================================

Limits are inclusive (a value equal to its limit passes).  A threshold set to None is not applied.  A
threshold that is applied to an exposure whose value was not measured (None or NaN; e.g. no motion for a
summed micrograph, no particle stack) fails, with the reason ``not measured``: what was not measured cannot
be shown to meet the limit, and RELION/cryoSPARC selections drop such exposures too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

THRESHOLD_NAMES = (
    "ctf_fit_resolution_max_angstrom",
    "defocus_min_angstrom",
    "defocus_max_angstrom",
    "astigmatism_max_angstrom",
    "ice_thickness_index_max",
    "total_motion_max_angstrom",
    "particles_min",
)
MINIMUM_THRESHOLDS = frozenset({"defocus_min_angstrom", "particles_min"})
"""Thresholds that are lower limits (the others are upper limits)."""


@dataclass(frozen=True)
class CurationThresholds:
    """A session's curation thresholds; None: not applied (module docstring for what each one compares).

    Defaults are permissive facility defaults (cryoSPARC Live applies none until the user sets them):
    CTF fit ≤ 8 Å (tutorials on high-resolution targets use 5–6 Å), mean defocus 0.2–4 µm (a fit outside
    it is near focus without Thon rings, or far beyond what is acquired for single particles), astigmatism
    ≤ 1500 Å.  Ice, motion and particle count are off by default: the ice index is uncalibrated, summed
    micrographs have no motion and the particle count depends on the sample.

    Attributes
    ----------
    ctf_fit_resolution_max_angstrom : float or None
        Worst acceptable CTF fit resolution, Å.
    defocus_min_angstrom, defocus_max_angstrom : float or None
        Accepted range of the mean defocus, Å (underfocus positive).
    astigmatism_max_angstrom : float or None
        Largest acceptable U − V, Å.
    ice_thickness_index_max : float or None
        Largest acceptable ice-thickness index (dimensionless).
    total_motion_max_angstrom : float or None
        Largest acceptable total drift, Å.
    particles_min : int or None
        Fewest particles an exposure must give.
    """

    ctf_fit_resolution_max_angstrom: float | None = 8.0
    defocus_min_angstrom: float | None = 2000.0
    defocus_max_angstrom: float | None = 40000.0
    astigmatism_max_angstrom: float | None = 1500.0
    ice_thickness_index_max: float | None = None
    total_motion_max_angstrom: float | None = None
    particles_min: int | None = None

    def __post_init__(self) -> None:
        low, high = self.defocus_min_angstrom, self.defocus_max_angstrom
        if low is not None and high is not None and low > high:
            raise ValueError(f"defocus_min_angstrom {low:g} > defocus_max_angstrom {high:g}")

    def to_document(self) -> dict[str, float | int | None]:
        """Every threshold by name, None where not applied (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ExposureMeasurements:
    """What curation compares for one exposure; None: not measured.

    Attributes
    ----------
    ctf_fit_resolution_angstrom : float or None
        CTF fit resolution, Å.
    defocus_mean_angstrom : float or None
        (U + V) / 2, Å, underfocus positive.
    astigmatism_angstrom : float or None
        U − V, Å.
    ice_thickness_index : float or None
        The ``ice_thickness`` node as measured on this micrograph (dimensionless).
    total_motion_angstrom : float or None
        Total drift, Å.
    particles : int or None
        Particles extracted.
    """

    ctf_fit_resolution_angstrom: float | None = None
    defocus_mean_angstrom: float | None = None
    astigmatism_angstrom: float | None = None
    ice_thickness_index: float | None = None
    total_motion_angstrom: float | None = None
    particles: int | None = None


@dataclass(frozen=True)
class ThresholdFailure:
    """One threshold an exposure failed: its settings name, the measured value (None: not measured), the limit."""

    threshold: str
    measured: float | None
    limit: float

    @property
    def reason(self) -> str:
        """E.g. ``ctf_fit_resolution_max_angstrom: 9.3 > 8`` or ``particles_min: not measured``."""
        if self.measured is None:
            return f"{self.threshold}: not measured"
        relation = "<" if self.threshold in MINIMUM_THRESHOLDS else ">"
        return f"{self.threshold}: {self.measured:.4g} {relation} {self.limit:.4g}"


@dataclass(frozen=True)
class CurationDecision:
    """The automatic decision on one exposure: accepted when it fails no applied threshold."""

    accepted: bool
    failures: tuple[ThresholdFailure, ...]

    @property
    def failed_thresholds(self) -> tuple[str, ...]:
        return tuple(f.threshold for f in self.failures)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f.reason for f in self.failures)


def _measured(value: float | int | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def curate_exposure(measured: ExposureMeasurements, thresholds: CurationThresholds) -> CurationDecision:
    """Compare one exposure's measurements with the thresholds (module docstring); every failure is listed,
    in the order of ``THRESHOLD_NAMES``."""
    values: dict[str, float | int | None] = {
        "ctf_fit_resolution_max_angstrom": measured.ctf_fit_resolution_angstrom,
        "defocus_min_angstrom": measured.defocus_mean_angstrom,
        "defocus_max_angstrom": measured.defocus_mean_angstrom,
        "astigmatism_max_angstrom": measured.astigmatism_angstrom,
        "ice_thickness_index_max": measured.ice_thickness_index,
        "total_motion_max_angstrom": measured.total_motion_angstrom,
        "particles_min": measured.particles,
    }
    failures = []
    for name in THRESHOLD_NAMES:
        limit = getattr(thresholds, name)
        if limit is None:
            continue
        value = _measured(values[name])
        if value is None or (value < limit if name in MINIMUM_THRESHOLDS else value > limit):
            failures.append(ThresholdFailure(name, value, float(limit)))
    return CurationDecision(not failures, tuple(failures))
