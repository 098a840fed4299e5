"""Property-based fuzzing of the MRC readers in ``cryodecon_science.io.mrc``.

Valid files written by ``write_mrc`` are mutated (header fields, single bytes, pixel values, length) and
thrown at ``read_geometry``, ``check_complete``, ``read_micrograph`` and ``read_movie``.  The property:
a reader either returns a usable result or raises ``InputFileError`` (or a subclass) — never another
exception, never a hang, and never an allocation sized by the header rather than by the file.
Valid files always read back exactly.

The four tests run 1,500 + 4,500 + 2,500 + 1,500 = 10,000 examples.  Each test writes every example to
one fixed path in its own temporary folder; the function-scoped ``tmp_path`` health check is suppressed
on purpose.  ``database=None``: no example database is kept; a failure prints its shrunk example.
"""

from __future__ import annotations

import math
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cryodecon_science.io.mrc import (
    HEADER_BYTES,
    CorruptHeaderError,
    InputFileError,
    Micrograph,
    Movie,
    MrcGeometry,
    check_complete,
    read_geometry,
    read_micrograph,
    read_movie,
    write_mrc,
)

FUZZ = settings(
    deadline=None,
    database=None,
    # CI fixes the examples (.ci/run sets CRYODECON_FUZZ_DERANDOMIZE=1) so that a run is reproducible; a
    # local run draws new ones each time, which is how the EER frame-size bomb was found.
    derandomize=os.environ.get("CRYODECON_FUZZ_DERANDOMIZE") == "1",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
READERS: tuple[Callable[[Path], Any], ...] = (read_geometry, check_complete, read_micrograph, read_movie)
DTYPES = ("float32", "int16", "uint16", "int8", "float16")
SIDES_PX = (8, 9, 16, 31, 33, 64)
# Largest Python-level peak (bytes) a reader may reach on these files (all under 70 KiB on disk); a reader
# that trusts a header field allocates megabytes to gigabytes instead.
MAX_PEAK_BYTES = 4 * 2**20

# MRC2014 header layout (Cheng et al. 2015): byte offsets of the fields the mutations target.
INT_FIELDS = {
    "nx": 0,
    "ny": 4,
    "nz": 8,
    "mode": 12,
    "nxstart": 16,
    "mx": 28,
    "my": 32,
    "mz": 36,
    "mapc": 64,
    "ispg": 88,
    "nsymbt": 92,
    "nversion": 108,
    "imodStamp": 152,
    "imodFlags": 156,
    "nlabl": 220,
}
FLOAT_FIELDS = {"cella.x": 40, "cella.y": 44, "cella.z": 48, "cellb.alpha": 52, "dmin": 76, "dmax": 80, "rms": 216}
STAMP_FIELDS = {"exttyp": 104, "map": 208, "machst": 212}

INT32 = st.integers(-(2**31), 2**31 - 1)
# Edge values: sign and overflow boundaries, the readers' limits (65536 px, 4096 frames) and one past them,
# products that overflow int32/int64 or would need gigabytes, supported and unsupported modes, volume-stack
# space groups (401-630) and a value byte-swapped (1 << 24).
EDGE_INTS = (
    0, 1, -1, 2, 3, 4, 6, 7, 8, 12, 16, 64, 101, 401, 630, 1023, 1024, 4096, 4097, 46341, 65535, 65536, 65537,
    1 << 24, 2**30, 2**31 - 1, -(2**31),
)  # fmt: skip
# Values that matter for one field: modes (supported, unsupported, byte-swapped), mz against volume stacks,
# the IMOD stamp and flag that make mode 0 signed or unsigned, extended header sizes around the file size.
FIELD_EDGES: dict[str, tuple[int, ...]] = {
    "mode": (0, 1, 2, 3, 4, 6, 12, 16, 101, 2 << 24, 12 << 24),
    "mz": (0, -1, 1, 2, 3, 4),
    "ispg": (0, 1, 401, 630, 631),
    "nsymbt": (0, 1, 4, 1023, 1024, 1280, 2**31 - 1, -(2**31)),
    "imodStamp": (1146047817,),
    "imodFlags": (0, 1),
}
INT_VALUES = st.one_of(st.sampled_from(EDGE_INTS), INT32)
FLOAT_VALUES = st.one_of(
    st.sampled_from((math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-45, 3.4e38)),
    st.floats(width=32),
)
STAMP_VALUES = st.one_of(
    st.sampled_from((b"MAP ", b"MAP\0", b"PAM ", b"\0\0\0\0", b"DA\0\0", b"DD\0\0", b"\x11\x11\0\0", b"FEI1")),
    st.binary(min_size=4, max_size=4),
)
BYTE_ORDER = st.sampled_from("<>")

FIELD_MUTATION = st.one_of(
    *(
        st.tuples(st.just("int"), st.just(name), st.one_of(st.sampled_from(FIELD_EDGES[name]), INT_VALUES), BYTE_ORDER)
        for name in sorted(FIELD_EDGES)
    ),
    st.tuples(st.just("int"), st.sampled_from(sorted(INT_FIELDS)), INT_VALUES, BYTE_ORDER),
    st.tuples(st.just("float"), st.sampled_from(sorted(FLOAT_FIELDS)), FLOAT_VALUES, BYTE_ORDER),
    st.tuples(st.just("stamp"), st.sampled_from(sorted(STAMP_FIELDS)), STAMP_VALUES),
)
BYTE_MUTATION = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, HEADER_BYTES - 1), st.integers(0, 255)),  # header bytes
    st.tuples(st.just("byte"), st.integers(0, 2**17), st.integers(0, 255)),  # anywhere (modulo the length)
)
PIXEL_MUTATION = st.tuples(
    st.just("pixel"), st.integers(0, 2**16), st.sampled_from((math.nan, math.inf, -math.inf, 0.0, 65504.0))
)
LENGTH_MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 2**17)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=512)),
    st.tuples(st.just("extend_zeros"), st.integers(1, 2**15)),
)
MUTATION = st.one_of(FIELD_MUTATION, BYTE_MUTATION, PIXEL_MUTATION, LENGTH_MUTATION)
TEMPLATE = st.tuples(st.sampled_from(DTYPES), st.integers(1, 4), st.sampled_from(SIDES_PX), st.sampled_from(SIDES_PX))


