"""Rotation- and shift-invariant embeddings of class averages, and the novelty of a session's classes.

Class averages are the intended input of :func:`cryodecon_science.embedding.embed_particles` (the autocorrelation
invariants of Schatz & van Heel 1990, Ultramicroscopy 32:255): CTF-corrected and averaged, they have the SNR that
single particles lack.  The class frame is arbitrary (a class average may sit at any in-plane angle and a pixel or
two off centre), which the embedding ignores; two averages of the same view embed close in cosine distance.

Class averages and the projections of known structures they are compared with are first brought to one
resolution, ``CLASS_EMBEDDING_RESOLUTION_ANGSTROM`` (Gaussian low-pass): a streaming class average holds
20–30 Å (the half-set FRC = 0.143 of the classes in ``benchmarks/results/classification.md``), a reference
projection is exact; without the common low-pass a blurred average of a view lies farther from that view's
projection than known views lie from each other (1.4× the median nearest-neighbour distance of the references
at 7 Å, 1.1× at 25 Å, in ``tests/science/test_class_novelty.py``'s setting).

Novelty of a class: the calibrated score of :func:`~cryodecon_science.embedding.novelty_score` applied to the
class's distance to its nearest known class or reference view (0: a known view, ≈ 0.5: as far as known entries
are from each other, 1: farther than any), less what the average's own noise accounts for.  For small
distances the cosine distance of unit embeddings is ½‖e − e′‖², and noise n in the average adds to it in
expectation: δ(A, R) ≈ δ(S, R) + δ(A, S) for the noise-free class S.  The two half-set averages differ by noise
of four times the full average's variance, so δ(A, S) ≈ δ(A_A, A_B) / 4, and the class is scored on the excess
max(0, δ(A, R) − δ(A_A, A_B) / 4): a class of a few particles of a known view is not novel for being noisy.

Novelty of a batch: the mean over the selected classes weighted by
their particles, i.e. the expected novelty of a good particle of the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.classification.streaming import ClassificationState, class_averages, half_set_averages
from cryodecon_science.embedding import embed_particles, gaussian_low_pass, novelty_score

CLASS_EMBEDDING_RESOLUTION_ANGSTROM = 25.0
"""Common resolution of class averages and reference projections before embedding, Å (module docstring)."""

FloatArray = npt.NDArray[np.float64]


def embed_class_images(
    images: npt.ArrayLike,
    pixel_size_angstrom: float,
    n_features: int = 64,
    resolution_angstrom: float = CLASS_EMBEDDING_RESOLUTION_ANGSTROM,
    device: torch.device | str = "cpu",
) -> npt.NDArray[np.float32]:
    """Unit-norm embeddings (n, n_features) of class averages or reference projections (n, B, B).

    The images are low-passed to ``resolution_angstrom`` and embedded with ``embed_particles``; their box must
    span the same field of view as the boxes they are compared with (the particle box, at any sampling: the
    embedding resamples to 64 px).  An all-zero image embeds as the zero vector.
    """
    data = np.asarray(images, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"images must have shape (n, B, B), got {data.shape}")
    filtered = gaussian_low_pass(data, pixel_size_angstrom, resolution_angstrom)
    return embed_particles(np.ascontiguousarray(filtered), n_features=n_features, device=device)


def embed_class_averages(
    state: ClassificationState, n_features: int = 64, device: torch.device | str = "cpu"
) -> npt.NDArray[np.float32]:
    """Unit-norm embeddings (K, n_features) of the Wiener class averages of ``state`` (``embed_class_images``)."""
    averages = class_averages(state).detach().to("cpu", torch.float64).numpy()
    return embed_class_images(averages, state.pixel_size_angstrom, n_features=n_features, device=device)


def half_set_distances(
    state: ClassificationState, n_features: int = 64, device: torch.device | str = "cpu"
) -> FloatArray:
    """δ(A_k^A, A_k^B) (K,): the cosine distance between the embeddings of each class's two half-set averages
    (``embed_class_images``); NaN where a half is empty (its embedding is zero)."""
    halves = half_set_averages(state).detach().to("cpu", torch.float64).numpy()
    n_classes = halves.shape[1]
    embedded = embed_class_images(
        halves.reshape(2 * n_classes, *halves.shape[2:]), state.pixel_size_angstrom, n_features, device=device
    ).reshape(2, n_classes, -1)
    filled = (np.linalg.norm(embedded, axis=2) > 0).all(axis=0)
    distance = 1.0 - np.sum(embedded[0].astype(np.float64) * embedded[1], axis=1)
    return np.where(filled, np.maximum(distance, 0.0), np.nan)


@dataclass(frozen=True)
class ClassNovelty:
    """Novelty of each class and of the batch (module docstring).

    Attributes
    ----------
    per_class : ndarray, shape (K,)
        N_k ∈ [0, 1] of each class from its nearest known distance; NaN where δ_k is NaN.
    batch : float
        Σ_k n_k N_k / Σ_k n_k over the selected classes (NaN when none is selected or none has particles).
    """

    per_class: FloatArray
    batch: float


def class_novelty(
    nearest_distance: npt.ArrayLike,
    library_nn_distances: npt.ArrayLike,
    particle_count: npt.ArrayLike,
    selected: npt.ArrayLike,
    half_set_distance: npt.ArrayLike | None = None,
) -> ClassNovelty:
    """Per-class and batch novelty from each class's distance to its nearest known entry, less its noise's share.

    Parameters
    ----------
    nearest_distance : array, shape (K,)
        δ_k, cosine distance of class k's embedding to its nearest library entry; ``inf`` when there is none,
        NaN for a class with nothing to compare (an empty class: its average and embedding are zero).
    library_nn_distances : array, shape (M,)
        The library entries' own nearest-neighbour distances (the calibration of ``novelty_score``).
    particle_count : array, shape (K,)
        Particles of each class (the weights of the batch score).
    selected : array of bool, shape (K,)
        The classes judged good; only they enter the batch score.
    half_set_distance : array, shape (K,), optional
        δ(A_k^A, A_k^B) (``half_set_distances``); the score is of max(0, δ_k − δ_half / 4) (module docstring).
        NaN (an empty half) or None: no correction.
    """
    distance = np.asarray(nearest_distance, dtype=np.float64).ravel()
    counts = np.asarray(particle_count, dtype=np.float64).ravel()
    chosen = np.asarray(selected, dtype=bool).ravel()
    if not (distance.shape == counts.shape == chosen.shape):
        raise ValueError(
            f"one distance, count and selection flag per class: got {distance.size}, {counts.size}, {chosen.size}"
        )
    if half_set_distance is not None:
        noise = np.asarray(half_set_distance, dtype=np.float64).ravel()
        if noise.shape != distance.shape:
            raise ValueError(f"one half-set distance per class: got {noise.size} for {distance.size} classes")
        distance = np.where(np.isnan(noise), distance, np.maximum(distance - 0.25 * np.nan_to_num(noise), 0.0))
    calibration = np.asarray(library_nn_distances, dtype=np.float64).ravel()
    per_class = np.array(
        [novelty_score(np.array([d]), calibration) if not np.isnan(d) else np.nan for d in distance], dtype=np.float64
    )
    weights = np.where(chosen & ~np.isnan(per_class), counts, 0.0)
    per_class_or_zero = np.nan_to_num(per_class, nan=0.0)
    batch = float((weights * per_class_or_zero).sum() / weights.sum()) if weights.sum() > 0 else float("nan")
    return ClassNovelty(per_class=per_class, batch=batch)
