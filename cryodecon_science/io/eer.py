"""EER (Electron Event Representation; Falcon 4/4i) movies via ``eerfile`` and ``tifffile``.

An EER file is a BigTIFF with one page per raw detector frame (hundreds to thousands), each page a
run-length-encoded list of electron events with sub-pixel positions (Guo et al. 2020, IUCrJ 7:860), and
the acquisition metadata as XML in TIFF tag 65001.  ``eerfile.data_models.EERHeader`` parses that
metadata; the events are decoded by ``imagecodecs`` through ``tifffile`` page by page and summed into
groups of ``frames_per_group`` raw frames (the RELION ``--eer_grouping`` convention: trailing frames that
do not fill a group are dropped), so a 1,000-frame 4K movie never exists in memory as raw frames.

``super_resolution`` renders 2^s × 2^s sub-pixels per physical pixel (s = 0, 1, 2: 4K, 8K, 16K for a
Falcon 4), which divides the counts per output pixel by 4^s.  Users report 16× intensity jumps between
tools: a 16K render read as 4K, or a gain reference for the other sampling.  ``read_eer`` therefore
checks the intensity scale: the mean counts per *physical* pixel summed over all raw frames must match
the ``totalDose`` (e⁻/pixel) the metadata announces within ``dose_tolerance_fraction`` (widened to 5
Poisson σ for small images).  A mismatch raises ``EerScaleError`` or, with ``on_scale_mismatch="flag"``,
is reported in ``EerMovie.scale_ok`` / ``scale_ratio``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import tifffile

from cryodecon_science.io.errors import CorruptHeaderError, IncompleteFileError, InputFileError
from cryodecon_science.io.errors import EerScaleError as EerScaleError  # re-exported for the readers' callers
from cryodecon_science.io.mrc import MAX_DIMENSION_PX
from cryodecon_science.io.tiff import check_page_chain, checked_size_and_magic
from cryodecon_science.metadata import Fields

MAX_EER_FRAMES = 100_000
EER_SENSOR_PX = 4096
"""Side of the EER sensors (Falcon 4, 4i and C: 4096 × 4096 physical pixels); a frame decoded at
super-resolution s has sides of at most 4096·2^s.  A header claiming more is corrupt: EER's run-length
code turns a few bytes into any number of empty pixels, so a mutated width of 60000 would otherwise
decode a 3.6-G-pixel frame and fill tens of GB before anything else was checked."""
_BIGTIFF_MAGIC = (b"II+\0", b"MM\0+")


@dataclass(frozen=True)
class EerMovie:
    """Grouped frames of an EER movie and what its metadata says.

    Attributes
    ----------
    name : str
    frames : ndarray, shape (n_groups, ny, nx), float32
        Electron counts per output pixel per group.
    n_raw_frames : int
        Raw EER frames in the file.
    frames_per_group : int
    super_resolution : int
        0, 1 or 2 (output pixel = physical pixel / 2^s).
    pixel_size_angstrom : float or None
        Output pixel size on the specimen from the metadata's ``sensorPixelSize`` (None if absent).
    total_dose_e_per_px : float or None
        ``totalDose`` from the metadata, e⁻ per physical pixel.
    measured_dose_e_per_px : float
        Mean counts per physical pixel over all raw frames (from the grouped frames, scaled for the
        dropped trailing frames).
    scale_ratio : float or None
        measured / announced dose.
    scale_ok : bool or None
        Whether the ratio lies within tolerance (None when the metadata announces no dose).
    metadata : dict
        The metadata as ``tifffile`` parses it (XML items of tag 65001).
    """

    name: str
    frames: npt.NDArray[np.float32]
    n_raw_frames: int
    frames_per_group: int
    super_resolution: int
    pixel_size_angstrom: float | None
    total_dose_e_per_px: float | None
    measured_dose_e_per_px: float
    scale_ratio: float | None
    scale_ok: bool | None
    metadata: dict[str, Any]

    def to_fields(self) -> Fields:
        """Metadata fields: sampling, camera, frame count, dose (e⁻/Å² from e⁻/pixel), exposure time."""
        out: Fields = {
            "detector.image_width_px": int(self.frames.shape[2]),
            "detector.image_height_px": int(self.frames.shape[1]),
            "detector.n_frames": self.n_raw_frames,
            "detector.electron_counting": True,
            "detector.super_resolution_factor": 2**self.super_resolution,
        }
        if self.pixel_size_angstrom:
            out["optics.pixel_size_angstrom"] = self.pixel_size_angstrom
        camera = self.metadata.get("commercialName") or self.metadata.get("cameraName")
        if camera:
            out["detector.camera_name"] = str(camera)
        exposure = _finite(self.metadata.get("exposureTime"))
        if exposure:
            out["dose.exposure_time_s"] = exposure
        rate = _finite(self.metadata.get("meanDoseRate"))
        if rate:
            out["dose.dose_rate_e_per_px_per_s"] = rate
        physical_px = (self.pixel_size_angstrom or 0.0) * 2**self.super_resolution
        if self.total_dose_e_per_px and physical_px > 0:
            out["dose.total_dose_e_per_angstrom2"] = self.total_dose_e_per_px / physical_px**2
        timestamp = self.metadata.get("timestamp")
        if timestamp is not None:
            iso = timestamp.isoformat() if hasattr(timestamp, "isoformat") else str(timestamp)
            out["acquisition.timestamp_utc_iso"] = iso
        return out


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _header_values(metadata: dict[str, Any]) -> tuple[float | None, float | None, int]:
    """(physical pixel size Å, totalDose e⁻/px, numberOfFrames) parsed the way ``eerfile`` does."""
    from eerfile.data_models import EERHeader  # eerfile imports pydantic; keep it off the package import path

    header = EERHeader(
        n_frames=int(_finite(metadata.get("numberOfFrames")) or 0),
        image_height_pixels=int(_finite(metadata.get("sensorImageHeight")) or 0),
        image_width_pixels=int(_finite(metadata.get("sensorImageWidth")) or 0),
        pixel_spacing_height_meters=_finite(metadata.get("sensorPixelSize.height")) or 0.0,
        pixel_spacing_width_meters=_finite(metadata.get("sensorPixelSize.width")) or 0.0,
        total_dose_electrons_per_pixel=_finite(metadata.get("totalDose")),
        exposure_time_seconds=_finite(metadata.get("exposureTime")),
    )
    pixel = header.pixel_spacing_width_angstroms
    return (pixel if pixel > 0 else None), header.total_dose_electrons_per_pixel, header.n_frames


def read_eer(
    path: str | os.PathLike[str],
    *,
    frames_per_group: int | None = None,
    n_groups: int | None = None,
    super_resolution: int = 0,
    dose_tolerance_fraction: float = 0.05,
    on_scale_mismatch: Literal["raise", "flag"] = "raise",
) -> EerMovie:
    """Read an EER movie, summing raw frames into groups, and check its intensity scale.

    Parameters
    ----------
    path : path-like
    frames_per_group : int, optional
        Raw frames summed per output frame.  Default: from ``n_groups``, else 1.
    n_groups : int, optional
        Desired number of output frames (``frames_per_group = n_raw // n_groups``); ignored when
        ``frames_per_group`` is given.
    super_resolution : {0, 1, 2}
        Render 2^s × 2^s sub-pixels per physical pixel.
    dose_tolerance_fraction : float
        Allowed relative difference between measured and announced dose (at least 5 Poisson σ).
    on_scale_mismatch : {"raise", "flag"}

    Returns
    -------
    EerMovie

    Raises
    ------
    IncompleteFileError
        Zero-size or truncated file, or fewer pages than ``numberOfFrames`` announces.
    CorruptHeaderError
        Not a BigTIFF EER file, inconsistent frames, or undecodable events.
    EerScaleError
        The counts do not match the announced dose (``on_scale_mismatch="raise"``).
    """
    if super_resolution not in (0, 1, 2):
        raise ValueError(f"super_resolution must be 0, 1 or 2, got {super_resolution}")
    size = checked_size_and_magic(
        path, _BIGTIFF_MAGIC, "not an EER file (EER is a BigTIFF: II+ or MM+ byte-order mark)"
    )
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(path, superres=super_resolution or None) as tif:
            metadata = dict(tif.eer_metadata or {})
            if not tif.is_eer or not metadata:
                raise CorruptHeaderError(path, "no EER metadata (TIFF tag 65001)")
            pages = tif.pages
            n_pages = check_page_chain(tif, path, size, MAX_EER_FRAMES)
            pixel_size, total_dose, announced = _header_values(metadata)
            if announced and n_pages < announced:
                raise IncompleteFileError(path, f"{n_pages} frames on disk, metadata announces {announced}")
            if announced and n_pages > announced:
                raise CorruptHeaderError(path, f"{n_pages} frames on disk, metadata announces only {announced}")
            first = pages[0]
            compression = int(first.compression)
            if compression not in (65000, 65001, 65002):
                raise CorruptHeaderError(path, f"page 0 compression {compression} is not an EER encoding")
            shape = tuple(int(v) for v in first.shape)
            largest = EER_SENSOR_PX * 2**super_resolution
            if len(shape) != 2 or not all(0 < v <= min(largest, 4 * MAX_DIMENSION_PX) for v in shape):
                raise CorruptHeaderError(path, f"impossible EER frame shape {shape} (sensor {largest} px a side)")
            if frames_per_group is None:
                frames_per_group = max(1, n_pages // n_groups) if n_groups else 1
            if frames_per_group < 1:
                raise ValueError(f"frames_per_group must be >= 1, got {frames_per_group}")
            groups = n_pages // frames_per_group
            if groups == 0:
                raise CorruptHeaderError(path, f"{n_pages} frames, fewer than one group of {frames_per_group}")
            for index in range(1, groups * frames_per_group):  # from the tags, before decoding anything
                if tuple(int(v) for v in pages[index].shape) != shape:
                    raise CorruptHeaderError(
                        path, f"frame {index} has shape {tuple(pages[index].shape)}, frame 0 {shape}"
                    )
            out = np.zeros((groups, *shape), dtype=np.float32)
            for index in range(groups * frames_per_group):
                page = pages[index]
                offsets, counts = page.dataoffsets, page.databytecounts
                if len(offsets) == 0 or max(int(o) + int(c) for o, c in zip(offsets, counts, strict=True)) > size:
                    raise IncompleteFileError(path, f"frame {index} data past the end of the file")
                out[index // frames_per_group] += page.asarray()  # shape checked from the tags above
    except InputFileError:
        raise
    except MemoryError as exc:
        raise CorruptHeaderError(path, "declared sizes exceed memory") from exc
    except Exception as exc:  # tifffile/imagecodecs/pydantic raise many types on malformed input
        raise CorruptHeaderError(path, f"not readable as EER ({type(exc).__name__}: {exc})") from exc
    finally:
        logger.setLevel(level)
    used = groups * frames_per_group
    subpixels = 4**super_resolution
    measured = float(out.sum(dtype=np.float64)) / (out.shape[1] * out.shape[2]) * subpixels * n_pages / used
    ratio: float | None = None
    scale_ok: bool | None = None
    if total_dose is not None and total_dose > 0:
        ratio = measured / total_dose
        events = max(total_dose * out.shape[1] * out.shape[2] / subpixels, 1.0)
        tolerance = max(dose_tolerance_fraction, 5.0 / math.sqrt(events))
        scale_ok = abs(ratio - 1.0) <= tolerance
        if not scale_ok and on_scale_mismatch == "raise":
            hint = ""
            for factor in (4, 16):
                if math.isclose(ratio, factor, rel_tol=0.2) or math.isclose(ratio, 1 / factor, rel_tol=0.2):
                    hint = f" (a factor of {factor}: super-resolution sampling mixed up?)"
            raise EerScaleError(
                path,
                f"mean counts {measured:.4g} e/px over all frames, metadata totalDose {total_dose:.4g} e/px "
                f"(ratio {ratio:.3g}){hint}",
            )
    output_pixel = None if pixel_size is None else pixel_size / 2**super_resolution
    return EerMovie(
        name=Path(path).name.split(".")[0],
        frames=out,
        n_raw_frames=n_pages,
        frames_per_group=frames_per_group,
        super_resolution=super_resolution,
        pixel_size_angstrom=output_pixel,
        total_dose_e_per_px=total_dose,
        measured_dose_e_per_px=measured,
        scale_ratio=ratio,
        scale_ok=scale_ok,
        metadata=metadata,
    )
