"""Save and load the learned particle picker's weights (``cryodecon_science.picking.learned.PickerUNet``).

One file written with ``torch.save`` holding only plain data: ``{"format": "cryodecon.picker", "version": 1,
"config": {PickerConfig field: int | float}, "state_dict": {name: tensor}, "meta": {str: plain data}}``
(``io.torch_files``).  The state dict includes the calibrated ``detection_threshold``.  It is read back with
``torch.load(..., weights_only=True)``, which unpickles tensors and plain containers only, so a file cannot
run code; writes are atomic.

The pretrained model ships inside the package as ``cryodecon_science/data/picker_v1.pt`` (trained by
``benchmarks/train_picker.py``; its training configuration, command and validation figures are in
``picker_v1.json`` beside it) and is found with ``importlib.resources``, so it loads offline from an
installed package.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from typing import Any

from cryodecon_science.io.torch_files import TorchFileError, load_payload, model_payload, save_payload
from cryodecon_science.picking.learned import PickerConfig, PickerUNet

FORMAT = "cryodecon.picker"
VERSION = 1
PRETRAINED_RESOURCE = "data/picker_v1.pt"
"""Path of the shipped weights inside the ``cryodecon_science`` package."""


class PickerWeightsError(TorchFileError):
    """A weights file that is missing, unreadable, or not a cryodecon picker."""


def save_picker(model: PickerUNet, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` (config + float32 state dict, threshold included) and plain-data ``meta`` atomically."""
    payload = model_payload(FORMAT, VERSION, model.config.to_dict(), model, meta)
    save_payload(payload, path)


def _read(path: str | os.PathLike[str]) -> tuple[PickerUNet, dict[str, Any]]:
    payload = load_payload(path, FORMAT, VERSION, PickerWeightsError)
    config_doc, state = payload.get("config"), payload["state_dict"]
    if not isinstance(config_doc, dict):
        raise PickerWeightsError(path, "missing 'config'")
    known = {f.name for f in dataclasses.fields(PickerConfig)}
    try:
        config = PickerConfig(**{k: v for k, v in config_doc.items() if k in known})
        model = PickerUNet(config)
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PickerWeightsError(path, f"config/tensors do not build a PickerUNet: {exc}") from exc
    if not 0.0 < float(model.detection_threshold) < 1.0:
        raise PickerWeightsError(path, f"detection_threshold {float(model.detection_threshold)} is not in (0, 1)")
    model.eval()
    meta = payload.get("meta")
    return model, dict(meta) if isinstance(meta, dict) else {}


def load_picker(path: str | os.PathLike[str]) -> PickerUNet:
    """Read a model written by :func:`save_picker`; returned in eval mode on the CPU.

    Raises
    ------
    PickerWeightsError
        If the file is missing or unreadable, is not a torch file of plain data, has another format tag
        or version, its config or tensors do not build a :class:`PickerUNet`, or its threshold is not in
        (0, 1).
    """
    return _read(path)[0]


def load_picker_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` dictionary of a weights file (training provenance); {} when absent.

    Raises
    ------
    PickerWeightsError
        As :func:`load_picker`.
    """
    return _read(path)[1]


def load_pretrained_picker() -> PickerUNet:
    """The shipped model ``cryodecon_science/data/picker_v1.pt``, located with ``importlib.resources``.

    Raises
    ------
    PickerWeightsError
        If the package was installed without its data files or the file is corrupt.
    """
    resource = importlib.resources.files("cryodecon_science").joinpath(PRETRAINED_RESOURCE)
    if not resource.is_file():
        raise PickerWeightsError(str(resource), "shipped picker weights not found (package data missing)")
    with importlib.resources.as_file(resource) as path:
        return load_picker(path)
