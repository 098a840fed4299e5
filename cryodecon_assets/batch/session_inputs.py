"""What ``raw_micrographs`` reads a session's exposures with: the session's settings and gain references.

Settings (``cryodecon_science.io.session_settings``) are resolved once per batch from the facility's
configuration (``SessionSettingsConfig``) and the session folder's ``session.json``; a settings document
that does not validate fails the run with the document and field named (no exposure is read with settings
that may be wrong; the sweep requests the batch again once the file is fixed).  Each movie's gain reference
is found and read once per run (``io.gain_discovery.SessionGains``); a movie that needs one and has none
raises ``GainReferenceMissingError``, which the asset quarantines.  The settings' version (SHA-256 of their
canonical JSON) goes to the warehouse table ``session_settings`` with the batch, and to every
``micrographs`` row read with it.
"""

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg

from cryodecon_resources import ScoreWarehouse, SessionSettingsConfig
from cryodecon_science.io.gain_discovery import SessionGains
from cryodecon_science.io.layout import RawExposure, classify_exposure, read_exposure
from cryodecon_science.io.session_settings import SessionSettings, SessionSettingsError
from cryodecon_science.metadata import FieldValue

SETTINGS_TABLE = "session_settings"


class SessionInputs:
    """One batch's reading context: its session's settings and gain references (module docstring)."""

    def __init__(self, session_dir: Path, settings: SessionSettings) -> None:
        self.session_dir = Path(session_dir)
        self.settings = settings
        self.gains = SessionGains(self.session_dir, settings.gain)
        self.references_used: dict[str, str] = {}

    @classmethod
    def for_session(cls, config: SessionSettingsConfig, storage_root: str, session: str) -> "SessionInputs":
        """Resolve the session's settings; a document that does not validate fails the run (``dg.Failure``)."""
        try:
            settings = config.for_session(storage_root, session)
        except SessionSettingsError as exc:
            raise dg.Failure(
                description=f"session settings of {session!r} are not usable: {exc}",
                metadata={"document": exc.source, "field": exc.field_name, "detail": exc.detail},
            ) from exc
        return cls(Path(storage_root) / session, settings)

    def _settings_fields(self) -> dict[str, FieldValue]:
        optics = self.settings.optics_overrides
        values = {
            "optics.pixel_size_angstrom": optics.pixel_size_angstrom,
            "optics.voltage_kv": optics.voltage_kv,
            "optics.spherical_aberration_mm": optics.spherical_aberration_mm,
        }
        return {name: value for name, value in values.items() if value is not None}

    def read(self, path: Path) -> RawExposure:
        """Read one exposure (``layout.read_exposure``) with the session's gain, defects and optics overrides.

        Raises the readers' typed errors, and ``GainReferenceMissingError`` / ``GainReferenceMismatchError``
        for a movie whose gain is missing or does not fit.
        """
        exposure = classify_exposure(path)
        choice = self.gains.find_gain_reference(exposure)
        priority: list[tuple[str, str, dict[str, FieldValue]]] = []
        overrides = self._settings_fields()
        if overrides:
            priority.append(("session_settings", f"sha256:{self.settings.sha256}", overrides))
        if choice.reference is not None and choice.origin is not None:
            origin: dict[str, FieldValue] = {"detector.gain_reference_origin": choice.origin}
            priority.append(("gain_discovery", choice.reference.source_path, origin))
        raw = read_exposure(
            exposure, gain=choice.reference, defect_list_path=choice.defect_list_path, priority_sources=priority
        )
        if choice.reference is not None:
            self.references_used[choice.reference.source_path] = choice.reference.sha256
        return raw

    def stamp(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        """Put the settings' version on every ``micrographs`` row."""
        for row in tables.get("micrographs", []):
            row["session_settings_sha256"] = self.settings.sha256

    def settings_row(self, batch: str, session: str, exposures: int, run_id: str) -> dict[str, Any]:
        """The ``session_settings`` row of this batch."""
        settings, gain = self.settings, self.settings.gain
        return {
            "batch": batch,
            "session": session,
            "sha256": settings.sha256,
            "settings_json": settings.to_json(),
            "sources_json": json.dumps(dict(settings.sources), sort_keys=True),
            "particle_diameter_angstrom": settings.particle_diameter_angstrom,
            "gain_path": gain.path,
            "gain_rotate_quarter_turns_ccw": gain.rotate_quarter_turns_ccw,
            "gain_flip": gain.flip,
            "gain_convention": gain.convention,
            "gain_references_json": json.dumps(self.references_used, sort_keys=True),
            "exposures": exposures,
            "run_id": run_id,
            "recorded_at": time.time(),
        }

    def record(
        self, warehouse: ScoreWarehouse, batch: str, session: str, exposures: int, run_id: str, whole_batch: bool
    ) -> int:
        """Write this batch's settings version to ``session_settings``; returns the partition's rows.

        A run of the whole batch replaces the partition's rows; a rerun of some of its micrographs adds its
        version (replacing an identical one), so every version a batch's exposures were read with stays.
        """
        row = self.settings_row(batch, session, exposures, run_id)
        rows = [row]
        if not whole_batch:
            old = warehouse.read_rows(SETTINGS_TABLE, batch)
            if len(old):
                kept = old[old["sha256"] != row["sha256"]]
                kept = kept.astype(object).where(kept.notna(), None)
                rows = [*kept.to_dict("records"), row]
        return warehouse.write_rows(SETTINGS_TABLE, batch, rows)
