"""ΔRepro measurements: binomial noise split, half-set correlation, defocus phase error, cost model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryodecon_science.optics import electron_wavelength_angstrom
from cryodecon_science.reproducibility import (
    binomial_split_counts,
    defocus_phase_error_rad,
    fft_cost_units,
    filtered_half_correlation,
    predict_seconds,
    relative_cost_deviation,
)


def test_binomial_split_gives_independent_halves_that_sum_to_the_counts() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(20.0, size=(256, 256)).astype(np.float32)
    a, b = binomial_split_counts(counts, seed=1)
    np.testing.assert_array_equal(a + b, counts)
    assert a.mean() == pytest.approx(10.0, rel=0.01)
    assert b.var() == pytest.approx(10.0, rel=0.05)  # Poisson(λ/2): variance = mean
    # Thinning theorem: independent halves, so their correlation is within sampling error of 0
    # (standard error 1/√n = 0.004 for n = 65536 pixels; 5 standard errors allowed).
    rho = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert abs(rho) < 5.0 / math.sqrt(counts.size)


def test_binomial_split_is_deterministic_and_rejects_bad_input() -> None:
    counts = np.full((8, 8), 5.0)
    first = binomial_split_counts(counts, seed=3)
    second = binomial_split_counts(counts, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    with pytest.raises(ValueError, match="2-D"):
        binomial_split_counts(np.ones(8), seed=0)
    with pytest.raises(ValueError, match="NaN"):
        binomial_split_counts(np.full((4, 4), np.nan), seed=0)
    with pytest.raises(ValueError, match="zero"):
        binomial_split_counts(np.zeros((4, 4)), seed=0)


def test_half_correlation_is_the_signal_fraction() -> None:
    # Common signal of variance 1 plus independent noise of variance 3 in each half: ρ = 1 / (1 + 3).
    rng = np.random.default_rng(2)
    signal = rng.normal(0.0, 1.0, (256, 256))
    a = signal + rng.normal(0.0, math.sqrt(3.0), signal.shape)
    b = signal + rng.normal(0.0, math.sqrt(3.0), signal.shape)
    ones = np.ones((256, 129))
    rho = filtered_half_correlation(a, b, ones, pixel_size_angstrom=1.0, low_resolution_angstrom=1e6)
    assert rho == pytest.approx(0.25, abs=0.01)


def test_a_filter_that_keeps_the_signal_band_raises_the_correlation() -> None:
    # Signal only below 0.1 Å⁻¹, white noise everywhere: a low-pass at 0.1 Å⁻¹ removes noise, not signal.
    rng = np.random.default_rng(3)
    shape = (256, 256)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    low = (np.hypot(ky, kx) < 0.1).astype(np.float64)
    signal = np.fft.irfft2(np.fft.rfft2(rng.normal(0, 1, shape)) * low, s=shape) * 5.0
    a = signal + rng.normal(0, 1, shape)
    b = signal + rng.normal(0, 1, shape)
    plain = filtered_half_correlation(a, b, np.ones_like(low), 1.0, low_resolution_angstrom=1e6)
    filtered = filtered_half_correlation(a, b, torch.as_tensor(low), 1.0, low_resolution_angstrom=1e6)
    assert filtered > plain + 0.2


def test_half_correlation_rejects_bad_input() -> None:
    a = np.ones((16, 16)) + np.arange(16)
    with pytest.raises(ValueError, match="rfft2 shape"):
        filtered_half_correlation(a, a, np.ones((16, 16)), 1.0)
    with pytest.raises(ValueError, match="equal shapes"):
        filtered_half_correlation(a, a[:8], np.ones((16, 9)), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        filtered_half_correlation(a, a, -np.ones((16, 9)), 1.0)
    with pytest.raises(ValueError, match="no power"):
        filtered_half_correlation(np.ones((16, 16)), np.ones((16, 16)), np.ones((16, 9)), 1.0)


def test_defocus_phase_error_is_hand_computed() -> None:
    # φ = π λ σ / d²: 100 Å at 5 Å and 300 kV (λ = 0.019687 Å).
    expected = math.pi * electron_wavelength_angstrom(300.0) * 100.0 / 25.0
    assert defocus_phase_error_rad(100.0, 5.0, 300.0) == pytest.approx(expected)
    assert expected == pytest.approx(0.2474, abs=1e-4)
    with pytest.raises(ValueError):
        defocus_phase_error_rad(-1.0, 5.0, 300.0)
    with pytest.raises(ValueError):
        defocus_phase_error_rad(1.0, 0.0, 300.0)


def test_cost_model_predicts_n_log_n_scaling() -> None:
    rate = 2e-8
    sizes = [512 * 512, 1024 * 1024, 2048 * 2048]
    times = [rate * fft_cost_units(n) for n in sizes]
    assert predict_seconds(times, sizes, 4096 * 4096) == pytest.approx(rate * fft_cost_units(4096 * 4096))
    assert predict_seconds([], [], 1024) is None
    assert relative_cost_deviation(3.0, 1.0) == pytest.approx(2.0)
    assert relative_cost_deviation(0.5, 1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        predict_seconds([0.0], [1024], 1024)
    with pytest.raises(ValueError):
        relative_cost_deviation(1.0, 0.0)


def test_half_set_frc_is_the_signal_fraction_per_ring_and_finds_the_cutoff() -> None:
    from cryodecon_science.reproducibility import frc_resolution_angstrom, half_set_frc

    # Signal of power 1 below 0.2 Å⁻¹ (5 Å), none above; independent unit noise in each half.
    rng = np.random.default_rng(4)
    shape = (256, 256)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    low = (np.hypot(ky, kx) < 0.2).astype(np.float64)
    signal = np.fft.irfft2(np.fft.rfft2(rng.normal(0, 1, shape)) * low, s=shape)
    signal *= math.sqrt(float(low.mean())) / signal.std()  # in-band power per frequency = the noise's: SNR 1
    a = signal + rng.normal(0, 1, shape)
    b = signal + rng.normal(0, 1, shape)
    k, frc = half_set_frc(a, b, np.ones((256, 129)), pixel_size_angstrom=1.0)
    inside, outside = frc[(k > 0.03) & (k < 0.17)], frc[k > 0.23]
    assert float(np.mean(inside)) == pytest.approx(0.5, abs=0.1)  # SNR 1 per half: FRC = 1/(1 + 1)
    assert abs(float(np.mean(outside))) < 0.03
    resolution = frc_resolution_angstrom(k, frc)
    assert resolution is not None and 4.6 < resolution < 5.6  # the band edge, 5 Å
    # A dip (a CTF zero) inside the band does not end the resolution: the last crossing counts.
    dipped = frc.copy()
    dipped[(k > 0.09) & (k < 0.1)] = 0.0
    assert frc_resolution_angstrom(k, dipped) == pytest.approx(resolution)
    assert frc_resolution_angstrom(k, np.zeros_like(frc)) is None


def test_cost_deviation_compares_each_micrograph_with_the_others_of_its_batch() -> None:
    from cryodecon_science.reproducibility import StepTime, cost_deviations

    n = 1024 * 1024
    # Two stages; m2 takes three times as long as the others in the second stage.
    times = {
        "ctf": [StepTime("m0", 1.0, n), StepTime("m1", 1.0, n), StepTime("m2", 1.0, n)],
        "priors": [StepTime("m0", 2.0, n), StepTime("m1", 2.0, n), StepTime("m2", 6.0, n)],
    }
    deviations = cost_deviations(times, ("ctf", "priors"))
    assert list(deviations) == ["m0", "m1", "m2"]
    # m2: measured 1 + 6 = 7 s against the others' 1 + 2 = 3 s; m0: 3 s against 1 + median(2, 6) = 5 s.
    assert deviations["m2"] == pytest.approx(4.0 / 3.0)
    assert deviations["m0"] == pytest.approx(2.0 / 5.0)
    # A micrograph missing a stage, a stage without times, a micrograph alone: no deviation.
    assert "m2" not in cost_deviations({"ctf": times["ctf"], "priors": times["priors"][:2]}, ("ctf", "priors"))
    assert cost_deviations({"ctf": times["ctf"]}, ("ctf", "priors")) == {}
    assert cost_deviations({"ctf": times["ctf"][:1]}, ("ctf",)) == {}


def test_nrmsd_and_stable_seed() -> None:
    from cryodecon_science.reproducibility import nrmsd, stable_seed

    reference = np.random.default_rng(0).normal(5.0, 2.0, (64, 64))
    assert nrmsd(reference, reference) == 0.0
    assert nrmsd(reference + 0.1 * reference.std(), reference) == pytest.approx(0.1)
    assert stable_seed("demo_mic_0000") == stable_seed("demo_mic_0000") != stable_seed("demo_mic_0001")
    assert 0 <= stable_seed("x") < 2**32