class Templates:
    """Valid MRC files written once by ``write_mrc`` (cached by dtype and shape) and returned as bytes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache: dict[tuple[str, int, int, int], bytes] = {}

    def __call__(self, dtype: str, nz: int, ny: int, nx: int) -> bytes:
        key = (dtype, nz, ny, nx)
        if key not in self.cache:
            rng = np.random.default_rng((DTYPES.index(dtype), nz, ny, nx))
            if np.dtype(dtype).kind == "f":
                data = rng.normal(10.0, 3.0, size=(nz, ny, nx)).astype(dtype)
            else:
                data = rng.integers(0, 100, size=(nz, ny, nx)).astype(dtype)
            path = self.folder / f"{dtype}_{nz}x{ny}x{nx}.mrc"
            write_mrc(path, data[0] if nz == 1 else data, 1.25)
            self.cache[key] = path.read_bytes()
        return self.cache[key]


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    return Templates(tmp_path_factory.mktemp("mrc_templates"))


def mutate(original: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    """Apply the mutations in order; positions past the end wrap around (modulo the current length).

    A header-field mutation is skipped when the file is too short to hold that field.
    """
    buf = bytearray(original)
    for mutation in mutations:
        kind = mutation[0]
        if kind in ("int", "float", "stamp") and len(buf) < HEADER_BYTES:
            continue
        if kind == "int":
            _, name, value, order = mutation
            struct.pack_into(f"{order}i", buf, INT_FIELDS[name], value)
        elif kind == "float":
            _, name, value, order = mutation
            struct.pack_into(f"{order}f", buf, FLOAT_FIELDS[name], value)
        elif kind == "stamp":
            _, name, value = mutation
            buf[STAMP_FIELDS[name] : STAMP_FIELDS[name] + 4] = value
        elif kind == "byte" and buf:
            _, offset, value = mutation
            buf[offset % len(buf)] = value
        elif kind == "pixel" and len(buf) > HEADER_BYTES + 4:
            _, index, value = mutation
            mode = struct.unpack_from("<i", buf, 12)[0]
            fmt, width = ("<e", 2) if mode == 12 else ("<f", 4)
            offset = HEADER_BYTES + (index * width) % (len(buf) - HEADER_BYTES - width)
            struct.pack_into(fmt, buf, offset, value)
        elif kind == "truncate":
            del buf[mutation[1] % (len(buf) + 1) :]
        elif kind == "extend":
            buf += mutation[1]
        elif kind == "extend_zeros":
            buf += bytes(mutation[1])
    return bytes(buf)


def assert_usable(reader: Callable[[Path], Any], result: Any, path: Path) -> None:
    """What a reader returns must be usable downstream: consistent shape, finite data, a real pixel size."""
    size = path.stat().st_size
    if isinstance(result, MrcGeometry):
        nz, ny, nx = result.shape_zyx
        assert nz > 0 and ny > 0 and nx > 0
        assert result.declared_size_bytes >= HEADER_BYTES
        assert math.isfinite(result.pixel_size_angstrom) and result.pixel_size_angstrom >= 0.0
        if reader is check_complete:
            assert result.declared_size_bytes == size
        return
    geometry = check_complete(path)  # a reader only returns data for a complete file
    assert geometry.declared_size_bytes == size
    if isinstance(result, Micrograph):
        pixels = result.data
        assert pixels.shape == geometry.shape_zyx[1:] and geometry.shape_zyx[0] == 1
    else:
        assert isinstance(result, Movie)
        pixels = result.frames
        assert pixels.shape == geometry.shape_zyx and pixels.shape[0] >= 2
    assert pixels.dtype == np.float32 and pixels.flags.writeable and pixels.flags.c_contiguous
    assert np.all(np.isfinite(pixels)) and pixels.max() > pixels.min()
    assert math.isfinite(result.pixel_size_angstrom) and result.pixel_size_angstrom > 0.0
    assert result.pixel_size_angstrom == geometry.pixel_size_angstrom


def assert_only_typed_errors(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    for reader in READERS:
        try:
            result = reader(path)
        except InputFileError:
            continue
        assert_usable(reader, result, path)


# write_mrc's header statistics (mrcfile computes rms) overflow float16/float32 for extreme valid pixel values.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=1500)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(1, 4), st.integers(8, 40), st.integers(8, 40)),
    as_2d=st.booleans(),
    pixel_size=st.floats(0.05, 50.0),
    data=st.data(),
)
def test_valid_files_always_read(
    tmp_path: Path,
    dtype: str,
    shape: tuple[int, int, int],
    as_2d: bool,
    pixel_size: float,
    data: st.DataObject,
) -> None:
    elements = st.floats(width=np.dtype(dtype).itemsize * 8, allow_nan=False, allow_infinity=False)
    if np.dtype(dtype).kind != "f":
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    array = data.draw(hnp.arrays(dtype, shape, elements=elements))
    low, high = data.draw(st.lists(elements, min_size=2, max_size=2, unique=True).map(sorted))
    array.flat[0], array.flat[-1] = low, high  # never constant, so the file is valid
    nz = shape[0]
    path = tmp_path / "valid.mrc"
    write_mrc(path, array[0] if as_2d and nz == 1 else array, pixel_size)

    geometry = check_complete(path)
    assert geometry == read_geometry(path)
    assert geometry.shape_zyx == shape and geometry.declared_size_bytes == path.stat().st_size
    # cella is stored as float32 (cella = pixel size · nx), so the pixel size comes back to float32 precision.
    assert math.isclose(geometry.pixel_size_angstrom, pixel_size, rel_tol=1e-6)
    expected = array.astype(np.float32)
    if nz == 1:
        micrograph = read_micrograph(path)
        np.testing.assert_array_equal(micrograph.data, expected[0])
        assert micrograph.pixel_size_angstrom == geometry.pixel_size_angstrom and micrograph.name == "valid"
        with pytest.raises(CorruptHeaderError, match="at least two frames"):
            read_movie(path)
    else:
        movie = read_movie(path)
        np.testing.assert_array_equal(movie.frames, expected)
        assert movie.pixel_size_angstrom == geometry.pixel_size_angstrom and movie.name == "valid"
        with pytest.raises(CorruptHeaderError, match="expected one section"):
            read_micrograph(path)


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=4500)
@given(template=TEMPLATE, mutations=st.lists(st.one_of(FIELD_MUTATION, MUTATION), min_size=1, max_size=5))
def test_mutated_headers_raise_only_typed_errors(
    tmp_path: Path,
    templates: Templates,
    template: tuple[str, int, int, int],
    mutations: list[tuple[Any, ...]],
) -> None:
    assert_only_typed_errors(tmp_path / "mutated.mrc", mutate(templates(*template), mutations))


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=2500)
@given(
    content=st.one_of(
        st.just(b""),
        st.binary(max_size=3000),
        # random bytes that carry the 'MAP ' stamp and a machine stamp, so parsing gets past the identifier
        st.tuples(st.binary(min_size=HEADER_BYTES, max_size=4096), STAMP_VALUES).map(
            lambda c: c[0][:208] + b"MAP " + c[1] + c[0][216:]
        ),
    ),
    mutations=st.lists(MUTATION, max_size=3),
)
def test_random_bytes_raise_only_typed_errors(tmp_path: Path, content: bytes, mutations: list[tuple[Any, ...]]) -> None:
    assert_only_typed_errors(tmp_path / "random.mrc", mutate(content, mutations))


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=1500)
@given(
    template=TEMPLATE,
    dims=st.tuples(INT_VALUES, INT_VALUES, INT_VALUES),
    mode=st.sampled_from((0, 1, 2, 6, 12, 101)),
    nsymbt=st.one_of(st.sampled_from((0, 1024, 2**20, 2**30, 2**31 - 1, -1, -(2**31))), INT32),
    mutations=st.lists(LENGTH_MUTATION, max_size=1),
)
def test_impossible_dimensions_are_refused_before_allocating(
    tmp_path: Path,
    templates: Templates,
    template: tuple[str, int, int, int],
    dims: tuple[int, int, int],
    mode: int,
    nsymbt: int,
    mutations: list[tuple[Any, ...]],
) -> None:
    header = [("int", name, value, "<") for name, value in zip(("nx", "ny", "nz"), dims, strict=True)]
    header += [("int", "mode", mode, "<"), ("int", "nsymbt", nsymbt, "<")]
    content = mutate(templates(*template), header + mutations)
    tracemalloc.start()
    try:
        assert_only_typed_errors(tmp_path / "huge.mrc", content)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, f"a reader allocated {peak / 2**20:.1f} MiB for a {len(content)}-byte file"
