"""Adapting the learned picker to a session from its own confident picks (self-training).

The shipped picker (``learned``) was trained on simulated micrographs; a session's particles differ in
shape, ice and optics from anything it saw.  Self-training (pseudo-labelling: Lee 2013, ICML workshop
"Pseudo-label"; Xie et al. 2020, "Noisy student", CVPR) fine-tunes it on the session's own micrographs
with targets taken from its own output, as Topaz (Bepler et al. 2019, Nat. Methods 16:1153) trains from a
few positives and treats the rest as unlabelled:

* **positives** — candidates the region rules keep (``junk.classify_picks`` reason "ok") with heatmap peak
  p ≥ ``confident_p``: CenterNet Gaussians as in training (``learned.heatmap_target``);
* **left out of the loss** — a disc of one particle radius about every other peak with p ≥ ``floor_p``
  (uncertain candidates, and particles on carbon or under contamination, whose labels the picker itself
  cannot give);
* **negatives** — every other pixel: background the picker already scores below ``floor_p``.

The loss is the training loss (penalty-reduced focal loss) with those pixels weighted 0; a few hundred
Adam steps at a fifth of the training rate from the shipped weights, on D4-augmented random crops.  The
fine-tuned copy re-picks the same micrographs (transductive: no labels from outside the session enter).
With fewer than ``min_positives`` confident picks nothing is learned and the shipped model is returned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.picking.junk import REASON_OK
from cryodecon_science.picking.learned import (
    EDGE_PADDING_BINNED_PX,
    HEATMAP_SIGMA_RADIUS_FRACTION,
    PickerUNet,
    _d4,
    bin_for_picking,
    centre_focal_loss,
    heatmap_target,
    pick_particles_learned,
)
from cryodecon_science.picking.micrograph import MicrographPicks, pick_micrograph

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AdaptationConfig:
    """Schedule of :func:`adapt_picker`.

    Attributes
    ----------
    steps : int
        Adam steps (0: no adaptation).
    batch_size : int
        Patches per step.
    patch_binned_px : int
        Patch edge, binned pixels (a multiple of the model's ``size_multiple_px``).
    learning_rate : float
        Constant Adam learning rate.
    confident_p : float
        Heatmap peak a kept candidate needs to be a positive.
    floor_p : float
        Peaks at or above this, not positives, are left out of the loss (a disc of one radius).
    min_positives : int
        Fewest confident picks over the micrographs worth adapting to.
    focal_alpha, focal_beta : float
        Exponents of the focal loss (as in training).
    seed : int
        Seed of the patch sampling and augmentation.
    """

    steps: int = 200
    batch_size: int = 8
    patch_binned_px: int = 64
    learning_rate: float = 2e-4
    confident_p: float = 0.5
    floor_p: float = 0.05
    min_positives: int = 20
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.patch_binned_px < 16 or not self.learning_rate > 0:
            raise ValueError("steps >= 0, batch_size >= 1, patch_binned_px >= 16 and learning_rate > 0 required")
        if not 0.0 < self.floor_p < self.confident_p < 1.0:
            raise ValueError(f"need 0 < floor_p < confident_p < 1, got {self.floor_p}, {self.confident_p}")


@dataclass(frozen=True)
class AdaptationReport:
    """What :func:`adapt_picker` learned from.

    Attributes
    ----------
    adapted : bool
        Whether the model was fine-tuned (False: too few confident picks, or ``steps`` 0).
    n_micrographs : int
        Micrographs adapted on.
    n_positives : int
        Confident kept picks used as positives.
    n_left_out : int
        Other peaks ≥ ``floor_p`` left out of the loss.
    loss_start, loss_end : float
        Mean weighted loss of the first and last tenth of the steps (nan when not adapted).
    """

    adapted: bool
    n_micrographs: int
    n_positives: int
    n_left_out: int
    loss_start: float
    loss_end: float


def _disc_mask(shape: tuple[int, int], centres_yx: npt.NDArray[np.float64], radius_px: float) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    half = math.ceil(radius_px)
    for cy, cx in centres_yx:
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 2, shape[0])
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 2, shape[1])
        if y1 <= y0 or x1 <= x0:
            continue
        mask[y0:y1, x0:x1] |= (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= radius_px**2
    return mask


def adapt_picker(
    model: PickerUNet,
    images: Sequence[npt.ArrayLike],
    pixel_size_angstrom: float,
    particle_diameter_angstrom: float,
    confident_yx_px: Sequence[npt.ArrayLike],
    config: AdaptationConfig | None = None,
) -> tuple[PickerUNet, AdaptationReport]:
    """Fine-tune a copy of ``model`` on a session's micrographs from its own confident picks (module docstring).

    Parameters
    ----------
    model : PickerUNet
        The picker to start from (left unchanged).
    images : sequence of array_like, each (ny, nx)
        Raw micrographs of the session (particles dark), [y, x].
    pixel_size_angstrom, particle_diameter_angstrom : float
        Sampling (Å/pixel) and particle diameter d (Å) of every image.
    confident_yx_px : sequence of array_like, each (n_i, 2)
        Per image, the positives: kept picks with p ≥ ``confident_p`` (``confident_picks``), [y, x] pixels.
    config : AdaptationConfig, optional

    Returns
    -------
    (PickerUNet, AdaptationReport)
        The fine-tuned copy (eval mode, on the CPU, the same ``detection_threshold``) — or ``model`` itself
        when nothing was learned — and what it learned from.
    """
    settings = config or AdaptationConfig()
    if len(images) != len(confident_yx_px):
        raise ValueError(f"{len(images)} images but {len(confident_yx_px)} sets of confident picks")
    if settings.patch_binned_px % model.config.size_multiple_px:
        raise ValueError(f"patch_binned_px must be a multiple of {model.config.size_multiple_px}")
    radius = model.config.radius_binned_px
    sigma = HEATMAP_SIGMA_RADIUS_FRACTION * radius
    inputs: list[Float32Array] = []
    targets: list[Float32Array] = []
    weights: list[Float32Array] = []
    n_positives = n_left_out = 0
    for image, confident in zip(images, confident_yx_px, strict=True):
        positives = np.asarray(confident, dtype=np.float64).reshape(-1, 2)
        peaks = pick_particles_learned(
            image, pixel_size_angstrom, particle_diameter_angstrom, model, threshold=settings.floor_p
        ).coords_yx_px
        if positives.shape[0] and peaks.shape[0]:
            nearest = np.min(np.linalg.norm(peaks[:, None, :] - positives[None, :, :], axis=2), axis=1)
            others = peaks[nearest > 0.25 * particle_diameter_angstrom / pixel_size_angstrom]
        else:
            others = peaks
        binned = bin_for_picking(image, pixel_size_angstrom, particle_diameter_angstrom, radius)
        shape = (int(binned.image.shape[0]), int(binned.image.shape[1]))
        target = heatmap_target(binned.to_binned_px(positives), shape, sigma)
        weight = np.where(_disc_mask(shape, binned.to_binned_px(others), radius) & (target < 0.01), 0.0, 1.0)
        inputs.append(binned.image)
        targets.append(target)
        weights.append(weight.astype(np.float32))
        n_positives += positives.shape[0]
        n_left_out += others.shape[0]
    if settings.steps == 0 or n_positives < settings.min_positives:
        nan = float("nan")
        return model, AdaptationReport(False, len(images), n_positives, n_left_out, nan, nan)

    tuned = copy.deepcopy(model).cpu()
    tuned.train()
    optimiser = torch.optim.Adam(tuned.parameters(), lr=settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    p = settings.patch_binned_px
    losses: list[float] = []
    for _ in range(settings.steps):
        batch = np.zeros((3, settings.batch_size, 1, p, p), dtype=np.float32)
        batch[2] = 1.0  # the zero border is background, as in training
        for b in range(settings.batch_size):
            index = int(rng.integers(len(inputs)))
            ny, nx = inputs[index].shape
            y = int(rng.integers(-EDGE_PADDING_BINNED_PX, max(ny + EDGE_PADDING_BINNED_PX - p, 0) + 1))
            x = int(rng.integers(-EDGE_PADDING_BINNED_PX, max(nx + EDGE_PADDING_BINNED_PX - p, 0) + 1))
            sy0, sy1, sx0, sx1 = max(y, 0), min(y + p, ny), max(x, 0), min(x + p, nx)
            k = int(rng.integers(8))
            for channel, source in enumerate((inputs[index], targets[index], weights[index])):
                patch = np.zeros((p, p), dtype=np.float32) if channel < 2 else np.ones((p, p), dtype=np.float32)
                if sy1 > sy0 and sx1 > sx0:
                    patch[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = source[sy0:sy1, sx0:sx1]
                batch[channel, b, 0] = _d4(patch, k)
        source_t, target_t, weight_t = (torch.from_numpy(batch[c]) for c in range(3))
        loss = centre_focal_loss(tuned(source_t), target_t, settings.focal_alpha, settings.focal_beta, weight_t)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        losses.append(float(loss.detach()))
    tuned.eval()
    tenth = max(len(losses) // 10, 1)
    report = AdaptationReport(
        True, len(images), n_positives, n_left_out, float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))
    )
    return tuned, report


def confident_picks(
    coords_yx_px: npt.ArrayLike, figure_of_merit: npt.ArrayLike, reasons: npt.ArrayLike, confident_p: float
) -> npt.NDArray[np.float64]:
    """The candidates kept by the region rules with heatmap peak ≥ ``confident_p``: the positives of
    :func:`adapt_picker`."""
    coords = np.asarray(coords_yx_px, dtype=np.float64).reshape(-1, 2)
    keep = (np.asarray(reasons) == REASON_OK) & (np.asarray(figure_of_merit, dtype=np.float64) >= confident_p)
    return np.asarray(coords[keep], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class MicrographToPick:
    """One micrograph of a batch to pick: the raw image (particles dark), its sampling and the diameter."""

    image: npt.NDArray[np.floating]
    pixel_size_angstrom: float
    particle_diameter_angstrom: float


def pick_batch_adapted(
    micrographs: Mapping[str, MicrographToPick],
    model: PickerUNet,
    config: AdaptationConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, MicrographPicks | ValueError], dict[str, AdaptationReport]]:
    """Pick a batch, adapt the picker to it from its own confident picks, and pick it again.

    ``pick_micrograph`` with ``model`` first; the micrographs picked for the same sampling and diameter
    form one group, and :func:`adapt_picker` fine-tunes a copy per group; ``pick_micrograph`` with that
    copy gives the result.  A group with too few confident picks keeps the first picks; with
    ``config.steps`` 0 nothing is adapted (no reports).  A micrograph the picker refuses (``ValueError``:
    not 2-D, not finite) gets its error and takes no part in the adaptation.

    Returns
    -------
    (dict, dict)
        Per micrograph its picks or its error; per group ("<Å/px>Å/px, d <Å>Å") the adaptation report.
    """
    settings = config or AdaptationConfig()
    first: dict[str, MicrographPicks | ValueError] = {}
    for name, item in micrographs.items():
        try:
            first[name] = pick_micrograph(
                item.image, item.pixel_size_angstrom, item.particle_diameter_angstrom, model, device=device
            )
        except ValueError as exc:
            first[name] = exc
    groups: dict[tuple[float, float], list[str]] = {}
    for name, outcome in first.items():
        if isinstance(outcome, MicrographPicks):
            item = micrographs[name]
            groups.setdefault((item.pixel_size_angstrom, item.particle_diameter_angstrom), []).append(name)
    results = dict(first)
    reports: dict[str, AdaptationReport] = {}
    if settings.steps == 0:
        return results, reports
    for (pixel_size, diameter), names in groups.items():
        picked = [first[n] for n in names]
        confident = [
            confident_picks(p.coords_yx_px, p.figure_of_merit, p.reasons, settings.confident_p)
            for p in picked
            if isinstance(p, MicrographPicks)
        ]
        tuned, report = adapt_picker(
            model, [micrographs[n].image for n in names], pixel_size, diameter, confident, settings
        )
        reports[f"{pixel_size:g} Å/px, d {diameter:g} Å"] = report
        if report.adapted:
            for name in names:
                results[name] = pick_micrograph(micrographs[name].image, pixel_size, diameter, tuned, device=device)
    return results, reports
