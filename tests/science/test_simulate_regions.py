"""Known-value tests of the simulator's regions: foil-hole carbon, continuous film, contamination, aggregates."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch

from cryodecon_science.optics import CtfParams, amplitude_contrast_phase_rad, ctf_phase_rad, frequency_grid_per_angstrom
from cryodecon_science.simulate import (
    SimulationConfig,
    interaction_constant_rad_per_volt_angstrom,
    make_structures,
    simulate_micrograph,
    simulate_movie,
    simulate_session,
    write_simulated_session,
)
from cryodecon_science.simulate import regions as regions_module
from cryodecon_science.simulate.formation import random_streams
from cryodecon_science.simulate.regions import RegionDraws, mask_from_rle, mask_to_rle, support_image

# 256 px at 1 Å, 60 Å particles: fast, and a 12 000 Å hole edge crosses the field as a near-straight arc.
SMALL = SimulationConfig(shape_px=(256, 256), particle_diameter_angstrom=60.0, particles_per_micrograph=12, n_frames=3)
HOLE = replace(SMALL, hole_diameter_angstrom=12000.0, hole_edge_probability=1.0)
# Flat field: no particles, ice or read noise, so the mean counts show the losses alone.
FLAT = replace(HOLE, particles_per_micrograph=0, ice_thickness_range_nm=(0.0, 0.0), read_noise_std_counts=0.0)


def _distance_to_edge_px(truth_centre: tuple[float, float], radius: float, shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(y - truth_centre[0], x - truth_centre[1]) - radius


# ----------------------------------------------------------------------------------------- features off


def test_region_stream_leaves_the_other_streams_unchanged() -> None:
    """Stream 8 is an extra SeedSequence child: streams 0–7 draw exactly what eight streams drew."""
    nine = random_streams((4, 2))
    eight = [np.random.default_rng(child) for child in np.random.SeedSequence((4, 2)).spawn(8)]
    assert len(nine) == 9
    for a, b in zip(nine[:8], eight, strict=True):
        assert np.array_equal(a.random(5), b.random(5))


def test_defaults_switch_every_region_off() -> None:
    config = SimulationConfig()
    assert not config.regions_enabled
    truth = simulate_micrograph(SMALL, "off", 3).truth
    assert truth.carbon_mask is None and truth.contamination_mask is None and truth.hole_centre_yx_px is None
    assert truth.particle_on_carbon is None and truth.particle_under_contamination is None
    assert truth.particle_aggregate_ids is None and truth.particle_in_aggregate is None
    assert truth.contamination_blobs == () and truth.continuous_film_thickness_nm == 0.0


def test_film_only_changes_the_image_not_the_other_draws() -> None:
    """The region stream is separate: a film leaves optics, positions and orientations as they were."""
    plain = simulate_micrograph(SMALL, "film", 5)
    filmed = simulate_micrograph(replace(SMALL, continuous_film_thickness_nm=3.0), "film", 5)
    assert plain.truth.ctf == filmed.truth.ctf
    assert np.array_equal(plain.truth.particle_positions_px, filmed.truth.particle_positions_px)
    assert np.array_equal(plain.truth.euler_angles_deg, filmed.truth.euler_angles_deg)
    assert not np.array_equal(plain.counts, filmed.counts)


def test_an_exposure_inside_the_hole_is_the_exposure_without_a_hole() -> None:
    """Far from the edge the support wave is 1 everywhere: same particles, same expected image.

    I_s = |F⁻¹{F{1}·transfer}|² = 1 to ≈ 1e-15, so the float32 images agree to their own rounding (1e-5).
    """
    inside = replace(HOLE, hole_edge_probability=0.0)
    with_hole = simulate_micrograph(inside, "in", 9)
    without = simulate_micrograph(SMALL, "in", 9)
    assert with_hole.truth.carbon_mask is not None and not with_hole.truth.carbon_mask.any()
    assert np.array_equal(with_hole.truth.particle_positions_px, without.truth.particle_positions_px)
    assert not with_hole.truth.particle_on_carbon.any()
    np.testing.assert_allclose(with_hole.clean_image, without.clean_image, rtol=1e-5)


# ----------------------------------------------------------------------------------------- physics


def test_carbon_loses_counts_by_exp_minus_t_over_lambda() -> None:
    """Far from the edge (> 100 Å, beyond the Fresnel fringes of ≈ 50 Å) carbon/hole = exp(−t_C/λ_C).

    Tolerance 0.5 %: the carbon texture scatters a fraction ≈ var(phase) ≈ 0.5 % beyond the B-factor
    envelope, lowering the carbon side slightly below the pure loss.
    """
    checked = 0
    for seed in range(3):
        config = replace(FLAT, shape_px=(512, 512), dose_e_per_angstrom2=400.0)
        micrograph = simulate_micrograph(config, "loss", seed)
        truth = micrograph.truth
        distance = _distance_to_edge_px(truth.hole_centre_yx_px, truth.hole_radius_px, config.shape_px)
        hole, carbon = distance < -100, distance > 100
        if hole.sum() < 2000 or carbon.sum() < 2000:
            continue
        expected = math.exp(-FLAT.carbon_thickness_nm / FLAT.carbon_mean_free_path_nm)
        ratio_clean = micrograph.clean_image[carbon].mean() / micrograph.clean_image[hole].mean()
        assert ratio_clean == pytest.approx(expected, rel=5e-3)
        # Poisson counts: ≥ 2000 pixels at 400 e⁻/pixel give a ratio error < 0.1 %.
        ratio_counts = micrograph.counts[carbon].mean() / micrograph.counts[hole].mean()
        assert ratio_counts == pytest.approx(expected, rel=6e-3)
        checked += 1
    assert checked >= 2


def test_continuous_film_is_a_uniform_loss_and_no_mask() -> None:
    config = replace(FLAT, hole_diameter_angstrom=None, continuous_film_thickness_nm=4.0, dose_e_per_angstrom2=400.0)
    micrograph = simulate_micrograph(config, "film", 1)
    assert micrograph.truth.carbon_mask is None and micrograph.truth.continuous_film_thickness_nm == 4.0
    mean = micrograph.clean_image.mean() / config.dose_per_pixel_e
    assert mean == pytest.approx(math.exp(-4.0 / config.carbon_mean_free_path_nm), rel=2e-3)
    # Uniform: 64-px block means agree to 1 % (texture only; no edge, no gradient).
    blocks = micrograph.clean_image.reshape(4, 64, 4, 64).mean(axis=(1, 3))
    assert blocks.max() / blocks.min() < 1.01


def test_support_wave_of_a_weak_object_is_the_linear_ctf_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.05 nm carbon step (phase 3e-3 rad, loss 3e-4): I_s = 1 − F⁻¹{cos χ·E·F{μ}} + 2F⁻¹{−sin χ·E·F{φ}}.

    This fixes the sign of the wave's transfer exp(iχ) to that of ``formation`` (CTF = −sin χ, dark
    particles at underfocus).  Without texture the residual is second order, (3e-3)² ≈ 1e-5 of 1.
    """
    monkeypatch.setattr(regions_module, "CARBON_POWER_PER_NM", 0.0)
    config = replace(FLAT, carbon_thickness_nm=0.05)
    shape = (256, 256)
    draws = RegionDraws(hole_centre_yx_px=(128.0, -5880.0), hole_radius_px=6000.0, contamination=())
    ctf = CtfParams(15000.0, 15000.0, 0.0)
    sigma_e = interaction_constant_rad_per_volt_angstrom(config.voltage_kv)
    image = support_image(config, draws, ctf, 50.0, shape, (0, 0), sigma_e, np.random.default_rng(0))
    occupancy = regions_module.carbon_fraction_map(draws, shape, (0.0, 0.0), regions_module.CARBON_EDGE_WIDTH_ANGSTROM)
    thickness = config.carbon_thickness_nm * occupancy
    phase = sigma_e * 10.0 * regions_module.CARBON_MEAN_INNER_POTENTIAL_VOLT * thickness
    loss = thickness / config.carbon_mean_free_path_nm
    fy, fx = frequency_grid_per_angstrom(shape, 1.0, rfft=False)
    chi = ctf_phase_rad(torch.as_tensor(fy), torch.as_tensor(fx), ctf, config.microscope).numpy()
    chi = chi - amplitude_contrast_phase_rad(config.amplitude_contrast_fraction)
    envelope = np.exp(-50.0 * (fy**2 + fx**2) / 4.0)
    linear = (
        1.0
        - scipy.fft.ifft2(np.cos(chi) * envelope * scipy.fft.fft2(loss)).real
        + 2.0 * scipy.fft.ifft2(-np.sin(chi) * envelope * scipy.fft.fft2(phase)).real
    )
    contrast = image.intensity - 1.0
    assert np.abs(contrast).max() > 1e-3  # the step's fringes are visible
    assert np.abs(image.intensity - linear).max() < 0.02 * np.abs(contrast).max()


