"""Motion correction of a movie: global alignment, optional local (patch) motion, aligned and dose-weighted sums.

``align_movie`` runs the stages of the sibling modules in order: hot-pixel replacement (``hot_pixels``),
global alignment (``global_alignment``, steps 1–3b), optional patch motion (``patches``, steps 5–6),
then shifts every frame back (Fourier shift by the global trajectory, plus bicubic resampling by the
local deformation, step 7) and sums all, even and odd frames (step 4) and, given a dose per frame, the
dose-weighted sum (``dose``).  Shifts follow the sign convention of ``global_alignment``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.motion.dose import dose_weights
from cryodecon_science.motion.global_alignment import (
    alignment_band,
    band_from_profile,
    crop_spectrum,
    edge_taper,
    frequency_grid,
    iterate,
    iterate_newton,
    newton_weight,
    shift_ramp,
    ssnr_weight,
)
from cryodecon_science.motion.hot_pixels import hot_pixel_mask
from cryodecon_science.motion.patches import LocalSampler, PatchMotion, measure_patches
from cryodecon_science.motion.trajectory import fit_polynomial

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class MotionCorrection:
    """Result of motion correction (global, and local when a patch grid was given).

    Attributes
    ----------
    aligned_sum : ndarray (ny, nx) float32
        Sum of all aligned frames, counts, in frame-0 coordinates (locally corrected when
        ``patch_motion`` is set).
    even_sum, odd_sum : ndarray (ny, nx) float32
        Sums of the aligned frames 0, 2, 4, … and 1, 3, 5, …; even_sum + odd_sum = aligned_sum.
    shifts_px : ndarray (n_frames, 2) float64
        Global trajectory: [dy, dx] of each frame relative to frame 0, pixels (sign convention:
        ``global_alignment``); row 0 is (0, 0).
    total_drift_px : float
        Path length Σ_f |shifts_px[f+1] − shifts_px[f]| of the global trajectory, pixels.
    iterations : int
        Global alignment iterations run.
    converged : bool
        Whether the last global iteration moved every frame by less than the tolerance.
    hot_pixel_count : int
        Detector pixels replaced as defects.
    dose_weighted_sum : ndarray (ny, nx) float32 or None
        Exposure-filtered sum of the aligned frames (``dose``; same counts and noise power as
        ``aligned_sum``), when a dose per frame was given.
    patch_motion : PatchMotion or None
        Local motion model, when a patch grid was given.
    """

    aligned_sum: Float32Array
    even_sum: Float32Array
    odd_sum: Float32Array
    shifts_px: FloatArray
    total_drift_px: float
    iterations: int
    converged: bool
    hot_pixel_count: int
    dose_weighted_sum: Float32Array | None = field(default=None)
    patch_motion: PatchMotion | None = field(default=None)

    @property
    def trajectory_px(self) -> FloatArray:
        """The global drift trajectory (n_frames, 2) [dy, dx], pixels (same as ``shifts_px``)."""
        return self.shifts_px


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
    patch_grid: tuple[int, int] | None = None,
    patch_overlap: float = 0.5,
    patch_bfactor_angstrom2: float | None = None,
    dose_per_frame_e_per_angstrom2: float | None = None,
    pre_exposure_e_per_angstrom2: float = 0.0,
    voltage_kv: float = 300.0,
    frequency_weighting: str = "ssnr",
) -> MotionCorrection:
    """Estimate and correct beam-induced motion: global drift, optionally local (patch) motion and dose
    weighting (module docstring; MotionCor2 global and patch stages, Grant & Grigorieff 2015).

    Parameters
    ----------
    frames : ndarray (n_frames, ny, nx)
        Counts per frame, any real dtype (uint16 stacks are fine).
    pixel_size_angstrom : float
        Å per pixel (sets the physical meaning of the B-factor and of the dose-weighting frequencies).
    device : torch device or str
        Where the FFTs and the resampling run ("cpu", "cuda", …).  A CUDA device that is not available
        falls back to the CPU.
    bfactor_angstrom2 : float
        B of the alignment low-pass: the cross-power is weighted by exp(−B k²/2) (each image by
        exp(−B k²/4)), Å².  300 Å² lies between MotionCor2's defaults for global (500) and patch (150)
        alignment and keeps detail to ≈ 10 Å, where the CTF-modulated signal of frames lives.
    max_iterations : int
        Upper bound on the refinement iterations (global, and per patch).
    tolerance_px : float
        Convergence: every frame's update below this many pixels.
    max_shift_px : float, optional
        Largest displacement searched per iteration; default a quarter of the smaller image side.
    trajectory_polynomial_degree : int, optional
        Replace the per-frame global shifts by a least-squares polynomial of this degree in frame index.
        Off by default: the fast, exponentially decaying motion of the first frames is poorly described
        by a low-degree polynomial, so the fit trades noise for model error.
    replace_hot_pixels : bool
        Replace detector defects by the frame mean before aligning and summing.
    patch_grid : tuple of int, optional
        (gy, gx) patches for local motion (MotionCor2 uses 5 × 5); None for global correction only.
    patch_overlap : float
        Fraction of a patch shared with its neighbour, in [0, 0.9].
    patch_bfactor_angstrom2 : float, optional
        B of the patch alignment, Å²; default ``bfactor_angstrom2``.
    dose_per_frame_e_per_angstrom2 : float, optional
        Exposure per frame, e⁻/Å²; when given, ``dose_weighted_sum`` is computed.
    pre_exposure_e_per_angstrom2 : float
        Exposure before the first frame, e⁻/Å².
    voltage_kv : float
        Accelerating voltage for the critical exposure (300 or 200 kV).
    frequency_weighting : {"ssnr", "bfactor"}
        "ssnr" (default): after the B-factor alignment, refine the global shifts with the matched-filter
        weight measured from the movie's own signal and noise spectra (``global_alignment``, step 3b);
        "bfactor": the fixed exp(−B k²/2) weight only.

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
    if patch_grid is not None and (len(patch_grid) != 2 or min(patch_grid) < 1 or max(patch_grid) < 2):
        raise ValueError(f"patch_grid must be (gy, gx) with both >= 1 and one >= 2, got {patch_grid}")
    if frequency_weighting not in ("ssnr", "bfactor"):
        raise ValueError(f"frequency_weighting must be 'ssnr' or 'bfactor', got {frequency_weighting!r}")
    if not 0.0 <= patch_overlap <= 0.9:
        raise ValueError(f"patch_overlap must lie in [0, 0.9], got {patch_overlap}")
    if dose_per_frame_e_per_angstrom2 is not None:
        dose_weights(
            0.0,
            n,
            dose_per_frame_e_per_angstrom2,
            pre_exposure_e_per_angstrom2=pre_exposure_e_per_angstrom2,
            voltage_kv=voltage_kv,
        )  # validates
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        dev = torch.device("cpu")

    hot = hot_pixel_mask(stack) if replace_hot_pixels else np.zeros((ny, nx), dtype=np.bool_)
    hot_t = torch.as_tensor(hot, device=dev)
    good_fraction = max(1.0 - float(hot.mean()), 1e-12)
    frame_means: dict[int, torch.Tensor] = {}

    def frame_tensor(f: int) -> torch.Tensor:
        image = torch.as_tensor(np.asarray(stack[f], dtype=np.float32), device=dev)
        if hot.any():
            mean = image.masked_fill(hot_t, 0.0).sum() / (image.numel() * good_fraction)
            frame_means[f] = mean
            image = torch.where(hot_t, mean, image)
        return image

    # 1–3. Global alignment on the Fourier-binned band.
    band = alignment_band(ny, nx, pixel_size_angstrom, bfactor_angstrom2, dev)
    taper = edge_taper(ny, nx, dev)
    spectra = torch.stack(
        [
            crop_spectrum(torch.fft.rfft2((image - image.mean()) * taper), ny, band.ny_c, band.nx_c)
            for image in map(frame_tensor, range(n))
        ]
    )
    limit = 0.25 * min(ny, nx) if max_shift_px is None else float(max_shift_px)
    window = (max(1, int(limit * band.ny_c / ny)), max(1, int(limit * band.nx_c / nx)))
    shifts, iterations, converged = iterate(
        spectra, band.ky, band.kx, band.weight, window, band.scale_yx, np.zeros((n, 2)), max_iterations, tolerance_px
    )
    del spectra
    # 3b. Refine on frames shifted by the current estimate before tapering (so the detector-fixed taper
    # no longer biases the peak towards zero shift), weighted by the movie's own matched filter.
    profile = ssnr_weight(frame_tensor, n, (ny, nx), shifts, dev) if frequency_weighting == "ssnr" else None
    refined_band = band if profile is None else band_from_profile(ny, nx, profile, dev)
    margin = math.ceil(float(np.max(np.abs(shifts))))
    moved_taper = edge_taper(ny, nx, dev, margin_px=margin)
    _, _, ky, kx = frequency_grid(ny, nx, 0.5, dev)  # the whole grid: here and for the sums (4 / 7)
    root_weight = newton_weight(refined_band.weight, refined_band.nx_c == nx)
    moved = torch.empty((n, *root_weight.shape), dtype=torch.complex64, device=dev)
    for f in range(n):
        image = frame_tensor(f)
        centred = torch.fft.irfft2(
            torch.fft.rfft2(image - image.mean()) * shift_ramp(ky, kx, shifts[f : f + 1])[0], s=(ny, nx)
        )
        spectrum = crop_spectrum(torch.fft.rfft2(centred * moved_taper), ny, refined_band.ny_c, refined_band.nx_c)
        moved[f] = spectrum * root_weight
    residual, more, converged = iterate_newton(
        moved, refined_band.ky, refined_band.kx, np.zeros((n, 2)), max_iterations, tolerance_px
    )
    shifts = shifts + residual
    iterations += more
    del moved
    if trajectory_polynomial_degree is not None:
        shifts = fit_polynomial(shifts, trajectory_polynomial_degree)
    shifts = shifts - shifts[0]

    # 5–6. Local motion from patches cut at the globally shifted positions.
    patch_motion = None
    if patch_grid is not None:

        def frame_window(f: int, y0: int, x0: int, h: int, w: int) -> torch.Tensor:
            image = torch.as_tensor(np.asarray(stack[f, y0 : y0 + h, x0 : x0 + w], dtype=np.float32), device=dev)
            if hot.any():
                image = torch.where(hot_t[y0 : y0 + h, x0 : x0 + w], frame_means[f], image)
            return image

        patch_motion = measure_patches(
            frame_window,
            shifts,
            (ny, nx),
            (int(patch_grid[0]), int(patch_grid[1])),
            patch_overlap,
            pixel_size_angstrom,
            bfactor_angstrom2 if patch_bfactor_angstrom2 is None else patch_bfactor_angstrom2,
            max_iterations,
            tolerance_px,
            dev,
        )

    # 4 / 7. Shift back (global: Fourier shift; local: + bicubic resampling), sum halves, dose weighting.
    weights = None
    if dose_per_frame_e_per_angstrom2 is not None:
        k_per_angstrom = torch.sqrt(ky**2 + kx**2).cpu().numpy() / pixel_size_angstrom
        weights = dose_weights(
            k_per_angstrom,
            n,
            dose_per_frame_e_per_angstrom2,
            pre_exposure_e_per_angstrom2=pre_exposure_e_per_angstrom2,
            voltage_kv=voltage_kv,
        )
    sampler = None
    if patch_motion is not None and patch_motion.model != "none":
        sampler = LocalSampler(patch_motion, n, (ny, nx), dev)
    halves = [torch.zeros((ny, nx // 2 + 1), dtype=torch.complex64, device=dev) for _ in range(2)]
    weighted = torch.zeros((ny, nx // 2 + 1), dtype=torch.complex64, device=dev) if weights is not None else None
    for f in range(n):
        spectrum = torch.fft.rfft2(frame_tensor(f)) * shift_ramp(ky, kx, shifts[f : f + 1])[0]
        if sampler is not None:
            spectrum = torch.fft.rfft2(sampler.resample(torch.fft.irfft2(spectrum, s=(ny, nx)), f))
        halves[f % 2] += spectrum
        if weighted is not None and weights is not None:
            weighted += spectrum * torch.as_tensor(weights[f], dtype=torch.float32, device=dev)
    even = torch.fft.irfft2(halves[0], s=(ny, nx)).cpu().numpy().astype(np.float32)
    odd = torch.fft.irfft2(halves[1], s=(ny, nx)).cpu().numpy().astype(np.float32)
    dose_weighted = None
    if weighted is not None:
        dose_weighted = (math.sqrt(n) * torch.fft.irfft2(weighted, s=(ny, nx))).cpu().numpy().astype(np.float32)
    return MotionCorrection(
        aligned_sum=(even + odd).astype(np.float32),
        even_sum=even,
        odd_sum=odd,
        shifts_px=np.ascontiguousarray(shifts, dtype=np.float64),
        total_drift_px=float(np.sum(np.linalg.norm(np.diff(shifts, axis=0), axis=1))),
        iterations=iterations,
        converged=converged,
        hot_pixel_count=int(hot.sum()),
        dose_weighted_sum=dose_weighted,
        patch_motion=patch_motion,
    )
