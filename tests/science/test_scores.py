"""Known values of HyperScore, V, the component scores and every logic rule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from cryodecon_science.picking import excluded_area_mask
from cryodecon_science.picking.region_graph import PackingFacts
from cryodecon_science.scoring import (
    LOGIC_RULES,
    RuleInputs,
    RuleResult,
    ScoreComponents,
    ScoreDomainError,
    ScoreWeights,
    evaluate_rules,
    hyperscore,
    impact_normalised,
    limiting_quantity,
    logic_score,
    low_frequency_power_ratio,
    meta_stability_score,
    power_beyond_ratio,
    quality_v,
    reproducibility_score,
)

# --- HyperScore --------------------------------------------------------------------------------------


def test_hyperscore_at_v_one_is_hand_computed() -> None:
    # σ(5·ln 1 − ln 2) = 1 / (1 + 2) = 1/3;  100·(1 + (1/3)²) = 100 + 100/9.
    assert hyperscore(1.0) == pytest.approx(100.0 + 100.0 / 9.0, rel=1e-12)


def test_hyperscore_at_v_half_is_hand_computed() -> None:
    # 5·ln ½ − ln 2 = −6 ln 2, σ = 1/(1 + 2⁶) = 1/65;  100·(1 + 1/65²).
    assert hyperscore(0.5) == pytest.approx(100.0 * (1.0 + 1.0 / 65.0**2), rel=1e-12)


def test_hyperscore_with_other_parameters_is_hand_computed() -> None:
    # β = 1, γ = 0, κ = 1 at V = 1: σ(0) = ½ → 150.
    assert hyperscore(1.0, beta=1.0, gamma=0.0, kappa=1.0) == pytest.approx(150.0, rel=1e-12)


def test_hyperscore_at_zero_is_exactly_the_limit() -> None:
    assert hyperscore(0.0) == 100.0


def test_hyperscore_is_monotone_and_bounded() -> None:
    grid = np.linspace(0.0, 1.0, 401)
    values = np.array([hyperscore(float(v)) for v in grid])
    assert np.all(values >= 100.0) and np.all(values < 200.0)
    assert np.all(np.diff(values) >= 0.0)
    # Near V = 0 the increments underflow below float resolution of 100; above 0.2 they are resolvable.
    strict = values[grid >= 0.2]
    assert np.all(np.diff(strict) > 0.0)
    for gamma in (-3.0, 0.0, 3.0):
        assert 100.0 <= hyperscore(1.0, gamma=gamma) < 200.0


@pytest.mark.parametrize("bad", [math.nan, -1e-9, 1.0 + 1e-9, math.inf, -math.inf])
def test_hyperscore_rejects_values_outside_the_unit_interval(bad: float) -> None:
    with pytest.raises(ScoreDomainError):
        hyperscore(bad)


def test_hyperscore_rejects_non_positive_beta_and_kappa() -> None:
    with pytest.raises(ScoreDomainError):
        hyperscore(0.5, beta=0.0)
    with pytest.raises(ScoreDomainError):
        hyperscore(0.5, kappa=-1.0)


def test_score_domain_error_is_a_value_error() -> None:
    assert issubclass(ScoreDomainError, ValueError)


# --- components, weights, V --------------------------------------------------------------------------


def test_components_are_validated() -> None:
    with pytest.raises(ScoreDomainError):
        ScoreComponents(logic=math.nan, novelty=0.5, impact=0.5, repro=0.5, meta=0.5)
    with pytest.raises(ScoreDomainError):
        ScoreComponents(logic=0.5, novelty=1.5, impact=0.5, repro=0.5, meta=0.5)
    with pytest.raises(ScoreDomainError):
        ScoreComponents(logic=0.5, novelty=0.5, impact=-0.1, repro=0.5, meta=0.5)


def test_weights_are_normalised_and_validated() -> None:
    w = ScoreWeights(2.0, 1.0, 1.0, 0.0, 0.0, version="test-v1")
    assert (w.logic, w.novelty, w.impact, w.repro, w.meta) == (0.5, 0.25, 0.25, 0.0, 0.0)
    assert ScoreWeights.equal().logic == pytest.approx(0.2)
    with pytest.raises(ScoreDomainError):
        ScoreWeights(-1.0, 1.0, 1.0, 1.0, 1.0, version="bad")
    with pytest.raises(ScoreDomainError):
        ScoreWeights(0.0, 0.0, 0.0, 0.0, 0.0, version="bad")
    with pytest.raises(ScoreDomainError):
        ScoreWeights(1.0, 1.0, 1.0, 1.0, 1.0, version="")


def test_quality_v_is_the_weighted_sum() -> None:
    c = ScoreComponents(logic=1.0, novelty=0.5, impact=0.2, repro=0.8, meta=0.6)
    assert quality_v(c, ScoreWeights.equal()) == pytest.approx((1.0 + 0.5 + 0.2 + 0.8 + 0.6) / 5.0)
    # 0.5·1 + 0.25·0.5 + 0.25·0.2 = 0.675
    assert quality_v(c, ScoreWeights(2.0, 1.0, 1.0, 0.0, 0.0, version="t")) == pytest.approx(0.675)
    ones = ScoreComponents(1.0, 1.0, 1.0, 1.0, 1.0)
    weights = ScoreWeights(0.1, 0.7, 0.3, 0.3, 0.3, version="t")
    assert quality_v(ones, weights) <= 1.0
    assert hyperscore(quality_v(ones, weights)) == pytest.approx(100.0 + 100.0 / 9.0)


def test_impact_normalised() -> None:
    assert impact_normalised(0.0, 99.0) == 0.0
    assert impact_normalised(99.0, 99.0) == pytest.approx(1.0)
    assert impact_normalised(9.0, 99.0) == pytest.approx(0.5)  # ln 10 / ln 100
    assert impact_normalised(500.0, 99.0) == 1.0
    for bad in (math.nan, -1.0):
        with pytest.raises(ScoreDomainError):
            impact_normalised(bad, 99.0)
    with pytest.raises(ScoreDomainError):
        impact_normalised(1.0, 0.0)


# --- reproducibility and meta-stability ------------------------------------------------------------------


def test_reproducibility_score_arithmetic() -> None:
    deviations, tolerances = {"defocus": 0.0, "resolution": 0.1}, {"defocus": 0.1, "resolution": 0.1}
    assert reproducibility_score(deviations, tolerances) == pytest.approx(math.exp(-1.0))  # weakest link
    assert limiting_quantity(deviations, tolerances) == "resolution"
    assert reproducibility_score({"a": 0.3, "b": 0.5}, {"a": 0.1, "b": 1.0}) == pytest.approx(math.exp(-3.0))
    assert limiting_quantity({"a": 0.3, "b": 0.5}, {"a": 0.1, "b": 1.0}) == "a"
    assert reproducibility_score({"a": 0.2}, {"a": 0.1, "unused": 1.0}) == pytest.approx(math.exp(-2.0))


def test_reproducibility_score_rejects_bad_input() -> None:
    with pytest.raises(ScoreDomainError):
        reproducibility_score({}, {})
    with pytest.raises(ScoreDomainError):
        reproducibility_score({"a": -0.1}, {"a": 0.1})
    with pytest.raises(ScoreDomainError):
        reproducibility_score({"a": 0.1}, {"b": 0.1})
    with pytest.raises(ScoreDomainError):
        reproducibility_score({"a": 0.1}, {"a": 0.0})
    with pytest.raises(ScoreDomainError):
        reproducibility_score({"a": math.nan}, {"a": 0.1})


def test_meta_stability_score_arithmetic() -> None:
    history = [{"x": 0.0, "y": 5.0}, {"x": 1.0, "y": 2.0}, {"x": 1.1, "y": 2.0}]
    sigmas = {"x": 0.1, "y": 1.0}
    # last step: |0.1|/0.1 = 1 and 0/1 = 0 → mean 0.5
    assert meta_stability_score(history, sigmas, converged=True) == pytest.approx(math.exp(-0.5))
    assert meta_stability_score(history, sigmas, converged=False) == pytest.approx(0.5 * math.exp(-0.5))
    assert meta_stability_score([{"x": 1.0}, {"x": 1.0}], {"x": 1.0}, converged=True) == 1.0


def test_meta_stability_score_single_iteration_and_errors() -> None:
    assert meta_stability_score([{"x": 1.0}], {"x": 1.0}, converged=True) == 0.5
    assert meta_stability_score([{"x": 1.0}], {"x": 1.0}, converged=False) == 0.25
    with pytest.raises(ScoreDomainError):
        meta_stability_score([], {}, converged=True)
    with pytest.raises(ScoreDomainError):
        meta_stability_score([{"x": 1.0}, {"y": 1.0}], {"x": 1.0, "y": 1.0}, converged=True)
    with pytest.raises(ScoreDomainError):
        meta_stability_score([{"x": 1.0}, {"x": 2.0}], {}, converged=True)
    with pytest.raises(ScoreDomainError):
        meta_stability_score([{"x": 1.0}, {"x": math.nan}], {"x": 1.0}, converged=True)


# --- spectral measurements -----------------------------------------------------------------------------


def _filtered(image: np.ndarray, pixel_size_angstrom: float, gain_of_k: object) -> np.ndarray:
    spectrum = np.fft.fft2(image)
    ky = np.fft.fftfreq(image.shape[0], d=pixel_size_angstrom)[:, None]
    kx = np.fft.fftfreq(image.shape[1], d=pixel_size_angstrom)[None, :]
    k = np.hypot(ky, kx)
    return np.real(np.fft.ifft2(spectrum * gain_of_k(k)))  # type: ignore[operator]


def _reference_band_ratio(raw: np.ndarray, restored: np.ndarray, pixel: float, mask_of_k: object) -> float:
    """Independent full-plane fft2 computation of Σ|F_restored|² / Σ|F_raw|² over a band."""
    ky = np.fft.fftfreq(raw.shape[0], d=pixel)[:, None]
    kx = np.fft.fftfreq(raw.shape[1], d=pixel)[None, :]
    mask = mask_of_k(np.hypot(ky, kx))  # type: ignore[operator]
    return float(
        np.sum(np.abs(np.fft.fft2(restored - restored.mean())[mask]) ** 2)
        / np.sum(np.abs(np.fft.fft2(raw - raw.mean())[mask]) ** 2)
    )


def test_power_ratios_of_a_low_pass_filter() -> None:
    pixel = 2.0
    raw = np.random.default_rng(0).normal(size=(128, 96))
    # Keep everything coarser than 30 Å: the 200–40 Å band is untouched, nothing remains beyond 20 Å.
    restored = _filtered(raw, pixel, lambda k: (k <= 1.0 / 30.0).astype(float))
    assert low_frequency_power_ratio(raw, restored, pixel) == pytest.approx(1.0, rel=1e-9)
    assert power_beyond_ratio(raw, restored, pixel, cutoff_angstrom=20.0) == pytest.approx(0.0, abs=1e-12)
    assert low_frequency_power_ratio(raw, 2.0 * raw, pixel) == pytest.approx(4.0, rel=1e-12)


def test_power_ratios_match_a_full_plane_computation() -> None:
    pixel = 1.5
    raw = np.random.default_rng(1).normal(size=(64, 80))
    restored = _filtered(raw, pixel, lambda k: 1.0 + 3.0 * k)
    expected_low = _reference_band_ratio(raw, restored, pixel, lambda k: (k >= 1 / 200) & (k <= 1 / 40))
    expected_high = _reference_band_ratio(raw, restored, pixel, lambda k: k > 1 / 8.0)
    assert low_frequency_power_ratio(raw, restored, pixel) == pytest.approx(expected_low, rel=1e-9)
    assert power_beyond_ratio(raw, restored, pixel, 8.0) == pytest.approx(expected_high, rel=1e-9)
    assert power_beyond_ratio(raw, restored, pixel, 8.0) > 1.05


def test_power_ratios_reject_bad_input() -> None:
    raw = np.random.default_rng(2).normal(size=(32, 32))
    with pytest.raises(ValueError, match="same shape"):
        low_frequency_power_ratio(raw, raw[:16], 1.0)
    with pytest.raises(ValueError, match="no frequency"):
        power_beyond_ratio(raw, raw, 1.0, cutoff_angstrom=1.0)  # finer than the corner, √2·Nyquist
    with pytest.raises(ValueError, match="no power"):
        low_frequency_power_ratio(np.ones((32, 32)), raw, 1.0, band_angstrom=(16.0, 4.0))


# --- logic rules -----------------------------------------------------------------------------------------


def _good_inputs() -> RuleInputs:
    """A healthy micrograph: every rule holds."""
    return RuleInputs(
        defocus_u_angstrom=15_500.0,
        defocus_v_angstrom=14_500.0,
        nominal_defocus_angstrom=16_000.0,
        fit_resolution_angstrom=4.2,
        pixel_size_angstrom=1.0,
        dose_header_e_per_angstrom2=40.0,
        mean_counts_per_pixel=42.0,
        low_frequency_power_ratio=1.1,
        beyond_fit_power_ratio=0.8,
        packing=_GOOD_PACKING,
    )


# 40 candidates, 36 kept: 4 kept particles touching a neighbour, 2 candidates in an aggregate, 3 near the
# carbon; the micrograph's hole at 30 particles/µm² among holes at 26–34 (robust z ≈ 0).
_GOOD_PACKING = PackingFacts(
    candidates=40,
    kept=36,
    crowded=4,
    aggregates=2,
    near_carbon=3,
    hole_density_per_um2=30.0,
    batch_hole_densities_per_um2=(26.0, 28.0, 30.0, 31.0, 34.0),
)


def _packing(**change: Any) -> PackingFacts:
    return dataclasses.replace(_GOOD_PACKING, **change)


def _statuses(inputs: RuleInputs) -> dict[str, str]:
    return {r.name: r.status for r in evaluate_rules(inputs)}


def test_rule_catalogue_is_complete_and_documented() -> None:
    names = [rule.name for rule in LOGIC_RULES]
    assert len(set(names)) == len(names)
    assert set(names) >= {
        "defocus_in_range",
        "defocus_near_nominal",
        "astigmatism_plausible",
        "fit_resolution_plausible",
        "dose_consistent",
        "restoration_conserves_low_frequency_power",
        "no_power_beyond_fit_resolution",
        "particles_not_crowded",
        "few_aggregates",
        "particles_clear_of_carbon_edge",
        "particle_density_typical",
    }
    for rule in LOGIC_RULES:
        assert rule.statement and "\n" not in rule.statement
        assert len(rule.physical_reason) > 40


def test_every_rule_passes_on_a_healthy_micrograph() -> None:
    results = evaluate_rules(_good_inputs())
    assert {r.status for r in results} == {"pass"}
    assert logic_score(results) == 1.0
    assert all(r.observed for r in results)


FAILURES = [
    (
        "defocus_in_range",
        {"defocus_u_angstrom": 1_500.0, "defocus_v_angstrom": 1_000.0, "nominal_defocus_angstrom": None},
    ),
    (
        "defocus_in_range",
        {"defocus_u_angstrom": 65_000.0, "defocus_v_angstrom": 64_000.0, "nominal_defocus_angstrom": None},
    ),
    ("defocus_in_range", {"defocus_u_angstrom": -5_000.0, "defocus_v_angstrom": -5_500.0}),  # overfocus
    ("defocus_near_nominal", {"nominal_defocus_angstrom": 25_000.0}),  # 10 000 Å off, allowed 6 250 Å
    (
        "astigmatism_plausible",
        {"defocus_u_angstrom": 18_000.0, "defocus_v_angstrom": 13_000.0},
    ),  # 5000 > 4650
    ("fit_resolution_plausible", {"fit_resolution_angstrom": 1.9}),  # beyond Nyquist (2 Å)
    ("fit_resolution_plausible", {"fit_resolution_angstrom": 31.0}),
    ("dose_consistent", {"mean_counts_per_pixel": 51.0}),  # 27.5 % above 40 e⁻/Å²
    ("dose_consistent", {"pixel_size_angstrom": 1.2}),  # same counts over a larger pixel: 29 e⁻/Å²
    ("restoration_conserves_low_frequency_power", {"low_frequency_power_ratio": 1.6}),
    ("restoration_conserves_low_frequency_power", {"low_frequency_power_ratio": 0.4}),
    ("restoration_conserves_low_frequency_power", {"low_frequency_power_ratio": math.nan}),
    ("no_power_beyond_fit_resolution", {"beyond_fit_power_ratio": 1.06}),
    ("particles_not_crowded", {"packing": _packing(crowded=10)}),  # 28 % of 36 touch a neighbour
    ("few_aggregates", {"packing": _packing(aggregates=9)}),  # 22.5 % of 40 candidates
    ("particles_clear_of_carbon_edge", {"packing": _packing(near_carbon=11)}),  # 31 % of 36
    ("particle_density_typical", {"packing": _packing(hole_density_per_um2=60.0)}),  # crowded hole
    ("particle_density_typical", {"packing": _packing(hole_density_per_um2=2.0)}),  # an almost empty hole
]


@pytest.mark.parametrize(("rule", "change"), FAILURES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(FAILURES)])
def test_each_rule_fails_on_its_violation(rule: str, change: dict[str, Any]) -> None:
    assert _statuses(dataclasses.replace(_good_inputs(), **change))[rule] == "fail"


def test_boundaries_are_inclusive() -> None:
    edge = dataclasses.replace(
        _good_inputs(),
        defocus_u_angstrom=60_000.0,
        defocus_v_angstrom=60_000.0,
        nominal_defocus_angstrom=48_000.0,  # 25 % of 48 000 = 12 000 Å exactly
        fit_resolution_angstrom=30.0,
        mean_counts_per_pixel=50.0,  # exactly +25 %
        low_frequency_power_ratio=1.5,
        beyond_fit_power_ratio=1.05,
        packing=_packing(candidates=50, kept=40, crowded=10, aggregates=10, near_carbon=12),  # 25, 20, 30 %
    )
    assert set(_statuses(edge).values()) == {"pass"}


def test_rules_that_cannot_be_evaluated_are_not_applicable() -> None:
    no_header = dataclasses.replace(
        _good_inputs(),
        nominal_defocus_angstrom=None,
        dose_header_e_per_angstrom2=None,
        packing=_packing(kept=1, crowded=0, near_carbon=0, batch_hole_densities_per_um2=(30.0, 31.0, 29.0)),
    )
    statuses = _statuses(no_header)
    assert statuses["defocus_near_nominal"] == "not_applicable"
    assert statuses["dose_consistent"] == "not_applicable"
    assert statuses["particles_not_crowded"] == "not_applicable"  # one kept particle cannot crowd
    assert statuses["particle_density_typical"] == "not_applicable"  # three holes are too few to compare
    assert statuses["few_aggregates"] == statuses["particles_clear_of_carbon_edge"] == "pass"
    unpicked = _statuses(dataclasses.replace(_good_inputs(), packing=None))
    packing_rules = (
        "particles_not_crowded",
        "few_aggregates",
        "particles_clear_of_carbon_edge",
        "particle_density_typical",
    )
    assert {unpicked[name] for name in packing_rules} == {"not_applicable"}
    empty = _statuses(
        dataclasses.replace(
            _good_inputs(), packing=_packing(candidates=0, kept=0, crowded=0, aggregates=0, near_carbon=0)
        )
    )
    assert empty["few_aggregates"] == empty["particles_clear_of_carbon_edge"] == "not_applicable"


def test_one_outlying_hole_does_not_hide_itself_in_the_spread() -> None:
    """The modified z-score uses the median and MAD: the outlier among the batch's holes still stands out."""
    holes = (26.0, 28.0, 30.0, 31.0, 34.0, 120.0)
    assert (
        _statuses(
            dataclasses.replace(
                _good_inputs(), packing=_packing(hole_density_per_um2=120.0, batch_hole_densities_per_um2=holes)
            )
        )["particle_density_typical"]
        == "fail"
    )
    assert (
        _statuses(dataclasses.replace(_good_inputs(), packing=_packing(batch_hole_densities_per_um2=holes)))[
            "particle_density_typical"
        ]
        == "pass"
    )


