"""Save and load the learned denoiser's weights (``cryodecon_science.restoration.denoiser.DenoiserUNet``).

One file written with ``torch.save`` holding only plain data: ``{"format": "cryodecon.denoiser", "version": 1,
"config": {DenoiserConfig field: int | float}, "state_dict": {name: tensor}, "meta": {str: plain data}}``.
It is read back with ``torch.load(..., weights_only=True)``, which unpickles tensors and plain containers
only, so a file cannot run code.  Writes are atomic (temporary file in the target folder, then
``os.replace``).

The pretrained model ships inside the package as ``cryodecon_science/data/denoiser_v1.pt`` (trained by
``benchmarks/train_denoiser.py``; its training configuration and command are in ``denoiser_v1.json`` beside
it) and is found with ``importlib.resources``, so it loads offline from an installed package.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cryodecon_science.io.torch_files import TorchFileError, load_payload, model_payload, save_payload
from cryodecon_science.restoration.denoiser import DenoiserConfig, DenoiserUNet

FORMAT = "cryodecon.denoiser"
VERSION = 1
PRETRAINED_RESOURCE = "data/denoiser_v1.pt"
"""Path of the shipped weights inside the ``cryodecon_science`` package."""
FINETUNED_FILENAME = "denoiser_finetuned.pt"
"""Name of a batch's fine-tuned weights in its folder (:func:`save_finetuned_denoiser`)."""


class DenoiserWeightsError(TorchFileError):
    """A weights file that is missing, unreadable, or not a cryodecon denoiser."""


def save_denoiser(model: DenoiserUNet, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` (config + float32 state dict) and plain-data ``meta`` to ``path`` atomically."""
    payload = model_payload(FORMAT, VERSION, model.config.to_dict(), model, meta)
    save_payload(payload, path)  # package data: readable by everyone


def save_finetuned_denoiser(folder: str | os.PathLike[str], model: DenoiserUNet, meta: Mapping[str, object]) -> str:
    """Write a batch's fine-tuned model as ``<folder>/denoiser_finetuned.pt`` (folder created); returns its path."""
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FINETUNED_FILENAME
    save_denoiser(model, path, dict(meta))
    return str(path)


def load_denoiser(path: str | os.PathLike[str]) -> DenoiserUNet:
    """Read a model written by :func:`save_denoiser`; returned in eval mode on the CPU.

    Raises
    ------
    DenoiserWeightsError
        If the file is missing or unreadable, is not a torch file of plain data, has another format tag
        or version, or its config or tensors do not build a :class:`DenoiserUNet`.
    """
    payload = load_payload(path, FORMAT, VERSION, DenoiserWeightsError)
    config_doc, state = payload.get("config"), payload["state_dict"]
    if not isinstance(config_doc, dict):
        raise DenoiserWeightsError(path, "missing 'config'")
    known = {f.name for f in dataclasses.fields(DenoiserConfig)}
    try:
        config = DenoiserConfig(**{k: v for k, v in config_doc.items() if k in known})
        model = DenoiserUNet(config)
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DenoiserWeightsError(path, f"config/tensors do not build a DenoiserUNet: {exc}") from exc
    model.eval()
    return model


def load_denoiser_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` dictionary of a weights file (training provenance); {} when absent."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise DenoiserWeightsError(path, f"not a readable weights file ({type(exc).__name__}: {exc})") from exc
    meta = payload.get("meta") if isinstance(payload, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def load_pretrained_denoiser() -> DenoiserUNet:
    """The shipped model ``cryodecon_science/data/denoiser_v1.pt``, located with ``importlib.resources``.

    Raises
    ------
    DenoiserWeightsError
        If the package was installed without its data files or the file is corrupt.
    """
    resource = importlib.resources.files("cryodecon_science").joinpath(PRETRAINED_RESOURCE)
    if not resource.is_file():
        raise DenoiserWeightsError(str(resource), "shipped denoiser weights not found (package data missing)")
    with importlib.resources.as_file(resource) as path:
        return load_denoiser(path)
