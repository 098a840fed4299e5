"""A session's layout on microscope storage, and its metadata (``session.json``).

Layout under ``<storage_root>/<session_name>/``:

* ``session.json``: microscope settings, dose, every exposure's nominal defocus and, optionally, the
  sample's particle diameter (what a facility records at acquisition; the pipeline reads it with
  ``read_session_metadata``);
* ``micrographs/<name>.mrc``: integrated micrographs, pixel size in the header;
* ``movies/<name>_fractions.mrc``: dose-fractionated movies, one section per frame.

A movie's exposure name is its file stem without the ``_fractions`` suffix.  The simulator writes
sessions in this layout (``simulate.write_simulated_session``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryodecon_science.optics import MicroscopeSettings

SESSION_METADATA_FILENAME = "session.json"
MICROGRAPH_DIRNAME = "micrographs"
MOVIE_DIRNAME = "movies"
MOVIE_SUFFIX = "_fractions"
SESSION_FORMAT = "cryodecon-session/1"


class SessionMetadataError(ValueError):
    """``session.json`` is missing, not JSON, or lacks / mistypes a required field."""


@dataclass(frozen=True)
class SessionMetadata:
    """What ``session.json`` records for the pipeline.

    Attributes
    ----------
    microscope : MicroscopeSettings
        Voltage (kV), C_s (mm), amplitude contrast fraction and pixel size (Å).
    dose_e_per_angstrom2 : float
        Total exposure per image, e⁻/Å².
    nominal_defocus_angstrom : dict of str to float
        The microscope's nominal mean defocus per exposure name, Å, positive = underfocus.
    particle_diameter_angstrom : float or None
        The sample's particle diameter, Å (optional field; None where the description omits it).
    positions : dict of str to (str, str)
        Grid square and foil hole of each exposure that the description places (optional fields
        ``grid_square_id`` and ``foil_hole_id``, as EPU's folder and file names give them).
    """

    microscope: MicroscopeSettings
    dose_e_per_angstrom2: float
    nominal_defocus_angstrom: dict[str, float]
    particle_diameter_angstrom: float | None = None
    positions: dict[str, tuple[str, str]] = field(default_factory=dict)


def exposure_name(path: str | os.PathLike[str]) -> str:
    """Exposure name of a session file, the key of ``SessionMetadata.nominal_defocus_angstrom``.

    The file stem (up to the first '.'), without the movie suffix: ``movies/x_mov_0001_fractions.mrc`` ->
    ``x_mov_0001``, ``micrographs/x_mic_0001.mrc`` -> ``x_mic_0001``.
    """
    stem = Path(path).name.split(".")[0]
    return stem[: -len(MOVIE_SUFFIX)] if stem.endswith(MOVIE_SUFFIX) else stem


def _number(value: Any, where: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise SessionMetadataError(f"{where} must be a finite number, got {value!r}")
    if positive and not float(value) > 0:
        raise SessionMetadataError(f"{where} must be positive, got {value!r}")
    return float(value)


def _identifier(value: Any, where: str) -> str:
    """An EPU grid-square or foil-hole id: a non-empty string of letters, digits, '_' or '-', or an integer."""
    if (
        isinstance(value, bool)
        or not isinstance(value, str | int)
        or not str(value).replace("_", "").replace("-", "").isalnum()
    ):
        raise SessionMetadataError(f"{where} must be an id (letters, digits, '_', '-'), got {value!r}")
    return str(value)


def _field(document: dict[str, Any], key: str, where: str) -> Any:
    if key not in document:
        raise SessionMetadataError(f"{where}: missing field {key!r}")
    return document[key]


def read_session_metadata(session_dir: Path) -> SessionMetadata:
    """Read ``<session_dir>/session.json``.

    Raises
    ------
    SessionMetadataError
        (a ValueError) when the file is missing or unreadable, is not JSON, or a required field is
        missing, of the wrong type, non-finite, or outside the microscope's valid range.
    """
    path = Path(session_dir) / SESSION_METADATA_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionMetadataError(f"{path}: cannot read session metadata ({exc})") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SessionMetadataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise SessionMetadataError(f"{path}: top level must be a JSON object")
    where = str(path)
    microscope_doc = _field(document, "microscope", where)
    if not isinstance(microscope_doc, dict):
        raise SessionMetadataError(f"{where}: 'microscope' must be an object")
    values = {
        key: _number(_field(microscope_doc, key, f"{where} microscope"), f"microscope.{key}", positive)
        for key, positive in (
            ("voltage_kv", True),
            ("spherical_aberration_mm", False),
            ("amplitude_contrast_fraction", False),
            ("pixel_size_angstrom", True),
        )
    }
    try:
        microscope = MicroscopeSettings(**values)
    except ValueError as exc:
        raise SessionMetadataError(f"{where}: {exc}") from exc
    dose = _number(_field(document, "dose_e_per_angstrom2", where), "dose_e_per_angstrom2", True)
    exposures = _field(document, "exposures", where)
    if not isinstance(exposures, dict):
        raise SessionMetadataError(f"{where}: 'exposures' must be an object keyed by exposure name")
    nominal: dict[str, float] = {}
    positions: dict[str, tuple[str, str]] = {}
    for name, exposure in exposures.items():
        if not isinstance(exposure, dict):
            raise SessionMetadataError(f"{where}: exposure {name!r} must be an object")
        value = _field(exposure, "nominal_defocus_angstrom", f"{where} exposure {name!r}")
        nominal[str(name)] = _number(value, f"exposures.{name}.nominal_defocus_angstrom", False)
        if "grid_square_id" in exposure or "foil_hole_id" in exposure:
            positions[str(name)] = (
                _identifier(_field(exposure, "grid_square_id", f"{where} exposure {name!r}"), "grid_square_id"),
                _identifier(_field(exposure, "foil_hole_id", f"{where} exposure {name!r}"), "foil_hole_id"),
            )
    diameter = document.get("particle_diameter_angstrom")
    return SessionMetadata(
        microscope=microscope,
        dose_e_per_angstrom2=dose,
        nominal_defocus_angstrom=nominal,
        particle_diameter_angstrom=(
            None if diameter is None else _number(diameter, "particle_diameter_angstrom", True)
        ),
        positions=positions,
    )
