"""Microscope formats: MRC in every mode with FEI1/FEI2 extended headers, TIFF movies (uncompressed, LZW),
EER (events encoded here, bit for bit as ``imagecodecs.eer_decode`` reads them), gain references and
defects, EPU XML and SerialEM .mdoc sidecars, EPU/SerialEM session layouts and ``read_exposure``.

Every file is written by the libraries the readers use (``mrcfile``, ``tifffile``) or, for EER, which
neither ``eerfile`` nor ``imagecodecs`` can write (``imagecodecs.eer_encode`` is "not implemented"), by
``write_eer`` below: a BigTIFF written by ``tifffile`` with pre-encoded strips and the EER metadata XML in
tag 65001, whose Compression tag is then set to 65001 (EER, 7-bit run lengths, 2 + 2 sub-pixel bits).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt
import pytest
import tifffile

from cryodecon_science.io.eer import EerScaleError, read_eer
from cryodecon_science.io.epu import read_epu_xml
from cryodecon_science.io.gain import (
    apply_gain,
    correct_defects,
    detect_hot_pixels,
    orient_image,
    read_defect_list,
    read_gain_reference,
)
from cryodecon_science.io.layout import discover_session, expected_frame_count, read_exposure
from cryodecon_science.io.mrc import (
    CorruptHeaderError,
    IncompleteFileError,
    InputFileError,
    InvalidPixelDataError,
    read_fei_extended_header,
    read_micrograph,
    read_movie,
    read_mrc_frames,
)
from cryodecon_science.io.serialem import read_mdoc
from cryodecon_science.io.tiff import read_tiff_movie

# --------------------------------------------------------------------------------------------------
# Writers shared with test_format_fuzz.py


def write_fei_mrc(
    path: Path,
    data: npt.NDArray[Any],
    exttyp: bytes = b"FEI1",
    pixel_size_m: float = 1.06e-10,
    voltage_v: float = 300e3,
    dose_e_per_m2: float = 4.0e20,
    applied_defocus_m: float = -1.5e-6,
    cella_pixel_angstrom: float | None = None,
    bitmask_1: int = 0xFFFFFFFF,
) -> None:
    """An MRC file with an FEI1/FEI2 extended header, one entry per section, as EPU writes."""
    stack = data if data.ndim == 3 else data[np.newaxis]
    dtype = mrcfile.dtypes.get_ext_header_dtype(exttyp, "<")
    entries = np.zeros(stack.shape[0], dtype=dtype)
    entries["Metadata size"] = dtype.itemsize
    entries["Metadata version"] = 0 if exttyp == b"FEI1" else 2
    entries["Bitmask 1"] = bitmask_1
    entries["Bitmask 2"] = 0xFFFFFFFF
    acquired = datetime(2025, 1, 8, 15, 49, 18, tzinfo=UTC) - datetime(1899, 12, 30, tzinfo=UTC)
    entries["Timestamp"] = acquired.total_seconds() / 86400.0  # OLE Automation date
    entries["Microscope type"] = b"TITAN"
    entries["D-Number"] = b"3632"
    entries["Application"] = b"EPU"
    entries["Application version"] = b"3.9.1.8206"
    entries["HT"] = voltage_v
    entries["Dose"] = dose_e_per_m2
    entries["X-Stage"] = -9.7e-5
    entries["Y-Stage"] = -1.5e-4
    entries["Z-Stage"] = 8.5e-5
    entries["Alpha tilt"] = 0.5
    entries["Pixel size X"] = pixel_size_m
    entries["Pixel size Y"] = pixel_size_m
    entries["Defocus"] = applied_defocus_m + 1e-8
    entries["Applied defocus"] = applied_defocus_m
    entries["Magnification"] = 165000
    entries["Camera name"] = b"BM-Falcon"
    entries["Integration time"] = 2.5
    entries["Binning Width"] = 1
    entries["Direct detector electron counting"] = 1
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_extended_header(entries)
        mrc.header.exttyp = exttyp
        mrc.voxel_size = cella_pixel_angstrom if cella_pixel_angstrom is not None else pixel_size_m * 1e10


def encode_eer_frame(frame: npt.NDArray[Any], skip_bits: int = 7, sub_bits: int = 4) -> bytes:
    """EER bitstream of a 0/1 frame: per event a run of skipped pixels (7 bits; 127 = skip on) and 4
    sub-pixel bits, least significant bit first; a final run to the end; padded to an even byte count."""
    flat = np.asarray(frame).ravel()
    max_skip = (1 << skip_bits) - 1
    words: list[tuple[int, int]] = []
    last = -1

    def run(gap: int) -> None:
        while gap >= max_skip:
            words.append((max_skip, skip_bits))
            gap -= max_skip
        words.append((gap, skip_bits))

    for pixel in np.flatnonzero(flat):
        run(int(pixel) - last - 1)
        words.append((0, sub_bits))
        last = int(pixel)
    run(flat.size - last - 1)
    words.append((0, sub_bits))
    bits = np.concatenate([(value >> np.arange(width)) & 1 for value, width in words]).astype(np.uint8)
    encoded = np.packbits(bits, bitorder="little").tobytes()
    return encoded + bytes(len(encoded) % 2)


def eer_metadata_xml(n_frames: int, ny: int, nx: int, total_dose_e_per_px: float, pixel_m: float = 1.0e-10) -> bytes:
    items = {
        "numberOfFrames": str(n_frames),
        "sensorImageHeight": str(ny),
        "sensorImageWidth": str(nx),
        "sensorPixelSize.height": repr(pixel_m),
        "sensorPixelSize.width": repr(pixel_m),
        "totalDose": repr(total_dose_e_per_px),
        "exposureTime": "2.0",
        "cameraName": "BM-Falcon",
        "commercialName": "Falcon 4i",
    }
    body = "".join(f'<item name="{key}">{value}</item>' for key, value in items.items())
    return f"<metadata>{body}</metadata>".encode()


def write_eer(path: Path, frames: npt.NDArray[Any], total_dose_e_per_px: float | None = None) -> None:
    """An EER file holding 0/1 ``frames`` (n, ny, nx); totalDose defaults to the true mean counts."""
    n, ny, nx = frames.shape
    dose = float(frames.sum() / (ny * nx)) if total_dose_e_per_px is None else total_dose_e_per_px
    meta = eer_metadata_xml(n, ny, nx, dose)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for index, frame in enumerate(frames):
            writer.write(
                iter([encode_eer_frame(frame)]),
                shape=(ny, nx),
                dtype=np.uint8,
                compression="zlib",  # placeholder: tifffile cannot encode EER, the strips are pre-encoded
                rowsperstrip=ny,
                photometric="minisblack",
                contiguous=False,
                extratags=[(65001, 7, len(meta), meta, True)] if index == 0 else [],
            )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            page.tags["Compression"].overwrite(65001)


EPU_XML = """<MicroscopeImage xmlns="http://schemas.datacontract.org/2004/07/Fei.SharedObjects"
  xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
 <name>Empty</name>
 <CustomData xmlns:a="http://schemas.microsoft.com/2003/10/Serialization/Arrays">
  <a:KeyValueOfstringanyType><a:Key>DoseOnCamera</a:Key>
   <a:Value i:type="b:double" xmlns:b="http://www.w3.org/2001/XMLSchema">16.06</a:Value></a:KeyValueOfstringanyType>
  <a:KeyValueOfstringanyType><a:Key>DoseRate</a:Key>
   <a:Value i:type="b:double" xmlns:b="http://www.w3.org/2001/XMLSchema">1.1175</a:Value></a:KeyValueOfstringanyType>
  <a:KeyValueOfstringanyType><a:Key>Dose</a:Key>
   <a:Value i:type="b:double" xmlns:b="http://www.w3.org/2001/XMLSchema">{dose}</a:Value></a:KeyValueOfstringanyType>
  <a:KeyValueOfstringanyType><a:Key>DetectorCommercialName</a:Key>
   <a:Value i:type="b:string" xmlns:b="http://www.w3.org/2001/XMLSchema">{camera}</a:Value></a:KeyValueOfstringanyType>
  <a:KeyValueOfstringanyType><a:Key>AppliedDefocus</a:Key>
   <a:Value i:type="b:double" xmlns:b="http://www.w3.org/2001/XMLSchema">-1.5E-06</a:Value></a:KeyValueOfstringanyType>
 </CustomData>
 <SpatialScale><pixelSize>
  <x><numericValue>{pixel}</numericValue></x><y><numericValue>{pixel}</numericValue></y>
 </pixelSize></SpatialScale>
 <microscopeData>
  <acquisition>
   <acquisitionDateTime>2025-01-08T15:49:18.1158288+00:00</acquisitionDateTime>
   <camera>
    <Binning xmlns:a="http://schemas.datacontract.org/2004/07/System.Drawing"><a:x>1</a:x><a:y>1</a:y></Binning>
    <CameraSpecificInput xmlns:a="http://schemas.microsoft.com/2003/10/Serialization/Arrays">
     <a:KeyValueOfstringanyType><a:Key>SuperResolutionFactor</a:Key>
      <a:Value i:type="b:long" xmlns:b="http://www.w3.org/2001/XMLSchema">1</a:Value></a:KeyValueOfstringanyType>
     {fractionation}
     <a:KeyValueOfstringanyType><a:Key>ElectronCountingEnabled</a:Key>
      <a:Value i:type="b:boolean" xmlns:b="http://www.w3.org/2001/XMLSchema">true</a:Value></a:KeyValueOfstringanyType>
    </CameraSpecificInput>
    <ExposureTime>2.5</ExposureTime>
    <Name>BM-Falcon</Name>
   </camera>
  </acquisition>
  <core><ApplicationSoftware>EPU</ApplicationSoftware><ApplicationSoftwareVersion>3.9.1.8206</ApplicationSoftwareVersion></core>
  <gun><AccelerationVoltage>{voltage}</AccelerationVoltage></gun>
  <instrument><InstrumentID>3632</InstrumentID></instrument>
  <optics>
   <Defocus>-1.49E-06</Defocus>
   <EnergyFilter><EnergySelectionSlitInserted>true</EnergySelectionSlitInserted>
    <EnergySelectionSlitWidth>20</EnergySelectionSlitWidth></EnergyFilter>
   <TemMagnification><NominalMagnification>165000</NominalMagnification></TemMagnification>
  </optics>
  <stage><Position><A>0.0087266</A><B>0</B><X>-9.7E-05</X><Y>-0.00015</Y><Z>8.5E-05</Z></Position></stage>
 </microscopeData>
