"""Storage sensor: complete files -> batches + runs; half-written and corrupt files -> nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from cryodecon_assets.intake.batching import MANIFESTS, BatchManifest
from cryodecon_assets.intake.sensors import microscope_storage_sensor
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
from cryodecon_science.io.mrc import write_mrc

SESSION = "grid01"


def _write(root: Path, name: str, seed: int, shape: tuple[int, int] = (64, 64)) -> Path:
    data = np.random.default_rng(seed).poisson(20.0, size=shape).astype(np.float32)
    path = root / SESSION / "micrographs" / f"{name}.mrc"
    write_mrc(path, data, 1.0)
    return path


def _resources(root: Path, warehouse: Path, **storage: float) -> dict[str, object]:
    settings = {"settle_seconds": 0.0, "batch_window_seconds": 0.0, "max_batch_size": 2, **storage}
    return {
        "microscope_storage": MicroscopeStorage(root=str(root), **settings),  # type: ignore[arg-type]
        "warehouse": ScoreWarehouse(root=str(warehouse)),
    }


def _tick(instance: dg.DagsterInstance, resources: dict[str, object], cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = microscope_storage_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _added(result: dg.SensorResult) -> list[str]:
    """The batch partitions the tick registers (it registers their sessions too, for the dashboard)."""
    return [
        k
        for r in result.dynamic_partitions_requests or []
        if r.partitions_def_name == acquisition_batches.name
        for k in r.partition_keys  # type: ignore[union-attr]
    ]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def test_complete_files_become_batches_and_run_requests(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    for i in range(3):
        _write(storage, f"mic_{i}", i)
    resources = _resources(storage, warehouse)
    first = _tick(instance, resources, None)
    assert not first.run_requests, "a file seen once is not yet known to be stable"
    second = _tick(instance, resources, first.cursor)
    assert _added(second) == ["grid01-00001", "grid01-00002"]
    sessions = [r for r in second.dynamic_partitions_requests or [] if r.partitions_def_name == "acquisition_sessions"]
    assert [list(r.partition_keys) for r in sessions] == [["grid01"]]  # type: ignore[union-attr]
    assert [r.partition_key for r in second.run_requests] == ["grid01-00001", "grid01-00002"]
    assert all(r.job_name == "process_batch" and r.run_key == r.partition_key for r in second.run_requests)
    manifest = BatchManifest.from_document(ScoreWarehouse(root=str(warehouse)).read_document(MANIFESTS, "grid01-00001"))
    assert [f.name for f in manifest.files] == ["mic_0", "mic_1"]
    assert all(len(f.sha256) == 64 for f in manifest.files)


def test_half_written_file_starts_nothing(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    full = _write(storage, "whole", 1)
    partial = storage / SESSION / "micrographs" / "copying.mrc"
    partial.write_bytes(full.read_bytes()[: 1024 + 2000])  # header complete, data still arriving
    full.unlink()
    resources = _resources(storage, warehouse, truncated_after_seconds=3600.0)
    cursor = None
    for _ in range(3):
        result = _tick(instance, resources, cursor)
        cursor = result.cursor
        assert not result.run_requests and not _added(result)
    assert "copying.mrc" in json.loads(cursor or "{}")["pending"].__repr__()
    # The copy finishes: the next ticks pick it up.
    partial.write_bytes(_write(storage, "tmp_source", 1).read_bytes())
    (storage / SESSION / "micrographs" / "tmp_source.mrc").unlink()
    result = _tick(instance, resources, cursor)
    result = _tick(instance, resources, result.cursor)
    assert _added(result) == ["grid01-00001"]


def test_restart_neither_duplicates_nor_misses(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    for i in range(2):
        _write(storage, f"mic_{i}", i)
    resources = _resources(storage, warehouse)
    cut = _tick(instance, resources, _tick(instance, resources, None).cursor)
    assert _added(cut) == ["grid01-00001"]
    # The daemon restarts with the stored cursor, and (worse) with no cursor at all.
    for cursor in (cut.cursor, None):
        again = _tick(instance, resources, _tick(instance, resources, cursor).cursor)
        assert not again.run_requests and not _added(again)
    # A file that lands after the restart is still found, in the next batch number.
    _write(storage, "mic_late", 7)
    late = _tick(instance, resources, _tick(instance, resources, None).cursor)
    assert _added(late) == ["grid01-00002"]


def test_corrupt_and_truncated_files_are_quarantined_and_the_rest_goes_on(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    _write(storage, "good", 3)
    bad_dir = storage / SESSION / "micrographs"
    (bad_dir / "garbage.mrc").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad_dir / "empty.mrc").write_bytes(b"")
    truncated = _write(storage, "cut_short", 4)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    resources = _resources(storage, warehouse, truncated_after_seconds=0.0, max_batch_size=10)
    result = _tick(instance, resources, _tick(instance, resources, None).cursor)
    assert _added(result) == ["grid01-00001"]
    manifest = BatchManifest.from_document(ScoreWarehouse(root=str(warehouse)).read_document(MANIFESTS, "grid01-00001"))
    assert [f.name for f in manifest.files] == ["good"]
    quarantine = ScoreWarehouse(root=str(warehouse)).read_rows("quarantine").set_index("micrograph")
    assert quarantine.loc["garbage", "reason"] == "corrupt_header"
    assert quarantine.loc["cut_short", "reason"] == "truncated"
    assert quarantine.loc["empty", "reason"] == "empty"
    # Recorded once: later ticks do not add the same quarantine rows again.
    later = _tick(instance, resources, result.cursor)
    assert len(ScoreWarehouse(root=str(warehouse)).read_rows("quarantine")) == 3
    assert not later.run_requests


def test_a_file_waits_out_the_settle_window(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """Stable size is not enough on its own: it must stay stable for ``settle_seconds`` across ticks."""
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    _write(storage, "fresh", 5)
    resources = _resources(storage, warehouse, settle_seconds=3600.0)
    cursor = None
    for _ in range(3):
        result = _tick(instance, resources, cursor)
        cursor = result.cursor
        assert not result.run_requests and not _added(result)
    assert list(json.loads(cursor or "{}")["pending"]) == ["grid01/micrographs/fresh.mrc"]


def test_a_fixed_file_is_picked_up_after_quarantine(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """Quarantine is not a dead end: once the file is rewritten correctly it is batched like any other."""
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    good = _write(storage, "repaired", 11)
    content = good.read_bytes()
    good.write_bytes(b"\x00" * 2048)  # garbage header
    resources = _resources(storage, warehouse)
    first = _tick(instance, resources, _tick(instance, resources, None).cursor)
    assert not _added(first)
    rows = ScoreWarehouse(root=str(warehouse)).read_rows("quarantine")
    assert list(rows["reason"]) == ["corrupt_header"]
    good.write_bytes(content)  # the facility re-copies the exposure
    fixed = _tick(instance, resources, _tick(instance, resources, first.cursor).cursor)
    assert _added(fixed) == ["grid01-00001"]
