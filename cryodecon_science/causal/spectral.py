"""The micrograph's spectrum, the spectral model on it, its Whittle likelihood and the loop's update.

:func:`micrograph_spectrum` holds one micrograph's periodogram on the rfft grid with its ring geometry,
CTF²_eff and heterogeneity tiles; :func:`model_on_grid` evaluates the spectral model (signal S(k),
background B(k)) there.  Each periodogram sample P ~ μ·Exp(1), μ = S·CTF² + B (Whittle likelihood);
:func:`fisher_information` is the Fisher information of the refinement parameters (:class:`Fisher`), whose
inverse gives the Cramér–Rao σ of the spectral nodes.  :func:`refine_spectral_model` is one pass of the
self-evaluation loop's spectrum update: a damped Fisher-scoring step in the signal amplitude and envelope
(ln S += α + β min(k d_fit, 1)²) and a smooth background correction (ln B += Σ γ_j φ_j(k)), with the
scores computed from the Wiener-restored image and its residual (EM expected powers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.optics import MicroscopeSettings, frequency_grid_per_angstrom
from cryodecon_science.records import CtfFit, SpectralModel
from cryodecon_science.restoration.restore import expected_ctf_squared, wiener_signal_filter
from cryodecon_science.spectrum import central_fit_crop

FloatArray = npt.NDArray[np.float64]
ImageLike = npt.NDArray[np.floating] | torch.Tensor

HETEROGENEITY_BAND_ANGSTROM = (50.0, 10.0)
"""Resolution band (Å) of the tiles' signal amplitude for sample_heterogeneity (≥ 2 cycles per tile)."""
FLOOR_BAND_FRACTION_OF_NYQUIST = (0.75, 1.0)
"""Band (fractions of Nyquist) where a re-estimated background is averaged into the noise floor."""
N_BACKGROUND_KNOTS = 10
"""Background correction ln B(k) ← ln B(k) + Σ_j γ_j φ_j(k): hat functions on knots Nyquist·(j/10)²."""

_DAMPING = 0.1
_MAX_LOG_STEP = math.log(4.0)
_SINC2_TABLE_SIZE = 8192


@dataclass(frozen=True)
class Spectrum:
    """Fourier-domain view of one micrograph on the rfft grid (all float64, flattened over samples)."""

    shape_px: tuple[int, int]
    mean_counts: float
    power: FloatArray  # |FFT(x − mean)|² / N_pixels per sample
    k_per_angstrom: FloatArray
    theta_rad: FloatArray
    ring: npt.NDArray[np.int64]  # ring index per sample (−1: excluded: DC and corners beyond Nyquist)
    ring_k_per_angstrom: FloatArray
    ring_counts: FloatArray
    ctf2: FloatArray  # CTF²_eff of restore.expected_ctf_squared per sample (fixed while the CTF is)
    tile_px: int
    tile_ctf2: FloatArray  # the same on the rfft grid of one heterogeneity tile, shape (tile, tile//2+1)
    tiles: Tiles  # the whole frame's heterogeneity tiles (fixed: they do not depend on any model)


@dataclass(frozen=True)
class Tiles:
    """The whole frame cut into ``tile_px`` tiles (:func:`_tiles`): what :func:`~.nodes._heterogeneity_and_dose_se`
    needs of them, computed once per micrograph instead of once per pass of the loop.

    ``band_power`` holds each tile's periodogram P = |FFT(w·(x − mean))|²/Σw² (Hann window w) on the
    samples of the heterogeneity band (``band_iy``, ``band_ix`` on the tile's rfft grid, at
    ``band_k_per_angstrom``).
    """

    means: FloatArray  # (n_tiles,)
    frame_mean: float
    frame_size: int
    band_iy: npt.NDArray[np.intp]
    band_ix: npt.NDArray[np.intp]
    band_k_per_angstrom: FloatArray
    band_power: FloatArray  # (n_tiles, n_band)
    window: FloatArray  # (tile, tile)


