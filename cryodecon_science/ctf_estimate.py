"""CTF estimation from a single micrograph, CTFFIND4-style, in torch (runs on CPU or GPU).

Method (after Rohou & Grigorieff 2015, "CTFFIND4: Fast and accurate defocus estimation from electron
micrographs", J. Struct. Biol. 192:216; conventions in ``cryodecon_science.optics``):

1. **Spectrum.**  Tile-averaged, Hann-windowed periodogram of the micrograph (``spectrum``), plus the
   periodograms of two pixel-disjoint half sets of tiles for the error estimate.
2. **1-D exhaustive search on the rotational average** by variable projection.  The rotational average
   is modelled as  PS(k) ≈ b(k) + a(k)·CTF²(k; Δf)  with a(k) (signal × envelope) and b(k) (background)
   cubic B-splines in k (``_N_BASIS`` functions each, coefficients ≥ 0 so a, b ≥ 0).  For every defocus
   candidate Δf on a grid fine enough that the phase at the high-resolution limit moves by ≤ π/4 per
   step, the spline coefficients are the (non-negative, batched) weighted linear least-squares solution
   and the candidate is scored by the residual.  This replaces CTFFIND's box-car background subtraction:
   the background cannot absorb the rings because it must be smooth on the scale of the knots, and it
   adapts to defocus 0.5–6 µm and any pixel size without a tuned box width.
3. **2-D refinement** of (mean defocus D, astigmatism components h_x, h_y), with
   Δf(θ) = D + h_x cos 2θ + h_y sin 2θ  (U = D + h, V = D − h, h = |(h_x, h_y)|, θ_ast = ½ atan2(h_y, h_x)),
   maximising the weighted normalised cross-correlation (NCC, CTFFIND4 eq. 6) between the
   background-subtracted 2-D spectrum and the CTF² model, both divided by the spectrum's expected
   standard deviation σ(k) = b(k) + a(k)/2 (a periodogram's standard deviation equals its mean):
   s = (PS − b)/σ,  m = (a/σ)·CTF².  Where a ≫ b this is the amplitude-normalised (PS − b)/a against
   CTF²; where noise dominates it down-weights the noise instead of amplifying it.  A coarse grid over
   astigmatism magnitude and angle (plus small mean-defocus offsets) is scored first on a band limited to
   ``_GRID_RESOLUTION_ANGSTROM``, the best starts are refined with L-BFGS-B (analytic gradient) while
   the band is widened in steps up to the high-resolution limit.  a(k), b(k) are then refitted to the
   whole 2-D spectrum, up to Nyquist, with the fitted astigmatic CTF² (``_fit_envelopes``: exact, no
   equiphase approximation) and the 2-D fit is refined once more.
4. **Fit resolution** from the equiphase average (CTFFIND4 §2.5 and ctffind.cpp 4.1.x): every pixel's
   frequency is mapped to the frequency with the same CTF phase at the mean defocus, the spectrum is
   averaged in those rings, and the Pearson correlation between (average − b) and a·CTF² is computed in
   a sliding window 1.5 ring periods wide (``_WINDOW_RING_PERIODS``).  The fit resolution is 1/k at the
   last ring before the correlation first falls below ``_FIT_CC_THRESHOLD`` = 0.5 (CTFFIND's
   ``frc_significance_threshold``, by analogy with the 0.5 criterion of a map-vs-model FSC), counting
   from the first CTF zero; with no ring above it the fit resolution is the low-resolution limit.  It
   never exceeds Nyquist, the C_s turning point, nor the frequency where the rings along the U axis
   come closer than ``_MIN_RING_PERIOD_PX`` = 2.5 spectrum pixels: below 2 pixels per period the rings
   alias (sampling theorem), and at 2.5 the Hann window has already cut their contrast to 1/3 (the
   window's normalised autocorrelation at lag L/2.5; 0.17 at 2 pixels, 0.47 at 3), so a correlation
   there rests on little signal.  For high defocus, a larger ``tile_size_px`` moves this limit out.
5. **Defocus uncertainty**: a delete-one-group jackknife (Efron & Stein 1981, Ann. Stat. 9:586–596;
   Shao & Wu 1989, Ann. Stat. 17:1176–1197, for groups).  The non-overlapping tiles are dealt into
   ``spectrum.N_GROUPS`` = 4 disjoint groups (``spectrum.HalfSetSpectra``: no pixel shared between
   groups, so their noise is independent); the 2-D refinement is repeated, from the full fit, on the
   mean periodogram of all groups but one, once per group (all as one ``_refine`` problem), and
   σ² = (G − 1)/G · Σ_g (D_(g) − D̄)², floored at ``_DEFOCUS_SIGMA_FLOOR_ANGSTROM``.  σ describes a
   non-overlapping-tile estimate from the whole image, in theory up to ≈ 1.5× the error of the
   50 %-overlap spectrum actually fitted (Welch 1967).  With G − 1 = 3 degrees of freedom σ is itself
   uncertain by about ±41 %; the difference of two half sets used before (σ = |D₁ − D₂| / 2, one degree
   of freedom, ±75 %) sometimes read 2–5 Å where the error was 20–145 Å: over the attribution
   benchmark's defocus sweeps (1024², two seeds) the RMS of (D − truth)/σ was 3.4 and 3.6 with it, 2.1
   and 0.9 with the jackknife.  A one-Newton-step jackknife (shared Hessian) was tried to make 8 groups
   cheap and disagreed with the refits by factors 0.3–2.7 (the NCC is not quadratic over the steps).

The nominal defocus, when given, only breaks ties between near-equal optima of the 1-D search
(``_PRIOR_TIE_FRACTION``); it is never used as a starting value that could bias the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.interpolate
import scipy.optimize
import torch

from cryodecon_science.optics import (
    CtfParams,
    MicroscopeSettings,
    amplitude_contrast_phase_rad,
    canonical_ctf_params,
)
from cryodecon_science.records import CtfFit, SpectralModel
from cryodecon_science.spectrum import HalfSetSpectra, frame_tensor, half_set_power_spectra, radial_bin_index

FloatArray = npt.NDArray[np.float64]

MIN_IMAGE_SIZE_PX = 128
# The tile shrinks (powers of two, not below 64 px) until at least this many tiles fit and two fit side by
# side without overlap, so that both half sets exist and each spectrum pixel averages several tiles.
_MIN_TILES = 4
_MIN_TILE_SIZE_PX = 64
_TILE_OVERLAP_FRACTION = 0.5
# B-spline functions for each of a(k) and b(k): enough for a specimen spectrum × envelope and an
# ice/inelastic hump over the band, too few to follow Thon rings (≥ 2 rings per knot interval above the
# first few rings for defocus ≥ 0.5 µm).
_N_BASIS = 10
# Defocus grid: phase at the 1-D search limit moves by at most π/4 between candidates.
_SEARCH_PHASE_STEP_RAD = math.pi / 4
# Optima of the 1-D search within this fraction of (median − best) score of the best are ties; the
# nominal defocus picks among them.
_PRIOR_TIE_FRACTION = 0.05
# Coarse 2-D grid: band limit, and phase error allowed between neighbouring grid points.
_GRID_RESOLUTION_ANGSTROM = 6.0
_GRID_PHASE_STEP_RAD = math.pi / 3
_GRID_MAX_PIXELS = 30000
_N_REFINE_STARTS = 3
# Pixels per block of the NCC sums on a CPU: below torch's intra-op grain size (32 768), so the many
# short element-wise passes run on the calling thread (OpenMP barriers cost more than they gain at this
# size, and far more on a loaded CPU), and a block's arrays stay in L2 cache (measured 3× faster per
# pass).  On an accelerator the whole band is one block: there the cost of a pass is its kernel
# launches, not its memory traffic (``_block_pixels``).
_BLOCK_PIXELS = 16384
# Band widening factor between refinement stages (basin width ∝ 1/k², precision of a stage ∝ 1/k²).
_BAND_GROWTH = 1.45
# Largest astigmatism searched: |U − V| ≤ max(2000 Å, 20 % of the mean defocus).
_MAX_ASTIGMATISM_ANGSTROM = 2000.0
_MAX_ASTIGMATISM_FRACTION = 0.2
# Fit resolution: CC threshold, window width in local ring periods and its minimum half-width (a
# Pearson CC over fewer than 7 rings of pure noise exceeds 0.5 too often, ≈ 13 %).
_FIT_CC_THRESHOLD = 0.5
_WINDOW_RING_PERIODS = 1.5
_MIN_WINDOW_HALF_WIDTH_BINS = 3
_MIN_RING_PERIOD_PX = 2.5
# Below 1 Å a defocus difference has no physical meaning (ice thickness and specimen height vary more
# across any micrograph), so the half-set estimate is floored there.
_DEFOCUS_SIGMA_FLOOR_ANGSTROM = 1.0
# Fraction of the Nyquist band whose background defines the noise floor.
_NOISE_FLOOR_BAND_FRACTION = 0.1


class CtfEstimationError(ValueError):
    """The micrograph cannot be used for CTF estimation (shape, values or size)."""


@dataclass(frozen=True)
class _Optics:
    """Coefficients of χ(k, θ) = A k² Δf(θ) − C k⁴ + φ (CTFFIND4 eq. 1): A = πλ (Å), C = ½π C_s λ³ (Å⁴)."""

    a_angstrom: float
    c_angstrom4: float
    phase_rad: float

    @classmethod
    def of(cls, microscope: MicroscopeSettings) -> _Optics:
        lam = microscope.wavelength_angstrom
        cs = microscope.spherical_aberration_mm * 1e7
        return cls(
            math.pi * lam,
            0.5 * math.pi * cs * lam**3,
            amplitude_contrast_phase_rad(microscope.amplitude_contrast_fraction),
        )


@dataclass(frozen=True)
class _PixelBlock:
    """A block of spectrum pixels (``_block_pixels``), prepared for the weighted NCC against CTF².

    With w the half-plane multiplicity, g = a/σ and s_c the centred normalised spectrum (module
    docstring, step 3), the model is m = g·sin²χ and every sum the NCC needs is a dot product of sin²χ
    or sin 2χ with ``wg`` = w g, ``wgs`` = w g s_c or ``wg2`` = w g².  ``wgs`` has one row per spectrum
    the set was built from (the full spectrum, or the two half sets).
    """

    phase_basis: torch.Tensor  # (3, n): ∂χ/∂(D, h_x, h_y) = A k² · (1, cos 2θ, sin 2θ)
    phase_basis_t: torch.Tensor  # (n, 3): the same, transposed and contiguous
    phase_offset: torch.Tensor  # (n,): −C k⁴ + φ
    wg: torch.Tensor  # (n,)
    wgs: torch.Tensor  # (R, n)
    wg2: torch.Tensor  # (n,)


@dataclass(frozen=True)
class _PixelSet:
    """Spectrum pixels of one band in blocks, with Σ w, Σ w s_c² of each spectrum row, and the largest
    ∂χ/∂D = A k² over the pixels (the phase rate that scales the refinement's variables)."""

    blocks: tuple[_PixelBlock, ...]
    s_norm2: tuple[float, ...]
    weight_sum: float
    top_phase_rate_per_angstrom: float


@dataclass(frozen=True)
class _Spectrum:
    """The 2-D spectrum's pixels ≤ Nyquist, flattened from the rfft2 half-plane and sorted by |k|, with
    their geometry.  Sorted, the pixels of a band of frequencies (or of rings) are a contiguous slice,
    found on the host (``k_host``, ``bins_host``) without reading anything back from the device."""

    power: torch.Tensor
    k: torch.Tensor
    cos2: torch.Tensor
    sin2: torch.Tensor
    weight: torch.Tensor
    bins: torch.Tensor
    index: torch.Tensor  # position of each pixel in the flattened (L, L//2+1) grid
    k_host: FloatArray
    bins_host: npt.NDArray[np.int64]
    n_bins: int
    bin_width_per_angstrom: float

    def band(self, k_lo: float, k_hi: float) -> slice:
        """Pixels with k_lo ≤ |k| ≤ k_hi."""
        return slice(
            int(np.searchsorted(self.k_host, k_lo, side="left")), int(np.searchsorted(self.k_host, k_hi, side="right"))
        )

    def rings(self, first: int, last: int) -> slice:
        """Pixels of rings first … last."""
        return slice(
            int(np.searchsorted(self.bins_host, first, side="left")),
            int(np.searchsorted(self.bins_host, last, side="right")),
        )


def estimate_ctf(
    image: npt.NDArray[np.float32],
    microscope: MicroscopeSettings,
    nominal_defocus_angstrom: float | None = None,
    defocus_search_range_angstrom: tuple[float, float] = (2000.0, 60000.0),
    low_resolution_limit_angstrom: float = 30.0,
    high_resolution_limit_angstrom: float | None = None,
    tile_size_px: int = 512,
    device: str | torch.device = "cpu",
) -> CtfFit:
    """Estimate defocus, astigmatism and fit quality of one micrograph (module docstring).

    Parameters
    ----------
    image : ndarray, shape (ny, nx), float32
        Micrograph indexed [y, x] (counts or any linear intensity unit), both sides ≥ 128 px.
    microscope : MicroscopeSettings
        Voltage, C_s, amplitude contrast w and pixel size.
    nominal_defocus_angstrom : float, optional
        Defocus the microscope was set to (Å, positive = underfocus); a tie-breaker only.
    defocus_search_range_angstrom : (float, float)
        Range of mean defocus searched, Å.
    low_resolution_limit_angstrom : float
        Lowest resolution (largest period, Å) used in the fit; 30 Å excludes the ice/inelastic hump.
    high_resolution_limit_angstrom : float, optional
        Highest resolution (Å) used in the fit; default 2.2 × pixel size, just inside Nyquist.
    tile_size_px : int
        Edge L of the periodogram tiles (pixels); a larger L resolves the closer rings of high defocus.
    device : str or torch.device
        Where the spectra and fits are computed.

    Returns
    -------
    CtfFit
        Defocus U ≥ V and angle in [0, 180) (RELION/CTFFIND convention, ``canonical_ctf_params``); fit
        resolution (step 4); ``cross_correlation`` = the weighted NCC of step 3 over the fit band
        [low, high limit] at the final parameters; defocus sigma (step 5); and the ``SpectralModel``
        (``_spectral_model``: a(k), b(k) on rings 0 … Nyquist, valid from the low limit to Nyquist).

    Raises
    ------
    CtfEstimationError
        For a non-2-D, non-finite or constant image, or one smaller than 128 px.
    ValueError
        For inconsistent resolution limits or search range.

    Notes
    -----
    After the FFTs the work is on ~10⁵-element tensors, where intra-op threads gain little: on a CPU
    shared with other jobs, run with ``torch.set_num_threads(1)`` (set by the caller; this function
    leaves process-wide settings alone).  Measured on the 2-core development machine, 1 thread:
    1024² in ≈ 0.15 s, 4096² in ≈ 0.45–0.65 s.
    """
    frame = _validated_image(image, device)
    pixel = microscope.pixel_size_angstrom
    high_limit = 2.2 * pixel if high_resolution_limit_angstrom is None else high_resolution_limit_angstrom
    if high_limit < 2.0 * pixel:
        raise ValueError(f"high_resolution_limit_angstrom {high_limit} is beyond Nyquist ({2.0 * pixel} Å)")
    if low_resolution_limit_angstrom <= high_limit:
        raise ValueError(
            f"low_resolution_limit_angstrom ({low_resolution_limit_angstrom}) must exceed the high limit ({high_limit})"
        )
    lo_defocus, hi_defocus = defocus_search_range_angstrom
    if not 0.0 < lo_defocus < hi_defocus:
        raise ValueError(
            f"defocus_search_range_angstrom must be increasing and positive, got {defocus_search_range_angstrom}"
        )

    tile = _tile_size_for(tuple(frame.shape), tile_size_px)
    halves = half_set_power_spectra(frame, tile, _TILE_OVERLAP_FRACTION, device=device)
    spectrum = _flatten_spectrum(halves.mean_power, pixel)
    optics = _Optics.of(microscope)
    k_nyquist = spectrum.bin_width_per_angstrom * (spectrum.n_bins - 1)
    k_lo = 1.0 / low_resolution_limit_angstrom
    k_hi = min(1.0 / high_limit, k_nyquist)
    if k_lo >= k_hi - 4 * spectrum.bin_width_per_angstrom:
        raise CtfEstimationError(
            f"fit band {low_resolution_limit_angstrom}–{high_limit} Å spans < 4 pixels of a {tile}-px spectrum"
        )
    frequency = torch.arange(spectrum.n_bins, dtype=torch.float64, device=spectrum.power.device)
    frequency = frequency * spectrum.bin_width_per_angstrom
    rotational, counts = _ring_average(spectrum, spectrum.bins, spectrum.power)
    level = _smooth_level(frequency, rotational, (k_lo, k_nyquist))

    # 1. Exhaustive 1-D search on the rotational average.
    mean_defocus = _search_mean_defocus(
        frequency,
        rotational,
        counts,
        level,
        (k_lo, k_hi),
        optics,
        (lo_defocus, hi_defocus),
        nominal_defocus_angstrom,
    )
    bounds = _parameter_bounds((lo_defocus, hi_defocus), mean_defocus)
    params = np.array([mean_defocus, 0.0, 0.0])
    signal, background = _fit_envelopes(spectrum, spectrum.power, params, level, (k_lo, k_hi), optics)

    # 2. 2-D grid search and band-widening refinement; envelopes refitted in 2-D; final refinement.
    params = _grid_and_refine(spectrum, signal, background, (k_lo, k_hi), optics, bounds, mean_defocus)
    signal, background = _fit_envelopes(spectrum, spectrum.power, params, level, (k_lo, k_nyquist), optics)
    full_band = _band_pixels(_pixel_model(spectrum, spectrum.power, signal, background, (k_lo, k_hi), optics), k_hi)
    refined, ncc = _refine(full_band, params[None, :], bounds)
    params = refined[0]

    # 3. Fit resolution on the equiphase average of the final fit.
    equiphase = _equiphase_average(spectrum, spectrum.power, params, optics)
    fit_k = _fit_resolution_per_angstrom(frequency, equiphase, signal, background, params, optics, k_lo)

    # 4. Jackknife over disjoint tile groups for the defocus uncertainty.
    sigma = _defocus_sigma_angstrom(halves, spectrum, signal, background, (k_lo, k_hi), optics, params, bounds)

    d, hx, hy = (float(v) for v in params)
    model = _spectral_model(frequency, rotational, signal, background, optics, d, k_lo)
    return CtfFit(
        ctf=ctf_params_from_components(d, hx, hy),
        fit_resolution_angstrom=1.0 / fit_k,
        cross_correlation=float(ncc[0]),
        defocus_sigma_angstrom=sigma,
        spectral_model=model,
    )


def ctf_params_from_components(
    mean_defocus_angstrom: float, astigmatism_x_angstrom: float, astigmatism_y_angstrom: float
) -> CtfParams:
    """(D, h_x, h_y) of Δf(θ) = D + h_x cos 2θ + h_y sin 2θ as canonical ``CtfParams``.

    U = D + h, V = D − h with h = √(h_x² + h_y²), and the U axis at θ_ast = ½ atan2(h_y, h_x), which is
    the CTFFIND3 form Δf(θ) = ½[(U + V) + (U − V) cos 2(θ − θ_ast)] expanded (Mindell & Grigorieff 2003).
    """
    h = math.hypot(astigmatism_x_angstrom, astigmatism_y_angstrom)
    angle = 0.5 * math.degrees(math.atan2(astigmatism_y_angstrom, astigmatism_x_angstrom))
    return canonical_ctf_params(mean_defocus_angstrom + h, mean_defocus_angstrom - h, angle)


# --------------------------------------------------------------------------------------------------
# Input checks and spectrum layout


def _validated_image(image: npt.NDArray[np.float32], device: str | torch.device) -> torch.Tensor:
    """The micrograph as a float32 tensor on ``device``, checked: 2-D, ≥ 128 px, real, finite, not constant.

    Values are checked after the copy, on the device, by one min/max reduction (NaN propagates through
    both, ±Inf shows in one of them): on a GPU that is one read-back instead of passes over 16 M pixels
    on the host.
    """
    array = np.asarray(image)
    if array.ndim != 2:
        raise CtfEstimationError(f"expected a 2-D micrograph [y, x], got shape {array.shape}")
    if min(array.shape) < MIN_IMAGE_SIZE_PX:
        raise CtfEstimationError(f"micrograph {array.shape} is smaller than {MIN_IMAGE_SIZE_PX} px")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise CtfEstimationError(f"micrograph must be real-valued, got dtype {array.dtype}")
    frame = frame_tensor(array, device)
    low, high = (float(v) for v in torch.stack(torch.aminmax(frame)).tolist())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise CtfEstimationError("micrograph contains NaN or Inf pixels")
    if low == high:
        raise CtfEstimationError("micrograph is constant: no spectrum to fit")
    return frame


def _tile_size_for(shape_px: tuple[int, ...], tile_size_px: int) -> int:
    """Requested tile, or the largest power of two that fits, shrunk until ≥ ``_MIN_TILES`` tiles fit."""
    shortest, longest = min(shape_px), max(shape_px)
    tile = tile_size_px if tile_size_px <= shortest else 1 << math.floor(math.log2(shortest))

    def n_tiles(t: int) -> int:
        step = max(1, round(t * (1.0 - _TILE_OVERLAP_FRACTION)))
        return ((shortest - t) // step + 1) * ((longest - t) // step + 1)

    while tile > _MIN_TILE_SIZE_PX and (n_tiles(tile) < _MIN_TILES or longest < 2 * tile):
        tile //= 2
    return tile


def _flatten_spectrum(power_2d: torch.Tensor, pixel_size_angstrom: float) -> _Spectrum:
    n_y, n_xr = power_2d.shape
    device = power_2d.device
    bins, multiplicity = radial_bin_index((n_y, n_xr), device=device)
    n_bins = n_y // 2 + 1
    ky = torch.fft.fftfreq(n_y, d=pixel_size_angstrom, device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(2 * (n_xr - 1), d=pixel_size_angstrom, device=device, dtype=torch.float64)
    ky_grid, kx_grid = torch.meshgrid(ky, kx, indexing="ij")
    k = torch.sqrt(ky_grid**2 + kx_grid**2).flatten()
    # Pixels ≤ Nyquist in order of |k| (ring index = round(|k| L p) is then non-decreasing too).
    index = (bins.flatten() < n_bins).nonzero().flatten()
    index = index[torch.argsort(k[index], stable=True)]
    theta = torch.atan2(ky_grid, kx_grid).flatten()[index]
    k_sorted, bins_sorted = k[index], bins.flatten()[index]
    return _Spectrum(
        power=power_2d.double().flatten()[index],
        k=k_sorted,
        cos2=torch.cos(2.0 * theta),
        sin2=torch.sin(2.0 * theta),
        weight=multiplicity.flatten()[index],
        bins=bins_sorted,
        index=index,
        k_host=k_sorted.cpu().numpy(),
        bins_host=bins_sorted.cpu().numpy(),
        n_bins=n_bins,
        bin_width_per_angstrom=1.0 / (n_y * pixel_size_angstrom),
    )


def _ring_average(
    spectrum: _Spectrum, bins: torch.Tensor, values: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of ``values`` in rings ``bins``, and the weight in each ring 0 … n_bins − 1.

    ``weight`` defaults to the half-plane multiplicity of every spectrum pixel.  Pixels with a ring
    index ≥ n_bins are left out (so a caller drops pixels by index, without a boolean mask, whose
    size would have to be read back from the device).
    """
    weight = spectrum.weight if weight is None else weight
    bins = bins.clamp_max(spectrum.n_bins)
    counts = torch.zeros(spectrum.n_bins + 1, dtype=torch.float64, device=values.device)
    counts.index_add_(0, bins, weight)
    sums = torch.zeros(spectrum.n_bins + 1, dtype=torch.float64, device=values.device)
    sums.index_add_(0, bins, weight * values)
    counts, sums = counts[:-1], sums[:-1]
    return sums / counts.clamp_min(1e-12), counts


# --------------------------------------------------------------------------------------------------
# 1-D: variable-projection search and envelope fits


def _bspline_basis(k: torch.Tensor, k_lo: float, k_hi: float, n_basis: int = _N_BASIS) -> torch.Tensor:
    """Clamped cubic B-spline basis on [k_lo, k_hi] with uniform knots, shape (len(k), n_basis).

    Frequencies outside the interval take the value at its nearest end.
    """
    interior = np.linspace(k_lo, k_hi, n_basis - 2)
    knots = np.concatenate([[k_lo] * 3, interior, [k_hi] * 3])
    x = np.clip(k.detach().cpu().numpy().astype(np.float64), k_lo, k_hi)
    design = scipy.interpolate.BSpline.design_matrix(x, knots, 3).toarray()
    return torch.as_tensor(design, dtype=torch.float64, device=k.device)


def _nonnegative_lstsq(gram: torch.Tensor, rhs: torch.Tensor, n_iter: int = 6) -> torch.Tensor:
    """Batched non-negative least squares from normal equations: gram (C, p, p), rhs (C, p) → c (C, p).

    Coefficients that come out negative are fixed at zero and the rest re-solved, a few times (the
    active-set method of Lawson & Hanson 1974 without re-activation: exact when the active set only
    shrinks, the usual case for these smooth bases).
    """
    p = gram.shape[-1]
    eye = torch.eye(p, dtype=gram.dtype, device=gram.device)
    ridge = 1e-10 * gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)[:, None, None] * eye
    active = torch.ones(rhs.shape, dtype=torch.bool, device=gram.device)
    coefficients = torch.zeros_like(rhs)
    for _ in range(n_iter):
        both = active[:, :, None] & active[:, None, :]
        system = torch.where(both, gram, eye.expand_as(gram)) + ridge
        # solve_ex without its error check: no read-back (the ridge keeps the system positive definite).
        coefficients = torch.linalg.solve_ex(system, torch.where(active, rhs, 0.0))[0]
        coefficients = torch.where(active, coefficients, 0.0)
        negative = coefficients < 0
        if not bool(negative.any()):
            break
        active &= ~negative
    return coefficients.clamp_min(0.0)


def _ctf_squared_1d(k: torch.Tensor, defocus: torch.Tensor, optics: _Optics) -> torch.Tensor:
    """sin² χ(k; Δf) for defocus values (C,) and frequencies (n,) → (C, n)."""
    chi = optics.a_angstrom * k**2 * defocus[:, None] - optics.c_angstrom4 * k**4 + optics.phase_rad
    return torch.sin(chi) ** 2


def _smooth_level(frequency: torch.Tensor, profile: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    """Smooth positive level of a ring profile: exp of a B-spline fitted to log(profile) over ``band``.

    The standard deviation of a mean of n periodogram values is ≈ mean / √n, so 1 / level² (times the
    pixel count) is the least-squares weight of a ring or pixel.
    """
    in_band = (frequency >= band[0]) & (frequency <= band[1]) & (profile > 0)
    basis = _bspline_basis(frequency[in_band], band[0], band[1])
    log_profile = torch.log(profile[in_band]).unsqueeze(-1)
    coefficients = torch.linalg.lstsq(basis, log_profile).solution
    return torch.exp(_bspline_basis(frequency, band[0], band[1]) @ coefficients).squeeze(-1)


def _search_mean_defocus(
    frequency: torch.Tensor,
    profile: torch.Tensor,
    counts: torch.Tensor,
    level: torch.Tensor,
    band: tuple[float, float],
    optics: _Optics,
    search_range: tuple[float, float],
    nominal_defocus_angstrom: float | None,
) -> float:
    """Exhaustive variable-projection search for the mean defocus (module docstring, step 2)."""
    in_band = (frequency >= band[0]) & (frequency <= band[1])
    k = frequency[in_band]
    basis = _bspline_basis(k, band[0], band[1])
    sqrt_w = torch.sqrt(counts[in_band]) / level[in_band]
    target = profile[in_band] * sqrt_w
    k_top = float(k.max())
    step = _SEARCH_PHASE_STEP_RAD / (optics.a_angstrom * k_top**2)
    grid = torch.arange(search_range[0], search_range[1] + step, step, dtype=torch.float64, device=k.device)

    def residuals(defocus: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in torch.split(defocus, 512 if k.device.type == "cpu" else 8192):  # bounds CPU memory
            ctf2 = _ctf_squared_1d(k, chunk, optics)
            design = torch.cat([basis.expand(len(chunk), -1, -1), basis * ctf2[:, :, None]], dim=-1)
            design = design * sqrt_w[None, :, None]
            gram = design.transpose(1, 2) @ design
            rhs = (design.transpose(1, 2) @ target[:, None]).squeeze(-1)
            coefficients = _nonnegative_lstsq(gram, rhs)
            fitted = (design @ coefficients.unsqueeze(-1)).squeeze(-1)
            out.append(((target - fitted) ** 2).sum(dim=-1))
        return torch.cat(out)

    score = residuals(grid).cpu().numpy()
    best = int(np.argmin(score))
    if nominal_defocus_angstrom is not None and nominal_defocus_angstrom > 0:
        spread = float(np.median(score) - score[best])
        interior = np.r_[True, score[1:] < score[:-1]] & np.r_[score[:-1] <= score[1:], True]
        ties = np.flatnonzero(interior & (score <= score[best] + _PRIOR_TIE_FRACTION * spread))
        grid_np = grid.cpu().numpy()
        best = int(ties[np.argmin(np.abs(np.log(grid_np[ties] / nominal_defocus_angstrom)))])
    centre = float(grid[best])
    fine = torch.linspace(centre - step, centre + step, 17, dtype=torch.float64, device=k.device)
    fine_score = residuals(fine).cpu().numpy()
    j = int(np.clip(np.argmin(fine_score), 1, len(fine) - 2))
    y0, y1, y2 = fine_score[j - 1 : j + 2]
    curvature = y0 - 2 * y1 + y2
    offset = 0.5 * (y0 - y2) / curvature if curvature > 0 else 0.0
    return float(fine[j]) + float(np.clip(offset, -1.0, 1.0)) * float(fine[1] - fine[0])


def _fit_envelopes(
    spectrum: _Spectrum,
    power: torch.Tensor,
    params: FloatArray,
    level: torch.Tensor,
    band: tuple[float, float],
    optics: _Optics,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative fit of PS(k, θ) ≈ b(|k|) + a(|k|)·CTF²(k, θ; D, h_x, h_y) over the 2-D band.

    a and b are cubic B-splines in |k| on ``band`` (held at their end values outside it).  Because the
    basis depends on the ring only, the normal equations reduce to per-ring sums of w, w·CTF²,
    w·CTF⁴, w·PS and w·CTF²·PS (w = multiplicity / level², ``_smooth_level``), so the exact 2-D fit
    costs no more than a 1-D one and needs no equiphase approximation.  Returns (a, b) on all rings.
    """
    n_bins = spectrum.n_bins
    ring_k = torch.arange(n_bins, dtype=torch.float64, device=power.device) * spectrum.bin_width_per_angstrom
    first = math.ceil(band[0] / spectrum.bin_width_per_angstrom - 1e-9)
    last = math.floor(band[1] / spectrum.bin_width_per_angstrom + 1e-9)
    ring = torch.arange(n_bins, device=power.device)
    in_band_ring = (ring >= first) & (ring <= last)
    keep = spectrum.rings(first, last)
    bins = spectrum.bins[keep]
    weight = spectrum.weight[keep] / level[bins] ** 2
    d, hx, hy = (float(v) for v in params)
    defocus = d + hx * spectrum.cos2[keep] + hy * spectrum.sin2[keep]
    k = spectrum.k[keep]
    ctf2 = torch.sin(optics.a_angstrom * k**2 * defocus - optics.c_angstrom4 * k**4 + optics.phase_rad) ** 2
    values = power[keep]
    sums = torch.zeros((5, n_bins), dtype=torch.float64, device=power.device)
    for row, quantity in enumerate((weight, weight * ctf2, weight * ctf2**2, weight * values, weight * ctf2 * values)):
        sums[row].index_add_(0, bins, quantity)
    full_basis = _bspline_basis(ring_k, band[0], band[1])
    basis = full_basis * in_band_ring[:, None]

    def block(ring_weight: torch.Tensor) -> torch.Tensor:
        return basis.T @ (basis * ring_weight[:, None])

    gram = torch.cat(
        [
            torch.cat([block(sums[0]), block(sums[1])], dim=1),
            torch.cat([block(sums[1]), block(sums[2])], dim=1),
        ]
    )
    rhs = torch.cat([basis.T @ sums[3], basis.T @ sums[4]])
    coefficients = _nonnegative_lstsq(gram.unsqueeze(0), rhs.unsqueeze(0))[0]
    return full_basis @ coefficients[_N_BASIS:], full_basis @ coefficients[:_N_BASIS]


# --------------------------------------------------------------------------------------------------
# 2-D: weighted NCC, grid search and refinement


def _interp_bins(values: torch.Tensor, k: torch.Tensor, bin_width: float) -> torch.Tensor:
    """Linear interpolation of a ring profile (values at k_i = i · bin_width) at frequencies k."""
    position = (k / bin_width).clamp(0.0, len(values) - 1.0)
    lower = position.floor().long().clamp(max=len(values) - 2)
    fraction = position - lower
    return values[lower] * (1.0 - fraction) + values[lower + 1] * fraction


def _block_pixels(device: torch.device) -> int | None:
    """Pixels per block of the NCC sums: ``_BLOCK_PIXELS`` on a CPU, the whole band (None) elsewhere."""
    return _BLOCK_PIXELS if device.type == "cpu" else None


@dataclass(frozen=True)
class _PixelModel:
    """Per-pixel quantities of a band under one envelope model (a, b), pixels sorted by |k|: the band
    from its low edge to any lower top is a prefix of these arrays (``_band_pixels``).

    ``s`` = (PS − b)/σ has one row per spectrum (module docstring, step 3); ``k_host`` holds the pixels'
    |k| on the host, to find a prefix without a read-back.
    """

    k_host: FloatArray
    phase_basis: torch.Tensor  # (3, n)
    phase_offset: torch.Tensor  # (n,)
    weight: torch.Tensor  # (n,)
    wg: torch.Tensor  # (n,)
    wg2: torch.Tensor  # (n,)
    s: torch.Tensor  # (R, n)
    phase_rate_per_angstrom: float  # A, so that ∂χ/∂D = A k²


def _pixel_model(
    spectrum: _Spectrum,
    power: torch.Tensor,
    signal: torch.Tensor,
    background: torch.Tensor,
    band: tuple[float, float],
    optics: _Optics,
    max_pixels: int | None = None,
) -> _PixelModel:
    """``_PixelModel`` of the pixels of ``band``, evenly thinned to ``max_pixels``.

    ``power`` holds the spectrum's pixels, shape (n,), or several spectra with the same model, (R, n)
    (the two half sets).
    """
    pixels = spectrum.band(*band)
    index: slice | torch.Tensor = pixels
    k_host = spectrum.k_host[pixels]
    n = len(k_host)
    if max_pixels is not None and n > max_pixels:
        positions = pixels.start + np.floor(np.arange(max_pixels) * (n / max_pixels)).astype(np.int64)
        index = torch.as_tensor(positions, device=spectrum.k.device)
        k_host = spectrum.k_host[positions]
    k = spectrum.k[index]
    a = _interp_bins(signal, k, spectrum.bin_width_per_angstrom).clamp_min(0.0)
    b = _interp_bins(background, k, spectrum.bin_width_per_angstrom).clamp_min(0.0)
    expected = b + 0.5 * a
    sigma = torch.clamp_min(expected, 1e-12 * expected.max() + 1e-300)
    weight = spectrum.weight[index]
    gain = a / sigma
    a_k2 = optics.a_angstrom * k**2
    wg = weight * gain
    return _PixelModel(
        k_host=k_host,
        phase_basis=torch.stack([a_k2, a_k2 * spectrum.cos2[index], a_k2 * spectrum.sin2[index]]),
        phase_offset=optics.phase_rad - optics.c_angstrom4 * k**4,
        weight=weight,
        wg=wg,
        wg2=wg * gain,
        s=(power.reshape(-1, power.shape[-1])[:, index] - b) / sigma,
        phase_rate_per_angstrom=optics.a_angstrom,
    )


def _band_pixels(model: _PixelModel, k_max: float) -> _PixelSet:
    """The model's pixels with |k| ≤ k_max, centred (s_c = s − its weighted mean over these pixels) and
    cut into blocks (``_block_pixels``)."""
    n = int(np.searchsorted(model.k_host, k_max, side="right"))
    weight, s = model.weight[:n], model.s[:, :n]
    basis, offset, wg, wg2 = model.phase_basis[:, :n], model.phase_offset[:n], model.wg[:n], model.wg2[:n]
    weight_sum = weight.sum()
    s_centered = s - (weight * s).sum(dim=1, keepdim=True) / weight_sum
    wgs = wg * s_centered
    scalars = torch.cat([weight_sum[None], (weight * s_centered**2).sum(dim=1)]).tolist()  # one read-back
    size = _block_pixels(weight.device) or max(n, 1)
    blocks = tuple(
        _PixelBlock(
            phase_basis=basis[:, i : i + size].contiguous(),
            phase_basis_t=basis[:, i : i + size].T.contiguous(),
            phase_offset=offset[i : i + size].contiguous(),
            wg=wg[i : i + size].contiguous(),
            wgs=wgs[:, i : i + size].contiguous(),
            wg2=wg2[i : i + size].contiguous(),
        )
        for i in range(0, n, size)
    )
    k_top = float(model.k_host[:n].max()) if n else 0.0
    return _PixelSet(
        blocks,
        s_norm2=tuple(scalars[1:]),
        weight_sum=scalars[0],
        top_phase_rate_per_angstrom=model.phase_rate_per_angstrom * k_top**2,
    )


def _ncc(pixels: _PixelSet, params: torch.Tensor) -> torch.Tensor:
    """Weighted NCC between the first spectrum row's s and (a/σ)·CTF²(D, h_x, h_y) for parameter rows
    (C, 3) → (C,)."""
    sums = torch.zeros((3, params.shape[0]), dtype=params.dtype, device=params.device)
    for block in pixels.blocks:
        q = torch.sin(params @ block.phase_basis + block.phase_offset) ** 2  # (C, n)
        sums[0] += q @ block.wg
        sums[1] += q @ block.wgs[0]
        sums[2] += (q * q) @ block.wg2
    variance = sums[2] - sums[0] ** 2 / pixels.weight_sum
    return sums[1] / torch.sqrt(variance.clamp_min(1e-30) * max(pixels.s_norm2[0], 1e-30))


def _ncc_and_gradient(pixels: _PixelSet, params: FloatArray) -> tuple[FloatArray, FloatArray]:
    """NCC of parameter rows (S, 3) and its analytic gradient ∂NCC/∂(D, h_x, h_y), (S,) and (S, 3).

    Row r is scored against the spectrum row r of ``pixels`` (or its only row).  With q = sin²χ,
    m = g q and ∂q/∂p_j = sin 2χ · ∂χ/∂p_j: NCC = X / √(V S) with X = Σ w s_c m and
    V = Σ w m² − (Σ w m)² / Σ w, so ∂NCC = NCC · (∂X / X − ½ ∂V / V),
    ∂X = Σ wgs sin 2χ ∂χ,  ∂V = 2 Σ wg2 q sin 2χ ∂χ − 2 (Σ w m)(Σ wg sin 2χ ∂χ) / Σ w.
    All sums come back from the device in one read.
    """
    n_rows = params.shape[0]
    first = pixels.blocks[0].phase_basis
    rows = torch.as_tensor(params, dtype=torch.float64).to(first.device)
    parts = []  # per block: Σ w m, X, Σ w m² (3 S values), then ∂Σwm, ∂X, ½∂Σwm² (3 S × 3)
    for block in pixels.blocks:
        chi = torch.addmm(block.phase_offset, rows, block.phase_basis)  # (S, n)
        sin_chi, cos_chi = torch.sin(chi), torch.cos(chi)
        q = sin_chi * sin_chi
        factors = torch.stack([block.wg.expand_as(q), block.wgs.expand_as(q), block.wg2 * q])  # (3, S, n)
        sums = (factors * q).sum(dim=-1)
        derivatives = (factors * (2.0 * sin_chi * cos_chi)) @ block.phase_basis_t
        parts.append(torch.cat([sums.flatten(), derivatives.flatten()]))
    values = (parts[0] if len(parts) == 1 else torch.stack(parts).sum(dim=0)).cpu().numpy()
    sum_m, cross, sum_mm = values[: 3 * n_rows].reshape(3, n_rows)
    d_sum_m, d_cross, d_half_mm = values[3 * n_rows :].reshape(3, n_rows, 3)
    s_norm2 = np.maximum(np.asarray(pixels.s_norm2), 1e-30)
    variance = np.maximum(sum_mm - sum_m**2 / pixels.weight_sum, 1e-30)
    d_variance = 2.0 * d_half_mm - 2.0 * sum_m[:, None] * d_sum_m / pixels.weight_sum
    ncc = cross / np.sqrt(variance * s_norm2)
    safe_cross = np.where(cross == 0.0, 1.0, cross)
    gradient = ncc[:, None] * (d_cross / safe_cross[:, None] - 0.5 * d_variance / variance[:, None])
    return ncc, np.where(cross[:, None] == 0.0, 0.0, gradient)


def _parameter_bounds(
    search_range: tuple[float, float], mean_defocus_angstrom: float
) -> tuple[tuple[float, float], float]:
    """((D_min, D_max), h_max): the mean defocus stays in the search range and the astigmatism
    half-difference h = (U − V)/2 within ½·max(2000 Å, 20 % of D) (and below 90 % of D_min, so V > 0)."""
    h_max = 0.5 * max(_MAX_ASTIGMATISM_ANGSTROM, _MAX_ASTIGMATISM_FRACTION * mean_defocus_angstrom)
    return search_range, min(h_max, 0.9 * search_range[0])


def _grid_and_refine(
    spectrum: _Spectrum,
    signal: torch.Tensor,
    background: torch.Tensor,
    band: tuple[float, float],
    optics: _Optics,
    bounds: tuple[tuple[float, float], float],
    mean_defocus_angstrom: float,
) -> FloatArray:
    """Coarse grid over (D offset, h, angle), then band-widening L-BFGS-B refinement of the best starts.

    The grid is scored on a band up to k_g = 1/``_GRID_RESOLUTION_ANGSTROM`` (at least 2 k_lo) where
    its spacing moves the phase at k_g by ≤ ``_GRID_PHASE_STEP_RAD``: steps of D and h of π/3 / (A k_g²),
    and, at astigmatism h, angle steps δ with 2 A k_g² h δ ≤ π/3.  The ``_N_REFINE_STARTS`` best
    distinct grid points are refined while the band grows by ``_BAND_GROWTH`` per stage to the high
    limit, keeping the two best after the first stage and the best one at the end.
    """
    k_grid = max(min(band[1], 1.0 / _GRID_RESOLUTION_ANGSTROM), min(band[1], 2.0 * band[0]))
    phase_unit = 1.0 / (optics.a_angstrom * k_grid**2)  # defocus change moving the phase by 1 rad at k_g
    step = phase_unit * _GRID_PHASE_STEP_RAD
    (d_min, d_max), h_max = bounds
    rows: list[tuple[float, float, float]] = []
    for offset in (-step, 0.0, step):
        d = min(max(mean_defocus_angstrom + offset, d_min), d_max)
        for h in np.arange(0.0, h_max + 0.5 * step, step):
            n_angles = 1 if h == 0 else max(4, math.ceil(2.0 * math.pi * h / step))
            for angle in np.arange(n_angles) * math.pi / n_angles:
                rows.append((d, h * math.cos(2 * angle), h * math.sin(2 * angle)))
    candidates = np.array(rows)
    coarse_band = (band[0], k_grid)
    coarse = _band_pixels(
        _pixel_model(spectrum, spectrum.power, signal, background, coarse_band, optics, _GRID_MAX_PIXELS), k_grid
    )
    on_device = torch.as_tensor(candidates, device=spectrum.power.device)
    scores = torch.cat([_ncc(coarse, chunk) for chunk in torch.split(on_device, 64)]).cpu().numpy()
    starts: list[FloatArray] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(np.linalg.norm(candidates[i] - start) > step for start in starts):
            starts.append(candidates[i])
        if len(starts) == _N_REFINE_STARTS:
            break

    model = _pixel_model(spectrum, spectrum.power, signal, background, band, optics)
    k_max = k_grid
    while True:
        pixels = _band_pixels(model, k_max)
        fitted, nccs = _refine(pixels, np.stack(starts), bounds)  # all starts in one refinement
        refined = sorted(zip(fitted, nccs.tolist(), strict=True), key=lambda r: -r[1])
        if k_max >= band[1]:
            best: FloatArray = refined[0][0]
            return best
        # Keep the best two distinct optima (starts that converged together are refined only once).
        tolerance = 0.1 / (optics.a_angstrom * k_max**2)
        starts = []
        for params, _ in refined:
            if all(np.linalg.norm(params - start) > tolerance for start in starts):
                starts.append(params)
        starts = starts[:2]
        k_max = min(band[1], k_max * _BAND_GROWTH)


def _refine(
    pixels: _PixelSet, starts: FloatArray, bounds: tuple[tuple[float, float], float]
) -> tuple[FloatArray, FloatArray]:
    """Local maximisation of the NCC from starts (S, 3) of (D, h_x, h_y) with L-BFGS-B (analytic gradient).

    Row r is fitted to spectrum row r of ``pixels`` (or its only row); the rows are independent, so
    the sum of their NCCs is maximised over all 3 S variables at once, every evaluation one pass over
    the pixels for all rows.  The variables are scaled so that a unit step moves the phase at the top of
    the band by 1 rad; D is bounded to the search range and h_x, h_y to ±h_max (``_parameter_bounds``).
    Returns the parameters (S, 3) and each row's NCC (S,).
    """
    scale = 1.0 / pixels.top_phase_rate_per_angstrom
    (d_min, d_max), h_max = bounds
    lower = ((np.array([d_min, -h_max, -h_max]) - starts) / scale).ravel()
    upper = ((np.array([d_max, h_max, h_max]) - starts) / scale).ravel()
    last: dict[str, FloatArray] = {}

    def objective(x: FloatArray) -> tuple[float, FloatArray]:
        ncc, gradient = _ncc_and_gradient(pixels, starts + x.reshape(starts.shape) * scale)
        last["x"], last["ncc"] = x.copy(), ncc
        return -float(ncc.sum()), -(gradient * scale).ravel()

    result = scipy.optimize.minimize(
        objective,
        np.clip(np.zeros(starts.size), lower, upper),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(lower, upper, strict=True)),
        options={"maxiter": 60, "gtol": 1e-7},
    )
    best = starts + result.x.reshape(starts.shape) * scale
    if np.array_equal(last["x"], result.x):
        return best, last["ncc"]
    return best, _ncc_and_gradient(pixels, best)[0]


# --------------------------------------------------------------------------------------------------
# Equiphase average, fit resolution, uncertainty, spectral model


def _equiphase_average(spectrum: _Spectrum, power: torch.Tensor, params: FloatArray, optics: _Optics) -> torch.Tensor:
    """Average of the spectrum in rings of equal CTF phase at the mean defocus (CTFFIND4 §2.5).

    Each pixel (k, θ) has defocus-and-C_s phase χ_d = A k² Δf(θ) − C k⁴; it is moved to the k' with
    A k'² D − C k'⁴ = χ_d (the root before the C_s turning point).  Pixels past their own turning point,
    or with a phase the mean defocus never reaches, are left out; rings no pixel maps to are NaN.
    """
    d, hx, hy = (float(v) for v in params)
    defocus = d + hx * spectrum.cos2 + hy * spectrum.sin2
    k2 = spectrum.k**2
    chi = optics.a_angstrom * k2 * defocus - optics.c_angstrom4 * k2**2
    a_d = optics.a_angstrom * d
    if optics.c_angstrom4 > 0:
        discriminant = a_d**2 - 4.0 * optics.c_angstrom4 * chi
        before_turn = (discriminant >= 0) & (2.0 * optics.c_angstrom4 * k2 <= optics.a_angstrom * defocus)
        u = (a_d - torch.sqrt(discriminant.clamp_min(0.0))) / (2.0 * optics.c_angstrom4)
    else:
        before_turn = torch.ones_like(chi, dtype=torch.bool)
        u = chi / a_d
    bins = torch.round(torch.sqrt(u.clamp_min(0.0)) / spectrum.bin_width_per_angstrom).long()
    bins = torch.where(before_turn, bins, spectrum.n_bins)  # left out by _ring_average
    average, counts = _ring_average(spectrum, bins, power)
    return torch.where(counts > 0, average, torch.nan)


def _fit_resolution_per_angstrom(
    frequency: torch.Tensor,
    equiphase: torch.Tensor,
    signal: torch.Tensor,
    background: torch.Tensor,
    params: FloatArray,
    optics: _Optics,
    k_lo: float,
) -> float:
    """Highest frequency up to which the rings match the model (module docstring, step 4).

    Windowed Pearson correlation between (equiphase average − b) and a·CTF²(k; D), from the first CTF
    zero (or k_lo, whichever is higher) outwards; the window spans ``_WINDOW_RING_PERIODS`` local ring
    periods (at least 2·``_MIN_WINDOW_HALF_WIDTH_BINS`` + 1 rings).  The result is the last ring before
    the correlation first falls below ``_FIT_CC_THRESHOLD``, capped where the rings along the U axis
    come closer than ``_MIN_RING_PERIOD_PX`` spectrum pixels, at the C_s turning point of the mean
    defocus, and at Nyquist; it is k_lo when no ring passes.
    """
    k = frequency.cpu().numpy()
    ring_width = float(k[1] - k[0])
    data = (equiphase - background).cpu().numpy()
    d, hx, hy = (float(v) for v in params)
    a, c = optics.a_angstrom, optics.c_angstrom4
    model = signal.cpu().numpy() * np.sin(a * k**2 * d - c * k**4 + optics.phase_rad) ** 2

    def period_rings(defocus: float) -> FloatArray:
        slope = np.abs(2.0 * a * k * defocus - 4.0 * c * k**3)  # |dχ/dk|
        return np.asarray(np.pi / np.maximum(slope, 1e-30) / ring_width, dtype=np.float64)

    period = period_rings(d)
    last = len(k) - 1
    aliasing = np.flatnonzero((period_rings(d + math.hypot(hx, hy)) < _MIN_RING_PERIOD_PX) & (k > 0))
    if aliasing.size:
        last = min(last, int(aliasing[0]) - 1)
    if c > 0:
        last = min(last, int(math.sqrt(a * d / (2.0 * c)) / ring_width) - 1)
    missing = np.flatnonzero(~np.isfinite(data[: last + 1]) & (k[: last + 1] >= k_lo))
    if missing.size:
        last = min(last, int(missing[0]) - 1)
    first_zero_k = math.sqrt(max(math.pi - optics.phase_rad, 0.0) / (a * max(d, 1.0)))
    first = math.ceil(max(k_lo, first_zero_k) / ring_width - 1e-9)
    good = -1
    for i in range(first, last + 1):
        half = max(_MIN_WINDOW_HALF_WIDTH_BINS, math.ceil(0.5 * _WINDOW_RING_PERIODS * period[i]))
        lo = min(max(i - half, first), max(last - 2 * half, first))
        hi = min(lo + 2 * half, last)
        x = data[lo : hi + 1] - data[lo : hi + 1].mean()
        y = model[lo : hi + 1] - model[lo : hi + 1].mean()
        denominator = math.sqrt(float((x**2).sum() * (y**2).sum()))
        if denominator <= 0 or float((x * y).sum()) / denominator < _FIT_CC_THRESHOLD:
            break
        good = i
    if good < 0:
        return k_lo
    return float(max(k_lo, k[good]))


def _defocus_sigma_angstrom(
    halves: HalfSetSpectra,
    spectrum: _Spectrum,
    signal: torch.Tensor,
    background: torch.Tensor,
    band: tuple[float, float],
    optics: _Optics,
    params: FloatArray,
    bounds: tuple[tuple[float, float], float],
) -> float:
    """σ of the mean defocus by a delete-one-group jackknife over the disjoint tile groups (module
    docstring, step 5); all refits run as one (``_refine`` with a row per left-out group)."""
    n_group = np.asarray(halves.n_group_tiles, dtype=np.float64)
    used = np.flatnonzero(n_group > 0)
    if used.size < 2:
        return _DEFOCUS_SIGMA_FLOOR_ANGSTROM
    groups = halves.group_power.reshape(halves.group_power.shape[0], -1).double()[:, spectrum.index]
    counts = torch.as_tensor(n_group, dtype=torch.float64, device=groups.device)
    total = (counts[:, None] * groups).sum(dim=0)
    index = torch.as_tensor(used, device=groups.device)
    left_out = (total[None, :] - counts[index, None] * groups[index]) / (counts.sum() - counts[index])[:, None]
    pixels = _band_pixels(_pixel_model(spectrum, left_out, signal, background, band, optics), band[1])
    refined, _ = _refine(pixels, np.repeat(params[None, :], used.size, axis=0), bounds)
    defocus = refined[:, 0]
    variance = (used.size - 1) / used.size * float(np.sum((defocus - defocus.mean()) ** 2))
    return max(_DEFOCUS_SIGMA_FLOOR_ANGSTROM, math.sqrt(variance))


def _spectral_model(
    frequency: torch.Tensor,
    rotational: torch.Tensor,
    signal: torch.Tensor,
    background: torch.Tensor,
    optics: _Optics,
    mean_defocus_angstrom: float,
    k_lo: float,
) -> SpectralModel:
    """Signal/background profiles on the rings 0 … Nyquist (``SpectralModel``).

    From k_lo to Nyquist (the valid range, both ends inclusive) they are the splines of the 2-D
    envelope fit.  Below k_lo the fit did not look: there the signal holds its value at k_lo and the
    background is the part of the rotational average that a(k_lo)·CTF²(k; D) does not explain (the
    ice/inelastic low-frequency power), so that a whitening or Wiener filter built on the model sees
    the real low-frequency power.  Ring 0 (DC, removed by the per-tile mean subtraction) copies ring 1.
    """
    k = frequency.cpu().numpy().astype(np.float64)
    a = signal.clamp_min(0.0).cpu().numpy().astype(np.float64)
    b = background.clamp_min(0.0).cpu().numpy().astype(np.float64)
    rot = rotational.cpu().numpy()
    n_bins = len(k)
    first = min(math.ceil(k_lo / float(k[1] - k[0]) - 1e-9), n_bins - 1)
    chi = optics.a_angstrom * k**2 * mean_defocus_angstrom - optics.c_angstrom4 * k**4 + optics.phase_rad
    a[:first] = a[first]
    b[:first] = np.maximum(rot[:first] - a[first] * np.sin(chi[:first]) ** 2, 0.0)
    if first > 1:
        b[0] = b[1]
    floor_from = math.floor((1.0 - _NOISE_FLOOR_BAND_FRACTION) * (n_bins - 1))
    return SpectralModel(
        frequency_per_angstrom=k,
        signal_power=a,
        background_power=b,
        noise_floor_power=float(np.median(b[floor_from:])),
        valid_from_index=first,
        valid_to_index=n_bins - 1,
    )
