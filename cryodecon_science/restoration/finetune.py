"""Per-batch fine-tuning of the shipped denoiser, kept only where it lowers the held-out Noise2Noise loss.

The shipped U-Net (:mod:`~cryodecon_science.restoration.denoiser`) was trained on simulated sessions; a
batch's own dose, defocus, ice and specimen differ.  :func:`finetune_denoiser` continues its Noise2Noise training on the
batch's micrographs (binomial splits of their counts, from the shipped weights) and compares the two
models on the same fresh splits with a seed not used in training (``denoiser.noise2noise_loss``): for
independent halves the loss differs from the error against the unknown clean image by a constant
(Lehtinen et al. 2018, "Noise2Noise", ICML), so the lower loss is the better denoiser of this batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from cryodecon_science.restoration.denoiser import DenoiserUNet, TrainingConfig, noise2noise_loss, train_noise2noise

DENOISER_WEIGHTS_NAME = "denoiser_v1 (cryodecon_science/data/denoiser_v1.pt)"
"""How the shipped weights are named in records and the UI."""
FINETUNE_HOLDOUT_PAIRS = 64
"""Patch pairs of the held-out comparison of the shipped and the fine-tuned model."""
FINETUNE_PATCH_PX = 128
"""Patch edge of fine-tuning and of the held-out comparison, pixels; smaller micrographs are left out."""
FINETUNE_BATCH_SIZE = 4
"""Patch pairs per optimiser step."""
FINETUNE_LEARNING_RATE = 1e-4
"""Peak Adam learning rate: a tenth of training from scratch, to move the shipped weights, not replace them."""
FINETUNE_HOLDOUT_SEED_OFFSET = 1_000_003
"""Added to the training seed for the held-out splits, so the comparison never sees a training split."""
MIN_MEAN_COUNTS = 1.0
"""Micrographs with mean counts per pixel at or below this are left out (nothing to split)."""

WeightsWriter = Callable[[DenoiserUNet, Mapping[str, object]], str]
"""Writes fine-tuned weights with their provenance (``io.denoiser_weights``) and returns the file's path."""


@dataclass(frozen=True)
class DenoiserRecord:
    """Which denoiser restores a batch: the shipped model, or one fine-tuned on the batch's micrographs.

    Attributes
    ----------
    source : {"shipped", "fine-tuned"}
        The model used.
    weights_path : str or None
        The fine-tuned weights file (None for the shipped model).
    finetune_steps : int
        Optimiser steps of fine-tuning (0: not tried).
    shipped_loss, finetuned_loss : float or None
        Held-out Noise2Noise losses of the two models on the same fresh binomial splits of the batch (a
        seed not used in training), in shot-noise units²; None when not fine-tuned.  The fine-tuned model
        is used only when its loss is lower.
    n_micrographs : int
        Micrographs usable for fine-tuning (each side ≥ :data:`FINETUNE_PATCH_PX`, mean counts >
        :data:`MIN_MEAN_COUNTS`).
    """

    source: Literal["shipped", "fine-tuned"]
    weights_path: str | None
    finetune_steps: int
    shipped_loss: float | None
    finetuned_loss: float | None
    n_micrographs: int

    @property
    def description(self) -> str:
        """The model in words, for the UI and the restorations' metadata."""
        if self.weights_path is None:
            return f"{DENOISER_WEIGHTS_NAME}, shipped"
        return f"{DENOISER_WEIGHTS_NAME} fine-tuned for {self.finetune_steps} steps on this batch ({self.weights_path})"


def finetune_denoiser(
    counts: Sequence[npt.NDArray[np.floating]],
    shipped: DenoiserUNet,
    steps: int,
    seed: int,
    save: WeightsWriter,
) -> DenoiserRecord:
    """Fine-tune ``shipped`` on a batch's micrographs and keep it only if it lowers the held-out loss.

    Parameters
    ----------
    counts : sequence of ndarray, shape (ny, nx)
        The batch's micrographs in electron counts (those too small or too dark are left out).
    shipped : DenoiserUNet
        The shipped model (``io.denoiser_weights.load_pretrained_denoiser``); not modified.
    steps : int
        Optimiser steps; 0 (or no usable micrograph): the shipped model, nothing trained.
    seed : int
        Seed of training; the held-out splits use ``seed + FINETUNE_HOLDOUT_SEED_OFFSET``.
    save : WeightsWriter
        Called with the fine-tuned model and its provenance only when it is kept; returns its path.
    """
    usable = [
        image.astype(np.float32)
        for image in counts
        if min(image.shape) >= FINETUNE_PATCH_PX and float(image.mean()) > MIN_MEAN_COUNTS
    ]
    if steps == 0 or not usable:
        return DenoiserRecord("shipped", None, 0, None, None, len(usable))
    training = TrainingConfig(steps, FINETUNE_BATCH_SIZE, FINETUNE_PATCH_PX, FINETUNE_LEARNING_RATE, seed)
    tuned, _ = train_noise2noise(usable, shipped.config, training, initial=shipped)
    holdout_seed = seed + FINETUNE_HOLDOUT_SEED_OFFSET
    shipped_loss = noise2noise_loss(shipped, usable, FINETUNE_HOLDOUT_PAIRS, FINETUNE_PATCH_PX, holdout_seed)
    tuned_loss = noise2noise_loss(tuned, usable, FINETUNE_HOLDOUT_PAIRS, FINETUNE_PATCH_PX, holdout_seed)
    if not tuned_loss < shipped_loss:
        return DenoiserRecord("shipped", None, steps, shipped_loss, tuned_loss, len(usable))
    path = save(tuned, {"base": DENOISER_WEIGHTS_NAME, "steps": steps, "holdout_loss": tuned_loss})
    return DenoiserRecord("fine-tuned", path, steps, shipped_loss, tuned_loss, len(usable))
