"""Motion correction (cryodecon_science.motion) against known drift: global, patch-based, dose weighting."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.ndimage

from cryodecon_science.motion import align_movie, critical_exposure_e_per_angstrom2, dose_weights
from cryodecon_science.simulate import SimulationConfig, drift_trajectory_px, simulate_micrograph, simulate_movie

# Normal dose (40 e⁻/Å², 12 frames) on a small field: 384 px at 2 Å/px (160 e⁻/pixel in total).
MOVIE_CONFIG = SimulationConfig(shape_px=(384, 384), pixel_size_angstrom=2.0, n_frames=12)


def rolled_movie(shifts_px: np.ndarray, dose_per_frame: float, seed: int) -> np.ndarray:
    """Frames of one smooth random specimen moved by integer shifts (np.roll puts r at r + shift)."""
    rng = np.random.default_rng(seed)
    specimen = scipy.ndimage.gaussian_filter(rng.standard_normal((192, 192)), 3.0, mode="wrap")
    specimen = dose_per_frame * (1.0 + 0.5 * specimen / specimen.std())
    frames = [rng.poisson(np.clip(np.roll(specimen, tuple(s), axis=(0, 1)), 0, None)) for s in shifts_px.astype(int)]
    return np.asarray(frames, dtype=np.float32)


def test_sign_convention_on_exact_integer_shifts(device: str) -> None:
    """np.roll(x, s)[r] = x[r − s]: a feature at r in frame 0 sits at r + s in frame f, so the estimate
    must return +s (the simulator's convention)."""
    shifts = np.array([[0, 0], [3, -2], [5, -3], [6, -5], [7, -6], [7, -8]], dtype=np.float64)
    result = align_movie(rolled_movie(shifts, 20.0, 0), 1.0, device=device, bfactor_angstrom2=50.0)
    assert result.shifts_px.shape == (6, 2)
    assert np.array_equal(result.shifts_px[0], [0.0, 0.0])
    # Periodic integer shifts of a well-sampled image: recovered to a small fraction of a pixel.
    assert np.abs(result.shifts_px - shifts).max() < 0.1
    assert result.converged
    assert result.total_drift_px == pytest.approx(np.linalg.norm(np.diff(shifts, axis=0), axis=1).sum(), abs=0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_simulated_drift(seed: int) -> None:
    """RMS error ≤ 0.5 px against the simulator's truth.

    The error is noise-limited, not biased (noise-free frames give < 0.1 px): each frame is located to
    ≈ 0.15 px per axis at this dose, and because shifts are referred to frame 0 its error is shared by all
    frames, so the RMS is ≈ √2 times the per-frame error (≈ 0.2–0.35 px over many seeds).
    """
    movie = simulate_movie(MOVIE_CONFIG, "drift", seed)
    truth = movie.truth.drift_shifts_px
    assert truth is not None
    result = align_movie(movie.frames, MOVIE_CONFIG.pixel_size_angstrom)
    error = result.shifts_px - truth
    rms = float(np.sqrt(np.mean(np.sum(error**2, axis=1))))
    assert rms <= 0.5, f"RMS error {rms:.2f} px"
    assert result.iterations >= 2 and result.converged
    assert result.total_drift_px == pytest.approx(movie.truth.drift_total_px, rel=0.15)
    # The aligned sum matches the noise-free exposure better than the plain sum of frames.
    clean = movie.clean_image.astype(np.float64)
    plain = movie.frames.sum(axis=0).astype(np.float64)
    interior = (slice(48, -48), slice(48, -48))  # Fourier shifts wrap up to |shift| px at the edges

    def correlation(image: np.ndarray) -> float:
        low = scipy.ndimage.gaussian_filter(image, 2.0)[interior]
        return float(np.corrcoef(low.ravel(), scipy.ndimage.gaussian_filter(clean, 2.0)[interior].ravel())[0, 1])

    assert correlation(result.aligned_sum.astype(np.float64)) > correlation(plain) + 0.05


def test_even_and_odd_halves() -> None:
    movie = simulate_movie(replace(MOVIE_CONFIG, shape_px=(256, 256), n_frames=6), "halves", 3)
    result = align_movie(movie.frames, MOVIE_CONFIG.pixel_size_angstrom)
    assert result.aligned_sum.dtype == np.float32 and result.aligned_sum.shape == (256, 256)
    assert np.allclose(result.even_sum + result.odd_sum, result.aligned_sum, atol=1e-3)
    # Each half holds half the dose (three frames each).
    total = float(movie.frames.sum())
    assert float(result.even_sum.sum()) == pytest.approx(float(movie.frames[0::2].sum()), rel=1e-4)
    assert float(result.aligned_sum.sum()) == pytest.approx(total, rel=1e-4)


def test_polynomial_trajectory_is_smooth_and_anchored() -> None:
    shifts = np.array([[0, 0], [2, 1], [4, 2], [6, 3], [8, 4], [10, 5], [12, 6]], dtype=np.float64)
    result = align_movie(rolled_movie(shifts, 20.0, 1), 1.0, bfactor_angstrom2=50.0, trajectory_polynomial_degree=1)
    assert np.array_equal(result.shifts_px[0], [0.0, 0.0])
    steps = np.diff(result.shifts_px, axis=0)
    assert np.allclose(steps, steps[0], atol=1e-9)  # a straight line in time
    assert np.abs(result.shifts_px - shifts).max() < 0.15


def test_hot_pixels_are_replaced_and_do_not_pin_the_alignment() -> None:
    shifts = np.array([[0, 0], [4, 0], [8, 0], [12, 0]], dtype=np.float64)
    frames = rolled_movie(shifts, 20.0, 2)
    rng = np.random.default_rng(5)
    hot_y, hot_x = rng.integers(0, 192, 40), rng.integers(0, 192, 40)
    frames[:, hot_y, hot_x] += 2000.0  # fixed on the detector in every frame
    result = align_movie(frames, 1.0, bfactor_angstrom2=50.0)
    assert result.hot_pixel_count >= 38  # duplicates among the 40 draws are possible
    assert np.abs(result.shifts_px - shifts).max() < 0.2
    assert float(result.aligned_sum.max()) < 1000.0


def test_invalid_input() -> None:
    with pytest.raises(ValueError):
        align_movie(np.zeros((1, 32, 32), dtype=np.float32), 1.0)
    with pytest.raises(ValueError):
        align_movie(np.zeros((32, 32), dtype=np.float32), 1.0)
    with pytest.raises(ValueError):
        align_movie(np.full((3, 32, 32), np.nan, dtype=np.float32), 1.0)
    with pytest.raises(ValueError):
        align_movie(np.ones((3, 32, 32), dtype=np.float32), 0.0)
    with pytest.raises(ValueError):
        align_movie(np.ones((3, 32, 32), dtype=np.float32), 1.0, trajectory_polynomial_degree=3)


def deformed_movie(seed: int, edge_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A movie whose drift varies over the field: a feature at frame-0 position r₀ sits in frame f at
    r₀ + s_f + τ_f M (r₀ − c), τ_f = f/(n−1), M = (edge_px/R)·[[1, −1], [1, 1]] (expansion + rotation,
    R = half the side), s_f the simulator's trajectory.  The map is affine, so frame f samples the
    noise-free exposure (padded by 32 px) at r₀ = c + (I + τ_f M)⁻¹ (r − s_f − c)."""
    config = replace(MOVIE_CONFIG, n_frames=10)
    pad, n_px = 32, MOVIE_CONFIG.shape_px[0]
    clean = simulate_micrograph(replace(config, shape_px=(n_px + 2 * pad,) * 2), "deformed", seed).clean_image
    rng = np.random.default_rng(seed)
    shifts = drift_trajectory_px(rng, config.n_frames, 12.0)
    matrix = (edge_px / (0.5 * n_px)) * np.array([[1.0, -1.0], [1.0, 1.0]])
    spline = scipy.ndimage.spline_filter(clean.astype(np.float64) / config.n_frames, order=3)
    centre = 0.5 * (n_px - 1)
    y, x = np.mgrid[0:n_px, 0:n_px].astype(np.float64)
    frames = np.empty((config.n_frames, n_px, n_px), dtype=np.float32)
    for f in range(config.n_frames):
        inverse = np.linalg.inv(np.eye(2) + f / (config.n_frames - 1) * matrix)
        dy, dx = y - shifts[f, 0] - centre, x - shifts[f, 1] - centre
        coords = [
            centre + inverse[0, 0] * dy + inverse[0, 1] * dx + pad,
            centre + inverse[1, 0] * dy + inverse[1, 1] * dx + pad,
        ]
        frames[f] = rng.poisson(
            np.clip(scipy.ndimage.map_coordinates(spline, coords, order=3, prefilter=False), 0, None)
        )
    return frames, shifts, matrix


def test_patch_correction_recovers_spatially_varying_drift() -> None:
    frames, shifts, matrix = deformed_movie(11, edge_px=4.0)
    n, n_px = frames.shape[0], frames.shape[1]
    points = np.stack(
        np.meshgrid(np.linspace(40, n_px - 40, 8), np.linspace(40, n_px - 40, 8), indexing="ij"), -1
    ).reshape(-1, 2)
    tau = np.arange(n) / (n - 1)
    truth = shifts[None] + tau[None, :, None] * ((points - 0.5 * (n_px - 1)) @ matrix.T)[:, None, :]
    global_only = align_movie(frames, MOVIE_CONFIG.pixel_size_angstrom)
    patched = align_movie(frames, MOVIE_CONFIG.pixel_size_angstrom, patch_grid=(3, 3))
    motion = patched.patch_motion
    assert global_only.patch_motion is None and motion is not None
    assert motion.model in ("bilinear", "quadratic") and motion.grid == (3, 3)
    assert motion.measured_shifts_px.shape == motion.fitted_shifts_px.shape == (9, n, 2)
    assert motion.coefficients_px.shape == (2, 3, 6)
    estimate = np.stack(
        [patched.shifts_px[f] + motion.local_shifts_px(points[:, 0], points[:, 1], f) for f in range(n)], axis=1
    )
    assert np.allclose(estimate[:, 0], 0.0, atol=1e-9)  # frame 0 is the reference everywhere

    def rms(field: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.sum((field - truth) ** 2, axis=-1))))

    global_error = rms(np.repeat(global_only.shifts_px[None], len(points), axis=0))
    patch_error = rms(estimate)
    assert global_error > 1.5, f"the deformation should defeat a single shift ({global_error:.2f} px)"
    assert patch_error < 0.6 and patch_error < 0.35 * global_error, (
        f"patch {patch_error:.2f}, global {global_error:.2f} px"
    )
    assert np.allclose(patched.even_sum + patched.odd_sum, patched.aligned_sum, atol=1e-2)
    assert float(patched.aligned_sum.sum()) == pytest.approx(float(frames.sum()), rel=2e-3)  # border padding


def test_uniform_drift_selects_no_local_model() -> None:
    """Patch noise (≈ 1 px per patch and frame) must not be fitted as deformation when there is none."""
    movie = simulate_movie(replace(MOVIE_CONFIG, shape_px=(256, 256), n_frames=8), "uniform", 4)
    patched = align_movie(movie.frames, MOVIE_CONFIG.pixel_size_angstrom, patch_grid=(3, 3))
    assert patched.patch_motion is not None and patched.patch_motion.model in ("none", "uniform")
    local = patched.patch_motion.fitted_shifts_px - patched.shifts_px[None]
    assert np.abs(local).max() < 0.5


def test_dose_weights_match_hand_computed_values() -> None:
    # N_e(0.1 Å⁻¹) = 0.245·0.1^−1.665 + 2.81 = 0.245·46.238 + 2.81 = 14.138 e⁻/Å²; N_e(0.25) = 5.2737.
    assert critical_exposure_e_per_angstrom2([0.1, 0.25]) == pytest.approx([14.1383, 5.27375], rel=1e-4)
    assert critical_exposure_e_per_angstrom2(0.1, voltage_kv=200.0) == pytest.approx(0.8 * 14.1383, rel=1e-4)
    assert np.isinf(critical_exposure_e_per_angstrom2(0.0))
    # Two frames of 1 e⁻/Å²: mid-frame exposures 0.5 and 1.5; at k = 0.1, q = exp(−0.5/28.277) = 0.98248 and
    # exp(−1.5/28.277) = 0.94834, √(q₀² + q₁²) = 1.36551, w = (0.71950, 0.69450).
    weights = dose_weights(np.array([0.0, 0.1, 0.25]), 2, 1.0)
    assert weights.shape == (2, 3)
    assert weights[:, 1] == pytest.approx([0.719496, 0.694496], abs=1e-5)
    assert weights[:, 2] == pytest.approx([0.739772, 0.672857], abs=1e-5)
    assert weights[:, 0] == pytest.approx([2**-0.5, 2**-0.5])  # k = 0 is not damaged
    many = dose_weights(np.linspace(0.0, 0.5, 50), 40, 1.2, pre_exposure_e_per_angstrom2=2.0)
    assert np.allclose(np.sum(many**2, axis=0), 1.0)
    assert np.all(np.diff(many, axis=0) <= 0)  # later frames never weigh more
    with pytest.raises(ValueError):
        critical_exposure_e_per_angstrom2(0.1, voltage_kv=120.0)
    with pytest.raises(ValueError):
        dose_weights(0.1, 3, 0.0)


def test_dose_weighted_sum_keeps_counts_and_damps_high_frequencies() -> None:
    movie = simulate_movie(replace(MOVIE_CONFIG, shape_px=(256, 256), n_frames=8), "dose", 5)
    dose = MOVIE_CONFIG.dose_e_per_angstrom2 / 8
    result = align_movie(movie.frames, MOVIE_CONFIG.pixel_size_angstrom, dose_per_frame_e_per_angstrom2=dose)
    plain = align_movie(movie.frames, MOVIE_CONFIG.pixel_size_angstrom)
    assert plain.dose_weighted_sum is None and result.dose_weighted_sum is not None
    assert np.allclose(result.aligned_sum, plain.aligned_sum, atol=1e-2)
    assert np.allclose(result.even_sum + result.odd_sum, result.aligned_sum, atol=1e-3)
    weighted = result.dose_weighted_sum.astype(np.float64)
    assert weighted.sum() == pytest.approx(float(result.aligned_sum.sum()), rel=1e-5)  # √n·w₀ = 1 at k = 0
    # At Nyquist (0.25 Å⁻¹ at 2 Å/px) the weighted sum's amplitude equals √n·Σ w_f·F_f: compare with the
    # weights applied by hand to the aligned frames' common signal, i.e. the ratio of mean amplitudes.
    k = (
        np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.rfftfreq(256), indexing="ij"))
        / MOVIE_CONFIG.pixel_size_angstrom
    )
    high = k > 0.2
    ratio = np.abs(np.fft.rfft2(weighted))[high].mean() / np.abs(np.fft.rfft2(result.aligned_sum))[high].mean()
    assert ratio < 1.0  # noise power is kept (ratio ≈ 1 for pure noise), so only a little below 1


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    movie = simulate_movie(MOVIE_CONFIG, "gpu", 6)
    kwargs = {"patch_grid": (3, 3), "dose_per_frame_e_per_angstrom2": MOVIE_CONFIG.dose_e_per_angstrom2 / 12}
    cpu = align_movie(movie.frames, MOVIE_CONFIG.pixel_size_angstrom, "cpu", **kwargs)  # type: ignore[arg-type]
    gpu = align_movie(movie.frames, MOVIE_CONFIG.pixel_size_angstrom, "cuda", **kwargs)  # type: ignore[arg-type]
    assert np.abs(cpu.shifts_px - gpu.shifts_px).max() < 0.02
    assert cpu.patch_motion is not None and gpu.patch_motion is not None
    assert np.abs(cpu.patch_motion.fitted_shifts_px - gpu.patch_motion.fitted_shifts_px).max() < 0.05
    scale = float(np.abs(cpu.aligned_sum).mean())
    for a, b in ((cpu.aligned_sum, gpu.aligned_sum), (cpu.dose_weighted_sum, gpu.dose_weighted_sum)):
        assert a is not None and b is not None
        assert float(np.abs(a - b).mean()) < 1e-3 * scale


def test_accumulated_motion_splits_early_and_late_by_exposure() -> None:
    from cryodecon_science.motion import accumulated_motion

    # Steps of 3-4-5 (5 px), 0.6-0.8 (1 px), 0 and 2 px; 0.5 Å/px.  With 2 e⁻/Å² per frame the exposure at the
    # start of frames 1, 2, 3, 4 is 2, 4, 6, 8: frames 1–2 are early (≤ 4 e⁻/Å²), 3–4 late.
    shifts = np.array([[0.0, 0.0], [3.0, 4.0], [3.6, 4.8], [3.6, 4.8], [5.6, 4.8]])
    motion = accumulated_motion(shifts, 0.5, 2.0)
    assert motion.total_angstrom == pytest.approx(0.5 * (5 + 1 + 0 + 2))
    assert motion.early_angstrom == pytest.approx(0.5 * 6) and motion.late_angstrom == pytest.approx(0.5 * 2)
    unknown = accumulated_motion(shifts, 0.5)
    assert unknown.total_angstrom == pytest.approx(4.0) and unknown.early_angstrom is None
    with pytest.raises(ValueError):
        accumulated_motion(shifts[:, :1], 0.5)


def test_ssnr_weighting_beats_the_fixed_bfactor_on_simulated_movies() -> None:
    """The matched filter measured from the movie (module docstring, 3b) aligns the simulator's movies more
    accurately than the fixed exp(−B k²/2) weight alone (same movies, same B for the first pass)."""
    config = replace(MOVIE_CONFIG, shape_px=(512, 512), pixel_size_angstrom=1.0, n_frames=12)
    errors: dict[str, list[float]] = {"ssnr": [], "bfactor": []}
    for seed in range(3):
        movie = simulate_movie(replace(config, drift_total_px_range=(20.0, 20.0)), "ssnr", (11, seed))
        assert movie.truth.drift_shifts_px is not None
        for weighting in errors:
            result = align_movie(movie.frames, 1.0, frequency_weighting=weighting)
            error = result.shifts_px - movie.truth.drift_shifts_px
            errors[weighting].append(float(np.sqrt(np.mean(np.sum(error**2, axis=1)))))
    assert np.mean(errors["ssnr"]) < 0.85 * np.mean(errors["bfactor"]), errors
    with pytest.raises(ValueError):
        align_movie(np.ones((3, 32, 32), dtype=np.float32), 1.0, frequency_weighting="flat")
