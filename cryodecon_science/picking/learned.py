"""Learned particle picker: a small U-Net that predicts a particle-centre heatmap on a binned micrograph.

Scale
-----
The micrograph is resampled so that the particle radius r = d/2 becomes ``PickerConfig.radius_binned_px``
(6) pixels, whatever the pixel size and diameter, as the difference-of-Gaussians picker (``dog``) bins to
a radius of about 6 px.  One network then covers every session: it always sees particles of the same
apparent size, and the resampling is the first low-pass (at r = 6 px the binned Nyquist period is r/3,
finer than the particle's shape, coarser than the noise the picker has no use for).  Resampling is
antialiased bilinear interpolation (``torch.nn.functional.interpolate(..., antialias=True)``: a triangle
filter of support ± one output pixel), which, unlike Fourier cropping, rings neither at the image edges
nor at carbon edges.  Binned pixel j is centred at input position (j + ½)·s − ½, s = input/binned size
per axis (``align_corners=False``).

Normalisation
-------------
Each binned image is centred on its median and divided by 1.4826 × its median absolute deviation (a
robust standard deviation that carbon, contamination or a few bright pixels barely move), then clipped
to ±:data:`INPUT_CLIP_SIGMA`.  No sign flip: the network learns that particles in a raw micrograph at
underfocus are dark (``dog`` module docstring), so it must be fed raw (not phase-flipped) images.

Network and targets
-------------------
A U-Net (Ronneberger et al. 2015, MICCAI, LNCS 9351:234) as in ``restoration.denoiser`` (two 3×3
convolutions with LeakyReLU per level, 2×2 average pooling, nearest upsampling with skip concatenation,
no normalisation layers) without the space-to-depth step, ending in one logit per binned pixel; at depth
4 its receptive field is ≈ 90 binned pixels, 7–8 particle diameters, enough to take in the CTF fringes
and the local background around a particle.  The
output is a CenterNet heatmap (Zhou, Wang & Krähenbühl 2019, "Objects as points", arXiv:1904.07850): the
target is 1 at the binned pixel nearest each true centre and a Gaussian exp(−ρ²/2σ²) around it, σ = r/3
(the maximum where centres are close), trained with CenterNet's penalty-reduced focal loss

    L = −1/N Σ { (1 − p)^α log p                  where Y = 1
               { (1 − Y)^β p^α log(1 − p)          elsewhere,      α = 2, β = 4,

N the number of particles (Lin et al. 2017, "Focal loss", ICCV, for the (1 − p)^α factor).  The heatmap
treats picking as locating points, as crYOLO (Wagner et al. 2019, Commun. Biol. 2:218) locates boxes in
a grid; with simulated micrographs every particle is labelled, so the positive-unlabelled objective that
Topaz (Bepler et al. 2019, Nat. Methods 16:1153) needs for sparsely labelled real data is not used.

Decoding
--------
p = sigmoid(logit); candidates are 3×3 local maxima of p at or above the threshold; each is refined to
sub-pixel precision by a parabola through log p at its neighbours (exact for a Gaussian peak), mapped to
input pixels, and accepted greedily, strongest first, unless within :data:`NMS_DIAMETER_FRACTION` (0.8)
of a diameter of an accepted pick.  The figure of merit is the peak p.  Picks near an edge are kept
(only centres outside the image are dropped; ``extract_boxes`` pads boxes that cross the edge): on the
validation micrographs, dropping picks within one radius of an edge, as ``dog`` does, lost 5–8 % of the
particles, since the simulator places centres down to one radius from the edge and refined centres fall
a few pixels either side of that line.  Greedy suppression depends only on stronger candidates, so the
picks at threshold t are exactly the picks at any lower threshold with p ≥ t (``Picks.above``; a
threshold sweep decodes once).  The default threshold is the model's ``detection_threshold`` buffer, set
after training to maximise F1 on held-out simulated micrographs (``benchmarks/train_picker.py``; its value
and the validation and test figures are in ``cryodecon_science/data/picker_v1.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cryodecon_science.nn_blocks import double_conv

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

MAD_TO_SIGMA = 1.4826
"""Standard deviation of a normal sample per unit median absolute deviation."""
INPUT_CLIP_SIGMA = 6.0
"""The normalised binned image is clipped to ± this many robust standard deviations."""
NMS_DIAMETER_FRACTION = 0.8
"""Picks closer than this fraction of the particle diameter to a stronger pick are suppressed."""
EDGE_PADDING_BINNED_PX = 16
"""Zero (= median) border added around the binned image before the network, in training and inference."""
HEATMAP_SIGMA_RADIUS_FRACTION = 1.0 / 3.0
"""σ of the target Gaussian as a fraction of the binned particle radius."""
_NO_CONTRAST_RELATIVE = 1e-5
"""Spread of the binned image below this fraction of its largest value is float rounding, not contrast."""
_OUTPUT_PRIOR = 0.01
"""Initial p of the output layer (bias = logit of it), CenterNet's start against the class imbalance."""


