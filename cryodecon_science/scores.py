"""Quality scores of a micrograph batch: logic rules, reproducibility, meta-stability, V and HyperScore.

The evaluation module of the research proposal gives a batch five components, each in [0, 1]:

* **LogicScore** — the fraction of *applicable* consistency rules (``LOGIC_RULES``) that hold.  A rule
  that cannot be evaluated (no nominal defocus in the header, fewer than two particles, …) is reported
  ``'not_applicable'`` and leaves both numerator and denominator.
* **Novelty** — how far the batch's particles lie from known structures
  (:func:`cryodecon_science.embedding.novelty_score`).
* **ImpactFore** — forecast citation impact, log-normalised by :func:`impact_normalised`.
* **ΔRepro** — reproducibility under perturbation, :func:`reproducibility_score`.
* **⋄Meta** — stability of the iterative self-evaluation loop, :func:`meta_stability_score`.

The aggregate is V = Σᵢ wᵢ·cᵢ with Σᵢ wᵢ = 1, so V ∈ [0, 1] (:func:`quality_v`), and

    HyperScore = 100 · [1 + σ(β·ln V + γ)^κ],   σ(z) = 1 / (1 + e^(−z)),

with defaults β = 5, γ = −ln 2, κ = 2 (:func:`hyperscore`).  HyperScore rises monotonically from 100
(V → 0) to 100·(1 + σ(γ)^κ) (V = 1; 111.11… with the defaults) and never reaches 200.

Every value here is computed from measurements; nothing is a placeholder.  Thresholds of the rules are
named module constants with the reason for each in the rule's ``physical_reason``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from cryodecon_science.optics import frequency_grid_per_angstrom

FloatArray = npt.NDArray[np.float64]
RuleStatus = Literal["pass", "fail", "not_applicable"]


class ScoreDomainError(ValueError):
    """A score or score input outside its domain: NaN, infinite, negative or above 1 where [0, 1] is "
    "required."""


# --- rule thresholds ---------------------------------------------------------------------------------
DEFOCUS_MIN_ANGSTROM = 2_000.0  # 0.2 µm underfocus
DEFOCUS_MAX_ANGSTROM = 60_000.0  # 6 µm underfocus
NOMINAL_DEFOCUS_RELATIVE_TOLERANCE = 0.25
NOMINAL_DEFOCUS_ABSOLUTE_TOLERANCE_ANGSTROM = 3_000.0
ASTIGMATISM_ABSOLUTE_LIMIT_ANGSTROM = 3_000.0
ASTIGMATISM_RELATIVE_LIMIT = 0.30
FIT_RESOLUTION_WORST_ANGSTROM = 30.0
DOSE_RELATIVE_TOLERANCE = 0.25
LOW_FREQUENCY_POWER_RATIO_RANGE = (0.5, 1.5)
BEYOND_FIT_POWER_RATIO_MAX = 1.05
PARTICLE_MIN_SEPARATION_DIAMETERS = 0.8