</MicroscopeImage>
"""
FRACTIONATION = """<a:KeyValueOfstringanyType><a:Key>FractionationSettings</a:Key>
 <a:Value i:type="b:EquidistantFractionation"
  xmlns:b="http://schemas.datacontract.org/2004/07/Fei.Applications.Common.Omp.Interface">
 <b:NumberOffractions>{n}</b:NumberOffractions></a:Value></a:KeyValueOfstringanyType>"""


def epu_xml(
    n_fractions: int | None = None,
    pixel_m: float = 1.06e-10,
    voltage_v: float = 300000,
    dose_e_per_m2: float = 4.0e20,
    camera: str = "BM-Falcon",
) -> str:
    fractionation = "" if n_fractions is None else FRACTIONATION.format(n=n_fractions)
    return EPU_XML.format(
        dose=repr(dose_e_per_m2), camera=camera, pixel=repr(pixel_m), voltage=voltage_v, fractionation=fractionation
    )


MDOC = """PixelSpacing = 0.83
Voltage = 300
ImageFile = {image}
ImageSize = 24 16
DataMode = 6

[T = SerialEM: Digitized on EMBL Krios                 08-Jan-25  15:49:18    ]

[{section} = 0]
TiltAngle = 0.01
StagePosition = 12.5 -33.25
StageZ = 4.1
Magnification = 105000
ExposureDose = {dose}
PixelSpacing = 0.83
Defocus = -1.62
TargetDefocus = -1.5
ExposureTime = 2.5
Binning = 1
CameraIndex = 1
NumSubFrames = {n}
DateTime = 08-Jan-25  15:49:18
"""


def mdoc_text(image: str, n: int = 5, frame_set: bool = True, dose: float = 50.0) -> str:
    return MDOC.format(image=image, n=n, section="FrameSet" if frame_set else "ZValue", dose=dose)


def counts(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "uint16") -> npt.NDArray[Any]:
    return rng.poisson(3.0, size=shape).astype(dtype)


# --------------------------------------------------------------------------------------------------
# MRC: every mode, FEI extended headers


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "float16", "float32"])
def test_mrc_reads_every_mode(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    data = counts(rng, (3, 16, 24), dtype)
    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 0.83
    movie = read_movie(path)
    np.testing.assert_array_equal(movie.frames, data.astype(np.float32))
    assert movie.pixel_size_angstrom == pytest.approx(0.83)


def test_mrc_mode_101_is_unpacked(tmp_path: Path) -> None:
    """4-bit data (IMOD/SerialEM): mrcfile cannot decode it, the reader unpacks low nibble first."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 16, size=(2, 5, 7)).astype(np.uint8)
    values[0, 0, 0], values[1, 4, 6] = 0, 15
    path = tmp_path / "four_bit.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 5, 7), dtype=np.int8))
        mrc.voxel_size = 1.5
    padded = np.zeros((2, 5, 8), dtype=np.uint8)
    padded[..., :7] = values
    packed = (padded[..., 0::2] | (padded[..., 1::2] << 4)).astype(np.uint8)
    raw = bytearray(path.read_bytes()[:1024])
    raw[12:16] = np.int32(101).tobytes()
    path.write_bytes(bytes(raw) + packed.tobytes())
    frames, geometry = read_mrc_frames(path)
    assert geometry.mode == 101
    np.testing.assert_array_equal(frames, values.astype(np.float32))
    path.write_bytes(bytes(raw) + packed.tobytes()[:-3])
    with pytest.raises(IncompleteFileError):
        read_mrc_frames(path)


