"""Save and load a trained ImpactFore model (``cryodecon_science.impact.ImpactModel``).

One file written with ``torch.save`` holding only plain data: ``{"format": "cryodecon.impact_model",
"version": 1, "state_dict": {name: tensor}, "meta": {field: str | int | float | bool | list}}``.  It is
read back with ``torch.load(..., weights_only=True)``, which unpickles tensors and plain containers only, so
a file cannot run code.  Writes go to a temporary file in the target folder, then ``os.replace``, so a reader
never sees half a file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from cryodecon_science.impact import ImpactModel
from cryodecon_science.io.torch_files import TorchFileError, load_payload, save_payload

FORMAT = "cryodecon.impact_model"
VERSION = 1
_TUPLE_FIELDS = {
    "node_mean",
    "node_std",
    "edge_mean",
    "edge_std",
    "topics",
    "fields",
    "train_years",
    "validation_years",
}


class ImpactModelFileError(TorchFileError):
    """A model file that is missing, unreadable, or not a cryodecon ImpactFore model."""


def save_impact_model(model: ImpactModel, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    meta: dict[str, Any] = {}
    for field in dataclasses.fields(model):
        if field.name == "state_dict":
            continue
        value = getattr(model, field.name)
        meta[field.name] = list(value) if isinstance(value, tuple) else value
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict.items()},
        "meta": meta,
    }
    save_payload(payload, path)


def load_impact_model(path: str | os.PathLike[str]) -> ImpactModel:
    """Read a model written by :func:`save_impact_model`.

    Raises
    ------
    ImpactModelFileError
        If the file is missing or unreadable, is not a torch file of plain data, has another format tag
        or version, or lacks fields of :class:`ImpactModel`.
    """
    payload = load_payload(path, FORMAT, VERSION, ImpactModelFileError)
    meta, state = payload.get("meta"), payload["state_dict"]
    if not isinstance(meta, dict):
        raise ImpactModelFileError(path, "missing 'meta'")
    names = [f.name for f in dataclasses.fields(ImpactModel) if f.name != "state_dict"]
    missing = [n for n in names if n not in meta]
    if missing:
        raise ImpactModelFileError(path, f"missing field(s) {missing}")
    values: dict[str, Any] = {n: tuple(meta[n]) if n in _TUPLE_FIELDS else meta[n] for n in names}
    try:
        return ImpactModel(state_dict=state, **values)
    except TypeError as exc:
        raise ImpactModelFileError(path, f"fields do not build an ImpactModel: {exc}") from exc
