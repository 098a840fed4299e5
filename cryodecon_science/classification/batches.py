"""Particle boxes of a batch prepared for 2D classification, and the class state kept between batches.

Boxes are Fourier-cropped to the classification box (RELION's ``--scale`` of extraction and cryoSPARC's
"Fourier-crop to box size"): the centred 2-D spectrum is cut to B′ × B′ and transformed back, which keeps
every frequency below the new Nyquist exactly and scales the pixel size by B / B′.  Amplitudes are
rescaled by (B′/B)² so that the real-space values, and with them the RELION normalisation (background
mean 0, standard deviation reduced by the band limit), stay on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.classification.ctf import ParticleCtfs
from cryodecon_science.classification.selection import ClassSelection, select_classes, select_particles
from cryodecon_science.classification.streaming import (
    ClassAssignments,
    Classification2DConfig,
    ClassificationState,
    class_averages,
    update_classes,
)
from cryodecon_science.io.particles import ParticleRow
from cryodecon_science.io.torch_files import TorchFileError, load_payload, save_payload

Float32Array = npt.NDArray[np.float32]

CLASSIFICATION_BOX_PX = 64
"""Box edge 2D classification runs at, pixels: a 1.5-diameter box at 64 px samples the particle at ≈ 4–5 Å
for 150–250 Å particles, finer than the 8–20 Å a 2D class resolves at facility rates."""


def fourier_crop_boxes(boxes: npt.ArrayLike, pixel_size_angstrom: float, box_px: int) -> tuple[Float32Array, float]:
    """Fourier-crop boxes (n, B, B) to (n, B′, B′) with B′ = ``box_px`` (even, ≤ B); returns them and the new
    pixel size, Å.  Boxes already at or below B′ are returned as they are."""
    stack = np.asarray(boxes, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ValueError(f"boxes must be (n, B, B), got {stack.shape}")
    if box_px < 16 or box_px % 2:
        raise ValueError(f"box_px must be even and >= 16, got {box_px}")
    size = stack.shape[1]
    if size <= box_px:
        return stack.astype(np.float32), float(pixel_size_angstrom)
    spectrum = np.fft.fftshift(np.fft.fft2(stack), axes=(1, 2))
    start = size // 2 - box_px // 2
    cropped = spectrum[:, start : start + box_px, start : start + box_px]
    out = np.fft.ifft2(np.fft.ifftshift(cropped, axes=(1, 2))).real * (box_px / size) ** 2
    return out.astype(np.float32), float(pixel_size_angstrom * size / box_px)


STATE_FORMAT = "cryodecon.classes2d"
STATE_VERSION = 2
_TENSORS = ("numerator", "denominator", "weight")
_SCALARS = (
    "noise_variance",
    "noise_weight",
    "particles_seen",
    "batches_seen",
    "pixel_size_angstrom",
    "particle_diameter_angstrom",
    "retired_count",
)


class ClassStateError(TorchFileError):
    """A class-state file that is missing, unreadable or not a cryodecon 2D class state."""


def save_state(state: ClassificationState, path: str | Path) -> None:
    """Write the class statistics as a plain-data torch file (``io.torch_files``), atomically."""
    tensors = {name: getattr(state, name).detach().cpu() for name in _TENSORS}
    tensors["particle_count"] = torch.from_numpy(np.asarray(state.particle_count, dtype=np.int64))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, "state_dict": tensors}
    save_payload({**payload, "scalars": {name: getattr(state, name) for name in _SCALARS}}, path)


def load_state(path: str | Path) -> ClassificationState:
    """Read what :func:`save_state` wrote.

    Raises
    ------
    ClassStateError
        A missing, truncated or foreign file, or one whose contents do not make a class state.
    """
    payload = load_payload(path, STATE_FORMAT, STATE_VERSION, ClassStateError)
    tensors, scalars = payload["state_dict"], payload.get("scalars")
    if not isinstance(scalars, dict) or set(scalars) != set(_SCALARS) or set(tensors) != {*_TENSORS, "particle_count"}:
        raise ClassStateError(path, "the class statistics are incomplete")
    try:
        return ClassificationState(
            numerator=tensors["numerator"],
            denominator=tensors["denominator"],
            weight=tensors["weight"],
            particle_count=tensors["particle_count"].numpy().astype(np.int64),
            noise_variance=float(scalars["noise_variance"]),
            noise_weight=float(scalars["noise_weight"]),
            particles_seen=int(scalars["particles_seen"]),
            batches_seen=int(scalars["batches_seen"]),
            pixel_size_angstrom=float(scalars["pixel_size_angstrom"]),
            particle_diameter_angstrom=float(scalars["particle_diameter_angstrom"]),
            retired_count=int(scalars["retired_count"]),
        )
    except (TypeError, ValueError) as exc:
        raise ClassStateError(path, f"the class statistics are not numbers ({exc})") from exc


@dataclass(frozen=True, eq=False)
class BatchClassification:
    """One batch folded into a session's 2D classes.

    Attributes
    ----------
    state : ClassificationState
        The classes after this batch (the next batch's start).
    assignments : ClassAssignments
        Where each particle of the batch went, in the order of the rows given.
    selection : ClassSelection
        Features, decision and reasons per class, after this batch.
    averages : ndarray, shape (K, B′, B′), float32
        Wiener class averages (particles white).
    kept : ndarray, shape (n,), bool
        The batch's particles kept (``select_particles``: a selected class, and ln B ≥ 3 against background).
    """

    state: ClassificationState
    assignments: ClassAssignments
    selection: ClassSelection
    averages: Float32Array
    kept: npt.NDArray[np.bool_]


def classify_batch(
    boxes: npt.ArrayLike,
    rows: Sequence[ParticleRow],
    previous: ClassificationState | None,
    config: Classification2DConfig,
    box_px: int,
    *,
    device: torch.device | str = "cpu",
) -> BatchClassification:
    """Fourier-crop a batch's boxes to ``box_px``, fold them into the classes (``update_classes``), select classes
    and particles (``select_classes``, ``select_particles``) and average (``class_averages``).

    ``boxes`` (n, B, B) are the RELION-normalised boxes of ``rows`` (``particles.star`` rows, one optics
    group), in the same order, at the micrographs' pixel size.  ``previous`` is None for a session's first
    batch (it needs at least 2 particles per class).
    """
    stack = np.asarray(boxes)
    if stack.ndim != 3 or stack.shape[0] != len(rows):
        raise ValueError(f"{len(rows)} particle rows but boxes of shape {stack.shape}")
    if not rows:
        raise ValueError("no particles to classify")
    cropped, pixel_size = fourier_crop_boxes(stack, rows[0].microscope.pixel_size_angstrom, box_px)
    ctfs = ParticleCtfs.from_particle_rows(rows, pixel_size_angstrom=pixel_size)
    state, assignments = update_classes(previous, cropped, ctfs, config, device=device)
    selection = select_classes(state)
    averages = class_averages(state).detach().to("cpu", torch.float32).numpy()
    return BatchClassification(state, assignments, selection, averages, select_particles(assignments, selection))
