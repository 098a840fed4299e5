"""One typed, versioned metadata record per exposure, merged from the image header and its sidecar.

Every reader in ``cryodecon_science.io`` turns what it finds into *fields*: a flat mapping from a dotted
name (``"optics.voltage_kv"``) to a value already converted to the unit the name states.  ``merge_metadata``
combines the fields of several sources (MRC/EER header, EPU XML, SerialEM .mdoc) into one
``ExposureMetadata`` tree.  When two sources give a field values that differ beyond the field's tolerance,
the record keeps the value of the first source (sources are listed in priority order) **and** lists the
disagreement with every source's value, so no conflict is resolved silently.

Conventions (those of ``cryodecon_science.optics``): defocus in Å, positive = underfocus (EPU and the FEI
extended header store metres with negative = underfocus; SerialEM stores µm with negative = underfocus,
so every reader flips the sign); stage positions in µm; tilt angles in degrees; doses in e⁻/Å²; times
in s; timestamps as ISO 8601 strings in UTC.

``flatten_metadata`` gives one warehouse row (``section_field`` columns), ``metadata_to_json`` /
``metadata_from_json`` a lossless JSON round trip.  ``SCHEMA_VERSION`` changes whenever a field is
renamed or its unit changes; a field added with default None keeps it (older records read with it None).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

SCHEMA_VERSION = "cryodecon-exposure-metadata/1"

FieldValue = float | int | str | bool
"""A metadata value in the unit its field name states."""
Fields = dict[str, FieldValue]
"""Dotted field name (``"section.field"``) to value, as produced by each format reader."""

ExposureKind = Literal["micrograph", "movie"]


@dataclass(frozen=True)
class OpticsMetadata:
    """Electron-optical settings of the exposure.

    Attributes
    ----------
    voltage_kv : float or None
        Acceleration voltage, kV.
    spherical_aberration_mm : float or None
        C_s, mm (rarely recorded by acquisition software).
    pixel_size_angstrom : float or None
        Sampling on the specimen of the stored image, Å per pixel.
    nominal_magnification : float or None
        Magnification the microscope reports (dimensionless).
    nominal_defocus_angstrom : float or None
        The defocus the acquisition software targeted (EPU ``AppliedDefocus``, FEI ``Applied defocus``,
        SerialEM ``TargetDefocus``), Å, positive = underfocus.
    objective_defocus_angstrom : float or None
        The objective-lens defocus readout at acquisition (EPU ``optics/Defocus``, FEI ``Defocus``,
        SerialEM ``Defocus``), Å, positive = underfocus.
    energy_filter_slit_width_ev : float or None
        Energy-selecting slit width when the slit is inserted, eV.
    """

    voltage_kv: float | None = None
    spherical_aberration_mm: float | None = None
    pixel_size_angstrom: float | None = None
    nominal_magnification: float | None = None
    nominal_defocus_angstrom: float | None = None
    objective_defocus_angstrom: float | None = None
    energy_filter_slit_width_ev: float | None = None


@dataclass(frozen=True)
class DetectorMetadata:
    """Camera and the stored image geometry.

    Attributes
    ----------
    camera_name : str or None
        Camera name or commercial name ("BioQuantum K3", "Falcon 4i", "EF-CCD").
    image_width_px, image_height_px : int or None
        Size of one stored frame, px.
    n_frames : int or None
        Frames stored in the file (1 for a micrograph; raw EER frames for EER).
    binning : float or None
        Hardware/software binning factor.
    super_resolution_factor : int or None
        Super-resolution factor the acquisition used (1 = none).
    electron_counting : bool or None
        Whether the detector counted electrons.
    gain_reference_path : str or None
        The gain reference applied to the frames (None: none applied, the frames taken as normalised).
    gain_reference_sha256 : str or None
        SHA-256 of that file's bytes.
    gain_reference_origin : str or None
        How it was chosen (``io.gain_discovery``): "settings", "mdoc" or "beside_data".
    gain_rotate_quarter_turns_ccw : int or None
        MotionCor2 ``-RotGain`` applied to the reference (0–3).
    gain_flip : str or None
        MotionCor2 ``-FlipGain`` applied after the rotation: "none", "upside_down" or "left_right".
    gain_convention : str or None
        "multiply" (corrected = raw × gain) or "divide" (raw / gain; inverted on reading).
    defect_list_path : str or None
        The defect list (``x y`` per line) applied, if any.
    defect_pixels : int or None
        Detector pixels replaced as defects on reading: the reference's unusable pixels, the defect list's
        and any hot pixels detected (None where no defect correction ran).
    """

    camera_name: str | None = None
    image_width_px: int | None = None
    image_height_px: int | None = None
    n_frames: int | None = None
    binning: float | None = None
    super_resolution_factor: int | None = None
    electron_counting: bool | None = None
    gain_reference_path: str | None = None
    gain_reference_sha256: str | None = None
    gain_reference_origin: str | None = None
    gain_rotate_quarter_turns_ccw: int | None = None
    gain_flip: str | None = None
    gain_convention: str | None = None
    defect_list_path: str | None = None
    defect_pixels: int | None = None


@dataclass(frozen=True)
class DoseMetadata:
    """Electron exposure.

    Attributes
    ----------
    total_dose_e_per_angstrom2 : float or None
        Total fluence on the specimen, e⁻/Å².
    dose_per_frame_e_per_angstrom2 : float or None
        Fluence per stored frame, e⁻/Å².
    dose_rate_e_per_px_per_s : float or None
        Dose rate on the camera, e⁻ per pixel per second.
    exposure_time_s : float or None
        Exposure time, s.
    announced_frame_count : int or None
        Frames the sidecar announces (EPU ``NumberOffractions``, SerialEM ``NumSubFrames``).
    """

    total_dose_e_per_angstrom2: float | None = None
    dose_per_frame_e_per_angstrom2: float | None = None
    dose_rate_e_per_px_per_s: float | None = None
    exposure_time_s: float | None = None
    announced_frame_count: int | None = None


@dataclass(frozen=True)
class StageMetadata:
    """Stage position and tilt at acquisition.

    Attributes
    ----------
    x_um, y_um, z_um : float or None
        Stage position, µm.
    alpha_tilt_deg, beta_tilt_deg : float or None
        Stage tilts, degrees.
    """

    x_um: float | None = None
    y_um: float | None = None
    z_um: float | None = None
    alpha_tilt_deg: float | None = None
    beta_tilt_deg: float | None = None


@dataclass(frozen=True)
class AcquisitionMetadata:
    """Where and when the exposure was taken, and by which software.

    Attributes
    ----------
    software : str or None
        "EPU", "SerialEM", ...
    software_version : str or None
        Version string of that software.
    microscope_id : str or None
        Instrument identifier (EPU ``InstrumentID``, FEI ``D-Number``).
    timestamp_utc_iso : str or None
        Acquisition time, ISO 8601 with offset.
    grid_square_id : str or None
        EPU grid square (``GridSquare_<id>`` folder).
    foil_hole_id : str or None
        EPU foil hole (``FoilHole_<id>_Data_...`` file name).
    """

    software: str | None = None
    software_version: str | None = None
    microscope_id: str | None = None
    timestamp_utc_iso: str | None = None
    grid_square_id: str | None = None
    foil_hole_id: str | None = None


@dataclass(frozen=True)
class Disagreement:
    """Two or more sources give one field values further apart than its tolerance.

    Attributes
    ----------
    field_name : str
        Dotted field name (``"optics.pixel_size_angstrom"``).
    values : tuple of (source, value)
        Every source's value, in priority order; the record holds the first.
    """

    field_name: str
    values: tuple[tuple[str, FieldValue], ...]


@dataclass(frozen=True)
class ExposureMetadata:
    """The metadata record of one exposure (``SCHEMA_VERSION``), a tree of sections.

    Attributes
    ----------
    exposure_name : str
        Stable identifier (file stem without ``_fractions``/``_EER``).
    kind : {"micrograph", "movie"}
    path : str
        The image file.
    sources : tuple of (source, path)
        Every file the record was merged from, in priority order (e.g. ``("mrc_header", ...)``,
        ``("epu_xml", ...)``).
    optics, detector, dose, stage, acquisition : sections
    disagreements : tuple of Disagreement
        Fields whose sources disagree beyond tolerance (empty when all agree).
    schema_version : str
    """

    exposure_name: str
    kind: ExposureKind
    path: str
    sources: tuple[tuple[str, str], ...] = ()
    optics: OpticsMetadata = field(default_factory=OpticsMetadata)
    detector: DetectorMetadata = field(default_factory=DetectorMetadata)
    dose: DoseMetadata = field(default_factory=DoseMetadata)
    stage: StageMetadata = field(default_factory=StageMetadata)
    acquisition: AcquisitionMetadata = field(default_factory=AcquisitionMetadata)
    disagreements: tuple[Disagreement, ...] = ()
    schema_version: str = SCHEMA_VERSION


SECTIONS: dict[str, type[Any]] = {
    "optics": OpticsMetadata,
    "detector": DetectorMetadata,
    "dose": DoseMetadata,
    "stage": StageMetadata,
    "acquisition": AcquisitionMetadata,
}

# (relative, absolute) tolerance per numeric field; a field not listed uses DEFAULT_TOLERANCE.  Pixel size
# and voltage must agree closely; defocus readouts differ between header and XML by the focus steps the
# software takes between writing them, so 500 Å; stage positions by tens of nm of readout jitter.
DEFAULT_TOLERANCE = (1e-3, 0.0)
TOLERANCES: dict[str, tuple[float, float]] = {
    "optics.voltage_kv": (1e-3, 0.0),
    "optics.pixel_size_angstrom": (5e-3, 0.0),
    "optics.nominal_defocus_angstrom": (0.0, 500.0),
    "optics.objective_defocus_angstrom": (0.0, 500.0),
    "dose.total_dose_e_per_angstrom2": (0.05, 0.0),
    "dose.dose_per_frame_e_per_angstrom2": (0.05, 0.0),
    "dose.dose_rate_e_per_px_per_s": (0.05, 0.0),
    "stage.x_um": (0.0, 0.1),
    "stage.y_um": (0.0, 0.1),
    "stage.z_um": (0.0, 0.1),
    "stage.alpha_tilt_deg": (0.0, 0.05),
    "stage.beta_tilt_deg": (0.0, 0.05),
    "acquisition.timestamp_utc_iso": (0.0, 60.0),  # seconds
}
# Fields compared without regard to case and surrounding blanks; other strings must match exactly.
_CASE_INSENSITIVE = {"detector.camera_name", "acquisition.software"}


def field_names() -> tuple[str, ...]:
    """All dotted field names of the record's sections, in declaration order."""
    return tuple(f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls))


