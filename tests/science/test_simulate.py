"""Known-value and consistency tests of the cryo-EM simulator (cryodecon_science.simulate)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.fft

from cryodecon_science.optics import (
    MicroscopeSettings,
    ctf_2d,
    ctf_zero_frequencies_per_angstrom,
    electron_wavelength_angstrom,
)
from cryodecon_science.projection import rotation_matrix_from_euler_deg
from cryodecon_science.simulate import (
    SimulationConfig,
    ice_power_spectrum,
    interaction_constant_rad_per_volt_angstrom,
    make_structures,
    project_structure,
    simulate_micrograph,
    simulate_movie,
    simulate_session,
)

# Small, fast acquisitions: 512 px at 1 Å, 100 Å particles (13–25 fit).
SMALL = SimulationConfig(shape_px=(512, 512), particle_diameter_angstrom=100.0, particles_per_micrograph=25)


def radial_profile(power: np.ndarray) -> np.ndarray:
    """Rotational average of a (n, n) periodogram in integer-radius bins of width 1/n cycles/pixel."""
    n = power.shape[0]
    radius = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]) * n
    bins = np.round(radius).astype(int)
    return np.bincount(bins.ravel(), power.ravel()) / np.bincount(bins.ravel())


def tiled_periodogram(image: np.ndarray, tile: int) -> np.ndarray:
    """Mean |FFT|² over tiles overlapping by half (Welch averaging)."""
    ny, nx = image.shape
    tiles = [
        image[y : y + tile, x : x + tile].astype(np.float64)
        for y in range(0, ny - tile + 1, tile // 2)
        for x in range(0, nx - tile + 1, tile // 2)
    ]
    return np.mean([np.abs(np.fft.fft2(t - t.mean())) ** 2 for t in tiles], axis=0)


# ----------------------------------------------------------------------------------------- physics


def test_electron_wavelength_300kv_known_value() -> None:
    # Williams & Carter, Transmission Electron Microscopy, table 1.1: 0.01969 Å at 300 kV.
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.019687, abs=2e-6)


def test_interaction_constant_known_values() -> None:
    # Kirkland, Advanced Computing in Electron Microscopy, eq. 5.6: σ ≈ 0.00065 rad/(V·Å) at 300 kV,
    # ≈ 0.00073 at 200 kV.
    assert interaction_constant_rad_per_volt_angstrom(300.0) == pytest.approx(6.526e-4, rel=2e-3)
    assert interaction_constant_rad_per_volt_angstrom(200.0) == pytest.approx(7.288e-4, rel=2e-3)


def test_thon_ring_zeros_where_theory_puts_them() -> None:
    """Ice-only micrograph, no astigmatism: power-spectrum minima sit at χ(k) = nπ.

    Tolerance one radial bin (1/256 Å⁻¹ for 256-px tiles at 1 Å): the rotational average locates a minimum
    only to the bin that holds it (±½ bin), and bin-averaging the asymmetric CTF² dip moves it by a
    further fraction of a bin.  The background multiplies CTF², which vanishes at the zero, so a sloping
    ice spectrum or envelope does not move the minimum (d/dk[S·sin²χ] = 0 where sin χ = 0).
    """
    config = replace(
        SMALL,
        particles_per_micrograph=0,
        ice_thickness_range_nm=(60.0, 60.0),
        defocus_range_angstrom=(10000.0, 10000.0),
        max_astigmatism_angstrom=0.0,
        bfactor_range_angstrom2=(40.0, 40.0),
        dose_e_per_angstrom2=400.0,  # clear rings; the positions do not depend on the dose
    )
    micrograph = simulate_micrograph(config, "zeros", 7)
    assert micrograph.truth.ctf.astigmatism_angstrom == 0.0
    tile = 256
    profile = radial_profile(tiled_periodogram(micrograph.counts, tile))
    k = np.arange(profile.size) / (tile * config.pixel_size_angstrom)
    zeros = ctf_zero_frequencies_per_angstrom(10000.0, config.microscope, 0.21)
    assert zeros.size >= 8
    for i, k0 in enumerate(zeros):
        previous = zeros[i - 1] if i > 0 else 0.0
        following = zeros[i + 1] if i + 1 < zeros.size else k0 + (k0 - previous)
        window = np.flatnonzero((k >= k0 - 0.4 * (k0 - previous)) & (k <= k0 + 0.4 * (following - k0)))
        k_min = k[window[np.argmin(profile[window])]]
        assert abs(k_min - k0) <= 1.0 / tile, f"zero {i + 1}: theory {k0:.4f}, minimum at {k_min:.4f} 1/Å"
        # A real minimum: the ring maxima on either side stand well above it (out to 1/4.8 Å at B = 40 Å²).
        assert profile[window].max() > 1.3 * profile[window].min()


def test_ice_spectrum_scales_with_thickness_and_peaks_at_the_water_ring() -> None:
    k = np.linspace(0.0, 0.5, 501)
    thin, thick = ice_power_spectrum(k, 20.0), ice_power_spectrum(k, 60.0)
    assert np.allclose(thick, 3.0 * thin)  # uncorrelated slabs: power ∝ thickness
    high = k > 0.1
    assert k[high][np.argmax(thin[high])] == pytest.approx(1.0 / 3.7, abs=0.01)  # McMullan et al. 2015
    assert np.all(ice_power_spectrum(k, 0.0) == 0.0)


def test_poisson_statistics_in_an_empty_flat_field() -> None:
    """No particles, no ice, no read noise: counts are Poisson(D), so mean ≈ variance ≈ D.

    262 144 pixels: the sample variance has relative standard error √(2/N) ≈ 0.3 %; 2 % is > 5 σ.
    """
    config = replace(SMALL, particles_per_micrograph=0, ice_thickness_range_nm=(0.0, 0.0), read_noise_std_counts=0.0)
    counts = simulate_micrograph(config, "flat", 11).counts.astype(np.float64)
    dose_px = config.dose_per_pixel_e
    assert counts.mean() == pytest.approx(dose_px, rel=0.01)
    assert counts.var() == pytest.approx(counts.mean(), rel=0.02)
    assert np.array_equal(counts, np.round(counts))


def test_noise_is_poisson_plus_read_noise_around_the_clean_image() -> None:
    """With ice and particles, var(counts − clean) = mean(clean) + σ_read² (Poisson + Gaussian); 3 % tolerance
    covers the 0.3 % sampling error and the slight non-stationarity of λ."""
    micrograph = simulate_micrograph(SMALL, "noise", 12)
    residual = micrograph.counts.astype(np.float64) - micrograph.clean_image
    expected = float(micrograph.clean_image.mean()) + SMALL.read_noise_std_counts**2
    assert residual.var() == pytest.approx(expected, rel=0.03)
    assert abs(residual.mean()) < 0.05


@pytest.mark.parametrize("target", [0.1, 0.01])
def test_target_snr_is_realised(target: float) -> None:
    # The scale is solved from the expected noise variance; the realised one differs by sampling (~0.3 %).
    micrograph = simulate_micrograph(replace(SMALL, target_snr=target), "snr", 5)
    assert micrograph.truth.snr == pytest.approx(target, rel=0.03)
    assert micrograph.truth.contrast_scale > 0


def test_particle_image_is_ctf_of_potential_image() -> None:
    """particle_image = F⁻¹{CTF·E·F{potential_image}}: exact on the padded grid; on the cropped image the
    correlation misses only signal delocalised across the border."""
    micrograph = simulate_micrograph(SMALL, "ctf", 3)
    truth = micrograph.truth
    ctf = (
        ctf_2d(truth.ctf, SMALL.microscope, SMALL.shape_px, bfactor_angstrom2=truth.bfactor_angstrom2).double().numpy()
    )
    predicted = scipy.fft.irfft2(ctf * scipy.fft.rfft2(micrograph.potential_image.astype(np.float64)), s=SMALL.shape_px)
    interior = (slice(64, -64), slice(64, -64))
    correlation = np.corrcoef(predicted[interior].ravel(), micrograph.particle_image[interior].ravel())[0, 1]
    assert correlation > 0.999
    # k = 0: CTF(0) = −w, so the particles are dark on average and the potential is positive.
    assert micrograph.potential_image.min() >= -1e-4
    ratio = micrograph.particle_image.mean() / micrograph.potential_image.mean()
    assert ratio == pytest.approx(-SMALL.amplitude_contrast_fraction, rel=0.02)


# ----------------------------------------------------------------------------------------- structures


def test_rotation_matrix_is_proper_and_matches_relion_special_cases() -> None:
    rotation = rotation_matrix_from_euler_deg(30.0, 60.0, -45.0)
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    assert np.allclose(rotation_matrix_from_euler_deg(0.0, 0.0, 0.0), np.eye(3))
    # rot about z (passive, RELION): A = R_z(rot) = [[c, s, 0], [-s, c, 0], [0, 0, 1]].
    c, s = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
    assert np.allclose(rotation_matrix_from_euler_deg(30.0, 0.0, 0.0), [[c, s, 0], [-s, c, 0], [0, 0, 1]])


def test_structures_are_deterministic_distinct_and_bounded() -> None:
    first = make_structures(4, 150.0, seed=3)
    again = make_structures(6, 150.0, seed=3)  # structure k does not depend on how many are made
    for a, b in zip(first, again[:4], strict=True):
        assert np.array_equal(a.atom_positions_angstrom, b.atom_positions_angstrom)
        assert np.array_equal(a.atom_potential_volt_angstrom3, b.atom_potential_volt_angstrom3)
    other_seed = make_structures(1, 150.0, seed=4)[0]
    assert not np.array_equal(other_seed.atom_positions_angstrom, first[0].atom_positions_angstrom)
    assert [s.n_lobes for s in first] == [3, 2, 3, 4]
    for structure in first:
        assert 100 <= structure.n_atoms <= 310  # 100–300 drawn, lobe rounding adds at most a few
        assert np.linalg.norm(structure.atom_positions_angstrom, axis=1).max() <= 75.0
    # Projections in the same orientation differ between structures.
    images = [project_structure(s, (10.0, 50.0, 20.0), 192, 1.0) for s in first]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.corrcoef(images[i].ravel(), images[j].ravel())[0, 1] < 0.9


def test_projection_conserves_potential_and_accepts_matrix_or_euler() -> None:
    structure = make_structures(1, 120.0, seed=0)[0]
    euler = (40.0, 70.0, 100.0)
    by_euler = project_structure(structure, euler, 200, 1.5)
    by_matrix = project_structure(structure, rotation_matrix_from_euler_deg(*euler), 200, 1.5)
    assert np.array_equal(by_euler, by_matrix)
    total = by_euler.sum() * 1.5**2  # V·Å per pixel × Å² per pixel = ∫V d³r
    assert total == pytest.approx(structure.atom_potential_volt_angstrom3.sum(), rel=1e-6)
    # Centre of mass on the FFT centre (100, 100) in every orientation.
    y, x = np.mgrid[:200, :200]
    for angles in [(0.0, 0.0, 0.0), euler]:
        image = project_structure(structure, angles, 200, 1.5)
        assert (image * y).sum() / image.sum() == pytest.approx(100.0, abs=1e-3)
        assert (image * x).sum() / image.sum() == pytest.approx(100.0, abs=1e-3)
    with pytest.raises(ValueError):
        project_structure(structure, np.eye(2), 64, 1.0)


def test_reference_projection_matches_the_simulated_particle() -> None:
    """The truth (structure id, Euler angles, position) and project_structure reproduce the particle."""
    config = replace(SMALL, particles_per_micrograph=3)
    micrograph = simulate_micrograph(config, "ref", 21)
    truth = micrograph.truth
    structures = make_structures(config.n_structures, config.particle_diameter_angstrom, config.structure_seed)
    box = 128
    for i in range(truth.structure_ids.size):
        cy, cx = (round(float(v)) for v in truth.particle_positions_px[i])
        lo_y, lo_x = max(cy - box // 2, 0), max(cx - box // 2, 0)
        cut = micrograph.potential_image[lo_y : cy + box // 2, lo_x : cx + box // 2]
        reference = project_structure(structures[truth.structure_ids[i]], tuple(truth.euler_angles_deg[i]), box, 1.0)
        reference = reference[box // 2 - (cy - lo_y) :, box // 2 - (cx - lo_x) :][: cut.shape[0], : cut.shape[1]]
        # Sub-pixel placement (≤ 0.5 px) costs a little correlation; a wrong orientation costs much more.
        assert np.corrcoef(cut.ravel(), reference.ravel())[0, 1] > 0.95
        wrong = project_structure(structures[truth.structure_ids[i]], (0.0, 90.0, 0.0), box, 1.0)
        wrong = wrong[box // 2 - (cy - lo_y) :, box // 2 - (cx - lo_x) :][: cut.shape[0], : cut.shape[1]]
        assert np.corrcoef(cut.ravel(), wrong.ravel())[0, 1] < np.corrcoef(cut.ravel(), reference.ravel())[0, 1]


# ----------------------------------------------------------------------------------------- micrographs


def test_same_seed_is_bit_identical_and_other_seeds_differ() -> None:
    a = simulate_micrograph(SMALL, "det", 42)
    b = simulate_micrograph(SMALL, "det", 42)
    c = simulate_micrograph(SMALL, "det", 43)
    for field in ("counts", "clean_image", "particle_image", "potential_image"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
        assert getattr(a, field).dtype == np.float32
        assert not np.array_equal(getattr(a, field), getattr(c, field))
    assert a.truth.ctf == b.truth.ctf
    assert np.array_equal(a.truth.particle_positions_px, b.truth.particle_positions_px)
    assert a.truth.ctf != c.truth.ctf


def test_particles_do_not_overlap_and_stay_inside() -> None:
    config = replace(SMALL, particles_per_micrograph=40)  # more than fit: the field fills up
    truth = simulate_micrograph(config, "dense", 8).truth
    positions = truth.particle_positions_px
    diameter_px = config.particle_diameter_angstrom / config.pixel_size_angstrom
    assert 10 <= positions.shape[0] <= 40
    distances = np.hypot(*(positions[:, None, :] - positions[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= diameter_px
    assert positions.min() >= diameter_px / 2
    assert positions.max() <= config.shape_px[0] - 1 - diameter_px / 2
    assert truth.structure_ids.shape == (positions.shape[0],)
    assert set(truth.structure_ids.tolist()) <= set(range(config.n_structures))
    assert truth.euler_angles_deg.shape == (positions.shape[0], 3)


def test_truth_parameters_lie_in_the_configured_ranges() -> None:
    for seed in range(3):
        truth = simulate_micrograph(SMALL, "ranges", seed).truth
        assert SMALL.defocus_range_angstrom[0] <= truth.ctf.mean_defocus_angstrom <= SMALL.defocus_range_angstrom[1]
        assert 0 <= truth.ctf.astigmatism_angstrom <= SMALL.max_astigmatism_angstrom
        assert 0 <= truth.ctf.astigmatism_angle_deg < 180
        assert SMALL.bfactor_range_angstrom2[0] <= truth.bfactor_angstrom2 <= SMALL.bfactor_range_angstrom2[1]
        assert SMALL.ice_thickness_range_nm[0] <= truth.ice_thickness_nm <= SMALL.ice_thickness_range_nm[1]
        # Nominal defocus: a few hundred Å off (σ = 300 Å; 5 σ bound).
        assert abs(truth.nominal_defocus_angstrom - truth.ctf.mean_defocus_angstrom) < 1500
        assert truth.drift_shifts_px is None


def test_hot_pixels_are_recorded_and_bright() -> None:
    config = replace(SMALL, hot_pixel_fraction=1e-3, particles_per_micrograph=0)
    micrograph = simulate_micrograph(config, "hot", 2)
    hot = micrograph.truth.hot_pixels_yx
    assert hot.shape == (262, 2)
    values = micrograph.counts[hot[:, 0], hot[:, 1]]
    assert values.min() > micrograph.counts.mean() + 10 * micrograph.counts.std()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimulationConfig(defocus_range_angstrom=(3000.0, 1000.0))
    with pytest.raises(ValueError):
        SimulationConfig(target_snr=0.1, particles_per_micrograph=0)
    with pytest.raises(ValueError):
        SimulationConfig(amplitude_contrast_fraction=1.5)
    with pytest.raises(ValueError):
        simulate_micrograph(SMALL, "bad name/../x", 0)
    assert SimulationConfig().microscope == MicroscopeSettings(300.0, 2.7, 0.07, pixel_size_angstrom=1.0)


# ----------------------------------------------------------------------------------------- movies


def test_movie_frames_drift_and_dose() -> None:
    config = replace(SMALL, shape_px=(256, 256), n_frames=8, particles_per_micrograph=4)
    movie = simulate_movie(config, "mov", 4)
    shifts = movie.truth.drift_shifts_px
    assert movie.frames.shape == (8, 256, 256) and movie.frames.dtype == np.float32
    assert np.array_equal(movie.frames, np.round(movie.frames)) and movie.frames.min() >= 0
    assert shifts is not None and shifts.shape == (8, 2)
    assert np.array_equal(shifts[0], [0.0, 0.0])
    path = np.linalg.norm(np.diff(shifts, axis=0), axis=1).sum()
    assert path == pytest.approx(movie.truth.drift_total_px)
    assert config.drift_total_px_range[0] <= path <= config.drift_total_px_range[1]
    # Dose split evenly: each frame holds D/n counts per pixel on average (Poisson error ≈ 0.1 %).
    per_frame = movie.frames.mean(axis=(1, 2))
    assert np.allclose(per_frame, config.dose_per_pixel_e / 8, rtol=0.02)
    assert float(movie.clean_image.mean()) == pytest.approx(config.dose_per_pixel_e, rel=0.01)
    # Largest motion first: the first step is longer than the last.
    steps = np.linalg.norm(np.diff(shifts, axis=0), axis=1)
    assert steps[0] > steps[-1]
    again = simulate_movie(config, "mov", 4)
    assert np.array_equal(movie.frames, again.frames)


def test_movie_shift_sign_convention() -> None:
    """frame_f(r) = frame_0(r − shift_f): the cross-correlation of the last frame with the first peaks at
    +shift (integer-pixel check, high dose so one frame pair is enough)."""
    config = replace(SMALL, shape_px=(256, 256), n_frames=4, dose_e_per_angstrom2=4000.0, drift_total_px_range=(20, 30))
    movie = simulate_movie(config, "sign", 9)
    first = movie.frames[0] - movie.frames[0].mean()
    last = movie.frames[-1] - movie.frames[-1].mean()
    correlation = np.fft.irfft2(np.fft.rfft2(last) * np.conj(np.fft.rfft2(first)), s=first.shape)
    peak = np.array(np.unravel_index(np.argmax(correlation), correlation.shape))
    peak = np.where(peak > 128, peak - 256, peak)
    assert np.all(np.abs(peak - movie.truth.drift_shifts_px[-1]) <= 1.0)


# ----------------------------------------------------------------------------------------- sessions


def test_session_names_seeds_and_structures() -> None:
    config = replace(SMALL, shape_px=(128, 128), particle_diameter_angstrom=40.0, n_frames=3)
    session = simulate_session(config, "sess_01", n_micrographs=2, n_movies=1, seed=5)
    assert [m.name for m in session.micrographs] == ["sess_01_mic_0000", "sess_01_mic_0001"]
    assert [m.name for m in session.movies] == ["sess_01_mov_0000"]
    assert session.microscope == config.microscope
    assert len(session.structures) == config.n_structures
    # Adding exposures leaves the existing ones unchanged.
    bigger = simulate_session(config, "sess_01", n_micrographs=3, n_movies=1, seed=5)
    assert np.array_equal(bigger.micrographs[1].counts, session.micrographs[1].counts)
    assert not np.array_equal(session.micrographs[0].counts, session.micrographs[1].counts)
    with pytest.raises(ValueError):
        simulate_session(config, "bad name", 1, 0, 0)
