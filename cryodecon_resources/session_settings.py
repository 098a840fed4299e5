"""The facility's configuration of per-session settings (``CRYODECON_SESSION_SETTINGS``).

A JSON file with the settings every session gets and, by session name, those of one session::

    {
      "defaults": {"gain": {"rotate_quarter_turns_ccw": 2, "flip": "upside_down"}},
      "sessions": {
        "krios1_20250108": {"particle_diameter_angstrom": 120.0, "gain": {"path": "/refs/K3_gain_0108.mrc"}}
      }
    }

Merged with the session folder's ``session.json`` by ``cryodecon_science.io.session_settings`` (defaults <
``session.json`` < the session's entry here).  Errors name this file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from cryodecon_science.io.session_settings import (
    SessionSettings,
    SessionSettingsError,
    parse_settings_document,
    read_settings_file,
    resolve_session_settings,
)


class SessionSettingsConfig(dg.ConfigurableResource):
    """Where the facility's per-session settings file is (module docstring).

    ``path``: the JSON file ("" or a missing file: no configured settings, unless ``must_exist``);
    ``must_exist``: the path was given explicitly (``CRYODECON_SESSION_SETTINGS``), so a missing file is an
    error rather than an empty configuration.
    """

    path: str = ""
    must_exist: bool = False

    def document(self) -> dict[str, Any]:
        """The configuration, checked (``{}`` without one).

        Raises
        ------
        SessionSettingsError
            Unreadable, not JSON, unknown top-level keys, or a settings document that does not validate.
        """
        if not self.path:
            return {}
        document = read_settings_file(self.path, only_settings=False)
        if document is None:
            if self.must_exist:
                raise SessionSettingsError(self.path, "", "no such file (CRYODECON_SESSION_SETTINGS)")
            return {}
        unknown = sorted(str(key) for key in document if key not in ("defaults", "sessions"))
        if unknown:
            raise SessionSettingsError(self.path, "(top level)", f"unknown keys {unknown} (known: defaults, sessions)")
        sessions = document.get("sessions", {})
        if not isinstance(sessions, dict):
            raise SessionSettingsError(self.path, "sessions", "must be an object keyed by session name")
        parse_settings_document(document.get("defaults", {}), f"{self.path} defaults", only_settings=True)
        for name, entry in sessions.items():
            parse_settings_document(entry, f"{self.path} sessions.{name}", only_settings=True)
        return document

    def for_session(self, storage_root: str | Path, session: str) -> SessionSettings:
        """The settings of ``<storage_root>/<session>``: this configuration merged with its ``session.json``."""
        document = self.document()
        return resolve_session_settings(
            Path(storage_root) / session,
            configured_defaults=document.get("defaults"),
            configured_for_session=document.get("sessions", {}).get(session),
            configuration_source=self.path or "configuration",
        )