@dataclass(frozen=True)
class RuleInputs:
    """Everything the consistency rules look at, for one micrograph.

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom : float
        Fitted defocus along the major/minor axis in Å, positive = underfocus (``optics`` conventions).
    nominal_defocus_angstrom : float or None
        Defocus target the acquisition software set (Å, positive = underfocus); None when the header
        does not carry one.
    fit_resolution_angstrom : float
        Resolution (Å) up to which the CTF model matches the Thon rings (``CtfFit``).
    pixel_size_angstrom : float
        Sampling on the specimen, Å per pixel.
    dose_header_e_per_angstrom2 : float or None
        Total exposure the header declares, e⁻/Å²; None when absent.
    mean_counts_per_pixel : float
        Mean value of the raw, gain-corrected, frame-summed micrograph, in electron counts per pixel.
    low_frequency_power_ratio : float
        Restored/raw power in the 200–40 Å band (:func:`low_frequency_power_ratio`).
    beyond_fit_power_ratio : float
        Restored/raw power beyond the fit resolution (:func:`power_beyond_ratio`).
    particle_positions_px : ndarray of float64, shape (n, 2)
        Particle centres as [y, x] in pixels, pixel centres at integer coordinates 0 … ny−1.
    particle_diameter_px : float
        Particle diameter d in pixels.
    image_shape_px : tuple of int
        (ny, nx) of the micrograph.
    excluded_area_mask : ndarray of bool, shape (ny, nx), or None
        True on carbon film or contamination (``picking.excluded_area_mask``); None when not measured.

    A non-finite measured value (NaN power ratio, …) makes the rule that reads it fail: a measurement
    that could not be made consistently is itself an inconsistency.
    """

    defocus_u_angstrom: float
    defocus_v_angstrom: float
    nominal_defocus_angstrom: float | None
    fit_resolution_angstrom: float
    pixel_size_angstrom: float
    dose_header_e_per_angstrom2: float | None
    mean_counts_per_pixel: float
    low_frequency_power_ratio: float
    beyond_fit_power_ratio: float
    particle_positions_px: FloatArray = field(compare=False)
    particle_diameter_px: float
    image_shape_px: tuple[int, int]
    excluded_area_mask: npt.NDArray[np.bool_] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        positions = np.asarray(self.particle_positions_px, dtype=np.float64)
        if positions.size == 0:
            positions = positions.reshape(0, 2)
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise ValueError(f"particle_positions_px must have shape (n, 2), got {positions.shape}")
        object.__setattr__(self, "particle_positions_px", positions)
        if not self.pixel_size_angstrom > 0:
            raise ValueError(f"pixel_size_angstrom must be positive, got {self.pixel_size_angstrom}")
        if not self.particle_diameter_px > 0:
            raise ValueError(f"particle_diameter_px must be positive, got {self.particle_diameter_px}")
        if len(self.image_shape_px) != 2 or min(self.image_shape_px) < 1:
            raise ValueError(f"image_shape_px must be (ny, nx) with positive sizes, got {self.image_shape_px}")
        if self.excluded_area_mask is not None:
            mask = np.asarray(self.excluded_area_mask, dtype=bool)
            if mask.shape != tuple(self.image_shape_px):
                raise ValueError(f"excluded_area_mask must have shape {self.image_shape_px}, got {mask.shape}")
            object.__setattr__(self, "excluded_area_mask", mask)


@dataclass(frozen=True)
class Rule:
    """One consistency rule.

    Attributes
    ----------
    name : str
        Stable identifier (snake_case), used as a key in reports and warehouses.
    statement : str
        The rule in one line, with its thresholds.
    physical_reason : str
        Why a healthy micrograph satisfies it.
    predicate : callable RuleInputs -> bool or None
        True when the rule holds, False when it fails, None when it cannot be evaluated.
    observe : callable RuleInputs -> str
        The observed value(s) the predicate judged, as text with units.
    """

    name: str
    statement: str
    physical_reason: str
    predicate: Callable[[RuleInputs], bool | None]
    observe: Callable[[RuleInputs], str]


@dataclass(frozen=True)
class RuleResult:
    """Outcome of one rule on one micrograph: ``status`` and the observed value as text."""

    name: str
    status: RuleStatus
    observed: str


# --- rule predicates ---------------------------------------------------------------------------------
def _mean_defocus_angstrom(x: RuleInputs) -> float:
    return 0.5 * (x.defocus_u_angstrom + x.defocus_v_angstrom)


def _defocus_in_range(x: RuleInputs) -> bool:
    return all(DEFOCUS_MIN_ANGSTROM <= d <= DEFOCUS_MAX_ANGSTROM for d in (x.defocus_u_angstrom, x.defocus_v_angstrom))


