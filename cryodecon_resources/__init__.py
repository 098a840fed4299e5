"""Everything with an address: storage roots, the GPU, the DuckDB warehouse, the LanceDB library, IO.

Settings (every ``CRYODECON_*`` variable, one table) and the typed resource set live in ``settings``.
"""

from __future__ import annotations

from pathlib import Path

from cryodecon_resources.device import TorchDevice
from cryodecon_resources.io_manager import BatchIOManager, OutputStore
from cryodecon_resources.motion import MotionSettings, parse_patch_grid
from cryodecon_resources.picking import PickingSettings
from cryodecon_resources.restoration import RestorationSettings
from cryodecon_resources.scoring import ScoringSettings
from cryodecon_resources.session_settings import SessionSettingsConfig
from cryodecon_resources.settings import Resources, Settings, build_resources
from cryodecon_resources.storage import MicroscopeStorage
from cryodecon_resources.structure_library import StructureLibrary
from cryodecon_resources.warehouse import ScoreWarehouse

__all__ = [
    "BatchIOManager",
    "MicroscopeStorage",
    "MotionSettings",
    "OutputStore",
    "PickingSettings",
    "Resources",
    "RestorationSettings",
    "ScoreWarehouse",
    "ScoringSettings",
    "SessionSettingsConfig",
    "Settings",
    "StructureLibrary",
    "TorchDevice",
    "build_resources",
    "cryodecon_home",
    "parse_patch_grid",
    "resources_from_environment",
]


def cryodecon_home() -> Path:
    return Settings.from_environment().home


def resources_from_environment() -> dict[str, object]:
    """The resources as the environment configures them, resolved, by key (``settings.build_resources``)."""
    return build_resources(Settings.from_environment()).as_dict()
