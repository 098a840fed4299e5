"""Template picking: the locally normalised cross-correlation of a micrograph with CTF-filtered class averages.

After a first round of 2D classification, cryoSPARC Live and RELION pick again with the selected class averages
as templates.  This module is that second picker.

Contrast
--------
The micrograph is the raw image at underfocus, particles **dark**, as the learned picker takes it (``learned``,
``dog``).  Templates are class averages with particles **white** (``classification``: Wiener averages of
contrast-inverted boxes).  A particle of projected density A appears in the micrograph as F⁻¹{CTF · F{A}} with
CTF = −sin χ (``optics``), negative at low frequency; filtering the white template by the micrograph's own CTF
therefore makes it dark like the particle, with its Thon-ring fringes, and no separate sign flip is needed.
For a contrast-inverted micrograph pass its negative.

Sampling
--------
The search runs at a working pixel size p_w = max(p, res/2), res = ``resolution_angstrom`` (default 20 Å: RELION's
autopicking low-passes its references, usually to 20 Å, against reference bias; Scheres 2015, J. Struct. Biol.
189:114): the micrograph is Fourier-cropped to M = round(N·p/p_w) pixels per axis (RELION's ``--shrink``), which
keeps its origin, so working pixel j is input position j·N/M; templates, at their own pixel size p_t, are
resampled onto the working grid by evaluating their discrete Fourier series at the new sample positions (exact
band-limited interpolation, any ratio p_w/p_t, the box centre B//2 kept on a sample).  Both are low-passed with a
raised cosine from 0.8 f_c to f_c = min(1/res, 1/(2 p_w), 1/(2 p_t)).  Per axis N/M differs from the mean by
< 0.5/M, the anisotropy of the working grid (< 0.5 % for M ≥ 100); templates use the mean.

Whitening
---------
Micrograph noise is coloured (ice and the inelastic background under the CTF, the detector's MTF), and the
correlation is the optimal (matched) filter only for white noise.  Micrograph and templates are therefore both
divided by √PS(|k|), PS the micrograph's own ring-averaged power spectrum at the working sampling (a three-ring
running mean), as high-resolution 2D template matching whitens its images (Rickgauer, Grigorieff & Denk 2017,
eLife 6:e25648).  On the simulated picking sets, leaving it out costs 0.09 F1 on average
(``benchmarks/results/template_picking.md``).

Score
-----
Each template is turned by the angles of ``in_plane_angles_deg(angle_step_deg)`` (bicubic, at its own sampling,
before the low-pass), resampled, filtered by the micrograph's CTF (in a box padded to twice its size, so the
fringes do not wrap), multiplied by the binary mask M of the particle circle (diameter d, N pixels) and
normalised to zero mean and unit variance inside it.  The fast local correlation function (FLCF; Roseman 2003,
Ultramicroscopy 94:225, as in FindEM and RELION's autopick) of template T at position x is

    C(x) = Σ_m M(m) T(m) f(x + m) / (N σ_f(x)),   σ_f(x)² = (1/N) Σ_m M(m) f(x + m)² − μ_f(x)²,

Pearson's correlation of the template with the micrograph under the mask at x, in [−1, 1]; the numerator and
the local moments are three FFT correlations (the local moments once per micrograph, the mask being the same
circle for every template and angle).  The micrograph is zero-padded (after subtracting its mean) by a template
box, so nothing wraps around; a particle half outside the image scores ≈ 1/√2 of a whole one, while noise keeps
the same spread.  The score map is the maximum of C over templates and angles per pixel, with the template and
angle that reach it.

Picks
-----
The map is expressed in robust standard deviations, z = (C − median)/(1.4826 MAD) over the image: the unit is the
spread of the map's background, which the maximum over templates and angles raises together with its median, so
one z threshold means about the same false-alarm rate for any number of templates and any micrograph (raw C
does not).  Candidates are 3 × 3 local maxima with
z ≥ ``threshold_sigma``, refined to sub-pixel by a parabola through their neighbours, mapped to input pixels and
accepted greedily, strongest first, unless closer than ``min_separation_diameter_fraction`` · d (0.8, as the
learned picker) to an accepted pick.  The default threshold, :data:`DEFAULT_THRESHOLD_SIGMA`, is set on pure-noise
micrographs (module constant's docstring).

Combination with the learned picker
-----------------------------------
:func:`confirm_learned_picks` keeps a learned pick when the template z within a quarter diameter of it reaches a
threshold (agreement); :func:`union_picks` adds to the learned picks the template picks that no learned pick is
near.  Measured on the simulated picking sets (``benchmarks/bench_template_picking.py``, results in
``benchmarks/results/template_picking.md``; 2 specimens × 3 SNR, templates from the selected 2D classes of 100–200
particles): the template picker alone reaches F1 0.30–0.82 at its calibrated threshold, against 0.88–0.96 for
the learned picker, with more of its picks on carbon and contamination (22–33 % against 2–10 %) and 2–4 times
its centre error.  No combination beats the learned picker alone by more than 0.005 F1: confirmation, calibrated,
lets nearly every learned pick through and equals it; union, and adding weaker learned picks the templates
confirm, lose up to 0.08 on rods.  On those sets the learned picker alone wins; whether templates help where the
learned picker is out of its training distribution (real data) is not measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cryodecon_science.classification.geometry import in_plane_angles_deg, rotate_images
from cryodecon_science.optics import CtfParams, MicroscopeSettings, ctf_2d

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

DEFAULT_RESOLUTION_ANGSTROM = 20.0
"""Low-pass of micrograph and templates, Å: the usual low-pass of RELION's autopicking references (Scheres 2015)."""
DEFAULT_ANGLE_STEP_DEG = 10.0
"""In-plane rotation step, degrees.  The nearest grid angle is off by ≤ 5°, which moves the particle's rim by
≤ 0.087 r: 0.65 working pixels for r = 7.5 (150 Å at 10 Å/px), 1.1 for r = 12.5 (250 Å)."""
DEFAULT_THRESHOLD_SIGMA = 5.0
"""Score threshold in robust standard deviations of the score map, set on pure noise: white and CTF-coloured noise
micrographs (1024² at 1 and 2 Å/px, 512² at 4 Å/px; 1 and 4 class averages as templates, 10° step; 8 draws each)
gave at most 0.15 picks per 10⁴ working pixels at 5 σ (at most 0.6 per micrograph), 0.12–0.54 at 4.5 σ and none
at 6.5 σ.  A
false-alarm bound, not an optimum: on the simulated picking sets particles score 2–6 σ against the templates of a
short session's 2D classes, and the threshold with the best F1 there is 1.5–4.25 σ (``benchmarks/results/
template_picking.md``, calibrated rows); calibrate it where truth, or 2D classification of the picks, allows."""
MIN_SEPARATION_DIAMETER_FRACTION = 0.8
"""Picks closer than this fraction of the particle diameter to a stronger pick are suppressed (as ``learned``)."""
LOWPASS_EDGE_FRACTION = 0.8
"""The low-pass is 1 up to this fraction of its cut-off frequency and a raised cosine to 0 at the cut-off."""
CONFIRM_RADIUS_DIAMETER_FRACTION = 0.25
"""A learned pick is scored by the template map's maximum within this fraction of a diameter of it."""
MAD_TO_SIGMA = 1.4826
"""Standard deviation of a normal sample per unit median absolute deviation."""
_CHUNK_ELEMENTS = 1 << 23
"""Largest batch of correlation maps held at once, float32 elements (≈ 32 MB)."""
_FLAT_RELATIVE = 1e-6
"""Local standard deviation below this fraction of the image's is no contrast: the score there is 0."""