def _defocus_near_nominal(x: RuleInputs) -> bool | None:
    if x.nominal_defocus_angstrom is None:
        return None
    nominal = x.nominal_defocus_angstrom
    allowed = max(NOMINAL_DEFOCUS_RELATIVE_TOLERANCE * abs(nominal), NOMINAL_DEFOCUS_ABSOLUTE_TOLERANCE_ANGSTROM)
    return abs(_mean_defocus_angstrom(x) - nominal) <= allowed


def _astigmatism_limit_angstrom(x: RuleInputs) -> float:
    return max(ASTIGMATISM_ABSOLUTE_LIMIT_ANGSTROM, ASTIGMATISM_RELATIVE_LIMIT * abs(_mean_defocus_angstrom(x)))


def _astigmatism_plausible(x: RuleInputs) -> bool:
    return abs(x.defocus_u_angstrom - x.defocus_v_angstrom) <= _astigmatism_limit_angstrom(x)


def _fit_resolution_plausible(x: RuleInputs) -> bool:
    return 2.0 * x.pixel_size_angstrom <= x.fit_resolution_angstrom <= FIT_RESOLUTION_WORST_ANGSTROM


def _measured_dose_e_per_angstrom2(x: RuleInputs) -> float:
    return x.mean_counts_per_pixel / x.pixel_size_angstrom**2


def _dose_consistent(x: RuleInputs) -> bool | None:
    header = x.dose_header_e_per_angstrom2
    if header is None:
        return None
    if not header > 0:
        return False
    return abs(_measured_dose_e_per_angstrom2(x) - header) <= DOSE_RELATIVE_TOLERANCE * header


def _low_frequency_power_conserved(x: RuleInputs) -> bool:
    low, high = LOW_FREQUENCY_POWER_RATIO_RANGE
    return low <= x.low_frequency_power_ratio <= high


def _no_power_beyond_fit(x: RuleInputs) -> bool:
    return x.beyond_fit_power_ratio <= BEYOND_FIT_POWER_RATIO_MAX


def _min_separation_px(x: RuleInputs) -> float | None:
    positions = x.particle_positions_px
    if positions.shape[0] < 2:
        return None
    distances, _ = cKDTree(positions).query(positions, k=2)
    return float(np.min(distances[:, 1]))


def _particles_do_not_overlap(x: RuleInputs) -> bool | None:
    separation = _min_separation_px(x)
    if separation is None:
        return None
    return separation >= PARTICLE_MIN_SEPARATION_DIAMETERS * x.particle_diameter_px


def _min_edge_distance_px(x: RuleInputs) -> float | None:
    positions = x.particle_positions_px
    if positions.shape[0] == 0:
        return None
    ny, nx = x.image_shape_px
    y, xx = positions[:, 0], positions[:, 1]
    return float(np.min(np.minimum.reduce([y, xx, (ny - 1) - y, (nx - 1) - xx])))


def _particles_inside(x: RuleInputs) -> bool | None:
    edge = _min_edge_distance_px(x)
    if edge is None:
        return None
    return edge >= 0.5 * x.particle_diameter_px


def _particles_on_excluded_area(x: RuleInputs) -> int | None:
    """Number of picked centres on carbon/contamination; None without a mask or without particles."""
    if x.excluded_area_mask is None or x.particle_positions_px.shape[0] == 0:
        return None
    ny, nx = x.image_shape_px
    rows = np.clip(np.rint(x.particle_positions_px[:, 0]).astype(np.int64), 0, ny - 1)
    cols = np.clip(np.rint(x.particle_positions_px[:, 1]).astype(np.int64), 0, nx - 1)
    return int(np.count_nonzero(x.excluded_area_mask[rows, cols]))


def _excluded_fraction(x: RuleInputs) -> float:
    mask = x.excluded_area_mask
    return 0.0 if mask is None else float(np.count_nonzero(mask)) / mask.size


def _particles_outside_excluded_areas(x: RuleInputs) -> bool | None:
    on_excluded = _particles_on_excluded_area(x)
    return None if on_excluded is None else on_excluded == 0


