"""Per-session settings: what an operator states about a session, validated, merged and versioned.

A session's settings come from up to three JSON documents, merged field by field (later wins):

1. the configuration's defaults (``CRYODECON_SESSION_SETTINGS`` file, object ``"defaults"``);
2. the session folder's ``session.json`` (its settings keys; the other keys of that file — ``microscope``,
   ``dose_e_per_angstrom2``, ``exposures``, … — are the session description of ``io.session``);
3. the configuration's entry for this session (``"sessions": {"<session>": {...}}``): storage is often
   read-only to the pipeline, so the facility's configuration has the last word.

Settings keys (every one optional)::

    {
      "particle_diameter_angstrom": 160.0,
      "gain": {
        "path": "gain/K3_CountRef.mrc",      # relative to the session folder, or absolute
        "rotate_quarter_turns_ccw": 2,        # MotionCor2 -RotGain: 0-3
        "flip": "upside_down",                # MotionCor2 -FlipGain: "none" | "upside_down" | "left_right" (or 0, 1, 2)
        "convention": "multiply",             # "multiply" (corrected = raw x gain) | "divide" (raw / gain)
        "required": true,                     # movies without a gain are quarantined (default: by rule)
        "defect_list_path": "gain/defects.txt"  # "x y" per line, 0-based
      },
      "optics_overrides": {
        "pixel_size_angstrom": 0.83, "voltage_kv": 300.0,
        "spherical_aberration_mm": 2.7, "amplitude_contrast_fraction": 0.1
      },
      "thresholds": {                         # exposure curation (cryodecon_science.curation); null: not applied
        "ctf_fit_resolution_max_angstrom": 6.0, "defocus_min_angstrom": 5000.0, "defocus_max_angstrom": 30000.0,
        "astigmatism_max_angstrom": 1000.0, "ice_thickness_index_max": null,
        "total_motion_max_angstrom": 60.0, "particles_min": 50
      }
    }

Orientation follows MotionCor2 (``io.gain.orient_image``): rotate the reference counter-clockwise by 90° ×
``rotate_quarter_turns_ccw``, then flip.  Every value is checked (type, range, unknown keys inside
``gain``, ``optics_overrides`` and ``thresholds``, unknown top-level keys in a configuration document);
``SessionSettingsError`` names the document and the field.  ``SessionSettings.sha256`` is the hash of the
canonical JSON of the resolved values: the version recorded with every batch that used them.  Unlike the
other fields, a threshold given as ``null`` is kept: it switches off a threshold that a lower layer (or the
default, ``CurationThresholds``) applies.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryodecon_science.curation import MINIMUM_THRESHOLDS, THRESHOLD_NAMES, CurationThresholds
from cryodecon_science.io.gain import GainConvention, GainFlip
from cryodecon_science.io.session import SESSION_METADATA_FILENAME

SESSION_SETTINGS_FORMAT = "cryodecon-session-settings/1"
SETTINGS_KEYS = ("particle_diameter_angstrom", "gain", "optics_overrides", "thresholds")
GAIN_KEYS = ("path", "rotate_quarter_turns_ccw", "flip", "convention", "required", "defect_list_path")
OPTICS_KEYS = ("pixel_size_angstrom", "voltage_kv", "spherical_aberration_mm", "amplitude_contrast_fraction")
_FLIPS: dict[Any, GainFlip] = {
    "none": "none",
    "upside_down": "upside_down",
    "left_right": "left_right",
    0: "none",
    1: "upside_down",
    2: "left_right",
}


class SessionSettingsError(ValueError):
    """A settings document that cannot be used; names the document (``source``) and the field."""

    def __init__(self, source: str, field_name: str, detail: str) -> None:
        self.source = source
        self.field_name = field_name
        self.detail = detail
        super().__init__(f"{source}: {field_name}: {detail}" if field_name else f"{source}: {detail}")


@dataclass(frozen=True)
class GainSettings:
    """How a session's gain reference is found and oriented.

    Attributes
    ----------
    path : str or None
        The reference, relative to the session folder or absolute; None: found by convention
        (``io.gain_discovery``).
    rotate_quarter_turns_ccw : int
        MotionCor2 ``-RotGain`` (0–3), applied to whichever reference the session uses.
    flip : {"none", "upside_down", "left_right"}
        MotionCor2 ``-FlipGain`` 0, 1, 2, applied after the rotation.
    convention : {"multiply", "divide"}
        corrected = raw × gain, or raw / gain (RELION's reading of EER ``.gain`` files).
    required : bool or None
        True: every movie needs a gain (quarantined without); False: none does (a movie without one is
        processed as stored); None: by rule (``io.gain_discovery.gain_needed_because``).
    defect_list_path : str or None
        Defect list (``x y`` per line, 0-based), relative to the session folder or absolute.
    """

    path: str | None = None
    rotate_quarter_turns_ccw: int = 0
    flip: GainFlip = "none"
    convention: GainConvention = "multiply"
    required: bool | None = None
    defect_list_path: str | None = None


@dataclass(frozen=True)
class OpticsOverrides:
    """Optics that replace what the files (and a session description) say; None: not overridden.

    Attributes
    ----------
    pixel_size_angstrom : float or None
        Å per pixel of the stored frames (recorded in the metadata as the source "session_settings").
    voltage_kv : float or None
        Acceleration voltage, kV (also what dose weighting uses).
    spherical_aberration_mm : float or None
        C_s, mm.
    amplitude_contrast_fraction : float or None
        Amplitude contrast, in [0, 1).
    """

    pixel_size_angstrom: float | None = None
    voltage_kv: float | None = None
    spherical_aberration_mm: float | None = None
    amplitude_contrast_fraction: float | None = None


@dataclass(frozen=True)
class SessionSettings:
    """One session's settings, resolved (module docstring).

    Attributes
    ----------
    particle_diameter_angstrom : float or None
        The sample's particle diameter, Å (None: the deployment's default, ``PickingSettings``).
    gain : GainSettings
    optics_overrides : OpticsOverrides
    thresholds : CurationThresholds
        Exposure curation thresholds (``cryodecon_science.curation``).
    sources : tuple of (field, source)
        Where each value that was set came from (dotted field name, document); not part of the version.
    """

    particle_diameter_angstrom: float | None = None
    gain: GainSettings = field(default_factory=GainSettings)
    optics_overrides: OpticsOverrides = field(default_factory=OpticsOverrides)
    thresholds: CurationThresholds = field(default_factory=CurationThresholds)
    sources: tuple[tuple[str, str], ...] = ()

    def to_document(self) -> dict[str, Any]:
        """The resolved values as JSON-ready plain types (every field, None where unset)."""
        gain, optics = self.gain, self.optics_overrides
        return {
            "format": SESSION_SETTINGS_FORMAT,
            "particle_diameter_angstrom": self.particle_diameter_angstrom,
            "gain": {key: getattr(gain, key) for key in GAIN_KEYS},
            "optics_overrides": {key: getattr(optics, key) for key in OPTICS_KEYS},
            "thresholds": self.thresholds.to_document(),
        }

    def to_json(self) -> str:
        """Canonical JSON of ``to_document`` (sorted keys, no spaces): what ``sha256`` hashes."""
        return json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def sha256(self) -> str:
        """The settings' version: SHA-256 of ``to_json``."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def _number(value: Any, source: str, name: str, low: float, low_inclusive: bool, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise SessionSettingsError(source, name, f"must be a finite number, got {value!r}")
    number = float(value)
    if number < low or (number == low and not low_inclusive) or (high is not None and number >= high):
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise SessionSettingsError(source, name, f"must be {bound}, got {value!r}")
    return number


