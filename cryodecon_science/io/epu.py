"""EPU's per-exposure XML sidecar (``FoilHole_<id>_Data_<...>.xml``), parsed with ``xmltodict``.

EPU (Thermo Fisher Scientific) writes a ``MicroscopeImage`` document (DataContract serialisation) beside
every exposure.  Values are SI: ``microscopeData/gun/AccelerationVoltage`` in V, ``SpatialScale/pixelSize/x/
numericValue`` in m, ``microscopeData/optics/Defocus`` and ``CustomData`` ``AppliedDefocus`` in m (negative
= underfocus), ``CustomData`` ``Dose`` in e⁻/m², ``DoseRate`` in e⁻/pixel/s, ``microscopeData/stage/Position``
X/Y/Z in m and A/B in rad, ``camera/ExposureTime`` in s.  The announced frame count is
``CameraSpecificInput`` → ``FractionationSettings`` → ``NumberOffractions`` (EPU 2.x/3.x; absent for
micrographs).  Namespace prefixes are stripped, so EPU versions that move namespaces still parse.

Malformed XML raises ``CorruptHeaderError`` (a sidecar is part of the exposure's header).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import xmltodict

from cryodecon_science.io.mrc import CorruptHeaderError, IncompleteFileError, InputFileError
from cryodecon_science.metadata import Fields

MAX_SIDECAR_BYTES = 16 * 2**20


@dataclass(frozen=True)
class EpuImageMetadata:
    """What one EPU ``MicroscopeImage`` XML says, as metadata fields, plus the raw custom data.

    Attributes
    ----------
    fields : dict
        ``cryodecon_science.metadata`` fields (units in the names).
    custom_data : dict of str to str
        ``CustomData`` and ``CameraSpecificInput`` key/value pairs as text.
    announced_frame_count : int or None
        ``NumberOffractions`` when the XML gives one.
    """

    fields: Fields
    custom_data: dict[str, str]
    announced_frame_count: int | None


def _strip(key: str) -> str:
    """Drop a namespace prefix: 'a:Key' -> 'Key', '@i:nil' -> '@nil'."""
    if key.startswith("@"):
        return "@" + key[1:].rsplit(":", 1)[-1]
    return key.rsplit(":", 1)[-1]


def _postprocessor(_path: Any, key: str, value: Any) -> tuple[str, Any]:
    return _strip(key), value


def _text(node: Any) -> str | None:
    """The text of an xmltodict node (a string, or a dict with '#text'); None for nil/empty."""
    if isinstance(node, str):
        return node.strip() or None
    if isinstance(node, dict):
        if str(node.get("@nil", "")).lower() == "true":
            return None
        text = node.get("#text")
        return text.strip() if isinstance(text, str) and text.strip() else None
    return None


def _get(document: Any, *keys: str) -> Any:
    node = document
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _number(node: Any) -> float | None:
    text = _text(node)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _key_values(node: Any) -> Iterator[tuple[str, Any]]:
    """Every ``KeyValueOfstringanyType`` pair below ``node`` (Key text, Value node)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "KeyValueOfstringanyType":
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, dict):
                        name = _text(item.get("Key"))
                        if name is not None:
                            yield name, item.get("Value")
            else:
                yield from _key_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from _key_values(item)