class TemplatePickingError(ValueError):
    """Bad input to template picking: empty or non-square templates, non-finite values, sizes that do not fit."""


@dataclass(frozen=True, eq=False)
class TemplateStack:
    """Templates for picking: class averages, particles white, on a common square box.

    Attributes
    ----------
    images : ndarray, shape (K, B, B), float32
        K ≥ 1 templates [y, x], particle centre at index (B//2, B//2) (``classification`` conventions).
    pixel_size_angstrom : float
        Their sampling p_t, Å per pixel (may differ from the micrograph's).
    """

    images: Float32Array
    pixel_size_angstrom: float

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 3:
            raise TemplatePickingError(f"templates must have shape (K, B, B), got {images.shape}")
        if images.shape[0] == 0:
            raise TemplatePickingError("no templates (K = 0)")
        if images.shape[1] != images.shape[2]:
            raise TemplatePickingError(f"templates must be square, got {images.shape[1]} x {images.shape[2]}")
        if images.shape[1] < 4:
            raise TemplatePickingError(f"templates must be at least 4 x 4 pixels, got {images.shape[1]}")
        if not np.all(np.isfinite(images)):
            raise TemplatePickingError("templates contain NaN or Inf")
        if not (math.isfinite(self.pixel_size_angstrom) and self.pixel_size_angstrom > 0):
            raise TemplatePickingError(f"template pixel_size_angstrom must be positive, got {self.pixel_size_angstrom}")

    @property
    def n_templates(self) -> int:
        """K."""
        return int(self.images.shape[0])

    @property
    def box_px(self) -> int:
        """B."""
        return int(self.images.shape[1])


