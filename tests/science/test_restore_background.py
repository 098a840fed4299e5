"""The user-facing denoiser keeps the micrograph's low-resolution content; the loop's signal estimate not.

Simulated micrograph with ice (known truth), CTF fitted by the estimator: the 200–40 Å band holds the
ice/inelastic background, which is image content.  ``wiener_denoise`` must keep its power (the LogicScore
rule ``restoration_conserves_low_frequency_power`` asks for a ratio in [0.5, 1.5]); the signal-only
estimate the causal loop uses removes most of it by design.
"""

from __future__ import annotations

from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.restoration.restore import wiener_denoise, wiener_signal_estimate
from cryodecon_science.scoring import low_frequency_power_ratio
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph


def test_denoise_keeps_low_frequency_power_and_removes_noise() -> None:
    config = SimulationConfig(shape_px=(512, 512), particles_per_micrograph=8, ice_thickness_range_nm=(50.0, 60.0))
    sim = simulate_micrograph(config, "keep_low", (5, 0, 0))
    fit = estimate_ctf(sim.counts, config.microscope)
    denoised = wiener_denoise(sim.counts, fit, config.microscope)
    signal_only = wiener_signal_estimate(sim.counts, fit, config.microscope)
    assert 0.5 <= low_frequency_power_ratio(sim.counts, denoised, 1.0) <= 1.5
    assert low_frequency_power_ratio(sim.counts, signal_only, 1.0) < 0.5
    # And it is a denoiser: closer to the noise-free image than the raw counts.
    raw_error = float(((sim.counts - sim.clean_image) ** 2).mean())
    denoised_error = float(((denoised - sim.clean_image) ** 2).mean())
    assert denoised_error < 0.5 * raw_error
