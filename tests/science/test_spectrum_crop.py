"""central_fit_crop: the crop every spectral fit of a large frame runs on."""

from __future__ import annotations

import numpy as np
import pytest

from cryodecon_science.spectrum import central_fit_crop


def test_crop_divides_both_sides_by_one_integer_and_is_centred() -> None:
    image = np.arange(4096 * 3000, dtype=np.float32).reshape(4096, 3000)
    crop = central_fit_crop(image, 2048)
    assert crop.shape == (2048, 1500)  # f = ⌈4096 / 2048⌉ = 2 on both sides: the aspect ratio is kept
    assert crop[0, 0] == image[1024, 750] and np.shares_memory(crop, image)
    assert central_fit_crop(image, 1500).shape == (1365, 1000)  # f = 3
    assert central_fit_crop(image, 4096) is image
    assert central_fit_crop(image, None) is image


def test_crop_rejects_a_tiny_limit_and_non_images() -> None:
    with pytest.raises(ValueError, match="max_fit_px"):
        central_fit_crop(np.zeros((128, 128)), 32)
    with pytest.raises(ValueError, match="2-D"):
        central_fit_crop(np.zeros((2, 128, 128)), 64)
