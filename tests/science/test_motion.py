"""Global motion correction (cryodecon_science.motion) against known drift."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.ndimage

from cryodecon_science.motion import align_movie
from cryodecon_science.simulate import SimulationConfig, simulate_movie

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