def _tile_size_px(shape_px: tuple[int, int]) -> int:
    """Edge (px) of the heterogeneity tiles: the power of two ≤ a quarter of the shorter side, at least 16."""
    side = min(shape_px) // 4
    return max(16, 1 << max(math.floor(math.log2(max(side, 1))), 4))


def _tiles(image: FloatArray, tile: int) -> list[FloatArray]:
    """The whole ``tile`` × ``tile`` tiles of ``image``, row by row, their grid centred in the image."""
    ny, nx = image.shape
    oy, ox = (ny % tile) // 2, (nx % tile) // 2
    return [
        image[oy + i * tile : oy + (i + 1) * tile, ox + j * tile : ox + (j + 1) * tile]
        for i in range(ny // tile)
        for j in range(nx // tile)
    ]


def _tile_statistics(full: FloatArray, tile: int, microscope: MicroscopeSettings) -> Tiles:
    """:class:`Tiles` of a frame; band 50–10 Å (``HETEROGENEITY_BAND_ANGSTROM``), from ≥ 2 cycles per tile."""
    tiles = _tiles(full, tile)
    px = microscope.pixel_size_angstrom
    cycles = 1.0 / (tile * px)
    k_lo = max(1.0 / HETEROGENEITY_BAND_ANGSTROM[0], 2.0 * cycles)
    k_hi = min(max(1.0 / HETEROGENEITY_BAND_ANGSTROM[1], k_lo + 2.0 * cycles), microscope.nyquist_per_angstrom)
    ky, kx = frequency_grid_per_angstrom((tile, tile), px, rfft=True)
    k = np.hypot(ky, kx)
    iy, ix = np.nonzero((k >= k_lo) & (k <= k_hi))
    hann = np.hanning(tile)
    window = np.outer(hann, hann)
    norm = float(np.sum(window**2))
    band_power = np.empty((len(tiles), iy.size))
    for i, t in enumerate(tiles):
        band_power[i] = (np.abs(np.fft.rfft2(window * (t - t.mean()))) ** 2 / norm)[iy, ix]
    return Tiles(
        means=np.array([float(t.mean()) for t in tiles]),
        frame_mean=float(full.mean()),
        frame_size=int(full.size),
        band_iy=iy,
        band_ix=ix,
        band_k_per_angstrom=k[iy, ix],
        band_power=band_power,
        window=window,
    )


def micrograph_spectrum(
    image: ImageLike, microscope: MicroscopeSettings, ctf_fit: CtfFit, max_fit_px: int | None = None
) -> Spectrum:
    """The periodogram and ring geometry of ``image``, or of its :func:`central_fit_crop` when a side
    exceeds ``max_fit_px``; the heterogeneity tiles (``tile_px``) are sized from the whole frame."""
    full = np.asarray(torch.as_tensor(image).detach().cpu().numpy(), dtype=np.float64)
    if full.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {full.shape}")
    if not np.all(np.isfinite(full)):
        raise ValueError("image contains non-finite values")
    tile = _tile_size_px((int(full.shape[0]), int(full.shape[1])))
    x = central_fit_crop(full, max_fit_px)
    ny, nx = x.shape
    mean_counts = float(x.mean())
    image_ft = np.fft.rfft2(x)
    power = np.abs(image_ft) ** 2 / x.size
    power[0, 0] = 0.0  # the transform of x − mean: identical elsewhere
    ky, kx = frequency_grid_per_angstrom((ny, nx), microscope.pixel_size_angstrom, rfft=True)
    k = np.hypot(ky, kx)
    ring_width = 1.0 / (max(ny, nx) * microscope.pixel_size_angstrom)
    n_rings = max(ny, nx) // 2 + 1
    ring = np.rint(k / ring_width).astype(np.int64)
    ring[(ring >= n_rings) | (ring == 0)] = -1
    valid = ring >= 0
    counts = np.bincount(ring[valid], minlength=n_rings).astype(np.float64)
    return Spectrum(
        shape_px=(ny, nx),
        mean_counts=mean_counts,
        power=power.ravel(),
        k_per_angstrom=k.ravel(),
        theta_rad=np.arctan2(ky, kx).ravel(),
        ring=ring.ravel(),
        ring_k_per_angstrom=np.arange(n_rings, dtype=np.float64) * ring_width,
        ring_counts=counts,
        ctf2=expected_ctf_squared((ny, nx), ctf_fit, microscope).double().numpy().ravel(),
        tile_px=tile,
        tile_ctf2=expected_ctf_squared((tile, tile), ctf_fit, microscope).double().numpy(),
        tiles=_tile_statistics(full, tile, microscope),
    )


def _ring_sum(spectrum: Spectrum, values: FloatArray) -> FloatArray:
    """Sum of ``values`` per ring; samples outside every ring (ring index −1) land in bin 0, dropped."""
    n = spectrum.ring_k_per_angstrom.size
    return np.bincount(spectrum.ring + 1, weights=values, minlength=n + 1)[1 : n + 1].astype(np.float64)


@dataclass(frozen=True)
class ModelOnGrid:
    """The spectral model and CTF evaluated at every rfft sample of the micrograph."""

    signal: FloatArray
    background: FloatArray
    ctf2: FloatArray  # CTF²_eff of restore.expected_ctf_squared
    total: FloatArray  # μ = S·CTF² + B
    signal_fraction: FloatArray  # H = S·CTF² / μ


def model_on_grid(spectrum: Spectrum, ctf_fit: CtfFit) -> ModelOnGrid:
    """:class:`ModelOnGrid` of the fit's spectral model at ``spectrum``'s samples (negative powers clipped to 0)."""
    signal, background = ctf_fit.spectral_model.interpolate(spectrum.k_per_angstrom)
    signal = np.maximum(signal, 0.0)
    background = np.maximum(background, 0.0)
    ctf2 = spectrum.ctf2
    modulated = signal * ctf2
    total = modulated + background
    fraction = np.divide(modulated, total, out=np.zeros_like(total), where=total > 0)
    return ModelOnGrid(signal, background, ctf2, total, fraction)


def band_indices(model: SpectralModel) -> tuple[float, float]:
    """(k_from, k_to) in 1/Å of the model's valid range (indices inclusive, clipped to the grid)."""
    f = model.frequency_per_angstrom
    lo = int(np.clip(model.valid_from_index, 0, f.size - 1))
    hi = int(np.clip(model.valid_to_index, 0, f.size - 1))
    return float(f[lo]), float(f[max(lo, hi)])


def ring_average_sinc2(k_per_angstrom: FloatArray, drift_px: float, pixel_size_angstrom: float) -> FloatArray:
    """⟨sinc²(k_px d cos φ)⟩ over the azimuth φ: rotational average of a linear blur of d px (k in 1/Å).

    sinc(x) = sin(πx)/(πx); k_px = k·pixel_size is in cycles/px.  Averaged over 90 azimuths in [0, π).
    More than :data:`_SINC2_TABLE_SIZE` frequencies are interpolated linearly from a table of that many
    evenly spaced |k| (spacing ≤ 1/(8192 Å) up to Nyquist at 1 Å/px: error < 10⁻⁵ for d ≤ 50 px).
    """
    k = np.asarray(k_per_angstrom, dtype=np.float64)
    phi = np.linspace(0.0, math.pi, 90, endpoint=False)

    def average(k_values: FloatArray) -> FloatArray:
        arg = np.outer(k_values * pixel_size_angstrom * drift_px, np.cos(phi))
        return np.asarray(np.mean(np.sinc(arg) ** 2, axis=1), dtype=np.float64)

    if k.size <= _SINC2_TABLE_SIZE:
        return average(k)
    # A whole rfft grid (8 M samples at 4096²): tabulate on a fine 1-D grid of |k| and interpolate.
    table_k = np.linspace(0.0, float(np.max(np.abs(k))), _SINC2_TABLE_SIZE)
    return np.asarray(np.interp(np.abs(k), table_k, average(table_k)), dtype=np.float64)


def _background_basis(k_per_angstrom: FloatArray, nyquist_per_angstrom: float) -> FloatArray:
    """Hat functions φ_j(k), j = 0 … J, on knots κ_j = Nyquist·(j/J)² (dense at low k); shape (J+1, n)."""
    knots = nyquist_per_angstrom * (np.arange(N_BACKGROUND_KNOTS + 1) / N_BACKGROUND_KNOTS) ** 2
    k = np.clip(np.asarray(k_per_angstrom, dtype=np.float64), 0.0, nyquist_per_angstrom)
    basis = np.empty((knots.size, k.size))
    for j in range(knots.size):
        unit = np.zeros(knots.size)
        unit[j] = 1.0
        basis[j] = np.interp(k, knots, unit)
    return basis


@dataclass(frozen=True)
class Fisher:
    """Whittle-likelihood Fisher information of the refinement parameters at the current model.

    Parameters θ = (α, β, γ_0 … γ_J): ln S(k) += α + β min(k/k_fit, 1)² over the model's valid range
    (beyond the fit resolution the change holds its value at the fit), ln B(k) += Σ γ_j φ_j(k)
    everywhere.  The signal's change is scored on every ring it is applied to: beyond the fit the rings
    constrain S·½ + B (CTF²_eff, the phase unknown), and an update extrapolated there unscored (β (k/k_fit)²
    grows 16-fold to Nyquist at a 4 Å fit) would raise the in-band likelihood while the whole spectrum's
    fell, the background drifting to absorb it.  Each periodogram sample P ~ μ·Exp(1),
    μ = S·CTF² + B, contributes g gᵀ with g = ∂ ln μ/∂θ = (H, H x, G φ_j), H = S·CTF²/μ, G = 1 − H.
    ``covariance`` is its inverse: the Cramér–Rao covariance of θ from this micrograph.
    """

    information: FloatArray
    covariance: FloatArray
    ring_signal_features: FloatArray  # (2, n_rings): [1, min(x, 1)] over the valid range, 0 below it
    ring_basis: FloatArray  # (J+1, n_rings)
    ring_hh: FloatArray  # Σ H² per ring


def signal_band_rings(spectrum: Spectrum, ctf_fit: CtfFit, stop_at_fit: bool = True) -> npt.NDArray[np.bool_]:
    """Rings with samples from the model's first valid ring up to the fit resolution (``stop_at_fit``,
    capped at the valid range's end) or to Nyquist; never the DC ring."""
    k_from, k_to = band_indices(ctf_fit.spectral_model)
    k_hi = min(k_to, 1.0 / ctf_fit.fit_resolution_angstrom) if stop_at_fit else math.inf
    k = spectrum.ring_k_per_angstrom
    band: npt.NDArray[np.bool_] = (k >= k_from) & (k <= k_hi) & (spectrum.ring_counts > 0)
    band[0] = False
    return band


def _signal_update_shape(k_per_angstrom: FloatArray, ctf_fit: CtfFit) -> FloatArray:
    """x = min(k/k_fit, 1)² of the loop's signal update ln S += α + β x (:class:`Fisher`)."""
    return np.minimum((k_per_angstrom * ctf_fit.fit_resolution_angstrom) ** 2, 1.0)


def fisher_information(
    spectrum: Spectrum, grid: ModelOnGrid, ctf_fit: CtfFit, microscope: MicroscopeSettings
) -> Fisher:
    """:class:`Fisher` at the model ``grid``."""
    h = grid.signal_fraction
    g = 1.0 - h
    hh, hg, gg = (_ring_sum(spectrum, v) for v in (h * h, h * g, g * g))
    k = spectrum.ring_k_per_angstrom
    x = _signal_update_shape(k, ctf_fit)
    in_band = signal_band_rings(spectrum, ctf_fit, stop_at_fit=False).astype(np.float64)
    fs = np.stack([in_band, in_band * x])
    fb = _background_basis(k, microscope.nyquist_per_angstrom)
    fb[:, 0] = 0.0
    info = np.block(
        [
            [(fs * hh) @ fs.T, (fs * hg) @ fb.T],
            [(fb * hg) @ fs.T, (fb * gg) @ fb.T],
        ]
    )
    # A vanishing eigenvalue means a parameter the data do not constrain; the pseudo-inverse returns
    # infinite-like variance there only through the relative cut-off, so add a tiny ridge instead.
    ridge = 1e-9 * max(float(np.trace(info)), 1e-300) / info.shape[0]
    covariance = np.linalg.inv(info + ridge * np.eye(info.shape[0]))
    return Fisher(info, covariance, fs, fb, hh)


def floor_band_rings(spectrum: Spectrum, microscope: MicroscopeSettings) -> npt.NDArray[np.bool_]:
    """Rings with samples in the noise-floor band, :data:`FLOOR_BAND_FRACTION_OF_NYQUIST` of Nyquist."""
    nyquist = microscope.nyquist_per_angstrom
    lo, hi = FLOOR_BAND_FRACTION_OF_NYQUIST
    k = spectrum.ring_k_per_angstrom
    band: npt.NDArray[np.bool_] = (k >= lo * nyquist) & (k <= hi * nyquist) & (spectrum.ring_counts > 0)
    return band


def refine_model(
    spectrum: Spectrum,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    device: torch.device | str,
) -> SpectralModel:
    """:func:`refine_spectral_model` on a prepared spectrum (the loop computes the spectrum once)."""
    model = ctf_fit.spectral_model
    grid = model_on_grid(spectrum, ctf_fit)
    fisher = fisher_information(spectrum, grid, ctf_fit, microscope)
    # Ĉ = H_sig·Y (restore.wiener_signal_estimate) and the residual Y − Ĉ.  H_sig is real, so their powers
    # are H_sig²·P and (1 − H_sig)²·P with P = |Y|²/N the periodogram: no complex spectra per pass (the
    # DC sample, where P is set to 0, lies outside every ring and is never summed).
    h_sig = np.asarray(
        wiener_signal_filter(spectrum.shape_px, ctf_fit, microscope, device=device).detach().cpu().numpy(),
        dtype=np.float64,
    ).ravel()
    posterior_var = grid.signal_fraction * grid.background  # Var[CTF·X | Y] = H·B (Gaussian posterior)
    expected_signal = h_sig * h_sig * spectrum.power + posterior_var
    residual_gain = 1.0 - h_sig
    expected_noise = residual_gain * residual_gain * spectrum.power + posterior_var
    modulated = grid.signal * grid.ctf2
    informative = modulated > 1e-12 * np.maximum(grid.background, 1e-300)
    # ρ − 1 where the ratio is defined, 0 elsewhere (np.zeros is a lazily zeroed allocation).
    score_s = np.zeros_like(modulated)
    np.divide(expected_signal, modulated, out=score_s, where=informative)
    np.subtract(score_s, 1.0, out=score_s, where=informative)
    has_background = grid.background > 0
    score_b = np.zeros_like(modulated)
    np.divide(expected_noise, grid.background, out=score_b, where=has_background)
    np.subtract(score_b, 1.0, out=score_b, where=has_background)
    score = np.concatenate(
        [
            fisher.ring_signal_features @ _ring_sum(spectrum, score_s),
            fisher.ring_basis @ _ring_sum(spectrum, score_b),
        ]
    )
    damped = fisher.information + np.diag(_DAMPING * np.diag(fisher.information) + 1e-12)
    step = np.linalg.solve(damped, score)

    ring_k = spectrum.ring_k_per_angstrom
    log_s = step[0] + step[1] * _signal_update_shape(ring_k, ctf_fit)
    log_b = step[2:] @ _background_basis(ring_k, microscope.nyquist_per_angstrom)
    largest = max(float(np.max(np.abs(log_s))), float(np.max(np.abs(log_b))))
    if largest > _MAX_LOG_STEP:  # trust region: no profile changes by more than a factor 4 per pass
        log_s, log_b = log_s * (_MAX_LOG_STEP / largest), log_b * (_MAX_LOG_STEP / largest)
    signal_r, background_r = model.interpolate(ring_k)
    signal_new = np.maximum(signal_r, 0.0) * np.exp(log_s)
    background_new = np.maximum(background_r, 0.0) * np.exp(log_b)
    signal_new[0], background_new[0] = signal_new[1], background_new[1]

    floor_band = floor_band_rings(spectrum, microscope)
    if floor_band.any():
        counts = spectrum.ring_counts[floor_band]
        floor = float(np.sum(counts * background_new[floor_band]) / np.sum(counts))
    else:
        floor = float(background_new[-1])
    k_from, k_to = band_indices(model)
    last = ring_k.size - 1
    from_index = int(np.clip(np.searchsorted(ring_k, k_from - 1e-12), 0, last))
    to_index = int(np.clip(np.searchsorted(ring_k, k_to + 1e-12, side="right") - 1, from_index, last))
    return SpectralModel(
        frequency_per_angstrom=ring_k.copy(),
        signal_power=signal_new,
        background_power=background_new,
        noise_floor_power=floor,
        valid_from_index=from_index,
        valid_to_index=to_index,
    )


def refine_spectral_model(
    image: ImageLike, ctf_fit: CtfFit, microscope: MicroscopeSettings, device: torch.device | str = "cpu"
) -> SpectralModel:
    """One pass of the self-evaluation loop's spectrum update: restore, then re-fit S(k) and B(k).

    1. Ĉ = :func:`~cryodecon_science.restoration.restore.wiener_signal_estimate` (current model), residual R = Y − Ĉ.
    2. Expected powers under the Gaussian posterior (the E-step of EM; Dempster, Laird & Rubin 1977,
       JRSS B 39:1): E|CTF·X|² = |Ĉ|²/N + H·B from the restored image and E|noise|² = |R|²/N + H·B from
       the residual.  Their ratios to the model, ρ_S = E|CTF·X|²/(CTF²·S) and ρ_B = E|noise|²/B, obey
       ρ_S − 1 = H (P/μ − 1) and ρ_B − 1 = (1 − H)(P/μ − 1): the Whittle-likelihood scores of ln S and
       ln B at each Fourier sample (P the periodogram, μ = S·CTF² + B).
    3. One damped Fisher-scoring (Levenberg–Marquardt, 10 % of the diagonal) step in the parameters of
       :class:`Fisher`: ln S(k) += α + β min(k·d_fit, 1)² (amplitude and envelope, so Δβ is a change of
       the B-factor, ΔB = −2 Δβ d_fit², up to the fit resolution) and ln B(k) += Σ γ_j φ_j(k) (a smooth
       background correction on 11 hat functions).  Signal and background separate because S is
       modulated by the CTF² rings and B is not (as in CTFFIND4's background fit).  No profile changes by
       more than a factor 4 per pass.

    The result lives on rings of width 1/(max(ny, nx)·pixel) from 0 to Nyquist; its floor is the
    sample-weighted mean background over 0.75–1 Nyquist; its valid band is the input's.
    """
    return refine_model(micrograph_spectrum(image, microscope, ctf_fit), ctf_fit, microscope, device)
