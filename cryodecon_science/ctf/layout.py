"""The spectrum CTF estimation works on: input checks, tile size, and the 2-D spectrum's pixels sorted by |k|.

The spectrum is the tile-averaged, Hann-windowed periodogram of the micrograph
(:func:`~cryodecon_science.spectrum.half_set_power_spectra`; 50 % overlapping tiles), with the periodograms of
disjoint groups of tiles for the error estimate.  :func:`flatten_spectrum` lays its rfft2 half-plane out
as pixels ≤ Nyquist sorted by |k|, so that a band of frequencies (or of rings) is a contiguous slice.
:class:`Optics` holds the coefficients of the CTF phase χ(k, θ) = A k² Δf(θ) − C k⁴ + φ (CTFFIND4 eq. 1;
conventions in :mod:`cryodecon_science.optics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.optics import MicroscopeSettings, amplitude_contrast_phase_rad
from cryodecon_science.spectrum import frame_tensor, radial_bin_index

FloatArray = npt.NDArray[np.float64]

MIN_IMAGE_SIZE_PX = 128
# The tile shrinks (powers of two, not below 64 px) until at least this many tiles fit and two fit side by
# side without overlap, so that both half sets exist and each spectrum pixel averages several tiles.
_MIN_TILES = 4
_MIN_TILE_SIZE_PX = 64
TILE_OVERLAP_FRACTION = 0.5


class CtfEstimationError(ValueError):
    """The micrograph cannot be used for CTF estimation (shape, values or size)."""


@dataclass(frozen=True)
class Optics:
    """Coefficients of χ(k, θ) = A k² Δf(θ) − C k⁴ + φ (CTFFIND4 eq. 1): A = πλ (Å), C = ½π C_s λ³ (Å⁴)."""

    a_angstrom: float
    c_angstrom4: float
    phase_rad: float

    @classmethod
    def of(cls, microscope: MicroscopeSettings) -> Optics:
        lam = microscope.wavelength_angstrom
        cs = microscope.spherical_aberration_mm * 1e7
        return cls(
            math.pi * lam,
            0.5 * math.pi * cs * lam**3,
            amplitude_contrast_phase_rad(microscope.amplitude_contrast_fraction),
        )


@dataclass(frozen=True)
class Spectrum:
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


def validated_image(image: npt.NDArray[np.float32], device: str | torch.device) -> torch.Tensor:
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


def tile_size_for(shape_px: tuple[int, ...], tile_size_px: int) -> int:
    """Requested tile, or the largest power of two that fits, shrunk until ≥ ``_MIN_TILES`` tiles fit."""
    shortest, longest = min(shape_px), max(shape_px)
    tile = tile_size_px if tile_size_px <= shortest else 1 << math.floor(math.log2(shortest))

    def n_tiles(t: int) -> int:
        step = max(1, round(t * (1.0 - TILE_OVERLAP_FRACTION)))
        return ((shortest - t) // step + 1) * ((longest - t) // step + 1)

    while tile > _MIN_TILE_SIZE_PX and (n_tiles(tile) < _MIN_TILES or longest < 2 * tile):
        tile //= 2
    return tile


def flatten_spectrum(power_2d: torch.Tensor, pixel_size_angstrom: float) -> Spectrum:
    """:class:`Spectrum` of an rfft2 half-plane periodogram (L, L//2 + 1) of pixel size ``pixel_size_angstrom``."""
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
    return Spectrum(
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


def ring_average(
    spectrum: Spectrum, bins: torch.Tensor, values: torch.Tensor, weight: torch.Tensor | None = None
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
