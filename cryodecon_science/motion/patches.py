"""Local (patch) motion: per-patch alignment and MotionCor2's deformation polynomial.

Local (patch) stage, ``patch_grid=(gy, gx)`` (MotionCor2's patch alignment, Zheng et al. 2017):

5. The image is tiled by gy × gx overlapping square-ish windows (``patch_overlap`` of a window shared by
   neighbours).  In every frame the window of patch p is cut at its globally shifted position
   (integer part of c_p + s_f; the fractional part and any clamping at the image edge start the
   iteration), so each patch stack is already globally aligned, and the same leave-one-out iteration
   (``global_alignment``, step 2, B = ``patch_bfactor_angstrom2``) measures the residual local shifts
   d_{p,f}, known up to a constant per patch.
6. The residual is fitted by MotionCor2's deformation polynomial, per axis,
   δ(u, v, τ) = Σ_{k=1..3} τ^k (c_k0 + c_k1 u + c_k2 v + c_k3 u² + c_k4 v² + c_k5 uv),
   cubic in time τ = f/(n−1) without a constant term (δ = 0 at frame 0, the reference) and quadratic in
   the image coordinates u, v ∈ [−1, 1] (18 coefficients per axis, as in MotionCor2; terms that the
   grid cannot determine, e.g. u² with gx < 3, are dropped).  One free offset per patch absorbs the
   unknown constant.  Least squares, then measurements whose residual exceeds max(3·1.4826·MAD, 0.5 px)
   are dropped and the fit repeated (twice).  The global per-frame trajectory stays unconstrained: the
   fast, exponentially decaying early drift is not forced into a cubic; only the local deviation is.
7. Each globally aligned frame G_f (exact Fourier shift by s_f) is resampled at r + δ(r, τ_f) with
   ``torch.nn.functional.grid_sample`` (bicubic, border padding): A_f(r) = G_f(r + δ(r, τ_f)).  Bicubic
   interpolation is exact where δ is a whole pixel and attenuates the highest frequencies slightly
   elsewhere; δ is only the small local remainder, the large global drift is applied exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as functional

from cryodecon_science.motion.global_alignment import alignment_band, crop_spectrum, edge_taper, iterate

FloatArray = npt.NDArray[np.float64]

# Spatial terms of the deformation polynomial: 1, u, v, u², v², uv.
_SPATIAL_TERMS = 6
_TIME_DEGREE = 3


@dataclass(frozen=True, eq=False)
class PatchMotion:
    """Local motion: per-patch measurements and the fitted deformation polynomial (module docstring, 5–7).

    Attributes
    ----------
    grid : tuple of int
        Patches (gy, gx).
    patch_size_px : tuple of int
        Window (height, width), pixels.
    patch_centres_px : ndarray (n_patches, 2) float64
        [y, x] centres of the patches in frame-0 coordinates, pixels (row-major over the grid).
    measured_shifts_px : ndarray (n_patches, n_frames, 2) float64
        Total [dy, dx] shift of each patch (global + measured local), with each patch's free offset
        removed so that it is referred to frame 0 as the fit is, pixels.
    fitted_shifts_px : ndarray (n_patches, n_frames, 2) float64
        Global trajectory + polynomial δ at the patch centres, pixels.
    coefficients_px : ndarray (2, 3, 6) float64
        c[axis (dy, dx), time power k − 1 (τ, τ², τ³), spatial term (1, u, v, u², v², uv)], pixels;
        undetermined terms are 0.
    image_shape_px : tuple of int
        (ny, nx) of the frames.
    residual_rms_px : float
        RMS length of measured − fitted local shift over the measurements kept, pixels.
    outlier_count : int
        (patch, frame) measurements dropped from the fit.
    converged : bool
        Whether every patch's iteration met the tolerance.
    model : str
        Spatial part of δ chosen by BIC: "none" (δ = 0), "uniform" (1), "bilinear" (1, u, v, uv) or
        "quadratic" (all six terms, MotionCor2's model).
    """

    grid: tuple[int, int]
    patch_size_px: tuple[int, int]
    patch_centres_px: FloatArray
    measured_shifts_px: FloatArray
    fitted_shifts_px: FloatArray
    coefficients_px: FloatArray
    image_shape_px: tuple[int, int]
    residual_rms_px: float
    outlier_count: int
    converged: bool
    model: str

    def local_shifts_px(self, y_px: npt.ArrayLike, x_px: npt.ArrayLike, frame: int) -> FloatArray:
        """Polynomial local shift δ (…, 2) [dy, dx] at pixel positions (y, x) in frame ``frame``, pixels
        (add ``MotionCorrection.shifts_px[frame]`` for the total shift there)."""
        return _deformation_px(
            self.coefficients_px, y_px, x_px, frame, self.measured_shifts_px.shape[1], self.image_shape_px
        )


def _time_powers(frame: int, n_frames: int) -> FloatArray:
    """τ, τ², τ³ with τ = frame / (n_frames − 1)."""
    tau = frame / max(n_frames - 1, 1)
    return np.array([tau**k for k in range(1, _TIME_DEGREE + 1)], dtype=np.float64)


def _deformation_px(
    coefficients_px: FloatArray,
    y_px: npt.ArrayLike,
    x_px: npt.ArrayLike,
    frame: int,
    n_frames: int,
    shape_px: tuple[int, int],
) -> FloatArray:
    """δ(u, v, τ) (…, 2) of the deformation polynomial (module docstring, 6), pixels."""
    basis = _spatial_basis(np.asarray(y_px, dtype=np.float64), np.asarray(x_px, dtype=np.float64), shape_px)
    per_term = np.einsum("akj,k->aj", coefficients_px, _time_powers(frame, n_frames))  # (2, 6)
    return np.asarray(np.einsum("aj,...j->...a", per_term, basis), dtype=np.float64)


def _spatial_basis(y_px: FloatArray, x_px: FloatArray, shape_px: tuple[int, int]) -> FloatArray:
    """(…, 6) terms 1, u, v, u², v², uv with u = (x − (nx−1)/2)/(nx/2), v likewise in y."""
    u = (x_px - 0.5 * (shape_px[1] - 1)) / (0.5 * shape_px[1])
    v = (y_px - 0.5 * (shape_px[0] - 1)) / (0.5 * shape_px[0])
    u, v = np.broadcast_arrays(u, v)
    return np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], axis=-1)


def _patch_layout(n_px: int, count: int, overlap: float) -> tuple[int, FloatArray]:
    """Even window size P with count·P − (count−1)·overlap·P = n_px, and the window starts (float)."""
    size = n_px / (1.0 + (count - 1) * (1.0 - overlap))
    size_px = max(16, 2 * int(size // 2))
    size_px = min(size_px, n_px - n_px % 2)
    starts = np.linspace(0.0, float(n_px - size_px), count) if count > 1 else np.array([0.5 * (n_px - size_px)])
    return size_px, starts


def _design_matrix(
    centres_px: FloatArray, n_frames: int, shape_px: tuple[int, int], grid: tuple[int, int]
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Rows (patch, frame): τ^k·basis_j for k = 1…3, j = 0…5, then one-hot patch offsets; and which of
    the 18 polynomial columns the grid and the frame count determine."""
    gy, gx = grid
    spatial_ok = np.array([True, gx >= 2, gy >= 2, gx >= 3, gy >= 3, gx >= 2 and gy >= 2])
    time_ok = np.arange(1, _TIME_DEGREE + 1) <= n_frames - 1
    keep = (time_ok[:, None] & spatial_ok[None, :]).ravel()
    basis = _spatial_basis(centres_px[:, 0], centres_px[:, 1], shape_px)  # (P, 6)
    tau = np.arange(n_frames, dtype=np.float64) / max(n_frames - 1, 1)
    powers = np.stack([tau**k for k in range(1, _TIME_DEGREE + 1)], axis=1)  # (F, 3)
    poly = np.einsum("fk,pj->pfkj", powers, basis).reshape(len(centres_px) * n_frames, -1)
    offsets = np.repeat(np.eye(len(centres_px)), n_frames, axis=0)
    return np.concatenate([poly, offsets], axis=1), keep


# Nested spatial models of the local residual, indices into (1, u, v, u², v², uv).
_SPATIAL_MODELS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("none", ()),
    ("uniform", (0,)),
    ("bilinear", (0, 1, 2, 5)),
    ("quadratic", (0, 1, 2, 3, 4, 5)),
)


