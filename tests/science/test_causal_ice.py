"""The ice_thickness node on the image-formation simulator: it tracks the thickness and ignores the dose.

``simulate_micrograph`` forms an unfiltered image: a fraction f_in = 1 − exp(−t/λ_in) of the electrons is
scattered inelastically and arrives as a smooth, non-phase-contrast intensity background whose relative
modulation grows with f_in (``cryodecon_science.simulate``, step 3).  The mean count stays at the dose,
so the index must come from the low-frequency intensity (``causal.nodes`` ice index), not from the mean.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats

from cryodecon_science.causal import (
    CAUSE_NODES,
    degradation_losses,
    degradation_weights,
    estimate_nodes,
    fit_priors,
    refine_spectral_model,
)
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.optics import MicroscopeSettings, frequency_grid_per_angstrom
from cryodecon_science.records import CtfFit
from cryodecon_science.restoration.restore import expected_ctf_squared
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

BASE = SimulationConfig(
    shape_px=(512, 512),
    defocus_range_angstrom=(15000.0, 15000.0),
    max_astigmatism_angstrom=0.0,
    bfactor_range_angstrom2=(80.0, 80.0),
    ice_thickness_range_nm=(40.0, 40.0),
    dose_e_per_angstrom2=40.0,
    particles_per_micrograph=12,
)


def _ice(config: SimulationConfig, seed: int) -> tuple[float, float, float]:
    sim = simulate_micrograph(config, "ice", (2026, seed))
    fit = estimate_ctf(sim.counts, config.microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom)
    value, sigma = estimate_nodes(sim.counts, fit, config.microscope, config.dose_e_per_angstrom2, None, None)[
        "ice_thickness"
    ]
    return value, sigma, float(sim.counts.mean()) / config.dose_per_pixel_e


def test_mean_counts_do_not_measure_unfiltered_ice() -> None:
    # Without an energy filter the inelastic electrons are counted: ⟨counts⟩/dose stays 1 within 1 %
    # from 10 to 100 nm, so t = λ_in ln(dose/⟨counts⟩) would read ≈ 0 nm for every thickness.
    for thickness in (10.0, 100.0):
        _, _, ratio = _ice(replace(BASE, ice_thickness_range_nm=(thickness, thickness)), 0)
        assert ratio == pytest.approx(1.0, abs=0.01)


def test_ice_index_tracks_thickness_over_a_sweep() -> None:
    levels = (10.0, 40.0, 70.0, 100.0)
    values, sigmas = [], []
    for thickness in levels:
        for seed in (0, 1):
            value, sigma, _ = _ice(replace(BASE, ice_thickness_range_nm=(thickness, thickness)), seed)
            values.append(value)
            sigmas.append(sigma)
    rho = scipy.stats.spearmanr(np.repeat(levels, 2), values).statistic
    assert rho >= 0.9
    # f_in · a grows ≈ linearly in t for t ≪ λ_in: 100 nm gives well over twice the index of 10 nm, and
    # the change is many σ.
    low, high = np.mean(values[:2]), np.mean(values[-2:])
    assert high > 2.0 * low
    assert high - low > 5.0 * math.hypot(max(sigmas[:2]), max(sigmas[-2:]))


def test_ice_index_does_not_follow_the_dose() -> None:
    # The inelastic fraction, not the number of electrons, sets the relative modulation: 20 → 80 e/Å²
    # at fixed 40 nm moves the index by less than a third.
    low, _, _ = _ice(replace(BASE, dose_e_per_angstrom2=20.0), 0)
    high, _, _ = _ice(replace(BASE, dose_e_per_angstrom2=80.0), 0)
    assert abs(high - low) < 0.34 * max(low, high)


def test_weights_are_the_normalised_losses() -> None:
    sim = simulate_micrograph(BASE, "w", (2026, 0))
    fit = estimate_ctf(sim.counts, BASE.microscope)
    nodes = estimate_nodes(sim.counts, fit, BASE.microscope, None, None, None)
    losses = degradation_losses(nodes, fit, BASE.microscope, sim.counts.shape)
    weights = degradation_weights(nodes, fit, BASE.microscope, sim.counts.shape)
    total = sum(losses.values())
    assert total > 0 and all(v >= 0.0 for v in losses.values())
    for node in CAUSE_NODES:
        assert weights[node] == pytest.approx(losses[node] / total)


def _weights(config: SimulationConfig, seed: int) -> dict[str, float]:
    sim = simulate_micrograph(config, "dose", (2026, seed))
    fit = estimate_ctf(sim.counts, config.microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom)
    priors = fit_priors(sim.counts, fit, config.microscope, dose_e_per_angstrom2=config.dose_e_per_angstrom2)
    return {e.node: e.weight for e in priors.estimates}


def test_more_dose_lowers_the_dose_weight_most() -> None:
    # 10 → 100 e/Å²: below the optimal exposure (35 e/Å² at 10 Å, 97 e/Å² at 20 Å) the dose is what limits
    # the particle band; at 100 e/Å² it hardly is.  Mean change over two exposures: the dose weight falls,
    # by more than any other weight moves (by about half of the whole).
    change = dict.fromkeys(CAUSE_NODES, 0.0)
    for seed in (0, 1):
        low = _weights(replace(BASE, dose_e_per_angstrom2=10.0), seed)
        high = _weights(replace(BASE, dose_e_per_angstrom2=100.0), seed)
        for node in CAUSE_NODES:
            change[node] += (high[node] - low[node]) / 2.0
    assert max(change, key=lambda node: abs(change[node])) == "dose"
    assert change["dose"] < -0.4


def _whittle_per_sample(image: np.ndarray, fit: CtfFit, microscope: MicroscopeSettings) -> float:
    """Mean Whittle log-likelihood −(ln μ + P/μ) over the rfft samples 0 < k ≤ Nyquist, μ = S·CTF²_eff + B."""
    x = image.astype(np.float64)
    power = (np.abs(np.fft.rfft2(x - x.mean())) ** 2 / x.size).ravel()
    ky, kx = frequency_grid_per_angstrom(image.shape, microscope.pixel_size_angstrom, rfft=True)
    k = np.hypot(ky, kx).ravel()
    signal, background = fit.spectral_model.interpolate(k)
    ctf2 = expected_ctf_squared(image.shape, fit, microscope).numpy().astype(np.float64).ravel()
    mu = np.maximum(signal, 0.0) * ctf2 + np.maximum(background, 0.0)
    use = (k > 0) & (k <= microscope.nyquist_per_angstrom)
    return float(-np.mean(np.log(mu[use]) + power[use] / mu[use]))


def test_loop_passes_never_lower_the_whole_spectrum_likelihood() -> None:
    # A 512² exposure whose rings reach only 8 Å (B = 20 Å², few particles): the signal/background split
    # below the fit is weakly determined.  Each pass of the loop is a Fisher-scoring step of the Whittle
    # likelihood; scored over every ring it changes, it must not lower the likelihood of the whole
    # spectrum.
    config = replace(BASE, bfactor_range_angstrom2=(20.0, 20.0))
    sim = simulate_micrograph(config, "loop", (2026, 1))
    fit = estimate_ctf(sim.counts, config.microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom)
    assert fit.fit_resolution_angstrom > 7.0  # the weakly determined case this test is about
    start = fit.spectral_model
    likelihoods = [_whittle_per_sample(sim.counts, fit, config.microscope)]
    for _ in range(8):
        fit = replace(fit, spectral_model=refine_spectral_model(sim.counts, fit, config.microscope))
        likelihoods.append(_whittle_per_sample(sim.counts, fit, config.microscope))
    assert all(b >= a - 1e-5 for a, b in itertools.pairwise(likelihoods)), likelihoods
    # No drift along the split's weak direction: the background stays within 50 % of the estimator's.
    k = fit.spectral_model.frequency_per_angstrom
    ratio = fit.spectral_model.background_power / start.interpolate(k)[1]
    valid = slice(fit.spectral_model.valid_from_index, fit.spectral_model.valid_to_index + 1)
    assert float(np.max(np.abs(np.log(ratio[valid])))) < math.log(1.5), ratio[valid]
