"""Preallocated exposure files (full size, valid header, data still zeros) are not taken for complete ones.

Some transfer tools create the file at its final size first and fill it afterwards; its size then matches
its header long before its data is there.  ``check_exposure_complete`` must report such a file as
incomplete (so the sensor waits, then quarantines it as truncated), and must never do so for real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryodecon_science.io.layout import check_exposure_complete
from cryodecon_science.io.mrc import IncompleteFileError, check_complete, filled_tail_rows, write_mrc

PIXEL_ANGSTROM = 1.0


def _poisson(rng: np.random.Generator, shape: tuple[int, ...], counts_per_pixel: float) -> np.ndarray:
    return rng.poisson(counts_per_pixel, shape).astype(np.uint16)


def _zero_data_bytes_from(path: Path, start_fraction: float) -> None:
    """Zero the data block from ``start_fraction`` of it to the end, as a preallocated file still filling."""
    size = path.stat().st_size
    data_start = 1024  # write_mrc writes no extended header: the data block follows the 1024-byte header
    first = data_start + int((size - data_start) * start_fraction)
    with open(path, "r+b") as handle:
        handle.seek(first)
        handle.write(bytes(size - first))


# ---- MRC --------------------------------------------------------------------------------------------


def test_full_size_micrograph_with_all_zero_data_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "preallocated.mrc"
    write_mrc(path, np.zeros((256, 256), dtype=np.float32), PIXEL_ANGSTROM)
    assert check_complete(path).shape_zyx == (1, 256, 256)  # size and header alone say complete
    with pytest.raises(IncompleteFileError, match="last section all zeros: the file may be preallocated") as info:
        check_exposure_complete(path)
    assert info.value.reason == "preallocated"  # an IncompleteFileError: the sensor keeps waiting


def test_micrograph_whose_last_rows_are_still_zero_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "filling.mrc"
    write_mrc(path, _poisson(np.random.default_rng(1), (256, 256), 5.0).astype(np.float32), PIXEL_ANGSTROM)
    _zero_data_bytes_from(path, 0.9)  # rows 230..255 zero: more than the last 16 rows the check reads
    with pytest.raises(IncompleteFileError, match=r"last 16 rows of the last section all zeros"):
        check_exposure_complete(path)


def test_movie_whose_last_frames_are_zero_is_incomplete(tmp_path: Path) -> None:
    frames = _poisson(np.random.default_rng(2), (6, 128, 128), 1.0)
    frames[-2:] = 0
    path = tmp_path / "movie_fractions.mrc"
    write_mrc(path, frames, PIXEL_ANGSTROM)
    with pytest.raises(IncompleteFileError, match="last section all zeros"):
        check_exposure_complete(path)


def test_movie_preallocated_and_filled_half_way_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "movie_fractions.mrc"
    write_mrc(path, _poisson(np.random.default_rng(3), (8, 64, 64), 1.0), PIXEL_ANGSTROM)
    _zero_data_bytes_from(path, 0.5)
    with pytest.raises(IncompleteFileError, match="preallocated and still being filled"):
        check_exposure_complete(path)


def test_complete_micrograph_and_movie_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    micrograph = tmp_path / "mic.mrc"
    write_mrc(micrograph, rng.normal(100.0, 10.0, (256, 256)).astype(np.float32), PIXEL_ANGSTROM)
    movie = tmp_path / "mov_fractions.mrc"
    write_mrc(movie, _poisson(rng, (5, 128, 128), 1.0), PIXEL_ANGSTROM)
    assert check_exposure_complete(micrograph) == 1
    assert check_exposure_complete(movie) == 5


def test_sparse_low_dose_frame_passes(tmp_path: Path) -> None:
    """0.5 e⁻/px: 61 % of pixels hold no electron, but 4096 pixels all empty has probability e^-2048."""
    rng = np.random.default_rng(5)
    frame = _poisson(rng, (256, 256), 0.5)
    assert 0.55 < float(np.mean(frame == 0)) < 0.66
    micrograph = tmp_path / "low_dose.mrc"
    write_mrc(micrograph, frame, PIXEL_ANGSTROM)
    assert check_exposure_complete(micrograph) == 1
    movie = tmp_path / "low_dose_fractions.mrc"
    write_mrc(movie, _poisson(rng, (4, 256, 256), 0.5), PIXEL_ANGSTROM)
    assert check_exposure_complete(movie) == 4


@pytest.mark.parametrize(
    ("ny", "nx", "rows"),
    [(4096, 4096, 256), (5760, 4092, 360), (256, 256, 16), (64, 64, 64), (100, 50, 82), (1, 8, 1)],
)
def test_rows_read_are_the_last_sixteenth_and_at_least_4096_pixels(ny: int, nx: int, rows: int) -> None:
    assert filled_tail_rows(ny, nx) == rows


# ---- TIFF -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_tiff_movie_whose_last_page_is_zero_is_incomplete(tmp_path: Path, compression: str | None) -> None:
    frames = _poisson(np.random.default_rng(7), (4, 64, 64), 1.0)
    frames[-1] = 0
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, frames, photometric="minisblack", compression=compression)
    with pytest.raises(IncompleteFileError, match="last section all zeros"):
        check_exposure_complete(path)


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_tiff_movie_with_a_zero_filled_last_page_is_incomplete(tmp_path: Path, compression: str | None) -> None:
    """The bytes of the last page's data still zero: uncompressed it decodes to zeros, LZW not at all."""
    path = tmp_path / "movie.tif"
    frames = _poisson(np.random.default_rng(8), (4, 64, 64), 1.0)
    tifffile.imwrite(path, frames, photometric="minisblack", compression=compression)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[-1]
        offset, count = int(page.dataoffsets[0]), int(page.databytecounts[0])
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(count))
    with pytest.raises(IncompleteFileError, match="preallocated and still being filled"):
        check_exposure_complete(path)


def test_tiff_movie_whose_next_image_directory_is_still_zeros_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _poisson(np.random.default_rng(9), (4, 64, 64), 1.0), photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        directory = int(tif.pages[2].offset)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(directory)
        handle.write(bytes(size - directory))
    with pytest.raises(IncompleteFileError, match=r"image directory at byte \d+ all zeros"):
        check_exposure_complete(path)


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_complete_low_dose_tiff_movie_passes(tmp_path: Path, compression: str | None) -> None:
    path = tmp_path / "movie.tif"
    frames = _poisson(np.random.default_rng(10), (3, 256, 256), 0.5)
    tifffile.imwrite(path, frames, photometric="minisblack", compression=compression)
    assert check_exposure_complete(path) == 3
