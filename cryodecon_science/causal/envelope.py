"""The coherence envelope: B-factor of the signal from a two-component fit, particles' fall-off plus ice.

:func:`coherence_bfactor` fits ln S(k) = ln[p·exp(−B_p k²/2) + a·shape_ice(k)] − B k²/2 over the signal band
(the two regimes of a Guinier plot; Rosenthal & Henderson 2003, J. Mol. Biol. 333:721–745), with the ice
spectrum's shape of McMullan et al. 2015 (:func:`~cryodecon_science.optics.amorphous_ice_spectrum_shape`);
the ice amplitude is pooled over the session.  :func:`ice_signal` is the ice's part of the model signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize

from cryodecon_science.causal.graph import sigma_floor
from cryodecon_science.causal.session_prior import Population, consistent
from cryodecon_science.causal.spectral import (
    Fisher,
    FloatArray,
    Spectrum,
    band_indices,
    ring_average_sinc2,
    signal_band_rings,
)
from cryodecon_science.optics import MicroscopeSettings, amorphous_ice_spectrum_shape
from cryodecon_science.records import CtfFit, SpectralModel

UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2 = 1000.0
"""σ reported for B when the spectrum cannot separate the envelope from the specimen (:func:`coherence_bfactor`)."""
ENVELOPE_BAND_ANGSTROM = 8.0
"""Coarsest period (Å) of the band where the specimen is taken to be the ice (:func:`ice_signal`)."""
MIN_ENVELOPE_RINGS = 6
"""Fewest rings (samples) with signal for an envelope fit or an ice amplitude (4 parameters need > 4)."""
ICE_SPECIMEN_POWER_SIGMA_CAP = 10.0
"""Largest σ (ln units) recorded for η: where the rings stop before the ice shows, its σ is this, i.e. no weight."""

_PARTICLE_FALLOFF_STARTS_ANGSTROM2 = (200.0, 600.0, 2000.0)


@dataclass(frozen=True)
class _EnvelopeFit:
    """(B, σ_B) in Å² and the ice term's ln a with its σ, of :func:`_two_component_envelope`."""

    b_factor: float
    sigma_b_factor: float
    ln_ice: float
    sigma_ln_ice: float


def coherence_bfactor(
    spectrum: Spectrum,
    fisher: Fisher,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    drift_px: float | None,
    ice_prior: Population | None = None,
) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """Envelope B (Å²) from a two-component fit of the signal: particles' fall-off plus the ice, × envelope.

    Why two components.  The signal S(k) of the spectral model is the specimen's power spectrum times
    the envelope, S = S_spec(k)·exp(−B k²/2).  A plain regression of ln S on k² measures the specimen
    as much as the microscope: at low resolution S_spec falls steeply (the particles' form factor, the
    Guinier region), at high resolution it is that of the embedding ice, whose shape is known
    (:func:`~cryodecon_science.optics.amorphous_ice_spectrum_shape`, McMullan et al. 2015; a protein's
    own Wilson-regime spectrum is, to first order, as flat).  So over the rings of the signal band
    (valid range up to the fit resolution) the model is

        ln S(k) = ln[p·exp(−B_p k²/2) + a·shape_ice(k)] − B k²/2,

    a Guinier-like particle term (amplitude p, fall-off B_p) plus the ice term (amplitude a), under the
    envelope B — the two regimes of a Guinier plot (Rosenthal & Henderson 2003, J. Mol. Biol.
    333:721–745, read B from the high-resolution one).  Weighted nonlinear least squares
    (``scipy.optimize.least_squares``, three starts in B_p), weights Σ H² per ring (the Fisher
    information on ln S of the ring, :class:`Fisher`); σ_B from the Gauss–Newton covariance
    (JᵀWJ)⁻¹ times max(1, reduced χ²).  Where the fit resolution stops before the ice term shows, B and
    the specimen trade off and σ_B is large by itself (capped at
    :data:`UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2`, which is also the σ when fewer than
    :data:`MIN_ENVELOPE_RINGS` rings carry signal).  A drift measured independently (``drift_px``) is
    divided out first (⟨sinc²⟩); otherwise the blur is part of B.

    The session's ice.  The ice term's amplitude relative to the squared mean count,
    η = ln(a/⟨counts⟩²), is the ice's projected-potential power per unit contrast, ∝ its thickness
    (uncorrelated slabs add), and does not depend on the envelope.  Where the rings reach the water ring
    (3.7 Å) one micrograph measures it to a few per cent; where they stop at 5–7 Å (high B, thick ice,
    low dose) η and B trade off and B alone is noisy.  So η is a nuisance pooled over the session: its
    population ``ice_prior`` (:meth:`~.session_prior.SessionPrior.population` of
    :data:`~.graph.ICE_SPECIMEN_POWER`) enters the fit as a normal prior on ln a, N(μ̂ + ln⟨counts⟩², τ̂² + Var μ̂),
    unless this micrograph's own η is inconsistent with it (:func:`consistent`; ice that really differs keeps
    its own).  On a session of constant ice τ̂ is small and pins the ice term; on one whose ice varies τ̂ is
    wide and the prior weak.  The micrograph's own η (fit without the prior, σ capped at
    :data:`ICE_SPECIMEN_POWER_SIGMA_CAP`) is returned for the session (None where no fit ran), so the
    prior is never fed back into itself.

    Returns
    -------
    ((B, σ_B), (η, σ_η) or None)
    """
    model = ctf_fit.spectral_model
    k_r = spectrum.ring_k_per_angstrom
    signal_r, _ = model.interpolate(k_r)
    if drift_px:
        blur = ring_average_sinc2(k_r, drift_px, microscope.pixel_size_angstrom)
        signal_r = signal_r / np.maximum(blur, 1e-6)
    use = signal_band_rings(spectrum, ctf_fit) & (fisher.ring_hh > 0) & (signal_r > 0)
    if int(use.sum()) < MIN_ENVELOPE_RINGS:
        return (0.0, UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2), None
    k, signal, information = k_r[use], signal_r[use], fisher.ring_hh[use]
    alone = _two_component_envelope(k, signal, information)
    ln_counts2 = 2.0 * math.log(spectrum.mean_counts)
    ln_power = alone.ln_ice - ln_counts2
    # σ floored like every node's: the session prior refuses σ = 0 (a degenerate covariance can give it).
    eta = (ln_power, sigma_floor(min(alone.sigma_ln_ice, ICE_SPECIMEN_POWER_SIGMA_CAP), ln_power))
    fit = alone
    if ice_prior is not None and consistent(eta[0], eta[1], ice_prior):
        fit = _two_component_envelope(
            k, signal, information, ln_ice_prior=(ice_prior.mean + ln_counts2, ice_prior.predictive_variance)
        )
    return (fit.b_factor, min(fit.sigma_b_factor, UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2)), eta


