"""Every setting of a cryodecon deployment, read from the environment in one place.

======================================  ==========================================  =============================
variable                                meaning                                     default
======================================  ==========================================  =============================
CRYODECON_HOME                          root of the embedded (laptop) setup         ``./.cryodecon``
CRYODECON_STORAGE_ROOT                  microscope storage (``<root>/<session>/``)  ``$CRYODECON_HOME/storage``
CRYODECON_WAREHOUSE_ROOT                Parquet tables + DuckDB views               ``$CRYODECON_HOME/warehouse``
CRYODECON_LIBRARY_URI                   LanceDB structure library (tables           ``$CRYODECON_HOME/library``
                                        ``structures``, ``class_averages``)
CRYODECON_OUTPUT_ROOT                   MRC outputs and STAR files                  ``$CRYODECON_HOME/outputs``
CRYODECON_CITATION_GRAPH                citation graph Parquet folder               ``$CRYODECON_HOME/citations``
CRYODECON_WEIGHTS                       w1,…,w5 of V (logic, novelty, impact,       learned (``ScoringSettings``)
                                        repro, meta), pinning the weights
CRYODECON_WEIGHTS_VERSION               version recorded with pinned weights        ``configured``
CRYODECON_ARTIFACT_STEPS                artifact removal before restoration         ``hot_pixels,stripes,carbon_edges``
CRYODECON_FINETUNE_STEPS                per-batch fine-tuning of the denoiser       0 (off: the shipped model)
CRYODECON_MOTION_PATCHES                patch motion correction, e.g. ``5x5``       none (global alignment)
CRYODECON_DEVICE                        auto | cpu | cuda:N                         ``auto``
CRYODECON_CPU_THREADS                   torch threads for CPU steps                 1
CRYODECON_SETTLE_SECONDS                stability window of the storage sensor      30
CRYODECON_MAX_BATCH_SIZE                exposures per acquisition batch             50
CRYODECON_BATCH_WINDOW_SECONDS          cut a partial batch after this wait         300
CRYODECON_TRUNCATED_AFTER_SECONDS       quarantine a file still incomplete after    600
CRYODECON_PARTICLE_DIAMETER_ANGSTROM    particle diameter (Å) where none is given   150
CRYODECON_PICKER_ADAPTATION_STEPS       per-batch self-training of the picker       0 (off: the shipped model)
CRYODECON_2D_CLASSES                    2D classes of a session                     20
CRYODECON_SESSION_SETTINGS              per-session settings (JSON: defaults and    ``$CRYODECON_HOME/``
                                        sessions by name; ``session_settings``)     ``session_settings.json``
CRYODECON_POSTGRES_URL                  PostgreSQL run storage (``dagster.yaml``)   unset: SQLite
======================================  ==========================================  =============================

``Settings.from_environment`` is the only reader of these variables; the resources are built from a
``Settings`` value (``build_resources``), so a caller that wants other values (the demo's short settle
window, a test's temporary folders) passes them, it does not change the environment.  A path that is
set in the environment reaches the resource as ``dg.EnvVar``: the UI shows the variable's name, and the
run worker resolves it from its own environment.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg

from cryodecon_resources.device import TorchDevice
from cryodecon_resources.io_manager import BatchIOManager, OutputStore
from cryodecon_resources.motion import MotionSettings, parse_patch_grid
from cryodecon_resources.picking import PickingSettings
from cryodecon_resources.restoration import RestorationSettings
from cryodecon_resources.scoring import ScoringSettings
from cryodecon_resources.session_settings import SessionSettingsConfig
from cryodecon_resources.storage import MicroscopeStorage
from cryodecon_resources.structure_library import StructureLibrary
from cryodecon_resources.warehouse import ScoreWarehouse

_Number = TypeVar("_Number", int, float)
DEFAULT_ARTIFACT_STEPS = ("hot_pixels", "stripes", "carbon_edges")
CLASS_LIBRARY_TABLE = "class_averages"
"""LanceDB table of the known 2D class averages (reference views and good classes of earlier sessions)."""


def _number(env: Mapping[str, str], name: str, default: _Number, kind: Callable[[str], _Number]) -> _Number:
    """A numeric setting; a value that is not a number names the variable."""
    text = env.get(name)
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError as exc:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from exc


@dataclass(frozen=True)
class Settings:
    """A deployment's settings (module docstring: variables, meanings, defaults).

    ``env_paths`` names, per path field, the environment variable it came from, so the resources can
    carry ``dg.EnvVar`` for it.
    """

    home: Path
    storage_root: Path
    warehouse_root: Path
    library_uri: Path
    output_root: Path
    citation_graph: Path
    session_settings: Path
    weights: tuple[float, ...] = ()
    weights_version: str = ""
    artifact_steps: tuple[str, ...] = DEFAULT_ARTIFACT_STEPS
    finetune_steps: int = 0
    motion_patch_grid: tuple[int, ...] = ()
    device: str = "auto"
    cpu_threads: int = 1
    settle_seconds: float = 30.0
    max_batch_size: int = 50
    batch_window_seconds: float = 300.0
    truncated_after_seconds: float = 600.0
    particle_diameter_angstrom: float = 150.0
    picker_adaptation_steps: int = 0
    classes_2d: int = 20
    env_paths: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``CRYODECON_*`` variable (``os.environ`` unless ``env`` is given).

        Raises
        ------
        ValueError
            A variable whose value is not of its type, naming the variable.
        """
        env = os.environ if env is None else env
        home = Path(env.get("CRYODECON_HOME", ".cryodecon")).resolve()
        paths = {
            "storage_root": ("CRYODECON_STORAGE_ROOT", home / "storage"),
            "warehouse_root": ("CRYODECON_WAREHOUSE_ROOT", home / "warehouse"),
            "library_uri": ("CRYODECON_LIBRARY_URI", home / "library"),
            "output_root": ("CRYODECON_OUTPUT_ROOT", home / "outputs"),
            "citation_graph": ("CRYODECON_CITATION_GRAPH", home / "citations"),
            "session_settings": ("CRYODECON_SESSION_SETTINGS", home / "session_settings.json"),
        }
        weights_text = env.get("CRYODECON_WEIGHTS", "")
        try:
            weights = tuple(float(w) for w in weights_text.split(",") if w.strip())
        except ValueError as exc:
            raise ValueError(f"CRYODECON_WEIGHTS must be five comma-separated numbers, got {weights_text!r}") from exc
        steps = env.get("CRYODECON_ARTIFACT_STEPS", ",".join(DEFAULT_ARTIFACT_STEPS))
        return cls(
            home=home,
            **{field: Path(env.get(variable, str(default))).resolve() for field, (variable, default) in paths.items()},
            weights=weights,
            weights_version=env.get("CRYODECON_WEIGHTS_VERSION", ""),
            artifact_steps=tuple(s.strip() for s in steps.split(",") if s.strip()),
            finetune_steps=_number(env, "CRYODECON_FINETUNE_STEPS", 0, int),
            motion_patch_grid=tuple(parse_patch_grid(env.get("CRYODECON_MOTION_PATCHES", ""))),
            device=env.get("CRYODECON_DEVICE", "auto"),
            cpu_threads=_number(env, "CRYODECON_CPU_THREADS", 1, int),
            settle_seconds=_number(env, "CRYODECON_SETTLE_SECONDS", 30.0, float),
            max_batch_size=_number(env, "CRYODECON_MAX_BATCH_SIZE", 50, int),
            batch_window_seconds=_number(env, "CRYODECON_BATCH_WINDOW_SECONDS", 300.0, float),
            truncated_after_seconds=_number(env, "CRYODECON_TRUNCATED_AFTER_SECONDS", 600.0, float),
            particle_diameter_angstrom=_number(env, "CRYODECON_PARTICLE_DIAMETER_ANGSTROM", 150.0, float),
            picker_adaptation_steps=_number(env, "CRYODECON_PICKER_ADAPTATION_STEPS", 0, int),
            classes_2d=_number(env, "CRYODECON_2D_CLASSES", 20, int),
            env_paths=tuple((field, variable) for field, (variable, _) in paths.items() if variable in env),
        )

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes``; a path changed here no longer comes from its variable."""
        kept = tuple((field, variable) for field, variable in self.env_paths if field not in changes)
        return dataclasses.replace(self, **changes, env_paths=kept)  # type: ignore[arg-type]

    def path_setting(self, field: str, env_vars: bool) -> str:
        """The path ``field`` as a resource field: ``dg.EnvVar`` where it came from a variable and ``env_vars``.

        Only a Dagster run or sensor resolves an ``EnvVar``; a resource used directly (CLI, tests) needs
        the resolved path.
        """
        variable = dict(self.env_paths).get(field)
        return dg.EnvVar(variable) if variable and env_vars else str(getattr(self, field))


@dataclass(frozen=True)
class Resources:
    """The resource set of every entry point (Dagster definitions, the CLI, tests), typed."""

    microscope_storage: MicroscopeStorage
    warehouse: ScoreWarehouse
    structure_library: StructureLibrary
    class_library: StructureLibrary
    device: TorchDevice
    scoring: ScoringSettings
    restoration: RestorationSettings
    motion: MotionSettings
    picking: PickingSettings
    session_settings: SessionSettingsConfig
    outputs: OutputStore
    io_manager: BatchIOManager

    def as_dict(self) -> dict[str, object]:
        """By resource key, for ``dg.Definitions`` and ``materialize``."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def build_resources(settings: Settings, env_vars: bool = False) -> Resources:
    """The resources of a deployment with these settings.

    ``env_vars``: paths that came from the environment become ``dg.EnvVar`` (for the code location's
    ``Definitions``; Dagster resolves them in each run); otherwise every path is resolved here.
    """
    path = functools.partial(settings.path_setting, env_vars=env_vars)
    return Resources(
        microscope_storage=MicroscopeStorage(
            root=path("storage_root"),
            settle_seconds=settings.settle_seconds,
            max_batch_size=settings.max_batch_size,
            batch_window_seconds=settings.batch_window_seconds,
            truncated_after_seconds=settings.truncated_after_seconds,
        ),
        warehouse=ScoreWarehouse(root=path("warehouse_root")),
        structure_library=StructureLibrary(uri=path("library_uri")),
        class_library=StructureLibrary(uri=path("library_uri"), table_name=CLASS_LIBRARY_TABLE),
        device=TorchDevice(device=settings.device, cpu_threads=settings.cpu_threads),
        scoring=ScoringSettings(
            citation_graph_path=path("citation_graph"),
            weights=list(settings.weights),
            weights_version=settings.weights_version,
        ),
        restoration=RestorationSettings(
            artifact_steps=list(settings.artifact_steps), denoiser_finetune_steps=settings.finetune_steps
        ),
        motion=MotionSettings(patch_grid=list(settings.motion_patch_grid)),
        picking=PickingSettings(
            particle_diameter_angstrom=settings.particle_diameter_angstrom,
            adaptation_steps=settings.picker_adaptation_steps,
            n_classes_2d=settings.classes_2d,
        ),
        session_settings=SessionSettingsConfig(
            path=path("session_settings"), must_exist="session_settings" in dict(settings.env_paths)
        ),
        outputs=OutputStore(root=path("output_root")),
        io_manager=BatchIOManager(root=path("output_root")),
    )
