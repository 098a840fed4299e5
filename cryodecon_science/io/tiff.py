"""TIFF movies (K2/K3/Falcon dose fractions, EPU ``*_fractions.tiff``) read with ``tifffile``.

Uncompressed and LZW-compressed (``imagecodecs``) multi-page TIFFs, one page per frame, integer or float
samples; all frames must have the same size.  Before any pixel is decoded the page directory is checked
against the file: frame count and size within ``MAX_FRAMES`` / ``MAX_DIMENSION_PX``, every strip or tile
inside the file (else ``IncompleteFileError``: a copy still in progress), uncompressed strips exactly as
long as the page declares, and a decoded size no larger than ``MAX_EXPANSION`` × the compressed bytes (so
a corrupt header cannot make the reader allocate gigabytes).  Any other error ``tifffile`` raises on
malformed input becomes ``CorruptHeaderError``.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tifffile

from cryodecon_science.io.mrc import (
    MAX_DIMENSION_PX,
    MAX_FRAMES,
    CorruptHeaderError,
    IncompleteFileError,
    InputFileError,
    InvalidPixelDataError,
)
from cryodecon_science.io.rawread import read_ranges
from cryodecon_science.metadata import Fields

# LZW codes are at most 12 bits and stand for at most 4096 bytes, so decoded/encoded < 4096 · 8 / 9.
MAX_EXPANSION = 4096
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_COMPRESSION_NAMES = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate", 32773: "packbits", 50000: "zstd"}


@dataclass(frozen=True)
class TiffMovie:
    """Frames of a TIFF movie.

    Attributes
    ----------
    name : str
        File stem.
    frames : ndarray, shape (n_frames, ny, nx), the stored sample type
        Counts per frame as stored (uint8/uint16 for counting cameras, float32 for some gain-normalised
        movies; finite, not all equal).  Kept in the stored type: a 40 × 4096² uint16 movie is 1.3 GB,
        as float32 2.7 GB, and every consumer (gain, defects, motion correction) converts per frame.
    compression : str
        "none", "lzw", ... (of the first page).
    stored_dtype : str
        Sample type on disk ("uint8", "uint16", "float32", ...).
    """

    name: str
    frames: npt.NDArray[np.generic]
    compression: str
    stored_dtype: str

    def to_fields(self) -> Fields:
        """Metadata fields: frame size and count."""
        n, ny, nx = self.frames.shape
        return {"detector.image_width_px": nx, "detector.image_height_px": ny, "detector.n_frames": n}


def checked_size_and_magic(path: str | os.PathLike[str], magics: tuple[bytes, ...], not_this: str) -> int:
    """The file's size, after checking it opens, is not empty and starts with one of ``magics``.

    Raises ``InputFileError`` (cannot open), ``IncompleteFileError`` (empty or shorter than the 4-byte
    mark) or ``CorruptHeaderError`` with ``not_this`` as the detail.
    """
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InputFileError(path, f"cannot open ({exc.strerror or exc})") from exc
    if size == 0:
        raise IncompleteFileError(path, "zero-size file")
    if magic not in magics:
        if len(magic) < 4:
            raise IncompleteFileError(path, f"{size} bytes, shorter than a TIFF header")
        raise CorruptHeaderError(path, not_this)
    return size


def check_ifd_chain_ends(tif: tifffile.TiffFile, path: str | os.PathLike[str], size: int) -> None:
    """Raise unless the last page ``tifffile`` found ends the IFD chain (next-IFD offset 0).

    ``tifffile`` stops at a next-IFD offset past the end of the file and returns the pages before it, so
    a movie still being copied would otherwise read as a shorter, valid movie.
    """
    last = tif.pages[-1]
    header = tif.tiff
    fh = tif.filehandle
    fh.seek(int(last.offset))
    raw = fh.read(header.tagnosize)
    if len(raw) < header.tagnosize:
        raise IncompleteFileError(path, "last image directory cut off")
    (n_tags,) = struct.unpack(header.tagnoformat, raw)
    fh.seek(int(last.offset) + header.tagnosize + int(n_tags) * header.tagsize)
    raw = fh.read(header.offsetsize)
    if len(raw) < header.offsetsize:
        raise IncompleteFileError(path, "last image directory cut off")
    (next_offset,) = struct.unpack(header.offsetformat, raw)
    if next_offset >= size:
        raise IncompleteFileError(path, f"next image directory at byte {next_offset}, file has {size}")
    if next_offset != 0:
        raise CorruptHeaderError(path, f"image directory chain broken at byte {next_offset}")


def check_page_chain(
    tif: tifffile.TiffFile, path: str | os.PathLike[str], size: int, max_frames: int = MAX_FRAMES
) -> int:
    """The number of pages, after checking there is at least one, at most ``max_frames``, and that the
    image-directory chain ends inside the file (``check_ifd_chain_ends``).  Reads no pixel data."""
    n_pages = len(tif.pages)
    if n_pages == 0:
        raise CorruptHeaderError(path, "TIFF holds no image")
    if n_pages > max_frames:
        raise CorruptHeaderError(path, f"{n_pages} pages, more than {max_frames} frames")
    check_ifd_chain_ends(tif, path, size)
    return n_pages


def _pages(tif: tifffile.TiffFile, path: str | os.PathLike[str], size: int) -> list[tifffile.TiffPage]:
    """Validated pages: same shape and dtype, bounded sizes, all data inside the file."""
    n_pages = check_page_chain(tif, path, size)
    pages: list[tifffile.TiffPage] = []
    for index in range(n_pages):
        page = tif.pages[index]
        if not isinstance(page, tifffile.TiffPage):
            page = page.aspage()
        pages.append(page)
    first = pages[0]
    for index, page in enumerate(pages):
        shape = tuple(int(v) for v in page.shape)
        if len(shape) != 2:
            raise CorruptHeaderError(path, f"page {index} has shape {shape}; a movie frame must be 2D")
        if shape != tuple(first.shape) or page.dtype != first.dtype:
            detail = f"page 0 is {first.shape} {first.dtype}, page {index} {shape} {page.dtype}"
            raise CorruptHeaderError(path, f"mismatched frame sizes: {detail}")
        ny, nx = shape
        if not (0 < ny <= MAX_DIMENSION_PX and 0 < nx <= MAX_DIMENSION_PX):
            raise CorruptHeaderError(path, f"impossible frame size {shape}")
        if page.dtype is None or np.dtype(page.dtype).kind not in "uif":
            raise CorruptHeaderError(path, f"unsupported sample type {page.dtype}")
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets) == 0 or len(offsets) != len(counts):
            raise CorruptHeaderError(path, f"page {index} has no or inconsistent strip offsets")
        ends = [int(o) + int(c) for o, c in zip(offsets, counts, strict=True)]
        if max(ends) > size:
            raise IncompleteFileError(path, f"page {index} data ends at byte {max(ends)}, file has {size}")
        if min(int(c) for c in counts) <= 0 or min(int(o) for o in offsets) <= 0:
            raise CorruptHeaderError(path, f"page {index} has an empty or misplaced strip")
        decoded = ny * nx * np.dtype(page.dtype).itemsize
        stored = sum(int(c) for c in counts)
        if page.compression == 1 and stored < decoded:
            raise CorruptHeaderError(path, f"page {index}: {stored} bytes stored, {decoded} declared")
        if decoded > MAX_EXPANSION * stored:
            raise CorruptHeaderError(path, f"page {index} declares {decoded} bytes from {stored} compressed")
    return pages


def _read_uncompressed(
    path: str | os.PathLike[str], tif: tifffile.TiffFile, pages: list[tifffile.TiffPage]
) -> npt.NDArray[np.generic] | None:
    """Frames of a movie whose pages are plain uncompressed strips (K2/K3 and Falcon TIFFs in
    uncompressed mode), read straight from the strip offsets ``tifffile`` parsed into the result on all
    cores (``rawread``); None for anything else (compressed, tiled, bit-reversed, padded strips), which
    ``tifffile`` decodes."""
    first = pages[0]
    ny, nx = (int(v) for v in first.shape)
    stored = np.dtype(first.dtype).newbyteorder(tif.byteorder)
    frame_bytes = ny * nx * stored.itemsize
    ranges: list[tuple[int, int, int]] = []
    for index, page in enumerate(pages):
        plain = (
            page.compression == 1
            and not page.is_tiled
            and page.fillorder == 1
            and page.bitspersample == 8 * stored.itemsize
            and page.samplesperpixel == 1
        )
        counts = [int(c) for c in page.databytecounts]
        if not plain or sum(counts) != frame_bytes:
            return None
        position = index * frame_bytes
        for offset, count in zip(page.dataoffsets, counts, strict=True):
            ranges.append((int(offset), position, count))
            position += count
    frames = np.empty((len(pages), ny, nx), dtype=stored)
    try:
        read_ranges(path, ranges, frames)
    except EOFError as exc:
        raise IncompleteFileError(path, str(exc)) from exc
    return frames if stored.isnative else frames.astype(stored.newbyteorder("="))


def read_tiff_movie(path: str | os.PathLike[str]) -> TiffMovie:
    """Read a complete multi-page TIFF movie, frames in their stored sample type.

    Parameters
    ----------
    path : path-like
        ``.tif``/``.tiff``, uncompressed or LZW (other ``tifffile`` codecs work when ``imagecodecs``
        provides them).

    Returns
    -------
    TiffMovie

    Raises
    ------
    IncompleteFileError
        Zero-size file, or strips past the end of the file.
    CorruptHeaderError
        Not a TIFF, mismatched frame sizes, impossible dimensions, or data ``tifffile`` cannot decode.
    InvalidPixelDataError
        NaN/Inf samples, or every sample equal.
    OSError
        The file cannot be opened (missing, permissions) -- wrapped as ``InputFileError``.
    """
    size = checked_size_and_magic(path, _TIFF_MAGIC, "not a TIFF file (no II*/MM* byte-order mark)")
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # tifffile logs what it repairs; the typed error says what matters
    try:
        with tifffile.TiffFile(path) as tif:
            pages = _pages(tif, path, size)
            compression = _COMPRESSION_NAMES.get(int(pages[0].compression), str(int(pages[0].compression)))
            stored_dtype = str(np.dtype(pages[0].dtype))
            frames = _read_uncompressed(path, tif, pages)
            if frames is None:
                # Stored sample type, pages decoded in parallel (LZW decoding is CPU-bound, one page per core).
                frames = tif.asarray(key=range(len(pages)), maxworkers=os.cpu_count() or 1)
                frames = frames.reshape(len(pages), *pages[0].shape)
    except InputFileError:
        raise
    except MemoryError as exc:
        raise CorruptHeaderError(path, "declared sizes exceed memory") from exc
    except Exception as exc:  # tifffile/imagecodecs raise many types on malformed input; all mean corrupt
        raise CorruptHeaderError(path, f"not readable by tifffile ({type(exc).__name__}: {exc})") from exc
    finally:
        logger.setLevel(level)
    # Integer samples cannot be NaN/Inf: the (memory-bound) scan is needed for float TIFFs only.
    if np.dtype(stored_dtype).kind == "f" and not np.all(np.isfinite(frames)):
        bad = int(frames.size - np.count_nonzero(np.isfinite(frames)))
        raise InvalidPixelDataError(path, f"{bad} NaN/Inf pixels")
    # A movie whose first frame varies is not constant; only otherwise scan the rest.
    if frames.size and frames[0].max() == frames[0].min() and frames.max() == frames.min():
        raise InvalidPixelDataError(path, "constant movie (no variation)")
    name = Path(path).name.split(".")[0]
    if math.prod(frames.shape) == 0:
        raise CorruptHeaderError(path, "empty frames")
    return TiffMovie(name, frames, compression, stored_dtype)
