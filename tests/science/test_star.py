"""RELION micrograph CTF tables: round trip, and the layout RELION ≥ 3.1 expects."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryodecon_science.io.star import (
    MicrographCtfRow,
    StarFormatError,
    read_micrographs_ctf_star,
    write_micrographs_ctf_star,
)
from cryodecon_science.optics import CtfParams, MicroscopeSettings
from cryodecon_science.records import CtfFit, SpectralModel

KRIOS = MicroscopeSettings(
    voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast_fraction=0.07, pixel_size_angstrom=0.83
)
GLACIOS = MicroscopeSettings(
    voltage_kv=200.0, spherical_aberration_mm=2.7, amplitude_contrast_fraction=0.1, pixel_size_angstrom=1.2
)


def _fit(u: float, v: float, angle: float, phase_shift_rad: float = 0.0) -> CtfFit:
    k = np.linspace(0.0, 0.5, 5)
    model = SpectralModel(k, np.ones(5), np.full(5, 30.0), 30.0, 1, 4)
    return CtfFit(CtfParams(u, v, angle, phase_shift_rad), 3.87, 0.61, 12.0, model)


def _rows() -> list[MicrographCtfRow]:
    return [
        MicrographCtfRow("MotionCorr/job002/Movies/mic_0001.mrc", _fit(15123.4, 14567.8, 35.2), KRIOS),
        MicrographCtfRow("MotionCorr/job002/Movies/mic_0002.mrc", _fit(20001.0, 19000.5, 179.9), KRIOS),
        MicrographCtfRow("Import/glacios/mic_0003.mrc", _fit(9000.0, 9000.0, 0.0, math.pi / 2), GLACIOS),
    ]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "micrographs_ctf.star"
    rows = _rows()
    write_micrographs_ctf_star(path, rows)
    records = read_micrographs_ctf_star(path)
    assert [r.micrograph_path for r in records] == [row.micrograph_path for row in rows]
    for record, row in zip(records, rows, strict=True):
        # starfile writes floats with 6 decimals ('%.6f'): 1e-6 absolute on Å, degrees and ratios.
        assert record.ctf.defocus_u_angstrom == pytest.approx(row.ctf_fit.ctf.defocus_u_angstrom, abs=1e-6)
        assert record.ctf.defocus_v_angstrom == pytest.approx(row.ctf_fit.ctf.defocus_v_angstrom, abs=1e-6)
        assert record.ctf.astigmatism_angle_deg == pytest.approx(row.ctf_fit.ctf.astigmatism_angle_deg, abs=1e-6)
        # Phase shift goes through degrees in the file: 1e-6° is 2e-8 rad.
        assert record.ctf.phase_shift_rad == pytest.approx(row.ctf_fit.ctf.phase_shift_rad, abs=1e-7)
        assert record.fit_resolution_angstrom == pytest.approx(row.ctf_fit.fit_resolution_angstrom, abs=1e-6)
        assert record.figure_of_merit == pytest.approx(row.ctf_fit.cross_correlation, abs=1e-6)
        assert record.microscope == row.microscope
        assert record.ctf_image_path is None
    # Two distinct microscopes: two optics groups, numbered in order of appearance.
    assert [r.optics_group for r in records] == [1, 1, 2]
    assert [r.optics_group_name for r in records] == ["opticsGroup1", "opticsGroup1", "opticsGroup2"]


def test_layout_is_relion_3_1(tmp_path: Path) -> None:
    path = tmp_path / "micrographs_ctf.star"
    rows = [
        MicrographCtfRow(r.micrograph_path, r.ctf_fit, r.microscope, f"CtfFind/job003/{i}.ctf:mrc")
        for i, r in enumerate(_rows())
    ]
    write_micrographs_ctf_star(path, rows)
    blocks = starfile.read(path, always_dict=True)
    assert list(blocks) == ["optics", "micrographs"]
    optics, micrographs = blocks["optics"], blocks["micrographs"]
    assert isinstance(optics, pd.DataFrame) and isinstance(micrographs, pd.DataFrame)
    assert list(optics.columns) == [
        "rlnOpticsGroup",
        "rlnOpticsGroupName",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnMicrographPixelSize",
    ]
    assert list(micrographs.columns) == [
        "rlnMicrographName",
        "rlnOpticsGroup",
        "rlnCtfImage",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnCtfAstigmatism",
        "rlnCtfFigureOfMerit",
        "rlnCtfMaxResolution",
        "rlnPhaseShift",
    ]
    assert micrographs["rlnCtfAstigmatism"].tolist() == pytest.approx([555.6, 1000.5, 0.0], abs=1e-6)
    # RELION stores the phase shift in degrees.
    assert micrographs["rlnPhaseShift"].tolist() == pytest.approx([0.0, 0.0, 90.0], abs=1e-6)
    assert optics["rlnVoltage"].tolist() == [300.0, 200.0]
    # RELION ≥ 3.1 recognises its optics-group format by a version comment before every block.
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("data_"):
            assert lines[i - 2] == "# version 30001"
    assert sum(line.startswith("data_") for line in lines) == 2


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "micrographs_ctf.star"
    write_micrographs_ctf_star(path, _rows())
    write_micrographs_ctf_star(path, _rows()[:1])
    assert len(read_micrographs_ctf_star(path)) == 1
    # No temporary file is left next to the table.
    assert [p.name for p in path.parent.iterdir()] == ["micrographs_ctf.star"]


def test_rejects_partial_ctf_images_and_empty_tables(tmp_path: Path) -> None:
    rows = _rows()
    mixed = [
        MicrographCtfRow(rows[0].micrograph_path, rows[0].ctf_fit, rows[0].microscope, "a.ctf:mrc"),
        rows[1],
    ]
    with pytest.raises(ValueError, match="every row or for none"):
        write_micrographs_ctf_star(tmp_path / "x.star", mixed)
    with pytest.raises(ValueError, match="no micrographs"):
        write_micrographs_ctf_star(tmp_path / "x.star", [])
    assert not list(tmp_path.iterdir())


def test_read_rejects_tables_without_optics(tmp_path: Path) -> None:
    path = tmp_path / "old.star"
    starfile.write({"micrographs": pd.DataFrame({"rlnMicrographName": ["a.mrc"], "rlnDefocusU": [1.0]})}, path)
    with pytest.raises(StarFormatError, match="data_optics"):
        read_micrographs_ctf_star(path)


def test_corrected_micrographs_star_has_relion_motion_columns(tmp_path: Path) -> None:
    from cryodecon_science.io.star import CorrectedMicrographRow, write_corrected_micrographs_star

    rows = [
        CorrectedMicrographRow("m/a_DW.mrc", "m/a.mrc", "m/a_EVN.mrc", "m/a_ODD.mrc", KRIOS, 30.5, 12.0, 18.5),
        CorrectedMicrographRow("m/b_DW.mrc", "m/b.mrc", "m/b_EVN.mrc", "m/b_ODD.mrc", GLACIOS, 8.0, 6.0, 2.0),
    ]
    path = tmp_path / "corrected_micrographs.star"
    write_corrected_micrographs_star(path, rows)
    assert path.read_text().count("# version 30001") == 2
    blocks = starfile.read(path, always_dict=True)
    micrographs = blocks["micrographs"]
    assert list(micrographs.columns) == [
        "rlnMicrographName",
        "rlnMicrographNameNoDW",
        "rlnMicrographNameEven",
        "rlnMicrographNameOdd",
        "rlnOpticsGroup",
        "rlnAccumMotionTotal",
        "rlnAccumMotionEarly",
        "rlnAccumMotionLate",
    ]
    assert list(micrographs["rlnMicrographName"]) == ["m/a_DW.mrc", "m/b_DW.mrc"]
    assert list(micrographs["rlnOpticsGroup"]) == [1, 2]
    assert list(blocks["optics"]["rlnVoltage"]) == [300.0, 200.0]
    # Without a dose: no dose-weighted name and no early/late split (a loop has no empty cells).
    plain = [CorrectedMicrographRow("m/c.mrc", None, "m/c_EVN.mrc", "m/c_ODD.mrc", KRIOS, 4.0, None, None)]
    write_corrected_micrographs_star(path, plain)
    columns = list(starfile.read(path, always_dict=True)["micrographs"].columns)
    assert "rlnMicrographNameNoDW" not in columns and "rlnAccumMotionEarly" not in columns
    with pytest.raises(ValueError):
        write_corrected_micrographs_star(path, [])
