"""Grids and in-plane transforms of particle boxes shared by alignment, averaging and class selection.

Conventions (those of :mod:`cryodecon_science.optics` and ``picking.extraction``): boxes are indexed [y, x]; the
particle centre and the centre of rotation are index (B//2, B//2); a rotation by r degrees is counter-clockwise
in the (x, y) index plane, (R_r f)(p) = f(R_{−r} p); a shift by s = (s_y, s_x) pixels moves content to
larger indices, (T_s f)(p) = f(p − s).  Fourier arrays are in ``torch.fft.rfft2`` layout, (B, B//2+1).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as functional

FloatArray = npt.NDArray[np.float64]

MASK_EDGE_PX = 4.0
"""Width of the raised-cosine edge of the particle mask, pixels (RELION's ``--width_mask_edge`` is 5)."""


def in_plane_angles_deg(step_deg: float) -> FloatArray:
    """The rotation grid: round(360/step) angles evenly covering [0°, 360°), starting at 0."""
    if not 0.0 < step_deg <= 180.0:
        raise ValueError(f"angle step must lie in (0, 180] degrees, got {step_deg}")
    n = max(2, round(360.0 / step_deg))
    return np.arange(n, dtype=np.float64) * (360.0 / n)


def centred_radius_px(box_px: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Distance of each pixel from the box centre (B//2, B//2), pixels; (B, B) float32."""
    offsets = torch.arange(box_px, device=device, dtype=torch.float32) - box_px // 2
    return torch.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)


def soft_circular_mask(
    box_px: int, radius_px: float, edge_px: float = MASK_EDGE_PX, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """1 within ``radius_px`` of the box centre, a raised cosine ½(1 + cos π(ρ − R)/w) to 0 at R + w; (B, B) float32."""
    t = ((centred_radius_px(box_px, device) - radius_px) / edge_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def rotate_images(images: torch.Tensor, angles_deg: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """R_r f: each image (n, B, B) turned by its angle (n,) about (B//2, B//2), counter-clockwise in (x, y).

    Output pixel p samples the input at R_{−r}(p − c) + c by ``grid_sample`` interpolation (``mode`` "bilinear"
    or "bicubic"); points outside the box read 0.
    """
    box = images.shape[-1]
    offsets = torch.arange(box, device=images.device, dtype=images.dtype) - box // 2
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    theta = torch.deg2rad(angles_deg.to(images.dtype))[:, None, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    x_source = cos * xx + sin * yy + box // 2
    y_source = -sin * xx + cos * yy + box // 2
    scale = 2.0 / (box - 1)  # align_corners=True: index 0 → −1, index B − 1 → +1
    grid = torch.stack((x_source * scale - 1.0, y_source * scale - 1.0), dim=-1)
    out = functional.grid_sample(images[:, None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[:, 0]


def frequencies_per_px(box_px: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(k_y, k_x) in cycles per pixel on the rfft grid, each (B, B//2+1) float32."""
    ky = torch.fft.fftfreq(box_px, device=device)
    kx = torch.fft.rfftfreq(box_px, device=device)
    return ky[:, None].expand(box_px, kx.shape[0]), kx[None, :].expand(box_px, kx.shape[0])


def shift_phase(shifts_yx_px: torch.Tensor, box_px: int) -> torch.Tensor:
    """exp(−2πi k·s): multiplying an rfft by it applies T_s; (n, B, B//2+1) complex64 for shifts (n, 2)."""
    ky = torch.fft.fftfreq(box_px, device=shifts_yx_px.device)
    kx = torch.fft.rfftfreq(box_px, device=shifts_yx_px.device)
    s = shifts_yx_px.to(torch.float32)
    phase_y = -2.0 * math.pi * ky * s[:, 0, None]  # separable: e^{−2πi k_y s_y} · e^{−2πi k_x s_x}
    phase_x = -2.0 * math.pi * kx * s[:, 1, None]
    along_y = torch.polar(torch.ones_like(phase_y), phase_y)
    along_x = torch.polar(torch.ones_like(phase_x), phase_x)
    return along_y[:, :, None] * along_x[:, None, :]


def hermitian_weights(box_px: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Weight of each rfft coefficient in a sum over the full spectrum: 2, or 1 for the columns k_x = 0 and Nyquist."""
    weights = torch.full((box_px, box_px // 2 + 1), 2.0, device=device)
    weights[:, 0] = 1.0
    if box_px % 2 == 0:
        weights[:, -1] = 1.0
    return weights


def ring_index(box_px: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fourier ring of each rfft coefficient, round(|k|·B) (RELION's shells); 0 … ⌈B/√2⌉, (B, B//2+1) int64."""
    ky, kx = frequencies_per_px(box_px, device)
    return torch.round(torch.sqrt(ky**2 + kx**2) * box_px).to(torch.int64)


def centre_of_mass_offset_px(images: torch.Tensor) -> torch.Tensor:
    """Centre of mass [y, x] of the positive part max(f, 0) within the inscribed circle (ρ ≤ B/2), relative to the
    box centre (B//2, B//2); (n, 2) float32 for images (n, B, B), zeros for an image with no positive part."""
    box = images.shape[-1]
    offsets = torch.arange(box, device=images.device, dtype=images.dtype) - box // 2
    positive = images.clamp_min(0.0) * (centred_radius_px(box, images.device) <= box / 2).to(images.dtype)
    mass = positive.sum(dim=(-2, -1))
    y = (positive * offsets[:, None]).sum(dim=(-2, -1))
    x = (positive * offsets[None, :]).sum(dim=(-2, -1))
    centre = torch.stack((y, x), dim=-1) / mass.clamp_min(1e-30)[:, None]
    return torch.where(mass[:, None] > 0, centre, torch.zeros_like(centre))
