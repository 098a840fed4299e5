"""Junk-region detection (cryodecon_science.picking.junk) on exposures of known geometry."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from cryodecon_science.picking.junk import (
    REASON_AGGREGATE,
    REASON_CARBON,
    REASON_CONTAMINATION,
    REASON_OK,
    REASON_THICK_ICE,
    RegionMasks,
    classify_picks,
    detect_regions,
)
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

SHAPE = (512, 512)
DOSE = 40.0  # e⁻/pixel: 1 Å pixels at 40 e⁻/Å²
DIAMETER = 100.0  # Å at 1 Å/pixel


def _exposure(tau: np.ndarray, seed: int = 0) -> np.ndarray:
    """Poisson counts of a field whose extra thickness is τ = Δt/λ (counts D·exp(−τ))."""
    return np.random.default_rng(seed).poisson(DOSE * np.exp(-tau)).astype(np.float32)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[: SHAPE[0], : SHAPE[1]].astype(np.float64)


def _agreement(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pixel precision and recall."""
    hits = float((found & truth).sum())
    return hits / max(float(found.sum()), 1.0), hits / max(float(truth.sum()), 1.0)


def test_straight_carbon_edge_is_found_with_its_step() -> None:
    """A carbon half-plane at τ = 0.08 (15 nm at λ_C = 190 nm) across a tilted line.

    The boundary is placed at the half-height of the step to within a few pixels; 98 % precision and
    recall allow a band of ≈ 5 px along a 560 px edge in a field of 130 000 carbon pixels.
    """
    y, x = _grid()
    carbon = (y - 0.4 * x) > 150.0
    masks = detect_regions(_exposure(0.08 * carbon), 1.0, DIAMETER)
    precision, recall = _agreement(masks.carbon, carbon)
    assert precision > 0.98 and recall > 0.98
    assert masks.carbon_step == pytest.approx(0.08, abs=0.01)
    assert masks.hole_level_counts == pytest.approx(DOSE, rel=0.01)
    assert masks.carbon_fraction == pytest.approx(float(carbon.mean()), abs=0.02)
    assert not masks.contamination.any() and not masks.thick_ice.any()


def test_hole_inside_the_field_leaves_the_carbon_around_it() -> None:
    """A 300 px hole in the middle of the field: carbon outside a circle is a support edge too."""
    y, x = _grid()
    carbon = np.hypot(y - 256.0, x - 256.0) > 150.0
    masks = detect_regions(_exposure(0.06 * carbon, seed=1), 1.0, DIAMETER)
    precision, recall = _agreement(masks.carbon, carbon)
    assert precision > 0.95 and recall > 0.95


def test_contamination_blob_is_contamination_not_carbon() -> None:
    """A 160 px ice blob, 200 nm thick at λ_in = 350 nm (τ = 0.57), in the hole."""
    y, x = _grid()
    blob = np.hypot(y - 300.0, x - 200.0) < 80.0
    masks = detect_regions(_exposure(0.57 * blob, seed=2), 1.0, DIAMETER)
    precision, recall = _agreement(masks.contamination, blob)
    assert precision > 0.9 and recall > 0.9
    assert not masks.carbon.any() and not masks.thick_ice.any()


def test_contamination_on_carbon_is_in_both_masks() -> None:
    y, x = _grid()
    carbon = x > 300.0
    blob = np.hypot(y - 250.0, x - 420.0) < 60.0
    masks = detect_regions(_exposure(0.08 * carbon + 0.5 * blob, seed=3), 1.0, DIAMETER)
    assert _agreement(masks.contamination, blob)[1] > 0.9
    precision, recall = _agreement(masks.carbon, carbon)
    assert precision > 0.97 and recall > 0.97  # the carbon continues under the blob to the fitted edge


def test_thick_carbon_is_carbon_not_contamination() -> None:
    """30 nm carbon (τ = 0.16) is darker than the contamination seed step, but has a support edge."""
    y, _ = _grid()
    carbon = y > 200.0
    masks = detect_regions(_exposure(0.16 * carbon, seed=4), 1.0, DIAMETER)
    assert _agreement(masks.carbon, carbon)[1] > 0.97
    assert masks.contamination_fraction < 0.01


def test_dark_area_without_a_support_edge_is_thick_ice() -> None:
    """A large irregular dark area inside the field (no line or arc outline, not on the border)."""
    y, x = _grid()
    angle = np.arctan2(y - 256.0, x - 256.0)
    thick = np.hypot(y - 256.0, x - 256.0) < 150.0 * (1.0 + 0.25 * np.cos(3.0 * angle))
    masks = detect_regions(_exposure(0.06 * thick, seed=5), 1.0, DIAMETER)
    assert not masks.carbon.any()
    assert _agreement(masks.thick_ice, thick)[1] > 0.9


