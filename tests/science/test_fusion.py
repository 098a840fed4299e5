"""Self-supervised fusion of estimates: geometry, exact recovery of known mixtures, the split, and the fused
estimate against the truth on simulated micrographs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser
from cryodecon_science.reproducibility import binomial_split_counts
from cryodecon_science.restoration import fusion
from cryodecon_science.restoration.denoiser import DenoiserUNet, denoise_learned
from cryodecon_science.restoration.restore import wiener_denoise
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

torch.set_num_threads(1)


def _mse_after_fit(estimate: np.ndarray, clean: np.ndarray) -> float:
    """Mean squared error after the least-squares scale/offset (as the restoration benchmark scores)."""
    x = estimate.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, clean.astype(np.float64).ravel(), rcond=None)
    return float(np.mean((design @ coef - clean.ravel()) ** 2))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(scipy.ndimage.gaussian_filter(image.astype(np.float64), sigma, mode="wrap"), dtype=np.float32)


# ------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (33, 20)])
def test_ring_multiplicity_gives_full_plane_sums(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape)
    ring, multiplicity = fusion.fourier_rings(shape)
    assert ring.shape == multiplicity.shape == (shape[0], shape[1] // 2 + 1)
    assert ring[0, 0] == 0
    # Parseval over the full plane: Σ|X|² = N·Σx².
    full = float(np.sum(multiplicity * np.abs(np.fft.rfft2(image)) ** 2))
    assert full == pytest.approx(image.size * float(np.sum(image**2)), rel=1e-10)
    assert fusion.n_rings_of(shape) == int(ring.max()) + 1


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (33, 20)])
def test_normal_equations_and_fusion_on_every_device(shape: tuple[int, int], device: str) -> None:
    """G, c and the fused image equal a direct numpy computation (rfft2 and per-ring bincounts over the
    full plane) on the CPU and, where one exists, on a CUDA device."""
    rng = np.random.default_rng(1)
    e1, e2, target = (rng.normal(size=shape) for _ in range(3))
    ring, multiplicity = fusion.fourier_rings(shape)
    spectra = [np.fft.rfft2(x) for x in (e1, e2, target)]
    n_rings = fusion.n_rings_of(shape)

    def ring_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.bincount(ring.ravel(), (multiplicity * np.real(a * np.conj(b))).ravel(), n_rings)

    gram, rhs = fusion.ring_normal_equations([e1, e2], target, device=device)
    np.testing.assert_allclose(gram[:, 0, 1], ring_sum(spectra[0], spectra[1]), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(gram[:, 1, 0], gram[:, 0, 1])
    np.testing.assert_allclose(gram[:, 1, 1], ring_sum(spectra[1], spectra[1]), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(rhs[:, 0], ring_sum(spectra[0], spectra[2]), rtol=1e-10, atol=1e-9)

    weights = fusion.solve_weights(gram, rhs, shape, noise_power=0.0)
    per_ring = weights.ring_weights()
    expected_spectrum = per_ring[ring, 0] * spectra[0] + per_ring[ring, 1] * spectra[1]
    expected_spectrum[0, 0] = spectra[0][0, 0]
    expected = np.fft.irfft2(expected_spectrum, s=shape)
    fused = fusion.apply_fusion_weights([e1, e2], weights, device=device)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, expected, atol=1e-5)


def test_normal_equations_accept_integer_counts() -> None:
    counts = np.random.default_rng(4).poisson(5.0, (32, 48)).astype(np.int32)
    gram, rhs = fusion.ring_normal_equations([counts], counts)
    gram_f, rhs_f = fusion.ring_normal_equations([counts.astype(np.float64)], counts.astype(np.float64))
    np.testing.assert_array_equal(gram, gram_f)
    np.testing.assert_array_equal(rhs, rhs_f)


def test_knots_and_hat_basis() -> None:
    knots = fusion.ring_knots(725, 6.0, 32)
    assert knots[0] == 1.0 and knots[-1] == 724.0
    steps = np.diff(knots)
    assert np.all(steps >= 1) and np.all(steps <= 32)
    assert np.array_equal(knots[:9], np.arange(1.0, 10.0))  # every ring at first (spacing clipped to 1)
    basis = fusion.hat_basis(knots, 725)
    assert basis.shape == (725, knots.size)
    np.testing.assert_allclose(basis.sum(axis=1), 1.0)
    # Linear functions of the ring are reproduced exactly between the first and the last knot.
    rings = np.arange(725.0)
    line = 0.3 + 0.002 * rings
    np.testing.assert_allclose((basis @ (0.3 + 0.002 * knots))[1:], line[1:], atol=1e-12)
    assert basis[0] @ (0.3 + 0.002 * knots) == pytest.approx(line[1])  # constant below the first knot
    with pytest.raises(ValueError):
        fusion.hat_basis(np.array([1.0, 1.0]), 10)
    with pytest.raises(ValueError):
        fusion.ring_knots(10, 0.0, 4)


# ------------------------------------------------------------------------------------ exact recovery
def test_fit_recovers_a_known_frequency_dependent_mixture() -> None:
    shape = (128, 128)
    rng = np.random.default_rng(1)
    e1 = rng.normal(size=shape)
    e2 = rng.normal(size=shape) + 5.0 * _blur(rng.normal(size=shape), 1.5)  # power at every ring
    ring, _ = fusion.fourier_rings(shape)
    n_rings = fusion.n_rings_of(shape)
    w1 = 0.9 - 0.8 * np.arange(n_rings) / (n_rings - 1)  # linear in the ring: exactly representable
    w2 = 0.2 + 0.5 * np.arange(n_rings) / (n_rings - 1)
    target_hat = w1[ring] * np.fft.rfft2(e1) + w2[ring] * np.fft.rfft2(e2)
    target = np.fft.irfft2(target_hat, s=shape)
    weights = fusion.fit_fusion_weights([e1, e2], target)
    per_ring = weights.ring_weights()
    np.testing.assert_allclose(per_ring[1:, 0], w1[1:], atol=1e-6)
    np.testing.assert_allclose(per_ring[1:, 1], w2[1:], atol=1e-6)
    np.testing.assert_allclose(per_ring[0], [1.0, 0.0])
    fused = fusion.apply_fusion_weights([e1, e2], weights)
    expected = target - target.mean() + e1.mean()  # the first estimate's mean is kept
    np.testing.assert_allclose(fused, expected, atol=1e-5)


def test_noisy_target_recovers_a_constant_mixture_and_the_ridge_is_scale_free() -> None:
    shape = (256, 256)
    rng = np.random.default_rng(2)
    e1 = _blur(rng.normal(size=shape), 2.0).astype(np.float64) * 10
    e2 = _blur(rng.normal(size=shape), 4.0).astype(np.float64) * 20
    noise_sd = 0.05
    target = 0.25 * e1 + 0.75 * e2 + rng.normal(scale=noise_sd, size=shape)
    weights = fusion.fit_fusion_weights([e1, e2], target, noise_sd**2, prior_std=1.0, knots_per_octave=1.0)
    per_ring = weights.ring_weights()
    # Where the estimates carry power (rings ≤ 20, scales ≥ 13 px) the mixture is recovered.
    np.testing.assert_allclose(per_ring[1:21, 0], 0.25, atol=0.05)
    np.testing.assert_allclose(per_ring[1:21, 1], 0.75, atol=0.05)
    gain = 7.0
    scaled = fusion.fit_fusion_weights(
        [gain * e1, gain * e2], gain * target, gain**2 * noise_sd**2, prior_std=1.0, knots_per_octave=1.0
    )
    np.testing.assert_allclose(scaled.coefficients, weights.coefficients, rtol=1e-8, atol=1e-10)


def test_bad_arguments_raise() -> None:
    a = np.zeros((32, 32))
    with pytest.raises(ValueError):
        fusion.fit_fusion_weights([], a)
    with pytest.raises(ValueError):
        fusion.fit_fusion_weights([a, np.zeros((32, 30))], a)
    with pytest.raises(ValueError):
        fusion.fit_fusion_weights([a], np.full((32, 32), np.nan))
    with pytest.raises(ValueError):
        fusion.fit_fusion_weights([a], a, prior_std=0.0)
    weights = fusion.fit_fusion_weights([a + 1.0], a)
    with pytest.raises(ValueError):
        fusion.apply_fusion_weights([a, a], weights)
    with pytest.raises(ValueError):
        fusion.apply_fusion_weights([np.zeros((16, 16))], weights)
    # Constant estimates carry nothing to weigh: the first one is kept.
    np.testing.assert_allclose(fusion.apply_fusion_weights([a + 1.0], weights), 1.0)


# ---------------------------------------------------------------------------------------------- split
def test_split_counts_thins_and_matches_the_half_split() -> None:
    counts = np.random.default_rng(3).poisson(40.0, size=(128, 128)).astype(np.float32)
    a, b = fusion.split_counts(counts, 0.7, seed=5)
    np.testing.assert_array_equal(a + b, counts)
    assert np.all(a >= 0) and np.all(b >= 0)
    assert a.mean() / counts.mean() == pytest.approx(0.7, abs=0.01)
    # Independent halves of Poisson counts: their correlation vanishes.
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02
    h1, h2 = fusion.split_counts(counts, 0.5, seed=5)
    r1, r2 = binomial_split_counts(counts, seed=5)
    np.testing.assert_array_equal(h1, r1)
    np.testing.assert_array_equal(h2, r2)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            fusion.split_counts(counts, bad, seed=0)
    with pytest.raises(ValueError):
        fusion.split_counts(np.zeros((8, 8)), 0.5, seed=0)


# ------------------------------------------------------------------------------ against the truth
def test_self_supervised_fusion_of_linear_filters_approaches_the_oracle() -> None:
    """Raw counts and a Gaussian low-pass of a Poisson image: the split-fitted fusion beats both inputs and
    comes close to the combination fitted with the truth."""
    shape = (256, 256)
    rng = np.random.default_rng(4)
    clean = 40.0 + 8.0 * _blur(rng.normal(size=shape), 3.0) / 0.1
    clean = np.clip(clean, 1.0, None)
    counts = rng.poisson(clean).astype(np.float32)

    def raw(image: np.ndarray, fraction: float) -> np.ndarray:
        return np.asarray(image, dtype=np.float32)

    def lowpass(image: np.ndarray, fraction: float) -> np.ndarray:
        return _blur(image, 4.0)

    fused, weights = fusion.self_supervised_fusion(counts, [raw, lowpass], fraction=0.7, seed=0, n_splits=2)
    full = [raw(counts, 1.0), lowpass(counts, 1.0)]
    oracle = fusion.apply_fusion_weights(full, fusion.fit_fusion_weights(full, clean))
    mse = {name: _mse_after_fit(image, clean) for name, image in (("raw", full[0]), ("lowpass", full[1]))}
    mse_fused, mse_oracle = _mse_after_fit(fused, clean), _mse_after_fit(oracle, clean)
    assert mse_fused < 0.95 * min(mse.values())
    assert mse_fused < 1.15 * mse_oracle
    assert weights.n_estimates == 2


def test_weights_carried_to_a_larger_grid_keep_their_value_at_each_frequency() -> None:
    """A weight curve fitted on a 128² grid, carried to 256²: ring 2r there is ring r here (same |k|)."""
    small = fusion.FusionWeights(
        (128, 128), np.array([1.0, 4.0, 20.0, 90.0]), np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.1, 0.6]])
    )
    large = small.for_shape((256, 256))
    assert large.shape_px == (256, 256)
    per_small, per_large = small.ring_weights(), large.ring_weights()
    rings = np.arange(1, fusion.n_rings_of((256, 256)) // 2)
    np.testing.assert_allclose(per_large[2 * rings], per_small[rings], atol=1e-12)
    np.testing.assert_allclose(per_large[0], [1.0, 0.0])


def test_fusion_fitted_on_a_central_crop_matches_the_whole_image_fit() -> None:
    """Frequency-only weights fitted on the central 256² of a 512² Poisson image (max_fit_px 256) do what
    the whole-image fit does: same MSE against the truth within 5 %, and both beat either input."""
    shape = (512, 512)
    rng = np.random.default_rng(5)
    clean = np.clip(40.0 + 8.0 * _blur(rng.normal(size=shape), 3.0) / 0.1, 1.0, None)
    counts = rng.poisson(clean).astype(np.float32)

    def raw(image: np.ndarray, fraction: float) -> np.ndarray:
        return np.asarray(image, dtype=np.float32)

    def lowpass(image: np.ndarray, fraction: float) -> np.ndarray:
        return _blur(image, 4.0)

    whole, w_whole = fusion.self_supervised_fusion(counts, [raw, lowpass], seed=0, max_fit_px=None)
    cropped, w_crop = fusion.self_supervised_fusion(counts, [raw, lowpass], seed=0, max_fit_px=256)
    assert w_whole.shape_px == w_crop.shape_px == shape
    assert w_crop.knots[-1] == pytest.approx(2.0 * (fusion.n_rings_of((256, 256)) - 1))
    mse_whole, mse_crop = _mse_after_fit(whole, clean), _mse_after_fit(cropped, clean)
    assert mse_crop < 1.05 * mse_whole
    assert mse_crop < 0.95 * min(_mse_after_fit(counts, clean), _mse_after_fit(lowpass(counts, 1.0), clean))
    with pytest.raises(ValueError, match="max_fit_px"):
        fusion.self_supervised_fusion(counts, [raw, lowpass], max_fit_px=16)


@pytest.fixture(scope="module")
def model() -> DenoiserUNet:
    return load_pretrained_denoiser()


def test_fused_learned_and_lowpass_not_worse_than_either_on_a_simulated_micrograph(model: DenoiserUNet) -> None:
    sim = simulate_micrograph(SimulationConfig(shape_px=(512, 512), target_snr=0.1), "fusion", 21)
    clean = sim.clean_image.astype(np.float64)

    def learned(image: np.ndarray, fraction: float) -> np.ndarray:
        return denoise_learned(image, model)

    def lowpass(image: np.ndarray, fraction: float) -> np.ndarray:
        return _blur(image, 1.0)

    full = [learned(sim.counts, 1.0), lowpass(sim.counts, 1.0)]
    fused, _ = fusion.self_supervised_fusion(sim.counts, [learned, lowpass], seed=3, full_estimates=full)
    mse_learned, mse_lowpass = _mse_after_fit(full[0], clean), _mse_after_fit(full[1], clean)
    mse_fused = _mse_after_fit(fused, clean)
    assert mse_fused <= min(mse_learned, mse_lowpass)
    assert fused.dtype == np.float32 and fused.shape == sim.counts.shape
    assert float(fused.mean()) == pytest.approx(float(full[0].mean()), rel=1e-5)


def test_product_fusion_of_learned_and_wiener_beats_both(model: DenoiserUNet) -> None:
    # What the asset fused_denoised_micrographs runs, with the CTF estimator's fit: better than either input.
    config = SimulationConfig(shape_px=(512, 512), target_snr=0.1)
    sim = simulate_micrograph(config, "fusion_product", 22)
    clean = sim.clean_image.astype(np.float64)
    fit = estimate_ctf(sim.counts, config.microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom)
    learned = denoise_learned(sim.counts, model)
    wiener = wiener_denoise(sim.counts, fit, config.microscope)
    fused, weights = fusion.fuse_learned_and_wiener(
        sim.counts, model, fit, config.microscope, seed=5, learned_full=learned, wiener_full=wiener
    )
    assert weights.n_estimates == 2
    assert _mse_after_fit(fused, clean) < min(_mse_after_fit(learned, clean), _mse_after_fit(wiener, clean))
    # Computing the full-image estimates itself gives the same image.
    again, _ = fusion.fuse_learned_and_wiener(sim.counts, model, fit, config.microscope, seed=5)
    np.testing.assert_allclose(again, fused, rtol=1e-5, atol=1e-3)