_FIELD_TYPES: dict[str, str] = {
    f"{name}.{f.name}": str(f.type) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
}


def _coerce(name: str, value: FieldValue) -> FieldValue:
    """Convert a value to the field's declared type (``int``, ``float``, ``bool`` or ``str``)."""
    declared = _FIELD_TYPES[name]
    if declared.startswith("bool"):
        return bool(value)
    if declared.startswith("int"):
        return int(value)
    if declared.startswith("float"):
        return float(value)
    return str(value)


def _agree(name: str, a: FieldValue, b: FieldValue, tolerances: Mapping[str, tuple[float, float]]) -> bool:
    if name == "acquisition.timestamp_utc_iso":
        try:
            delta = abs((datetime.fromisoformat(str(a)) - datetime.fromisoformat(str(b))).total_seconds())
        except (TypeError, ValueError):
            return str(a) == str(b)
        return delta <= tolerances.get(name, TOLERANCES[name])[1]
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        if name in _CASE_INSENSITIVE:
            return str(a).strip().lower() == str(b).strip().lower()
        return a == b
    rel, abs_tol = tolerances.get(name, TOLERANCES.get(name, DEFAULT_TOLERANCE))
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_tol)


def merge_metadata(
    exposure_name: str,
    kind: ExposureKind,
    path: str,
    sources: Sequence[tuple[str, str, Mapping[str, FieldValue]]],
    tolerances: Mapping[str, tuple[float, float]] | None = None,
) -> ExposureMetadata:
    """Merge the fields of several sources into one record, flagging disagreements.

    Parameters
    ----------
    exposure_name : str
    kind : {"micrograph", "movie"}
    path : str
        The image file.
    sources : sequence of (source name, source path, fields)
        In priority order: a field takes the first source's value.  Unknown field names, ``None`` and
        non-finite numbers are ignored.
    tolerances : mapping, optional
        ``{field: (relative, absolute)}`` overriding ``TOLERANCES`` (timestamps: absolute seconds).

    Returns
    -------
    ExposureMetadata
        With ``disagreements`` listing every field where a later source differs from the first beyond
        tolerance (all sources' values, in priority order).
    """
    known = set(_FIELD_TYPES)
    tol = dict(tolerances or {})
    collected: dict[str, list[tuple[str, FieldValue]]] = {}
    for source, _, fields in sources:
        for name, value in fields.items():
            if name not in known or value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            collected.setdefault(name, []).append((source, _coerce(name, value)))
    section_values: dict[str, dict[str, FieldValue]] = {name: {} for name in SECTIONS}
    disagreements: list[Disagreement] = []
    for name in field_names():
        if name not in collected:
            continue
        values = collected[name]
        first = values[0][1]
        section, attribute = name.split(".", 1)
        section_values[section][attribute] = first
        if any(not _agree(name, first, other, tol) for _, other in values[1:]):
            disagreements.append(Disagreement(name, tuple(values)))
    sections = {name: cls(**section_values[name]) for name, cls in SECTIONS.items()}
    return ExposureMetadata(
        exposure_name=exposure_name,
        kind=kind,
        path=str(path),
        sources=tuple((source, str(source_path)) for source, source_path, _ in sources),
        disagreements=tuple(disagreements),
        **sections,
    )


