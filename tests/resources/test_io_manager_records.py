"""BatchIOManager's records-only loads: each exposure's record without its images, and a damaged record is a
StoredOutputError naming the step to rerun, never a half-read batch."""

from __future__ import annotations

import pickle
from pathlib import Path

import dagster as dg
import pytest

from cryodecon_resources.io_manager import EXPOSURE_SUFFIX, RECORDS_ONLY, BatchIOManager, StoredOutputError

BATCH = "b-00001"


def records(tmp_path: Path) -> dict[str, object]:
    context = dg.build_input_context(
        asset_key=dg.AssetKey("raw_micrographs"),
        partition_key=BATCH,
        definition_metadata={RECORDS_ONLY: True},
    )
    return BatchIOManager(root=str(tmp_path)).load_input(context)


def test_records_only_reads_the_records_and_no_image(tmp_path: Path) -> None:
    folder = tmp_path / "raw_micrographs" / BATCH
    folder.mkdir(parents=True)
    for name, defocus in (("m1", 15000.0), ("m2", 21000.0)):
        (folder / f"{name}{EXPOSURE_SUFFIX}").write_bytes(pickle.dumps({"defocus_angstrom": defocus}))
    (folder / "m1.mrc").write_bytes(b"not an image: a records-only load never opens it")
    assert records(tmp_path) == {"m1": {"defocus_angstrom": 15000.0}, "m2": {"defocus_angstrom": 21000.0}}


def test_a_truncated_record_is_a_clear_error_naming_the_step(tmp_path: Path) -> None:
    folder = tmp_path / "raw_micrographs" / BATCH
    folder.mkdir(parents=True)
    (folder / f"m1{EXPOSURE_SUFFIX}").write_bytes(pickle.dumps({"defocus_angstrom": 15000.0})[:7])
    with pytest.raises(StoredOutputError, match=r"raw_micrographs \(partition b-00001\) stored m1\.exposure\.pkl"):
        records(tmp_path)
