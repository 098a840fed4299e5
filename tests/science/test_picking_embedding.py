"""Picker on a synthetic micrograph with planted particles; embedding invariances; calibrated novelty."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from cryodecon_science.embedding import embed_particles, novelty_score
from cryodecon_science.picking import extract_boxes, pick_particles

PIXEL_ANGSTROM = 2.0
DIAMETER_ANGSTROM = 80.0  # 40 px
BOX_PX = 64

# --- synthetic particles -----------------------------------------------------------------------------

# Each structure: centres (dy, dx) of Gaussian blobs, in pixels around the particle centre, and blob σ.
STRUCTURES: dict[str, tuple[list[tuple[float, float]], float]] = {
    "dimer": ([(0.0, -6.0), (0.0, 6.0)], 3.0),
    "trimer": ([(6.0 * math.cos(a), 6.0 * math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3], 3.0),
    "rod": ([(0.0, x) for x in (-10.5, -3.5, 3.5, 10.5)], 3.0),
    "ring": ([(9.0 * math.cos(a), 9.0 * math.sin(a)) for a in np.arange(6) * 2 * math.pi / 6], 3.0),
    "square": ([(5.0, 5.0), (5.0, -5.0), (-5.0, 5.0), (-5.0, -5.0)], 3.0),
    "l_shape": ([(-8.0, -4.0), (0.0, -4.0), (8.0, -4.0), (8.0, 4.0)], 3.0),
    "globule": ([(0.0, 0.0)], 7.0),
}


def structure_image(name: str, box_px: int = BOX_PX) -> npt.NDArray[np.float64]:
    """Sum of Gaussian blobs centred at index box//2, positive density."""
    centres, sigma = STRUCTURES[name]
    yy, xx = np.mgrid[0:box_px, 0:box_px] - box_px // 2
    image = np.zeros((box_px, box_px))
    for cy, cx in centres:
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))
    return image


