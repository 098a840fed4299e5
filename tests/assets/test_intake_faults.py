"""Intake faults a soak found: each test protects exposures from being lost or counted twice."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from cryodecon_assets.intake import sensors
from cryodecon_assets.intake.batching import MANIFESTS, BatchManifest, PlanState
from cryodecon_assets.intake.sensors import cut_batches, microscope_storage_sensor, report_cut
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
from cryodecon_resources.storage import sha256_of_file
from cryodecon_science.io.mrc import write_mrc


def _write(root: Path, session: str, name: str, seed: int) -> Path:
    data = np.random.default_rng(seed).poisson(20.0, size=(64, 64)).astype(np.float32)
    path = root / session / "micrographs" / f"{name}.mrc"
    write_mrc(path, data, 1.0)
    return path


def _storage(root: Path, **settings: float) -> MicroscopeStorage:
    values = {"settle_seconds": 0.0, "batch_window_seconds": 0.0, "max_batch_size": 2, **settings}
    return MicroscopeStorage(root=str(root), **values)  # type: ignore[arg-type]


def _tick(resources: dict[str, object], cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor, resources=resources)
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


def _manifests(warehouse: ScoreWarehouse) -> list[BatchManifest]:
    return [
        BatchManifest.from_document(warehouse.read_document(MANIFESTS, k)) for k in warehouse.list_documents(MANIFESTS)
    ]


def test_a_session_named_with_a_dot_and_a_space_keeps_getting_batches(tmp_path: Path) -> None:
    """EPU session names such as ``Krios1.grid 2``: every later batch gets the next number, none is lost."""
    storage, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    session = "Krios1.grid 2"
    resources = {"microscope_storage": _storage(storage), "warehouse": warehouse}
    for i in range(2):
        _write(storage, session, f"first_{i}", i)
    first = _tick(resources, _tick(resources, None).cursor)
    assert _added(first) == ["Krios1_grid_2-00001"]
    for i in range(2):
        _write(storage, session, f"later_{i}", 10 + i)
    later = _tick(resources, _tick(resources, first.cursor).cursor)
    assert _added(later) == ["Krios1_grid_2-00002"]
    assert [f.name for f in _manifests(warehouse)[1].files] == ["later_0", "later_1"]


class _ListingLags(ScoreWarehouse):
    """A warehouse whose listing misses one manifest that exists (e.g. a lagging network file system)."""

    hidden: str = ""

    def list_documents(self, collection: str) -> list[str]:
        return [k for k in super().list_documents(collection) if k != self.hidden]


def test_an_existing_manifest_is_an_error_and_its_files_stay_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = tmp_path / "storage"
    warehouse = _ListingLags(root=str(tmp_path / "warehouse"), hidden="grid-00001")
    warehouse.write_document(MANIFESTS, "grid-00001", BatchManifest("grid-00001", "grid", 1, 0.0, ()).to_document())
    for i in range(2):
        _write(storage, "grid", f"mic_{i}", i)
    settings = _storage(storage)
    state = cut_batches(settings, warehouse, PlanState(), time.time(), 0.0).plan.state
    cut = cut_batches(settings, warehouse, state, time.time(), 0.0)
    assert cut.conflicts == ["grid-00001"] and not cut.created
    with caplog.at_level(logging.ERROR):
        report_cut(logging.getLogger("intake"), cut)
    assert "grid-00001" in caplog.text and "already exists" in caplog.text
    assert not cut_batches(settings, warehouse, PlanState(), time.time(), 0.0).plan.new_batches or True


class _Turnstile(ScoreWarehouse):
    """Manifest writes of two planners forced to alternate A, B, B, A (each waits ≤ 3 s for its turn)."""

    def write_document_once(self, collection: str, key: str, document: dict[str, object]) -> bool:  # type: ignore[override]
        order: list[tuple[str, str]] = _TURNS["order"]  # type: ignore[assignment]
        condition: threading.Condition = _TURNS["condition"]  # type: ignore[assignment]
        me = (threading.current_thread().name, key)
        with condition:
            condition.wait_for(lambda: bool(order) and order[0] == me, timeout=3.0)
        try:
            return super().write_document_once(collection, key, document)
        finally:
            with condition:
                if order and order[0] == me:
                    order.pop(0)
                condition.notify_all()


_TURNS: dict[str, object] = {}


def test_the_sensor_and_the_sweep_never_put_one_file_in_two_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sensor orders ready files by first sight, the sweep by mtime; cutting at once, they must not
    both assign a file (the sensor writes batch 1, the sweep batch 2, each with its own first files)."""
    storage = tmp_path / "storage"
    paths = [_write(storage, "grid", f"mic_{i}", i) for i in range(6)]
    for i, path in enumerate(paths):
        os.utime(path, (1000.0 + i, 1000.0 + i))
    observations = _storage(storage).scan().files
    now = time.time()
    # The sensor first saw them in the reverse order; the sweep judges by mtime.
    sensor = PlanState(
        {o.relative_path: {"size": o.size_bytes, "mtime": o.mtime_s, "since": 2000.0 - o.mtime_s} for o in observations}
    )
    sweep = PlanState(
        {o.relative_path: {"size": o.size_bytes, "mtime": o.mtime_s, "since": o.mtime_s} for o in observations}
    )
    warehouse = _Turnstile(root=str(tmp_path / "warehouse"))
    _TURNS.update(
        order=[("A", "grid-00001"), ("B", "grid-00001"), ("B", "grid-00002"), ("A", "grid-00002")],
        condition=threading.Condition(),
    )
    settings = _storage(storage, max_batch_size=4)
    # Both planners read the ledger before either writes, where nothing stops them (checksums come after).
    both_planning = threading.Barrier(2, timeout=3.0)

    def checksum_after_both_read_the_ledger(path: Path) -> str:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_planning.wait()
        return sha256_of_file(path)

    monkeypatch.setattr(sensors, "sha256_of_file", checksum_after_both_read_the_ledger)
    threads = [
        threading.Thread(target=cut_batches, args=(settings, warehouse, state, now, 0.0), name=name)
        for name, state in (("A", sensor), ("B", sweep))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assigned = [f.relative_path for m in _manifests(warehouse) for f in m.files]
    assert len(assigned) == len(set(assigned)) == 6


def test_a_byte_identical_duplicate_is_batched_once_and_its_second_landing_noted(tmp_path: Path) -> None:
    storage, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    resources = {"microscope_storage": _storage(storage, max_batch_size=10), "warehouse": warehouse}
    original = _write(storage, "grid", "FoilHole_1_Data_1", 1)
    first = _tick(resources, _tick(resources, None).cursor)
    assert _added(first) == ["grid-00001"]
    # The same bytes land again under another name (a re-copied folder), and twice within one tick.
    shutil.copy(original, original.with_name("FoilHole_2_Data_1.mrc"))
    twin = _write(storage, "grid", "FoilHole_3_Data_1", 3)
    shutil.copy(twin, twin.with_name("FoilHole_4_Data_1.mrc"))
    later = _tick(resources, _tick(resources, first.cursor).cursor)
    assert _added(later) == ["grid-00002"]
    assert [f.name for f in _manifests(warehouse)[1].files] == ["FoilHole_3_Data_1"]
    rows = warehouse.read_rows("quarantine").set_index("micrograph")
    assert set(rows.index) == {"FoilHole_2_Data_1", "FoilHole_4_Data_1"}
    assert set(rows["reason"]) == {"duplicate"}
    assert "FoilHole_1_Data_1.mrc" in rows.loc["FoilHole_2_Data_1", "detail"]
    assert "FoilHole_3_Data_1.mrc" in rows.loc["FoilHole_4_Data_1", "detail"]
    again = _tick(resources, _tick(resources, later.cursor).cursor)
    assert not _added(again) and len(warehouse.read_rows("quarantine")) == 2


# ---- unreadable storage: the check runs as an unprivileged user (root reads anything) ---------------
_CUT_SCRIPT = """
import json, sys, time
from cryodecon_assets.intake.batching import PlanState
from cryodecon_assets.intake.sensors import cut_batches
from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
from cryodecon_resources.storage import sha256_of_file
storage, warehouse, cursor = sys.argv[1], sys.argv[2], sys.argv[3]
settings = MicroscopeStorage(root=storage, settle_seconds=0.0, batch_window_seconds=0.0, max_batch_size=10)
cut = cut_batches(settings, ScoreWarehouse(root=warehouse), PlanState.from_cursor(cursor), time.time(), 0.0)
print(json.dumps({"cursor": cut.plan.state.to_cursor(), "created": [m.batch_key for m in cut.created],
                  "folders": [f.relative_path for f in cut.unreadable_folders]}))
"""


def _cut_unprivileged(storage: Path, warehouse: Path, cursor: str) -> dict[str, object]:
    """One ``cut_batches`` pass in a child process that obeys permission bits.

    As root, the child runs under ``setpriv`` without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root
    is refused files and folders it does not own, as any facility account would be.
    """
    command = [sys.executable, "-c", _CUT_SCRIPT, str(storage), str(warehouse), cursor]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux): cannot drop the permission override")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *command]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _lock(path: Path) -> None:
    """Readable by nobody but its owner, and owned by another user than the one running the check."""
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    path.chmod(0o700 if path.is_dir() else 0o600)


