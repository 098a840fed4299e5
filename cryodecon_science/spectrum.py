"""Tile-averaged power spectra (Welch periodograms) and their rotational averages, in torch.

A micrograph's power spectrum is estimated as in CTFFIND4 (Rohou & Grigorieff 2015, J. Struct. Biol.
192:216, "Computation of the amplitude spectrum"): the image is cut into square tiles, each tile's
periodogram is computed and the periodograms are averaged.  Here the tiles overlap by
``overlap_fraction`` and each one is mean-subtracted and multiplied by a separable Hann window before its
FFT (Welch 1967, IEEE Trans. Audio Electroacoust. 15:70): the window suppresses the leakage of the strong
low-frequency power through the tile edges (the "+"-shaped streaks of an unwindowed tile) at the price
of a spectral resolution of about two spectrum pixels.

Normalisation (as stated in ``cryodecon_science.records``): for a tile x with window w,

    P(k) = |FFT(w·x)|² / Σ w²,

so that the mean of P over all frequencies equals the (windowed) tile variance, in counts² per pixel,
and profiles measured on tiles apply to the whole micrograph's |FFT(x)|² / N.

All spectra use the ``torch.fft.rfft2`` half-plane layout: shape (tile, tile // 2 + 1), ``k_y`` along
axis 0 in FFT order, ``k_x ≥ 0`` along axis 1 (conventions in ``cryodecon_science.optics``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

_MIN_TILE_SIZE_PX = 8
# Tiles per FFT batch on a CPU: bounds the working memory (a batch of 16 tiles of 512² is 17 MB of
# float32); on an accelerator the batch is bounded by bytes instead (``_tiles_per_batch``).
_TILES_PER_BATCH = 16
_DEVICE_BATCH_BYTES = 1 << 30
N_GROUPS = 4
"""Disjoint groups of non-overlapping tiles in :class:`HalfSetSpectra` (two per half): a delete-one-group
jackknife over them has 3 degrees of freedom, where the difference of the two halves has one.  (8 groups,
7 degrees of freedom, cost 0.1 s more per 4096² CTF fit on one CPU thread: 0.99 against 0.90 s.)"""


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of a micrograph lie.

    Attributes
    ----------
    tile_size_px : int
        Edge length L of the square tiles, pixels.
    origins_y_px, origins_x_px : tuple[int, ...]
        Row and column of the top-left corner of the tile rows and tile columns; tile (i, j) covers
        ``image[origins_y_px[i] : origins_y_px[i] + L, origins_x_px[j] : origins_x_px[j] + L]``.  The grid
        is centred on the image, so at most ``step - 1`` pixels are left out at the edges.
    """

    tile_size_px: int
    origins_y_px: tuple[int, ...]
    origins_x_px: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.origins_y_px) * len(self.origins_x_px)


