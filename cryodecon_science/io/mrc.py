"""MRC reading and writing with typed errors (all parsing is done by ``mrcfile``).

MRC2014 (Cheng et al. 2015, J. Struct. Biol. 192:146): a 1024-byte header, ``nsymbt`` bytes of extended
header, then nx·ny·nz values of the header's mode.  A file is *complete* when its size on disk equals
that declared size; a file still being copied is shorter, so the check separates half-written files from
finished ones without waiting for a timer.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import numpy.typing as npt

HEADER_BYTES = 1024
# Bytes per value for the MRC modes microscopes and packages write (mode 101 is 4-bit, two per byte).
_BYTES_PER_VALUE: dict[int, float] = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2, 101: 0.5}
MAX_DIMENSION_PX = 65536
MAX_FRAMES = 4096


class InputFileError(Exception):
    """A microscope file that cannot be used; ``reason`` is a short machine-readable code."""

    reason = "unreadable"

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.reason}: {path}: {detail}")


class IncompleteFileError(InputFileError):
    """Shorter than its header declares: still being written, or truncated."""

    reason = "incomplete"


class CorruptHeaderError(InputFileError):
    """The header is not a valid MRC header, or declares impossible dimensions or mode."""

    reason = "corrupt_header"


class InvalidPixelDataError(InputFileError):
    """The pixel values are unusable: NaN or Inf, or no variation at all."""

    reason = "invalid_pixels"


@dataclass(frozen=True)
class MrcGeometry:
    """What an MRC header declares: shape (nz, ny, nx), mode, pixel size, and the total size in bytes."""

    shape_zyx: tuple[int, int, int]
    mode: int
    pixel_size_angstrom: float
    declared_size_bytes: int


@dataclass(frozen=True)
class Micrograph:
    """One 2D image in float32, indexed [y, x], with its sampling.

    Attributes
    ----------
    name : str
        Stable identifier (file stem).
    data : ndarray, shape (ny, nx), float32
        Pixel values (electron counts for raw data).
    pixel_size_angstrom : float
        Å per pixel.
    """

    name: str
    data: npt.NDArray[np.float32]
    pixel_size_angstrom: float


@dataclass(frozen=True)
class Movie:
    """A dose-fractionated exposure: frames (n_frames, ny, nx) float32 counts per frame."""

    name: str
    frames: npt.NDArray[np.float32]
    pixel_size_angstrom: float


def read_geometry(path: str | os.PathLike[str]) -> MrcGeometry:
    """Parse only the header and return what it declares; raises CorruptHeaderError on nonsense."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header
                if header is None:
                    raise CorruptHeaderError(path, "no MRC header")
                nx, ny, nz = (int(header.nx), int(header.ny), int(header.nz))
                mode = int(header.mode)
                nsymbt = int(header.nsymbt)
                mx = int(header.mx)
                cella_x = float(header.cella.x)
                map_ok = bytes(header.map).startswith(b"MAP")
    except InputFileError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptHeaderError(path, f"header not readable by mrcfile ({exc})") from exc
    if not map_ok:
        raise CorruptHeaderError(path, "missing the 'MAP ' identifier of an MRC2014 header")
    if mode not in _BYTES_PER_VALUE:
        raise CorruptHeaderError(path, f"unsupported MRC mode {mode}")
    if not (0 < nx <= MAX_DIMENSION_PX and 0 < ny <= MAX_DIMENSION_PX and 0 < nz <= MAX_FRAMES):
        raise CorruptHeaderError(path, f"impossible dimensions nx={nx} ny={ny} nz={nz}")
    if nsymbt < 0:
        raise CorruptHeaderError(path, f"negative extended header size {nsymbt}")
    pixel_size = cella_x / mx if mx > 0 and cella_x > 0 else 0.0
    data_bytes = int(np.ceil(nx * ny * nz * _BYTES_PER_VALUE[mode]))
    return MrcGeometry((nz, ny, nx), mode, pixel_size, HEADER_BYTES + nsymbt + data_bytes)


def check_complete(path: str | os.PathLike[str]) -> MrcGeometry:
    """Return the geometry if the file on disk is exactly as long as its header declares.

    Raises IncompleteFileError when it is shorter (still copying or truncated) and CorruptHeaderError
    when it is longer or the header is invalid.
    """
    size = Path(path).stat().st_size
    if size < HEADER_BYTES:
        raise IncompleteFileError(path, f"{size} bytes, shorter than the {HEADER_BYTES}-byte MRC header")
    geometry = read_geometry(path)
    if size < geometry.declared_size_bytes:
        raise IncompleteFileError(path, f"{size} bytes on disk, header declares {geometry.declared_size_bytes}")
    if size > geometry.declared_size_bytes:
        raise CorruptHeaderError(path, f"{size} bytes on disk, header declares only {geometry.declared_size_bytes}")
    return geometry


def _read_array(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], float]:
    geometry = check_complete(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise CorruptHeaderError(path, "mrcfile read no data block")
                data = np.array(mrc.data, dtype=np.float32)  # a writable copy (mrcfile gives read-only data)
    except InputFileError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptHeaderError(path, f"data not readable by mrcfile ({exc})") from exc
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InvalidPixelDataError(path, f"{bad} NaN/Inf pixels")
    if float(np.ptp(data)) == 0.0:
        raise InvalidPixelDataError(path, "constant image (no variation)")
    if geometry.pixel_size_angstrom <= 0:
        raise CorruptHeaderError(path, "pixel size missing from header (cella/mx)")
    return data, geometry.pixel_size_angstrom


def read_micrograph(path: str | os.PathLike[str]) -> Micrograph:
    """Read a complete 2D MRC micrograph (a single-section stack is accepted) as float32."""
    data, pixel_size = _read_array(path)
    if data.ndim == 3:
        if data.shape[0] != 1:
            raise CorruptHeaderError(path, f"expected one section, found {data.shape[0]} (a movie?)")
        data = data[0]
    return Micrograph(Path(path).name.split(".")[0], np.ascontiguousarray(data), pixel_size)


def read_movie(path: str | os.PathLike[str]) -> Movie:
    """Read a complete MRC movie stack (n_frames >= 2) as float32 frames."""
    data, pixel_size = _read_array(path)
    if data.ndim != 3 or data.shape[0] < 2:
        raise CorruptHeaderError(path, f"a movie needs at least two frames, header gives shape {data.shape}")
    return Movie(Path(path).name.split(".")[0], np.ascontiguousarray(data), pixel_size)


def write_mrc(path: str | os.PathLike[str], data: npt.NDArray[np.generic], pixel_size_angstrom: float) -> None:
    """Write ``data`` (2D image or 3D stack) with the pixel size in the header, atomically.

    The file is written under a temporary name in the same folder and renamed, so a reader (or the
    storage sensor) never sees it half-written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            mrc.voxel_size = pixel_size_angstrom
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
