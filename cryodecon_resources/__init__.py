"""Everything with an address: storage roots, the GPU, the DuckDB warehouse, the LanceDB library, IO.

``resources_from_environment`` builds the resource set every entry point uses (Dagster definitions, the
CLI, tests), from ``CRYODECON_HOME`` (default ``./.cryodecon``) and optional per-resource overrides:

==============================  ==========================================  =============================
variable                        meaning                                     default
==============================  ==========================================  =============================
CRYODECON_HOME                  root of the embedded (laptop) setup         ``./.cryodecon``
CRYODECON_STORAGE_ROOT          microscope storage (``<root>/<session>/``)  ``$CRYODECON_HOME/storage``
CRYODECON_WAREHOUSE_ROOT        Parquet tables + DuckDB views               ``$CRYODECON_HOME/warehouse``
CRYODECON_LIBRARY_URI           LanceDB structure library                   ``$CRYODECON_HOME/library``
CRYODECON_OUTPUT_ROOT           MRC outputs and STAR files                  ``$CRYODECON_HOME/outputs``
CRYODECON_CITATION_GRAPH        citation graph Parquet folder               ``$CRYODECON_HOME/citations``
CRYODECON_WEIGHTS               w1,…,w5 of V (logic, novelty, impact,       learned (``ScoringSettings``)
                                repro, meta), pinning the weights
CRYODECON_WEIGHTS_VERSION       version recorded with pinned weights        ``configured``
CRYODECON_ARTIFACT_STEPS        artifact removal before restoration         ``hot_pixels,stripes,carbon_edges``
CRYODECON_FINETUNE_STEPS        per-batch fine-tuning of the denoiser       0 (off: the shipped model)
CRYODECON_MOTION_PATCHES        patch motion correction, e.g. ``5x5``       none (global alignment)
CRYODECON_DEVICE                auto | cpu | cuda:N                         ``auto``
CRYODECON_CPU_THREADS           torch threads for CPU steps                 1
CRYODECON_SETTLE_SECONDS        stability window of the storage sensor      30
CRYODECON_MAX_BATCH_SIZE        exposures per acquisition batch             50
CRYODECON_BATCH_WINDOW_SECONDS  cut a partial batch after this wait         300
==============================  ==========================================  =============================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryodecon_resources.device import TorchDevice
from cryodecon_resources.io_manager import BatchIOManager, OutputStore
from cryodecon_resources.motion import MotionSettings, parse_patch_grid
from cryodecon_resources.restoration import RestorationSettings
from cryodecon_resources.scoring import ScoringSettings
from cryodecon_resources.storage import MicroscopeStorage
from cryodecon_resources.structure_library import StructureLibrary
from cryodecon_resources.warehouse import ScoreWarehouse

_Number = TypeVar("_Number", int, float)

__all__ = [
    "BatchIOManager",
    "MicroscopeStorage",
    "MotionSettings",
    "OutputStore",
    "RestorationSettings",
    "ScoreWarehouse",
    "ScoringSettings",
    "StructureLibrary",
    "TorchDevice",
    "cryodecon_home",
    "resources_from_environment",
]


def cryodecon_home() -> Path:
    return Path(os.environ.get("CRYODECON_HOME", ".cryodecon")).resolve()


def _env_path(name: str, default: Path) -> str:
    return str(Path(os.environ.get(name, str(default))).resolve())


def _env_number(name: str, default: str, kind: Callable[[str], _Number]) -> _Number:
    """A numeric setting from the environment; a value that is not a number names the variable."""
    text = os.environ.get(name, default)
    try:
        return kind(text)
    except ValueError as exc:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from exc


def _weights_from_environment() -> list[float]:
    text = os.environ.get("CRYODECON_WEIGHTS", "")
    try:
        return [float(w) for w in text.split(",") if w.strip()]
    except ValueError as exc:
        raise ValueError(f"CRYODECON_WEIGHTS must be five comma-separated numbers, got {text!r}") from exc


def resources_from_environment() -> dict[str, object]:
    home = cryodecon_home()
    return {
        "microscope_storage": MicroscopeStorage(
            root=_env_path("CRYODECON_STORAGE_ROOT", home / "storage"),
            settle_seconds=_env_number("CRYODECON_SETTLE_SECONDS", "30", float),
            max_batch_size=_env_number("CRYODECON_MAX_BATCH_SIZE", "50", int),
            batch_window_seconds=_env_number("CRYODECON_BATCH_WINDOW_SECONDS", "300", float),
        ),
        "warehouse": ScoreWarehouse(root=_env_path("CRYODECON_WAREHOUSE_ROOT", home / "warehouse")),
        "structure_library": StructureLibrary(uri=_env_path("CRYODECON_LIBRARY_URI", home / "library")),
        "device": TorchDevice(
            device=os.environ.get("CRYODECON_DEVICE", "auto"),
            cpu_threads=_env_number("CRYODECON_CPU_THREADS", "1", int),
        ),
        "scoring": ScoringSettings(
            citation_graph_path=_env_path("CRYODECON_CITATION_GRAPH", home / "citations"),
            weights=_weights_from_environment(),
            weights_version=os.environ.get("CRYODECON_WEIGHTS_VERSION", ""),
        ),
        "restoration": RestorationSettings(
            artifact_steps=[
                step.strip()
                for step in os.environ.get("CRYODECON_ARTIFACT_STEPS", "hot_pixels,stripes,carbon_edges").split(",")
                if step.strip()
            ],
            denoiser_finetune_steps=_env_number("CRYODECON_FINETUNE_STEPS", "0", int),
        ),
        "motion": MotionSettings(patch_grid=parse_patch_grid(os.environ.get("CRYODECON_MOTION_PATCHES", ""))),
        "outputs": OutputStore(root=_env_path("CRYODECON_OUTPUT_ROOT", home / "outputs")),
        "io_manager": BatchIOManager(root=_env_path("CRYODECON_OUTPUT_ROOT", home / "outputs")),
    }