@dataclass(frozen=True)
class TemplatePickingConfig:
    """Settings of :func:`template_score_map` and :func:`pick_particles_template` (module docstring).

    Attributes
    ----------
    angle_step_deg : float
        In-plane rotation step, degrees (0, 180].
    resolution_angstrom : float
        Low-pass of micrograph and templates, Å; the working pixel size is half of it (or the micrograph's).
    threshold_sigma : float
        Score a pick needs, in robust standard deviations of the score map.
    min_separation_diameter_fraction : float
        Picks are at least this fraction of the particle diameter apart.
    ctf_filter : bool
        Filter templates by the micrograph's CTF (True), or only invert their contrast (False: a dark template
        without Thon-ring fringes, what a phase-flipped micrograph would need; a control).
    whiten : bool
        Divide micrograph and templates by the square root of the micrograph's ring-averaged power spectrum.
    bfactor_angstrom2 : float
        B of an envelope exp(−B k²/4) applied with the CTF, Å² (0: none).
    """

    angle_step_deg: float = DEFAULT_ANGLE_STEP_DEG
    resolution_angstrom: float = DEFAULT_RESOLUTION_ANGSTROM
    threshold_sigma: float = DEFAULT_THRESHOLD_SIGMA
    min_separation_diameter_fraction: float = MIN_SEPARATION_DIAMETER_FRACTION
    ctf_filter: bool = True
    whiten: bool = True
    bfactor_angstrom2: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.angle_step_deg <= 180.0:
            raise TemplatePickingError(f"angle_step_deg must lie in (0, 180], got {self.angle_step_deg}")
        if not (math.isfinite(self.resolution_angstrom) and self.resolution_angstrom > 0):
            raise TemplatePickingError(f"resolution_angstrom must be positive, got {self.resolution_angstrom}")
        if not math.isfinite(self.threshold_sigma):
            raise TemplatePickingError(f"threshold_sigma must be finite, got {self.threshold_sigma}")
        if not self.min_separation_diameter_fraction >= 0:
            raise TemplatePickingError("min_separation_diameter_fraction must be >= 0")
        if not (math.isfinite(self.bfactor_angstrom2) and self.bfactor_angstrom2 >= 0):
            raise TemplatePickingError(f"bfactor_angstrom2 must be >= 0, got {self.bfactor_angstrom2}")


@dataclass(frozen=True, eq=False)
class TemplateScoreMap:
    """FLCF maximum over templates and angles at the working sampling (module docstring).

    Attributes
    ----------
    score : ndarray, shape (my, mx), float32
        max over templates and angles of C(x), in [−1, 1]; working pixel j ↔ input position j · scale.
    template_index : ndarray, shape (my, mx), int64
        Template reaching the maximum.
    angle_index : ndarray, shape (my, mx), int64
        Index into ``angles_deg`` of the rotation reaching it.
    angles_deg : ndarray, shape (n_angles,), float64
        The rotation grid, degrees, counter-clockwise in the (x, y) index plane (``classification.geometry``).
    scale_yx : tuple of float
        Input pixels per working pixel (N_y/M_y, N_x/M_x).
    input_shape_px : tuple of int
        (N_y, N_x) of the micrograph.
    pixel_size_angstrom : float
        The micrograph's sampling p, Å.
    working_pixel_size_angstrom : float
        p · mean(scale), Å.
    median, sigma : float
        Median and 1.4826 × MAD of ``score`` (σ > 0): the units of the thresholds.
    particle_diameter_angstrom : float
        d, Å.
    """

    score: Float32Array
    template_index: IntArray
    angle_index: IntArray
    angles_deg: FloatArray
    scale_yx: tuple[float, float]
    input_shape_px: tuple[int, int]
    pixel_size_angstrom: float
    working_pixel_size_angstrom: float
    median: float
    sigma: float
    particle_diameter_angstrom: float

    def score_sigma(self) -> FloatArray:
        """The map in robust standard deviations, (C − median)/σ; (my, mx) float64."""
        return np.asarray((self.score.astype(np.float64) - self.median) / self.sigma, dtype=np.float64)

    def sigma_near(self, coords_yx_px: npt.ArrayLike, radius_px: float) -> FloatArray:
        """Highest z = (C − median)/σ within ``radius_px`` (input pixels) of each point [y, x] (input pixels),
        the nearest working pixel always included; (n,) float64 (−inf for a point outside the image)."""
        if not radius_px >= 0:
            raise TemplatePickingError(f"radius_px must be >= 0, got {radius_px}")
        points = np.asarray(coords_yx_px, dtype=np.float64).reshape(-1, 2)
        z = self.score_sigma()
        my, mx = z.shape
        scale = np.asarray(self.scale_yx)
        out = np.full(points.shape[0], -np.inf, dtype=np.float64)
        reach_y, reach_x = radius_px / scale[0], radius_px / scale[1]
        for i, (y, x) in enumerate(points / scale):
            cy, cx = round(float(y)), round(float(x))
            if not (0 <= cy < my and 0 <= cx < mx):
                continue
            y0, y1 = max(cy - math.ceil(reach_y), 0), min(cy + math.ceil(reach_y) + 1, my)
            x0, x1 = max(cx - math.ceil(reach_x), 0), min(cx + math.ceil(reach_x) + 1, mx)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            inside = (yy == cy) & (xx == cx)
            if radius_px > 0:
                inside |= ((yy - y) / reach_y) ** 2 + ((xx - x) / reach_x) ** 2 <= 1.0
            out[i] = float(z[y0:y1, x0:x1][inside].max())
        return out


