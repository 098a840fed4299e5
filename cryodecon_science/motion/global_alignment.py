"""Global (whole-frame) alignment of dose-fractionated movies: the iterative, Fourier-binned stage.

Iterative whole-frame alignment as in MotionCorr (Li et al. 2013, Nat. Methods 10:584–590) and
the global stage of MotionCor2 (Zheng et al. 2017, Nat. Methods 14:331–332):

1. Each frame is mean-subtracted, edge-tapered (so the periodic boundary does not correlate at zero
   detector shift) and Fourier transformed once.  Frequencies where the B-factor weight exp(−B k²/2) of the
   cross-power has fallen below 1e-4 carry no information for the alignment and are cropped away
   (Fourier binning), which makes the iterations cheap.
2. Iteration: with the current shifts s_f, the aligned frames A_f(r) = frame_f(r + s_f) are summed, and
   every frame is cross-correlated with the sum of all *other* aligned frames (leaving itself out
   removes the zero-shift peak of its own shot noise):
   CC_f(d) = F⁻¹{ Â_f(k) · conj(R̂_f(k)) · exp(−B k²/2) }(d),  R_f = Σ_{g≠f} A_g.
   The peak position d (integer maximum refined by a 1D parabola through the maximum and its two
   neighbours along each axis) is the residual displacement of the frame; s_f += d.
3. Stop when every |d| < ``tolerance_px`` or after ``max_iterations``.  Optionally fit a polynomial in
   time to each shift component (a smooth trajectory, as MotionCor2 does for its patch motion).
3b. Frequency weighting from the data (``frequency_weighting="ssnr"``, the default): the fixed B-factor
   of steps 1–3 only gets the frames close.  With those shifts the aligned spectra give, per ring of
   spatial frequency k, the per-frame signal power s(k) and noise power N(k) of the movie itself:
   |Σ_f Â_f|² − Σ_f |Â_f|² = Σ_{f≠g} Â_f Â_g* ≈ n(n−1)·s(k) (noise of different frames is
   independent) and Σ_f |Â_f|² / n ≈ s(k) + N(k).  A frame Â_f = S·e^{−2πik·d} + noise is then matched
   against the leave-one-out reference R_f, whose Wiener estimate of the signal is
   R_f · s / ((n−1)s + N); dividing by the frame's noise power gives the matched-filter weight of the
   cross-power (the maximum-likelihood shift for a known signal in coloured Gaussian noise; the same
   idea as the FSC-derived frequency weights of RELION's Bayesian polishing, Zivanov et al. 2019,
   IUCrJ 6:5–17, and Warp, Tegunov & Cramer 2019):
   w(k) = s(k) / (N(k) · (N(k) + (n−1)·s(k))),
   which for the low per-frame SNR of counted frames is ≈ s(k)/N(k)²: the signal's own spectrum,
   CTF rings and envelope included, instead of a Gaussian guess.  s and N are averaged over rings of
   five Fourier pixels, and the band is cropped where w falls below 1e-4 of its maximum.  Every frame is
   then shifted by its B-factor estimate *before* the edge taper is applied (a taper fixed on the
   detector pulls the correlation peak of a tapered, Fourier-shifted frame towards zero shift, by ≈ 1.5 %
   of the shift), and the residual shifts are refined with this weight by Newton steps on the
   correlation's Fourier sum (``iterate_newton``), leave-one-out as in step 2.  The patch stage
   (``patches``) keeps the fixed B-factor weight.
4. Shifts are referred to frame 0, and the frames are shifted back by Fourier (sub-pixel) shifts and
   summed: all frames, even-numbered frames (0, 2, 4, …) and odd-numbered frames (1, 3, 5, …).  The
   two half sums have independent noise, as needed for noise2noise-style training and FRC.

Sign convention (the same as ``simulate.MicrographTruth.drift_shifts_px``): ``shifts_px[f] = [dy, dx]``
is the displacement of the specimen in frame f relative to frame 0, in pixels; a feature at (y, x) in
frame 0 appears at (y + dy, x + dx) in frame f, i.e. frame_f(r) ≈ frame_0(r − shift_f).  Alignment
shifts frame f by −shift_f.

Fourier shifts are periodic: up to |shift| pixels at the edges of the aligned sums wrap around from the
opposite edge.  Detector defects (``hot_pixels``) are replaced by the frame mean before anything else,
so that they cannot pin the alignment to zero shift.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]

# The cross-power weight below which frequencies are dropped from the alignment.
_FILTER_FLOOR = 1e-4


def _crop_size(n_px: int, cutoff_cycles_per_px: float) -> int:
    """Even size of the Fourier-cropped grid that keeps |k| <= cutoff (cycles/pixel), at most n_px."""
    size = 2 * math.ceil(cutoff_cycles_per_px * n_px) + 4
    return size if size < n_px else n_px


def crop_spectrum(spectrum: torch.Tensor, ny: int, ny_c: int, nx_c: int) -> torch.Tensor:
    """Keep the low frequencies of an rfft2 spectrum (…, ny, nx//2+1) -> (…, ny_c, nx_c//2+1)."""
    if ny_c == ny:
        return spectrum[..., : nx_c // 2 + 1]
    half = ny_c // 2
    return torch.cat([spectrum[..., :half, : nx_c // 2 + 1], spectrum[..., ny - half :, : nx_c // 2 + 1]], dim=-2)


def edge_taper(ny: int, nx: int, device: torch.device, margin_px: int = 0) -> torch.Tensor:
    """Cosine (Tukey) taper over 1/8 of each side: removes the periodic-boundary step that would
    otherwise correlate at zero detector shift and bias the alignment towards no motion.  ``margin_px``
    zeroes that many pixels at every edge first (where a periodic shift wrapped the opposite edge in)."""

    def profile(n: int) -> torch.Tensor:
        width = max(1, n // 8)
        margin = min(margin_px, max(0, n // 2 - width - 1))
        position = torch.arange(n, dtype=torch.float64, device=device)
        distance = torch.clamp(torch.minimum(position, n - 1 - position) - margin, min=0.0)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * torch.clamp(distance / width, max=1.0))
        return ramp.to(torch.float32)

    return profile(ny)[:, None] * profile(nx)[None, :]


def shift_ramp(ky: torch.Tensor, kx: torch.Tensor, shifts_px: FloatArray) -> torch.Tensor:
    """exp(+2πi k·s): multiplying a spectrum by it shifts the image by −s (k in cycles per pixel).

    ``ky``/``kx`` are (h, w) grids that vary along one axis only (rows / columns), so the ramp is the outer
    product exp(2πi k_y s_y) · exp(2πi k_x s_x) of two 1D ramps (phases in float64), one complex multiply
    per element instead of a phase and a complex exponential per element.
    """
    sy = torch.as_tensor(shifts_px[:, 0], dtype=torch.float64, device=ky.device)[:, None, None]
    sx = torch.as_tensor(shifts_px[:, 1], dtype=torch.float64, device=ky.device)[:, None, None]
    phase_y = 2.0 * math.pi * ky[None, :, :1] * sy  # (n, h, 1)
    phase_x = 2.0 * math.pi * kx[None, :1, :] * sx  # (n, 1, w)
    ramp_y = torch.polar(torch.ones_like(phase_y), phase_y).to(torch.complex64)
    ramp_x = torch.polar(torch.ones_like(phase_x), phase_x).to(torch.complex64)
    return ramp_y * ramp_x


def _peak_positions(cc: torch.Tensor, max_shift_yx: tuple[int, int]) -> FloatArray:
    """Sub-pixel maxima (n, 2) [dy, dx] of cross-correlation maps (n, h, w) within ±max_shift (wrapped)."""
    n, h, w = cc.shape
    dy = torch.fft.fftfreq(h, d=1.0 / h, device=cc.device).round()
    dx = torch.fft.fftfreq(w, d=1.0 / w, device=cc.device).round()
    window = (dy.abs()[:, None] <= max_shift_yx[0]) & (dx.abs()[None, :] <= max_shift_yx[1])
    masked = cc.masked_fill(~window[None], -math.inf)
    flat = masked.reshape(n, -1).argmax(dim=1)
    iy, ix = flat // w, flat % w
    rows = torch.arange(n, device=cc.device)

    def value(oy: int, ox: int) -> torch.Tensor:
        return cc[rows, (iy + oy) % h, (ix + ox) % w].double()

    centre = value(0, 0)
    offsets = []
    for minus, plus in ((value(-1, 0), value(1, 0)), (value(0, -1), value(0, 1))):
        curvature = minus - 2.0 * centre + plus
        delta = torch.where(curvature < 0, 0.5 * (minus - plus) / curvature, torch.zeros_like(centre))
        offsets.append(delta.clamp(-0.5, 0.5))
    peak_y = dy[iy].double() + offsets[0]
    peak_x = dx[ix].double() + offsets[1]
    return np.stack([peak_y.cpu().numpy(), peak_x.cpu().numpy()], axis=1).astype(np.float64)


def iterate(
    spectra: torch.Tensor,
    ky_c: torch.Tensor,
    kx_c: torch.Tensor,
    weight: torch.Tensor,
    window: tuple[int, int],
    scale_yx: FloatArray,
    shifts: FloatArray,
    max_iterations: int,
    tolerance_px: float,
) -> tuple[FloatArray, int, bool]:
    """Leave-one-out alignment of cropped spectra (n, h, w//2+1) from ``shifts`` (module docstring, 2–3)."""
    h = spectra.shape[-2]
    w = 2 * (spectra.shape[-1] - 1)
    shifts = shifts.copy()
    iterations, converged = 0, False
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is reported
        aligned = spectra * shift_ramp(ky_c, kx_c, shifts)
        others = aligned.sum(dim=0, keepdim=True) - aligned
        cc = torch.fft.irfft2(aligned * others.conj() * weight, s=(h, w))
        update = _peak_positions(cc, window) * scale_yx
        shifts += update
        if float(np.max(np.abs(update))) < tolerance_px:
            converged = True
            break
    return shifts, iterations, converged


# Frames per chunk in the Newton refinement (bounds the temporaries to a few frames' spectra).
_NEWTON_CHUNK_FRAMES = 4


def newton_weight(weight: torch.Tensor, full_width: bool) -> torch.Tensor:
    """√(m w) on the rfft half plane: m = 2 for columns that stand for two frequencies (±k), else 1."""
    multiplicity = torch.full_like(weight, 2.0)
    multiplicity[:, 0] = 1.0
    if full_width:
        multiplicity[:, -1] = 1.0  # the Nyquist column of an uncropped rfft stands for one frequency
    return torch.sqrt(multiplicity * weight)


def iterate_newton(
    weighted: torch.Tensor,
    ky_c: torch.Tensor,
    kx_c: torch.Tensor,
    shifts: FloatArray,
    max_iterations: int,
    tolerance_px: float,
) -> tuple[FloatArray, int, bool]:
    """Leave-one-out refinement near the peak by Newton steps on the cross-correlation's Fourier sum.

    ``weighted`` holds √(m w)·Â_f (``newton_weight``), so that with X_f = w Â_f R̂_f* (module docstring,
    step 2) CC_f(d) = Re Σ_k m(k) X_f(k) e^{2πi k·d} (m = 2 for the rfft half plane's columns that stand
    for two frequencies, else 1), and at d = 0 ∇CC = −2π Σ m k Im X and ∇²CC = −4π² Σ m k kᵀ Re X; the
    step is d = −(∇²CC)⁻¹ ∇CC.  Frames start within a fraction of a pixel of their peak (the B-factor
    pass), where the peak is a smooth maximum; a step is capped at one pixel and skipped where the
    Hessian is not negative definite.  Five weighted sums replace the inverse FFT of the whole correlation
    map per frame and iteration, and frames are processed a few at a time against the running total, so
    memory beyond the stored spectra stays at a few frames (a 40 × 4096² movie's full-band spectra are
    2.7 GB in complex64).
    """
    shifts = shifts.copy()
    n = weighted.shape[0]
    # ky varies along rows only and kx along columns only: the sums over k factor into row and column sums.
    wy = (2.0 * math.pi * ky_c[:, 0]).to(torch.float32)
    wx = (2.0 * math.pi * kx_c[0, :]).to(torch.float32)
    chunks = [(a, min(n, a + _NEWTON_CHUNK_FRAMES)) for a in range(0, n, _NEWTON_CHUNK_FRAMES)]
    iterations, converged = 0, False
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is reported
        total = torch.zeros_like(weighted[0])
        for a, b in chunks:
            total += (weighted[a:b] * shift_ramp(ky_c, kx_c, shifts[a:b])).sum(dim=0)
        sums = np.zeros((n, 5))
        for a, b in chunks:
            aligned = weighted[a:b] * shift_ramp(ky_c, kx_c, shifts[a:b])
            cross = aligned * (total[None] - aligned).conj()
            real, imag = cross.real, cross.imag
            sums[a:b] = (
                torch.stack(
                    [
                        -(imag.sum(dim=2) @ wy),
                        -(imag.sum(dim=1) @ wx),
                        -(real.sum(dim=2) @ (wy * wy)),
                        -(real.sum(dim=1) @ (wx * wx)),
                        -((real @ wx) @ wy),
                    ],
                    dim=1,
                )
                .double()
                .cpu()
                .numpy()
            )
        gy, gx, hyy, hxx, hxy = sums.T
        det = hyy * hxx - hxy * hxy
        ok = (hyy < 0) & (det > 0)
        safe_det = np.where(ok, det, 1.0)
        step = np.stack(
            [
                np.where(ok, -(hxx * gy - hxy * gx) / safe_det, 0.0),
                np.where(ok, -(hyy * gx - hxy * gy) / safe_det, 0.0),
            ],
            axis=1,
        )
        update = np.clip(step, -1.0, 1.0)
        shifts += update
        if float(np.max(np.abs(update))) < tolerance_px:
            converged = True
            break
    return shifts, iterations, converged


@dataclass(frozen=True)
class _Band:
    """Fourier-cropped band of an (ny, nx) grid and the alignment weight on it."""

    ny_c: int
    nx_c: int
    ky: torch.Tensor
    kx: torch.Tensor
    weight: torch.Tensor
    scale_yx: FloatArray


def frequency_grid(
    ny: int, nx: int, cutoff_cycles: float, dev: torch.device
) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Sizes (ny_c, nx_c) of the Fourier crop keeping |k| <= cutoff, and its k_y, k_x grids (ny_c, nx_c//2+1)
    in cycles per *original* pixel (ky varies along rows, kx along columns); cutoff 0.5: the whole grid."""
    ny_c, nx_c = _crop_size(ny, cutoff_cycles), _crop_size(nx, cutoff_cycles)
    ky_c = (torch.fft.fftfreq(ny_c, d=1.0 / ny_c, device=dev, dtype=torch.float64) / ny)[:, None].expand(
        ny_c, nx_c // 2 + 1
    )
    kx_c = (torch.fft.rfftfreq(nx_c, d=1.0 / nx_c, device=dev, dtype=torch.float64) / nx)[None, :].expand(
        ny_c, nx_c // 2 + 1
    )
    return ny_c, nx_c, ky_c, kx_c


def alignment_band(ny: int, nx: int, pixel_size_angstrom: float, bfactor_angstrom2: float, dev: torch.device) -> _Band:
    """Crop to where exp(−B k²/2) >= 1e-4; frequencies in cycles per original pixel (module docstring, 1)."""
    if bfactor_angstrom2 > 0:
        cutoff_per_angstrom = math.sqrt(2.0 * math.log(1.0 / _FILTER_FLOOR) / bfactor_angstrom2)
    else:
        cutoff_per_angstrom = math.inf
    cutoff_cycles = min(0.5, cutoff_per_angstrom * pixel_size_angstrom)
    ny_c, nx_c, ky_c, kx_c = frequency_grid(ny, nx, cutoff_cycles, dev)
    k2 = (ky_c**2 + kx_c**2) / pixel_size_angstrom**2
    weight = torch.exp(-0.5 * bfactor_angstrom2 * k2).to(torch.float32)
    return _Band(ny_c, nx_c, ky_c, kx_c, weight, np.array([ny / ny_c, nx / nx_c]))


# Width of the rings over which signal and noise power are averaged (Fourier pixels of the whole frame).
_RING_WIDTH_PX = 5


@dataclass(frozen=True)
class _RadialWeight:
    """Matched-filter weight w(k) of the cross-power on rings of spatial frequency k (cycles/pixel)."""

    k_cycles_per_px: FloatArray
    weight: FloatArray  # normalised to a maximum of 1


def _ring_centres(rings: int, ring_width: float) -> torch.Tensor:
    """Centre frequencies (cycles/pixel) of ``rings`` rings of width ``ring_width``."""
    return (torch.arange(rings, dtype=torch.float64) + 0.5) * ring_width


def ssnr_weight(
    frame_tensor: Callable[[int], torch.Tensor],
    n_frames: int,
    shape_px: tuple[int, int],
    shifts_px: FloatArray,
    dev: torch.device,
) -> _RadialWeight | None:
    """Per-ring signal and noise power of the aligned frames and the weight w = s / (N (N + (n−1) s))
    (module docstring, step 3b).  None when no ring shows signal (nothing to weight by)."""
    ny, nx = shape_px
    taper = edge_taper(ny, nx, dev)
    _, _, ky, kx = frequency_grid(ny, nx, 0.5, dev)
    k = torch.sqrt(ky**2 + kx**2)
    ring_width = _RING_WIDTH_PX / min(ny, nx)
    ring = torch.clamp((k / ring_width).long(), max=int(0.5 / ring_width)).flatten()
    rings = int(ring.max()) + 1
    total = torch.zeros((ny, nx // 2 + 1), dtype=torch.complex64, device=dev)
    own = torch.zeros((ny, nx // 2 + 1), dtype=torch.float32, device=dev)
    for f in range(n_frames):
        image = frame_tensor(f)
        spectrum = torch.fft.rfft2((image - image.mean()) * taper) * shift_ramp(ky, kx, shifts_px[f : f + 1])[0]
        total += spectrum
        own += spectrum.real**2 + spectrum.imag**2
    cross = (total.real.double() ** 2 + total.imag.double() ** 2 - own.double()).flatten()
    count = torch.bincount(ring, minlength=rings).double().clamp(min=1.0)
    cross_ring = torch.bincount(ring, weights=cross, minlength=rings) / count
    own_ring = torch.bincount(ring, weights=own.double().flatten(), minlength=rings) / count
    n = float(n_frames)
    signal = (cross_ring / (n * (n - 1.0))).clamp(min=0.0)
    noise = (own_ring / n - signal).clamp(min=1e-30)
    weight = (signal / (noise * (noise + (n - 1.0) * signal))).cpu()
    weight[0] = 0.0  # the mean (and the taper's own transform) carries no shift
    peak = float(weight.max())
    if not peak > 0.0 or not math.isfinite(peak):
        return None
    return _RadialWeight(_ring_centres(rings, ring_width).numpy(), (weight / peak).cpu().numpy())


def band_from_profile(ny: int, nx: int, profile: _RadialWeight, dev: torch.device) -> _Band:
    """Crop to the largest k where the radial weight is >= 1e-4 of its maximum; weight interpolated at |k|."""
    above = np.nonzero(profile.weight >= _FILTER_FLOOR)[0]
    cutoff_cycles = min(0.5, float(profile.k_cycles_per_px[above[-1]]) + 0.5 * float(profile.k_cycles_per_px[0]))
    ny_c, nx_c, ky_c, kx_c = frequency_grid(ny, nx, cutoff_cycles, dev)
    k = torch.sqrt(ky_c**2 + kx_c**2).cpu().numpy()
    weight = np.interp(k, profile.k_cycles_per_px, profile.weight, left=0.0, right=0.0)
    weight[0, 0] = 0.0
    return _Band(
        ny_c,
        nx_c,
        ky_c,
        kx_c,
        torch.as_tensor(weight, dtype=torch.float32, device=dev),
        np.array([ny / ny_c, nx / nx_c]),
    )
