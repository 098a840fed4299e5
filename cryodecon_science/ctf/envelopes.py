"""The smooth profiles under the Thon rings: signal × envelope a(k) and background b(k), as B-splines.

The spectrum is modelled as PS(k, θ) ≈ b(|k|) + a(|k|)·CTF²(k, θ), with a and b cubic B-splines in |k|
(``_N_BASIS`` functions each, coefficients ≥ 0 so a, b ≥ 0): smooth on the scale of the knots, so the
background cannot absorb the rings.  :func:`fit_envelopes` fits them to the whole 2-D spectrum for given
CTF parameters (exact, no equiphase approximation); :func:`spectral_model` turns them into the
:class:`~cryodecon_science.records.SpectralModel` of the fit.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.interpolate
import torch

from cryodecon_science.ctf.layout import FloatArray, Optics, Spectrum
from cryodecon_science.records import SpectralModel

# B-spline functions for each of a(k) and b(k): enough for a specimen spectrum × envelope and an
# ice/inelastic hump over the band, too few to follow Thon rings (≥ 2 rings per knot interval above the
# first few rings for defocus ≥ 0.5 µm).
_N_BASIS = 10
# Fraction of the Nyquist band whose background defines the noise floor.
_NOISE_FLOOR_BAND_FRACTION = 0.1


def bspline_basis(k: torch.Tensor, k_lo: float, k_hi: float, n_basis: int = _N_BASIS) -> torch.Tensor:
    """Clamped cubic B-spline basis on [k_lo, k_hi] with uniform knots, shape (len(k), n_basis).

    Frequencies outside the interval take the value at its nearest end.
    """
    interior = np.linspace(k_lo, k_hi, n_basis - 2)
    knots = np.concatenate([[k_lo] * 3, interior, [k_hi] * 3])
    x = np.clip(k.detach().cpu().numpy().astype(np.float64), k_lo, k_hi)
    design = scipy.interpolate.BSpline.design_matrix(x, knots, 3).toarray()
    return torch.as_tensor(design, dtype=torch.float64, device=k.device)


def nonnegative_lstsq(gram: torch.Tensor, rhs: torch.Tensor, n_iter: int = 6) -> torch.Tensor:
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


def smooth_level(frequency: torch.Tensor, profile: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    """Smooth positive level of a ring profile: exp of a B-spline fitted to log(profile) over ``band``.

    The standard deviation of a mean of n periodogram values is ≈ mean / √n, so 1 / level² (times the
    pixel count) is the least-squares weight of a ring or pixel.
    """
    in_band = (frequency >= band[0]) & (frequency <= band[1]) & (profile > 0)
    basis = bspline_basis(frequency[in_band], band[0], band[1])
    log_profile = torch.log(profile[in_band]).unsqueeze(-1)
    coefficients = torch.linalg.lstsq(basis, log_profile).solution
    return torch.exp(bspline_basis(frequency, band[0], band[1]) @ coefficients).squeeze(-1)


def fit_envelopes(
    spectrum: Spectrum,
    power: torch.Tensor,
    params: FloatArray,
    level: torch.Tensor,
    band: tuple[float, float],
    optics: Optics,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative fit of PS(k, θ) ≈ b(|k|) + a(|k|)·CTF²(k, θ; D, h_x, h_y) over the 2-D band.

    a and b are cubic B-splines in |k| on ``band`` (held at their end values outside it).  Because the
    basis depends on the ring only, the normal equations reduce to per-ring sums of w, w·CTF²,
    w·CTF⁴, w·PS and w·CTF²·PS (w = multiplicity / level², ``smooth_level``), so the exact 2-D fit
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
    full_basis = bspline_basis(ring_k, band[0], band[1])
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
    coefficients = nonnegative_lstsq(gram.unsqueeze(0), rhs.unsqueeze(0))[0]
    return full_basis @ coefficients[_N_BASIS:], full_basis @ coefficients[:_N_BASIS]


def spectral_model(
    frequency: torch.Tensor,
    rotational: torch.Tensor,
    signal: torch.Tensor,
    background: torch.Tensor,
    optics: Optics,
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