@pytest.mark.parametrize("tau", [0.0, 0.05])
def test_continuous_film_or_a_smooth_gradient_is_not_flagged(tau: float) -> None:
    """A uniform film (τ = 0.05 everywhere) or an ice gradient of 0.02 across the field: nothing to flag."""
    _, x = _grid()
    masks = detect_regions(_exposure(tau + 0.02 * x / 512.0, seed=6), 1.0, DIAMETER)
    assert not (masks.carbon.any() or masks.contamination.any() or masks.thick_ice.any())


def test_simulated_hole_edge_agrees_with_the_truth_and_a_film_is_not_flagged() -> None:
    """End to end on the simulator: 512 px at 1 Å, SNR 0.03, a hole edge in the field, 15 nm carbon."""
    config = SimulationConfig(
        shape_px=(512, 512),
        particle_diameter_angstrom=DIAMETER,
        particles_per_micrograph=20,
        target_snr=0.03,
        hole_diameter_angstrom=12000.0,
        hole_edge_probability=1.0,
    )
    for seed in (0, 1):
        micrograph = simulate_micrograph(config, "junk", seed)
        truth = micrograph.truth
        masks = detect_regions(micrograph.counts, 1.0, DIAMETER)
        precision, recall = _agreement(masks.carbon, truth.carbon_mask)
        assert precision > 0.95 and recall > 0.95
    film = replace(config, hole_diameter_angstrom=None, continuous_film_thickness_nm=3.0)
    masks = detect_regions(simulate_micrograph(film, "film", 2).counts, 1.0, DIAMETER)
    assert not (masks.carbon.any() or masks.contamination.any() or masks.thick_ice.any())


# ----------------------------------------------------------------------------------------- picks


def _masks(carbon: np.ndarray, contamination: np.ndarray, thick: np.ndarray) -> RegionMasks:
    return RegionMasks(carbon, contamination, thick, 0.0, 0.0, 0.0, DOSE, 0.0)


def test_classify_picks_gives_one_reason_each() -> None:
    carbon = np.zeros(SHAPE, dtype=bool)
    carbon[:, 400:] = True
    contamination = np.zeros(SHAPE, dtype=bool)
    contamination[100:160, 100:160] = True
    thick = np.zeros(SHAPE, dtype=bool)
    thick[400:, :200] = True
    d = DIAMETER  # box = 150 px: a pick within 75 px of the border is cut
    picks = np.array(
        [
            [200.0, 180.0],  # ok
            [20.0, 256.0],  # box leaves the image: a particle all the same (extraction decides)
            [130.0, 130.0],  # contamination
            [256.0, 450.0],  # carbon
            [480.0, 450.0],  # carbon, near the border
            [450.0, 100.0],  # thick ice
            [300.0, 250.0],  # aggregate of three, 0.8 d apart
            [300.0, 330.0],
            [370.0, 290.0],
            [180.0, 300.0],  # a pair 0.85 d apart is no aggregate
            [180.0, 300.0 + 0.85 * d],
        ]
    )
    reasons = classify_picks(picks, _masks(carbon, contamination, thick), d, 1.0)
    assert reasons.tolist() == [
        REASON_OK,
        REASON_OK,
        REASON_CONTAMINATION,
        REASON_CARBON,
        REASON_CARBON,
        REASON_THICK_ICE,
        REASON_AGGREGATE,
        REASON_AGGREGATE,
        REASON_AGGREGATE,
        REASON_OK,
        REASON_OK,
    ]
    assert classify_picks(np.zeros((0, 2)), _masks(carbon, contamination, thick), d, 1.0).shape == (0,)


def test_chain_of_touching_picks_is_one_aggregate() -> None:
    """A chain of four at 0.8 d: the ends have one close neighbour, but each is next to one with two."""
    empty = np.zeros(SHAPE, dtype=bool)
    picks = np.array([[256.0, 150.0 + 80.0 * i] for i in range(4)])
    reasons = classify_picks(picks, _masks(empty, empty, empty), DIAMETER, 1.0)
    assert set(reasons.tolist()) == {REASON_AGGREGATE}
    # At 1.1 d they are separate particles.
    apart = np.array([[256.0, 150.0 + 110.0 * i] for i in range(3)])
    assert set(classify_picks(apart, _masks(empty, empty, empty), DIAMETER, 1.0).tolist()) == {REASON_OK}


def test_detect_regions_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        detect_regions(np.ones((4, 4, 4)), 1.0, DIAMETER)
    with pytest.raises(ValueError):
        detect_regions(np.full(SHAPE, np.nan), 1.0, DIAMETER)
    with pytest.raises(ValueError):
        detect_regions(np.ones(SHAPE), 1.0, DIAMETER, carbon_min_step=0.2, contamination_min_step=0.1)
    with pytest.raises(ValueError):
        detect_regions(np.zeros(SHAPE), 1.0, DIAMETER)
    assert math.isfinite(detect_regions(np.full(SHAPE, DOSE), 1.0, DIAMETER).hole_level_counts)
