"""LogicScore: consistency rules on one micrograph's CTF fit, header, restorations and picked particles.

LogicScore is the fraction of *applicable* rules (:data:`LOGIC_RULES`) that hold.  A rule that cannot be
evaluated (no nominal defocus in the header, fewer than two particles, …) is reported ``'not_applicable'``
and leaves both numerator and denominator.  Thresholds are named module constants; each rule's
``physical_reason`` says why a healthy micrograph satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from cryodecon_science.scoring.components import ScoreDomainError

FloatArray = npt.NDArray[np.float64]
RuleStatus = Literal["pass", "fail", "not_applicable"]

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
        Restored/raw power in the 200–40 Å band
        (:func:`~cryodecon_science.scoring.power_ratios.low_frequency_power_ratio`).
    beyond_fit_power_ratio : float
        Restored/raw power beyond the fit resolution
        (:func:`~cryodecon_science.scoring.power_ratios.power_beyond_ratio`).
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
