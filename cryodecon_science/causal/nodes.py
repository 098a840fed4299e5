"""Node estimation: every cause of the graph measured from one micrograph, as (value, σ).

:func:`estimate_nodes` (and :func:`measure_nodes`, its form on a prepared spectrum) measures the dose from
the mean counts, the beam-induced motion from the motion correction or the spectrum's 2θ anisotropy, the
ice index from the low-frequency intensity no phase contrast explains, the detector index from the noise
floor, the CTF geometry from the CTF fit, the coherence envelope by the two-component fit of
:mod:`cryodecon_science.causal.envelope`, and the sample heterogeneity from the tiles' low-frequency signal.
Units: :data:`~.graph.NODE_UNITS`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from cryodecon_science.causal.envelope import coherence_bfactor
from cryodecon_science.causal.graph import ICE_SPECIMEN_POWER, sigma_floor
from cryodecon_science.causal.session_prior import SessionPrior, shrink_towards_prior
from cryodecon_science.causal.spectral import (
    Fisher,
    FloatArray,
    ImageLike,
    ModelOnGrid,
    Spectrum,
    fisher_information,
    floor_band_rings,
    micrograph_spectrum,
    model_on_grid,
)
from cryodecon_science.optics import MicroscopeSettings
from cryodecon_science.records import CtfFit, SpectralModel

INELASTIC_BAND_ANGSTROM = 100.0
"""Finest period (Å) of the band 0 < k ≤ 1/100 Å where the inelastic intensity background is measured."""
MOTION_ANNULUS_FRACTION = (0.3, 0.7)
"""Annulus (fractions of min(k_fit, Nyquist)) where spectral anisotropy measures motion blur."""
SPHERICAL_ABERRATION_RELATIVE_SIGMA = 0.02
"""Assumed σ of C_s: 2 % of the nominal value (manufacturers quote C_s to a few per cent)."""
SPHERICAL_ABERRATION_SIGMA_FLOOR_MM = 0.01
"""Assumed σ floor of C_s (mm), for C_s-corrected microscopes with C_s ≈ 0."""
DRIFT_SIGMA_FLOOR_PX = 0.25
DRIFT_RELATIVE_SIGMA = 0.1
"""Assumed σ of a drift read from motion correction: √(0.25² + (0.1 d)²) px (sub-pixel trajectories)."""
UNDETECTED_HETEROGENEITY_SIGMA = 1.0
"""σ reported for sample_heterogeneity when no low-frequency signal is detected in the tiles (value 0)."""

_MAX_MOTION_SAMPLES = 20000
_N_BISECTION = 24


def _band_basis_mean(spectrum: Spectrum, fisher: Fisher, rings: npt.NDArray[np.bool_]) -> FloatArray:
    """Sample-weighted mean of the background basis over ``rings``, padded to the full parameter vector."""
    counts = spectrum.ring_counts * rings
    mean_basis = (fisher.ring_basis @ counts) / max(float(counts.sum()), 1.0)
    return np.concatenate([np.zeros(2), mean_basis])


def _detector_index(
    spectrum: Spectrum, fisher: Fisher, model: SpectralModel, microscope: MicroscopeSettings
) -> tuple[float, float]:
    """F / mean counts; σ: Cramér–Rao σ of ln B over 0.75–1 Nyquist, and the mean's standard error."""
    mean = spectrum.mean_counts
    index = model.noise_floor_power / mean
    d = _band_basis_mean(spectrum, fisher, floor_band_rings(spectrum, microscope))
    relative_floor = math.sqrt(max(float(d @ fisher.covariance @ d), 0.0))
    # SE of the mean: the image variance is the mean of the periodogram over all frequencies.
    relative_mean = math.sqrt(float(np.mean(spectrum.power)) / spectrum.power.size) / mean
    return index, index * math.hypot(relative_floor, relative_mean)


