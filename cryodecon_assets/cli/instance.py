"""The Dagster instance folder the CLI runs on: ``dagster.yaml`` written once, never rewritten."""

from __future__ import annotations

import os
import sys
from pathlib import Path


# ---- environment --------------------------------------------------------------------------------------
class InstanceFileError(ValueError):
    """``$DAGSTER_HOME/dagster.yaml`` disagrees with the environment in a way that would lose runs."""


POSTGRES_STORAGE_BLOCK = "\nstorage:\n  postgres:\n    postgres_url:\n      env: CRYODECON_POSTGRES_URL\n"


def prepare_instance_home(home: Path) -> Path:
    """``$DAGSTER_HOME`` (default ``<home>/dagster_home``), with the repo's ``dagster.yaml`` where it has none.

    An existing ``dagster.yaml`` is the operator's and is never rewritten.  It is checked against the
    environment: with ``CRYODECON_POSTGRES_URL`` set, a file whose storage is not PostgreSQL is refused (the
    runs would go to another database than the operator meant), as is a file that reads its storage URL
    from an unset variable; a file without ``run_monitoring`` gets a warning (a killed run worker would
    hold its ``gpu`` slot for ever).  A new file is the template, plus the PostgreSQL storage block when
    ``CRYODECON_POSTGRES_URL`` is set.

    Raises
    ------
    InstanceFileError
        On a mismatch between the existing file and the environment, naming both.
    """
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster_home").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    postgres_url = os.environ.get("CRYODECON_POSTGRES_URL")
    if not target.exists():
        template = Path(__file__).resolve().parents[2] / "dagster.yaml"  # the repository root
        text = template.read_text() if template.exists() else "telemetry:\n  enabled: false\n"
        target.write_text(text + (POSTGRES_STORAGE_BLOCK if postgres_url else ""))
    else:
        _check_instance_file(target, postgres_url)
    return dagster_home


def _check_instance_file(path: Path, postgres_url: str | None) -> None:
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InstanceFileError(f"{path}: not valid YAML: {exc}") from exc
    storage = config.get("storage") or {}
    kind = next(iter(storage), "sqlite (default)") if isinstance(storage, dict) else str(storage)
    if postgres_url and kind != "postgres":
        raise InstanceFileError(
            f"CRYODECON_POSTGRES_URL is set but {path} stores runs in {kind}: add a `storage: postgres:` "
            "block to that file (docs/operations.md, Instance) or unset the variable; the file is the "
            "operator's and is not rewritten"
        )
    if kind == "postgres":
        url = (storage.get("postgres") or {}).get("postgres_url")
        variable = url.get("env") if isinstance(url, dict) else None
        if variable and not os.environ.get(variable):
            raise InstanceFileError(f"{path} reads its PostgreSQL URL from ${variable}, which is not set")
    if not (config.get("run_monitoring") or {}).get("enabled"):
        print(
            f"cryodecon: warning: {path} has no `run_monitoring: enabled: true`: a run worker that is killed "
            "keeps its gpu slot until someone frees it (see the repo's dagster.yaml)",
            file=sys.stderr,
        )
