"""A simulated session written to disk in the layout of ``io.session``, with its truth.

Layout under ``<storage_root>/<session_name>/``, written in this order:

1. ``session.json``: microscope settings, dose and every exposure's nominal defocus (what a facility
   records at acquisition; the pipeline reads it with ``read_session_metadata``);
2. ``micrographs/<name>.mrc``: float32 counts, pixel size in the header;
3. ``movies/<name>_fractions.mrc``: uint16 electron counts, one section per frame;
4. ``truth/<name>_clean.mrc`` and ``truth/<name>_potential.mrc`` (only with ``write_truth_images``);
5. ``ground_truth.json``: everything simulated (last: its presence means the session is complete).

A session recorded through a detector gain (``SimulatedSession.detector_gain``, ``detector_gain``) is
written as SerialEM saves unnormalised frames: before the movies, ``movies/CountRef_<session>.mrc`` (the
gain reference, float32, in its stored orientation) and, beside each movie, the frame-set sidecar
``movies/<name>_fractions.mrc.mdoc`` that names it (``GainReference``); ``session.json`` then carries the
orientation the reference needs (``"gain": {"rotate_quarter_turns_ccw": k, "flip": f}``).

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
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt

from cryodecon_science.io.atomic import atomic_target
from cryodecon_science.io.checksum import sha256_of_file
from cryodecon_science.io.mrc import InputFileError, check_complete, write_mrc
from cryodecon_science.io.session import (
    MICROGRAPH_DIRNAME,
    MOVIE_DIRNAME,
    MOVIE_SUFFIX,
    SESSION_FORMAT,
    SESSION_METADATA_FILENAME,
)
from cryodecon_science.simulate.config import REGION_FIELDS, SimulationConfig
from cryodecon_science.simulate.regions import mask_to_rle
from cryodecon_science.simulate.results import MicrographTruth, SimulatedMicrograph, SimulatedMovie, SimulatedSession

GROUND_TRUTH_FILENAME = "ground_truth.json"
TRUTH_DIRNAME = "truth"
_UINT16_MAX = 65535


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
        return sha256_of_file(path)
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
    regions = _regions_document(truth)
    if regions:
        document["regions"] = regions
        for label, flags in (
            ("on_carbon", truth.particle_on_carbon),
            ("under_contamination", truth.particle_under_contamination),
            ("aggregate_id", truth.particle_aggregate_ids),
        ):
            if flags is not None:
                for particle, flag in zip(document["particles"], flags.tolist(), strict=True):
                    particle[label] = flag
    return document


def _regions_document(truth: MicrographTruth) -> dict[str, Any]:
    """The regions of an exposure: geometry, area fractions and masks as run lengths (``mask_to_rle``).

    Empty when no region feature is on, so documents without regions keep their bytes.
    """
    document: dict[str, Any] = {}
    if truth.continuous_film_thickness_nm > 0:
        document["continuous_film_thickness_nm"] = truth.continuous_film_thickness_nm
    if truth.carbon_mask is not None and truth.hole_centre_yx_px is not None:
        document["hole_centre_yx_px"] = [float(v) for v in truth.hole_centre_yx_px]
        document["hole_radius_px"] = truth.hole_radius_px
        document["carbon_fraction"] = float(truth.carbon_mask.mean())
        document["carbon_mask_rle"] = mask_to_rle(truth.carbon_mask)
    if truth.contamination_mask is not None:
        document["contamination_fraction"] = float(truth.contamination_mask.mean())
        document["contamination_mask_rle"] = mask_to_rle(truth.contamination_mask)
        document["contamination"] = [asdict(blob) for blob in truth.contamination_blobs]
    if truth.particle_aggregate_ids is not None:
        document["n_aggregates"] = len({int(i) for i in truth.particle_aggregate_ids if i >= 0})
    return document


# Where EPU would have taken each exposure: four exposures per foil hole, sixteen holes per grid square.
EXPOSURES_PER_FOIL_HOLE = 4
FOIL_HOLES_PER_GRID_SQUARE = 16


def _position(index: int) -> dict[str, str]:
    """Grid square and foil hole of the session's ``index``-th exposure (in the order written)."""
    hole = index // EXPOSURES_PER_FOIL_HOLE
    return {"grid_square_id": f"{1 + hole // FOIL_HOLES_PER_GRID_SQUARE}", "foil_hole_id": f"{1 + hole}"}


def _session_document(session: SimulatedSession) -> dict[str, Any]:
    exposures: dict[str, Any] = {}
    for micrograph in session.micrographs:
        exposures[micrograph.name] = {
            "kind": "micrograph",
            "path": f"{MICROGRAPH_DIRNAME}/{micrograph.name}.mrc",
            "nominal_defocus_angstrom": micrograph.truth.nominal_defocus_angstrom,
            **_position(len(exposures)),
        }
    for movie in session.movies:
        exposures[movie.name] = {
            "kind": "movie",
            "path": f"{MOVIE_DIRNAME}/{movie.name}{MOVIE_SUFFIX}.mrc",
            "n_frames": int(movie.frames.shape[0]),
            "nominal_defocus_angstrom": movie.truth.nominal_defocus_angstrom,
            **_position(len(exposures)),
        }
    document: dict[str, Any] = {
        "format": SESSION_FORMAT,
        "session_name": session.session_name,
        "microscope": asdict(session.microscope),
        "dose_e_per_angstrom2": session.config.dose_e_per_angstrom2,
        "particle_diameter_angstrom": session.config.particle_diameter_angstrom,
        "exposures": exposures,
    }
    gain = session.detector_gain
    if gain is not None:
        document["gain"] = {"rotate_quarter_turns_ccw": gain.stored_rotate_quarter_turns_ccw, "flip": gain.stored_flip}
    return document


