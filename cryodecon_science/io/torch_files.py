"""Plain-data torch files: the one format behind the shipped denoiser weights and the ImpactFore model.

A file is a ``torch.save`` of a dict ``{"format": <tag>, "version": <int>, "state_dict": {name: tensor},
...}`` holding tensors and plain containers only.  It is read back with ``torch.load(...,
weights_only=True)``, which unpickles nothing else, so a file cannot run code.  Writes go to a temporary
file in the target folder, then ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cryodecon_science.io.atomic import atomic_target


class TorchFileError(ValueError):
    """A file that is missing, unreadable, or not the expected cryodecon format and version."""

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{path}: {detail}")


def model_payload(
    file_format: str, version: int, config: dict[str, Any], model: torch.nn.Module, meta: dict[str, Any] | None
) -> dict[str, Any]:
    """The payload of a model file: format tag, version, the model's plain-data config, its state dict as
    float32 CPU tensors (buffers included) and plain-data ``meta``."""
    return {
        "format": file_format,
        "version": version,
        "config": config,
        "state_dict": {k: v.detach().cpu().to(torch.float32).clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def save_payload(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``payload`` with ``torch.save`` atomically; the file's permissions follow the umask."""
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)


def load_payload(
    path: str | os.PathLike[str], file_format: str, version: int, error: type[TorchFileError] = TorchFileError
) -> dict[str, Any]:
    """Read a payload written by :func:`save_payload` and check its format tag, version and state dict.

    Raises
    ------
    TorchFileError (or the subclass ``error``)
        If the file is missing or unreadable, is not a torch file of plain data, has another format tag or
        version, or its ``state_dict`` is not a dict of tensors.
    """
    target = Path(path)
    if not target.is_file():
        raise error(path, "no such file")
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise error(path, f"not a readable {file_format} file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise error(path, f"not a {file_format} file")
    if payload.get("version") != version:
        raise error(path, f"version {payload.get('version')!r}, this code reads {version}")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(path, "missing 'state_dict', or it holds something other than tensors")
    return payload