def _fit_deformation(
    local_px: FloatArray, centres_px: FloatArray, shape_px: tuple[int, int], grid: tuple[int, int]
) -> tuple[FloatArray, FloatArray, float, int, str]:
    """Robust least-squares fit of the deformation polynomial + per-patch offsets to local shifts
    (P, F, 2) (module docstring, 6).  Returns coefficients (2, 3, 6), offsets (P, 2), residual RMS,
    outlier count and the spatial model chosen by BIC."""
    n_patches, n_frames, _ = local_px.shape
    design, keep = _design_matrix(centres_px, n_frames, shape_px, grid)
    target = local_px.reshape(-1, 2)
    polynomial_columns = _TIME_DEGREE * _SPATIAL_TERMS

    def columns_for(terms: tuple[int, ...]) -> npt.NDArray[np.bool_]:
        spatial = np.zeros(_SPATIAL_TERMS, dtype=bool)
        spatial[list(terms)] = True
        poly = keep & np.tile(spatial, _TIME_DEGREE)
        return np.concatenate([poly, np.ones(n_patches, dtype=bool)])

    def solve(columns: npt.NDArray[np.bool_], rows: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
        matrix = design[:, columns]
        solution = np.asarray(np.linalg.lstsq(matrix[rows], target[rows], rcond=None)[0], dtype=np.float64)
        return solution, np.linalg.norm(target - matrix @ solution, axis=1)

    # Outliers against the largest model the grid supports.
    inlier = np.ones(len(target), dtype=bool)
    largest = columns_for(_SPATIAL_MODELS[-1][1])
    for _ in range(3):
        _, residual = solve(largest, inlier)
        median = float(np.median(residual[inlier]))
        mad = float(np.median(np.abs(residual[inlier] - median)))
        new_inlier = residual <= max(median + 3.0 * 1.4826 * mad, 0.5)
        if np.array_equal(new_inlier, inlier) or not new_inlier.any():
            break
        inlier = new_inlier
    # Bayesian information criterion m·ln(RSS/m) + p·ln(m) over the 2m scalar measurements kept: the
    # noise of single patches (≈ 1 px at normal dose) must not be fitted as deformation.
    m = 2 * int(inlier.sum())
    best: tuple[float, str, npt.NDArray[np.bool_], FloatArray, FloatArray] | None = None
    for name, terms in _SPATIAL_MODELS:
        columns = columns_for(terms)
        solution, residual = solve(columns, inlier)
        rss = max(float(np.sum(residual[inlier] ** 2)), 1e-12)
        bic = m * math.log(rss / m) + 2 * int(columns[:polynomial_columns].sum()) * math.log(m)
        if best is None or bic < best[0] - 1e-9:
            best = (bic, name, columns, solution, residual)
    assert best is not None
    _, name, columns, solution, residual = best
    full = np.zeros((design.shape[1], 2))
    full[columns] = solution
    coefficients = full[:polynomial_columns].reshape(_TIME_DEGREE, _SPATIAL_TERMS, 2).transpose(2, 0, 1)
    offsets = full[polynomial_columns:]
    rms = float(np.sqrt(np.mean(residual[inlier] ** 2))) if inlier.any() else math.nan
    return np.ascontiguousarray(coefficients), offsets, rms, int((~inlier).sum()), name


def measure_patches(
    frame_window: Callable[[int, int, int, int, int], torch.Tensor],
    shifts_px: FloatArray,
    shape_px: tuple[int, int],
    grid: tuple[int, int],
    overlap: float,
    pixel_size_angstrom: float,
    bfactor_angstrom2: float,
    max_iterations: int,
    tolerance_px: float,
    dev: torch.device,
) -> PatchMotion:
    """Module docstring, steps 5–6.  ``frame_window(f, y0, x0, h, w)`` returns the cleaned float32 tensor
    of frame f at rows y0…y0+h, columns x0…x0+w."""
    ny, nx = shape_px
    n = shifts_px.shape[0]
    size_y, starts_y = _patch_layout(ny, grid[0], overlap)
    size_x, starts_x = _patch_layout(nx, grid[1], overlap)
    band = alignment_band(size_y, size_x, pixel_size_angstrom, bfactor_angstrom2, dev)
    taper = edge_taper(size_y, size_x, dev)
    window = (max(1, int(0.25 * size_y * band.ny_c / size_y)), max(1, int(0.25 * size_x * band.nx_c / size_x)))
    centres, local, all_converged = [], [], True
    for y0 in starts_y:
        for x0 in starts_x:
            target = np.array([y0, x0])[None, :] + shifts_px  # ideal window origin per frame
            origin = np.stack(
                [
                    np.clip(np.round(target[:, 0]), 0, ny - size_y),
                    np.clip(np.round(target[:, 1]), 0, nx - size_x),
                ],
                axis=1,
            ).astype(np.int64)
            spectra = []
            for f in range(n):
                image = frame_window(f, int(origin[f, 0]), int(origin[f, 1]), size_y, size_x)
                spectrum = torch.fft.rfft2((image - image.mean()) * taper)
                spectra.append(crop_spectrum(spectrum, size_y, band.ny_c, band.nx_c))
            start = target - origin
            found, _, converged = iterate(
                torch.stack(spectra),
                band.ky,
                band.kx,
                band.weight,
                window,
                band.scale_yx,
                start,
                max_iterations,
                tolerance_px,
            )
            all_converged &= converged
            # Window-relative shift t_f → total shift origin_f + t_f − (window origin at frame 0 − s_0).
            local.append(origin + found - np.array([y0, x0])[None, :] - shifts_px)
            centres.append([y0 + 0.5 * (size_y - 1), x0 + 0.5 * (size_x - 1)])
    centres_px = np.asarray(centres, dtype=np.float64)
    local_px = np.asarray(local, dtype=np.float64)
    coefficients, offsets, rms, outliers, model = _fit_deformation(local_px, centres_px, shape_px, grid)
    measured = local_px - offsets[:, None, :] + shifts_px[None]
    fitted = (
        np.stack(
            [_deformation_px(coefficients, centres_px[:, 0], centres_px[:, 1], f, n, shape_px) for f in range(n)],
            axis=1,
        )
        + shifts_px[None]
    )
    return PatchMotion(
        grid=grid,
        patch_size_px=(size_y, size_x),
        patch_centres_px=centres_px,
        measured_shifts_px=measured,
        fitted_shifts_px=np.ascontiguousarray(fitted),
        coefficients_px=coefficients,
        image_shape_px=shape_px,
        residual_rms_px=rms,
        outlier_count=outliers,
        converged=all_converged,
        model=model,
    )


class LocalSampler:
    """Resample globally aligned frames at r + δ(r, τ_f) (module docstring, 7) with grid_sample."""

    def __init__(self, motion: PatchMotion, n_frames: int, shape_px: tuple[int, int], dev: torch.device) -> None:
        ny, nx = shape_px
        y = torch.arange(ny, dtype=torch.float64, device=dev)
        x = torch.arange(nx, dtype=torch.float64, device=dev)
        u = ((x - 0.5 * (nx - 1)) / (0.5 * nx))[None, :]
        v = ((y - 0.5 * (ny - 1)) / (0.5 * ny))[:, None]
        self._terms = (torch.ones_like(u), u, v, u * u, v * v, u * v)
        self._y, self._x = y[:, None], x[None, :]
        self._shape = shape_px
        self._coefficients = motion.coefficients_px
        self._n_frames = n_frames

    def resample(self, image: torch.Tensor, frame: int) -> torch.Tensor:
        ny, nx = self._shape
        per_term = np.einsum("akj,k->aj", self._coefficients, _time_powers(frame, self._n_frames))
        dy = sum(float(per_term[0, j]) * term for j, term in enumerate(self._terms))
        dx = sum(float(per_term[1, j]) * term for j, term in enumerate(self._terms))
        # grid_sample (align_corners=True): −1 ↔ pixel 0, +1 ↔ pixel n−1; grid[..., 0] is x.
        gy = 2.0 * (self._y + dy) / max(ny - 1, 1) - 1.0
        gx = 2.0 * (self._x + dx) / max(nx - 1, 1) - 1.0
        grid = torch.stack([gx.expand(ny, nx), gy.expand(ny, nx)], dim=-1)[None].to(image.dtype)
        out = functional.grid_sample(image[None, None], grid, mode="bicubic", padding_mode="border", align_corners=True)
        return out[0, 0]