def _text_or_none(value: float | None, fmt: str) -> str:
    return "no particles to compare" if value is None else fmt.format(value)


LOGIC_RULES: tuple[Rule, ...] = (
    Rule(
        name="defocus_in_range",
        statement="Both fitted defoci U and V lie between 0.2 µm and 6 µm underfocus.",
        physical_reason=(
            "Single-particle data are taken 0.5–3 µm underfocus: closer to focus the low-frequency phase "
            "contrast is too weak to see particles or fit Thon rings; beyond ~6 µm the rings are so dense "
            "that the spatial-coherence envelope erases them early and the fit becomes ambiguous.  A "
            "value outside the range (or overfocus, negative) points to a failed fit."
        ),
        predicate=_defocus_in_range,
        observe=lambda x: f"U = {x.defocus_u_angstrom:.0f} Å, V = {x.defocus_v_angstrom:.0f} Å",
    ),
    Rule(
        name="defocus_near_nominal",
        statement="Mean fitted defocus within max(25 % of nominal, 3000 Å) of the nominal defocus.",
        physical_reason=(
            "The acquisition software targets a defocus; stage height, ice thickness and autofocus error "
            "move the true value by a few thousand Å at most, so a larger gap means the fit locked onto the "
            "wrong Thon ring or the header is wrong.  Not applicable when the header has no nominal defocus "
            "(absence of evidence is neither a pass nor a fail)."
        ),
        predicate=_defocus_near_nominal,
        observe=lambda x: (
            "no nominal defocus in header"
            if x.nominal_defocus_angstrom is None
            else f"mean {_mean_defocus_angstrom(x):.0f} Å vs nominal {x.nominal_defocus_angstrom:.0f} Å"
        ),
    ),
    Rule(
        name="astigmatism_plausible",
        statement="U − V ≤ max(3000 Å, 30 % of the mean defocus).",
        physical_reason=(
            "After stigmator alignment, objective astigmatism is a few hundred Å; thousands of Å beyond the "
            "alignment tolerance indicate a mis-fit (elliptical rings fitted to drift or an ice-ring "
            "artefact)."
        ),
        predicate=_astigmatism_plausible,
        observe=lambda x: (
            f"U − V = {abs(x.defocus_u_angstrom - x.defocus_v_angstrom):.0f} Å "
            f"(limit {_astigmatism_limit_angstrom(x):.0f} Å)"
        ),
    ),
    Rule(
        name="fit_resolution_plausible",
        statement="CTF fit resolution between 2 × pixel size (Nyquist) and 30 Å.",
        physical_reason=(
            "No fit can extend beyond Nyquist (2 pixels per period); a fit that stops before 30 Å matched "
            "only the first rings, as for thick ice, strong drift or an empty/over-exposed image."
        ),
        predicate=_fit_resolution_plausible,
        observe=lambda x: f"{x.fit_resolution_angstrom:.2f} Å (Nyquist {2.0 * x.pixel_size_angstrom:.2f} Å)",
    ),
    Rule(
        name="dose_consistent",
        statement="Mean counts per pixel / pixel area within 25 % of the header dose.",
        physical_reason=(
            "A counting detector records electrons, so mean counts per pixel divided by the pixel area (Å²) "
            "is the exposure in e⁻/Å²; disagreement means a wrong gain reference, pixel size or header.  Not "
            "applicable without a header dose."
        ),
        predicate=_dose_consistent,
        observe=lambda x: (
            "no dose in header"
            if x.dose_header_e_per_angstrom2 is None
            else f"measured {_measured_dose_e_per_angstrom2(x):.2f} e⁻/Å² vs header "
            f"{x.dose_header_e_per_angstrom2:.2f} e⁻/Å²"
        ),
    ),
    Rule(
        name="restoration_conserves_low_frequency_power",
        statement="Restored/raw power in the 200–40 Å band lies in [0.5, 1.5].",
        physical_reason=(
            "The low-resolution band carries the particles' shape and the highest SNR; a restoration that "
            "doubles or halves its power changes what pickers and 2D classification see instead of "
            "correcting the CTF where it is known."
        ),
        predicate=_low_frequency_power_conserved,
        observe=lambda x: f"ratio {x.low_frequency_power_ratio:.3f}",
    ),
    Rule(
        name="no_power_beyond_fit_resolution",
        statement="Restored/raw power beyond the CTF fit resolution ≤ 1.05.",
        physical_reason=(
            "Beyond the fit resolution the CTF phases are unknown, so a correct restoration can only keep or "
            "damp that band; added power there is amplified noise or invented detail (5 % numerical slack)."
        ),
        predicate=_no_power_beyond_fit,
        observe=lambda x: f"ratio {x.beyond_fit_power_ratio:.3f}",
    ),
    Rule(
        name="particles_do_not_overlap",
        statement="Every pair of picked particles is at least 0.8 particle diameters apart.",
        physical_reason=(
            "Particles in a monolayer of ice cannot interpenetrate: centres closer than about one diameter "
            "are double picks or aggregates (0.8 allows for non-spherical shapes seen along their short "
            "axis).  Not applicable with fewer than two particles."
        ),
        predicate=_particles_do_not_overlap,
        observe=lambda x: _text_or_none(
            None if (s := _min_separation_px(x)) is None else s / x.particle_diameter_px,
            "closest pair {:.2f} diameters apart",
        ),
    ),
    Rule(
        name="particles_inside_micrograph",
        statement="Every picked centre lies at least one particle radius from each image edge.",
        physical_reason=(
            "A particle closer to the edge than its radius is cut off by the frame, and a box around it "
            "would be padded with pixels that carry no signal.  Not applicable with no particles."
        ),
        predicate=_particles_inside,
        observe=lambda x: _text_or_none(
            None if (e := _min_edge_distance_px(x)) is None else e / (0.5 * x.particle_diameter_px),
            "closest centre {:.2f} radii from an edge",
        ),
    ),
    Rule(
        name="particles_outside_carbon_and_contamination",
        statement="No picked centre lies where the 250 Å-smoothed counts are ≥ 15 % below the field's median.",
        physical_reason=(
            "Carbon film and contamination are thicker than the vitreous ice over the hole and let fewer "
            "electrons through (Beer–Lambert; 15 % fewer ⇔ ≈ 57 nm more material at λ_in ≈ 350 nm): "
            "blobs found there are film texture, frost or particles adsorbed to carbon, not single "
            "particles in thin ice.  Not applicable without particles or without a thickness map."
        ),
        predicate=_particles_outside_excluded_areas,
        observe=lambda x: (
            "not measured"
            if (n := _particles_on_excluded_area(x)) is None
            else f"{n} of {x.particle_positions_px.shape[0]} centres on carbon/contamination "
            f"({100.0 * _excluded_fraction(x):.1f} % of the field excluded)"
        ),
    ),
)


