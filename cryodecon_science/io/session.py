"""A simulated session on disk, laid out as a microscope's storage would hold it, and its metadata.

Layout under ``<storage_root>/<session_name>/``, written in this order:

1. ``session.json``: microscope settings, dose and every exposure's nominal defocus (what a facility
   records at acquisition; the pipeline reads it with ``read_session_metadata``);
2. ``micrographs/<name>.mrc``: float32 counts, pixel size in the header;
3. ``movies/<name>_fractions.mrc``: uint16 electron counts, one section per frame;
4. ``truth/<name>_clean.mrc`` and ``truth/<name>_potential.mrc`` (only with ``write_truth_images``);
5. ``ground_truth.json``: everything simulated (last: its presence means the session is complete).

A movie's exposure name is its file stem without the ``_fractions`` suffix.  Every file is written
atomically (temporary name in the same folder, then ``os.replace``) and only when its content differs
from what is already there, so rewriting a deterministic session leaves files and mtimes untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt

from cryodecon_science.io.atomic import atomic_target
from cryodecon_science.io.mrc import InputFileError, check_complete, write_mrc
from cryodecon_science.optics import MicroscopeSettings
from cryodecon_science.simulate import MicrographTruth, SimulatedMicrograph, SimulatedMovie, SimulatedSession

SESSION_METADATA_FILENAME = "session.json"
GROUND_TRUTH_FILENAME = "ground_truth.json"
MICROGRAPH_DIRNAME = "micrographs"
MOVIE_DIRNAME = "movies"
TRUTH_DIRNAME = "truth"
MOVIE_SUFFIX = "_fractions"
SESSION_FORMAT = "cryodecon-session/1"
_UINT16_MAX = 65535


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
    """

    microscope: MicroscopeSettings
    dose_e_per_angstrom2: float
    nominal_defocus_angstrom: dict[str, float]


# --------------------------------------------------------------------------------------------------
# Writing


def _json_bytes(document: Any) -> bytes:
    """Human-readable JSON: indented objects, short lists of numbers on one line, trailing newline."""

    def render(value: Any, indent: int) -> str:
        pad = "  " * (indent + 1)
        if isinstance(value, dict):
            if not value:
                return "{}"
            items = [
                f"{pad}{json.dumps(str(key), ensure_ascii=False)}: {render(item, indent + 1)}"
                for key, item in value.items()
            ]
            return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
        if isinstance(value, list):
            if all(not isinstance(item, dict | list) for item in value):
                return "[" + ", ".join(json.dumps(item, allow_nan=False, ensure_ascii=False) for item in value) + "]"
            items = [f"{pad}{render(item, indent + 1)}" for item in value]
            return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
        return json.dumps(value, allow_nan=False, ensure_ascii=False)

    return (render(document, 0) + "\n").encode("utf-8")


def _sha256_file(path: Path) -> str | None:
    try:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def _write_bytes_if_changed(path: Path, content: bytes) -> None:
    """Atomic write (temporary file + os.replace) unless the file already holds these exact bytes."""
    if path.is_file() and _sha256_file(path) == hashlib.sha256(content).hexdigest():
        return
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _mrc_holds(path: Path, data: npt.NDArray[np.generic], pixel_size_angstrom: float) -> bool:
    """Whether ``path`` is a complete MRC file with exactly this data, dtype and pixel size.

    ``mrcfile`` derives every header field it writes (dimensions, mode, cell, min/max/mean/rms) from the
    data and the voxel size, so equal data, dtype and voxel size mean the bytes ``write_mrc`` would
    produce are the bytes on disk; comparing them costs one read instead of one write.
    """
    if not path.is_file():
        return False
    try:
        geometry = check_complete(path)
        expected_zyx = (1, *data.shape) if data.ndim == 2 else tuple(data.shape)
        if geometry.shape_zyx != expected_zyx:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                stored = mrc.data
                if stored is None or stored.dtype != data.dtype:
                    return False
                same_pixel = math.isclose(float(mrc.voxel_size.x), pixel_size_angstrom, rel_tol=1e-6)
                return same_pixel and bool(np.array_equal(stored.reshape(data.shape), data))
    except (InputFileError, OSError, ValueError):
        return False