def _unlock(path: Path) -> None:
    path.chmod(0o755 if path.is_dir() else 0o644)


def test_an_unreadable_folder_is_reported_and_its_exposures_found_once_it_is_readable(tmp_path: Path) -> None:
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    _write(storage, "grid", "visible", 1)
    square = storage / "grid" / "Images-Disc1" / "GridSquare_7"
    image = np.full((64, 64), 20.0, np.float32) + np.eye(64, dtype=np.float32)
    write_mrc(square / "Data" / "FoilHole_1_Data_2_3.mrc", image, 1.0)
    _lock(square)
    try:
        first = _cut_unprivileged(storage, warehouse, "")
        first = _cut_unprivileged(storage, warehouse, str(first["cursor"]))
    finally:
        _unlock(square)  # the operator fixes it
    assert first["folders"] == ["grid/Images-Disc1/GridSquare_7"]
    assert first["created"] == ["grid-00001"]
    rows = ScoreWarehouse(root=str(warehouse)).read_rows("quarantine")
    assert list(rows["reason"]) == ["unreadable_folder"]
    fixed = _cut_unprivileged(storage, warehouse, str(first["cursor"]))
    fixed = _cut_unprivileged(storage, warehouse, str(fixed["cursor"]))
    assert fixed["folders"] == [] and fixed["created"] == ["grid-00002"]
    assert ScoreWarehouse(root=str(warehouse)).read_rows("quarantine").empty, "a readable folder is no longer reported"


