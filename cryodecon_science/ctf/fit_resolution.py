"""Fit resolution: how far out the Thon rings match the model, on the equiphase average.

After CTFFIND4 §2.5 and ctffind.cpp 4.1.x: every pixel's frequency is mapped to the frequency with the
same CTF phase at the mean defocus, the spectrum is averaged in those rings (:func:`equiphase_average`),
and the Pearson correlation between (average − b) and a·CTF² is computed in a sliding window 1.5 ring
periods wide (``_WINDOW_RING_PERIODS``).  The fit resolution is 1/k at the last ring before the
correlation first falls below ``_FIT_CC_THRESHOLD`` = 0.5 (CTFFIND's ``frc_significance_threshold``, by
analogy with the 0.5 criterion of a map-vs-model FSC), counting from the first CTF zero; with no ring
above it the fit resolution is the low-resolution limit.  It never exceeds Nyquist, the C_s turning
point, nor the frequency where the rings along the U axis come closer than ``_MIN_RING_PERIOD_PX`` = 2.5
spectrum pixels: below 2 pixels per period the rings alias (sampling theorem), and at 2.5 the Hann window
has already cut their contrast to 1/3 (the window's normalised autocorrelation at lag L/2.5; 0.17 at 2
pixels, 0.47 at 3), so a correlation there rests on little signal.  For high defocus, a larger tile moves
this limit out.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryodecon_science.ctf.layout import FloatArray, Optics, Spectrum, ring_average

# Fit resolution: CC threshold, window width in local ring periods and its minimum half-width (a
# Pearson CC over fewer than 7 rings of pure noise exceeds 0.5 too often, ≈ 13 %).
_FIT_CC_THRESHOLD = 0.5
_WINDOW_RING_PERIODS = 1.5
_MIN_WINDOW_HALF_WIDTH_BINS = 3
_MIN_RING_PERIOD_PX = 2.5


def equiphase_average(spectrum: Spectrum, power: torch.Tensor, params: FloatArray, optics: Optics) -> torch.Tensor:
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
    bins = torch.where(before_turn, bins, spectrum.n_bins)  # left out by ring_average
    average, counts = ring_average(spectrum, bins, power)
    return torch.where(counts > 0, average, torch.nan)


def fit_resolution_per_angstrom(
    frequency: torch.Tensor,
    equiphase: torch.Tensor,
    signal: torch.Tensor,
    background: torch.Tensor,
    params: FloatArray,
    optics: Optics,
    k_lo: float,
) -> float:
    """Highest frequency up to which the rings match the model (module docstring).

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
