"""Global beam-induced motion correction of dose-fractionated movies.

Method: iterative whole-frame alignment as in MotionCorr (Li et al. 2013, Nat. Methods 10:584–590) and
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
4. Shifts are referred to frame 0, and the frames are shifted back by Fourier (sub-pixel) shifts and
   summed: all frames, even-numbered frames (0, 2, 4, …) and odd-numbered frames (1, 3, 5, …).  The
   two half sums have independent noise, as needed for noise2noise-style training and FRC.

Sign convention (the same as ``simulate.MicrographTruth.drift_shifts_px``): ``shifts_px[f] = [dy, dx]``
is the displacement of the specimen in frame f relative to frame 0, in pixels; a feature at (y, x) in
frame 0 appears at (y + dy, x + dx) in frame f, i.e. frame_f(r) ≈ frame_0(r − shift_f).  Alignment
shifts frame f by −shift_f.

Fourier shifts are periodic: up to |shift| pixels at the edges of the aligned sums wrap around from the
opposite edge.  Detector defects (hot pixels: the per-pixel sum over frames far above the robust
spread of the image) are replaced by the frame mean before anything else, so that they cannot pin the
alignment to zero shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

# The cross-power weight below which frequencies are dropped from the alignment.
_FILTER_FLOOR = 1e-4
# A pixel is a defect when its frame sum exceeds median + this many robust standard deviations.
_HOT_PIXEL_SIGMAS = 10.0


@dataclass(frozen=True, eq=False)
class MotionCorrection:
    """Result of global motion correction.

    Attributes
    ----------
    aligned_sum : ndarray (ny, nx) float32
        Sum of all aligned frames, counts, in frame-0 coordinates.
    even_sum, odd_sum : ndarray (ny, nx) float32
        Sums of the aligned frames 0, 2, 4, … and 1, 3, 5, …; even_sum + odd_sum = aligned_sum.
    shifts_px : ndarray (n_frames, 2) float64
        [dy, dx] of each frame relative to frame 0, pixels (module docstring); row 0 is (0, 0).
    total_drift_px : float
        Path length Σ_f |shifts_px[f+1] − shifts_px[f]|, pixels.
    iterations : int
        Alignment iterations run.
    converged : bool
        Whether the last iteration moved every frame by less than the tolerance.
    hot_pixel_count : int
        Detector pixels replaced as defects.
    """

    aligned_sum: Float32Array
    even_sum: Float32Array
    odd_sum: Float32Array
    shifts_px: FloatArray
    total_drift_px: float
    iterations: int
    converged: bool
    hot_pixel_count: int


def _hot_pixel_mask(frames: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """Pixels whose sum over frames exceeds median + 10 σ (σ = max(1.4826 MAD, √median), Poisson floor)."""
    total = frames.sum(axis=0, dtype=np.float64)
    median = float(np.median(total))
    mad_sigma = 1.4826 * float(np.median(np.abs(total - median)))
    sigma = max(mad_sigma, math.sqrt(max(median, 1.0)))
    return np.asarray(total > median + _HOT_PIXEL_SIGMAS * sigma, dtype=np.bool_)


def _crop_size(n_px: int, cutoff_cycles_per_px: float) -> int:
    """Even size of the Fourier-cropped grid that keeps |k| <= cutoff (cycles/pixel), at most n_px."""
    size = 2 * math.ceil(cutoff_cycles_per_px * n_px) + 4
    return size if size < n_px else n_px


def _crop_spectrum(spectrum: torch.Tensor, ny: int, ny_c: int, nx_c: int) -> torch.Tensor:
    """Keep the low frequencies of an rfft2 spectrum (…, ny, nx//2+1) -> (…, ny_c, nx_c//2+1)."""
    if ny_c == ny:
        return spectrum[..., : nx_c // 2 + 1]
    half = ny_c // 2
    return torch.cat([spectrum[..., :half, : nx_c // 2 + 1], spectrum[..., ny - half :, : nx_c // 2 + 1]], dim=-2)


def _edge_taper(ny: int, nx: int, device: torch.device) -> torch.Tensor:
    """Cosine (Tukey) taper over 1/8 of each side: removes the periodic-boundary step that would
    otherwise correlate at zero detector shift and bias the alignment towards no motion."""

    def profile(n: int) -> torch.Tensor:
        width = max(1, n // 8)
        position = torch.arange(n, dtype=torch.float64, device=device)
        distance = torch.minimum(position, n - 1 - position)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * torch.clamp(distance / width, max=1.0))
        return ramp.to(torch.float32)

    return profile(ny)[:, None] * profile(nx)[None, :]


def _shift_ramp(ky: torch.Tensor, kx: torch.Tensor, shifts_px: FloatArray) -> torch.Tensor:
    """exp(+2πi k·s): multiplying a spectrum by it shifts the image by −s (k in cycles per pixel)."""
    sy = torch.as_tensor(shifts_px[:, 0], dtype=torch.float64, device=ky.device)[:, None, None]
    sx = torch.as_tensor(shifts_px[:, 1], dtype=torch.float64, device=ky.device)[:, None, None]
    phase = 2.0 * math.pi * (ky[None] * sy + kx[None] * sx)
    return torch.polar(torch.ones_like(phase), phase).to(torch.complex64)


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


def _fit_polynomial(shifts_px: FloatArray, degree: int) -> FloatArray:
    """Least-squares polynomial in frame index for each shift component (smooth trajectory)."""
    t = np.arange(shifts_px.shape[0], dtype=np.float64)
    fitted = np.empty_like(shifts_px)
    for axis in range(2):
        coefficients = np.polynomial.polynomial.polyfit(t, shifts_px[:, axis], degree)
        fitted[:, axis] = np.polynomial.polynomial.polyval(t, coefficients)
    return fitted


def align_movie(
    frames: npt.NDArray[np.generic],
    pixel_size_angstrom: float,
    device: torch.device | str = "cpu",
    *,
    bfactor_angstrom2: float = 300.0,
    max_iterations: int = 20,
    tolerance_px: float = 0.01,
    max_shift_px: float | None = None,
    trajectory_polynomial_degree: int | None = None,
    replace_hot_pixels: bool = True,
) -> MotionCorrection:
    """Estimate and correct global beam-induced drift (module docstring; MotionCor2 global stage).

    Parameters
    ----------
    frames : ndarray (n_frames, ny, nx)
        Counts per frame, any real dtype (uint16 stacks are fine).
    pixel_size_angstrom : float
        Å per pixel (sets the physical meaning of the B-factor).
    device : torch device or str
        Where the FFTs run ("cpu", "cuda", …).
    bfactor_angstrom2 : float
        B of the alignment low-pass: the cross-power is weighted by exp(−B k²/2) (each image by
        exp(−B k²/4)), Å².  300 Å² lies between MotionCor2's defaults for global (500) and patch (150)
        alignment and keeps detail to ≈ 10 Å, where the CTF-modulated signal of frames lives.
    max_iterations : int
        Upper bound on the refinement iterations.
    tolerance_px : float
        Convergence: every frame's update below this many pixels.
    max_shift_px : float, optional
        Largest displacement searched per iteration; default a quarter of the smaller image side.
    trajectory_polynomial_degree : int, optional
        Replace the per-frame shifts by a least-squares polynomial of this degree in frame index.  Off
        by default: the fast, exponentially decaying motion of the first frames is poorly described by
        a low-degree polynomial, so the fit trades noise for model error.
    replace_hot_pixels : bool
        Replace detector defects by the frame mean before aligning and summing.

    Returns
    -------
    MotionCorrection
    """
    stack = np.asarray(frames)
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError(f"frames must have shape (n_frames >= 2, ny, nx), got {stack.shape}")
    if not np.all(np.isfinite(stack)):
        raise ValueError("frames contain NaN or Inf")
    if not pixel_size_angstrom > 0 or bfactor_angstrom2 < 0 or max_iterations < 1 or not tolerance_px > 0:
        raise ValueError("need pixel_size_angstrom > 0, bfactor_angstrom2 >= 0, max_iterations >= 1, tolerance_px > 0")
    n, ny, nx = (int(s) for s in stack.shape)
    if trajectory_polynomial_degree is not None and not 0 <= trajectory_polynomial_degree < n:
        raise ValueError(f"trajectory_polynomial_degree must lie in [0, {n - 1}], got {trajectory_polynomial_degree}")
    dev = torch.device(device)

    hot = _hot_pixel_mask(stack) if replace_hot_pixels else np.zeros((ny, nx), dtype=np.bool_)
    hot_t = torch.as_tensor(hot, device=dev)
    good_fraction = max(1.0 - float(hot.mean()), 1e-12)

    def frame_tensor(f: int) -> torch.Tensor:
        image = torch.as_tensor(np.asarray(stack[f], dtype=np.float32), device=dev)
        if hot.any():
            mean = image.masked_fill(hot_t, 0.0).sum() / (image.numel() * good_fraction)
            image = torch.where(hot_t, mean, image)
        return image

    # 1. Fourier binning to the band the B-factor weight keeps.
    if bfactor_angstrom2 > 0:
        cutoff_per_angstrom = math.sqrt(2.0 * math.log(1.0 / _FILTER_FLOOR) / bfactor_angstrom2)
    else:
        cutoff_per_angstrom = math.inf
    cutoff_cycles = min(0.5, cutoff_per_angstrom * pixel_size_angstrom)
    ny_c, nx_c = _crop_size(ny, cutoff_cycles), _crop_size(nx, cutoff_cycles)
    taper = _edge_taper(ny, nx, dev)
    spectra = torch.stack(
        [
            _crop_spectrum(torch.fft.rfft2((image - image.mean()) * taper), ny, ny_c, nx_c)
            for image in map(frame_tensor, range(n))
        ]
    )
    # Frequencies of the kept coefficients in cycles per ORIGINAL pixel.
    ky_c = (torch.fft.fftfreq(ny_c, d=1.0 / ny_c, device=dev, dtype=torch.float64) / ny)[:, None].expand(
        ny_c, nx_c // 2 + 1
    )
    kx_c = (torch.fft.rfftfreq(nx_c, d=1.0 / nx_c, device=dev, dtype=torch.float64) / nx)[None, :].expand(
        ny_c, nx_c // 2 + 1
    )
    k2 = (ky_c**2 + kx_c**2) / pixel_size_angstrom**2
    weight = torch.exp(-0.5 * bfactor_angstrom2 * k2).to(torch.float32)
    limit = 0.25 * min(ny, nx) if max_shift_px is None else float(max_shift_px)
    window = (max(1, int(limit * ny_c / ny)), max(1, int(limit * nx_c / nx)))

    # 2–3. Iterative alignment against the sum of the other frames.
    shifts = np.zeros((n, 2), dtype=np.float64)
    iterations, converged = 0, False
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is reported
        aligned = spectra * _shift_ramp(ky_c, kx_c, shifts)
        others = aligned.sum(dim=0, keepdim=True) - aligned
        cc = torch.fft.irfft2(aligned * others.conj() * weight, s=(ny_c, nx_c))
        update = _peak_positions(cc, window) * np.array([ny / ny_c, nx / nx_c])
        shifts += update
        if float(np.max(np.abs(update))) < tolerance_px:
            converged = True
            break
    if trajectory_polynomial_degree is not None:
        shifts = _fit_polynomial(shifts, trajectory_polynomial_degree)
    shifts = shifts - shifts[0]

    # 4. Shift back at full resolution and sum even and odd frames.
    ky = torch.fft.fftfreq(ny, device=dev, dtype=torch.float64)[:, None].expand(ny, nx // 2 + 1)
    kx = torch.fft.rfftfreq(nx, device=dev, dtype=torch.float64)[None, :].expand(ny, nx // 2 + 1)
    halves = [torch.zeros((ny, nx // 2 + 1), dtype=torch.complex64, device=dev) for _ in range(2)]
    for f in range(n):
        ramp = _shift_ramp(ky, kx, shifts[f : f + 1])[0]
        halves[f % 2] += torch.fft.rfft2(frame_tensor(f)) * ramp
    even = torch.fft.irfft2(halves[0], s=(ny, nx)).cpu().numpy().astype(np.float32)
    odd = torch.fft.irfft2(halves[1], s=(ny, nx)).cpu().numpy().astype(np.float32)
    return MotionCorrection(
        aligned_sum=(even + odd).astype(np.float32),
        even_sum=even,
        odd_sum=odd,
        shifts_px=np.ascontiguousarray(shifts, dtype=np.float64),
        total_drift_px=float(np.sum(np.linalg.norm(np.diff(shifts, axis=0), axis=1))),
        iterations=iterations,
        converged=converged,
        hot_pixel_count=int(hot.sum()),
    )
