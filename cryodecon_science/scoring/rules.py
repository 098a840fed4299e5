"""LogicScore: consistency rules on one micrograph's CTF fit, header, restorations and packing of particles.

LogicScore is the fraction of *applicable* rules (:data:`LOGIC_RULES`) that hold.  A rule that cannot be
evaluated (no nominal defocus in the header, fewer than two particles, …) is reported ``'not_applicable'``
and leaves both numerator and denominator.  Thresholds are named module constants; each rule's
``physical_reason`` says why a healthy micrograph satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from cryodecon_science.picking.region_graph import PackingFacts
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
CROWDED_FRACTION_MAX = 0.25
AGGREGATE_FRACTION_MAX = 0.20
NEAR_CARBON_FRACTION_MAX = 0.30
DENSITY_ROBUST_Z_MAX = 3.5
DENSITY_MIN_HOLES = 4
_MAD_TO_SIGMA = 1.4826


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
    packing : PackingFacts or None
        What the decomposition graph says about the micrograph's picks (``picking.region_graph``); None
        when the micrograph was not picked.

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
    packing: PackingFacts | None = None

    def __post_init__(self) -> None:
        if not self.pixel_size_angstrom > 0:
            raise ValueError(f"pixel_size_angstrom must be positive, got {self.pixel_size_angstrom}")


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


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


def _crowded_share(x: RuleInputs) -> float | None:
    return None if x.packing is None or x.packing.kept < 2 else _share(x.packing.crowded, x.packing.kept)


def _aggregate_share(x: RuleInputs) -> float | None:
    return None if x.packing is None else _share(x.packing.aggregates, x.packing.candidates)


def _near_carbon_share(x: RuleInputs) -> float | None:
    return None if x.packing is None else _share(x.packing.near_carbon, x.packing.kept)


def _density_robust_z(x: RuleInputs) -> float | None:
    """Modified z-score (Iglewicz & Hoaglin 1993) of the micrograph's hole density among the batch's holes."""
    if x.packing is None or len(x.packing.batch_hole_densities_per_um2) < DENSITY_MIN_HOLES:
        return None
    densities = np.asarray(x.packing.batch_hole_densities_per_um2, dtype=np.float64)
    median = float(np.median(densities))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(densities - median)))
    deviation = x.packing.hole_density_per_um2 - median
    if spread == 0.0:
        return 0.0 if deviation == 0.0 else float("inf")
    return deviation / spread


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _text_or_none(value: float | None, fmt: str) -> str:
    return "not applicable" if value is None else fmt.format(value)


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
        name="particles_not_crowded",
        statement="At most 25 % of the kept particles have a neighbour closer than one particle diameter.",
        physical_reason=(
            "Particles spread in a monolayer of ice mostly keep their distance; when many touch, the sample "
            "is too concentrated (or the picker splits particles), and overlapping projections blur 2D "
            "classes.  The picker only keeps centres 0.8 diameters apart, so this is not its guarantee.  Not "
            "applicable with fewer than two kept particles."
        ),
        predicate=lambda x: _at_most(_crowded_share(x), CROWDED_FRACTION_MAX),
        observe=lambda x: _text_or_none(_crowded_share(x), "{:.0%} of the kept particles touch a neighbour"),
    ),
    Rule(
        name="few_aggregates",
        statement="At most 20 % of the candidate picks belong to aggregates (groups of ≥ 3 touching picks).",
        physical_reason=(
            "Aggregation (denaturation at the air–water interface, too high a concentration) puts particles "
            "in clumps that cannot be extracted as single particles; a field dominated by clumps is a "
            "sample problem the operator should see.  Not applicable without candidate picks."
        ),
        predicate=lambda x: _at_most(_aggregate_share(x), AGGREGATE_FRACTION_MAX),
        observe=lambda x: _text_or_none(_aggregate_share(x), "{:.0%} of the candidates in aggregates"),
    ),
    Rule(
        name="particles_clear_of_carbon_edge",
        statement="At most 30 % of the kept particles lie within one particle diameter of the support carbon.",
        physical_reason=(
            "Ice thins or thickens towards the hole's edge and the carbon's scattering reaches boxes next to "
            "it; a micrograph whose particles crowd the edge was centred badly on its hole.  Not applicable "
            "without kept particles."
        ),
        predicate=lambda x: _at_most(_near_carbon_share(x), NEAR_CARBON_FRACTION_MAX),
        observe=lambda x: _text_or_none(_near_carbon_share(x), "{:.0%} of the kept particles near carbon"),
    ),
    Rule(
        name="particle_density_typical",
        statement="The foil hole's particles per µm² lie within a modified z-score of 3.5 of the batch's holes.",
        physical_reason=(
            "Holes of one grid region hold similar concentrations; an outlying hole (empty, or packed with "
            "junk the picker took for particles) is a local problem of ice or picking.  The modified z-score "
            "uses the median and MAD, so one outlier does not hide itself.  Not applicable with fewer than "
            "four holes in the batch."
        ),
        predicate=lambda x: _at_most(None if (z := _density_robust_z(x)) is None else abs(z), DENSITY_ROBUST_Z_MAX),
        observe=lambda x: _text_or_none(_density_robust_z(x), "modified z-score {:+.2f}"),
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