def test_contamination_is_dark_and_its_mask_matches_the_blobs() -> None:
    config = replace(SMALL, contamination_per_micrograph=3.0, contamination_diameter_range_angstrom=(60.0, 120.0))
    n_blobs = []
    for seed in range(4):
        micrograph = simulate_micrograph(config, "ice", seed)
        truth = micrograph.truth
        mask = truth.contamination_mask
        assert mask is not None and mask.shape == config.shape_px
        n_blobs.append(len(truth.contamination_blobs))
        for blob in truth.contamination_blobs:
            cy, cx = (round(v) for v in blob.centre_yx_px)
            if 0 <= cy < 256 and 0 <= cx < 256:
                assert mask[cy, cx]  # a blob covers its centre
            assert 100.0 <= blob.thickness_nm <= 400.0
            assert 30.0 <= math.sqrt(blob.semi_axes_px[0] * blob.semi_axes_px[1]) <= 60.0  # equal-area radius
        if mask.sum() > 500:
            # ≥ 100 nm of ice at λ_in = 350 nm removes ≥ 25 % at the centre; the mask (rim included) ≥ 15 %.
            assert micrograph.clean_image[mask].mean() < 0.85 * micrograph.clean_image[~mask].mean()
    assert sum(n_blobs) > 0


def test_hole_mask_matches_the_geometry_and_flags_match_the_masks() -> None:
    config = replace(HOLE, contamination_per_micrograph=1.0, carbon_particle_density_ratio=1.0)
    on_carbon_total = 0
    for seed in range(4):
        truth = simulate_micrograph(config, "geo", seed).truth
        distance = _distance_to_edge_px(truth.hole_centre_yx_px, truth.hole_radius_px, config.shape_px)
        assert np.array_equal(truth.carbon_mask, distance > 0)
        assert 0.0 < truth.carbon_mask.mean() < 1.0  # edge probability 1: the edge crosses the field
        rows, cols = np.rint(truth.particle_positions_px).astype(int).T
        assert np.array_equal(truth.particle_on_carbon, truth.carbon_mask[rows, cols])
        assert np.array_equal(truth.particle_under_contamination, truth.contamination_mask[rows, cols])
        on_carbon_total += int(truth.particle_on_carbon.sum())
    assert on_carbon_total > 0
    # Density ratio 0: nothing stays on the carbon.
    for seed in range(3):
        truth = simulate_micrograph(replace(HOLE, carbon_particle_density_ratio=0.0), "none", seed).truth
        assert not truth.particle_on_carbon.any()