def flatten_metadata(record: ExposureMetadata) -> dict[str, FieldValue | None]:
    """One warehouse row: ``<section>_<field>`` columns plus identity and disagreement columns.

    Columns: ``schema_version``, ``exposure_name``, ``kind``, ``path``, ``sources_json``, every section
    field (``optics_voltage_kv``, ...; ``None`` where unknown), ``n_disagreements`` and
    ``disagreements_json`` (the list of disagreements as JSON).
    """
    row: dict[str, FieldValue | None] = {
        "schema_version": record.schema_version,
        "exposure_name": record.exposure_name,
        "kind": record.kind,
        "path": record.path,
        "sources_json": json.dumps([list(s) for s in record.sources]),
    }
    for name in SECTIONS:
        section = getattr(record, name)
        for f in dataclasses.fields(section):
            row[f"{name}_{f.name}"] = getattr(section, f.name)
    row["n_disagreements"] = len(record.disagreements)
    row["disagreements_json"] = json.dumps([_disagreement_dict(d) for d in record.disagreements])
    return row


def _disagreement_dict(d: Disagreement) -> dict[str, Any]:
    return {"field_name": d.field_name, "values": [{"source": s, "value": v} for s, v in d.values]}


def metadata_to_dict(record: ExposureMetadata) -> dict[str, Any]:
    """The record as nested plain types (sections as objects, disagreements as a list)."""
    document: dict[str, Any] = {
        "schema_version": record.schema_version,
        "exposure_name": record.exposure_name,
        "kind": record.kind,
        "path": record.path,
        "sources": [{"source": s, "path": p} for s, p in record.sources],
    }
    for name in SECTIONS:
        document[name] = dataclasses.asdict(getattr(record, name))
    document["disagreements"] = [_disagreement_dict(d) for d in record.disagreements]
    return document


def metadata_to_json(record: ExposureMetadata, indent: int | None = 2) -> str:
    """The record as JSON (``metadata_to_dict``); ``metadata_from_json`` reads it back."""
    return json.dumps(metadata_to_dict(record), indent=indent, allow_nan=False, ensure_ascii=False)


def metadata_from_json(text: str) -> ExposureMetadata:
    """Inverse of ``metadata_to_json``; raises ValueError for another schema version or malformed JSON."""
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"not a {SCHEMA_VERSION} record")
    sections = {name: cls(**document[name]) for name, cls in SECTIONS.items()}
    return ExposureMetadata(
        exposure_name=str(document["exposure_name"]),
        kind=document["kind"],
        path=str(document["path"]),
        sources=tuple((str(s["source"]), str(s["path"])) for s in document["sources"]),
        disagreements=tuple(
            Disagreement(str(d["field_name"]), tuple((str(v["source"]), v["value"]) for v in d["values"]))
            for d in document["disagreements"]
        ),
        **sections,
    )
