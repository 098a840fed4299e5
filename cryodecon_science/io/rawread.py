"""Reading a file's pixel block into memory as fast as the disk streams it.

Headers are parsed by the format libraries (``mrcfile``, ``tifffile``); what is left is copying a known
byte range of the file into the result array.  Two things make a naive read (``np.fromfile``, or a
library's read into a ``bytearray`` followed by a copy) slower than the disk: every page of a freshly
allocated result is zeroed by the kernel on first touch (≈ 4–5 GB/s on one core, as fast as an NVMe disk
streams), and a conversion (uint16 counts to float32) is one more pass over memory.  Here the range is
split into 16 MiB pieces read with ``os.preadv`` (no file position, so threads can share one descriptor)
by ``os.cpu_count()`` threads, each writing into its own part of the result — so page zeroing and
conversion run on all cores while the disk streams (the kernel's own readahead follows each thread's
sequential pieces; asking for the whole range with ``POSIX_FADV_WILLNEED`` first made cold reads of a
1.3 GB movie 15–40 % slower here).  ``os.preadv`` and numpy's casting loops release the GIL.  A file that is shorter
than the ranges (truncated while being read) raises ``EOFError``; callers turn it into their typed error.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

PIECE_BYTES = 1 << 24


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _read_exactly(fd: int, view: memoryview, offset: int, path: str | os.PathLike[str]) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise EOFError(f"{path}: file ends {len(view) - done} bytes before the declared data")
        done += got


def read_ranges(path: str | os.PathLike[str], ranges: list[tuple[int, int, int]], out: npt.NDArray[np.generic]) -> None:
    """Copy byte ranges (file offset, offset in ``out``'s bytes, length) of ``path`` into ``out``."""
    target = memoryview(out.reshape(-1).view(np.uint8).data)
    pieces = [
        (file_offset + start, out_offset + start, min(PIECE_BYTES, length - start))
        for file_offset, out_offset, length in ranges
        for start in range(0, length, PIECE_BYTES)
    ]
    fd = os.open(path, os.O_RDONLY)
    try:

        def work(piece: tuple[int, int, int]) -> None:
            file_offset, out_offset, length = piece
            _read_exactly(fd, target[out_offset : out_offset + length], file_offset, path)

        with ThreadPoolExecutor(_workers()) as pool:
            list(pool.map(work, pieces))
    finally:
        os.close(fd)


def read_converted(
    path: str | os.PathLike[str], file_offset: int, stored: np.dtype[np.generic], out: npt.NDArray[np.generic]
) -> None:
    """Read ``out.size`` values of type ``stored`` from ``file_offset`` and convert them into ``out``."""
    flat = out.reshape(-1)
    per_piece = max(1, PIECE_BYTES // stored.itemsize)
    pieces = [(start, min(flat.size, start + per_piece)) for start in range(0, flat.size, per_piece)]
    fd = os.open(path, os.O_RDONLY)
    try:

        def work(piece: tuple[int, int]) -> None:
            start, stop = piece
            buffer = np.empty(stop - start, dtype=stored)
            _read_exactly(fd, memoryview(buffer.view(np.uint8).data), file_offset + start * stored.itemsize, path)
            np.copyto(flat[start:stop], buffer, casting="unsafe")

        with ThreadPoolExecutor(_workers()) as pool:
            list(pool.map(work, pieces))
    finally:
        os.close(fd)