def evaluate_rules(inputs: RuleInputs, rules: Sequence[Rule] = LOGIC_RULES) -> tuple[RuleResult, ...]:
    """Evaluate each rule on ``inputs``.

    Parameters
    ----------
    inputs : RuleInputs
        Measurements of one micrograph.
    rules : sequence of Rule
        Rules to evaluate, ``LOGIC_RULES`` by default.

    Returns
    -------
    tuple of RuleResult
        One result per rule, in the order of ``rules``.
    """
    results = []
    for rule in rules:
        outcome = rule.predicate(inputs)
        status: RuleStatus = "not_applicable" if outcome is None else ("pass" if outcome else "fail")
        results.append(RuleResult(name=rule.name, status=status, observed=rule.observe(inputs)))
    return tuple(results)


def logic_score(results: Sequence[RuleResult]) -> float:
    """LogicScore = #pass / (#pass + #fail); ``not_applicable`` rules count in neither.

    Raises
    ------
    ScoreDomainError
        When no rule was applicable (the fraction is undefined).
    """
    passed = sum(r.status == "pass" for r in results)
    applicable = sum(r.status in ("pass", "fail") for r in results)
    if applicable == 0:
        raise ScoreDomainError("no applicable rule: LogicScore is undefined")
    return passed / applicable