def test_logic_score_ignores_not_applicable() -> None:
    results = [
        RuleResult("a", "pass", ""),
        RuleResult("b", "pass", ""),
        RuleResult("c", "pass", ""),
        RuleResult("d", "fail", ""),
        RuleResult("e", "not_applicable", ""),
        RuleResult("f", "not_applicable", ""),
    ]
    assert logic_score(results) == 0.75
    with pytest.raises(ScoreDomainError):
        logic_score([RuleResult("e", "not_applicable", "")])
    inputs = dataclasses.replace(_good_inputs(), nominal_defocus_angstrom=None, beyond_fit_power_ratio=2.0)
    # 11 rules: one not applicable, one failed, nine passed.
    assert logic_score(evaluate_rules(inputs)) == pytest.approx(9.0 / 10.0)


def test_rule_inputs_validate_the_pixel_size() -> None:
    with pytest.raises(ValueError, match="pixel_size"):
        dataclasses.replace(_good_inputs(), pixel_size_angstrom=0.0)


def test_excluded_area_mask_finds_a_carbon_edge_and_ignores_shot_noise() -> None:
    # Vitreous ice at 40 counts/px; carbon with ≈ 150 nm more material (exp(−150/350) = 0.65) from x = 700.
    rng = np.random.default_rng(0)
    expected = np.full((1024, 1024), 40.0)
    expected[:, 700:] *= math.exp(-150.0 / 350.0)
    mask = excluded_area_mask(rng.poisson(expected).astype(np.float32), pixel_size_angstrom=1.0)
    # The 250 Å smoothing blurs the edge: the mask starts ~100 px inside the carbon and covers the rest.
    assert mask[:, 850:].all()
    assert not mask[:, :600].any()  # inside the hole
    uniform = excluded_area_mask(rng.poisson(40.0, (512, 512)).astype(np.float32), pixel_size_angstrom=1.0)
    assert not uniform.any()
    with pytest.raises(ValueError):
        excluded_area_mask(np.zeros((64, 64)), 1.0)