@pytest.mark.parametrize("exttyp", [b"FEI1", b"FEI2"])
def test_fei_extended_header_values_with_units(tmp_path: Path, exttyp: bytes) -> None:
    path = tmp_path / "FoilHole_1_Data_2_3_20250108_154918_fractions.mrc"
    write_fei_mrc(path, counts(np.random.default_rng(2), (4, 16, 24)), exttyp)
    fei = read_fei_extended_header(path)
    assert fei is not None and fei.exttyp == exttyp.decode() and fei.n_entries == 4
    assert fei.voltage_kv == pytest.approx(300.0)
    assert fei.pixel_size_x_angstrom == pytest.approx(1.06)
    assert fei.total_dose_e_per_angstrom2 == pytest.approx(4.0)
    assert fei.nominal_defocus_angstrom == pytest.approx(15000.0)  # positive = underfocus
    assert fei.objective_defocus_angstrom == pytest.approx(14900.0)
    assert fei.magnification == 165000 and fei.camera_name == "BM-Falcon"
    assert fei.stage_x_um == pytest.approx(-97.0) and fei.stage_z_um == pytest.approx(85.0)
    assert fei.alpha_tilt_deg == pytest.approx(0.5) and fei.integration_time_s == pytest.approx(2.5)
    assert fei.timestamp_utc_iso is not None and fei.timestamp_utc_iso.startswith("2025-01-08")
    assert fei.application == "EPU" and fei.microscope_id == "3632" and fei.electron_counting is True
    assert fei.spherical_aberration_mm is None  # FEI1/FEI2 carry no C_s


