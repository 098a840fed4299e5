"""Particle boxes: their size and their extraction from a micrograph."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def particle_box_px(diameter_px: float) -> int:
    """Box edge for a particle of ``diameter_px`` pixels: 1.5 diameters, rounded to an even number of pixels.

    1.5 d leaves the embedding's soft mask (``embedding``: 1 inside 0.40 of the box) room for the particle
    and its centring error; even boxes are RELION's habit (the centre on index B/2, the FFT origin).
    """
    return int(2 * round(0.75 * diameter_px))


def extract_boxes(
    image: npt.NDArray[np.floating], coords_px: npt.NDArray[np.floating], box_px: int
) -> npt.NDArray[np.float32]:
    """Cut square boxes centred on particle coordinates and normalise each to mean 0, standard deviation 1.

    The box of size B around centre (y, x) spans rows round(y) − ⌊B/2⌋ … round(y) − ⌊B/2⌋ + B − 1 (the
    centre falls on index ⌊B/2⌋, the ``numpy.fft.fftshift`` origin), likewise for columns.  Parts of a
    box outside the micrograph are filled with the micrograph's mean (no signal, no invented structure).
    Each box is then normalised by its own mean and standard deviation (a flat box stays all zeros), as
    RELION's particle extraction normalises per particle (Scheres 2012, J. Struct. Biol. 180:519).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Micrograph, [y, x].
    coords_px : ndarray, shape (n, 2)
        Centres [y, x] in pixels.
    box_px : int
        Box edge B in pixels.

    Returns
    -------
    ndarray of float32, shape (n, B, B)
    """
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {data.shape}")
    if box_px < 1:
        raise ValueError(f"box_px must be >= 1, got {box_px}")
    coords = np.asarray(coords_px, dtype=np.float64).reshape(-1, 2)
    boxes = np.empty((coords.shape[0], box_px, box_px), dtype=np.float32)
    if coords.shape[0] == 0:
        return boxes
    pad = box_px
    padded = np.pad(data, pad, mode="constant", constant_values=float(data.mean()))
    half = box_px // 2
    for i, (y, x) in enumerate(coords):
        y0 = round(float(y)) - half + pad
        x0 = round(float(x)) - half + pad
        if not (0 <= y0 and y0 + box_px <= padded.shape[0] and 0 <= x0 and x0 + box_px <= padded.shape[1]):
            raise ValueError(f"particle {i} at [y, x] = [{y}, {x}] lies outside the micrograph")
        box = padded[y0 : y0 + box_px, x0 : x0 + box_px]
        box = box - box.mean()
        std = float(box.std())
        boxes[i] = box / std if std > 0 else box
    return boxes


# RELION's default background radius: 75 % of half the box (``relion_preprocess --bg_radius``).
RELION_BACKGROUND_RADIUS_FRACTION = 0.75


def box_inside(coords_yx_px: npt.ArrayLike, box_px: int, shape_yx_px: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Whether the whole B × B box about each centre lies inside the micrograph (``extract_particles``' grid)."""
    coords = np.asarray(coords_yx_px, dtype=np.float64).reshape(-1, 2)
    corner = np.round(coords).astype(np.int64) - box_px // 2
    size = np.asarray(shape_yx_px, dtype=np.int64)
    return np.asarray(np.all((corner >= 0) & (corner + box_px <= size), axis=1), dtype=np.bool_)


def extract_particles(
    image: npt.NDArray[np.floating],
    coords_yx_px: npt.ArrayLike,
    box_px: int,
    *,
    background_radius_px: float | None = None,
    invert_contrast: bool = True,
) -> npt.NDArray[np.float32]:
    """Cut particle boxes and normalise them as RELION's extraction does.

    Grid: the box of edge B about centre (y, x) starts at row round(y) − ⌊B/2⌋ and column round(x) − ⌊B/2⌋,
    so the centre falls on index ⌊B/2⌋ (RELION's box centre, the ``numpy.fft.fftshift`` origin).  Every
    box must lie inside the micrograph (``box_inside``); the pipeline sets picks near the edge aside first.

    Normalisation (Scheres 2012, J. Struct. Biol. 180:519; ``relion_preprocess --norm``): the background is
    the pixels farther than ``background_radius_px`` from the centre (default 0.75 · B/2); a plane
    a + b·x + c·y fitted to the background by least squares is subtracted (RELION's ramp removal), then the
    box is shifted and scaled so the background has mean 0 and standard deviation 1.  With
    ``invert_contrast`` the box is negated first: particles, dark at underfocus in counts, come out white,
    as RELION's "invert contrast" and cryoSPARC's extraction give them.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Micrograph [y, x] (counts or any linear scale).
    coords_yx_px : array-like, shape (n, 2)
        Centres [y, x] in pixels of ``image`` (0-based row and column, as the array is indexed).
    box_px : int
        Box edge B, pixels (≥ 4).
    background_radius_px : float, optional
        Radius outside which pixels are background, pixels (0 < r < B/2 · √2).
    invert_contrast : bool
        Negate the boxes (particles white).

    Returns
    -------
    ndarray of float32, shape (n, B, B)

    Raises
    ------
    ValueError
        A box leaves the micrograph, the box is smaller than 4 pixels, or the background is empty.
    """
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {data.shape}")
    if box_px < 4:
        raise ValueError(f"box_px must be >= 4, got {box_px}")
    coords = np.asarray(coords_yx_px, dtype=np.float64).reshape(-1, 2)
    inside = box_inside(coords, box_px, (data.shape[0], data.shape[1]))
    if not inside.all():
        first = int(np.flatnonzero(~inside)[0])
        raise ValueError(f"the box of particle {first} at [y, x] = {coords[first].tolist()} leaves the micrograph")
    radius = RELION_BACKGROUND_RADIUS_FRACTION * box_px / 2 if background_radius_px is None else background_radius_px
    offsets = np.arange(box_px, dtype=np.float64) - box_px // 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    background = yy**2 + xx**2 > radius**2
    if background.sum() < 3:
        raise ValueError(f"background radius {radius} px leaves fewer than 3 background pixels in a {box_px} box")
    design = np.stack([np.ones(int(background.sum())), xx[background], yy[background]], axis=1)
    corners = np.round(coords).astype(np.int64) - box_px // 2
    boxes = np.empty((coords.shape[0], box_px, box_px), dtype=np.float32)
    sign = -1.0 if invert_contrast else 1.0
    for i, (y0, x0) in enumerate(corners):
        box = sign * data[y0 : y0 + box_px, x0 : x0 + box_px]
        plane, *_ = np.linalg.lstsq(design, box[background], rcond=None)
        box = box - (plane[0] + plane[1] * xx + plane[2] * yy)
        spread = float(box[background].std())
        boxes[i] = (box - box[background].mean()) / spread if spread > 0 else box - box[background].mean()
    return boxes