# --- spectral measurements ---------------------------------------------------------------------------
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


# --- reproducibility and meta-stability ----------------------------------------------------------------
def _finite_nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ScoreDomainError(f"{name} must be finite and >= 0, got {value}")
    return value


def reproducibility_score(relative_deviations: Mapping[str, float], tolerances: Mapping[str, float]) -> float:
    """ΔRepro = min_q exp(−δ_q / τ_q) = exp(−max_q δ_q / τ_q): the least reproducible quantity sets it.

    Each quantity q (defocus on independent sub-crops, the restoration on an independent noise split,
    the compute cost, …) is re-measured under a perturbation; δ_q ≥ 0 is its deviation and τ_q the
    deviation regarded as typical.  δ = 0 scores 1, δ = τ scores e⁻¹ ≈ 0.37, smoothly.  A result is
    reproducible only if every part of it reproduces — a restoration that is mostly noise is not redeemed
    by a CTF fit that repeats, nor a perfect image by a defocus that changes between sub-crops — so the
    weakest link sets the score (:func:`limiting_quantity` names it).  An average would let quantities
    that barely vary between exposures dilute the one that does: on simulated sessions the mean of the
    terms ranked 160 exposures by true restored quality with Spearman 0.55, the weakest link with 0.93
    (``benchmarks/bench_quality_v.py``).

    Parameters
    ----------
    relative_deviations : mapping str -> float
        δ_q, dimensionless, finite and ≥ 0.
    tolerances : mapping str -> float
        τ_q > 0 for every key of ``relative_deviations`` (extra keys are ignored).

    Raises
    ------
    ScoreDomainError
        With no deviations, a deviation that is NaN/negative, or a missing or non-positive tolerance.
    """
    return math.exp(-max(_scaled_deviations(relative_deviations, tolerances).values()))


def limiting_quantity(relative_deviations: Mapping[str, float], tolerances: Mapping[str, float]) -> str:
    """The quantity q with the largest δ_q/τ_q: the one that sets :func:`reproducibility_score`."""
    scaled = _scaled_deviations(relative_deviations, tolerances)
    return max(scaled, key=scaled.__getitem__)


def _scaled_deviations(relative_deviations: Mapping[str, float], tolerances: Mapping[str, float]) -> dict[str, float]:
    if not relative_deviations:
        raise ScoreDomainError("no relative deviations: reproducibility is undefined")
    scaled = {}
    for name, deviation in relative_deviations.items():
        delta = _finite_nonnegative(f"relative deviation of {name!r}", deviation)
        if name not in tolerances:
            raise ScoreDomainError(f"no tolerance for {name!r}")
        tau = float(tolerances[name])
        if not (math.isfinite(tau) and tau > 0):
            raise ScoreDomainError(f"tolerance of {name!r} must be finite and > 0, got {tau}")
        scaled[name] = delta / tau
    return scaled


META_NOT_CONVERGED_FACTOR = 0.5
META_SINGLE_ITERATION_SCORE = 0.5