@dataclass(frozen=True, eq=False)
class TemplatePicks:
    """Particle centres found by :func:`pick_particles_template`.

    Attributes
    ----------
    coords_yx_px : ndarray, shape (n, 2), float64
        Centres [y, x] in input pixels (pixel centres at integer coordinates), strongest first, inside the image.
    score_sigma : ndarray, shape (n,), float64
        Peak z = (C − median)/σ of the score map, descending (the figure of merit).
    score : ndarray, shape (n,), float64
        Peak FLCF value C ∈ [−1, 1].
    template_index : ndarray, shape (n,), int64
        Best template at each pick.
    angle_deg : ndarray, shape (n,), float64
        Best in-plane angle at each pick, degrees: the particle looks like the template turned by it
        (counter-clockwise in the (x, y) index plane).
    threshold_sigma : float
        The threshold the picks were accepted at, σ.
    """

    coords_yx_px: FloatArray
    score_sigma: FloatArray
    score: FloatArray
    template_index: IntArray
    angle_deg: FloatArray
    threshold_sigma: float

    @property
    def n_picks(self) -> int:
        """Number of picks."""
        return int(self.coords_yx_px.shape[0])

    def above(self, threshold_sigma: float) -> TemplatePicks:
        """The picks with z ≥ ``threshold_sigma`` (≥ ``self.threshold_sigma``): the same as picking at that threshold
        (greedy suppression depends only on stronger picks)."""
        if threshold_sigma < self.threshold_sigma:
            raise TemplatePickingError(
                f"threshold {threshold_sigma} is below the one picked at ({self.threshold_sigma})"
            )
        keep = self.score_sigma >= threshold_sigma
        return TemplatePicks(
            self.coords_yx_px[keep],
            self.score_sigma[keep],
            self.score[keep],
            self.template_index[keep],
            self.angle_deg[keep],
            float(threshold_sigma),
        )