def _text(value: Any, source: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SessionSettingsError(source, name, f"must be a non-empty string (a path), got {value!r}")
    return value.strip()


def _object(value: Any, source: str, name: str, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SessionSettingsError(source, name, f"must be an object, got {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise SessionSettingsError(source, name, f"unknown keys {unknown} (known: {', '.join(allowed)})")
    return value


def _gain_fields(document: dict[str, Any], source: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in document.items():
        name = f"gain.{key}"
        if value is None:
            continue
        if key in ("path", "defect_list_path"):
            values[key] = _text(value, source, name)
        elif key == "rotate_quarter_turns_ccw":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
                raise SessionSettingsError(source, name, f"must be 0, 1, 2 or 3 (MotionCor2 -RotGain), got {value!r}")
            values[key] = int(value)
        elif key == "flip":
            flip = _FLIPS.get(value) if not isinstance(value, bool) and isinstance(value, str | int) else None
            if flip is None:
                expected = "'none', 'upside_down', 'left_right' (or MotionCor2's 0, 1, 2)"
                raise SessionSettingsError(source, name, f"must be {expected}, got {value!r}")
            values[key] = flip
        elif key == "convention":
            if value not in ("multiply", "divide"):
                raise SessionSettingsError(source, name, f"must be 'multiply' or 'divide', got {value!r}")
            values[key] = value
        elif key == "required":
            if not isinstance(value, bool):
                raise SessionSettingsError(source, name, f"must be true or false, got {value!r}")
            values[key] = value
    return values


def _optics_fields(document: dict[str, Any], source: str) -> dict[str, float]:
    limits = {
        "pixel_size_angstrom": (0.0, False, None),
        "voltage_kv": (0.0, False, None),
        "spherical_aberration_mm": (0.0, True, None),
        "amplitude_contrast_fraction": (0.0, True, 1.0),
    }
    return {
        key: _number(value, source, f"optics_overrides.{key}", *limits[key])
        for key, value in document.items()
        if value is not None
    }


def _threshold_fields(document: dict[str, Any], source: str) -> dict[str, float | int | None]:
    values: dict[str, float | int | None] = {}
    for key, value in document.items():
        name = f"thresholds.{key}"
        if value is None:
            values[key] = None  # kept: switches the threshold off
        elif key == "particles_min":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SessionSettingsError(source, name, f"must be a whole number >= 0 or null, got {value!r}")
            values[key] = int(value)
        else:
            values[key] = _number(value, source, name, 0.0, key in MINIMUM_THRESHOLDS)
    low, high = values.get("defocus_min_angstrom"), values.get("defocus_max_angstrom")
    if low is not None and high is not None and low > high:
        raise SessionSettingsError(
            source, "thresholds.defocus_min_angstrom", f"{low:g} > defocus_max_angstrom {high:g}"
        )
    return values


def parse_settings_document(document: Any, source: str, *, only_settings: bool) -> dict[str, Any]:
    """Validate one settings document; the values it sets, as ``{"particle_diameter_angstrom": ...,
    "gain": {...}, "optics_overrides": {...}, "thresholds": {...}}`` (keys it does not set are absent).

    ``only_settings``: refuse top-level keys other than the settings keys (a configuration document);
    ``session.json`` also holds the session description, whose keys are left to ``io.session``.

    Raises
    ------
    SessionSettingsError
        Naming ``source`` and the field.
    """
    if not isinstance(document, dict):
        raise SessionSettingsError(source, "", f"must be a JSON object, got {type(document).__name__}")
    if only_settings:
        _object(document, source, "(top level)", SETTINGS_KEYS)
    values: dict[str, Any] = {}
    diameter = document.get("particle_diameter_angstrom")
    if diameter is not None:
        values["particle_diameter_angstrom"] = _number(diameter, source, "particle_diameter_angstrom", 0.0, False)
    if document.get("gain") is not None:
        values["gain"] = _gain_fields(_object(document["gain"], source, "gain", GAIN_KEYS), source)
    if document.get("optics_overrides") is not None:
        optics = _object(document["optics_overrides"], source, "optics_overrides", OPTICS_KEYS)
        values["optics_overrides"] = _optics_fields(optics, source)
    if document.get("thresholds") is not None:
        thresholds = _object(document["thresholds"], source, "thresholds", THRESHOLD_NAMES)
        values["thresholds"] = _threshold_fields(thresholds, source)
    return values


def read_settings_file(path: str | Path, *, only_settings: bool) -> dict[str, Any] | None:
    """The JSON document at ``path`` (None when there is no such file).

    Raises
    ------
    SessionSettingsError
        Unreadable, or not JSON.
    """
    target = Path(path)
    if not target.is_file():
        return None
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionSettingsError(str(target), "", f"cannot read ({exc})") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SessionSettingsError(str(target), "", f"not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise SessionSettingsError(str(target), "", "top level must be a JSON object")
    return document


def merge_settings(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> SessionSettings:
    """Merge validated layers (``parse_settings_document`` output, lowest priority first), field by field.

    Raises
    ------
    SessionSettingsError
        The merged defocus range is empty (naming the layer that set its last bound).
    """
    diameter: float | None = None
    gain: dict[str, Any] = {}
    optics: dict[str, float] = {}
    thresholds: dict[str, float | int | None] = {}
    sources: dict[str, str] = {}
    for source, values in layers:
        if "particle_diameter_angstrom" in values:
            diameter = float(values["particle_diameter_angstrom"])
            sources["particle_diameter_angstrom"] = source
        for key, value in values.get("gain", {}).items():
            gain[key] = value
            sources[f"gain.{key}"] = source
        for key, value in values.get("optics_overrides", {}).items():
            optics[key] = float(value)
            sources[f"optics_overrides.{key}"] = source
        for key, value in values.get("thresholds", {}).items():
            thresholds[key] = value
            sources[f"thresholds.{key}"] = source
    try:
        resolved_thresholds = CurationThresholds(**thresholds)  # type: ignore[arg-type]  # keys checked by parse
    except ValueError as exc:
        last = sources.get("thresholds.defocus_min_angstrom", sources.get("thresholds.defocus_max_angstrom", ""))
        raise SessionSettingsError(last or "merged settings", "thresholds.defocus_min_angstrom", str(exc)) from exc
    return SessionSettings(
        particle_diameter_angstrom=diameter,
        gain=GainSettings(**gain),
        optics_overrides=OpticsOverrides(**optics),
        thresholds=resolved_thresholds,
        sources=tuple(sorted(sources.items())),
    )


def resolve_session_settings(
    session_dir: str | Path,
    configured_defaults: Mapping[str, Any] | None = None,
    configured_for_session: Mapping[str, Any] | None = None,
    configuration_source: str = "configuration",
) -> SessionSettings:
    """A session's settings: configured defaults < the session folder's ``session.json`` < its configured entry.

    Parameters
    ----------
    session_dir : path
        The session folder (``<storage root>/<session>``).
    configured_defaults, configured_for_session : mapping, optional
        Settings documents of the configuration (``"defaults"`` and ``"sessions"[<session>]``).
    configuration_source : str
        How errors and ``sources`` name the configuration (its file path).

    Raises
    ------
    SessionSettingsError
        Any document that cannot be used, naming it and the field.
    """
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if configured_defaults:
        source = f"{configuration_source} defaults"
        layers.append((source, parse_settings_document(configured_defaults, source, only_settings=True)))
    session_file = Path(session_dir) / SESSION_METADATA_FILENAME
    document = read_settings_file(session_file, only_settings=False)
    if document is not None:
        layers.append((str(session_file), parse_settings_document(document, str(session_file), only_settings=False)))
    if configured_for_session:
        source = f"{configuration_source} sessions.{Path(session_dir).name}"
        layers.append((source, parse_settings_document(configured_for_session, source, only_settings=True)))
    return merge_settings(layers)