@dataclass(frozen=True)
class PickerConfig:
    """Architecture of the picker U-Net and the scale it works at.

    Attributes
    ----------
    base_channels : int
        Feature channels at the binned resolution; level ℓ has min(base·2^ℓ, max_channels).
    depth : int
        Number of resolution levels (depth − 1 poolings by 2).
    max_channels : int
        Cap on the channels per level.
    negative_slope : float
        LeakyReLU slope.
    radius_binned_px : float
        Particle radius, in binned pixels, the micrograph is resampled to (module docstring).
    """

    base_channels: int = 16
    depth: int = 4
    max_channels: int = 64
    negative_slope: float = 0.1
    radius_binned_px: float = 6.0

    def __post_init__(self) -> None:
        if self.base_channels < 1 or self.max_channels < self.base_channels:
            raise ValueError("base_channels must be >= 1 and max_channels >= base_channels")
        if not 2 <= self.depth <= 6:
            raise ValueError(f"depth must be in 2..6, got {self.depth}")
        if not 0.0 <= self.negative_slope < 1.0:
            raise ValueError(f"negative_slope must be in [0, 1), got {self.negative_slope}")
        if not 2.0 <= self.radius_binned_px <= 32.0:
            raise ValueError(f"radius_binned_px must be in [2, 32], got {self.radius_binned_px}")

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level, binned resolution first."""
        return tuple(min(self.base_channels * 2**level, self.max_channels) for level in range(self.depth))

    @property
    def size_multiple_px(self) -> int:
        """Network input sides must be multiples of this (2^(depth − 1))."""
        return int(2 ** (self.depth - 1))

    def to_dict(self) -> dict[str, int | float]:
        """Plain-data form (for the weights file)."""
        return dict(asdict(self))


class PickerUNet(nn.Module):
    """The U-Net of the module docstring: (batch, 1, ny, nx) normalised binned images → centre logits of
    the same shape; sides multiples of ``config.size_multiple_px``.

    The buffer ``detection_threshold`` (0-d float32, saved with the weights) is the heatmap value at which
    :func:`pick_particles_learned` accepts a peak when no threshold is given.
    """

    detection_threshold: torch.Tensor

    def __init__(self, config: PickerConfig | None = None) -> None:
        super().__init__()
        self.config = config or PickerConfig()
        ch = self.config.channels
        slope = self.config.negative_slope
        self.encoders = nn.ModuleList(
            [double_conv(1 if i == 0 else ch[i - 1], ch[i], slope) for i in range(self.config.depth)]
        )
        self.decoders = nn.ModuleList(
            [double_conv(ch[i + 1] + ch[i], ch[i], slope) for i in range(self.config.depth - 1)]
        )
        self.head = nn.Conv2d(ch[0], 1, 1)
        if self.head.bias is not None:
            with torch.no_grad():
                self.head.bias.fill_(math.log(_OUTPUT_PRIOR / (1.0 - _OUTPUT_PRIOR)))
        self.register_buffer("detection_threshold", torch.tensor(0.5, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        h = x
        for level, encoder in enumerate(self.encoders):
            h = encoder(h)
            if level < self.config.depth - 1:
                skips.append(h)
                h = nn.functional.avg_pool2d(h, 2)
        for level in range(self.config.depth - 2, -1, -1):
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = self.decoders[level](torch.cat([h, skips[level]], dim=1))
        out: torch.Tensor = self.head(h)
        return out

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters())


@dataclass(frozen=True, eq=False)
class Picks:
    """Particle centres found by :func:`pick_particles_learned`.

    Attributes
    ----------
    coords_yx_px : ndarray, shape (n, 2), float64
        Centres [y, x] in pixels of the input image (pixel centres at integer coordinates), strongest
        first; every pair at least 0.8 diameters apart, every centre inside the image.
    figure_of_merit : ndarray, shape (n,), float64
        Heatmap peak p ∈ (0, 1) of each pick, descending.
    threshold : float
        The heatmap threshold the picks were accepted at.
    """

    coords_yx_px: FloatArray
    figure_of_merit: FloatArray
    threshold: float

    @property
    def n_picks(self) -> int:
        """Number of picks."""
        return int(self.coords_yx_px.shape[0])

    def above(self, threshold: float) -> Picks:
        """The picks with figure of merit ≥ ``threshold`` (≥ ``self.threshold``): the same as picking at
        that threshold (module docstring, Decoding)."""
        if threshold < self.threshold:
            raise ValueError(f"threshold {threshold} is below the one picked at ({self.threshold})")
        keep = self.figure_of_merit >= threshold
        return Picks(self.coords_yx_px[keep], self.figure_of_merit[keep], float(threshold))


@dataclass(frozen=True, eq=False)
class BinnedMicrograph:
    """A micrograph resampled to the picker's scale and normalised (module docstring).

    Attributes
    ----------
    image : ndarray, shape (my, mx), float32
        Normalised binned image: (x − median)/(1.4826 MAD), clipped to ±:data:`INPUT_CLIP_SIGMA`.
    scale_yx : tuple of float
        Input pixels per binned pixel (s_y, s_x); binned j ↔ input (j + ½)·s − ½.
    input_shape_px : tuple of int
        Shape (ny, nx) of the input micrograph.
    """

    image: Float32Array
    scale_yx: tuple[float, float]
    input_shape_px: tuple[int, int]

    def to_binned_px(self, yx_px: npt.ArrayLike) -> FloatArray:
        """Input-pixel coordinates [y, x] (n, 2) → binned-pixel coordinates."""
        points = np.asarray(yx_px, dtype=np.float64).reshape(-1, 2)
        return np.asarray((points + 0.5) / np.asarray(self.scale_yx) - 0.5, dtype=np.float64)

    def to_input_px(self, yx_binned_px: npt.ArrayLike) -> FloatArray:
        """Binned-pixel coordinates [y, x] (n, 2) → input-pixel coordinates."""
        points = np.asarray(yx_binned_px, dtype=np.float64).reshape(-1, 2)
        return np.asarray((points + 0.5) * np.asarray(self.scale_yx) - 0.5, dtype=np.float64)


def _check_geometry(pixel_size_angstrom: float, particle_diameter_angstrom: float) -> None:
    if not (math.isfinite(pixel_size_angstrom) and pixel_size_angstrom > 0):
        raise ValueError(f"pixel_size_angstrom must be positive and finite, got {pixel_size_angstrom}")
    if not (math.isfinite(particle_diameter_angstrom) and particle_diameter_angstrom > 0):
        raise ValueError(f"particle_diameter_angstrom must be positive and finite, got {particle_diameter_angstrom}")


def _as_image_tensor(image: npt.ArrayLike | torch.Tensor, device: torch.device) -> torch.Tensor:
    x = image.detach() if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if x.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {tuple(x.shape)}")
    if min(x.shape) < 2:
        raise ValueError(f"image must be at least 2 x 2 pixels, got {tuple(x.shape)}")
    x = x.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("image contains NaN or Inf")
    return x


def _bin_tensor(
    x: torch.Tensor, pixel_size_angstrom: float, particle_diameter_angstrom: float, radius_binned_px: float
) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resample and normalise on x's device (module docstring); returns (image (my, mx), (s_y, s_x))."""
    radius_px = 0.5 * particle_diameter_angstrom / pixel_size_angstrom
    factor = radius_px / radius_binned_px
    ny, nx = int(x.shape[0]), int(x.shape[1])
    my, mx = max(1, round(ny / factor)), max(1, round(nx / factor))
    binned = nn.functional.interpolate(x[None, None], size=(my, mx), mode="bilinear", antialias=True)[0, 0]
    median = binned.median()
    spread = MAD_TO_SIGMA * (binned - median).abs().median()
    if not float(spread) > 0:
        spread = binned.std()
    # Below float32 rounding of the level there is no contrast (a blank frame): all zeros, no picks.
    if not float(spread) > _NO_CONTRAST_RELATIVE * max(float(binned.abs().max()), 1e-30):
        return torch.zeros_like(binned), (ny / my, nx / mx)
    normalised = ((binned - median) / spread).clamp(-INPUT_CLIP_SIGMA, INPUT_CLIP_SIGMA)
    return normalised, (ny / my, nx / mx)


