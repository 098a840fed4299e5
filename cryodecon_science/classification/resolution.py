"""Fourier ring correlation between the half-set sums of each class, and the resolution it supports.

FRC_k(j) = Σ_{ring j} w Re(N_k^A N_k^B*) / √(Σ_{ring j} w |N_k^A|² · Σ_{ring j} w |N_k^B|²)   (Saxton &
Baumeister 1982, J. Microsc. 127:127; van Heel 1987, Ultramicroscopy 21:95), with N_k^A, N_k^B the CTF-weighted
sums Σ_i w_ik H_i X_i of class k over the particles of half set A and B (``streaming``), w the Hermitian weights of
the rfft layout and rings one Fourier pixel wide, ring j at |k| = j/(B·a) for box B and pixel a.  With N^h = D^h·A +
noise of variance D^h·B²σ², the FRC measures the per-ring SNR of a half, FRC = SNR_half / (1 + SNR_half), without
dividing by CTF² near its zeros; a per-ring real factor (the Wiener filter, a B-factor envelope) leaves it unchanged.

The resolution at threshold t is 1/k where the FRC first falls below t, linearly interpolated between rings:
0.143 for half sets (Rosenthal & Henderson 2003, J. Mol. Biol. 333:721) and 0.5 as the conservative figure.  Both
halves are aligned against the same references, so, as in RELION's 2D classification, the FRC is not gold-standard:
noise aligned to a common reference correlates between halves and the figure is optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.classification.geometry import hermitian_weights, ring_index

FloatArray = npt.NDArray[np.float64]

FRC_HALF_SET_THRESHOLD = 0.143
"""Half-set FRC at which the resolution is read (Rosenthal & Henderson 2003)."""
FRC_CONSERVATIVE_THRESHOLD = 0.5
"""The older, conservative FRC threshold."""


def ring_frc(half_a_ft: torch.Tensor, half_b_ft: torch.Tensor) -> torch.Tensor:
    """FRC of rfft pairs (..., B, B//2+1) on rings 0 … B//2 (module docstring); (..., B//2+1) float32.

    A ring where either half has no power gets 0.
    """
    box = half_a_ft.shape[-2]
    n_rings = box // 2 + 1
    rings = ring_index(box, half_a_ft.device).reshape(-1)
    inside = rings < n_rings
    index = rings[inside]
    weights = hermitian_weights(box, half_a_ft.device).reshape(-1)[inside]
    lead = half_a_ft.shape[:-2]
    a = half_a_ft.reshape(-1, box * (box // 2 + 1))[:, inside]
    b = half_b_ft.reshape(-1, box * (box // 2 + 1))[:, inside]

    def ring_sum(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((values.shape[0], n_rings), device=values.device, dtype=torch.float64)
        return out.index_add_(1, index, (weights * values).to(torch.float64))

    cross = ring_sum((a * b.conj()).real)
    power = torch.sqrt(ring_sum(a.abs() ** 2) * ring_sum(b.abs() ** 2))
    frc = torch.where(power > 0, cross / power.clamp_min(1e-300), torch.zeros_like(cross))
    return frc.to(torch.float32).reshape(*lead, n_rings)


def resolution_at_threshold_angstrom(k_per_angstrom: npt.ArrayLike, frc: npt.ArrayLike, threshold: float) -> float:
    """1/k where the FRC first falls below ``threshold``, linear between rings; Å.

    ``math.inf`` when the first ring is already below (no resolved detail); 1/k of the last ring (Nyquist, 2a) when
    the FRC never falls below.
    """
    k = np.asarray(k_per_angstrom, dtype=np.float64)
    values = np.asarray(frc, dtype=np.float64)
    if k.ndim != 1 or k.shape != values.shape or k.size == 0:
        raise ValueError(f"k and frc must be 1-D arrays of one non-zero length, got {k.shape} and {values.shape}")
    below = np.flatnonzero(~(values >= threshold))  # NaN counts as below
    if below.size == 0:
        return float(1.0 / k[-1])
    j = int(below[0])
    if j == 0:
        return math.inf
    f0, f1 = values[j - 1], values[j]
    fraction = (f0 - threshold) / (f0 - f1) if np.isfinite(f1) and f0 != f1 else 0.0
    return float(1.0 / (k[j - 1] + fraction * (k[j] - k[j - 1])))


@dataclass(frozen=True, eq=False)
class ClassResolution:
    """Half-set FRC of each class and the resolutions read from it.

    Attributes
    ----------
    k_per_angstrom : ndarray, shape (B//2,), float64
        Ring frequencies j/(B·a), j = 1 … B//2, 1/Å.
    frc : ndarray, shape (K, B//2), float64
        FRC of each class on those rings.
    resolution_0143_angstrom, resolution_05_angstrom : ndarray, shape (K,), float64
        Resolution at FRC 0.143 and 0.5, Å (inf: not even the first ring is resolved).
    """

    k_per_angstrom: FloatArray
    frc: FloatArray
    resolution_0143_angstrom: FloatArray
    resolution_05_angstrom: FloatArray


def frc_resolution(half_a_ft: torch.Tensor, half_b_ft: torch.Tensor, pixel_size_angstrom: float) -> ClassResolution:
    """FRC and resolutions of K pairs of half-set sums (K, B, B//2+1) sampled at ``pixel_size_angstrom`` (Å/px)."""
    if half_a_ft.ndim != 3 or half_a_ft.shape != half_b_ft.shape:
        raise ValueError(f"half sums must be (K, B, B//2+1) of one shape, got {half_a_ft.shape}, {half_b_ft.shape}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
    box = half_a_ft.shape[1]
    frc = ring_frc(half_a_ft, half_b_ft)[:, 1:].detach().to("cpu", torch.float64).numpy()
    k = np.arange(1, box // 2 + 1, dtype=np.float64) / (box * pixel_size_angstrom)
    return ClassResolution(
        k_per_angstrom=k,
        frc=frc,
        resolution_0143_angstrom=np.array(
            [resolution_at_threshold_angstrom(k, row, FRC_HALF_SET_THRESHOLD) for row in frc], dtype=np.float64
        ),
        resolution_05_angstrom=np.array(
            [resolution_at_threshold_angstrom(k, row, FRC_CONSERVATIVE_THRESHOLD) for row in frc], dtype=np.float64
        ),
    )
