"""Learned, self-supervised micrograph denoiser: a small U-Net trained by Noise2Noise on independent halves.

Training signal (no clean images)
---------------------------------
Noise2Noise (Lehtinen et al. 2018, "Noise2Noise: Learning image restoration without clean data", ICML,
PMLR 80:2965–2974): if a network f is trained to map one noisy image A of a scene to another, B, whose
noise is independent of A's and zero-mean, the L2 minimiser is f(A) = E[B | A] = E[clean | A], the same as
training against clean targets.  The two independent observations come from

* **single exposures** — binomial thinning of counted data (:func:`halves_from_counts`, which uses
  ``reproducibility.binomial_split_counts``): N ~ Poisson(λ) splits into A ~ Binomial(N, ½), B = N − A,
  two independent Poisson(λ/2) images (Rényi thinning).  This is the Noise2Noise-on-thinned-counts
  construction of e.g. Moran et al. 2020 ("Noisier2Noise", CVPR, 12064–12072) and Pang et al. 2021
  ("Recorrupted-to-Recorrupted", CVPR, 2043–2052), specialised to shot noise;
* **movies** — the sums of the even and of the odd aligned frames (:func:`halves_from_frames`), as in
  Topaz-Denoise (Bepler et al. 2020, Nat. Commun. 11:5208) and cryo-CARE (Buchholz et al. 2019, ISBI).

Input normalisation (shot-noise units)
--------------------------------------
An image x of counts with mean μ = mean(x) over the whole image is mapped to

    z = (x − μ) / √μ

so that its shot noise has unit variance everywhere (Poisson: variance = mean; a first-order variance
stabilisation, adequate at the ≥ 10 e⁻/pixel of a micrograph or a half of one, where Anscombe's
2√(x + 3/8) is linear to within 1 %).  The network is therefore a denoiser for *unit-variance* noise: it
returns the estimate of (λ − μ)/√μ, and the image is restored as μ + √μ·f(z).  The statistics are those
of the whole image, not of a tile, so tiling does not change the mapping.

Full-dose output
----------------
The model is trained on half-dose inputs and applied once to the *full* image N.  In shot-noise units a
half of dose D/2 and the full image of dose D differ only in the signal amplitude (√2 larger for the full
image, the noise being unit variance in both), so a model trained on halves whose SNR spans the range of
the full images (training uses full-image SNR 0.01–0.2, halves 0.005–0.1) sees full images as in-range
inputs, and gets the full dose's √2 better SNR.  Averaging f(A) + f(B) over one split would instead feed
the network two inputs of half the SNR (and cost twice as much); see ``benchmarks/train_denoiser.py``.

Architecture
------------
A U-Net (Ronneberger et al. 2015, MICCAI, LNCS 9351:234–241) of ``depth`` levels: per level two 3×3
convolutions with LeakyReLU(0.1), 2×2 average pooling down, nearest-neighbour upsampling and skip
concatenation up, a 1×1 output convolution.  No normalisation layers, so the output is a fixed function
of the input (batches give the same numbers).  The first level works on r×r blocks (``space_to_depth``),
so the receptive field is ≈ r·2·(2 + 4 + … + 2^depth) pixels (≈ 360 px for r = 4, depth 4), although the
weight of distant pixels decays fast: tiles keep :data:`TILE_MARGIN_PX` = 128 px of context per side, with
which tiled and untiled outputs differ by ≈ 1.5 % of the output's standard deviation (RMS) at tile seams.

Inference runs tiled (``tile_px`` core + margin, reflect-padded at the image edges), batched
(``batch_size`` tiles per forward pass), in float32 on CPU and under bfloat16 autocast on CUDA, where
:func:`denoise_learned_many` streams a batch of frames through pinned host buffers so that each frame's
copies overlap the previous frame's compute (on an H200: 24 ms per 4096² frame against 56 ms one frame per
call, of which the network is 5 ms; ``benchmarks/results/gpu_h200_4096.md``).  Optional
test-time augmentation (``augment=True``) averages the outputs for the 8 rotations/flips of the input, each
mapped back (the model was trained with the same D4 augmentation, so each is an equally valid estimate);
it costs 8 passes for a small gain (≈ 0.05 dB PSNR on held-out simulations), so it is off by default.
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
from cryodecon_science.reproducibility import binomial_split_counts

Float32Image = npt.NDArray[np.float32]

TILE_MARGIN_PX = 128
"""Context kept on each side of an inference tile and discarded afterwards (module docstring)."""
DEFAULT_TILE_PX = 1024
"""Core edge of an inference tile, pixels (a 1024² micrograph runs as one tile, a 4096² one as 16)."""
MIN_MEAN_COUNTS = 1e-3
"""Smallest image mean (counts/pixel) accepted: the normalisation divides by √μ."""


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of the U-Net.

    Attributes
    ----------
    base_channels : int
        Feature channels at full resolution; level ℓ has min(base·2^ℓ, max_channels).
    depth : int
        Number of resolution levels (depth − 1 poolings by 2).
    max_channels : int
        Cap on the channels per level.
    negative_slope : float
        LeakyReLU slope.
    space_to_depth : int
        r: the image enters as r² channels of r×r-pixel blocks (``pixel_unshuffle``) and leaves through
        ``pixel_shuffle``; lossless, and r² times less work per channel than a full-resolution first
        level.  At 1 Å/pixel and SNR ≤ 0.1 the detail near Nyquist is noise anyway.
    """

    base_channels: int = 32
    depth: int = 4
    max_channels: int = 64
    negative_slope: float = 0.1
    space_to_depth: int = 4

    def __post_init__(self) -> None:
        if self.base_channels < 1 or self.max_channels < self.base_channels:
            raise ValueError("base_channels must be >= 1 and max_channels >= base_channels")
        if not 2 <= self.depth <= 6:
            raise ValueError(f"depth must be in 2..6, got {self.depth}")
        if self.space_to_depth not in (1, 2, 4):
            raise ValueError(f"space_to_depth must be 1, 2 or 4, got {self.space_to_depth}")
        if not 0.0 <= self.negative_slope < 1.0:
            raise ValueError(f"negative_slope must be in [0, 1), got {self.negative_slope}")

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level, full resolution first."""
        return tuple(min(self.base_channels * 2**level, self.max_channels) for level in range(self.depth))

    @property
    def size_multiple_px(self) -> int:
        """Input sides must be multiples of this (r · 2^(depth − 1))."""
        return int(self.space_to_depth * 2 ** (self.depth - 1))

    def to_dict(self) -> dict[str, int | float]:
        """Plain-data form (for the weights file)."""
        return dict(asdict(self))


class DenoiserUNet(nn.Module):
    """The U-Net of the module docstring: (batch, 1, ny, nx) → (batch, 1, ny, nx), sides multiples of
    ``config.size_multiple_px``, in shot-noise units (module docstring)."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        slope = config.negative_slope
        self.encoders = nn.ModuleList(
            [double_conv(config.space_to_depth**2 if i == 0 else ch[i - 1], ch[i], slope) for i in range(config.depth)]
        )
        self.decoders = nn.ModuleList([double_conv(ch[i + 1] + ch[i], ch[i], slope) for i in range(config.depth - 1)])
        self.head = nn.Conv2d(ch[0], config.space_to_depth**2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        h = nn.functional.pixel_unshuffle(x, self.config.space_to_depth)
        for level, encoder in enumerate(self.encoders):
            h = encoder(h)
            if level < self.config.depth - 1:
                skips.append(h)
                h = nn.functional.avg_pool2d(h, 2)
        for level in range(self.config.depth - 2, -1, -1):
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = self.decoders[level](torch.cat([h, skips[level]], dim=1))
        out: torch.Tensor = nn.functional.pixel_shuffle(self.head(h), self.config.space_to_depth)
        return out

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters())