@dataclass(frozen=True)
class HalfSetSpectra:
    """Tile-averaged periodogram plus independent half-set and group periodograms of the same micrograph.

    The halves are built from the non-overlapping sub-grid of the tile grid (every tile whose pixels
    no earlier selected tile in its row or column shares; with 50 % overlap, tiles (2p, 2q)), split as a
    checkerboard by the parity of p + q.  Tiles of different halves share no pixel, so their
    periodograms have independent noise; together the halves tile the image once (up to the grid's
    edge margin).  Each half is further dealt, in raster order, into ``N_GROUPS // 2`` interleaved groups
    (group 2r + h holds tiles r, r + N_GROUPS/2, … of half h), so that the groups, too, share no pixel and
    a group-jackknife can measure the spread of an estimate (``ctf.uncertainty``'s defocus σ).

    Attributes
    ----------
    mean_power : torch.Tensor
        Mean periodogram of all (overlapping) tiles, shape (L, L // 2 + 1), float32.
    n_tiles : int
        Number of tiles in ``mean_power``.
    group_power : torch.Tensor
        Mean periodograms of the :data:`N_GROUPS` groups, shape (N_GROUPS, L, L // 2 + 1), float32 (zeros
        for an empty group).
    n_group_tiles : tuple[int, ...]
        Number of tiles in each group.
    """

    mean_power: torch.Tensor
    n_tiles: int
    group_power: torch.Tensor
    n_group_tiles: tuple[int, ...]

    @property
    def n_half_tiles(self) -> tuple[int, int]:
        """Number of tiles in each half (half h is the union of the groups h, h + 2, …)."""
        return (sum(self.n_group_tiles[0::2]), sum(self.n_group_tiles[1::2]))

    @property
    def half_power(self) -> torch.Tensor:
        """Mean periodograms of the two halves, shape (2, L, L // 2 + 1), float32 (zeros for an empty half):
        the tile-weighted means of their groups."""
        counts = torch.as_tensor(self.n_group_tiles, dtype=torch.float64, device=self.group_power.device)
        sums = counts[:, None, None] * self.group_power.double()
        halves = torch.stack([sums[0::2].sum(dim=0), sums[1::2].sum(dim=0)])
        totals = torch.as_tensor(self.n_half_tiles, dtype=torch.float64, device=halves.device).clamp_min(1.0)
        return (halves / totals[:, None, None]).float()


def fitting_tile_size_px(shape_px: tuple[int, int], tile_size_px: int = 512) -> int:
    """Tile size to use on an image of ``shape_px`` = (ny, nx).

    ``tile_size_px`` when the image holds it; otherwise the largest power of two that fits in the
    shorter image side.

    Raises
    ------
    ValueError
        If the tile size is odd or below 8 px, or the image is smaller than 8 px.
    """
    if tile_size_px < _MIN_TILE_SIZE_PX or tile_size_px % 2:
        raise ValueError(f"tile_size_px must be even and >= {_MIN_TILE_SIZE_PX}, got {tile_size_px}")
    shortest = min(shape_px)
    if shortest < _MIN_TILE_SIZE_PX:
        raise ValueError(f"image {shape_px} is smaller than the smallest tile ({_MIN_TILE_SIZE_PX} px)")
    if tile_size_px <= shortest:
        return tile_size_px
    return 1 << math.floor(math.log2(shortest))


DEFAULT_MAX_FIT_PX = 2048
"""Longest side (pixels) on which the spectral fits of a large frame run (:func:`central_fit_crop`): the
causal self-evaluation loop and the fusion weights.  A 2048² crop of a 4096² frame holds 4× the Fourier
samples per ring of the 1024² images the defaults were chosen on, at a quarter of the cost."""


