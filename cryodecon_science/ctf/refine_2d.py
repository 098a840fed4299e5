"""2-D refinement of (mean defocus D, astigmatism components h_x, h_y) by a weighted normalised cross-correlation.

Δf(θ) = D + h_x cos 2θ + h_y sin 2θ  (U = D + h, V = D − h, h = |(h_x, h_y)|, θ_ast = ½ atan2(h_y, h_x);
:func:`ctf_params_from_components`).  The objective is the weighted NCC (CTFFIND4 eq. 6; Rohou &
Grigorieff 2015) between the background-subtracted 2-D spectrum and the CTF² model, both divided by the
spectrum's expected standard deviation σ(k) = b(k) + a(k)/2 (a periodogram's standard deviation equals its
mean): s = (PS − b)/σ,  m = (a/σ)·CTF².  Where a ≫ b this is the amplitude-normalised (PS − b)/a against
CTF²; where noise dominates it down-weights the noise instead of amplifying it.

:func:`grid_and_refine` scores a coarse grid over astigmatism magnitude and angle (plus small mean-defocus
offsets) on a band limited to ``_GRID_RESOLUTION_ANGSTROM``, then refines the best starts with L-BFGS-B
(analytic gradient, :func:`refine`) while the band is widened in steps up to the high-resolution limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from cryodecon_science.ctf.layout import FloatArray, Optics, Spectrum
from cryodecon_science.optics import CtfParams, canonical_ctf_params

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


@dataclass(frozen=True)
class _PixelBlock:
    """A block of spectrum pixels (``_block_pixels``), prepared for the weighted NCC against CTF².

    With w the half-plane multiplicity, g = a/σ and s_c the centred normalised spectrum (module
    docstring), the model is m = g·sin²χ and every sum the NCC needs is a dot product of sin²χ
    or sin 2χ with ``wg`` = w g, ``wgs`` = w g s_c or ``wg2`` = w g².  ``wgs`` has one row per spectrum
    the set was built from (the full spectrum, or the jackknife's leave-one-group-out spectra).
    """

    phase_basis: torch.Tensor  # (3, n): ∂χ/∂(D, h_x, h_y) = A k² · (1, cos 2θ, sin 2θ)
    phase_basis_t: torch.Tensor  # (n, 3): the same, transposed and contiguous
    phase_offset: torch.Tensor  # (n,): −C k⁴ + φ
    wg: torch.Tensor  # (n,)
    wgs: torch.Tensor  # (R, n)
    wg2: torch.Tensor  # (n,)


@dataclass(frozen=True)
class PixelSet:
    """Spectrum pixels of one band in blocks, with Σ w, Σ w s_c² of each spectrum row, and the largest
    ∂χ/∂D = A k² over the pixels (the phase rate that scales the refinement's variables)."""

    blocks: tuple[_PixelBlock, ...]
    s_norm2: tuple[float, ...]
    weight_sum: float
    top_phase_rate_per_angstrom: float


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
class PixelModel:
    """Per-pixel quantities of a band under one envelope model (a, b), pixels sorted by |k|: the band
    from its low edge to any lower top is a prefix of these arrays (``band_pixels``).

    ``s`` = (PS − b)/σ has one row per spectrum (module docstring); ``k_host`` holds the pixels'
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


def pixel_model(
    spectrum: Spectrum,
    power: torch.Tensor,
    signal: torch.Tensor,
    background: torch.Tensor,
    band: tuple[float, float],
    optics: Optics,
    max_pixels: int | None = None,
) -> PixelModel:
    """``PixelModel`` of the pixels of ``band``, evenly thinned to ``max_pixels``.

    ``power`` holds the spectrum's pixels, shape (n,), or several spectra with the same model, (R, n)
    (the jackknife's leave-one-group-out spectra).
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
    return PixelModel(
        k_host=k_host,
        phase_basis=torch.stack([a_k2, a_k2 * spectrum.cos2[index], a_k2 * spectrum.sin2[index]]),
        phase_offset=optics.phase_rad - optics.c_angstrom4 * k**4,
        weight=weight,
        wg=wg,
        wg2=wg * gain,
        s=(power.reshape(-1, power.shape[-1])[:, index] - b) / sigma,
        phase_rate_per_angstrom=optics.a_angstrom,
    )


def band_pixels(model: PixelModel, k_max: float) -> PixelSet:
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
    return PixelSet(
        blocks,
        s_norm2=tuple(scalars[1:]),
        weight_sum=scalars[0],
        top_phase_rate_per_angstrom=model.phase_rate_per_angstrom * k_top**2,
    )


def _ncc(pixels: PixelSet, params: torch.Tensor) -> torch.Tensor:
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


def _ncc_and_gradient(pixels: PixelSet, params: FloatArray) -> tuple[FloatArray, FloatArray]:
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


def parameter_bounds(
    search_range: tuple[float, float], mean_defocus_angstrom: float
) -> tuple[tuple[float, float], float]:
    """((D_min, D_max), h_max): the mean defocus stays in the search range and the astigmatism
    half-difference h = (U − V)/2 within ½·max(2000 Å, 20 % of D) (and below 90 % of D_min, so V > 0)."""
    h_max = 0.5 * max(_MAX_ASTIGMATISM_ANGSTROM, _MAX_ASTIGMATISM_FRACTION * mean_defocus_angstrom)
    return search_range, min(h_max, 0.9 * search_range[0])


def grid_and_refine(
    spectrum: Spectrum,
    signal: torch.Tensor,
    background: torch.Tensor,
    band: tuple[float, float],
    optics: Optics,
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
    coarse = band_pixels(
        pixel_model(spectrum, spectrum.power, signal, background, coarse_band, optics, _GRID_MAX_PIXELS), k_grid
    )
    on_device = torch.as_tensor(candidates, device=spectrum.power.device)
    scores = torch.cat([_ncc(coarse, chunk) for chunk in torch.split(on_device, 64)]).cpu().numpy()
    starts: list[FloatArray] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(np.linalg.norm(candidates[i] - start) > step for start in starts):
            starts.append(candidates[i])
        if len(starts) == _N_REFINE_STARTS:
            break

    model = pixel_model(spectrum, spectrum.power, signal, background, band, optics)
    k_max = k_grid
    while True:
        pixels = band_pixels(model, k_max)
        fitted, nccs = refine(pixels, np.stack(starts), bounds)  # all starts in one refinement
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


def refine(
    pixels: PixelSet, starts: FloatArray, bounds: tuple[tuple[float, float], float]
) -> tuple[FloatArray, FloatArray]:
    """Local maximisation of the NCC from starts (S, 3) of (D, h_x, h_y) with L-BFGS-B (analytic gradient).

    Row r is fitted to spectrum row r of ``pixels`` (or its only row); the rows are independent, so
    the sum of their NCCs is maximised over all 3 S variables at once, every evaluation one pass over
    the pixels for all rows.  The variables are scaled so that a unit step moves the phase at the top of
    the band by 1 rad; D is bounded to the search range and h_x, h_y to ±h_max (``parameter_bounds``).
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