def _write_mrc_if_changed(path: Path, data: npt.NDArray[np.generic], pixel_size_angstrom: float) -> None:
    if not _mrc_holds(path, data, pixel_size_angstrom):
        write_mrc(path, data, pixel_size_angstrom)


def _movie_counts_uint16(frames: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.uint16]:
    """Electron counts as uint16 (MRC mode 6), refusing anything that would not survive the cast."""
    if frames.size and (float(frames.min()) < 0 or float(frames.max()) > _UINT16_MAX):
        raise ValueError(f"movie {name}: counts outside [0, {_UINT16_MAX}] cannot be stored as uint16")
    if not np.array_equal(frames, np.round(frames)):
        raise ValueError(f"movie {name}: frames are not integer counts")
    return frames.astype(np.uint16)


def _float_list(array: npt.NDArray[np.generic]) -> list[Any]:
    return [_float_list(row) for row in array] if array.ndim > 1 else [float(v) for v in array]


def _truth_document(truth: MicrographTruth, kind: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": kind,
        "defocus_u_angstrom": truth.ctf.defocus_u_angstrom,
        "defocus_v_angstrom": truth.ctf.defocus_v_angstrom,
        "astigmatism_angle_deg": truth.ctf.astigmatism_angle_deg,
        "phase_shift_rad": truth.ctf.phase_shift_rad,
        "mean_defocus_angstrom": truth.ctf.mean_defocus_angstrom,
        "nominal_defocus_angstrom": truth.nominal_defocus_angstrom,
        "bfactor_angstrom2": truth.bfactor_angstrom2,
        "ice_thickness_nm": truth.ice_thickness_nm,
        "dose_e_per_angstrom2": truth.dose_e_per_angstrom2,
        "inelastic_fraction": truth.inelastic_fraction,
        "contrast_scale": truth.contrast_scale,
        "snr": truth.snr,
        "n_particles": int(truth.structure_ids.shape[0]),
        "particles": [
            {
                "position_yx_px": _float_list(truth.particle_positions_px[i]),
                "structure_id": int(truth.structure_ids[i]),
                "euler_rot_tilt_psi_deg": _float_list(truth.euler_angles_deg[i]),
            }
            for i in range(truth.structure_ids.shape[0])
        ],
        "hot_pixels_yx": [[int(y), int(x)] for y, x in truth.hot_pixels_yx],
    }
    if truth.drift_shifts_px is not None:
        document["drift_total_px"] = truth.drift_total_px
        document["drift_shifts_dy_dx_px"] = _float_list(truth.drift_shifts_px)
    return document


def _session_document(session: SimulatedSession) -> dict[str, Any]:
    exposures: dict[str, Any] = {}
    for micrograph in session.micrographs:
        exposures[micrograph.name] = {
            "kind": "micrograph",
            "path": f"{MICROGRAPH_DIRNAME}/{micrograph.name}.mrc",
            "nominal_defocus_angstrom": micrograph.truth.nominal_defocus_angstrom,
        }
    for movie in session.movies:
        exposures[movie.name] = {
            "kind": "movie",
            "path": f"{MOVIE_DIRNAME}/{movie.name}{MOVIE_SUFFIX}.mrc",
            "n_frames": int(movie.frames.shape[0]),
            "nominal_defocus_angstrom": movie.truth.nominal_defocus_angstrom,
        }
    return {
        "format": SESSION_FORMAT,
        "session_name": session.session_name,
        "microscope": asdict(session.microscope),
        "dose_e_per_angstrom2": session.config.dose_e_per_angstrom2,
        "exposures": exposures,
    }