def central_fit_crop(image: npt.NDArray[np.generic], max_fit_px: int | None) -> npt.NDArray[np.generic]:
    """The central crop on which a spectral fit of a large frame runs: 1/f of each side, f = ⌈n / max⌉.

    n is the longest side.  Dividing both sides by the same integer keeps the aspect ratio, so the crop's
    Fourier rings are a subset of the frame's (every f-th ring).  Returns ``image`` itself when it fits
    (or ``max_fit_px`` is None).  A view, not a copy.

    Raises
    ------
    ValueError
        For ``max_fit_px`` < 64 or a non-2-D image.
    """
    if max_fit_px is None:
        return image
    if max_fit_px < 64:
        raise ValueError(f"max_fit_px must be >= 64, got {max_fit_px}")
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {image.shape}")
    factor = -(-max(image.shape) // max_fit_px)
    if factor <= 1:
        return image
    ny, nx = image.shape[0] // factor, image.shape[1] // factor
    y0, x0 = (image.shape[0] - ny) // 2, (image.shape[1] - nx) // 2
    return image[y0 : y0 + ny, x0 : x0 + nx]


def tile_grid(shape_px: tuple[int, int], tile_size_px: int = 512, overlap_fraction: float = 0.5) -> TileGrid:
    """Regular grid of square tiles overlapping by ``overlap_fraction``, centred on the image.

    Parameters
    ----------
    shape_px : tuple[int, int]
        Image shape (ny, nx).
    tile_size_px : int
        Requested tile edge L (pixels); reduced by ``fitting_tile_size_px`` when the image is smaller.
    overlap_fraction : float
        Fraction of a tile shared with its neighbour, in [0, 1); the step is round(L · (1 − overlap)).
    """
    if not 0.0 <= overlap_fraction < 1.0:
        raise ValueError(f"overlap_fraction must lie in [0, 1), got {overlap_fraction}")
    tile = fitting_tile_size_px(shape_px, tile_size_px)
    step = max(1, round(tile * (1.0 - overlap_fraction)))

    def origins(size: int) -> tuple[int, ...]:
        n = (size - tile) // step + 1
        start = (size - (tile + (n - 1) * step)) // 2
        return tuple(start + i * step for i in range(n))

    return TileGrid(tile, origins(shape_px[0]), origins(shape_px[1]))


def hann_window_2d(
    tile_size_px: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Separable Hann window w(y, x) = h(y) h(x), h(n) = sin²(π n / (L − 1)), shape (L, L).

    The symmetric Hann (von Hann; Blackman & Tukey 1958) goes to zero at both tile edges, so no
    discontinuity is left at the periodic boundary of the tile's FFT.
    """
    h = torch.hann_window(tile_size_px, periodic=False, dtype=torch.float64, device=device)
    return (h[:, None] * h[None, :]).to(dtype)


def _tiles_per_batch(tile_size_px: int, device: torch.device) -> int:
    """Tiles per FFT batch: ``_TILES_PER_BATCH`` on a CPU; on an accelerator as many as
    ``_DEVICE_BATCH_BYTES`` holds (a tile's copy, windowed copy, transform and power ≈ 4 × 4 L² bytes), so
    that a 4096² micrograph's 225 tiles of 512² are one batch: a handful of kernel launches instead of a
    loop over tile rows."""
    if device.type == "cpu":
        return _TILES_PER_BATCH
    return max(1, _DEVICE_BATCH_BYTES // (16 * tile_size_px * tile_size_px))


_NUMPY_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}


def frame_tensor(
    image: npt.ArrayLike | torch.Tensor, device: str | torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """An image as a ``dtype`` (float32 or float64) tensor on ``device`` (no copy if it is one already)."""
    if isinstance(image, torch.Tensor):
        return image.to(device=device, dtype=dtype)
    array = np.ascontiguousarray(image, dtype=_NUMPY_FLOAT[dtype])
    if not array.flags.writeable:  # e.g. a memory-mapped MRC: torch wants a writable buffer
        array = array.copy()
    return torch.as_tensor(array, device=device)


def _tile_power_batches(
    image: npt.NDArray[np.floating] | torch.Tensor, grid: TileGrid, device: str | torch.device
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (raster index of the first tile, periodograms of that and the following tiles), in raster
    order (row of tiles i, then column j)."""
    tensor = frame_tensor(image, device)
    tile = grid.tile_size_px
    window = hann_window_2d(tile, device=tensor.device)
    norm = float((window.double() ** 2).sum())
    n_y, n_x = len(grid.origins_y_px), len(grid.origins_x_px)

    def step(origins: tuple[int, ...]) -> int:
        return origins[1] - origins[0] if len(origins) > 1 else tile

    y0, x0 = grid.origins_y_px[0], grid.origins_x_px[0]
    step_y, step_x = step(grid.origins_y_px), step(grid.origins_x_px)
    region = tensor[y0 : y0 + (n_y - 1) * step_y + tile, x0 : x0 + (n_x - 1) * step_x + tile]
    tiles = region.unfold(0, tile, step_y).unfold(1, tile, step_x)  # (n_y, n_x, L, L), a view
    per_batch = _tiles_per_batch(tile, tensor.device)
    if per_batch < n_x:  # consecutive tiles of one row: views, no copy
        batches = ((i * n_x + j0, tiles[i, j0 : j0 + per_batch]) for i in range(n_y) for j0 in range(0, n_x, per_batch))
    else:  # whole rows of tiles, copied into one (B, L, L) tensor
        rows = per_batch // n_x
        batches = ((i * n_x, tiles[i : i + rows].reshape(-1, tile, tile)) for i in range(0, n_y, rows))
    for first, batch in batches:
        batch = (batch - batch.mean(dim=(1, 2), keepdim=True)) * window
        spectrum = torch.fft.rfft2(batch)
        yield first, (spectrum.real.square() + spectrum.imag.square()) / norm


def tile_power_spectra(
    image: npt.NDArray[np.floating],
    tile_size_px: int = 512,
    overlap_fraction: float = 0.5,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Periodogram of every tile of a micrograph.

    Each tile x (mean-subtracted) is multiplied by the Hann window w (``hann_window_2d``) and
    P(k) = |FFT(w·x)|² / Σ w² (module docstring; Welch 1967).

    Parameters
    ----------
    image : ndarray, shape (ny, nx), float
        Micrograph indexed [y, x], any intensity unit (P is in that unit squared per pixel).
    tile_size_px : int
        Tile edge L in pixels; if the image is smaller, the largest power of two that fits.
    overlap_fraction : float
        Overlap between neighbouring tiles, in [0, 1); 0.5 is Welch's choice for the Hann window.
    device : str or torch.device
        Where the FFTs run.

    Returns
    -------
    torch.Tensor, shape (n_tiles, L, L // 2 + 1), float32
        Periodograms in ``rfft2`` layout, tiles in raster order (row of tiles i, then column j).
    """
    frame = _as_2d_image(image)
    grid = tile_grid((int(frame.shape[0]), int(frame.shape[1])), tile_size_px, overlap_fraction)
    return torch.cat([power for _, power in _tile_power_batches(frame, grid, device)], dim=0)


def half_set_power_spectra(
    image: npt.NDArray[np.floating] | torch.Tensor,
    tile_size_px: int = 512,
    overlap_fraction: float = 0.5,
    device: str | torch.device = "cpu",
) -> HalfSetSpectra:
    """Tile-averaged periodogram, two independent half-set and :data:`N_GROUPS` group periodograms
    (``HalfSetSpectra``).

    Same tiles, window and normalisation as ``tile_power_spectra`` but accumulated on the fly, so the
    memory needed does not grow with the number of tiles.  ``image`` may be a tensor already on
    ``device`` (no copy then).
    """
    frame = _as_2d_image(image)
    grid = tile_grid((int(frame.shape[0]), int(frame.shape[1])), tile_size_px, overlap_fraction)
    tile = grid.tile_size_px
    sub_y = _non_overlapping(grid.origins_y_px, tile)
    sub_x = _non_overlapping(grid.origins_x_px, tile)
    n_y, n_x = len(grid.origins_y_px), len(grid.origins_x_px)
    # Rows of the accumulation weights, per tile in raster order: all tiles, then the groups (the
    # checkerboard halves of the non-overlapping sub-grid, each dealt round-robin into N_GROUPS // 2 groups).
    membership = np.zeros((1 + N_GROUPS, n_y, n_x))
    membership[0] = 1.0
    dealt = [0, 0]
    for p, i in enumerate(sub_y):
        for q, j in enumerate(sub_x):
            half = (p + q) % 2
            membership[1 + half + 2 * (dealt[half] % (N_GROUPS // 2)), i, j] = 1.0
            dealt[half] += 1
    rows = membership.reshape(1 + N_GROUPS, n_y * n_x)
    weights = torch.as_tensor(
        rows / np.maximum(rows.sum(axis=1, keepdims=True), 1.0), dtype=torch.float32, device=device
    )
    sums = torch.zeros((1 + N_GROUPS, tile * (tile // 2 + 1)), dtype=torch.float64, device=weights.device)
    for first, power in _tile_power_batches(frame, grid, device):
        # Each batch's weighted sums in float32 (≤ a few hundred terms), accumulated in float64.
        sums += (weights[:, first : first + power.shape[0]] @ power.reshape(power.shape[0], -1)).double()
    sums = sums.reshape(1 + N_GROUPS, tile, tile // 2 + 1)
    return HalfSetSpectra(
        mean_power=sums[0].float(),
        n_tiles=n_y * n_x,
        group_power=sums[1:].float(),
        n_group_tiles=tuple(int(n) for n in rows[1:].sum(axis=1)),
    )


def _non_overlapping(origins: tuple[int, ...], tile_size_px: int) -> list[int]:
    """Indices of a greedy run of origins at least one tile apart."""
    chosen: list[int] = []
    for index, origin in enumerate(origins):
        if not chosen or origin >= origins[chosen[-1]] + tile_size_px:
            chosen.append(index)
    return chosen


def radial_bin_index(
    shape_px: tuple[int, int], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring index and half-plane multiplicity of every pixel of an ``rfft2`` spectrum.

    Parameters
    ----------
    shape_px : tuple[int, int]
        Shape (L, L // 2 + 1) of a square tile's ``rfft2`` spectrum.

    Returns
    -------
    index : torch.Tensor, shape ``shape_px``, int64
        round(|k| · L · pixel size): the ring of width one spectrum pixel the pixel falls in.
    multiplicity : torch.Tensor, shape ``shape_px``, float64
        How many pixels of the full (L, L) spectrum the half-plane pixel stands for: 2 for
        0 < k_x < Nyquist (its Friedel mate −k has the same power), 1 on the k_x = 0 and Nyquist columns.
    """
    n_y, n_xr = shape_px
    n_x = 2 * (n_xr - 1)
    ky = torch.fft.fftfreq(n_y, device=device, dtype=torch.float64) * n_y
    kx = torch.fft.rfftfreq(n_x, device=device, dtype=torch.float64) * n_x
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    multiplicity = torch.full(shape_px, 2.0, dtype=torch.float64, device=device)
    multiplicity[:, 0] = 1.0
    multiplicity[:, -1] = 1.0
    return torch.round(radius).long(), multiplicity


def radial_average(power_2d: torch.Tensor, pixel_size_angstrom: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotational average of an ``rfft2``-layout power spectrum, in rings one spectrum pixel wide.

    Parameters
    ----------
    power_2d : torch.Tensor, shape (..., L, L // 2 + 1)
        Periodogram(s) of square L × L tiles (any leading batch dimensions).
    pixel_size_angstrom : float
        Pixel size of the image, Å.

    Returns
    -------
    frequency_per_angstrom : torch.Tensor, shape (L // 2 + 1,), float64
        Ring centres k_i = i / (L · pixel size), from 0 to Nyquist.
    profile : torch.Tensor, shape (..., L // 2 + 1), float64
        Mean power in each ring (Friedel mates counted, pixels beyond Nyquist in the corners left out).
    """
    n_y, n_xr = power_2d.shape[-2:]
    n_bins = n_y // 2 + 1
    index, multiplicity = radial_bin_index((n_y, n_xr), device=power_2d.device)
    keep = index < n_bins
    flat_index = index[keep]
    weight = multiplicity[keep]
    counts = torch.zeros(n_bins, dtype=torch.float64, device=power_2d.device).index_add_(0, flat_index, weight)
    values = power_2d[..., keep].double() * weight
    sums = torch.zeros((*values.shape[:-1], n_bins), dtype=torch.float64, device=power_2d.device)
    sums.index_add_(-1, flat_index, values)
    frequency = torch.arange(n_bins, dtype=torch.float64, device=power_2d.device) / (n_y * pixel_size_angstrom)
    return frequency, sums / counts


def _as_2d_image(image: npt.NDArray[np.floating] | torch.Tensor) -> npt.NDArray[np.floating] | torch.Tensor:
    array = image if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image [y, x], got shape {tuple(array.shape)}")
    return array
