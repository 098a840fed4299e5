"""Exposure curation by thresholds: known values, boundaries, thresholds not applied, values not measured."""

from __future__ import annotations

import math

import pytest

from cryodecon_science.curation import (
    CurationThresholds,
    ExposureMeasurements,
    ThresholdFailure,
    curate_exposure,
)

GOOD = ExposureMeasurements(
    ctf_fit_resolution_angstrom=4.0,
    defocus_mean_angstrom=15000.0,
    astigmatism_angstrom=200.0,
    ice_thickness_index=0.1,
    total_motion_angstrom=20.0,
    particles=120,
)
ALL = CurationThresholds(
    ctf_fit_resolution_max_angstrom=6.0,
    defocus_min_angstrom=5000.0,
    defocus_max_angstrom=30000.0,
    astigmatism_max_angstrom=1000.0,
    ice_thickness_index_max=0.5,
    total_motion_max_angstrom=60.0,
    particles_min=50,
)
NONE = CurationThresholds(
    ctf_fit_resolution_max_angstrom=None,
    defocus_min_angstrom=None,
    defocus_max_angstrom=None,
    astigmatism_max_angstrom=None,
)


def test_an_exposure_within_every_threshold_is_accepted() -> None:
    decision = curate_exposure(GOOD, ALL)
    assert decision.accepted and decision.failures == () and decision.reasons == ()


def test_every_failed_threshold_is_named_with_value_and_limit() -> None:
    bad = ExposureMeasurements(9.5, 35000.0, 1500.0, 0.8, 90.0, 10)
    decision = curate_exposure(bad, ALL)
    assert not decision.accepted
    assert decision.failed_thresholds == (
        "ctf_fit_resolution_max_angstrom",
        "defocus_max_angstrom",
        "astigmatism_max_angstrom",
        "ice_thickness_index_max",
        "total_motion_max_angstrom",
        "particles_min",
    )
    assert decision.failures[0] == ThresholdFailure("ctf_fit_resolution_max_angstrom", 9.5, 6.0)
    assert decision.reasons[0] == "ctf_fit_resolution_max_angstrom: 9.5 > 6"
    assert decision.reasons[-1] == "particles_min: 10 < 50"
    low = curate_exposure(ExposureMeasurements(4.0, 3000.0, 0.0, 0.1, 1.0, 60), ALL)
    assert low.reasons == ("defocus_min_angstrom: 3000 < 5000",)


def test_limits_are_inclusive() -> None:
    at_limits = ExposureMeasurements(6.0, 5000.0, 1000.0, 0.5, 60.0, 50)
    assert curate_exposure(at_limits, ALL).accepted
    assert curate_exposure(ExposureMeasurements(6.0, 30000.0, 1000.0, 0.5, 60.0, 50), ALL).accepted
    just_over = ExposureMeasurements(6.0001, 30000.5, 1000.0, 0.5, 60.0, 49)
    assert curate_exposure(just_over, ALL).failed_thresholds == (
        "ctf_fit_resolution_max_angstrom",
        "defocus_max_angstrom",
        "particles_min",
    )


def test_a_threshold_set_to_none_is_not_applied() -> None:
    terrible = ExposureMeasurements(40.0, 100.0, 9000.0, 5.0, 500.0, 0)
    assert curate_exposure(terrible, NONE).accepted
    only_ctf = CurationThresholds(
        ctf_fit_resolution_max_angstrom=10.0, defocus_min_angstrom=None, defocus_max_angstrom=None
    )
    assert curate_exposure(terrible, only_ctf).failed_thresholds == (
        "ctf_fit_resolution_max_angstrom",
        "astigmatism_max_angstrom",  # the default 1500 Å still applies
    )


@pytest.mark.parametrize("missing", [None, math.nan])
def test_an_applied_threshold_on_a_value_not_measured_fails(missing: float | None) -> None:
    summed = ExposureMeasurements(4.0, 15000.0, 200.0, missing, missing, None)
    decision = curate_exposure(summed, ALL)
    assert decision.failed_thresholds == ("ice_thickness_index_max", "total_motion_max_angstrom", "particles_min")
    assert decision.reasons[1] == "total_motion_max_angstrom: not measured"
    assert decision.failures[1].measured is None
    # Not applied: what was not measured does not matter.
    assert curate_exposure(summed, NONE).accepted


def test_unresolved_fit_fails_and_an_empty_defocus_range_is_refused() -> None:
    unresolved = ExposureMeasurements(math.inf, 15000.0, 200.0)
    assert curate_exposure(unresolved, CurationThresholds()).failed_thresholds == ("ctf_fit_resolution_max_angstrom",)
    with pytest.raises(ValueError, match="defocus_min_angstrom"):
        CurationThresholds(defocus_min_angstrom=20000.0, defocus_max_angstrom=10000.0)


def test_defaults_are_the_documented_ones() -> None:
    assert CurationThresholds().to_document() == {
        "ctf_fit_resolution_max_angstrom": 8.0,
        "defocus_min_angstrom": 2000.0,
        "defocus_max_angstrom": 40000.0,
        "astigmatism_max_angstrom": 1500.0,
        "ice_thickness_index_max": None,
        "total_motion_max_angstrom": None,
        "particles_min": None,
    }
