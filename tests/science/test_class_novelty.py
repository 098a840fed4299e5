"""Novelty of 2D classes: class averages of a known structure sit among its reference views, an unseen one does not.

The simulator's structures (``make_structures``) stand for a library: reference views of structures 1 and 2 at
random orientations.  "Class averages" are projections of new orientations of a known structure (1) and of the
unseen one (3), at a class average's sampling (64 px boxes of the particle box) with its noise (white, 20 % of
the signal's standard deviation) and resolution (low-passed to 30 Å).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from cryodecon_science.classification import class_novelty, embed_class_images
from cryodecon_science.embedding import gaussian_low_pass
from cryodecon_science.projection import random_euler_angles_deg
from cryodecon_science.simulate import make_structures, project_structure

DIAMETER_ANGSTROM = 150.0
BOX_PX = 64
PIXEL_ANGSTROM = 1.5 * DIAMETER_ANGSTROM / BOX_PX  # the classification's sampling of a 1.5·d particle box


def views(structure_index: int, n: int, seed: int) -> npt.NDArray[np.float64]:
    structure = make_structures(4, DIAMETER_ANGSTROM, 0)[structure_index]
    angles = random_euler_angles_deg(np.random.default_rng(seed), n)
    return np.stack([project_structure(structure, a, BOX_PX, PIXEL_ANGSTROM) for a in angles])


def class_like(images: npt.NDArray[np.float64], seed: int) -> npt.NDArray[np.float64]:
    blurred = gaussian_low_pass(images, PIXEL_ANGSTROM, 30.0)
    noise = np.random.default_rng(seed).standard_normal(blurred.shape)
    return blurred + 0.2 * blurred.std(axis=(1, 2), keepdims=True) * noise


def nearest(queries: npt.NDArray[np.float32], library: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    return np.asarray((1.0 - queries @ library.T).min(axis=1), dtype=np.float64)


def test_gaussian_low_pass_has_its_documented_transfer() -> None:
    n = 64
    yy, xx = np.mgrid[0:n, 0:n]
    k_per_px = 4 / n  # a cosine of 4 periods over the box
    wave = np.cos(2 * np.pi * k_per_px * xx).astype(np.float64) + 0 * yy
    pixel, resolution = 2.0, 20.0
    filtered = gaussian_low_pass(wave, pixel, resolution)
    k_per_angstrom = k_per_px / pixel
    expected = np.exp(-0.5 * (k_per_angstrom * resolution) ** 2)
    np.testing.assert_allclose(filtered, expected * wave, atol=1e-12)
    with pytest.raises(ValueError, match="resolution_angstrom"):
        gaussian_low_pass(wave, pixel, 0.0)


def test_classes_of_a_known_structure_are_familiar_and_of_an_unseen_one_novel() -> None:
    references = np.concatenate([views(1, 24, seed=1), views(2, 24, seed=2)])
    library = embed_class_images(references, PIXEL_ANGSTROM)
    gram = 1.0 - library @ library.T
    np.fill_diagonal(gram, np.inf)
    calibration = gram.min(axis=1).astype(np.float64)  # each reference's nearest other reference

    known = embed_class_images(class_like(views(1, 6, seed=10), seed=11), PIXEL_ANGSTROM)
    unseen = embed_class_images(class_like(views(3, 6, seed=12), seed=13), PIXEL_ANGSTROM)
    d_known, d_unseen = nearest(known, library), nearest(unseen, library)
    counts, selected = np.full(6, 100), np.ones(6, dtype=bool)
    novelty_known = class_novelty(d_known, calibration, counts, selected)
    novelty_unseen = class_novelty(d_unseen, calibration, counts, selected)
    assert np.median(d_unseen) > 2 * np.median(d_known)
    assert novelty_known.batch < 0.7 < novelty_unseen.batch
    assert novelty_unseen.per_class.shape == (6,) and np.all(
        (novelty_unseen.per_class >= 0) & (novelty_unseen.per_class <= 1)
    )


def test_batch_novelty_weights_selected_classes_by_particles() -> None:
    calibration = np.linspace(0.0, 1.0, 101)
    result = class_novelty([0.2, 0.8, np.inf], calibration, [300, 100, 50], [True, True, False])
    np.testing.assert_allclose(result.per_class, [0.2, 0.8, 1.0], atol=0.006)
    assert result.batch == pytest.approx((300 * result.per_class[0] + 100 * result.per_class[1]) / 400)
    assert np.isnan(class_novelty([0.5], calibration, [10], [False]).batch)
    with pytest.raises(ValueError, match="one distance"):
        class_novelty([0.1, 0.2], calibration, [1], [True])


def test_a_noisy_class_of_a_known_view_is_not_novel_once_its_half_set_noise_is_discounted() -> None:
    """Averages of few particles: each half set carries noise of twice the full average's variance.  The raw
    distance to the known views then exceeds the references' spacing (novel); the excess over a quarter of the
    half-set distance does not, while an unseen structure's classes stay novel."""
    references = np.concatenate([views(1, 24, seed=1), views(2, 24, seed=2)])
    library = embed_class_images(references, PIXEL_ANGSTROM)
    gram = 1.0 - library @ library.T
    np.fill_diagonal(gram, np.inf)
    calibration = gram.min(axis=1).astype(np.float64)
    rng = np.random.default_rng(30)

    def noisy_class(structure_index: int, seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        signal = gaussian_low_pass(views(structure_index, 6, seed=seed), PIXEL_ANGSTROM, 30.0)
        sigma = 1.5 * signal.std(axis=(1, 2), keepdims=True)
        half_a = signal + sigma * np.sqrt(2) * rng.standard_normal(signal.shape)
        half_b = signal + sigma * np.sqrt(2) * rng.standard_normal(signal.shape)
        full = embed_class_images(0.5 * (half_a + half_b), PIXEL_ANGSTROM)
        noise = 1.0 - np.sum(
            embed_class_images(half_a, PIXEL_ANGSTROM) * embed_class_images(half_b, PIXEL_ANGSTROM), axis=1
        )
        return nearest(full, library), noise.astype(np.float64)

    counts, selected = np.full(6, 10), np.ones(6, dtype=bool)
    d_known, noise_known = noisy_class(1, 40)
    d_unseen, noise_unseen = noisy_class(3, 41)
    raw = class_novelty(d_known, calibration, counts, selected).batch
    corrected = class_novelty(d_known, calibration, counts, selected, noise_known).batch
    unseen = class_novelty(d_unseen, calibration, counts, selected, noise_unseen).batch
    assert corrected < raw and corrected < 0.6 < unseen
    with pytest.raises(ValueError, match="half-set distance"):
        class_novelty(d_known, calibration, counts, selected, noise_known[:3])