def _rfft_multiplicity(shape_px: tuple[int, int]) -> FloatArray:
    """How many samples of the full 2-D spectrum each ``rfft2`` sample stands for (flattened).

    2 for 0 < k_x < Nyquist (the Friedel mate −k has the same power), 1 on the k_x = 0 column and, for
    an even width, on the Nyquist column.
    """
    ny, nx = shape_px
    multiplicity = np.full((ny, nx // 2 + 1), 2.0)
    multiplicity[:, 0] = 1.0
    if nx % 2 == 0:
        multiplicity[:, -1] = 1.0
    return multiplicity.ravel()


def _ice_index(spectrum: Spectrum, grid: ModelOnGrid, model: SpectralModel) -> tuple[float, float]:
    """Relative RMS of the low-frequency intensity that no phase contrast explains: σ_I / ⟨counts⟩.

    Physics.  An electron scattered inelastically in the ice (fraction f_in = 1 − exp(−t/λ_in),
    λ_in ≈ 350 nm in vitreous ice at 300 kV; Rice et al. 2018, J. Struct. Biol. 204:38, Beer–Lambert)
    has lost its coherence with the unscattered wave, so it carries no phase contrast; on a detector
    without energy filter it still arrives, as a smooth low-resolution *intensity* image
    f_in · D · (1 + a·g(x)) (D the dose per pixel, g the relative variation of the inelastic image from
    thickness and density changes).  The mean count therefore stays ≈ D (the ratio of mean counts to
    header dose, t = λ_in ln(D/⟨counts⟩), only works for zero-loss-filtered or aperture-limited images),
    but the low-frequency intensity modulation grows as f_in · a ≈ (t/λ_in) · a.  Below
    :data:`INELASTIC_BAND_ANGSTROM` (100 Å) the phase contrast of a weak-phase object is weak
    (CTF ≈ −(w + π λ Δf k²), a few %) and is subtracted with the model: what remains is this amplitude
    background.

    Estimate.  Over the rfft samples 0 < k ≤ 1/100 Å (at least three rings), the excess
    e = P − F − S·CTF²_eff (P = |FFT(x − ⟨x⟩)|²/N, F the white floor, S·CTF² the phase signal of the
    spectral model) summed over the full plane is, by Parseval, the variance σ_I² (counts²) of the
    low-frequency intensity; the index is √max(σ_I², 0)/⟨counts⟩ (dimensionless; ≈ f_in · a, monotone
    in the thickness, not a thickness in nm: a, the relative contrast of the inelastic image, is not
    known from one unfiltered image).  σ: each half-plane periodogram sample is exponential
    (Var P = μ² ≈ P²/2 unbiased from E P² = 2μ²), so Var σ_I² = Σ m² P²/(2 N²) (m the Friedel
    multiplicity); propagated through the square root as σ_v / (⟨counts⟩ (2√v + √σ_v)), which is the
    delta-method σ_v/(2√v) for v ≫ σ_v and √σ_v at v = 0.
    """
    k = spectrum.k_per_angstrom
    band = (spectrum.ring >= 1) & (k <= 1.0 / INELASTIC_BAND_ANGSTROM)
    if int(np.unique(spectrum.ring[band]).size) < 3:  # coarse sampling: use the first three rings
        band = (spectrum.ring >= 1) & (spectrum.ring <= 3)
    floor = model.noise_floor_power
    if not floor > 0:
        raise ValueError("spectral model has a non-positive noise floor")
    n_pixels = float(spectrum.shape_px[0] * spectrum.shape_px[1])
    multiplicity = _rfft_multiplicity(spectrum.shape_px)[band]
    power = spectrum.power[band]
    phase_signal = grid.signal[band] * grid.ctf2[band]
    variance = float(np.sum(multiplicity * (power - floor - phase_signal))) / n_pixels
    sigma_variance = math.sqrt(float(np.sum((multiplicity * power) ** 2)) / 2.0) / n_pixels
    mean = spectrum.mean_counts
    index = math.sqrt(max(variance, 0.0)) / mean
    sigma = sigma_variance / (mean * (2.0 * math.sqrt(max(variance, 0.0)) + math.sqrt(sigma_variance)))
    return index, sigma


def _windowed_sum_variance(
    coefficients: FloatArray,
    mean_power: FloatArray,
    index_y: npt.NDArray[np.intp],
    index_x: npt.NDArray[np.intp],
    window: FloatArray,
) -> float:
    """Var(Σ a_i P_i) for periodogram samples P_i of one windowed tile with means μ_i.

    For a Gaussian stationary field, Cov(P_i, P_j) ≈ μ_i μ_j (|ρ(k_i − k_j)|² + |ρ(k_i + k_j)|²) with
    ρ = FFT(w²)/Σw² the window's spectral correlation (Percival & Walden, *Spectral Analysis for Physical
    Applications*, 1993, §6.6): neighbouring bins of a Hann-windowed periodogram are correlated.  Exact
    double sum up to 2500 samples; beyond, the white approximation Σ (a μ)² · Σ_Δ |ρ(Δ)|².
    """
    size = window.shape[0]
    rho2 = np.abs(np.fft.fft2(window**2)) ** 2 / float(np.sum(window**2)) ** 2
    weighted = coefficients * mean_power
    if weighted.size <= 2500:
        dy = (index_y[:, None] - index_y[None, :]) % size
        dx = (index_x[:, None] - index_x[None, :]) % size
        sy = (index_y[:, None] + index_y[None, :]) % size
        sx = (index_x[:, None] + index_x[None, :]) % size
        covariance = rho2[dy, dx] + rho2[sy, sx]
        return float(weighted @ covariance @ weighted)
    return float(np.sum(weighted**2)) * float(np.sum(rho2))


def _heterogeneity_and_dose_se(
    spectrum: Spectrum, ctf_fit: CtfFit, microscope: MicroscopeSettings
) -> tuple[tuple[float, float], float]:
    """((excess CV, σ) of low-frequency signal over tiles, standard error of the mean counts).

    Per tile t (Hann-windowed, mean removed, periodogram P = |FFT(w·x)|²/Σw²; :class:`~.spectral.Tiles`), the
    low-frequency signal is the least-squares amplitude s_t = Σ c (P − B) / Σ c² over the band
    (c = CTF²_eff, B the model background), with sampling variance v from :func:`_windowed_sum_variance`
    (μ = S·c + B).  The excess CV removes the expected sampling scatter: CV = √max(0, Var_t(s) − v) /
    mean_t(s); σ_CV = SD_t(s) / (mean_t(s) √(2(n−1))) (normal-theory SE of a sample SD).  Band: 50–10 Å,
    starting at ≥ 2 cycles per tile.
    """
    tiles = spectrum.tiles
    n = tiles.means.size
    dose_se = float(np.std(tiles.means, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    dose_se = max(dose_se, math.sqrt(max(tiles.frame_mean, 0.0) / tiles.frame_size))
    if n < 3:
        return (0.0, UNDETECTED_HETEROGENEITY_SIGMA), dose_se
    c = spectrum.tile_ctf2[tiles.band_iy, tiles.band_ix]
    signal, background = ctf_fit.spectral_model.interpolate(tiles.band_k_per_angstrom)
    mu = np.maximum(signal, 0.0) * c + np.maximum(background, 0.0)
    c2 = float(np.sum(c**2))
    if not c2 > 0:
        return (0.0, UNDETECTED_HETEROGENEITY_SIGMA), dose_se
    s = (tiles.band_power - background) @ c / c2
    v = _windowed_sum_variance(c / c2, mu, tiles.band_iy, tiles.band_ix, tiles.window)
    mean_s = float(np.mean(s))
    var_s = float(np.var(s, ddof=1))
    if not mean_s > 0:
        return (0.0, UNDETECTED_HETEROGENEITY_SIGMA), dose_se
    cv = math.sqrt(max(0.0, var_s - v)) / mean_s
    sigma = math.sqrt(var_s / (2.0 * (n - 1))) / mean_s
    return (cv, sigma), dose_se


def _anisotropy_normal_equations(
    c: FloatArray, theta: FloatArray, weights: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Design X = c·(1, cos 2θ, sin 2θ), Xᵀ W and the (ridged) normal matrix Xᵀ W X of
    :func:`_anisotropy_fit`."""
    design = np.stack([c, c * np.cos(2 * theta), c * np.sin(2 * theta)], axis=1)
    xtw = design.T * weights
    normal = xtw @ design
    normal = normal + np.eye(3) * (1e-12 * max(float(np.trace(normal)), 1e-300))
    return design, xtw, normal


def _anisotropy_fit(
    y: FloatArray, c: FloatArray, theta: FloatArray, weights: FloatArray
) -> tuple[FloatArray, FloatArray, float]:
    """WLS of y ≈ c·(a₀ + a₁ cos 2θ + a₂ sin 2θ); returns (a, covariance, reduced χ²)."""
    design, xtw, normal = _anisotropy_normal_equations(c, theta, weights)
    coef = np.asarray(np.linalg.solve(normal, xtw @ y), dtype=np.float64)
    residual = y - design @ coef
    chi2 = float(np.sum(weights * residual**2)) / max(y.size - 3, 1)
    return coef, np.asarray(np.linalg.inv(normal), dtype=np.float64), chi2


def _blur_from_anisotropy(
    spectrum: Spectrum, grid: ModelOnGrid, ctf_fit: CtfFit, microscope: MicroscopeSettings
) -> tuple[float, float]:
    """Linear blur length d (px) from the 2θ anisotropy of the background-subtracted spectrum.

    In the annulus 0.3–0.7 of min(k_fit, Nyquist), y = (P − B)/S ≈ CTF²·A(θ) with A = sinc²(k_px d
    cos(θ − θ_m)) for motion along θ_m.  A WLS fit (weights (S/μ)², the inverse variance of y) of
    y ≈ CTF²(a₀ + a₁ cos 2θ + a₂ sin 2θ) gives the anisotropy a = √(a₁² + a₂² − σ₁² − σ₂²)/a₀ (Rice-bias
    corrected); d is the first solution of a(d) = a for the same fit applied to the noiseless model A
    (grid on [0, 4/k_px,max] and bisection).  σ_d = the larger distance to the solutions for a ± σ_a
    (when a + σ_a is out of reach, σ_d = the grid's extent: unbounded above).  Isotropic jitter and other
    anisotropies (detector, preferred orientation) are not separated: the σ is a lower bound.
    """
    k_top = min(1.0 / ctf_fit.fit_resolution_angstrom, microscope.nyquist_per_angstrom)
    lo, hi = MOTION_ANNULUS_FRACTION
    k = spectrum.k_per_angstrom
    annulus = (spectrum.ring >= 0) & (k >= lo * k_top) & (k <= hi * k_top) & (grid.signal > 0)
    if int(annulus.sum()) < 16:
        return 0.0, 1.0 / max(hi * k_top * microscope.pixel_size_angstrom, 1e-9)
    signal = grid.signal[annulus]
    y = (spectrum.power[annulus] - grid.background[annulus]) / signal
    weights = (signal / grid.total[annulus]) ** 2
    c = grid.ctf2[annulus]
    theta = spectrum.theta_rad[annulus]
    coef, cov, chi2 = _anisotropy_fit(y, c, theta, weights)
    cov = cov * max(1.0, chi2)
    k_px_max = hi * k_top * microscope.pixel_size_angstrom
    d_max = 1.0 / k_px_max
    if not coef[0] > 0:
        return 0.0, d_max
    amp2 = float(coef[1] ** 2 + coef[2] ** 2 - cov[1, 1] - cov[2, 2])
    anisotropy = math.sqrt(max(amp2, 0.0)) / float(coef[0])
    sigma_a = math.sqrt(0.5 * float(cov[1, 1] + cov[2, 2])) / float(coef[0])
    # motion direction: where the power is lowest, 90° from the harmonic's maximum
    theta_m = 0.5 * math.atan2(float(coef[2]), float(coef[1])) + 0.5 * math.pi
    stride = max(1, c.size // _MAX_MOTION_SAMPLES)
    c_s, th_s, w_s = c[::stride], theta[::stride], weights[::stride]
    # The same WLS on the noiseless model A(θ; d) for every trial d: its coefficients are projector @ y.
    _, xtw_s, normal_s = _anisotropy_normal_equations(c_s, th_s, w_s)
    projector = np.linalg.solve(normal_s, xtw_s)  # (3, n)
    phase_per_px = (k[annulus] * microscope.pixel_size_angstrom)[::stride] * np.cos(th_s - theta_m)

    def anisotropy_of(blur_px: npt.ArrayLike) -> FloatArray:
        """a(d) for blur lengths d (any shape)."""
        d = np.asarray(blur_px, dtype=np.float64)
        b = (c_s * np.sinc(d[..., None] * phase_per_px) ** 2) @ projector.T
        return np.asarray(np.hypot(b[..., 1], b[..., 2]) / b[..., 0], dtype=np.float64)

    # a(d) rises from 0 and ripples once sinc zeros enter the annulus: take the first crossing on a grid
    # of [0, 4 d_max], refined by bisection; beyond the grid the blur is only bounded below.
    d_grid = np.linspace(0.0, 4.0 * d_max, 65)
    a_grid = anisotropy_of(d_grid)

    def solve(target: float) -> float:
        if target <= 0:
            return 0.0
        above = np.nonzero(a_grid >= target)[0]
        if above.size == 0:
            return float(d_grid[-1])
        j = int(above[0])
        if j == 0:
            return 0.0
        lo_d, hi_d = float(d_grid[j - 1]), float(d_grid[j])
        for _ in range(_N_BISECTION):
            mid = 0.5 * (lo_d + hi_d)
            if float(anisotropy_of(mid)) < target:
                lo_d = mid
            else:
                hi_d = mid
        return 0.5 * (lo_d + hi_d)

    d = solve(anisotropy)
    upper = solve(anisotropy + sigma_a)
    if upper >= d_grid[-1]:  # not bounded above by the data
        upper = d + float(d_grid[-1])
    sigma = max(upper - d, d - solve(anisotropy - sigma_a))
    return d, sigma


def measure_nodes(
    spectrum: Spectrum,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    dose_e_per_angstrom2: float | None,
    drift_total_px: float | None,
    session_prior: SessionPrior | None = None,
) -> tuple[dict[str, tuple[float, float]], tuple[float, float] | None]:
    """Every cause node measured by this micrograph (node → (value, σ)) and its own ice power η
    (:data:`ICE_SPECIMEN_POWER`, None where no envelope fit ran); the B-factor fit pools η with the
    session's (:func:`coherence_bfactor`), nothing else uses ``session_prior``."""
    if not spectrum.mean_counts > 0:
        raise ValueError(
            f"image mean is {spectrum.mean_counts}: node estimates need a micrograph in electron counts (> 0)"
        )
    model = ctf_fit.spectral_model
    grid = model_on_grid(spectrum, ctf_fit)
    fisher = fisher_information(spectrum, grid, ctf_fit, microscope)
    px2 = microscope.pixel_size_angstrom**2
    out: dict[str, tuple[float, float]] = {}

    heterogeneity, mean_se = _heterogeneity_and_dose_se(spectrum, ctf_fit, microscope)
    dose = spectrum.tiles.frame_mean / px2  # the whole frame (the spectrum may be of its central crop)
    dose_var = (mean_se / px2) ** 2
    if dose_e_per_angstrom2 is not None:
        dose_var += (dose - float(dose_e_per_angstrom2)) ** 2
    out["dose"] = (dose, math.sqrt(dose_var))

    if drift_total_px is not None:
        d = abs(float(drift_total_px))
        out["beam_induced_motion"] = (d, math.hypot(DRIFT_SIGMA_FLOOR_PX, DRIFT_RELATIVE_SIGMA * d))
    else:
        out["beam_induced_motion"] = _blur_from_anisotropy(spectrum, grid, ctf_fit, microscope)

    out["ice_thickness"] = _ice_index(spectrum, grid, model)
    out["detector_noise"] = _detector_index(spectrum, fisher, model, microscope)
    sigma_defocus = float(ctf_fit.defocus_sigma_angstrom)
    out["defocus"] = (ctf_fit.ctf.mean_defocus_angstrom, sigma_defocus)
    out["astigmatism"] = (ctf_fit.ctf.astigmatism_angstrom, 2.0 * sigma_defocus)
    cs = microscope.spherical_aberration_mm
    out["spherical_aberration"] = (
        cs,
        max(SPHERICAL_ABERRATION_RELATIVE_SIGMA * abs(cs), SPHERICAL_ABERRATION_SIGMA_FLOOR_MM),
    )
    ice_prior = session_prior.population(ICE_SPECIMEN_POWER) if session_prior is not None else None
    out["coherence_envelope"], ice_power = coherence_bfactor(
        spectrum, fisher, ctf_fit, microscope, float(drift_total_px) if drift_total_px else None, ice_prior
    )
    out["sample_heterogeneity"] = heterogeneity
    return {node: (float(v), sigma_floor(s, v)) for node, (v, s) in out.items()}, ice_power


def estimate_nodes(
    image: ImageLike,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    dose_e_per_angstrom2: float | None,
    drift_total_px: float | None,
    session_prior: SessionPrior | None,
) -> dict[str, tuple[float, float]]:
    """Measure every cause node of :func:`~.graph.build_causal_graph` from one micrograph: node → (value, σ).

    Definitions (module docstring table for units):

    * defocus: (U + V)/2, σ = ``ctf_fit.defocus_sigma_angstrom``.
    * astigmatism: U − V, σ = 2 σ_defocus (independent U, V errors σ_u: mean has σ_u/√2, difference
      √2 σ_u).
    * spherical_aberration: C_s of ``microscope``; σ assumed, 2 % (floor 0.01 mm).
    * coherence_envelope: B (Å²) of a Fisher-weighted two-component fit of ln S(k) over the valid band
      up to the fit resolution, ln[p e^{−B_p k²/2} + a shape_ice(k)] − B k²/2 (particles' Guinier
      fall-off plus ice, under the envelope; :func:`coherence_bfactor`); σ from its covariance.  With a
      session prior the ice term's amplitude is pooled with the session's (:data:`ICE_SPECIMEN_POWER`).
    * detector_noise: F/⟨counts⟩ with F = ``noise_floor_power``; ≈ 1 for Poisson counting.  σ from the
      number of floor-band samples (each periodogram sample has SD equal to its mean).
    * ice_thickness: relative RMS of the low-frequency (k ≤ 1/100 Å) intensity that the phase-contrast
      model S·CTF² + F does not explain (the inelastic background, ≈ f_in · a, :func:`_ice_index`),
      dimensionless and monotone in the thickness, not a thickness in nm; σ from periodogram statistics.
    * dose: ⟨counts⟩/pixel² (e/Å², gain 1); σ = the tile-to-tile standard error of the mean, combined
      in quadrature with |measured − header| when the header dose is given (a gain/calibration
      discrepancy counts as uncertainty).
    * beam_induced_motion: ``drift_total_px`` when given (σ assumed √(0.25² + (0.1 d)²) px); otherwise
      the blur length from the spectrum's 2θ anisotropy at mid frequencies (large, computed σ).
    * sample_heterogeneity: excess CV of the tiles' low-frequency signal (50–10 Å), σ computed.

    With ``session_prior`` the B-factor fit pools the ice power with the session's and every node is
    partially pooled (:func:`shrink_towards_prior`).

    Parameters
    ----------
    image : ndarray or Tensor, shape (ny, nx)
        Micrograph [y, x] in electron counts (mean > 0).
    ctf_fit : CtfFit
        CTF and spectral model (periodogram units of ``image``).
    microscope : MicroscopeSettings
        Optics and pixel size (Å/px).
    dose_e_per_angstrom2 : float or None
        Total exposure from the header, e/Å², or None.
    drift_total_px : float or None
        Drift (px) from motion correction, or None.
    session_prior : SessionPrior or None
        Session prior for shrinkage, or None.
    """
    spectrum = micrograph_spectrum(image, microscope, ctf_fit)
    raw, _ = measure_nodes(spectrum, ctf_fit, microscope, dose_e_per_angstrom2, drift_total_px, session_prior)
    return shrink_towards_prior(raw, session_prior)