def meta_stability_score(history: Sequence[Mapping[str, float]], sigmas: Mapping[str, float], converged: bool) -> float:
    """⋄Meta = f · exp(−(1/N) Σ_q |x_q⁽ᵀ⁾ − x_q⁽ᵀ⁻¹⁾| / σ_q).

    ``history[t]`` holds the quantities x_q the self-evaluation loop estimated at iteration t; the score
    measures the last step's change in units of each quantity's noise scale σ_q: no change scores 1, a
    change of one σ on average scores e⁻¹.  f = 1 when the loop met its own convergence criterion and
    f = ``META_NOT_CONVERGED_FACTOR`` (0.5) when it stopped at its iteration limit instead: the last step
    says how far it was from stable, the missing convergence that the trend may not hold.

    A one-iteration history has no step to measure: stability is unobserved, and the score is
    ``META_SINGLE_ITERATION_SCORE`` (0.5, the midpoint between "observed stable" and "observed
    diverging"), times f.

    Parameters
    ----------
    history : sequence of mapping str -> float
        Per-iteration estimates, oldest first; the last two must have the same keys.
    sigmas : mapping str -> float
        σ_q > 0 for every quantity of the last iteration, in the quantity's units.
    converged : bool
        Whether the loop met its convergence criterion.

    Raises
    ------
    ScoreDomainError
        For an empty history, mismatched keys, non-finite values or a missing/non-positive σ.
    """
    if len(history) == 0:
        raise ScoreDomainError("empty history: meta-stability is undefined")
    factor = 1.0 if converged else META_NOT_CONVERGED_FACTOR
    last = history[-1]
    if not last:
        raise ScoreDomainError("the last iteration holds no quantity")
    for name, value in last.items():
        if not math.isfinite(float(value)):
            raise ScoreDomainError(f"{name!r} is not finite in the last iteration: {value}")
    if len(history) == 1:
        return META_SINGLE_ITERATION_SCORE * factor
    previous = history[-2]
    if set(previous) != set(last):
        raise ScoreDomainError(
            f"the last two iterations estimate different quantities: {sorted(previous)} vs {sorted(last)}"
        )
    steps = []
    for name, value in last.items():
        sigma = float(sigmas[name]) if name in sigmas else math.nan
        if not (math.isfinite(sigma) and sigma > 0):
            raise ScoreDomainError(f"sigma of {name!r} must be given, finite and > 0")
        before = float(previous[name])
        if not math.isfinite(before):
            raise ScoreDomainError(f"{name!r} is not finite in the previous iteration: {before}")
        steps.append(abs(float(value) - before) / sigma)
    return factor * math.exp(-sum(steps) / len(steps))


# --- aggregation ---------------------------------------------------------------------------------------
def _unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ScoreDomainError(f"{name} must lie in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class ScoreComponents:
    """The five normalised components of one batch, each in [0, 1].

    Attributes
    ----------
    logic : float
        LogicScore, fraction of applicable rules that hold.
    novelty : float
        Calibrated novelty (empirical CDF of nearest-neighbour distances).
    impact : float
        ImpactFore after log normalisation (:func:`impact_normalised`).
    repro : float
        ΔRepro (:func:`reproducibility_score`).
    meta : float
        ⋄Meta (:func:`meta_stability_score`).

    Raises
    ------
    ScoreDomainError
        If a component is NaN, infinite or outside [0, 1].
    """

    logic: float
    novelty: float
    impact: float
    repro: float
    meta: float

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _unit_interval(f.name, getattr(self, f.name)))


COMPONENT_NAMES = ("logic", "novelty", "impact", "repro", "meta")


@dataclass(frozen=True)
class ScoreWeights:
    """Weights wᵢ of the five components, stored normalised so that Σ wᵢ = 1.

    Construct with any non-negative weights (at least one positive): ``ScoreWeights(2, 1, 1, 0, 0, "v2")``
    stores (0.5, 0.25, 0.25, 0, 0).  ``version`` names the weighting so that scores computed with
    different weights are never compared unknowingly.

    Raises
    ------
    ScoreDomainError
        On a negative or non-finite weight, all weights zero, or an empty version.
    """

    logic: float
    novelty: float
    impact: float
    repro: float
    meta: float
    version: str

    def __post_init__(self) -> None:
        raw = [float(getattr(self, name)) for name in COMPONENT_NAMES]
        for name, w in zip(COMPONENT_NAMES, raw, strict=True):
            if not (math.isfinite(w) and w >= 0):
                raise ScoreDomainError(f"weight {name} must be finite and >= 0, got {w}")
        total = math.fsum(raw)
        if not total > 0:
            raise ScoreDomainError("at least one weight must be positive")
        if not self.version:
            raise ScoreDomainError("ScoreWeights.version must be a non-empty string")
        for name, w in zip(COMPONENT_NAMES, raw, strict=True):
            object.__setattr__(self, name, w / total)

    @classmethod
    def equal(cls, version: str = "equal-v1") -> ScoreWeights:
        """All five components weighted 1/5."""
        return cls(1.0, 1.0, 1.0, 1.0, 1.0, version)