def test_an_unreadable_file_is_set_aside_as_unreadable_and_rechecked_once_readable(tmp_path: Path) -> None:
    storage, warehouse = tmp_path / "storage", tmp_path / "warehouse"
    locked = _write(storage, "grid", "locked", 2)
    mtime = locked.stat().st_mtime
    _lock(locked)
    try:
        state = _cut_unprivileged(storage, warehouse, "")
        state = _cut_unprivileged(storage, warehouse, str(state["cursor"]))
        again = _cut_unprivileged(storage, warehouse, str(state["cursor"]))
    finally:
        _unlock(locked)  # fixed by the operator: content and mtime unchanged
    assert state["created"] == [] and again["created"] == []
    rows = ScoreWarehouse(root=str(warehouse)).read_rows("quarantine")
    assert list(rows["reason"]) == ["unreadable"] and "permission denied" in rows["detail"][0]
    assert locked.stat().st_mtime == mtime
    fixed = _cut_unprivileged(storage, warehouse, str(again["cursor"]))
    fixed = _cut_unprivileged(storage, warehouse, str(fixed["cursor"]))
    assert fixed["created"] == ["grid-00001"]
    assert ScoreWarehouse(root=str(warehouse)).read_rows("quarantine").empty, "a batched file is no longer quarantined"


def test_an_empty_or_preallocated_file_is_quarantined_with_its_own_reason(tmp_path: Path) -> None:
    storage, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    folder = storage / "grid" / "micrographs"
    folder.mkdir(parents=True)
    (folder / "never_started.mrc").write_bytes(b"")
    write_mrc(folder / "preallocated.mrc", np.zeros((64, 64), np.float32), 1.0)
    cut_short = _write(storage, "grid", "cut_short", 4)
    cut_short.write_bytes(cut_short.read_bytes()[:3000])
    resources = {"microscope_storage": _storage(storage, truncated_after_seconds=0.0), "warehouse": warehouse}
    _tick(resources, _tick(resources, None).cursor)
    reasons = warehouse.read_rows("quarantine").set_index("micrograph")["reason"].to_dict()
    assert reasons == {"never_started": "empty", "preallocated": "preallocated", "cut_short": "truncated"}


def test_the_retry_of_an_older_batch_is_queued_ahead_of_newer_batches() -> None:
    """Dagster's run retry inherits its parent's tags: a priority that falls with cut time puts it first."""
    older = BatchManifest("grid-00001", "grid", 1, 1_800_000_000.0, ())
    newer = BatchManifest("grid-00002", "grid", 2, 1_800_000_000.0 + 90.0, ())
    requests = {r.partition_key: r for r in sensors.run_requests_for([older, newer], "sensor")}
    priority = {k: int(r.tags["dagster/priority"]) for k, r in requests.items()}
    assert priority["grid-00001"] > priority["grid-00002"]
