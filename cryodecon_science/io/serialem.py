"""SerialEM ``.mdoc`` autodoc sidecars, parsed with ``mdocfile``.

SerialEM writes ``<stack>.mdoc`` beside an image stack (one ``[ZValue = n]`` section per image) and
``<movie>.tif.mdoc`` / ``<movie>.mrc.mdoc`` beside a saved frame stack (one ``[FrameSet = 0]`` section).
Units (SerialEM manual, "Autodoc files"): ``Voltage`` kV, ``PixelSpacing`` Å, ``ExposureDose`` e⁻/Å²,
``DoseRate`` e⁻/unbinned pixel/s, ``Defocus`` and ``TargetDefocus`` µm (negative = underfocus),
``StagePosition``/``StageZ`` µm, ``TiltAngle`` degrees, ``ExposureTime`` s, ``NumSubFrames`` frames,
``DateTime`` as ``dd-Mon-yy  HH:MM:SS`` local time (recorded as naive ISO; SerialEM writes no zone).

The first section describes the exposure; a stack with several sections (a tilt series) is reported
through its first section.  Unreadable or malformed files raise ``CorruptHeaderError``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryodecon_science.io.mrc import CorruptHeaderError, IncompleteFileError, InputFileError
from cryodecon_science.metadata import Fields

MAX_SIDECAR_BYTES = 16 * 2**20


@dataclass(frozen=True)
class MdocMetadata:
    """What a SerialEM .mdoc says about its (first) image.

    Attributes
    ----------
    fields : dict
        ``cryodecon_science.metadata`` fields.
    n_sections : int
        ``[ZValue]``/``[FrameSet]``/``[MontSection]`` sections in the file.
    is_frame_set : bool
        The file describes a saved frame stack (``[FrameSet = ...]``).
    announced_frame_count : int or None
        ``NumSubFrames`` of the first section.
    gain_reference : str or None
        ``GainReference`` of the first section (or the header): the file name of the gain reference,
        which SerialEM records exactly when it saves frames without gain normalisation (K2/K3 counting
        frames, Falcon 4 EER); the file sits in the frames' folder.
    """

    fields: Fields
    n_sections: int
    is_frame_set: bool
    announced_frame_count: int | None
    gain_reference: str | None = None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_mdoc(path: str | os.PathLike[str]) -> MdocMetadata:
    """Parse a SerialEM .mdoc into metadata fields.

    Raises
    ------
    IncompleteFileError
        Empty file.
    CorruptHeaderError
        ``mdocfile`` cannot parse it, or it holds no section.
    """
    from mdocfile.data_models import Mdoc  # imports pandas and pydantic: load only when an mdoc is read

    try:
        size = Path(path).stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise CorruptHeaderError(path, f"{size} bytes, too large for a sidecar")
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputFileError(path, f"cannot open ({exc.strerror or exc})") from exc
    if not text.strip():
        raise IncompleteFileError(path, "empty .mdoc")
    logger = logging.getLogger("mdocfile")
    level = logger.level
    logger.setLevel(logging.ERROR)  # mdocfile warns about every field it does not model
    try:
        mdoc = Mdoc.from_string(text)
    except Exception as exc:  # pydantic ValidationError, ValueError, IndexError on malformed lines
        raise CorruptHeaderError(path, f"not readable by mdocfile ({type(exc).__name__}: {exc})") from exc
    finally:
        logger.setLevel(level)
    if not mdoc.section_data:
        raise CorruptHeaderError(path, "no [ZValue]/[FrameSet] section")
    section = mdoc.section_data[0]
    glob = mdoc.global_data
    fields: Fields = {}

    def put(name: str, value: Any, scale: float = 1.0) -> None:
        number = _number(value)
        if number is not None:
            fields[name] = number * scale

    put("optics.voltage_kv", section.Voltage if section.Voltage is not None else glob.Voltage)
    put("optics.pixel_size_angstrom", section.PixelSpacing if section.PixelSpacing is not None else glob.PixelSpacing)
    put("optics.nominal_magnification", section.Magnification)
    put("optics.objective_defocus_angstrom", section.Defocus, -1e4)
    put("optics.nominal_defocus_angstrom", section.TargetDefocus, -1e4)
    if glob.ImageSize is not None:
        fields["detector.image_width_px"] = int(glob.ImageSize[0])
        fields["detector.image_height_px"] = int(glob.ImageSize[1])
    put("detector.binning", section.Binning)
    if section.CameraIndex is not None:
        fields["detector.camera_name"] = f"SerialEM camera {section.CameraIndex}"
    put("dose.total_dose_e_per_angstrom2", section.ExposureDose)
    put("dose.dose_rate_e_per_px_per_s", section.DoseRate)
    put("dose.exposure_time_s", section.ExposureTime)
    announced = int(section.NumSubFrames) if section.NumSubFrames and section.NumSubFrames > 0 else None
    if announced is not None:
        fields["dose.announced_frame_count"] = announced
        dose = fields.get("dose.total_dose_e_per_angstrom2")
        if isinstance(dose, float) and dose > 0:
            fields["dose.dose_per_frame_e_per_angstrom2"] = dose / announced
    if section.StagePosition is not None:
        put("stage.x_um", section.StagePosition[0])
        put("stage.y_um", section.StagePosition[1])
    put("stage.z_um", section.StageZ)
    put("stage.alpha_tilt_deg", section.TiltAngle)
    fields["acquisition.software"] = "SerialEM"
    if glob.Version:
        fields["acquisition.software_version"] = str(glob.Version)
    if section.DateTime:
        try:
            stamp = datetime.strptime(" ".join(str(section.DateTime).split()), "%d-%b-%y %H:%M:%S")
            fields["acquisition.timestamp_utc_iso"] = stamp.isoformat()
        except ValueError:
            pass
    is_frame_set = "[FrameSet" in text
    return MdocMetadata(fields, len(mdoc.section_data), is_frame_set, announced, _gain_reference(section, glob))


def _gain_reference(*models: Any) -> str | None:
    """``GainReference`` (a field ``mdocfile`` keeps as an extra) of the first model that has one."""
    for model in models:
        value = (getattr(model, "model_extra", None) or {}).get("GainReference")
        if value is not None and str(value).strip():
            return str(value).strip()
    return None