# --------------------------------------------------------------------------------------------- halves
def halves_from_counts(counts: npt.ArrayLike, seed: int) -> tuple[Float32Image, Float32Image]:
    """Two independent half-dose images of one exposure by binomial thinning (module docstring).

    Thin wrapper on :func:`cryodecon_science.reproducibility.binomial_split_counts` (counts are rounded
    to whole electrons first).  Raises ``ValueError`` as that function does.
    """
    return binomial_split_counts(counts, seed)


def halves_from_frames(frames: npt.ArrayLike) -> tuple[Float32Image, Float32Image]:
    """Sums of the even (0, 2, …) and of the odd (1, 3, …) frames of an *aligned* movie (n, ny, nx).

    Raises
    ------
    ValueError
        For fewer than two frames, a non-3-D or non-finite stack.
    """
    stack = np.asarray(frames, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError(f"frames must be (n >= 2, ny, nx), got shape {stack.shape}")
    if not np.all(np.isfinite(stack)):
        raise ValueError("frames contain NaN or Inf")
    return stack[0::2].sum(axis=0).astype(np.float32), stack[1::2].sum(axis=0).astype(np.float32)


# ------------------------------------------------------------------------------------- normalisation
def shot_noise_normalise(image: npt.ArrayLike) -> tuple[Float32Image, float, float]:
    """z = (x − μ)/√μ over the whole image (module docstring); returns (z, μ, √μ).

    Raises
    ------
    ValueError
        For a non-2-D or non-finite image, or a mean below :data:`MIN_MEAN_COUNTS` (not counts).
    """
    z, mean, scale = _normalise_on(image, torch.device("cpu"))
    return z.numpy(), mean, scale


def _normalise_on(image: npt.ArrayLike | torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float, float]:
    """:func:`shot_noise_normalise` computed on ``device``: z (float32 tensor there), μ, √μ.

    The image travels in its own dtype (float32 counts: 64 MB for a 4096² frame) and μ is a float64 sum on
    the device, so on a GPU the only host work is the copy and the one scalar read back for the check.
    """
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if x.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {tuple(x.shape)}")
    z, mean_t, _ = _normalise_deferred(x.to(device))
    mean = float(mean_t)
    _check_mean(mean)
    return z, mean, math.sqrt(mean)


def _normalise_deferred(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z = (x − μ)/√μ (float32) with μ and √μ as 0-d float64 tensors on x's device, nothing read back.

    μ is clamped to :data:`MIN_MEAN_COUNTS` inside √μ only, so an invalid image yields finite garbage
    that the caller rejects with :func:`_check_mean` on μ, read back when it is cheap to.
    """
    x64 = x.to(torch.float64)
    mean = x64.mean()
    scale = torch.sqrt(torch.clamp(mean, min=MIN_MEAN_COUNTS))
    return ((x64 - mean) / scale).to(torch.float32), mean, scale


def _check_frame_shape(shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``shape`` is 2-D with both sides ≥ 16 px (the network's smallest input)."""
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"image must be 2-D [y, x], at least 16 x 16 pixels, got {shape}")


def _check_mean(mean: float) -> None:
    """Raise ``ValueError`` unless the image mean is finite and at least :data:`MIN_MEAN_COUNTS`.

    Any NaN or ±Inf pixel makes the float64 mean NaN or ±Inf, so this one scalar checks finiteness too.
    """
    if not math.isfinite(mean):
        raise ValueError("image contains NaN or Inf")
    if not mean >= MIN_MEAN_COUNTS:
        raise ValueError(
            f"image mean is {mean:.3g} counts/pixel: the learned denoiser needs electron counts (mean > 0), "
            "gain-normalised, not a normalised or background-subtracted image"
        )


# ------------------------------------------------------------------------------------------ inference
def _tile_starts(length: int, core: int) -> list[int]:
    return list(range(0, length, core))


@torch.no_grad()
def _run_tiles(
    model: DenoiserUNet, z: torch.Tensor, tile_px: int, margin: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Apply the model to z (ny, nx) in tiles of core ``tile_px`` with ``margin`` context per side."""
    ny, nx = z.shape
    multiple = model.config.size_multiple_px
    core_y = min(tile_px, ny)
    core_x = min(tile_px, nx)
    # Round the core up so that core + 2·margin is a multiple of the pooling factor.
    core_y = -(-(core_y + 2 * margin) // multiple) * multiple - 2 * margin
    core_x = -(-(core_x + 2 * margin) // multiple) * multiple - 2 * margin
    starts_y = _tile_starts(ny, core_y)
    starts_x = _tile_starts(nx, core_x)
    full_y = starts_y[-1] + core_y
    full_x = starts_x[-1] + core_x
    # Reflect-pad by the margin (and up to whole tiles at the far edges); reflect needs pad < size.
    padded = z[None, None]
    pads: tuple[int, ...] = (margin, margin + full_x - nx, margin, margin + full_y - ny)
    while any(p > 0 for p in pads):
        step = tuple(min(p, padded.shape[-1 if i < 2 else -2] - 1) for i, p in enumerate(pads))
        padded = nn.functional.pad(padded, step, mode="reflect")
        pads = tuple(p - s for p, s in zip(pads, step, strict=True))
    out = torch.empty((full_y, full_x), dtype=torch.float32, device=device)
    corners = [(y, x) for y in starts_y for x in starts_x]
    size_y, size_x = core_y + 2 * margin, core_x + 2 * margin
    use_bf16 = device.type == "cuda"
    for first in range(0, len(corners), batch_size):
        chunk = corners[first : first + batch_size]
        batch = torch.stack([padded[0, :, y : y + size_y, x : x + size_x] for y, x in chunk])
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            pred = model(batch)
        pred = pred.float()
        for i, (y, x) in enumerate(chunk):
            out[y : y + core_y, x : x + core_x] = pred[i, 0, margin : margin + core_y, margin : margin + core_x]
    return out[:ny, :nx]


def _dihedral(z: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """Element k (0 … 7) of the dihedral group D4 on a 2-D tensor: rot90 by k mod 4, then a left–right
    flip for k ≥ 4 (as ``_d4`` in training); ``inverse`` undoes it."""
    if inverse:
        z = torch.flip(z, dims=(1,)) if k >= 4 else z
        return torch.rot90(z, -(k % 4), dims=(0, 1))
    z = torch.rot90(z, k % 4, dims=(0, 1))
    return torch.flip(z, dims=(1,)) if k >= 4 else z


def denoise_learned(
    image_counts: npt.ArrayLike | torch.Tensor,
    model: DenoiserUNet,
    device: torch.device | str = "cpu",
    tile_px: int = DEFAULT_TILE_PX,
    batch_size: int = 4,
    margin_px: int = TILE_MARGIN_PX,
    augment: bool = False,
) -> Float32Image:
    """Denoise a micrograph of electron counts with the self-supervised U-Net (module docstring).

    x̂ = μ + √μ · f((x − μ)/√μ),  μ = mean of the image,

    f applied once to the full-dose image (module docstring, "Full-dose output"), tiled with overlap.

    Parameters
    ----------
    image_counts : array or Tensor, shape (ny, nx)
        Micrograph (frame sum) in electron counts per pixel, gain-normalised, finite, mean > 0; both
        sides ≥ 16 px.
    model : DenoiserUNet
        E.g. ``cryodecon_science.io.denoiser_weights.load_pretrained_denoiser()``.
    device : torch.device or str
        "cpu" (float32) or a CUDA device (bfloat16 autocast; output float32).
    tile_px : int
        Core edge of a tile (≥ 16); images no larger than this run as one tile.
    batch_size : int
        Tiles per forward pass (≥ 1).
    margin_px : int
        Context per tile side, discarded after the forward pass (≥ 0; default :data:`TILE_MARGIN_PX`,
        module docstring: tiled and untiled results differ by ≈ 1.5 % RMS of the output's spread).
    augment : bool
        Test-time augmentation: average f over the 8 rotations/flips of the image (each mapped back),
        8× the cost.  Off by default: on held-out simulated 1024² micrographs (not the benchmark's) it
        raised PSNR by only 0.04–0.08 dB at SNR 0.1–0.01 (``benchmarks/bench_restoration.py`` reports
        it as ``cryodecon_learned_tta8``).

    Returns
    -------
    ndarray, float32, shape (ny, nx)
        Estimate of the expected counts λ(x) (same units as the input).

    Raises
    ------
    ValueError
        For a non-2-D, non-finite, too small or non-count (mean ≤ 0) image, or bad tiling arguments.
    """
    target = torch.device(device)
    source = image_counts.detach() if isinstance(image_counts, torch.Tensor) else image_counts
    z_t, mean, scale = _normalise_on(source, target)
    _check_frame_shape(tuple(z_t.shape))
    if tile_px < 16 or batch_size < 1 or margin_px < 0:
        raise ValueError("tile_px must be >= 16, batch_size >= 1 and margin_px >= 0")
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        if param.device != target:
            model.to(target)
        if augment:
            pred = torch.zeros_like(z_t)
            for k in range(8):
                out = _run_tiles(model, _dihedral(z_t, k), tile_px, margin_px, batch_size, target)
                pred += _dihedral(out, k, inverse=True)
            pred /= 8.0
        else:
            pred = _run_tiles(model, z_t, tile_px, margin_px, batch_size, target)
    finally:
        model.train(was_training)
    restored = (pred.to(torch.float64) * scale + mean).to(torch.float32)
    return np.ascontiguousarray(restored.cpu().numpy())


def denoise_learned_many(
    images_counts: Sequence[npt.ArrayLike],
    model: DenoiserUNet,
    device: torch.device | str = "cpu",
    tile_px: int = DEFAULT_TILE_PX,
    batch_size: int = 4,
    margin_px: int = TILE_MARGIN_PX,
) -> list[Float32Image | ValueError]:
    """:func:`denoise_learned` on a sequence of micrographs, pipelined on a GPU; one outcome per image.

    On CUDA the frames stream through two pinned (page-locked) host buffers each way: while the GPU runs
    the network on frame i, frame i + 1 is copied host → device on a second stream and frame i − 1's result
    is read back, so the copies (64 MB each way for a 4096² float32 frame) overlap the compute; nothing is
    read back per frame except the result and its mean (the validity check).  On CPU it is a loop over
    :func:`denoise_learned`.  The numbers are :func:`denoise_learned`'s for the same tiling.

    Returns
    -------
    list
        Per input, in order: the restored float32 image, or the ``ValueError`` that :func:`denoise_learned`
        would raise for it (non-2-D, smaller than 16 px, non-finite, mean below :data:`MIN_MEAN_COUNTS`),
        so that one bad frame does not stop the batch.

    Raises
    ------
    ValueError
        For bad tiling arguments (they apply to every image).
    """
    if tile_px < 16 or batch_size < 1 or margin_px < 0:
        raise ValueError("tile_px must be >= 16, batch_size >= 1 and margin_px >= 0")
    target = torch.device(device)
    if target.type != "cuda":
        outcomes: list[Float32Image | ValueError] = []
        for image in images_counts:
            try:
                outcomes.append(denoise_learned(image, model, target, tile_px, batch_size, margin_px))
            except ValueError as error:
                outcomes.append(error)
        return outcomes
    return _denoise_pipelined_cuda(images_counts, model, target, tile_px, batch_size, margin_px)


@torch.no_grad()
def _denoise_pipelined_cuda(
    images_counts: Sequence[npt.ArrayLike],
    model: DenoiserUNet,
    target: torch.device,
    tile_px: int,
    batch_size: int,
    margin_px: int,
) -> list[Float32Image | ValueError]:
    """The CUDA path of :func:`denoise_learned_many` (double-buffered pinned copies on a side stream)."""
    outcomes: list[Float32Image | ValueError | None] = [None] * len(images_counts)
    was_training = model.training
    model.eval()
    if next(model.parameters()).device != target:
        model.to(target)
    compute = torch.cuda.current_stream(target)
    copy_in = torch.cuda.Stream(target)  # type: ignore[no-untyped-call]
    pinned: dict[tuple[str, tuple[int, ...], torch.dtype, int], torch.Tensor] = {}

    def pinned_buffer(role: str, shape: tuple[int, ...], dtype: torch.dtype, slot: int) -> torch.Tensor:
        """The page-locked host buffer of this role ("in"/"out"), frame shape, dtype and slot."""
        key = (role, shape, dtype, slot)
        if key not in pinned:
            pinned[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return pinned[key]

    copied: list[torch.cuda.Event | None] = [None, None]  # slot's host buffer free again
    pending: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.cuda.Event]] = []  # (index, slot, out, mean, done)

    def collect(slot: int | None) -> None:
        for entry in [e for e in pending if slot is None or e[1] == slot]:
            index, _, out, mean, done = entry
            done.synchronize()
            try:
                _check_mean(float(mean))
                outcomes[index] = out.numpy().copy()
            except ValueError as error:
                outcomes[index] = error
            pending.remove(entry)

    try:
        for index, image in enumerate(images_counts):
            array = np.ascontiguousarray(image)
            try:
                _check_frame_shape(array.shape)
            except ValueError as error:
                outcomes[index] = error
                continue
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float32)
            source = torch.from_numpy(array)
            slot = index % 2
            host_in = pinned_buffer("in", array.shape, source.dtype, slot)
            event = copied[slot]
            if event is not None:
                event.synchronize()  # the copy of frame index − 2 out of this buffer is done
            host_in.copy_(source)
            with torch.cuda.stream(copy_in):
                x = host_in.to(target, non_blocking=True)
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(copy_in)
            copied[slot] = event
            compute.wait_event(event)
            x.record_stream(compute)
            z, mean, scale = _normalise_deferred(x)
            pred = _run_tiles(model, z, tile_px, margin_px, batch_size, target)
            restored = (pred.to(torch.float64) * scale + mean).to(torch.float32)
            collect(slot)  # frame index − 2's result has left this slot's output buffer
            host_out = pinned_buffer("out", array.shape, torch.float32, slot)
            host_out.copy_(restored, non_blocking=True)
            host_mean = torch.empty((), dtype=torch.float64, pin_memory=True)
            host_mean.copy_(mean, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(compute)
            pending.append((index, slot, host_out, host_mean, done))
        collect(None)
    finally:
        model.train(was_training)
    return [o if o is not None else ValueError("not processed") for o in outcomes]


# ------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingConfig:
    """Noise2Noise training schedule (``train_noise2noise``).

    Attributes
    ----------
    steps : int
        Optimiser steps.
    batch_size : int
        Patch pairs per step.
    patch_px : int
        Patch edge, pixels (multiple of the model's ``size_multiple_px``).
    learning_rate : float
        Peak Adam learning rate; cosine decay to 5 % of it over ``steps``.
    seed : int
        Seed of the patch sampling, splits, augmentation and weight initialisation.
    """

    steps: int = 4000
    batch_size: int = 8
    patch_px: int = 128
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.patch_px < 16 or not self.learning_rate > 0:
            raise ValueError("steps, batch_size >= 1, patch_px >= 16 and learning_rate > 0 required")


def _d4(patch: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float32]:
    out = np.rot90(patch, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def sample_pair_batch(
    counts: Sequence[npt.NDArray[np.float32]], batch_size: int, patch_px: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of Noise2Noise patch pairs (input, target), (batch, 1, p, p) float32, shot-noise units.

    For each pair: a random image of ``counts`` (whole electrons), a random p×p crop, a fresh binomial
    split A, B of the crop (a split is per-pixel, so splitting the crop equals cropping a split), a random
    dihedral (D4) transform and a random choice of which half is the input.  Both halves are normalised
    with the half-dose statistics of the *whole* image, μ/2 and √(μ/2) (module docstring).
    """
    inputs = np.empty((batch_size, 1, patch_px, patch_px), dtype=np.float32)
    targets = np.empty_like(inputs)
    for b in range(batch_size):
        image = counts[int(rng.integers(len(counts)))]
        ny, nx = image.shape
        y = int(rng.integers(0, ny - patch_px + 1))
        x = int(rng.integers(0, nx - patch_px + 1))
        crop = np.clip(np.rint(image[y : y + patch_px, x : x + patch_px]), 0, None).astype(np.int64)
        half_a = rng.binomial(crop, 0.5)
        half_b = crop - half_a
        mean = 0.5 * float(image.mean())
        scale = math.sqrt(mean)
        k = int(rng.integers(8))
        a = _d4(((half_a - mean) / scale).astype(np.float32), k)
        bb = _d4(((half_b - mean) / scale).astype(np.float32), k)
        if rng.random() < 0.5:
            a, bb = bb, a
        inputs[b, 0] = a
        targets[b, 0] = bb
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def train_noise2noise(
    counts: Sequence[npt.NDArray[np.float32]],
    model_config: DenoiserConfig,
    training: TrainingConfig,
    log_every: int = 0,
    initial: DenoiserUNet | None = None,
) -> tuple[DenoiserUNet, list[float]]:
    """Train a :class:`DenoiserUNet` by Noise2Noise on binomial splits of ``counts`` (L2 loss, Adam).

    With ``initial`` (e.g. the shipped model) training starts from a copy of its weights instead of a
    fresh initialisation: fine-tuning on one session's own micrographs, whose dose, defocus, ice and
    specimen differ from the simulated training set (``model_config`` must equal ``initial.config``).

    Parameters
    ----------
    counts : sequence of ndarray (ny, nx)
        Training micrographs in electron counts, each side ≥ ``training.patch_px``, mean > 0.
    model_config : DenoiserConfig
    training : TrainingConfig
    log_every : int
        Print the running loss every this many steps (0: silent).
    initial : DenoiserUNet, optional
        Start from a copy of these weights (fine-tuning); the original is not modified.

    Returns
    -------
    (DenoiserUNet, list of float)
        The trained model (eval mode, CPU) and the mean loss of each block of 100 steps.

    Raises
    ------
    ValueError
        For no images, images smaller than the patch, a patch not a multiple of the pooling factor, or
        images whose mean is not positive.
    """
    if not counts:
        raise ValueError("no training images")
    if training.patch_px % model_config.size_multiple_px:
        raise ValueError(f"patch_px must be a multiple of {model_config.size_multiple_px}")
    for image in counts:
        if image.ndim != 2 or min(image.shape) < training.patch_px:
            raise ValueError(f"training images must be 2-D with sides >= {training.patch_px}")
        if not float(image.mean()) > 2 * MIN_MEAN_COUNTS:
            raise ValueError("training images must be counts with a positive mean")
    if initial is not None and initial.config != model_config:
        raise ValueError("model_config must equal the initial model's config")
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    model = DenoiserUNet(model_config)
    if initial is not None:
        model.load_state_dict(initial.state_dict())
    optimiser = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(step, training.steps) / training.steps)),
    )
    history: list[float] = []
    running = 0.0
    model.train()
    for step in range(training.steps):
        source, target = sample_pair_batch(counts, training.batch_size, training.patch_px, rng)
        loss = nn.functional.mse_loss(model(source), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        schedule.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0:
            history.append(running / 100.0)
            running = 0.0
            if log_every and (step + 1) % log_every == 0:
                print(f"step {step + 1}: loss {history[-1]:.5f}", flush=True)
    model.eval()
    return model, history


def noise2noise_loss(
    model: DenoiserUNet, counts: Sequence[npt.NDArray[np.float32]], n_pairs: int, patch_px: int, seed: int
) -> float:
    """Mean L2 loss of ``model`` on ``n_pairs`` fresh binomial-split patch pairs of ``counts`` (no gradient).

    For independent halves A, B of the same counts, E‖f(A) − B‖² = E‖f(A) − s‖² + E‖B − s‖² with s the
    clean half-dose image (Lehtinen et al. 2018, "Noise2Noise", ICML): the second term does not depend on
    the model, so on the same pairs a lower loss means a smaller error against the unknown clean image.
    This is how a fine-tuned model is compared with the shipped one on a session's own data.
    """
    if n_pairs < 1:
        raise ValueError("n_pairs must be >= 1")
    rng = np.random.default_rng(seed)
    source, target = sample_pair_batch(counts, n_pairs, patch_px, rng)
    model.eval()
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(source), target))
