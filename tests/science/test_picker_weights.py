"""Picker weights: the shipped file loads offline and is small, save/load round trip, bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cryodecon_science.io.picker_weights import (
    PickerWeightsError,
    load_picker,
    load_picker_meta,
    load_pretrained_picker,
    save_picker,
)
from cryodecon_science.picking.learned import PickerConfig, PickerUNet

DATA = Path(__file__).resolve().parents[2] / "cryodecon_science" / "data"


def test_shipped_weights_load_offline_and_are_small() -> None:
    model = load_pretrained_picker()
    assert isinstance(model, PickerUNet) and not model.training
    assert model.n_parameters() <= 310_000  # the budget of about 300 k (fast on a CPU)
    assert (DATA / "picker_v1.pt").stat().st_size <= 2_000_000
    provenance = json.loads((DATA / "picker_v1.json").read_text())
    assert float(model.detection_threshold) == pytest.approx(provenance["detection_threshold"])
    assert provenance["model_config"] == model.config.to_dict()
    assert load_picker_meta(DATA / "picker_v1.pt")["n_parameters"] == model.n_parameters()


def test_round_trip_keeps_config_weights_and_threshold(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PickerUNet(PickerConfig(base_channels=4, max_channels=8, depth=3, radius_binned_px=7.0))
    model.detection_threshold.fill_(0.37)
    path = tmp_path / "picker.pt"
    save_picker(model, path, meta={"note": "test"})
    loaded = load_picker(path)
    assert loaded.config == model.config
    assert float(loaded.detection_threshold) == pytest.approx(0.37)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert load_picker_meta(path) == {"note": "test"}
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PickerWeightsError, match="no such file"):
        load_picker(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PickerWeightsError, match="readable"):
        load_picker(garbage)
    other = tmp_path / "other.pt"
    torch.save({"format": "cryodecon.denoiser", "version": 1, "state_dict": {}}, other)
    with pytest.raises(PickerWeightsError, match=r"not a cryodecon\.picker"):
        load_picker(other)
    model = PickerUNet(PickerConfig(base_channels=4, max_channels=8, depth=3))
    wrong_shape = tmp_path / "wrong.pt"
    save_picker(model, wrong_shape)
    payload = torch.load(wrong_shape, weights_only=True)
    payload["config"]["base_channels"] = 8
    torch.save(payload, wrong_shape)
    with pytest.raises(PickerWeightsError, match="do not build"):
        load_picker(wrong_shape)
    model.detection_threshold.fill_(1.5)
    bad_threshold = tmp_path / "threshold.pt"
    save_picker(model, bad_threshold)
    with pytest.raises(PickerWeightsError, match="threshold"):
        load_picker(bad_threshold)