def test_edge_probability_sets_how_many_fields_see_carbon() -> None:
    """hole_edge_probability 0.5: about half of 20 exposures show carbon (binomial, 3–17 is a 4.5σ band)."""
    config = replace(FLAT, hole_edge_probability=0.5, shape_px=(64, 64))
    with_carbon = sum(bool(simulate_micrograph(config, "p", seed).truth.carbon_mask.any()) for seed in range(20))
    assert 3 <= with_carbon <= 17


def test_aggregates_are_clusters_of_touching_particles() -> None:
    config = replace(SMALL, shape_px=(384, 384), particles_per_micrograph=30, aggregate_fraction=0.5)
    diameter = config.particle_diameter_angstrom
    truth = simulate_micrograph(config, "agg", 2).truth
    ids = truth.particle_aggregate_ids
    assert ids is not None and truth.particle_in_aggregate is not None
    positions = truth.particle_positions_px
    distance = np.hypot(*(positions[:, None, :] - positions[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    clustered = ids >= 0
    assert 10 <= clustered.sum() <= 15  # round(0.5 × 30) requested, fewer if crowded
    for cluster in set(ids[clustered].tolist()):
        members = np.flatnonzero(ids == cluster)
        assert members.size >= 2
        inner = distance[np.ix_(members, members)]
        # Each member touches another (0.75–0.95 d) and overlaps none closer than 0.75 d.
        assert np.all(inner.min(axis=1) <= 0.95 * diameter + 1e-9)
        assert inner.min() >= 0.75 * diameter - 1e-9
        others = np.setdiff1d(np.arange(ids.size), members)
        assert distance[np.ix_(members, others)].min() >= diameter - 1e-9
    singles = np.flatnonzero(~clustered)
    assert distance[singles].min() >= diameter - 1e-9


def test_movie_carries_the_region_truth() -> None:
    movie = simulate_movie(replace(HOLE, contamination_per_micrograph=1.0), "mov", 3)
    assert movie.truth.carbon_mask is not None and movie.truth.carbon_mask.shape == (256, 256)
    assert movie.truth.contamination_mask is not None
    assert movie.frames.min() >= 0


# ----------------------------------------------------------------------------------------- structures


def test_elongated_structures_are_rods_of_the_particle_length() -> None:
    round_ones = make_structures(4, 150.0, 0)
    assert all(
        np.array_equal(a.atom_positions_angstrom, b.atom_positions_angstrom)
        for a, b in zip(round_ones, make_structures(4, 150.0, 0, aspect_ratio=1.0), strict=True)
    )
    for before, rod in zip(round_ones, make_structures(4, 150.0, 0, aspect_ratio=3.0), strict=True):
        # Same length: the farthest atom stays at the old bounding radius.
        radius_before = np.linalg.norm(before.atom_positions_angstrom, axis=1).max()
        assert np.linalg.norm(rod.atom_positions_angstrom, axis=1).max() == pytest.approx(radius_before, rel=1e-6)
        # A rod: the long spread exceeds the next by ≈ the aspect ratio (0.8 × 3 allows for the lobes'
        # own anisotropy, e.g. a tetramer whose three spreads differ by 15 %).
        spread = np.sqrt(np.linalg.eigvalsh(np.cov(rod.atom_positions_angstrom.T)))
        assert spread[2] / spread[1] >= 0.8 * 3.0
        # Potential follows the volume, s/a²: the stretch s >= 1 restores the reach the squeeze shortened,
        # and stays small because the farthest atoms lie near the long axis (< 1.5 for these shapes).
        ratio = rod.atom_potential_volt_angstrom3.sum() / before.atom_potential_volt_angstrom3.sum()
        assert 1.0 / 9.0 - 1e-12 <= ratio <= 1.5 / 9.0
    with pytest.raises(ValueError):
        make_structures(1, 150.0, 0, aspect_ratio=0.5)


# ----------------------------------------------------------------------------------------- storage


def test_rle_round_trip() -> None:
    rng = np.random.default_rng(0)
    for mask in (rng.random((13, 7)) < 0.3, np.ones((4, 4), bool), np.zeros((3, 5), bool)):
        assert np.array_equal(mask_from_rle(mask_to_rle(mask), mask.shape), mask)
    assert mask_to_rle(np.array([[True, True], [False, True]])) == [0, 2, 1, 1]


def test_ground_truth_records_regions_compactly(tmp_path: Path) -> None:
    config = replace(HOLE, shape_px=(128, 128), contamination_per_micrograph=2.0, aggregate_fraction=0.3)
    session = simulate_session(config, "reg", n_micrographs=2, n_movies=0, seed=1)
    write_simulated_session(session, tmp_path)
    document = json.loads((tmp_path / "reg" / "ground_truth.json").read_text())
    assert document["config"]["hole_diameter_angstrom"] == 12000.0
    assert "masks" in document["conventions"]
    for micrograph in session.micrographs:
        exposure = document["exposures"][micrograph.name]
        regions = exposure["regions"]
        carbon = mask_from_rle(regions["carbon_mask_rle"], (128, 128))
        assert np.array_equal(carbon, micrograph.truth.carbon_mask)
        assert regions["carbon_fraction"] == pytest.approx(float(carbon.mean()))
        contamination = mask_from_rle(regions["contamination_mask_rle"], (128, 128))
        assert np.array_equal(contamination, micrograph.truth.contamination_mask)
        assert len(regions["carbon_mask_rle"]) <= 2 * 128 + 2  # one arc: ≤ 2 runs per row
        flags = [p["on_carbon"] for p in exposure["particles"]]
        assert flags == micrograph.truth.particle_on_carbon.tolist()
        assert [p["aggregate_id"] for p in exposure["particles"]] == micrograph.truth.particle_aggregate_ids.tolist()
    # Without regions: no region key anywhere, and the config lists none of the region fields.
    plain = simulate_session(replace(SMALL, shape_px=(64, 64), particle_diameter_angstrom=20.0), "pl", 1, 0, 1)
    write_simulated_session(plain, tmp_path)
    text = (tmp_path / "pl" / "ground_truth.json").read_text()
    for key in ("regions", "hole_diameter_angstrom", "on_carbon", "masks", "aspect_ratio"):
        assert key not in text


def test_region_config_validation() -> None:
    for bad in (
        {"hole_diameter_angstrom": 0.0},
        {"hole_edge_probability": 1.5},
        {"carbon_particle_density_ratio": -0.1},
        {"continuous_film_thickness_nm": -1.0},
        {"contamination_per_micrograph": -1.0},
        {"contamination_diameter_range_angstrom": (500.0, 200.0)},
        {"aggregate_fraction": 2.0},
        {"structure_aspect_ratio": 0.5},
    ):
        with pytest.raises(ValueError):
            SimulationConfig(**bad)  # type: ignore[arg-type]