def gain_reference_name(session_name: str) -> str:
    """File name of a simulated session's gain reference (in ``movies/``, as SerialEM's ``CountRef_*``)."""
    return f"CountRef_{session_name}.mrc"


def _frame_mdoc(session: SimulatedSession, movie: SimulatedMovie) -> str:
    """The SerialEM frame-set sidecar of a movie saved unnormalised: it names the gain reference."""
    n_frames, ny, nx = (int(v) for v in movie.frames.shape)
    pixel = session.microscope.pixel_size_angstrom
    voltage = session.microscope.voltage_kv
    return (
        f"PixelSpacing = {pixel:g}\nVoltage = {voltage:g}\nImageFile = {movie.name}{MOVIE_SUFFIX}.mrc\n"
        f"ImageSize = {nx} {ny}\nDataMode = 6\n\n[T = SerialEM: cryodecon simulator]\n\n[FrameSet = 0]\n"
        f"ExposureDose = {session.config.dose_e_per_angstrom2:g}\nPixelSpacing = {pixel:g}\nVoltage = {voltage:g}\n"
        f"NumSubFrames = {n_frames}\nGainReference = {gain_reference_name(session.session_name)}\n"
    )


def _json_ready(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_ready(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    return value


def _ground_truth_document(session: SimulatedSession) -> dict[str, Any]:
    config = asdict(session.config)
    defaults = {field.name: field.default for field in fields(SimulationConfig)}
    for key in REGION_FIELDS:
        if config[key] == defaults[key]:
            del config[key]  # region features at their defaults: the document of a simulation without them
    for key, value in config.items():
        if isinstance(value, tuple):
            config[key] = list(value)
    exposures: dict[str, Any] = {
        m.name: _json_ready(_truth_document(m.truth, "micrograph")) for m in session.micrographs
    }
    exposures.update({m.name: _json_ready(_truth_document(m.truth, "movie")) for m in session.movies})
    conventions = {
        "images": "arrays indexed [y, x]; pixel (iy, ix) centred at (iy, ix)",
        "defocus": "Å, positive = underfocus, U >= V, angle from x axis to U counter-clockwise",
        "euler": "RELION ZYZ (rot, tilt, psi) degrees; projection = (x, y) of A·r",
        "drift": "shift [dy, dx] px of frame f relative to frame 0: frame_f(r) = frame_0(r - shift)",
        "structures": "make_structures(n_structures, particle_diameter_angstrom, structure_seed)",
    }
    if session.config.structure_aspect_ratio != 1.0:
        conventions["structures"] = (
            "make_structures(n_structures, particle_diameter_angstrom, structure_seed, structure_aspect_ratio)"
        )
    if any("regions" in exposure for exposure in exposures.values()):
        conventions["masks"] = (
            "*_mask_rle: row-major run lengths over [y, x], alternating False/True, starting with False; "
            "a particle is on carbon / under contamination when its centre pixel is in the mask"
        )
    document: dict[str, Any] = {
        "format": SESSION_FORMAT,
        "session_name": session.session_name,
        "seed": session.seed,
        "conventions": conventions,
        "config": config,
        "exposures": exposures,
    }
    gain = session.detector_gain
    if gain is not None:
        conventions["detector_gain"] = (
            "raw = Binomial(true counts, 1/gain) per frame; corrected = raw x gain (0 = dead pixel); the stored "
            "reference needs MotionCor2 -RotGain/-FlipGain = stored_rotate_quarter_turns_ccw/stored_flip"
        )
        document["detector_gain"] = {
            "reference": f"{MOVIE_DIRNAME}/{gain_reference_name(session.session_name)}",
            "variation": gain.variation,
            "seed": gain.seed,
            "stored_rotate_quarter_turns_ccw": gain.stored_rotate_quarter_turns_ccw,
            "stored_flip": gain.stored_flip,
            "dead_pixels_yx": [[int(y), int(x)] for y, x in gain.dead_pixels_yx],
        }
    return document


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
    if session.detector_gain is not None and session.movies:
        path = session_dir / MOVIE_DIRNAME / gain_reference_name(session.session_name)
        _write_mrc_if_changed(path, session.detector_gain.stored_reference, pixel)
        paths.append(path)
    for movie in session.movies:
        path = session_dir / MOVIE_DIRNAME / f"{movie.name}{MOVIE_SUFFIX}.mrc"
        if session.detector_gain is not None:
            # The sidecar first: a movie is never seen without the sidecar that says it needs a gain.
            sidecar = path.with_name(path.name + ".mdoc")
            _write_bytes_if_changed(sidecar, _frame_mdoc(session, movie).encode("utf-8"))
            paths.append(sidecar)
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
