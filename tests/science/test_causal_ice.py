"""The ice_thickness node on the image-formation simulator: it tracks the thickness and ignores the dose.

``simulate_micrograph`` forms an unfiltered image: a fraction f_in = 1 − exp(−t/λ_in) of the electrons is
scattered inelastically and arrives as a smooth, non-phase-contrast intensity background whose relative
modulation grows with f_in (``cryodecon_science.simulate``, step 3).  The mean count stays at the dose,
so the index must come from the low-frequency intensity (``causal._ice_index``), not from the mean.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats

from cryodecon_science.causal import CAUSE_NODES, degradation_losses, degradation_weights, estimate_nodes, fit_priors
from cryodecon_science.ctf_estimate import estimate_ctf
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
