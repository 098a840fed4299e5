"""Degradation weights: each cause's share of the information the micrograph loses.

Every Fourier sample of the band from the model's first valid ring to 12 Å (one band for all
micrographs) is a Gaussian channel of capacity ln(1 + ψ), ψ the particles' spectral SNR; a cause is
charged the information gained by the intervention do(cause = ideal) on the fitted model, the other
nodes held: no envelope, no blur, no ice background or ice phase contrast, an ideal counting detector,
perfect transfer (shared between defocus, astigmatism and C_s by their phase terms), the optimal exposure
of Grant & Grigorieff (2015) where the dose is below it, and the Jensen gap of the specimen's variation
across the micrograph (:func:`degradation_losses`).  The band means, normalised to sum 1, are the
weights (:func:`degradation_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cryodecon_science.causal.envelope import ice_signal
from cryodecon_science.causal.graph import CAUSE_NODES
from cryodecon_science.causal.spectral import FloatArray, band_indices, ring_average_sinc2
from cryodecon_science.optics import MicroscopeSettings, frequency_grid_per_angstrom
from cryodecon_science.records import CtfFit
from cryodecon_science.restoration.restore import expected_ctf_squared

ATTRIBUTION_BAND_ANGSTROM = 12.0
"""Finest period (Å) of the band of the degradation weights (:func:`degradation_losses`): one band for every
micrograph, inside the fit resolution of any micrograph worth keeping (curation thresholds are typically
6–10 Å)."""
CRITICAL_EXPOSURE_COEFFICIENTS = (0.245, -1.665, 2.81)
"""(a, b, c) of the critical exposure N_e(k) = a k^b + c, e/Å² with k in 1/Å (Grant & Grigorieff 2015, 300 kV)."""
OPTIMAL_EXPOSURE_PER_CRITICAL = 2.51
"""The exposure that maximises the SNR at k, in units of the critical exposure (Grant & Grigorieff 2015)."""


def degradation_weights(
    nodes: Mapping[str, tuple[float, float]],
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    shape_px: tuple[int, int],
) -> dict[str, float]:
    """Each cause's share of the degradation: :func:`degradation_losses` normalised to sum 1.

    Uniform (1/9 each) when no cause loses anything.
    """
    losses = degradation_losses(nodes, ctf_fit, microscope, shape_px)
    total = sum(losses.values())
    if not total > 0:
        return {node: 1.0 / len(CAUSE_NODES) for node in CAUSE_NODES}
    return {node: losses[node] / total for node in CAUSE_NODES}


def degradation_losses(
    nodes: Mapping[str, tuple[float, float]],
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    shape_px: tuple[int, int],
) -> dict[str, float]:
    """Each cause's information loss (nats per Fourier sample) in the attribution band, before normalisation.

    Channel.  Each rfft sample k of an image of ``shape_px`` is a Gaussian channel for the particles'
    signal, of capacity I(k) = ln(1 + ψ(k)) nats (Shannon 1949, Proc. IRE 37:10; the spectral SNR ψ
    is what a Wiener filter works with), with

        ψ = S_p·C / (N_shot + N_excess + N_inel + S_ice·C),

    S = S_p + S_ice the model signal (``ctf_fit.spectral_model``: specimen × envelope × blur), S_ice its
    amorphous-ice part (:func:`ice_signal`, × the blur; 0 when the fit does not reach beyond 8 Å) —
    the ice's phase contrast is structural noise for the particles — C = CTF²_eff
    (:func:`~cryodecon_science.restoration.restore.expected_ctf_squared`: ½ beyond the fit resolution), and the
    background B = F + N_inel split into shot noise N_shot = min(⟨counts⟩, F), the detector's excess
    N_excess = max(F − ⟨counts⟩, 0) and the inelastic/ice background N_inel = max(B − F, 0).

    Loss of a cause.  The information gained by the intervention do(cause = ideal) on this model, every
    other node held at its value: L_c = ⟨ln(1 + ψ_c) − ln(1 + ψ)⟩ over the band, with ψ_c

    * coherence_envelope: B → 0, S_p and S_ice × exp(B k²/2);
    * beam_induced_motion: drift → 0, S_p / ⟨sinc²⟩ and S_ice un-blurred (:func:`ring_average_sinc2`);
    * ice_thickness: no ice, N_inel → 0 and S_ice → 0 (the elastic signal the ice scatters away is not
      charged: one unfiltered image cannot tell it from a weaker specimen, see :func:`~.nodes._ice_index`);
    * detector_noise: N_excess → 0 (an ideal counting detector);
    * defocus, astigmatism, spherical_aberration: perfect transfer, C → 1, the gain shared per sample
      in proportion to |χ_i| of each term of the phase (π λ Δf̄ k², π λ (U−V)/2 cos 2(θ−θ_a) k²,
      ½ π C_s λ³ k⁴);
    * dose: the exposure raised to the optimal exposure at k where it is below it,
      D → max(D, D_opt(k)) (:func:`optimal_exposure_e_per_angstrom2`; beyond D_opt radiation damage
      destroys more signal than the extra electrons add), with S ∝ D², N_shot ∝ D, N_inel ∝ D² and
      N_excess fixed;
    * sample_heterogeneity: the Jensen gap of a specimen whose signal varies across the micrograph with
      coefficient of variation CV, ln(1 + ψ) − E ln(1 + ψX) ≈ ψ² CV² / (2 (1 + ψ)²) (second order in
      X, E X = 1): information does not care where the particles are at low SNR, it does at high SNR.

    Properties: L_c ≥ 0; at high SNR the envelope's loss tends to B k²/2 and the blur's to −ln⟨sinc²⟩
    (the log-SNR loss), at low SNR to ψ·(gain − 1) — a cause is charged only for signal that exists.

    Band: the model's valid range up to 1/:data:`ATTRIBUTION_BAND_ANGSTROM` (12 Å), the same for every
    micrograph, so that weights compare across a session, and inside the fit of every micrograph worth
    keeping: beyond a micrograph's fit the signal without its envelope, S·exp(B k²/2), is noise
    amplified by a poorly known B.

    Each L is the band mean (all zero when the band is empty); :func:`degradation_weights` divides by
    Σ_c L_c.
    """
    model = ctf_fit.spectral_model
    px = microscope.pixel_size_angstrom
    ky, kx = frequency_grid_per_angstrom(shape_px, px, rfft=True)
    k = np.hypot(ky, kx).ravel()
    theta = np.arctan2(ky, kx).ravel()
    k_from, k_to = band_indices(model)
    band = (k >= max(k_from, 1e-12)) & (
        k <= min(k_to, 1.0 / ATTRIBUTION_BAND_ANGSTROM, microscope.nyquist_per_angstrom)
    )
    if not band.any():
        return {node: 0.0 for node in CAUSE_NODES}
    k_b, theta_b = k[band], theta[band]

    b_factor = max(nodes["coherence_envelope"][0], 0.0)
    drift = max(nodes["beam_induced_motion"][0], 0.0)
    signal, background = model.interpolate(k_b)
    signal = np.maximum(signal, 0.0)
    blur = ring_average_sinc2(k_b, drift, px) if drift > 0 else np.ones_like(k_b)
    ice = ice_signal(model, ctf_fit, b_factor, k_b)
    ice_seen = np.minimum(ice * blur, signal)
    particles = signal - ice_seen
    transfer = expected_ctf_squared(shape_px, ctf_fit, microscope).numpy().astype(np.float64).ravel()[band]

    dose = nodes["dose"][0]
    floor = model.noise_floor_power
    shot = min(dose * px**2, floor)
    excess = max(floor - dose * px**2, 0.0)
    inelastic = np.maximum(background - floor, 0.0)

    def information(
        particles: FloatArray = particles,
        ice: FloatArray | float = ice_seen,
        transfer: FloatArray | float = transfer,
        shot: FloatArray | float = shot,
        excess: float = excess,
        inelastic: FloatArray | float = inelastic,
    ) -> FloatArray:
        """ln(1 + ψ) per sample; the defaults are this micrograph's terms."""
        noise = np.maximum(shot + excess + inelastic + ice * transfer, 1e-300)
        return np.asarray(np.log1p(particles * transfer / noise), dtype=np.float64)

    now = information()
    envelope = np.exp(b_factor * k_b**2 / 2.0)
    exposure = np.maximum(optimal_exposure_e_per_angstrom2(k_b) / max(dose, 1e-12), 1.0)
    lam = microscope.wavelength_angstrom
    ctf = ctf_fit.ctf
    phases = np.abs(
        np.stack(
            [
                math.pi * lam * ctf.mean_defocus_angstrom * k_b**2,
                math.pi
                * lam
                * 0.5
                * ctf.astigmatism_angstrom
                * np.cos(2 * (theta_b - math.radians(ctf.astigmatism_angle_deg)))
                * k_b**2,
                0.5 * math.pi * microscope.spherical_aberration_mm * 1e7 * lam**3 * k_b**4,
            ]
        )
    )
    phase_total = phases.sum(axis=0)
    phase_share = np.divide(phases, phase_total, out=np.full_like(phases, 1.0 / 3.0), where=phase_total > 0)
    transfer_gain = information(transfer=1.0) - now
    snr = np.expm1(now)
    cv = max(nodes["sample_heterogeneity"][0], 0.0)
    per_sample = {
        "dose": information(
            particles=particles * exposure**2,
            ice=ice_seen * exposure**2,
            shot=shot * exposure,
            inelastic=inelastic * exposure**2,
        )
        - now,
        "beam_induced_motion": information(particles=particles / np.maximum(blur, 1e-6), ice=ice) - now,
        "ice_thickness": information(ice=0.0, inelastic=0.0) - now,
        "detector_noise": information(excess=0.0) - now,
        "defocus": transfer_gain * phase_share[0],
        "astigmatism": transfer_gain * phase_share[1],
        "spherical_aberration": transfer_gain * phase_share[2],
        "coherence_envelope": information(particles=particles * envelope, ice=ice_seen * envelope) - now,
        "sample_heterogeneity": snr**2 * cv**2 / (2.0 * (1.0 + snr) ** 2),
    }
    return {node: max(float(np.mean(per_sample[node])), 0.0) for node in CAUSE_NODES}


def optimal_exposure_e_per_angstrom2(k_per_angstrom: FloatArray) -> FloatArray:
    """The exposure (e/Å²) that maximises the SNR at spatial frequency k (1/Å): 2.51 × the critical exposure.

    Critical exposure N_e(k) = a k^b + c with a = 0.245, b = −1.665, c = 2.81 (e/Å², k in 1/Å), the
    exposure after which the signal at k has fallen to 1/e by radiation damage, measured at 300 kV on
    rotavirus VP6; the SNR of a frame sum is largest at 2.51 N_e (Grant & Grigorieff 2015, eLife
    4:e06980, eq. 3 and Fig. 2).  At 10 Å ≈ 35 e/Å², at 20 Å ≈ 97 e/Å².
    """
    a, b, c = CRITICAL_EXPOSURE_COEFFICIENTS
    k = np.maximum(np.asarray(k_per_angstrom, dtype=np.float64), 1e-6)
    return np.asarray(OPTIMAL_EXPOSURE_PER_CRITICAL * (a * np.power(k, b) + c), dtype=np.float64)