def random_views(name: str, n: int, noise: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """n copies at random in-plane angles and ±3 px shifts, plus white noise of std ``noise``."""
    base = structure_image(name)
    views = []
    for _ in range(n):
        view = ndimage.rotate(base, rng.uniform(0.0, 360.0), reshape=False, order=1)
        view = ndimage.shift(view, rng.uniform(-3.0, 3.0, size=2), order=1)
        views.append(view + rng.normal(scale=noise, size=view.shape))
    return np.stack(views)


def cosine_distance(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return 1.0 - float(np.dot(a, b))


def synthetic_micrograph(
    rng: np.random.Generator, shape_px: tuple[int, int] = (448, 448), noise: float = 1.0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Dark blobby particles (negative contrast, as at underfocus) on a grid with jitter, a gradient, noise.

    Returns the image and the true centres [y, x] (each particle's blob centroid).
    """
    ny, nx = shape_px
    diameter = DIAMETER_ANGSTROM / PIXEL_ANGSTROM
    radius = diameter / 2.0
    grid = np.arange(radius + 8.0, ny - radius - 8.0, 1.6 * diameter)
    centres = np.array([(y + rng.uniform(-5, 5), x + rng.uniform(-5, 5)) for y in grid for x in grid])
    yy, xx = np.mgrid[0:ny, 0:nx]
    density = np.zeros(shape_px)
    for cy, cx in centres:
        offsets = rng.normal(scale=0.35 * radius, size=(4, 2))
        offsets -= offsets.mean(axis=0)  # blob centroid at the planted centre
        for oy, ox in offsets:
            density += np.exp(-((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2.0 * (0.4 * radius) ** 2))
    image = -density / density.max() + 0.3 * yy / ny + rng.normal(scale=noise, size=shape_px)
    return image.astype(np.float32), centres


# --- picking -------------------------------------------------------------------------------------------


def test_picker_finds_planted_dark_particles() -> None:
    rng = np.random.default_rng(11)
    image, truth = synthetic_micrograph(rng, noise=0.8)
    picks = pick_particles(image, PIXEL_ANGSTROM, DIAMETER_ANGSTROM)
    assert picks.dtype == np.float64 and picks.shape[1] == 2
    distance_to_pick, _ = cKDTree(picks).query(truth)
    # "found" = within 4 px (a tenth of the diameter) of the planted centroid.
    recall = float(np.mean(distance_to_pick <= 4.0))
    assert recall >= 0.8
    distance_to_truth, _ = cKDTree(truth).query(picks)
    assert float(np.mean(distance_to_truth <= 4.0)) >= 0.8  # precision
    # The DoG picker keeps its picks 0.8 diameters apart and one radius inside the edges.
    diameter_px = DIAMETER_ANGSTROM / PIXEL_ANGSTROM
    if len(picks) > 1:
        assert float(cKDTree(picks).query(picks, k=2)[0][:, 1].min()) >= 0.8 * diameter_px
    assert float(np.min([picks, np.asarray(image.shape) - 1 - picks])) >= 0.5 * diameter_px


def test_picker_contrast_sign_is_explicit() -> None:
    rng = np.random.default_rng(12)
    image, truth = synthetic_micrograph(rng, noise=0.5)
    bright = pick_particles(-image, PIXEL_ANGSTROM, DIAMETER_ANGSTROM, dark_particles=False)
    dark = pick_particles(image, PIXEL_ANGSTROM, DIAMETER_ANGSTROM)
    np.testing.assert_allclose(bright, dark)
    wrong_sign = pick_particles(image, PIXEL_ANGSTROM, DIAMETER_ANGSTROM, dark_particles=False)
    hits = cKDTree(truth).query(wrong_sign)[0] <= 4.0 if len(wrong_sign) else np.zeros(0, bool)
    assert float(np.sum(hits)) / len(truth) < 0.3


def test_picker_respects_max_particles_and_blank_images() -> None:
    rng = np.random.default_rng(13)
    image, _ = synthetic_micrograph(rng)
    picks = pick_particles(image, PIXEL_ANGSTROM, DIAMETER_ANGSTROM, max_particles=5)
    assert picks.shape == (5, 2)
    assert pick_particles(np.zeros((256, 256), np.float32), PIXEL_ANGSTROM, DIAMETER_ANGSTROM).shape == (0, 2)


def test_extract_boxes_centres_and_normalises() -> None:
    image = np.zeros((128, 128), np.float32)
    image[50, 60] = 10.0
    image[100, 5] = 10.0
    boxes = extract_boxes(image, np.array([[50.2, 59.8], [100.0, 5.0]]), box_px=32)
    assert boxes.shape == (2, 32, 32) and boxes.dtype == np.float32
    assert [int(i) for i in np.unravel_index(np.argmax(boxes[0]), boxes[0].shape)] == [16, 16]
    assert [int(i) for i in np.unravel_index(np.argmax(boxes[1]), boxes[1].shape)] == [16, 16]  # edge, padded
    np.testing.assert_allclose(boxes.mean(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(boxes.std(axis=(1, 2)), 1.0, rtol=1e-5)


# --- embedding -----------------------------------------------------------------------------------------


def test_embeddings_are_unit_norm_and_batch_independent() -> None:
    boxes = np.stack([structure_image(name) for name in STRUCTURES])
    together = embed_particles(boxes)
    assert together.shape == (len(STRUCTURES), 64) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    alone = embed_particles(boxes[2:3])
    np.testing.assert_allclose(alone[0], together[2], atol=1e-6)
    assert embed_particles(boxes, n_features=32).shape == (len(STRUCTURES), 32)
    with pytest.raises(ValueError):
        embed_particles(boxes, n_features=30)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_embedding_is_rotation_and_shift_invariant(name: str) -> None:
    base = structure_image(name)
    variants = np.stack(
        [
            base,
            np.rot90(base),
            ndimage.rotate(base, 37.0, reshape=False, order=1),  # interpolated rotation
            ndimage.shift(base, (3.0, 0.0), order=1),
            ndimage.shift(base, (-2.0, 3.0), order=1),
            5.0 * base + 2.0,  # contrast and offset
        ]
    )
    embeddings = embed_particles(variants)
    for variant in embeddings[1:]:
        assert cosine_distance(embeddings[0], variant) < 0.02  # the specification's bound


def test_different_structures_are_clearly_further_apart() -> None:
    names = list(STRUCTURES)
    originals = embed_particles(np.stack([structure_image(n) for n in names]))
    rotated = embed_particles(
        np.stack([ndimage.rotate(structure_image(n), 37.0, reshape=False, order=1) for n in names])
    )
    same = max(cosine_distance(a, b) for a, b in zip(originals, rotated, strict=True))
    different = min(
        cosine_distance(originals[i], rotated[j]) for i in range(len(names)) for j in range(len(names)) if i != j
    )
    # Measured: same-structure ≈ 3e-5, closest different pair (trimer/square) ≈ 7e-3.
    assert different > 20.0 * same
    assert different > 0.003


def test_large_boxes_are_resampled_to_a_fixed_fraction_of_the_box() -> None:
    """A structure twice as large in a box twice as large embeds like the original (scale-normalised)."""
    names = ["rod", "trimer"]
    small = embed_particles(np.stack([structure_image(n) for n in names]))
    large_images = []
    for name in names:
        centres, sigma = STRUCTURES[name]
        yy, xx = np.mgrid[0:128, 0:128] - 64
        large_images.append(
            sum(np.exp(-((yy - 2 * cy) ** 2 + (xx - 2 * cx) ** 2) / (2.0 * (2 * sigma) ** 2)) for cy, cx in centres)
        )
    large = embed_particles(np.stack(large_images))
    for a, b in zip(small, large, strict=True):
        assert cosine_distance(a, b) < 0.02
    assert cosine_distance(large[0], large[1]) > 0.02


def test_embedding_runs_on_the_requested_device() -> None:
    boxes = np.stack([structure_image("dimer")])
    assert embed_particles(boxes, device="cpu").shape == (1, 64)


# --- novelty -------------------------------------------------------------------------------------------


def _nn_within(library: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    distance = 1.0 - library.astype(np.float64) @ library.T.astype(np.float64)
    np.fill_diagonal(distance, np.inf)
    return np.asarray(distance.min(axis=1))


def _nn_to(queries: npt.NDArray[np.float32], library: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    return np.asarray((1.0 - queries.astype(np.float64) @ library.T.astype(np.float64)).min(axis=1))


def test_novelty_is_low_for_known_and_high_for_unseen_structures() -> None:
    rng = np.random.default_rng(21)
    noise = 0.2
    known = ("dimer", "rod", "l_shape")
    library = embed_particles(np.concatenate([random_views(n, 30, noise, rng) for n in known]))
    library_nn = _nn_within(library)

    member = embed_particles(random_views("rod", 20, noise, rng))
    unseen = embed_particles(random_views("globule", 20, noise, rng))
    novelty_member = novelty_score(_nn_to(member, library), library_nn)
    novelty_unseen = novelty_score(_nn_to(unseen, library), library_nn)
    # A fresh member of a known cloud is as far from it as members are from each other: ECDF ≈ ½.
    assert 0.15 <= novelty_member <= 0.85
    assert novelty_unseen >= 0.95
    assert novelty_score(np.zeros(5), library_nn) == 0.0  # exact duplicates


def test_novelty_calibration_arithmetic_and_edge_cases() -> None:
    library_nn = np.array([0.1, 0.2, 0.3, 0.4])
    # ECDF(0.25) = 2/4, ECDF(0.3) = (2 + ½)/4 (mid-rank tie), ECDF(1) = 1; median of three.
    assert novelty_score(np.array([0.25, 0.3, 1.0]), library_nn) == pytest.approx(0.625)
    assert novelty_score(np.array([np.inf]), library_nn) == 1.0
    assert novelty_score(np.array([0.1]), np.zeros(0)) == 1.0  # nothing known
    with pytest.raises(ValueError):
        novelty_score(np.zeros(0), library_nn)
    with pytest.raises(ValueError):
        novelty_score(np.array([np.nan]), library_nn)


def test_a_duplicate_at_rounding_distance_has_novelty_zero_not_an_error() -> None:
    """The float32 cosine distance of an embedding to itself can come out a few 1e-7 below zero."""
    library_nn = np.array([0.1, 0.2, 0.3])
    assert novelty_score(np.array([-3e-7, -1e-6]), library_nn) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        novelty_score(np.array([-0.01]), library_nn)
