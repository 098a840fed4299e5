"""Sweep schedule: batches the sensor missed are cut, orphaned manifests registered, unfinished re-run."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from cryodecon_assets.intake.batching import MANIFESTS, BatchManifest, ManifestFile
from cryodecon_assets.intake.sensors import storage_sweep_schedule
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
from tests.assets.test_sensor import SESSION, _write


def _evaluate(instance: dg.DagsterInstance, resources: dict[str, object], minute: int) -> list[dg.RunRequest]:
    context = dg.build_schedule_context(
        instance=instance,
        resources=resources,
        scheduled_execution_time=datetime(2026, 11, 23, 12, minute, tzinfo=UTC),
    )
    result = storage_sweep_schedule(context)
    return list(result) if isinstance(result, list) else []


def test_sweep_cuts_missed_files_and_reruns_unfinished_batches(tmp_path: Path) -> None:
    storage, warehouse_root = tmp_path / "storage", tmp_path / "warehouse"
    old = time.time() - 3600
    for i in range(2):
        os.utime(_write(storage, f"missed_{i}", i), (old, old))
    _write(storage, "just_landed", 9)  # mtime now: not settled yet, left for later
    warehouse = ScoreWarehouse(root=str(warehouse_root))
    # A manifest written by a tick that died before registering its partition.
    orphan = BatchManifest(
        "other-00001", "other", 1, old, (ManifestFile("other/micrographs/x.mrc", 1, "0" * 64, "micrograph"),)
    )
    warehouse.write_document_once(MANIFESTS, orphan.batch_key, orphan.to_document())
    resources = {
        "microscope_storage": MicroscopeStorage(root=str(storage), settle_seconds=60, batch_window_seconds=0),
        "warehouse": warehouse,
    }
    with dg.instance_for_test() as instance:
        _check_sweep(instance, resources, warehouse)


def _check_sweep(instance: dg.DagsterInstance, resources: dict[str, object], warehouse: ScoreWarehouse) -> None:
    requests = _evaluate(instance, resources, 0)
    assert sorted(r.partition_key for r in requests) == ["grid01-00001", "other-00001"]
    assert set(instance.get_dynamic_partitions(acquisition_batches.name)) == {"grid01-00001", "other-00001"}
    manifest = BatchManifest.from_document(warehouse.read_document(MANIFESTS, "grid01-00001"))
    assert [f.name for f in manifest.files] == ["missed_0", "missed_1"]
    assert SESSION == manifest.session
    # Nothing ran them: the next sweep asks again (new run keys), and cuts nothing twice.
    again = _evaluate(instance, resources, 30)
    assert sorted(r.partition_key for r in again) == ["grid01-00001", "other-00001"]
    assert {r.run_key for r in again}.isdisjoint({r.run_key for r in requests})
    assert warehouse.list_documents(MANIFESTS) == ["grid01-00001", "other-00001"]


def test_daily_summary_schedule_targets_the_day_that_ended() -> None:
    from cryodecon_assets.facility.summary import daily_summary_schedule

    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 11, 23, 0, 30, tzinfo=UTC)
        )
        request = daily_summary_schedule(context)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2026-11-22"