def quality_v(components: ScoreComponents, weights: ScoreWeights) -> float:
    """V = Σᵢ wᵢ·cᵢ ∈ [0, 1] (research proposal, evaluation module).

    The sum is clipped to [0, 1] only to absorb floating-point rounding of Σ wᵢ = 1.
    """
    v = math.fsum(getattr(weights, name) * getattr(components, name) for name in COMPONENT_NAMES)
    return min(1.0, max(0.0, v))


def _logistic(z: float) -> float:
    """σ(z) = 1 / (1 + e^(−z)), evaluated without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def hyperscore(v: float, beta: float = 5.0, gamma: float = -math.log(2.0), kappa: float = 2.0) -> float:
    """HyperScore = 100 · [1 + σ(β·ln V + γ)^κ]  (research proposal, evaluation module).

    For β > 0 and κ > 0 it is strictly increasing in V: from 100 at V = 0 (the limit, since
    β·ln V → −∞ makes σ → 0; returned exactly, without evaluating ln 0) to 100·(1 + σ(γ)^κ) at V = 1.
    With the defaults σ(−ln 2) = 1/3, so HyperScore(1) = 100·(1 + 1/9) = 111.11…; for any γ it stays
    below 200.

    Parameters
    ----------
    v : float
        V ∈ [0, 1], from :func:`quality_v`.
    beta : float
        β > 0, sensitivity to ln V.
    gamma : float
        γ, offset of the logistic (default −ln 2).
    kappa : float
        κ > 0, power-boosting exponent.

    Raises
    ------
    ScoreDomainError
        If V is NaN, negative or above 1, or β, κ are not positive, or γ not finite.
    """
    v = _unit_interval("V", v)
    if not (math.isfinite(beta) and beta > 0):
        raise ScoreDomainError(f"beta must be finite and > 0, got {beta}")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ScoreDomainError(f"kappa must be finite and > 0, got {kappa}")
    if not math.isfinite(gamma):
        raise ScoreDomainError(f"gamma must be finite, got {gamma}")
    if v == 0.0:
        return 100.0
    return 100.0 * (1.0 + float(_logistic(beta * math.log(v) + gamma) ** kappa))


def impact_normalised(impact_citations: float, max_citations: float) -> float:
    """Impact = ln(1 + x) / ln(1 + x_max), clipped to 1 for x > x_max.

    Log compression follows the heavy-tailed (log-normal) citation distribution (Radicchi, Fortunato &
    Castellano 2008, PNAS 105:17268): one more citation matters more for a rarely cited paper.  x_max is
    the reference scale (e.g. the largest 5-year count in the citation graph); a forecast above it
    saturates at 1.

    Parameters
    ----------
    impact_citations : float
        x ≥ 0, forecast citations (ImpactFore).
    max_citations : float
        x_max > 0, the count that maps to 1.

    Raises
    ------
    ScoreDomainError
        If x is NaN/negative/infinite or x_max is not positive and finite.
    """
    x = _finite_nonnegative("impact_citations", impact_citations)
    x_max = float(max_citations)
    if not (math.isfinite(x_max) and x_max > 0):
        raise ScoreDomainError(f"max_citations must be finite and > 0, got {max_citations}")
    return min(1.0, math.log1p(x) / math.log1p(x_max))