def _ground_truth_document(session: SimulatedSession) -> dict[str, Any]:
    config = asdict(session.config)
    for key, value in config.items():
        if isinstance(value, tuple):
            config[key] = list(value)
    exposures: dict[str, Any] = {m.name: _truth_document(m.truth, "micrograph") for m in session.micrographs}
    exposures.update({m.name: _truth_document(m.truth, "movie") for m in session.movies})
    return {
        "format": SESSION_FORMAT,
        "session_name": session.session_name,
        "seed": session.seed,
        "conventions": {
            "images": "arrays indexed [y, x]; pixel (iy, ix) centred at (iy, ix)",
            "defocus": "Å, positive = underfocus, U >= V, angle from x axis to U counter-clockwise",
            "euler": "RELION ZYZ (rot, tilt, psi) degrees; projection = (x, y) of A·r",
            "drift": "shift [dy, dx] px of frame f relative to frame 0: frame_f(r) = frame_0(r - shift)",
            "structures": "make_structures(n_structures, particle_diameter_angstrom, structure_seed)",
        },
        "config": config,
        "exposures": exposures,
    }


def write_simulated_session(
    session: SimulatedSession, storage_root: Path, write_truth_images: bool = False
) -> list[Path]:
    """Write a simulated session in the layout of the module docstring.

    Parameters
    ----------
    session : SimulatedSession
    storage_root : Path
        Folder that holds one sub-folder per session.
    write_truth_images : bool
        Also write ``truth/<name>_clean.mrc`` and ``truth/<name>_potential.mrc`` (float32).

    Returns
    -------
    list of Path
        Every file of the session in the order it is written (session.json first, ground_truth.json
        last), whether it was rewritten or already held identical content.
    """
    session_dir = Path(storage_root) / session.session_name
    pixel = session.microscope.pixel_size_angstrom
    paths: list[Path] = []

    metadata_path = session_dir / SESSION_METADATA_FILENAME
    _write_bytes_if_changed(metadata_path, _json_bytes(_session_document(session)))
    paths.append(metadata_path)

    for micrograph in session.micrographs:
        path = session_dir / MICROGRAPH_DIRNAME / f"{micrograph.name}.mrc"
        _write_mrc_if_changed(path, np.ascontiguousarray(micrograph.counts, dtype=np.float32), pixel)
        paths.append(path)
    for movie in session.movies:
        path = session_dir / MOVIE_DIRNAME / f"{movie.name}{MOVIE_SUFFIX}.mrc"
        _write_mrc_if_changed(path, _movie_counts_uint16(movie.frames, movie.name), pixel)
        paths.append(path)

    if write_truth_images:
        exposures: list[SimulatedMicrograph | SimulatedMovie] = [*session.micrographs, *session.movies]
        for exposure in exposures:
            for label, image in (("clean", exposure.clean_image), ("potential", exposure.potential_image)):
                path = session_dir / TRUTH_DIRNAME / f"{exposure.name}_{label}.mrc"
                _write_mrc_if_changed(path, np.ascontiguousarray(image, dtype=np.float32), pixel)
                paths.append(path)

    truth_path = session_dir / GROUND_TRUTH_FILENAME
    _write_bytes_if_changed(truth_path, _json_bytes(_ground_truth_document(session)))
    paths.append(truth_path)
    return paths


# --------------------------------------------------------------------------------------------------
# Reading


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
    for name, exposure in exposures.items():
        if not isinstance(exposure, dict):
            raise SessionMetadataError(f"{where}: exposure {name!r} must be an object")
        value = _field(exposure, "nominal_defocus_angstrom", f"{where} exposure {name!r}")
        nominal[str(name)] = _number(value, f"exposures.{name}.nominal_defocus_angstrom", False)
    return SessionMetadata(microscope=microscope, dose_e_per_angstrom2=dose, nominal_defocus_angstrom=nominal)
