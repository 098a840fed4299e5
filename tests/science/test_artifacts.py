"""Artifact removal: each step removes a planted artifact of known size and leaves clean data alone."""

from __future__ import annotations

import numpy as np
import pytest

from cryodecon_science.artifacts import (
    flatten_ice_gradient,
    normalise_excluded_areas,
    remove_detector_stripes,
    replace_hot_pixels,
    stripe_rms_counts,
)


def _counts(shape: tuple[int, int] = (256, 256), mean: float = 40.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(mean, shape).astype(np.float64)


def test_hot_pixels_are_replaced_and_clean_pixels_kept() -> None:
    image = _counts()
    rng = np.random.default_rng(1)
    hot = rng.choice(image.size, 50, replace=False)
    planted = image.copy().ravel()
    planted[hot] = 2000.0
    out, record = replace_hot_pixels(planted.reshape(image.shape))
    assert record.causal_node == "detector_noise" and record.pixels_changed >= 50
    assert np.all(out.ravel()[hot] < 80.0)  # back within shot noise of 40 counts
    _, clean_record = replace_hot_pixels(image)
    # 8 σ on Poisson(40): essentially no false positives among 65 536 pixels.
    assert clean_record.pixels_changed <= 2
    assert float(np.mean(out)) == pytest.approx(float(np.mean(image)), rel=1e-3)


def test_stripes_are_removed() -> None:
    image = _counts()
    striped = image.copy()
    striped[::7, :] += 5.0  # a readout offset on every 7th row
    striped[:, ::11] -= 3.0
    before = stripe_rms_counts(striped)
    out, record = remove_detector_stripes(striped)
    assert stripe_rms_counts(out) < 0.2 * before
    planted = striped - image
    rows, columns = planted.mean(axis=1) - planted.mean(), planted.mean(axis=0) - planted.mean()
    expected_rms = float(np.sqrt(np.mean(rows**2) + np.mean(columns**2)))
    # Measured offsets carry shot noise averaged along a row, √40/√256 ≈ 0.4 counts.
    assert record.magnitude == pytest.approx(expected_rms, abs=0.5)
    assert float(out.mean()) == pytest.approx(float(striped.mean()), rel=1e-6)
    # Without stripes the change is shot noise averaged along a row: ~√40/√256 ≈ 0.4 counts RMS.
    clean, _ = remove_detector_stripes(image)
    assert float(np.sqrt(np.mean((clean - image) ** 2))) < 0.8


def test_ice_gradient_is_flattened_keeping_the_mean() -> None:
    ny, nx = 256, 256
    x = np.linspace(-1.0, 1.0, nx)[None, :]
    expected = 40.0 * (1.0 + 0.3 * x) * np.ones((ny, 1))  # a wedge of ice: ±30 % across the field
    image = np.random.default_rng(2).poisson(expected).astype(np.float64)
    out, record = flatten_ice_gradient(image, order=1)
    assert record.causal_node == "ice_thickness"
    assert record.magnitude == pytest.approx(0.6, abs=0.02)  # peak-to-peak of 1 ± 0.3
    left, right = float(out[:, :32].mean()), float(out[:, -32:].mean())
    assert abs(right - left) / 40.0 < 0.02
    assert float(out.mean()) == pytest.approx(float(image.mean()), rel=0.01)
    with pytest.raises(ValueError, match="order"):
        flatten_ice_gradient(image, order=5)


def test_carbon_step_is_normalised() -> None:
    image = _counts()
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, 192:] = True
    image[mask] *= 0.65  # carbon: 35 % fewer electrons
    out, record = normalise_excluded_areas(image, mask, blend_px=4.0)
    assert record.magnitude == pytest.approx(0.35, abs=0.02)
    assert float(out[:, 210:].mean()) == pytest.approx(float(out[:, :170].mean()), rel=0.02)
    untouched, empty = normalise_excluded_areas(image, np.zeros_like(mask))
    assert empty.pixels_changed == 0 and np.array_equal(untouched, image.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        normalise_excluded_areas(image, mask[:10])


def test_bad_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="2-D"):
        replace_hot_pixels(np.ones(10))
    with pytest.raises(ValueError, match="NaN"):
        remove_detector_stripes(np.full((16, 16), np.nan))
