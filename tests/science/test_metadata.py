"""The exposure metadata record: merging with disagreement flags, flattening, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cryodecon_science.metadata import (
    SCHEMA_VERSION,
    ExposureMetadata,
    field_names,
    flatten_metadata,
    merge_metadata,
    metadata_from_json,
    metadata_to_json,
)

HEADER = {
    "optics.voltage_kv": 300.0,
    "optics.pixel_size_angstrom": 1.06,
    "detector.n_frames": 40,
    "detector.camera_name": "BM-Falcon",
    "acquisition.timestamp_utc_iso": "2025-01-08T15:49:18+00:00",
}
SIDECAR = {
    "optics.voltage_kv": 300.0,
    "optics.pixel_size_angstrom": 1.0601,  # within 0.5 %
    "optics.nominal_defocus_angstrom": 15000.0,
    "detector.camera_name": "bm-falcon ",  # case and blanks do not count
    "acquisition.timestamp_utc_iso": "2025-01-08T15:49:48.5+00:00",  # 30 s later: within a minute
    "stage.x_um": -97.0,
}


def merged(**sidecar_overrides: object) -> ExposureMetadata:
    sidecar = {**SIDECAR, **sidecar_overrides}
    return merge_metadata(
        "FoilHole_1_Data_2_3",
        "movie",
        "/data/x.mrc",
        [("header", "/data/x.mrc", HEADER), ("epu_xml", "/x.xml", sidecar)],
    )  # type: ignore[list-item]


def test_merge_fills_sections_and_agrees_within_tolerance() -> None:
    record = merged()
    assert record.schema_version == SCHEMA_VERSION and record.disagreements == ()
    assert record.optics.voltage_kv == 300.0 and record.optics.pixel_size_angstrom == 1.06
    assert record.optics.nominal_defocus_angstrom == 15000.0 and record.stage.x_um == -97.0
    assert record.detector.n_frames == 40 and isinstance(record.detector.n_frames, int)
    assert record.sources == (("header", "/data/x.mrc"), ("epu_xml", "/x.xml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.optics.voltage_kv = 200.0  # type: ignore[misc]


def test_disagreements_list_both_values_and_keep_the_first() -> None:
    record = merged(**{"optics.voltage_kv": 200.0, "optics.pixel_size_angstrom": 0.83, "detector.camera_name": "K3"})
    flagged = {d.field_name: dict(d.values) for d in record.disagreements}
    assert flagged == {
        "optics.voltage_kv": {"header": 300.0, "epu_xml": 200.0},
        "optics.pixel_size_angstrom": {"header": 1.06, "epu_xml": 0.83},
        "detector.camera_name": {"header": "BM-Falcon", "epu_xml": "K3"},
    }
    assert record.optics.voltage_kv == 300.0
    late = merged(**{"acquisition.timestamp_utc_iso": "2025-01-08T16:49:18+00:00"})
    assert [d.field_name for d in late.disagreements] == ["acquisition.timestamp_utc_iso"]


def test_unknown_fields_nan_and_custom_tolerances() -> None:
    record = merge_metadata(
        "e", "micrograph", "p", [("a", "", {"optics.voltage_kv": float("nan"), "no.such": 1.0}), ("b", "", {})]
    )
    assert record.optics.voltage_kv is None
    loose = merge_metadata(
        "e",
        "micrograph",
        "p",
        [("a", "", {"optics.pixel_size_angstrom": 1.0}), ("b", "", {"optics.pixel_size_angstrom": 1.05})],
        tolerances={"optics.pixel_size_angstrom": (0.1, 0.0)},
    )
    assert loose.disagreements == ()


def test_flatten_gives_one_column_per_field() -> None:
    record = merged(**{"optics.voltage_kv": 200.0})
    row = flatten_metadata(record)
    expected = {name.replace(".", "_") for name in field_names()}
    assert expected <= set(row) and row["optics_voltage_kv"] == 300.0 and row["stage_y_um"] is None
    assert row["n_disagreements"] == 1 and row["schema_version"] == SCHEMA_VERSION
    assert json.loads(str(row["disagreements_json"]))[0]["field_name"] == "optics.voltage_kv"
    assert all(v is None or isinstance(v, (int, float, str, bool)) for v in row.values())


def test_json_round_trip() -> None:
    record = merged(**{"optics.voltage_kv": 200.0})
    text = metadata_to_json(record)
    assert json.loads(text)["optics"]["voltage_kv"] == 300.0
    assert metadata_from_json(text) == record
    with pytest.raises(ValueError):
        metadata_from_json(json.dumps({"schema_version": "other/9"}))
