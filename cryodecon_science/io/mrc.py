"""MRC reading and writing with typed errors (all parsing is done by ``mrcfile``).

MRC2014 (Cheng et al. 2015, J. Struct. Biol. 192:146): a 1024-byte header, ``nsymbt`` bytes of extended
header, then nx·ny·nz values of the header's mode.  A file is *complete* when its size on disk equals
that declared size; a file still being copied is shorter, so the check separates half-written files from
finished ones without waiting for a timer.

Modes read: 0 (int8, or uint8 when IMOD's flags say so), 1 (int16), 2 (float32), 6 (uint16), 12 (float16)
through ``mrcfile``, and 101 (4-bit unsigned, two values per byte, low nibble first, each row padded to a
whole byte, as IMOD and SerialEM write it), which ``mrcfile`` does not decode and which is unpacked here
from the data block whose size ``check_complete`` has verified.

FEI1/FEI2 extended headers (written by EPU and Velox; ``mrcfile`` exposes them as
``indexed_extended_header``) are turned into values with units by ``read_fei_extended_header``
(Thermo Fisher Scientific, "MRC2014 file format, extended header FEI1/FEI2", EPU 2.x/3.x user manual
appendix: HT in V, dose in e⁻/m², pixel size, stage and defocus in m, tilts in degrees, timestamp as an
OLE Automation date (days since 1899-12-30)).  Each value is used only when its bit in the entry's
bitmask is set (or when the writer left all bitmask words zero, as some older software does).

Every reader either returns usable data or raises ``InputFileError`` (or a subclass), whatever the bytes on
disk; ``tests/science/test_mrc_fuzz.py`` and ``tests/science/test_format_fuzz.py`` check this on mutated
files.  Compressed (gzip, bzip2) MRC files are not read: their size on disk never matches their header.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt
from mrcfile.mrcfile import MrcFile

from cryodecon_science.io.atomic import atomic_target
from cryodecon_science.io.errors import (  # re-exported: the readers' callers import them from here too
    CorruptHeaderError as CorruptHeaderError,
)
from cryodecon_science.io.errors import IncompleteFileError as IncompleteFileError
from cryodecon_science.io.errors import InputFileError as InputFileError
from cryodecon_science.io.errors import InvalidPixelDataError as InvalidPixelDataError
from cryodecon_science.io.errors import ZeroFilledError as ZeroFilledError
from cryodecon_science.io.rawread import read_converted, read_ranges
from cryodecon_science.metadata import Fields

HEADER_BYTES = 1024
# Bytes per value for the MRC modes microscopes and packages write (mode 101 is 4-bit, two per byte).
_BYTES_PER_VALUE: dict[int, float] = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2, 101: 0.5}
MAX_DIMENSION_PX = 65536
MAX_FRAMES = 4096
# MRC2014: space groups 401-630 mark a stack of volumes, each mz sections deep (mrcfile reshapes by nz // mz).
_VOLUME_STACK_SPACE_GROUPS = range(401, 631)
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZ": "bzip2"}


@dataclass(frozen=True)
class MrcGeometry:
    """What an MRC header declares: shape (nz, ny, nx), mode, pixel size, and the total size in bytes."""

    shape_zyx: tuple[int, int, int]
    mode: int
    pixel_size_angstrom: float
    declared_size_bytes: int
    data_dtype: str = ""  # numpy dtype string of the data block with its byte order ("<u2"); "" for mode 101


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


@dataclass(frozen=True)
class Volume:
    """A cubic 3D density map (e.g. a reference structure from EMDB) in float32.

    Attributes
    ----------
    data_density : ndarray, shape (n, n, n), float32
        Density values indexed [z, y, x] (the map's own units, e.g. arbitrary or V), voxel (n//2, n//2,
        n//2) at the centre as in RELION.
    voxel_size_angstrom : float
        Edge of a (cubic) voxel, Å.
    """

    data_density: npt.NDArray[np.float32]
    voxel_size_angstrom: float


class _BoundedMrcFile(MrcFile):  # type: ignore[misc]  # mrcfile ships no type hints
    """An ``mrcfile`` reader that never allocates more than the file holds.

    mrcfile allocates a buffer of the size the header declares (``nsymbt`` up to 2 GiB for the extended
    header, nx·ny·nz values for the data) before reading into it.  Here each request is first clipped to
    the bytes left in the file, so a corrupt header gives a short read, which mrcfile reports as one,
    instead of a giant allocation.  Opening ``MrcFile`` directly (not ``mrcfile.open``) also skips the
    gzip/bzip2 detection, whose decompressors raise errors of their own on corrupt input.
    """

    def _read_bytearray_from_stream(self, number_of_bytes: int) -> tuple[bytearray, int]:
        remaining = int(self._get_file_size()) - int(self._iostream.tell())
        result: tuple[bytearray, int] = super()._read_bytearray_from_stream(max(0, min(number_of_bytes, remaining)))
        return result


def _data_bytes(nx: int, ny: int, nz: int, mode: int) -> int:
    """Size of the data block in bytes; mode 101 packs two 4-bit values per byte, each row padded to a byte."""
    if mode == 101:
        return (nx + 1) // 2 * ny * nz
    return nx * ny * nz * int(_BYTES_PER_VALUE[mode])


# IMOD's header stamp (bytes 152–155) and flags (156–159): with the stamp and without flag bit 1 ("bytes
# are stored as signed"), mode-0 bytes are unsigned (IMOD's mrc_format documentation).  MRC2014 itself
# says signed; mrcfile always reads int8.
_IMOD_STAMP = 1146047817
_IMOD_SIGNED_BYTES_FLAG = 1


def _imod_unsigned_bytes(raw_header: bytes, byteorder: str) -> bool:
    """True when an IMOD-stamped header leaves the 'bytes are signed' flag unset (mode 0 is uint8)."""
    order = {"<": "little", ">": "big"}.get(byteorder, sys.byteorder)
    stamp = int.from_bytes(raw_header[152:156], order, signed=True)  # type: ignore[arg-type]
    flags = int.from_bytes(raw_header[156:160], order, signed=True)  # type: ignore[arg-type]
    return stamp == _IMOD_STAMP and not flags & _IMOD_SIGNED_BYTES_FLAG


def read_geometry(path: str | os.PathLike[str]) -> MrcGeometry:
    """Parse only the header and return what it declares; raises CorruptHeaderError on nonsense.

    The pixel size is 0.0 when the header does not give a positive, finite ``cella.x / mx``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _BoundedMrcFile(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header
                if header is None:
                    raise CorruptHeaderError(path, "no MRC header")
                nx, ny, nz = (int(header.nx), int(header.ny), int(header.nz))
                mode = int(header.mode)
                nsymbt = int(header.nsymbt)
                mx, mz, ispg = (int(header.mx), int(header.mz), int(header.ispg))
                cella_x = float(header.cella.x)
                map_ok = bytes(header.map).startswith(b"MAP")
                magic = header.tobytes()[:2]
                try:
                    data_dtype = mrcfile.utils.data_dtype_from_header(header).str if mode != 101 else ""
                except ValueError:
                    data_dtype = ""  # unsupported mode: reported below
                if mode == 0 and _imod_unsigned_bytes(header.tobytes(), header.mode.dtype.byteorder):
                    data_dtype = "|u1"
    except InputFileError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptHeaderError(path, f"header not readable by mrcfile ({exc})") from exc
    if not map_ok:
        if magic in _COMPRESSION_MAGIC:
            raise CorruptHeaderError(path, f"{_COMPRESSION_MAGIC[magic]}-compressed; decompress the MRC file first")
        raise CorruptHeaderError(path, "missing the 'MAP ' identifier of an MRC2014 header")
    if mode not in _BYTES_PER_VALUE:
        raise CorruptHeaderError(path, f"unsupported MRC mode {mode}")
    if not (0 < nx <= MAX_DIMENSION_PX and 0 < ny <= MAX_DIMENSION_PX and 0 < nz <= MAX_FRAMES):
        raise CorruptHeaderError(path, f"impossible dimensions nx={nx} ny={ny} nz={nz}")
    if nsymbt < 0:
        raise CorruptHeaderError(path, f"negative extended header size {nsymbt}")
    if ispg in _VOLUME_STACK_SPACE_GROUPS and (mz <= 0 or nz % mz != 0):
        raise CorruptHeaderError(
            path, f"space group {ispg} declares a volume stack, but mz={mz} does not divide nz={nz}"
        )
    pixel_size = cella_x / mx if mx > 0 and math.isfinite(cella_x) and cella_x > 0 else 0.0
    declared = HEADER_BYTES + nsymbt + _data_bytes(nx, ny, nz, mode)
    return MrcGeometry((nz, ny, nx), mode, pixel_size, declared, data_dtype)


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


# The zero-fill check reads the last 1/TAIL_ROW_FRACTION of the rows of the last section, and at least
# MIN_TAIL_PIXELS pixels (the whole section when it is smaller).
TAIL_ROW_FRACTION = 16
MIN_TAIL_PIXELS = 4096
PREALLOCATED_DETAIL = "the file may be preallocated and still being filled"


def filled_tail_rows(ny: int, nx: int) -> int:
    """Rows at the end of a section (ny × nx px) that are never all zero in a complete exposure.

    The last 1/16 of the rows (256 of 4096), and at least 4096 pixels, so that even a small
    frame at low dose holds electrons there (reasoning in ``layout.check_exposure_complete``).
    """
    return min(ny, max(-(-ny // TAIL_ROW_FRACTION), -(-MIN_TAIL_PIXELS // nx)))


def zero_tail_detail(section: npt.NDArray[Any], rows: int | None = None) -> str | None:
    """Why the last section (ny, nx) of an exposure looks unwritten, or None when its last rows hold data.

    ``rows``: how many final rows must hold data (default ``filled_tail_rows``).  The detail says whether
    the whole section or only its last rows are zero.
    """
    ny, nx = section.shape
    rows = filled_tail_rows(ny, nx) if rows is None else rows
    if section[ny - rows :].any():
        return None
    if section.any():
        return f"last {rows} rows of the last section all zeros: {PREALLOCATED_DETAIL}"
    return f"last section all zeros: {PREALLOCATED_DETAIL}"


def check_not_zero_filled(path: str | os.PathLike[str], geometry: MrcGeometry | None = None) -> MrcGeometry:
    """Return the geometry unless the last section's final rows are all zero bytes (``filled_tail_rows``).

    A file preallocated at full size and filled in order has a valid header and the declared size while
    its data is still zeros.  Only the tail rows of the last section are read (1/16 of one section); the
    whole last section is read only when they are zero, to say which part is.  ``geometry``: the result of
    ``check_complete`` (computed when not given).

    Raises
    ------
    IncompleteFileError
        The tail of the data is zero (the detail says "last section all zeros: ..." or "last N rows ...").
    """
    geometry = check_complete(path) if geometry is None else geometry
    _, ny, nx = geometry.shape_zyx
    if geometry.mode == 101:
        row_bytes = (nx + 1) // 2
    elif geometry.data_dtype:
        row_bytes = nx * np.dtype(geometry.data_dtype).itemsize
    else:
        return geometry  # a mode the readers reject with their own error
    rows = filled_tail_rows(ny, nx)
    end = geometry.declared_size_bytes  # the data block ends the file
    with open(path, "rb") as handle:
        handle.seek(end - rows * row_bytes)
        tail = handle.read(rows * row_bytes)
        if len(tail) < rows * row_bytes:
            raise IncompleteFileError(path, f"shorter than the {geometry.declared_size_bytes} bytes declared")
        if np.frombuffer(tail, dtype=np.uint8).any():
            return geometry
        handle.seek(end - ny * row_bytes)
        section = np.frombuffer(handle.read(ny * row_bytes), dtype=np.uint8)
    detail = zero_tail_detail(section.reshape(ny, row_bytes), rows)
    if detail is not None:
        raise ZeroFilledError(path, detail)
    return geometry


def _read_data_block(
    path: str | os.PathLike[str], geometry: MrcGeometry, out_dtype: npt.DTypeLike | None
) -> npt.NDArray[Any]:
    """The data block of a complete file as (nz, ny, nx) in ``out_dtype`` (None: the stored type).

    The header was parsed by mrcfile (``read_geometry``: mode, byte order, size); the block is the last
    ``nz·ny·nx·itemsize`` bytes of the file, read by ``rawread`` straight into the result, or converted
    piece by piece into it, on all cores.  (mrcfile's own reader copies the block through a ``bytearray``
    and then into the float array on one core, about 2.5× slower than a plain read of the file.)
    """
    stored = np.dtype(geometry.data_dtype)
    count = math.prod(geometry.shape_zyx)
    offset = geometry.declared_size_bytes - count * stored.itemsize
    target = stored if out_dtype is None else np.dtype(out_dtype)
    out = np.empty(geometry.shape_zyx, dtype=target)
    try:
        if target == stored:
            read_ranges(path, [(offset, 0, count * stored.itemsize)], out)
        else:
            read_converted(path, offset, stored, out)
    except EOFError as exc:
        raise IncompleteFileError(path, str(exc)) from exc
    return out


def _read_values(
    path: str | os.PathLike[str], out_dtype: npt.DTypeLike | None = np.float32
) -> tuple[npt.NDArray[Any], MrcGeometry]:
    """Values of a complete file as (nz, ny, nx) in ``out_dtype`` (None: the stored sample type), checked
    finite and non-constant, and its geometry."""
    geometry = check_complete(path)
    if geometry.mode == 101:
        data = _read_mode_101(path, geometry)
        return _checked(path, data if out_dtype is None else data.astype(out_dtype), integer_source=True), geometry
    if not geometry.data_dtype:
        raise CorruptHeaderError(path, f"mrcfile cannot read the data block (mode {geometry.mode})")
    try:
        data = _read_data_block(path, geometry, out_dtype)
    except InputFileError:
        raise
    except (OSError, ValueError) as exc:
        raise CorruptHeaderError(path, f"data not readable ({exc})") from exc
    integer_source = np.dtype(geometry.data_dtype).kind in "iu"
    return _checked(path, data, integer_source), geometry


def _checked(
    path: str | os.PathLike[str], data: npt.NDArray[np.float32], integer_source: bool = False
) -> npt.NDArray[np.float32]:
    """``data`` unchanged if every value is finite and not all are equal; InvalidPixelDataError otherwise.

    ``integer_source``: the file stores integers (modes 0, 1, 6, 101), which cannot be NaN/Inf, so the
    memory-bound finiteness scan is skipped.
    """
    if not integer_source and not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InvalidPixelDataError(path, f"{bad} NaN/Inf pixels")
    flat = data.reshape(-1)
    head = flat[:65536]  # almost always varies: then the full scan is not needed
    # not np.ptp: max - min overflows float32 for extreme but valid values
    if head.max() == head.min() and flat.max() == flat.min():
        raise InvalidPixelDataError(path, "constant image (no variation)")
    return data


def _read_mode_101(path: str | os.PathLike[str], geometry: MrcGeometry) -> npt.NDArray[np.float32]:
    """Unpack a complete mode-101 file: 4-bit values, low nibble first, each row padded to a whole byte."""
    nz, ny, nx = geometry.shape_zyx
    row_bytes = (nx + 1) // 2
    with open(path, "rb") as handle:
        handle.seek(geometry.declared_size_bytes - row_bytes * ny * nz)
        packed = np.frombuffer(handle.read(row_bytes * ny * nz), dtype=np.uint8)
    if packed.size != row_bytes * ny * nz:
        raise IncompleteFileError(path, "mode-101 data block shorter than declared")
    packed = packed.reshape(nz, ny, row_bytes)
    values = np.empty((nz, ny, 2 * row_bytes), dtype=np.float32)
    values[..., 0::2] = packed & 0x0F
    values[..., 1::2] = packed >> 4
    return np.ascontiguousarray(values[..., :nx])


def _read_array(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], float]:
    """Pixels of a complete file as float32 (nz, ny, nx), checked finite and non-constant, and the pixel size."""
    data, geometry = _read_values(path)
    if geometry.pixel_size_angstrom <= 0:
        raise CorruptHeaderError(path, "pixel size missing from header (cella.x / mx not positive and finite)")
    return data, geometry.pixel_size_angstrom


def read_micrograph(path: str | os.PathLike[str]) -> Micrograph:
    """Read a complete 2D MRC micrograph (a single-section stack is accepted) as float32."""
    data, pixel_size = _read_array(path)
    if data.shape[0] != 1:
        raise CorruptHeaderError(path, f"expected one section, found {data.shape[0]} (a movie?)")
    return Micrograph(Path(path).name.split(".")[0], np.ascontiguousarray(data[0]), pixel_size)


def read_movie(path: str | os.PathLike[str]) -> Movie:
    """Read a complete MRC movie stack (n_frames >= 2) as float32 frames."""
    data, pixel_size = _read_array(path)
    if data.shape[0] < 2:
        raise CorruptHeaderError(path, f"a movie needs at least two frames, header gives shape {data.shape}")
    return Movie(Path(path).name.split(".")[0], np.ascontiguousarray(data), pixel_size)


def _axis_order(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(mapc, mapr, maps): which spatial axis (1 = x, 2 = y, 3 = z) columns, rows and sections hold."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _BoundedMrcFile(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header
                order = (int(header.mapc), int(header.mapr), int(header.maps))
    except (OSError, ValueError, EOFError, AttributeError) as exc:
        raise CorruptHeaderError(path, f"header not readable by mrcfile ({exc})") from exc
    if sorted(order) != [1, 2, 3]:
        raise CorruptHeaderError(path, f"mapc/mapr/maps = {order} is not a permutation of 1, 2, 3")
    return order


def read_volume(path: str | os.PathLike[str], voxel_size_angstrom: float | None = None) -> Volume:
    """Read a complete cubic 3D map (n, n, n) as float32 [z, y, x], with its voxel size.

    The axes are reordered to [z, y, x] when the header's mapc/mapr/maps declare another order (MRC2014
    allows any permutation; EMDB maps use 1, 2, 3).  The voxel size is ``cella.x / mx`` from the header
    (voxels are taken as cubic), or ``voxel_size_angstrom`` when given, which overrides the header.

    Parameters
    ----------
    path : path-like
        The MRC file.
    voxel_size_angstrom : float or None
        Voxel edge in Å overriding the header; needed when the header gives none (cella or mx zero).

    Returns
    -------
    Volume

    Raises
    ------
    IncompleteFileError
        The file is shorter than its header declares.
    CorruptHeaderError
        Invalid header, a 2D image or a non-cubic volume, an invalid axis order, or no voxel size in the
        header and none given.
    InvalidPixelDataError
        NaN/Inf voxels, or a constant map.
    ValueError
        ``voxel_size_angstrom`` given but not positive and finite.
    """
    if voxel_size_angstrom is not None and not (math.isfinite(voxel_size_angstrom) and voxel_size_angstrom > 0):
        raise ValueError(f"voxel_size_angstrom must be positive and finite, got {voxel_size_angstrom}")
    data, geometry = _read_values(path)
    nz, ny, nx = data.shape
    if nz == 1:
        raise CorruptHeaderError(path, f"a 2D image ({ny} x {nx}), not a 3D map")
    if not nz == ny == nx:
        raise CorruptHeaderError(path, f"not a cubic map: shape (z, y, x) = {data.shape}")
    voxel = voxel_size_angstrom if voxel_size_angstrom is not None else geometry.pixel_size_angstrom
    if voxel <= 0:
        raise CorruptHeaderError(path, "voxel size missing from header (cella.x / mx not positive); give one")
    order = _axis_order(path)
    # data is indexed [section, row, column]; spatial axis a (1 = x, 2 = y, 3 = z) lies along data axis
    # 2 − order.index(a) (columns are the last data axis).
    data_axis = {axis: 2 - position for position, axis in enumerate(order)}
    data = np.transpose(data, (data_axis[3], data_axis[2], data_axis[1]))
    return Volume(np.ascontiguousarray(data, dtype=np.float32), float(voxel))


def write_mrc(path: str | os.PathLike[str], data: npt.NDArray[np.generic], pixel_size_angstrom: float) -> None:
    """Write ``data`` (2D image or 3D stack) with the pixel size in the header, atomically.

    The file is written under a temporary name in the same folder and renamed, so a reader (or the
    storage sensor) never sees it half-written; its permissions follow the umask (``io.atomic``).
    """
    with atomic_target(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data))
        mrc.voxel_size = pixel_size_angstrom


# --------------------------------------------------------------------------------------------------
# FEI1/FEI2 extended headers and header metadata

_OLE_EPOCH = datetime(1899, 12, 30, tzinfo=UTC)
_METRE_TO_ANGSTROM = 1e10
_METRE_TO_MICROMETRE = 1e6
_PER_M2_TO_PER_ANGSTROM2 = 1e-20


@dataclass(frozen=True)
class FeiExtendedHeader:
    """Values of the first entry of an FEI1/FEI2 extended header, converted to the units in their names.

    ``None`` marks a value absent (bitmask bit clear) or unusable (non-finite, or zero where zero is
    impossible).  FEI1/FEI2 record no spherical aberration, so ``spherical_aberration_mm`` is always
    ``None``.  Defocus is in Å, positive = underfocus (FEI stores metres, negative = underfocus).

    Attributes
    ----------
    exttyp : str
        "FEI1" or "FEI2".
    n_entries : int
        Entries read (one per section).
    total_dose_e_per_angstrom2 : float or None
        The first entry's dose, or the sum over entries when they are dose fractions.
    """

    exttyp: str
    n_entries: int
    voltage_kv: float | None = None
    spherical_aberration_mm: float | None = None
    total_dose_e_per_angstrom2: float | None = None
    pixel_size_x_angstrom: float | None = None
    pixel_size_y_angstrom: float | None = None
    nominal_defocus_angstrom: float | None = None
    objective_defocus_angstrom: float | None = None
    magnification: float | None = None
    camera_name: str | None = None
    timestamp_utc_iso: str | None = None
    stage_x_um: float | None = None
    stage_y_um: float | None = None
    stage_z_um: float | None = None
    alpha_tilt_deg: float | None = None
    beta_tilt_deg: float | None = None
    integration_time_s: float | None = None
    binning: float | None = None
    electron_counting: bool | None = None
    microscope_type: str | None = None
    microscope_id: str | None = None
    application: str | None = None
    application_version: str | None = None
    slit_width_ev: float | None = None

    def to_fields(self) -> Fields:
        """The values as ``cryodecon_science.metadata`` fields (``None`` values left out)."""
        mapping = {
            "voltage_kv": "optics.voltage_kv",
            "pixel_size_x_angstrom": "optics.pixel_size_angstrom",
            "magnification": "optics.nominal_magnification",
            "nominal_defocus_angstrom": "optics.nominal_defocus_angstrom",
            "objective_defocus_angstrom": "optics.objective_defocus_angstrom",
            "slit_width_ev": "optics.energy_filter_slit_width_ev",
            "camera_name": "detector.camera_name",
            "binning": "detector.binning",
            "electron_counting": "detector.electron_counting",
            "total_dose_e_per_angstrom2": "dose.total_dose_e_per_angstrom2",
            "integration_time_s": "dose.exposure_time_s",
            "stage_x_um": "stage.x_um",
            "stage_y_um": "stage.y_um",
            "stage_z_um": "stage.z_um",
            "alpha_tilt_deg": "stage.alpha_tilt_deg",
            "beta_tilt_deg": "stage.beta_tilt_deg",
            "application": "acquisition.software",
            "application_version": "acquisition.software_version",
            "microscope_id": "acquisition.microscope_id",
            "timestamp_utc_iso": "acquisition.timestamp_utc_iso",
        }
        out: Fields = {}
        for attribute, name in mapping.items():
            value = getattr(self, attribute)
            if value is not None:
                out[name] = value
        return out


def _fei_bit_positions(dtype: np.dtype[Any]) -> dict[str, tuple[str, int]]:
    """Field name -> (bitmask field, bit): fields after 'Bitmask k' take bits 0, 1, ... in order.

    'Unused range' (six doubles) takes six bits, so 'Defocus' is bit 22 of Bitmask 1 as in the FEI spec.
    """
    positions: dict[str, tuple[str, int]] = {}
    current, bit = "", 0
    for name in dtype.names or ():
        if name.startswith("Bitmask"):
            current, bit = name, 0
            continue
        if name in ("Metadata size", "Metadata version"):
            continue
        positions[name] = (current, bit)
        bit += 6 if name == "Unused range" else 1
    return positions


def read_fei_extended_header(path: str | os.PathLike[str]) -> FeiExtendedHeader | None:
    """Read an FEI1/FEI2 extended header (EPU, Velox) and convert its values to units.

    Parameters
    ----------
    path : path-like
        An MRC file.

    Returns
    -------
    FeiExtendedHeader or None
        ``None`` when the header's ``exttyp`` is not FEI1/FEI2 (no such extended header).

    Raises
    ------
    CorruptHeaderError
        The MRC header is invalid, or ``exttyp`` says FEI1/FEI2 but the extended header cannot be
        interpreted as one (too short, wrong 'Metadata size').
    """
    read_geometry(path)  # validates the main header (typed errors) before mrcfile interprets the rest
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _BoundedMrcFile(path, mode="r", header_only=True, permissive=True) as mrc:
                exttyp = bytes(mrc.header.exttyp)
                if exttyp not in (b"FEI1", b"FEI2"):
                    return None
                entries = mrc.indexed_extended_header
                entries = None if entries is None else np.array(entries)
    except InputFileError:
        raise
    except (OSError, ValueError, EOFError, TypeError, AttributeError, IndexError) as exc:
        raise CorruptHeaderError(path, f"extended header not readable by mrcfile ({exc})") from exc
    if entries is None or entries.size == 0:
        raise CorruptHeaderError(path, f"exttyp {exttyp.decode()} but the extended header is not of that type")
    return _fei_values(exttyp.decode(), entries)


def _fei_values(exttyp: str, entries: npt.NDArray[Any]) -> FeiExtendedHeader:
    first = entries[0]
    positions = _fei_bit_positions(entries.dtype)
    masks = {name: int(first[name]) for name in entries.dtype.names or () if name.startswith("Bitmask")}
    all_clear = all(value == 0 for value in masks.values())

    def present(name: str) -> bool:
        mask, bit = positions[name]
        return all_clear or bool((masks.get(mask, 0) >> bit) & 1)

    def number(name: str, scale: float = 1.0, nonzero: bool = False) -> float | None:
        if not present(name):
            return None
        value = float(first[name])
        if not math.isfinite(value) or (nonzero and value == 0.0):
            return None
        return value * scale

    def text(name: str) -> str | None:
        if not present(name):
            return None
        value = bytes(first[name]).split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
        return value or None

    def flag(name: str) -> bool | None:
        return bool(first[name]) if present(name) else None

    dose = number("Dose", _PER_M2_TO_PER_ANGSTROM2, nonzero=True)
    if dose is not None and entries.size > 1 and present("Is dose fraction") and bool(first["Is dose fraction"]):
        doses = entries["Dose"].astype(np.float64) * _PER_M2_TO_PER_ANGSTROM2
        dose = float(doses.sum()) if np.all(np.isfinite(doses)) else None
    timestamp = None
    days = number("Timestamp")
    if days is not None and 0.0 < days < 2958465.0:  # OLE dates run to 9999-12-31
        timestamp = (_OLE_EPOCH + timedelta(days=days)).isoformat()

    def defocus(name: str) -> float | None:
        value = number(name, _METRE_TO_ANGSTROM)
        return None if value is None else -value  # FEI: negative = underfocus

    slit = number("Slit width") if present("Slit inserted") and bool(first["Slit inserted"]) else None
    binning = number("Binning Width", nonzero=True)
    return FeiExtendedHeader(
        exttyp=exttyp,
        n_entries=int(entries.size),
        voltage_kv=number("HT", 1e-3, nonzero=True),
        total_dose_e_per_angstrom2=dose,
        pixel_size_x_angstrom=number("Pixel size X", _METRE_TO_ANGSTROM, nonzero=True),
        pixel_size_y_angstrom=number("Pixel size Y", _METRE_TO_ANGSTROM, nonzero=True),
        nominal_defocus_angstrom=defocus("Applied defocus"),
        objective_defocus_angstrom=defocus("Defocus"),
        magnification=number("Magnification", nonzero=True),
        camera_name=text("Camera name"),
        timestamp_utc_iso=timestamp,
        stage_x_um=number("X-Stage", _METRE_TO_MICROMETRE),
        stage_y_um=number("Y-Stage", _METRE_TO_MICROMETRE),
        stage_z_um=number("Z-Stage", _METRE_TO_MICROMETRE),
        alpha_tilt_deg=number("Alpha tilt"),
        beta_tilt_deg=number("Beta tilt"),
        integration_time_s=number("Integration time", nonzero=True),
        binning=binning,
        electron_counting=flag("Direct detector electron counting"),
        microscope_type=text("Microscope type"),
        microscope_id=text("D-Number"),
        application=text("Application"),
        application_version=text("Application version"),
        slit_width_ev=slit,
    )


def fei_field_names() -> tuple[str, ...]:
    """Attribute names of ``FeiExtendedHeader`` (for documentation and tests)."""
    return tuple(f.name for f in fields(FeiExtendedHeader))


def mrc_header_fields(path: str | os.PathLike[str]) -> Fields:
    """Metadata fields from an MRC file's main header: frame size, section count and pixel size.

    The pixel size (``cella.x / mx``) is given only when positive.  The FEI1/FEI2 extended header is a
    separate source (``read_fei_extended_header(path).to_fields()``) so that a disagreement between the
    two is flagged by ``merge_metadata``.  Raises the typed errors of ``read_geometry``.
    """
    geometry = read_geometry(path)
    nz, ny, nx = geometry.shape_zyx
    out: Fields = {"detector.image_width_px": nx, "detector.image_height_px": ny, "detector.n_frames": nz}
    if geometry.pixel_size_angstrom > 0:
        out["optics.pixel_size_angstrom"] = geometry.pixel_size_angstrom
    return out


def read_mrc_frames(path: str | os.PathLike[str]) -> tuple[npt.NDArray[Any], MrcGeometry]:
    """All sections of a complete MRC file (nz, ny, nx) in the stored sample type (counts stay uint8/uint16
    /int16 as written; mode 101 unpacks to float32), checked finite and non-constant.

    Unlike ``read_micrograph``/``read_movie`` a missing pixel size is not an error (the sidecar may
    give it; ``geometry.pixel_size_angstrom`` is then 0.0).
    """
    data, geometry = _read_values(path, out_dtype=None)
    return np.ascontiguousarray(data), geometry
