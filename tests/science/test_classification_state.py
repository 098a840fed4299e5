"""The 2D class state kept between batches: written and read back exactly, a bad file refused by name;
Fourier cropping of boxes keeps the band below the new Nyquist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryodecon_science.classification import ClassificationState
from cryodecon_science.classification.batches import ClassStateError, fourier_crop_boxes, load_state, save_state


def small_state() -> ClassificationState:
    generator = torch.Generator().manual_seed(3)
    shape = (2, 3, 16, 9)
    return ClassificationState(
        numerator=torch.complex(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)),
        denominator=torch.rand(shape, generator=generator),
        weight=torch.rand((2, 3), generator=generator),
        particle_count=np.array([5, 0, 7], dtype=np.int64),
        noise_variance=0.93,
        noise_weight=11.5,
        particles_seen=12,
        batches_seen=2,
        pixel_size_angstrom=3.2,
        particle_diameter_angstrom=150.0,
    )


def test_the_state_round_trips_exactly(tmp_path: Path) -> None:
    state = small_state()
    save_state(state, tmp_path / "sessions" / "after-000002.pt")
    back = load_state(tmp_path / "sessions" / "after-000002.pt")
    for name in ("numerator", "denominator", "weight"):
        assert torch.equal(getattr(back, name), getattr(state, name))
    np.testing.assert_array_equal(back.particle_count, state.particle_count)
    assert (back.noise_variance, back.particles_seen, back.batches_seen, back.pixel_size_angstrom) == (
        0.93,
        12,
        2,
        3.2,
    )


def test_a_truncated_foreign_or_incomplete_state_file_is_refused_naming_it(tmp_path: Path) -> None:
    good = tmp_path / "after-000001.pt"
    save_state(small_state(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "cryodecon.picker", "version": 1, "state_dict": {}}, foreign)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": "cryodecon.classes2d", "version": 1, "state_dict": {"weight": torch.ones(2, 3)}}, incomplete)
    for path, message in (
        (truncated, "not a readable"),
        (foreign, "not a cryodecon.classes2d file"),
        (incomplete, "incomplete"),
        (tmp_path / "missing.pt", "no such file"),
    ):
        with pytest.raises(ClassStateError, match=message) as caught:
            load_state(path)
        assert str(path) in str(caught.value)


def test_fourier_crop_keeps_the_low_band_and_scales_the_pixel_size() -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    wave = np.cos(2 * np.pi * 3 * xx / 64) + 0.5 * np.sin(2 * np.pi * 5 * yy / 64)  # below the new Nyquist (16)
    cropped, pixel = fourier_crop_boxes(wave[None], 2.0, 32)
    yc, xc = np.mgrid[0:32, 0:32]
    expected = np.cos(2 * np.pi * 3 * xc / 32) + 0.5 * np.sin(2 * np.pi * 5 * yc / 32)  # values keep their scale
    assert pixel == 4.0 and cropped.shape == (1, 32, 32)
    np.testing.assert_allclose(cropped[0], expected, atol=1e-5)
    same, unchanged = fourier_crop_boxes(wave[None], 2.0, 64)
    assert unchanged == 2.0 and np.allclose(same[0], wave)
    with pytest.raises(ValueError, match="even"):
        fourier_crop_boxes(wave[None], 2.0, 33)
