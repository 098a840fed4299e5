"""Per-batch fine-tuning of the learned denoiser: off by default, and kept only when it helps on held-out splits."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from cryodecon_resources import RestorationSettings
from cryodecon_science.io.denoiser_weights import load_denoiser, load_pretrained_denoiser, save_finetuned_denoiser
from cryodecon_science.io.mrc import Micrograph
from cryodecon_science.restoration.finetune import DenoiserRecord, finetune_denoiser
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph


@pytest.fixture(scope="module")
def batch() -> dict[str, Micrograph]:
    config = SimulationConfig(shape_px=(256, 256))
    return {
        f"m{i}": Micrograph(f"m{i}", simulate_micrograph(config, f"m{i}", (17, i)).counts, config.pixel_size_angstrom)
        for i in range(2)
    }


def _counts(batch: dict[str, Micrograph]) -> list[np.ndarray]:
    return [m.data for m in batch.values()]


def test_off_by_default_uses_the_shipped_model(tmp_path: Path, batch: dict[str, Micrograph]) -> None:
    assert RestorationSettings().denoiser_finetune_steps == 0
    save = partial(save_finetuned_denoiser, tmp_path)
    record = finetune_denoiser(_counts(batch), load_pretrained_denoiser(), steps=0, seed=1, save=save)
    assert record == DenoiserRecord("shipped", None, 0, None, None, 2)
    assert "shipped" in record.description and not any(tmp_path.iterdir())
    with pytest.raises(ValueError):
        RestorationSettings(denoiser_finetune_steps=-1)


def test_finetuned_model_is_kept_only_when_its_holdout_loss_is_lower(
    tmp_path: Path, batch: dict[str, Micrograph]
) -> None:
    torch.set_num_threads(1)
    save = partial(save_finetuned_denoiser, tmp_path)
    record = finetune_denoiser(_counts(batch), load_pretrained_denoiser(), steps=20, seed=1, save=save)
    assert record.shipped_loss is not None and record.finetuned_loss is not None
    assert record.finetune_steps == 20 and record.n_micrographs == 2
    if record.finetuned_loss < record.shipped_loss:
        assert record.source == "fine-tuned" and record.weights_path is not None
        tuned = load_denoiser(record.weights_path)
        shipped = load_pretrained_denoiser()
        # Fine-tuned from the shipped weights: same architecture, weights moved but not far.
        assert tuned.config == shipped.config
        moved = [
            float((a - b).detach().norm() / b.detach().norm())
            for a, b in zip(tuned.parameters(), shipped.parameters(), strict=True)
        ]
        assert 0.0 < max(moved) < 0.5
    else:
        assert record.source == "shipped" and record.weights_path is None
        assert not (tmp_path / "denoiser_finetuned.pt").exists()
    assert np.isfinite(record.shipped_loss)