# ------------------------------------------------------------------------------------------- sampling
def _fast_length(n: int) -> int:
    """Smallest 2-3-5-smooth integer ≥ n (a fast FFT length)."""
    m = max(n, 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _lowpass(frequency_per_angstrom: torch.Tensor, cutoff_per_angstrom: float) -> torch.Tensor:
    """1 below 0.8 f_c, ½(1 + cos π(f − 0.8 f_c)/(0.2 f_c)) to 0 at f_c, 0 beyond."""
    start = LOWPASS_EDGE_FRACTION * cutoff_per_angstrom
    t = ((frequency_per_angstrom - start) / (cutoff_per_angstrom - start)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def _working_shape(
    shape_px: tuple[int, int], pixel_size_angstrom: float, working_target_angstrom: float
) -> tuple[int, int]:
    """M = round(N p / p_w) per axis, between 2 and N."""
    ratio = pixel_size_angstrom / working_target_angstrom
    ny, nx = shape_px
    return min(ny, max(2, round(ny * ratio))), min(nx, max(2, round(nx * ratio)))


def _frequency_grid(
    shape_px: tuple[int, int], pixel_size_yx_angstrom: tuple[float, float], device: torch.device
) -> torch.Tensor:
    """|k| in 1/Å on the rfft grid of an image of ``shape_px`` sampled at (p_y, p_x)."""
    ky = torch.fft.fftfreq(shape_px[0], d=pixel_size_yx_angstrom[0], device=device)
    kx = torch.fft.rfftfreq(shape_px[1], d=pixel_size_yx_angstrom[1], device=device)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


@dataclass(frozen=True, eq=False)
class _Whitening:
    """w(|k|) = 1/√PS(|k|) from the micrograph's ring-averaged power spectrum, rings of width ``bin_width``."""

    bin_width_per_angstrom: float
    weights: torch.Tensor

    @classmethod
    def flat(cls, device: torch.device) -> _Whitening:
        return cls(1.0, torch.ones(1, device=device))

    @classmethod
    def of(cls, spectrum: torch.Tensor, frequency: torch.Tensor, cutoff_per_angstrom: float) -> _Whitening:
        bin_width = float(frequency[1:, 0].min()) if frequency.shape[0] > 1 else float(frequency[0, 1])
        index = (frequency / bin_width).long().flatten()
        power = spectrum.abs().flatten() ** 2
        n_bins = int(index.max()) + 1
        total = torch.zeros(n_bins, device=spectrum.device, dtype=power.dtype).index_add_(0, index, power)
        count = torch.zeros(n_bins, device=spectrum.device, dtype=power.dtype).index_add_(
            0, index, torch.ones_like(power)
        )
        ring = total / count.clamp_min(1.0)
        # Three-ring running mean: a ring of the power spectrum is a noisy estimate of PS.
        padded = nn.functional.pad(ring[None, None], (1, 1), mode="replicate")[0, 0]
        smooth = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
        inside = torch.arange(n_bins, device=spectrum.device) * bin_width <= cutoff_per_angstrom
        level = float(smooth[inside].max()) if bool(inside.any()) else 1.0
        weights = torch.where(inside, 1.0 / torch.sqrt(smooth.clamp_min(1e-12 * level)), torch.zeros_like(smooth))
        weights = weights / weights[inside].mean()
        return cls(bin_width, weights.to(torch.float32))

    def at(self, frequency: torch.Tensor) -> torch.Tensor:
        index = (frequency / self.bin_width_per_angstrom).long().clamp(0, self.weights.shape[0] - 1)
        return self.weights[index]


def _working_micrograph(
    image: torch.Tensor,
    pixel_size_angstrom: float,
    working_shape_px: tuple[int, int],
    cutoff_per_angstrom: float,
    whiten: bool,
) -> tuple[torch.Tensor, _Whitening]:
    """Mean-subtracted micrograph Fourier-cropped to ``working_shape_px`` (M_y, M_x), whitened (optionally) and
    low-passed; and the whitening filter."""
    ny, nx = int(image.shape[0]), int(image.shape[1])
    my, mx = working_shape_px
    spectrum = torch.fft.rfft2(image - image.mean())
    keep_low = (my + 1) // 2
    rows = torch.cat([spectrum[:keep_low], spectrum[ny - (my - keep_low) :]], dim=0)[:, : mx // 2 + 1]
    frequency = _frequency_grid((my, mx), (pixel_size_angstrom * ny / my, pixel_size_angstrom * nx / mx), image.device)
    whitening = _Whitening.of(rows, frequency, cutoff_per_angstrom) if whiten else _Whitening.flat(image.device)
    window = _lowpass(frequency, cutoff_per_angstrom) * whitening.at(frequency)
    return torch.fft.irfft2(rows * window, s=(my, mx)) * (my * mx) / (ny * nx), whitening


def _resample_templates(
    images: torch.Tensor, pixel_size_angstrom: float, working_angstrom: float, box_px: int, cutoff_per_angstrom: float
) -> torch.Tensor:
    """Templates (n, B, B) at p_t → (n, B_w, B_w) at p_w by their Fourier series, low-passed; centre B//2 → B_w//2."""
    box = int(images.shape[-1])
    device = images.device
    spectrum = torch.fft.fft2(torch.fft.ifftshift(images.to(torch.float64), dim=(-2, -1)))
    k = torch.fft.fftfreq(box, device=device, dtype=torch.float64) * box  # integer wave numbers
    frequency = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2) / (box * pixel_size_angstrom)
    window = _lowpass(frequency, cutoff_per_angstrom)
    if box % 2 == 0:  # the Nyquist line has no partner: leave it out
        window[box // 2, :] = 0.0
        window[:, box // 2] = 0.0
    positions = (torch.arange(box_px, device=device, dtype=torch.float64) - box_px // 2) * (
        working_angstrom / pixel_size_angstrom
    )
    basis = torch.exp(2j * math.pi * positions[:, None] * k[None, :] / box)  # (B_w, B)
    resampled: torch.Tensor = basis @ (spectrum * window) @ basis.T
    return (resampled.real / box**2).to(torch.float32)


def _circle(box_px: int, radius_px: float, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(box_px, device=device, dtype=torch.float32) - box_px // 2
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius_px**2).to(torch.float32)


def _prepared_templates(
    templates: TemplateStack,
    angles_deg: FloatArray,
    ctf: CtfParams,
    microscope: MicroscopeSettings,
    working_angstrom: float,
    cutoff_per_angstrom: float,
    mask: torch.Tensor,
    whitening: _Whitening,
    config: TemplatePickingConfig,
    device: torch.device,
) -> torch.Tensor:
    """Rotated, resampled, CTF-filtered, masked, normalised templates (K·n_angles, B_w, B_w), template-major."""
    box_w = int(mask.shape[0])
    images = torch.as_tensor(np.asarray(templates.images, dtype=np.float32), device=device)
    n_angles = len(angles_deg)
    stack = images.repeat_interleave(n_angles, dim=0)
    angles = torch.as_tensor(np.tile(angles_deg, templates.n_templates), device=device, dtype=torch.float32)
    rotated = rotate_images(stack, angles, mode="bicubic")
    resampled = _resample_templates(
        rotated, templates.pixel_size_angstrom, working_angstrom, box_w, cutoff_per_angstrom
    )
    padded_px = 2 * box_w
    frequency = _frequency_grid((padded_px, padded_px), (working_angstrom, working_angstrom), device)
    if config.ctf_filter:
        optics = MicroscopeSettings(
            microscope.voltage_kv,
            microscope.spherical_aberration_mm,
            microscope.amplitude_contrast_fraction,
            pixel_size_angstrom=working_angstrom,
        )
        transfer = ctf_2d(
            ctf, optics, (padded_px, padded_px), bfactor_angstrom2=config.bfactor_angstrom2, device=device
        )
    else:
        transfer = -torch.ones_like(frequency)
    start = box_w // 2
    padded = nn.functional.pad(resampled, (start, padded_px - box_w - start, start, padded_px - box_w - start))
    spectrum = torch.fft.rfft2(padded) * (transfer * whitening.at(frequency))
    dark = torch.fft.irfft2(spectrum, s=(padded_px, padded_px))[:, start : start + box_w, start : start + box_w]
    n_mask = float(mask.sum())
    mean = (dark * mask).sum(dim=(-2, -1), keepdim=True) / n_mask
    centred = (dark - mean) * mask
    power = (centred**2).sum(dim=(-2, -1), keepdim=True)
    total = (dark**2).sum(dim=(-2, -1), keepdim=True)
    flat = ((power <= 1e-10 * total) | (power == 0)).flatten()
    if bool(flat.any()):
        first = int(torch.nonzero(flat)[0]) // n_angles
        raise TemplatePickingError(f"template {first} is constant inside the particle circle after filtering")
    normalised: torch.Tensor = centred * torch.sqrt(n_mask / power)
    return normalised


def _embedded_spectra(boxes: torch.Tensor, padded_yx: tuple[int, int]) -> torch.Tensor:
    """rfft2 of boxes (n, B, B) placed with their centre B//2 at index (0, 0) of a (P_y, P_x) array."""
    box = int(boxes.shape[-1])
    py, px = padded_yx
    canvas = torch.zeros((boxes.shape[0], py, px), device=boxes.device, dtype=torch.float32)
    canvas[:, :box, :box] = boxes
    spectra: torch.Tensor = torch.fft.rfft2(torch.roll(canvas, shifts=(-(box // 2), -(box // 2)), dims=(-2, -1)))
    return spectra


# ------------------------------------------------------------------------------------------- scoring
def _checked_micrograph(micrograph: npt.ArrayLike | torch.Tensor, device: torch.device) -> torch.Tensor:
    x = (
        micrograph.detach()
        if isinstance(micrograph, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(micrograph, dtype=np.float64))
    )
    if x.ndim != 2:
        raise TemplatePickingError(f"micrograph must be 2-D [y, x], got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise TemplatePickingError("micrograph contains NaN or Inf")
    return x.to(device=device, dtype=torch.float32)


def template_score_map(
    micrograph: npt.ArrayLike | torch.Tensor,
    microscope: MicroscopeSettings,
    ctf: CtfParams,
    templates: TemplateStack,
    particle_diameter_angstrom: float,
    config: TemplatePickingConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> TemplateScoreMap:
    """FLCF of a micrograph with CTF-filtered, rotated templates, maximised per pixel (module docstring).

    Parameters
    ----------
    micrograph : array_like or Tensor, shape (N_y, N_x)
        Raw micrograph at underfocus (particles dark), counts or any affine function of them, [y, x].
    microscope : MicroscopeSettings
        Voltage, C_s, amplitude contrast w and the micrograph's pixel size p (Å/px).
    ctf : CtfParams
        The micrograph's defocus U ≥ V (Å, positive underfocus), astigmatism angle (deg) and phase shift.
    templates : TemplateStack
        Class averages, particles white, at their own pixel size p_t.
    particle_diameter_angstrom : float
        d, Å: the diameter of the correlation mask (and of the pick separation).
    config : TemplatePickingConfig, optional
    device : torch.device or str
        Where the FFTs run.

    Returns
    -------
    TemplateScoreMap

    Raises
    ------
    TemplatePickingError (a ValueError)
        For a non-2-D or non-finite micrograph, a non-positive diameter, templates whose box is smaller than the
        particle diameter, a micrograph smaller than the template box, or a template that is constant inside the
        particle circle.
    """
    settings = config or TemplatePickingConfig()
    target = torch.device(device)
    if not (math.isfinite(particle_diameter_angstrom) and particle_diameter_angstrom > 0):
        raise TemplatePickingError(f"particle_diameter_angstrom must be positive, got {particle_diameter_angstrom}")
    pixel = microscope.pixel_size_angstrom
    field_angstrom = templates.box_px * templates.pixel_size_angstrom
    if field_angstrom < particle_diameter_angstrom:
        raise TemplatePickingError(
            f"the templates' box ({field_angstrom:.1f} Å) is smaller than the particle diameter "
            f"({particle_diameter_angstrom:.1f} Å)"
        )
    image = _checked_micrograph(micrograph, target)
    ny, nx = int(image.shape[0]), int(image.shape[1])
    if min(ny, nx) * pixel < field_angstrom:
        raise TemplatePickingError(
            f"the micrograph ({ny} x {nx} px at {pixel:g} Å/px) is smaller than the templates' box "
            f"({field_angstrom:.1f} Å)"
        )
    my, mx = _working_shape((ny, nx), pixel, max(pixel, 0.5 * settings.resolution_angstrom))
    scale = (ny / my, nx / mx)
    working = pixel * 0.5 * (scale[0] + scale[1])
    cutoff = min(1.0 / settings.resolution_angstrom, 0.5 / working, 0.5 / templates.pixel_size_angstrom)
    working_image, whitening = _working_micrograph(image, pixel, (my, mx), cutoff, settings.whiten)

    box_w = 2 * math.ceil(0.5 * field_angstrom / working)
    radius_w = 0.5 * particle_diameter_angstrom / working
    mask = _circle(box_w, radius_w, target)
    n_mask = float(mask.sum())
    angles = in_plane_angles_deg(settings.angle_step_deg)
    prepared = _prepared_templates(
        templates, angles, ctf, microscope, working, cutoff, mask, whitening, settings, target
    )

    padded_yx = (_fast_length(my + box_w), _fast_length(mx + box_w))
    canvas = torch.zeros(padded_yx, device=target, dtype=torch.float32)
    canvas[:my, :mx] = working_image
    image_ft = torch.fft.rfft2(canvas)
    square_ft = torch.fft.rfft2(canvas**2)
    mask_ft = _embedded_spectra(mask[None], padded_yx)[0].conj()
    local_sum = torch.fft.irfft2(mask_ft * image_ft, s=padded_yx)[:my, :mx]
    local_square = torch.fft.irfft2(mask_ft * square_ft, s=padded_yx)[:my, :mx]
    local_var = (local_square / n_mask - (local_sum / n_mask) ** 2).clamp_min(0.0)
    flat_level = (_FLAT_RELATIVE * float(working_image.std())) ** 2
    denominator = torch.where(
        local_var > flat_level, n_mask * torch.sqrt(local_var), torch.full_like(local_var, math.inf)
    )

    best = torch.full((my, mx), -math.inf, device=target, dtype=torch.float32)
    best_index = torch.zeros((my, mx), device=target, dtype=torch.int64)
    chunk = max(1, _CHUNK_ELEMENTS // (padded_yx[0] * padded_yx[1]))
    for start in range(0, prepared.shape[0], chunk):
        spectra = _embedded_spectra(prepared[start : start + chunk], padded_yx).conj()
        correlation = torch.fft.irfft2(spectra * image_ft, s=padded_yx)[:, :my, :mx] / denominator
        value, index = correlation.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + start, best_index)
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    score = best.cpu().numpy().astype(np.float32)
    index_np = best_index.cpu().numpy().astype(np.int64)
    median = float(np.median(score))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(score - median)))
    if not sigma > 0:
        sigma = float(score.std()) if float(score.std()) > 0 else 1.0
    return TemplateScoreMap(
        score=score,
        template_index=index_np // len(angles),
        angle_index=index_np % len(angles),
        angles_deg=angles,
        scale_yx=scale,
        input_shape_px=(ny, nx),
        pixel_size_angstrom=float(pixel),
        working_pixel_size_angstrom=working,
        median=median,
        sigma=sigma,
        particle_diameter_angstrom=float(particle_diameter_angstrom),
    )


# ------------------------------------------------------------------------------------------- decoding
def _parabolic_offset(minus: FloatArray, centre: FloatArray, plus: FloatArray) -> FloatArray:
    """Vertices of the parabolas through (−1, minus), (0, centre), (1, plus), limited to ±½ (0 if not concave)."""
    curvature = minus - 2.0 * centre + plus
    safe = np.where(curvature < 0, curvature, -1.0)
    return np.asarray(np.where(curvature < 0, np.clip(0.5 * (minus - plus) / safe, -0.5, 0.5), 0.0), dtype=np.float64)


def picks_from_score_map(
    score_map: TemplateScoreMap,
    threshold_sigma: float = DEFAULT_THRESHOLD_SIGMA,
    min_separation_diameter_fraction: float = MIN_SEPARATION_DIAMETER_FRACTION,
) -> TemplatePicks:
    """Peaks of a score map at or above ``threshold_sigma``, at least the given fraction of a diameter apart.

    3 × 3 local maxima of z, parabolic sub-pixel refinement, working → input pixels (y = y_w · s_y), centres
    outside the image dropped, greedy suppression strongest first (module docstring, Picks).
    """
    if not math.isfinite(threshold_sigma):
        raise TemplatePickingError(f"threshold_sigma must be finite, got {threshold_sigma}")
    z = score_map.score_sigma()
    z_t = torch.from_numpy(z)
    local_max = nn.functional.max_pool2d(z_t[None, None], 3, stride=1, padding=1)[0, 0].numpy()
    peaks = np.argwhere((z >= local_max) & (z >= threshold_sigma)).astype(np.int64)
    empty = TemplatePicks(
        np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0), float(threshold_sigma)
    )
    if peaks.shape[0] == 0:
        return empty
    values = z[peaks[:, 0], peaks[:, 1]]
    order = np.argsort(-values, kind="stable")
    peaks, values = peaks[order], values[order]
    padded = np.pad(z, 1, mode="edge")
    py, px = peaks[:, 0] + 1, peaks[:, 1] + 1
    dy = _parabolic_offset(padded[py - 1, px], padded[py, px], padded[py + 1, px])
    dx = _parabolic_offset(padded[py, px - 1], padded[py, px], padded[py, px + 1])
    centres = np.stack([peaks[:, 0] + dy, peaks[:, 1] + dx], axis=1) * np.asarray(score_map.scale_yx)
    ny, nx = score_map.input_shape_px
    inside = (centres[:, 0] >= 0) & (centres[:, 0] <= ny - 1) & (centres[:, 1] >= 0) & (centres[:, 1] <= nx - 1)
    diameter_px = score_map.particle_diameter_angstrom / score_map.pixel_size_angstrom
    min_distance2 = (min_separation_diameter_fraction * diameter_px) ** 2
    accepted: list[int] = []
    for i in np.flatnonzero(inside):
        if accepted and float(np.min(np.sum((centres[accepted] - centres[i]) ** 2, axis=1))) < min_distance2:
            continue
        accepted.append(int(i))
    keep = np.asarray(accepted, dtype=np.int64)
    rows, cols = peaks[keep, 0], peaks[keep, 1]
    return TemplatePicks(
        coords_yx_px=np.asarray(centres[keep], dtype=np.float64),
        score_sigma=np.asarray(values[keep], dtype=np.float64),
        score=score_map.score[rows, cols].astype(np.float64),
        template_index=score_map.template_index[rows, cols].astype(np.int64),
        angle_deg=score_map.angles_deg[score_map.angle_index[rows, cols]].astype(np.float64),
        threshold_sigma=float(threshold_sigma),
    )


def pick_particles_template(
    micrograph: npt.ArrayLike | torch.Tensor,
    microscope: MicroscopeSettings,
    ctf: CtfParams,
    templates: TemplateStack,
    particle_diameter_angstrom: float,
    config: TemplatePickingConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> TemplatePicks:
    """Pick particles by template matching: :func:`template_score_map`, then :func:`picks_from_score_map` with the
    config's threshold and separation (parameters and errors as :func:`template_score_map`)."""
    settings = config or TemplatePickingConfig()
    score_map = template_score_map(
        micrograph, microscope, ctf, templates, particle_diameter_angstrom, settings, device=device
    )
    return picks_from_score_map(score_map, settings.threshold_sigma, settings.min_separation_diameter_fraction)


# ------------------------------------------------------------------------------------------- combination
def confirm_learned_picks(
    learned_coords_yx_px: npt.ArrayLike,
    score_map: TemplateScoreMap,
    threshold_sigma: float,
    radius_diameter_fraction: float = CONFIRM_RADIUS_DIAMETER_FRACTION,
) -> npt.NDArray[np.bool_]:
    """Which learned picks the templates confirm: template z within ``radius_diameter_fraction`` · d of the pick
    (input pixels) at or above ``threshold_sigma``; (n,) bool.  The radius allows for the learned centre's error
    and the working pixel."""
    coords = np.asarray(learned_coords_yx_px, dtype=np.float64).reshape(-1, 2)
    radius_px = radius_diameter_fraction * score_map.particle_diameter_angstrom / score_map.pixel_size_angstrom
    return np.asarray(score_map.sigma_near(coords, radius_px) >= threshold_sigma, dtype=np.bool_)


def union_picks(
    learned_coords_yx_px: npt.ArrayLike, template_coords_yx_px: npt.ArrayLike, min_distance_px: float
) -> FloatArray:
    """The learned picks followed by the template picks farther than ``min_distance_px`` from every learned pick;
    (n, 2) float64 [y, x]."""
    learned = np.asarray(learned_coords_yx_px, dtype=np.float64).reshape(-1, 2)
    extra = np.asarray(template_coords_yx_px, dtype=np.float64).reshape(-1, 2)
    if learned.shape[0] and extra.shape[0]:
        distance = np.linalg.norm(extra[:, None, :] - learned[None, :, :], axis=2).min(axis=1)
        extra = extra[distance >= min_distance_px]
    return np.asarray(np.concatenate([learned, extra], axis=0), dtype=np.float64)
