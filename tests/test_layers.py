"""The layering rule for the simulator: production code never imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The demo simulates a session on purpose; it is the one production entry point that may.
DEMO_MODULES = {"cryodecon_assets.cli.demo", "cryodecon_assets.cli.synthetic_references"}


def production_modules() -> list[str]:
    names = []
    for package in ("cryodecon_science", "cryodecon_resources", "cryodecon_assets"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if not name.startswith("cryodecon_science.simulate") and name not in DEMO_MODULES:
                names.append(name)
    return names


def test_production_modules_load_without_the_simulator() -> None:
    """Every module but the simulator's and the demo's, and the code location, load without ``simulate``."""
    modules = production_modules()
    assert "cryodecon_assets.definitions" in modules and "cryodecon_science.picking.dog" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('cryodecon_science.simulate')))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