def test_fei_bitmask_hides_unset_values(tmp_path: Path) -> None:
    path = tmp_path / "masked.mrc"
    write_fei_mrc(path, counts(np.random.default_rng(3), (16, 24)), bitmask_1=1 << 5)  # only HT
    fei = read_fei_extended_header(path)
    assert fei is not None and fei.voltage_kv == pytest.approx(300.0)
    assert fei.pixel_size_x_angstrom is None and fei.total_dose_e_per_angstrom2 is None
    assert fei.nominal_defocus_angstrom is None


def test_fei_declared_but_missing_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "liar.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(counts(np.random.default_rng(4), (16, 24)))
        mrc.set_extended_header(np.zeros(100, dtype="V1"))
        mrc.header.exttyp = b"FEI1"
    with pytest.raises(CorruptHeaderError, match="extended header"):
        read_fei_extended_header(path)
    plain = tmp_path / "plain.mrc"
    with mrcfile.new(plain) as mrc:
        mrc.set_data(counts(np.random.default_rng(4), (16, 24)))
    assert read_fei_extended_header(plain) is None


def test_mrc_bad_inputs_give_typed_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.mrc"
    data = np.random.default_rng(5).normal(size=(16, 24)).astype(np.float32)
    with mrcfile.new(good) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 1.0
    content = good.read_bytes()
    cases: dict[str, tuple[bytes, type[InputFileError]]] = {
        "zero": (b"", IncompleteFileError),
        "truncated": (content[:-100], IncompleteFileError),
        "no_map": (content[:208] + b"XXXX" + content[212:], CorruptHeaderError),
        "huge_dims": (np.int32(70000).tobytes() + content[4:], CorruptHeaderError),
    }
    nan = bytearray(content)
    nan[1024:1028] = np.float32(np.nan).tobytes()
    cases["nan"] = (bytes(nan), InvalidPixelDataError)
    for name, (blob, error) in cases.items():
        path = tmp_path / f"{name}.mrc"
        path.write_bytes(blob)
        with pytest.raises(error):
            read_micrograph(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_permissions_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "locked.tiff"
    tifffile.imwrite(path, counts(np.random.default_rng(6), (2, 8, 8)))
    path.chmod(0)
    try:
        with pytest.raises(InputFileError):
            read_tiff_movie(path)
        mrc = tmp_path / "locked.mrc"
        with mrcfile.new(mrc) as handle:
            handle.set_data(counts(np.random.default_rng(6), (8, 8)))
        mrc.chmod(0)
        with pytest.raises(InputFileError):
            read_micrograph(mrc)
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------------------------------
# TIFF movies


@pytest.mark.parametrize("compression", [None, "lzw"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_tiff_movies_uncompressed_and_lzw(tmp_path: Path, compression: str | None, dtype: str) -> None:
    data = counts(np.random.default_rng(7), (5, 16, 24), dtype)
    path = tmp_path / "FoilHole_1_Data_2_3_fractions.tiff"
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack")
    movie = read_tiff_movie(path)
    np.testing.assert_array_equal(movie.frames, data)
    assert movie.frames.dtype == np.dtype(dtype)  # counts stay in the stored type
    assert movie.compression == (compression or "none") and movie.stored_dtype == dtype


def test_tiff_bad_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    mismatched = tmp_path / "mismatched.tiff"
    with tifffile.TiffWriter(mismatched) as writer:
        writer.write(counts(rng, (16, 24)), photometric="minisblack")
        writer.write(counts(rng, (16, 20)), photometric="minisblack")
    with pytest.raises(CorruptHeaderError, match="mismatched frame sizes"):
        read_tiff_movie(mismatched)
    good = tmp_path / "good.tiff"
    tifffile.imwrite(good, counts(rng, (3, 16, 24)), photometric="minisblack")
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputFileError):
        read_tiff_movie(truncated)
    empty = tmp_path / "empty.tiff"
    empty.write_bytes(b"")
    with pytest.raises(IncompleteFileError):
        read_tiff_movie(empty)
    wrong = tmp_path / "wrong.tiff"
    wrong.write_bytes(b"MAP " + bytes(2000))
    with pytest.raises(CorruptHeaderError):
        read_tiff_movie(wrong)
    nan = tmp_path / "nan.tiff"
    values = rng.normal(size=(2, 8, 8)).astype(np.float32)
    values[1, 3, 3] = np.inf
    tifffile.imwrite(nan, values, photometric="minisblack")
    with pytest.raises(InvalidPixelDataError):
        read_tiff_movie(nan)


# --------------------------------------------------------------------------------------------------
# EER


def eer_frames(rng: np.random.Generator, n: int = 12, ny: int = 32, nx: int = 40, p: float = 0.05) -> npt.NDArray[Any]:
    return (rng.random((n, ny, nx)) < p).astype(np.uint8)


def test_eer_grouping_and_metadata(tmp_path: Path) -> None:
    frames = eer_frames(np.random.default_rng(9))
    path = tmp_path / "FoilHole_1_Data_2_3_EER.eer"
    write_eer(path, frames)
    movie = read_eer(path, frames_per_group=5)  # 12 raw frames: two groups of five, two dropped
    assert movie.n_raw_frames == 12 and movie.frames.shape == (2, 32, 40)
    np.testing.assert_array_equal(movie.frames[0], frames[:5].sum(axis=0))
    np.testing.assert_array_equal(movie.frames[1], frames[5:10].sum(axis=0))
    assert movie.scale_ok is True and movie.scale_ratio == pytest.approx(1.0, abs=0.05)
    assert movie.pixel_size_angstrom == pytest.approx(1.0)
    fields = movie.to_fields()
    assert fields["detector.camera_name"] == "Falcon 4i" and fields["detector.n_frames"] == 12
    assert read_eer(path, n_groups=3).frames.shape == (3, 32, 40)


def test_eer_super_resolution_keeps_dose_per_physical_pixel(tmp_path: Path) -> None:
    frames = eer_frames(np.random.default_rng(10), n=6, p=0.2)
    path = tmp_path / "superres.eer"
    write_eer(path, frames)
    movie = read_eer(path, frames_per_group=6, super_resolution=1)
    assert movie.frames.shape == (1, 64, 80)
    assert movie.frames.sum() == frames.sum()  # every event lands in one sub-pixel
    assert movie.scale_ok and movie.pixel_size_angstrom == pytest.approx(0.5)


def test_eer_scale_mismatch_is_typed_or_flagged(tmp_path: Path) -> None:
    frames = eer_frames(np.random.default_rng(11), p=0.2)
    path = tmp_path / "scaled.eer"
    write_eer(path, frames, total_dose_e_per_px=float(frames.sum()) / (32 * 40) * 16)  # a 16x scale jump
    with pytest.raises(EerScaleError, match="factor of 16") as info:
        read_eer(path)
    assert info.value.reason == "eer_scale_mismatch" and isinstance(info.value, InputFileError)
    flagged = read_eer(path, on_scale_mismatch="flag")
    assert flagged.scale_ok is False and flagged.scale_ratio == pytest.approx(1 / 16, rel=0.05)


def test_eer_bad_inputs(tmp_path: Path) -> None:
    frames = eer_frames(np.random.default_rng(12))
    path = tmp_path / "good.eer"
    write_eer(path, frames)
    truncated = tmp_path / "truncated.eer"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(InputFileError):
        read_eer(truncated)
    plain = tmp_path / "plain.eer"
    tifffile.imwrite(plain, counts(np.random.default_rng(12), (2, 8, 8)), bigtiff=True)
    with pytest.raises(CorruptHeaderError, match="EER"):
        read_eer(plain)
    (tmp_path / "empty.eer").write_bytes(b"")
    with pytest.raises(IncompleteFileError):
        read_eer(tmp_path / "empty.eer")


@pytest.mark.parametrize(("width", "height", "match"), [(60000, 60000, "impossible"), (4000, 32, "frame 1 has shape")])
def test_eer_header_claiming_a_huge_frame_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, height: int, match: str
) -> None:
    """EER's run-length code decodes a few bytes into any number of pixels: page 0's width and height
    rewritten to 60000 (found by the format fuzz test, which then filled 16 GB) must be refused from the
    tags alone, as must one page whose size differs from the others' (checked before any frame is decoded)."""
    path = tmp_path / "good.eer"
    write_eer(path, eer_frames(np.random.default_rng(13)))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        fields = [(tags[256].valueoffset, tags[256].dtype, width), (tags[257].valueoffset, tags[257].dtype, height)]
    data = bytearray(path.read_bytes())
    for offset, dtype, value in fields:
        data[offset : offset + (2 if dtype == 3 else 4)] = value.to_bytes(2 if dtype == 3 else 4, "little")
    mutated = tmp_path / "mutated.eer"
    mutated.write_bytes(bytes(data))

    def no_decoding(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a frame was decoded")

    for page_class in (tifffile.TiffPage, tifffile.TiffFrame):
        monkeypatch.setattr(page_class, "asarray", no_decoding)
    with pytest.raises(CorruptHeaderError, match=match):
        read_eer(mutated, frames_per_group=1)


# --------------------------------------------------------------------------------------------------
# Gain and defects


def test_gain_orientation_follows_motioncor2(tmp_path: Path) -> None:
    image = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    np.testing.assert_array_equal(orient_image(image, 1), np.rot90(image))
    np.testing.assert_array_equal(orient_image(image, 0, "upside_down"), image[::-1])
    np.testing.assert_array_equal(orient_image(image, 2, "left_right"), np.rot90(image, 2)[:, ::-1])
    gain_mrc = tmp_path / "gain.mrc"
    with mrcfile.new(gain_mrc) as mrc:
        mrc.set_data(image)
    gain = read_gain_reference(gain_mrc, rotate_quarter_turns_ccw=1, flip="left_right")
    np.testing.assert_array_equal(gain.gain, np.rot90(image)[:, ::-1])
    gain_tiff = tmp_path / "gain.tiff"
    tifffile.imwrite(gain_tiff, image)
    inverted = read_gain_reference(gain_tiff, convention="divide")
    np.testing.assert_allclose(inverted.gain, 1.0 / image)
    frames = np.ones((2, 2, 3), dtype=np.float32)
    np.testing.assert_allclose(apply_gain(frames, inverted), np.broadcast_to(1.0 / image, (2, 2, 3)))
    with pytest.raises(ValueError, match="does not match"):
        apply_gain(np.ones((1, 3, 2), np.float32), inverted)


def test_hot_pixels_detected_and_corrected(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    frames = rng.poisson(2.0, size=(10, 48, 48)).astype(np.float32)
    frames[:, 10, 20] += 30.0
    frames[:, 30, 5] += 25.0
    mask = detect_hot_pixels(frames.sum(axis=0), k_sigma=8.0)
    assert mask[10, 20] and mask[30, 5] and mask.sum() <= 4
    fixed = correct_defects(frames, mask)
    assert fixed[:, 10, 20].mean() < 5.0 and fixed[:, 30, 5].mean() < 5.0
    listed = tmp_path / "defects.txt"
    listed.write_text("# x y\n20 10\n5 30\n")
    np.testing.assert_array_equal(read_defect_list(listed, (48, 48)), (mask & False) | _mask_of((48, 48), listed))
    listed.write_text("99 99\n")
    with pytest.raises(CorruptHeaderError):
        read_defect_list(listed, (48, 48))


def _mask_of(shape: tuple[int, int], _: Path) -> npt.NDArray[np.bool_]:
    mask = np.zeros(shape, dtype=bool)
    mask[10, 20] = mask[30, 5] = True
    return mask


# --------------------------------------------------------------------------------------------------
# Sidecars


def test_epu_xml_values_with_units(tmp_path: Path) -> None:
    path = tmp_path / "FoilHole_1_Data_2_3.xml"
    path.write_text(epu_xml(n_fractions=40))
    epu = read_epu_xml(path)
    f = epu.fields
    assert f["optics.voltage_kv"] == pytest.approx(300.0)
    assert f["optics.pixel_size_angstrom"] == pytest.approx(1.06)
    assert f["optics.nominal_defocus_angstrom"] == pytest.approx(15000.0)
    assert f["optics.objective_defocus_angstrom"] == pytest.approx(14900.0)
    assert f["optics.energy_filter_slit_width_ev"] == pytest.approx(20.0)
    assert f["dose.total_dose_e_per_angstrom2"] == pytest.approx(4.0)
    assert f["dose.dose_per_frame_e_per_angstrom2"] == pytest.approx(0.1)
    assert f["dose.exposure_time_s"] == pytest.approx(2.5)
    assert f["stage.x_um"] == pytest.approx(-97.0) and f["stage.alpha_tilt_deg"] == pytest.approx(0.5, abs=1e-3)
    assert f["detector.camera_name"] == "BM-Falcon" and f["detector.electron_counting"] is True
    assert f["acquisition.software"] == "EPU" and f["acquisition.microscope_id"] == "3632"
    assert str(f["acquisition.timestamp_utc_iso"]).startswith("2025-01-08T15:49:18.115828")
    assert epu.announced_frame_count == 40 and expected_frame_count(path) == 40
    path.write_text(epu_xml())
    assert expected_frame_count(path) is None
    path.write_text("<MicroscopeImage><unclosed>")
    with pytest.raises(CorruptHeaderError):
        read_epu_xml(path)
    path.write_text("")
    with pytest.raises(IncompleteFileError):
        read_epu_xml(path)


def test_mdoc_values_with_units(tmp_path: Path) -> None:
    path = tmp_path / "movie.tif.mdoc"
    path.write_text(mdoc_text("movie.tif", n=8))
    mdoc = read_mdoc(path)
    f = mdoc.fields
    assert mdoc.is_frame_set and mdoc.announced_frame_count == 8 and expected_frame_count(path) == 8
    assert f["optics.voltage_kv"] == 300.0 and f["optics.pixel_size_angstrom"] == pytest.approx(0.83)
    assert f["optics.objective_defocus_angstrom"] == pytest.approx(16200.0)
    assert f["optics.nominal_defocus_angstrom"] == pytest.approx(15000.0)
    assert f["stage.x_um"] == 12.5 and f["stage.y_um"] == -33.25 and f["stage.z_um"] == 4.1
    assert f["dose.total_dose_e_per_angstrom2"] == 50.0 and f["dose.dose_per_frame_e_per_angstrom2"] == 6.25
    assert f["acquisition.software"] == "SerialEM" and f["acquisition.timestamp_utc_iso"] == "2025-01-08T15:49:18"
    path.write_text("PixelSpacing = not-a-number\n[ZValue = 0]\n")
    with pytest.raises(CorruptHeaderError):
        read_mdoc(path)


# --------------------------------------------------------------------------------------------------
# Layouts and read_exposure


def make_epu_session(root: Path, n_fractions: int = 4) -> dict[str, Path]:
    rng = np.random.default_rng(14)
    data = root / "Images-Disc1" / "GridSquare_8999138" / "Data"
    data.mkdir(parents=True)
    (root / "Images-Disc1" / "GridSquare_8999138" / "FoilHoles").mkdir()
    stem = "FoilHole_9015883_Data_9017347_6_20250108_154915"
    micrograph = data / f"{stem}.mrc"
    write_fei_mrc(micrograph, counts(rng, (16, 24)).astype(np.float32))
    (data / f"{stem}.xml").write_text(epu_xml())
    tiff = data / f"{stem}_fractions.tiff"
    tifffile.imwrite(tiff, counts(rng, (n_fractions, 16, 24)), compression="lzw", photometric="minisblack")
    # a movie in a separate movie tree, whose XML sits beside the micrograph of another exposure
    stem2 = "FoilHole_9015884_Data_9017347_7_20250108_155002"
    (data / f"{stem2}.xml").write_text(epu_xml(n_fractions=n_fractions))
    movies = root / "movies" / "Images-Disc1" / "GridSquare_8999138" / "Data"
    movies.mkdir(parents=True)
    eer = movies / f"{stem2}_EER.eer"
    write_eer(eer, eer_frames(rng, n=n_fractions, ny=16, nx=24, p=0.3))
    # not exposures: an atlas tile and a foil-hole preview
    write_fei_mrc(root / "Images-Disc1" / "GridSquare_8999138" / "GridSquare_20250108_151151.mrc", counts(rng, (8, 8)))
    write_fei_mrc(
        root / "Images-Disc1" / "GridSquare_8999138" / "FoilHoles" / "FoilHole_9015889_20250108_154715.mrc",
        counts(rng, (8, 8)),
    )
    return {"micrograph": micrograph, "tiff": tiff, "eer": eer}


def test_discover_epu_session(tmp_path: Path) -> None:
    paths = make_epu_session(tmp_path)
    found = {e.path: e for e in discover_session(tmp_path)}
    assert set(found) == set(paths.values())
    micrograph, tiff, eer = (found[paths[k]] for k in ("micrograph", "tiff", "eer"))
    assert micrograph.kind == "micrograph" and tiff.kind == "movie" and eer.kind == "movie"
    assert micrograph.exposure_name == tiff.exposure_name == "FoilHole_9015883_Data_9017347_6_20250108_154915"
    assert all(e.grid_square_id == "8999138" and e.layout == "epu" for e in found.values())
    assert micrograph.foil_hole_id == "9015883" and eer.foil_hole_id == "9015884"
    assert eer.sidecar_path is not None and eer.sidecar_path.parent.name == "Data"
    assert eer.sidecar_path.name == "FoilHole_9015884_Data_9017347_7_20250108_155002.xml"
    assert tiff.sidecar_kind == "epu_xml" and micrograph.image_format == "mrc" and eer.image_format == "eer"


def test_read_exposure_merges_header_and_sidecar(tmp_path: Path) -> None:
    paths = make_epu_session(tmp_path)
    by_path = {e.path: e for e in discover_session(tmp_path)}
    exposure = read_exposure(by_path[paths["micrograph"]])
    record = exposure.metadata
    assert exposure.frames.shape == (1, 16, 24) and exposure.pixel_size_angstrom == pytest.approx(1.06)
    assert record.optics.voltage_kv == pytest.approx(300.0) and record.acquisition.grid_square_id == "8999138"
    assert record.acquisition.foil_hole_id == "9015883" and record.disagreements == ()
    assert [s for s, _ in record.sources] == ["fei_extended_header", "mrc_header", "epu_xml", "layout"]
    eer = read_exposure(by_path[paths["eer"]], eer_frames_per_group=2)
    assert eer.frames.shape == (2, 16, 24) and eer.metadata.dose.announced_frame_count == 4
    tiff = read_exposure(by_path[paths["tiff"]], detect_hot_pixels_k_sigma=50.0)
    assert tiff.frames.shape == (4, 16, 24) and tiff.defect_mask is not None


def test_read_exposure_flags_header_sidecar_disagreement(tmp_path: Path) -> None:
    stem = tmp_path / "Data" / "FoilHole_1_Data_2_3_20250108_154915"
    stem.parent.mkdir()
    write_fei_mrc(stem.with_suffix(".mrc"), counts(np.random.default_rng(15), (16, 24)), pixel_size_m=1.06e-10)
    stem.with_suffix(".xml").write_text(epu_xml(pixel_m=0.83e-10, voltage_v=200000))
    record = read_exposure(stem.with_suffix(".mrc")).metadata
    flagged = {d.field_name: d for d in record.disagreements}
    assert set(flagged) == {"optics.pixel_size_angstrom", "optics.voltage_kv"}
    values = dict(flagged["optics.voltage_kv"].values)
    assert values["fei_extended_header"] == pytest.approx(300.0) and values["epu_xml"] == pytest.approx(200.0)
    assert record.optics.voltage_kv == pytest.approx(300.0)  # the header's value, with the flag beside it


def test_frame_count_completeness(tmp_path: Path) -> None:
    data = tmp_path / "Data"
    data.mkdir()
    stem = "FoilHole_1_Data_2_3_20250108_154915"
    tifffile.imwrite(
        data / f"{stem}_fractions.tiff", counts(np.random.default_rng(16), (3, 8, 8)), photometric="minisblack"
    )
    (data / f"{stem}.xml").write_text(epu_xml(n_fractions=5))
    with pytest.raises(IncompleteFileError, match="announces 5"):
        read_exposure(data / f"{stem}_fractions.tiff")
    (data / f"{stem}.xml").write_text(epu_xml(n_fractions=2))
    with pytest.raises(CorruptHeaderError, match="announces only 2"):
        read_exposure(data / f"{stem}_fractions.tiff")
    (data / f"{stem}.xml").write_text(epu_xml(n_fractions=3))
    assert read_exposure(data / f"{stem}_fractions.tiff").frames.shape[0] == 3


def test_serialem_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    tifffile.imwrite(tmp_path / "sq12_0001.tif", counts(rng, (5, 16, 24)), compression="lzw")
    (tmp_path / "sq12_0001.tif.mdoc").write_text(mdoc_text("sq12_0001.tif", n=5))
    with mrcfile.new(tmp_path / "sq12_0002.mrc") as mrc:
        mrc.set_data(counts(rng, (16, 24)).astype(np.float32))
        mrc.voxel_size = 0.83
    (tmp_path / "sq12_0002.mrc.mdoc").write_text(mdoc_text("sq12_0002.mrc", n=1, frame_set=False))
    found = {e.path.name: e for e in discover_session(tmp_path)}
    assert set(found) == {"sq12_0001.tif", "sq12_0002.mrc"}
    movie, micrograph = found["sq12_0001.tif"], found["sq12_0002.mrc"]
    assert movie.kind == "movie" and movie.sidecar_kind == "mdoc" and movie.layout == "serialem"
    assert micrograph.kind == "micrograph" and micrograph.sidecar_path == tmp_path / "sq12_0002.mrc.mdoc"
    exposure = read_exposure(movie)
    assert exposure.metadata.stage.x_um == 12.5 and exposure.metadata.acquisition.software == "SerialEM"
    assert exposure.metadata.dose.announced_frame_count == 5
    assert read_exposure(micrograph).metadata.disagreements == ()


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_tiff_movies_in_strips_and_either_byte_order_read_exactly(tmp_path: Path, byteorder: str) -> None:
    """Uncompressed pages are read straight from their strip offsets: several strips per page (5 rows
    each, the last one short) and big-endian (MM) files give exactly the stored counts, in native order."""
    data = counts(np.random.default_rng(9), (4, 23, 17), "uint16")
    path = tmp_path / "strips.tiff"
    tifffile.imwrite(path, data, byteorder=byteorder, rowsperstrip=5, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages[0].dataoffsets) == 5  # 23 rows in strips of 5
    movie = read_tiff_movie(path)
    np.testing.assert_array_equal(movie.frames, data)
    assert movie.frames.dtype == np.dtype("uint16") and movie.frames.dtype.isnative


@pytest.mark.parametrize(
    ("stamp", "flags", "expected"), [(1146047817, 0, "uint8"), (1146047817, 1, "int8"), (0, 0, "int8")]
)
def test_mode_0_bytes_follow_imods_signed_flag(tmp_path: Path, stamp: int, flags: int, expected: str) -> None:
    """Mode 0 is signed in MRC2014, but IMOD-stamped files (imodStamp 1146047817 at byte 152) store
    unsigned bytes unless imodFlags (byte 156) has bit 1, "bytes are stored as signed"."""
    stored = np.arange(200, 224, dtype=np.uint8).reshape(1, 4, 6)  # values above 127: sign matters
    path = tmp_path / "bytes.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(stored.view(np.int8))
        mrc.voxel_size = 1.0
    raw = bytearray(path.read_bytes())
    raw[152:156] = stamp.to_bytes(4, "little", signed=True)
    raw[156:160] = flags.to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(raw))
    frames, _ = read_mrc_frames(path)
    assert frames.dtype == np.dtype(expected)
    np.testing.assert_array_equal(frames, stored.view(np.dtype(expected)))


def test_a_file_truncated_while_its_data_is_read_gives_the_typed_error(tmp_path: Path) -> None:
    """``check_complete`` passed, then the file shrank (rewritten in place): the parallel reader stops at
    the short read with IncompleteFileError, for a direct read and for one converted to float32."""
    from cryodecon_science.io import mrc as mrc_module
    from cryodecon_science.io.rawread import read_converted, read_ranges

    path = tmp_path / "shrinks.mrc"
    data = counts(np.random.default_rng(3), (2, 64, 48), "uint16")
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 1.0
    geometry = mrc_module.check_complete(path)
    with open(path, "r+b") as handle:
        handle.truncate(geometry.declared_size_bytes - 100)
    for out_dtype in (None, np.float32):
        with pytest.raises(IncompleteFileError, match="before the declared data"):
            mrc_module._read_data_block(path, geometry, out_dtype)
    with pytest.raises(EOFError):
        read_ranges(path, [(0, 0, 10_000_000)], np.empty(10_000_000, dtype=np.uint8))
    with pytest.raises(EOFError):
        read_converted(path, 1024, np.dtype("<u2"), np.empty(10_000, dtype=np.float32))