def bin_for_picking(
    image: npt.ArrayLike | torch.Tensor,
    pixel_size_angstrom: float,
    particle_diameter_angstrom: float,
    radius_binned_px: float = PickerConfig.radius_binned_px,
) -> BinnedMicrograph:
    """Resample a micrograph so the particle radius is ``radius_binned_px`` pixels, and normalise it.

    Parameters
    ----------
    image : array_like or Tensor, shape (ny, nx)
        Raw micrograph (counts or any affine function of them), [y, x].
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    particle_diameter_angstrom : float
        Particle diameter d, Å.
    radius_binned_px : float
        Target radius in binned pixels (``PickerConfig.radius_binned_px``).

    Returns
    -------
    BinnedMicrograph

    Raises
    ------
    ValueError
        For a non-2-D or non-finite image, or a non-positive pixel size or diameter.
    """
    _check_geometry(pixel_size_angstrom, particle_diameter_angstrom)
    x = _as_image_tensor(image, torch.device("cpu"))
    binned, scale = _bin_tensor(x, pixel_size_angstrom, particle_diameter_angstrom, radius_binned_px)
    return BinnedMicrograph(binned.numpy().astype(np.float32), scale, (int(x.shape[0]), int(x.shape[1])))


@torch.no_grad()
def _heatmap(model: PickerUNet, binned: torch.Tensor) -> torch.Tensor:
    """Sigmoid heatmap (my, mx) of a normalised binned image, zero-padded by the edge padding and up to a
    multiple of the pooling factor."""
    my, mx = int(binned.shape[0]), int(binned.shape[1])
    pad = EDGE_PADDING_BINNED_PX
    multiple = model.config.size_multiple_px
    full_y = -(-(my + 2 * pad) // multiple) * multiple
    full_x = -(-(mx + 2 * pad) // multiple) * multiple
    padded = nn.functional.pad(binned[None, None], (pad, full_x - mx - pad, pad, full_y - my - pad))
    logits = model(padded)[0, 0, pad : pad + my, pad : pad + mx]
    return torch.sigmoid(logits.float())


def _parabolic_offset(minus: FloatArray, centre: FloatArray, plus: FloatArray) -> FloatArray:
    """Vertices of the parabolas through (−1, minus), (0, centre), (1, plus), limited to ±½ (0 if flat)."""
    curvature = minus - 2.0 * centre + plus
    safe = np.where(curvature < 0, curvature, -1.0)
    return np.where(curvature < 0, np.clip(0.5 * (minus - plus) / safe, -0.5, 0.5), 0.0)


def _decode_peaks(
    heatmap: torch.Tensor,
    threshold: float,
    scale_yx: tuple[float, float],
    input_shape_px: tuple[int, int],
    diameter_px: float,
) -> tuple[FloatArray, FloatArray]:
    """Peaks of the heatmap → (centres [y, x] in input pixels (n, 2), values (n,)), module docstring."""
    local_max = nn.functional.max_pool2d(heatmap[None, None], 3, stride=1, padding=1)[0, 0]
    mask = (heatmap >= local_max) & (heatmap >= threshold)
    peaks = torch.nonzero(mask).cpu().numpy().astype(np.int64)
    prob = heatmap.cpu().numpy().astype(np.float64)
    if peaks.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.float64), np.zeros(0, dtype=np.float64)
    values = prob[peaks[:, 0], peaks[:, 1]]
    order = np.argsort(-values, kind="stable")
    peaks, values = peaks[order], values[order]
    log_p = np.log(np.clip(np.pad(prob, 1, mode="edge"), 1e-12, None))
    py, px = peaks[:, 0] + 1, peaks[:, 1] + 1
    dy = _parabolic_offset(log_p[py - 1, px], log_p[py, px], log_p[py + 1, px])
    dx = _parabolic_offset(log_p[py, px - 1], log_p[py, px], log_p[py, px + 1])
    centres = (np.stack([peaks[:, 0] + dy, peaks[:, 1] + dx], axis=1) + 0.5) * np.asarray(scale_yx) - 0.5
    ny, nx = input_shape_px
    inside = (centres[:, 0] >= 0) & (centres[:, 0] <= ny - 1) & (centres[:, 1] >= 0) & (centres[:, 1] <= nx - 1)
    centres, values = centres[inside], values[inside]
    min_distance2 = (NMS_DIAMETER_FRACTION * diameter_px) ** 2
    accepted = np.zeros(len(centres), dtype=bool)
    kept = np.zeros((0, 2), dtype=np.float64)
    for i in range(len(centres)):
        if kept.shape[0] and float(np.min(np.sum((kept - centres[i]) ** 2, axis=1))) < min_distance2:
            continue
        accepted[i] = True
        kept = np.vstack([kept, centres[i : i + 1]])
    return centres[accepted], values[accepted]


def pick_particles_learned(
    image: npt.ArrayLike | torch.Tensor,
    pixel_size_angstrom: float,
    particle_diameter_angstrom: float,
    model: PickerUNet,
    *,
    device: torch.device | str = "cpu",
    threshold: float | None = None,
) -> Picks:
    """Pick particles with the learned centre-heatmap network (module docstring).

    Parameters
    ----------
    image : array_like or Tensor, shape (ny, nx)
        Raw micrograph at underfocus (particles dark), counts or any affine function of them, [y, x].
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    particle_diameter_angstrom : float
        Expected particle diameter d, Å (the size the model resamples to; picks are ≥ 0.8 d apart).
    model : PickerUNet
        E.g. ``cryodecon_science.io.picker_weights.load_pretrained_picker()``; moved to ``device``.
    device : torch.device or str
        Where the resampling and the network run ("cpu" or a CUDA device).
    threshold : float, optional
        Heatmap value p ∈ (0, 1) a peak needs; default the model's calibrated ``detection_threshold``.
        Lower it for recall, raise it for precision.

    Returns
    -------
    Picks
        Centres in input pixels, strongest first, with their heatmap peaks and the threshold used.

    Raises
    ------
    ValueError
        For a non-2-D or non-finite image, a non-positive pixel size or diameter, or a threshold outside
        (0, 1).
    """
    _check_geometry(pixel_size_angstrom, particle_diameter_angstrom)
    level = float(model.detection_threshold) if threshold is None else float(threshold)
    if not 0.0 < level < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {level}")
    target = torch.device(device)
    x = _as_image_tensor(image, target)
    diameter_px = particle_diameter_angstrom / pixel_size_angstrom
    empty = Picks(np.zeros((0, 2), dtype=np.float64), np.zeros(0, dtype=np.float64), level)
    if min(x.shape) <= diameter_px:
        return empty
    binned_t, scale = _bin_tensor(x, pixel_size_angstrom, particle_diameter_angstrom, model.config.radius_binned_px)
    if not bool((binned_t != 0).any()):  # no contrast at the picking scale (a blank or saturated frame)
        return empty
    was_training = model.training
    model.eval()
    try:
        if next(model.parameters()).device != target:
            model.to(target)
        heatmap = _heatmap(model, binned_t)
    finally:
        model.train(was_training)
    centres, values = _decode_peaks(heatmap, level, scale, (int(x.shape[0]), int(x.shape[1])), diameter_px)
    return Picks(centres, values, level)


# ------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class PickerTrainingConfig:
    """Schedule of :func:`train_picker`.

    Attributes
    ----------
    steps : int
        Optimiser steps.
    batch_size : int
        Patches per step.
    patch_binned_px : int
        Patch edge, binned pixels (multiple of the model's ``size_multiple_px``).
    learning_rate : float
        Peak Adam learning rate; cosine decay to 5 % of it over ``steps``.
    focal_alpha, focal_beta : float
        Exponents α, β of the penalty-reduced focal loss (module docstring; CenterNet's 2 and 4).
    seed : int
        Seed of the patch sampling, augmentation and weight initialisation.
    """

    steps: int = 4000
    batch_size: int = 16
    patch_binned_px: int = 64
    learning_rate: float = 1e-3
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.patch_binned_px < 16 or not self.learning_rate > 0:
            raise ValueError("steps, batch_size >= 1, patch_binned_px >= 16 and learning_rate > 0 required")
        if self.focal_alpha < 0 or self.focal_beta < 0:
            raise ValueError("focal_alpha and focal_beta must be >= 0")


@dataclass(frozen=True, eq=False)
class PickerExample:
    """One training micrograph at the picker's scale.

    Attributes
    ----------
    image : ndarray, shape (my, mx), float32
        ``bin_for_picking(...).image``.
    centres_yx_binned_px : ndarray, shape (n, 2), float64
        True particle centres [y, x] in binned pixels (``BinnedMicrograph.to_binned_px``).
    """

    image: Float32Array
    centres_yx_binned_px: FloatArray


def heatmap_target(centres_yx_binned_px: npt.ArrayLike, shape_px: tuple[int, int], sigma_px: float) -> Float32Array:
    """CenterNet target: max over centres of exp(−ρ²/2σ²) about the pixel nearest each centre (1 there).

    Parameters
    ----------
    centres_yx_binned_px : array_like, shape (n, 2)
        Centres [y, x], binned pixels; those whose nearest pixel is outside the image are ignored.
    shape_px : tuple of int
        (my, mx).
    sigma_px : float
        σ of the Gaussian, binned pixels (> 0).

    Returns
    -------
    ndarray, shape (my, mx), float32
    """
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be positive, got {sigma_px}")
    target = np.zeros(shape_px, dtype=np.float32)
    points = np.rint(np.asarray(centres_yx_binned_px, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    half = math.ceil(3.0 * sigma_px)
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma_px**2)).astype(np.float32)
    my, mx = shape_px
    for cy, cx in points:
        if not (0 <= cy < my and 0 <= cx < mx):
            continue
        y0, y1 = max(cy - half, 0), min(cy + half + 1, my)
        x0, x1 = max(cx - half, 0), min(cx + half + 1, mx)
        window = kernel[y0 - cy + half : y1 - cy + half, x0 - cx + half : x1 - cx + half]
        np.maximum(target[y0:y1, x0:x1], window, out=target[y0:y1, x0:x1])
    return target


def centre_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (module docstring), summed and divided by the number of
    target pixels equal to 1 (at least 1).  ``weight`` (same shape, optional) scales each pixel's term;
    pixels of weight 0 are left out, and so are their positives from the count."""
    log_p = nn.functional.logsigmoid(logits)
    log_not_p = nn.functional.logsigmoid(-logits)
    p = torch.exp(log_p)
    positive = target >= 1.0
    pos_loss = -((1.0 - p) ** alpha) * log_p
    neg_loss = -((1.0 - target) ** beta) * (p**alpha) * log_not_p
    terms = torch.where(positive, pos_loss, neg_loss)
    if weight is not None:
        terms, positive = weight * terms, positive & (weight > 0)
    n_pos = torch.clamp(positive.sum(), min=1).to(logits.dtype)
    return terms.sum() / n_pos


def _d4(array: Float32Array, k: int) -> Float32Array:
    out = np.rot90(array, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def sample_picker_batch(
    images: Sequence[Float32Array],
    targets: Sequence[Float32Array],
    batch_size: int,
    patch_px: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (input, target) patches (batch, 1, p, p) float32: a random example, a random p×p crop of
    its image zero-padded by :data:`EDGE_PADDING_BINNED_PX` (so that edges look as at inference; images
    smaller than the patch are padded further), and a random dihedral (D4) transform."""
    inputs = np.zeros((batch_size, 1, patch_px, patch_px), dtype=np.float32)
    heat = np.zeros_like(inputs)
    for b in range(batch_size):
        index = int(rng.integers(len(images)))
        image, target = images[index], targets[index]
        ny, nx = image.shape
        y = int(rng.integers(-EDGE_PADDING_BINNED_PX, max(ny + EDGE_PADDING_BINNED_PX - patch_px, 0) + 1))
        x = int(rng.integers(-EDGE_PADDING_BINNED_PX, max(nx + EDGE_PADDING_BINNED_PX - patch_px, 0) + 1))
        sy0, sy1 = max(y, 0), min(y + patch_px, ny)
        sx0, sx1 = max(x, 0), min(x + patch_px, nx)
        patch = np.zeros((patch_px, patch_px), dtype=np.float32)
        patch_t = np.zeros_like(patch)
        if sy1 > sy0 and sx1 > sx0:
            patch[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = image[sy0:sy1, sx0:sx1]
            patch_t[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = target[sy0:sy1, sx0:sx1]
        k = int(rng.integers(8))
        inputs[b, 0] = _d4(patch, k)
        heat[b, 0] = _d4(patch_t, k)
    return torch.from_numpy(inputs), torch.from_numpy(heat)


def train_picker(
    examples: Sequence[PickerExample],
    model_config: PickerConfig,
    training: PickerTrainingConfig,
    log_every: int = 0,
) -> tuple[PickerUNet, list[float]]:
    """Train a :class:`PickerUNet` on labelled binned micrographs (focal loss on CenterNet heatmaps, Adam).

    Parameters
    ----------
    examples : sequence of PickerExample
        Training micrographs at the scale ``model_config.radius_binned_px`` with their true centres.
    model_config : PickerConfig
    training : PickerTrainingConfig
    log_every : int
        Print the running loss every this many steps (0: silent).

    Returns
    -------
    (PickerUNet, list of float)
        The trained model (eval mode, CPU; ``detection_threshold`` still 0.5, to be calibrated) and the
        mean loss of each block of 100 steps.

    Raises
    ------
    ValueError
        For no examples or a patch that is not a multiple of the pooling factor.
    """
    if not examples:
        raise ValueError("no training examples")
    if training.patch_binned_px % model_config.size_multiple_px:
        raise ValueError(f"patch_binned_px must be a multiple of {model_config.size_multiple_px}")
    sigma = HEATMAP_SIGMA_RADIUS_FRACTION * model_config.radius_binned_px
    images = [np.asarray(e.image, dtype=np.float32) for e in examples]
    targets = [heatmap_target(e.centres_yx_binned_px, e.image.shape, sigma) for e in examples]
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    model = PickerUNet(model_config)
    optimiser = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(step, training.steps) / training.steps)),
    )
    history: list[float] = []
    running = 0.0
    model.train()
    for step in range(training.steps):
        source, target = sample_picker_batch(images, targets, training.batch_size, training.patch_binned_px, rng)
        loss = centre_focal_loss(model(source), target, training.focal_alpha, training.focal_beta)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        schedule.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0:
            history.append(running / 100.0)
            running = 0.0
            if log_every and (step + 1) % log_every == 0:
                print(f"step {step + 1}: loss {history[-1]:.4f}", flush=True)
    model.eval()
    return model, history