def _find(node: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere below ``node`` (depth first)."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for value in node.values():
            found = _find(value, key)
            if found is not None:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _find(item, key)
            if found is not None:
                return found
    return None


def _parse(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        size = Path(path).stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise CorruptHeaderError(path, f"{size} bytes, too large for a sidecar")
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot open ({exc.strerror or exc})") from exc
    if not raw.strip():
        raise IncompleteFileError(path, "empty XML sidecar")
    try:
        document = xmltodict.parse(raw, postprocessor=_postprocessor, disable_entities=True)
    except Exception as exc:  # expat errors, encoding errors, entity refusals: all mean a broken sidecar
        raise CorruptHeaderError(path, f"not well-formed XML ({type(exc).__name__}: {exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("MicroscopeImage"), dict):
        raise CorruptHeaderError(path, "not an EPU MicroscopeImage document")
    root: dict[str, Any] = document["MicroscopeImage"]
    return root


def read_epu_xml(path: str | os.PathLike[str]) -> EpuImageMetadata:
    """Parse an EPU per-exposure XML into metadata fields.

    Raises
    ------
    IncompleteFileError
        Empty file (still being written).
    CorruptHeaderError
        Not well-formed XML, or not a ``MicroscopeImage`` document.
    """
    root = _parse(path)
    micro = _get(root, "microscopeData") or {}
    fields: Fields = {}

    def put(name: str, value: float | None, scale: float = 1.0) -> None:
        if value is not None:
            fields[name] = value * scale

    custom: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, value in _key_values(root):
        values.setdefault(key, value)
        text = _text(value)
        if text is not None:
            custom.setdefault(key, text)

    put("optics.voltage_kv", _number(_get(micro, "gun", "AccelerationVoltage")), 1e-3)
    put("optics.pixel_size_angstrom", _number(_get(root, "SpatialScale", "pixelSize", "x", "numericValue")), 1e10)
    put("optics.nominal_magnification", _number(_get(micro, "optics", "TemMagnification", "NominalMagnification")))
    defocus = _number(_get(micro, "optics", "Defocus"))
    put("optics.objective_defocus_angstrom", None if defocus is None else -defocus, 1e10)
    applied = _number(values.get("AppliedDefocus"))
    put("optics.nominal_defocus_angstrom", None if applied is None else -applied, 1e10)
    energy_filter = _get(micro, "optics", "EnergyFilter") or {}
    if str(_text(_get(energy_filter, "EnergySelectionSlitInserted"))).lower() == "true":
        put("optics.energy_filter_slit_width_ev", _number(_get(energy_filter, "EnergySelectionSlitWidth")))

    camera = _get(micro, "acquisition", "camera") or {}
    name = _text(_get(camera, "Name")) or custom.get("DetectorCommercialName")  # "Name" as in the FEI header
    if name:
        fields["detector.camera_name"] = name
    binning = _number(_get(camera, "Binning", "x"))
    put("detector.binning", binning)
    superres = _number(values.get("SuperResolutionFactor"))
    if superres is not None and superres >= 1:
        fields["detector.super_resolution_factor"] = int(superres)
    counting = custom.get("ElectronCountingEnabled")
    if counting is not None:
        fields["detector.electron_counting"] = counting.lower() == "true"

    put("dose.total_dose_e_per_angstrom2", _number(values.get("Dose")), 1e-20)
    put("dose.dose_rate_e_per_px_per_s", _number(values.get("DoseRate")))
    put("dose.exposure_time_s", _number(_get(camera, "ExposureTime")))
    announced: int | None = None
    fractionation = values.get("FractionationSettings")
    n_fractions = _number(_find(fractionation, "NumberOffractions")) if fractionation is not None else None
    if n_fractions is None:
        definitions = _find(fractionation, "DoseFractionDefinition") if fractionation is not None else None
        if isinstance(definitions, list):
            n_fractions = float(len(definitions))
        elif isinstance(definitions, dict):
            n_fractions = 1.0
    if n_fractions is not None and n_fractions >= 1 and n_fractions == int(n_fractions):
        announced = int(n_fractions)
        fields["dose.announced_frame_count"] = announced
        total = fields.get("dose.total_dose_e_per_angstrom2")
        if isinstance(total, float):
            fields["dose.dose_per_frame_e_per_angstrom2"] = total / announced

    position = _get(micro, "stage", "Position") or {}
    for axis in ("X", "Y", "Z"):
        put(f"stage.{axis.lower()}_um", _number(_get(position, axis)), 1e6)
    for axis, name_ in (("A", "alpha"), ("B", "beta")):
        put(f"stage.{name_}_tilt_deg", _number(_get(position, axis)), 180.0 / math.pi)

    software = _text(_get(micro, "core", "ApplicationSoftware"))
    if software:
        fields["acquisition.software"] = software
    version = _text(_get(micro, "core", "ApplicationSoftwareVersion"))
    if version:
        fields["acquisition.software_version"] = version
    instrument = _text(_get(micro, "instrument", "InstrumentID"))
    if instrument:
        fields["acquisition.microscope_id"] = instrument
    timestamp = _text(_get(micro, "acquisition", "acquisitionDateTime"))
    if timestamp:
        fields["acquisition.timestamp_utc_iso"] = _iso(timestamp)
    return EpuImageMetadata(fields, custom, announced)


def _iso(text: str) -> str:
    """EPU writes 7 fractional digits (.NET ticks); Python's fromisoformat takes at most 6 before 3.11."""
    head, sep, tail = text.partition(".")
    if sep:
        rest = tail.lstrip("0123456789")
        digits = tail[: len(tail) - len(rest)]
        text = f"{head}.{digits[:6]}{rest}"
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        return text