def _two_component_envelope(
    k: FloatArray, signal: FloatArray, information: FloatArray, ln_ice_prior: tuple[float, float] | None = None
) -> _EnvelopeFit:
    """ln S = ln[p e^{−B_p k²/2} + a shape_ice(k)] − B k²/2 (:func:`coherence_bfactor`), optionally with a
    normal prior (mean, variance) on ln a: one more residual (ln a − mean)/√variance in the same χ²."""
    x = k**2
    y = np.log(signal)
    ln_shape = np.log(amorphous_ice_spectrum_shape(k))
    scale = float(information.max())
    root_w = np.sqrt(information / scale)

    def residual(theta: FloatArray) -> FloatArray:
        ln_p, b_particle, ln_a, b_factor = theta
        predicted = np.logaddexp(ln_p - b_particle * x / 2.0, ln_a + ln_shape) - b_factor * x / 2.0
        r = root_w * (predicted - y)
        if ln_ice_prior is not None:
            r = np.append(r, (ln_a - ln_ice_prior[0]) / math.sqrt(ln_ice_prior[1] * scale))
        return np.asarray(r, dtype=np.float64)

    best: Any = None
    for b_particle in _PARTICLE_FALLOFF_STARTS_ANGSTROM2:
        start = np.array([float(y[0]), b_particle, float(y[-1]), 50.0])
        result = scipy.optimize.least_squares(
            residual,
            start,
            bounds=([-np.inf, 0.0, -np.inf, -100.0], [np.inf, 1e5, np.inf, 5000.0]),
            x_scale=np.array([1.0, 100.0, 1.0, 20.0]),
        )
        if best is None or result.cost < best.cost:
            best = result
    dof = max(y.size + (ln_ice_prior is not None) - 4, 1)
    chi2_reduced = 2.0 * float(best.cost) * scale / dof
    jac = np.asarray(best.jac, dtype=np.float64)
    # No pseudo-inverse: where the data cannot tell B from the particles' fall-off (no ice term), the
    # columns of B and B_p are collinear and B's variance must come out huge, not minimum-norm.
    information = jac.T @ jac
    ridge = 1e-12 * max(float(np.trace(information)), 1e-300)
    covariance = np.linalg.inv(information + ridge * np.eye(4)) / scale * max(1.0, chi2_reduced)
    return _EnvelopeFit(
        b_factor=float(best.x[3]),
        sigma_b_factor=math.sqrt(max(float(covariance[3, 3]), 0.0)),
        ln_ice=float(best.x[2]),
        sigma_ln_ice=math.sqrt(max(float(covariance[2, 2]), 0.0)),
    )


def ice_signal(model: SpectralModel, ctf_fit: CtfFit, b_factor: float, k: FloatArray) -> FloatArray:
    """The vitreous ice's part of the model signal at ``k``: a · shape_ice(k) · exp(−B k²/2).

    Beyond 1/:data:`ENVELOPE_BAND_ANGSTROM` (8 Å) the specimen spectrum is the ice's (the particles'
    form factor has fallen off; :func:`coherence_bfactor`), so where the trusted band (the model's
    valid range up to the fit resolution) holds at least :data:`MIN_ENVELOPE_RINGS` model samples
    there, the ice amplitude is a = median of S(k)·exp(B k²/2)/shape_ice(k) over them.  Otherwise the
    ice cannot be told from the particles and its part is 0.
    """
    f = model.frequency_per_angstrom
    k_from, k_to = band_indices(model)
    k_top = min(k_to, 1.0 / ctf_fit.fit_resolution_angstrom)
    ice_band = (f >= max(k_from, 1.0 / ENVELOPE_BAND_ANGSTROM)) & (f <= k_top) & (model.signal_power > 0)
    if int(ice_band.sum()) < MIN_ENVELOPE_RINGS:
        return np.zeros_like(k)
    f_i = f[ice_band]
    amplitude = float(
        np.median(model.signal_power[ice_band] * np.exp(b_factor * f_i**2 / 2.0) / amorphous_ice_spectrum_shape(f_i))
    )
    return np.asarray(amplitude * amorphous_ice_spectrum_shape(k) * np.exp(-b_factor * k**2 / 2.0), dtype=np.float64)
