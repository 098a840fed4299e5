"""Checksums of storage files: each file hashed once per (path, size, mtime), by the sensor, the sweep and the
run together; again only when its size or mtime changes (issue #20, item 3)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from cryodecon_assets.batch import raw
from cryodecon_assets.batch.common import ChangedSinceCutError
from cryodecon_assets.intake import sensors
from cryodecon_assets.intake.batching import CHECKSUMS, MANIFESTS, BatchManifest, PlanState
from cryodecon_assets.intake.sensors import UNASSIGNED, cut_batches, ledger
from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
from cryodecon_resources.storage import FileObservation, _pattern_regex, sha256_of_file
from cryodecon_science.io.gain import is_gain_reference_name
from cryodecon_science.io.mrc import write_mrc

SETTLE, WINDOW = 30.0, 300.0


def _mrc(path: Path, seed: int) -> Path:
    write_mrc(path, np.random.default_rng(seed).poisson(20.0, size=(32, 32)).astype(np.float32), 1.0)
    return path


def _write(root: Path, name: str, seed: int) -> Path:
    return _mrc(root / "grid" / "micrographs" / f"{name}.mrc", seed)


def _storage(root: Path, **settings: float) -> MicroscopeStorage:
    values = {"settle_seconds": SETTLE, "batch_window_seconds": WINDOW, "max_batch_size": 2, **settings}
    return MicroscopeStorage(root=str(root), **values)  # type: ignore[arg-type]


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every checksum computation, by the sensor or the sweep (``sensors``) or the run (``raw``), by file name."""
    counts: Counter[str] = Counter()

    def counting(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
        counts[Path(path).name] += 1
        return sha256_of_file(path, chunk_bytes)

    monkeypatch.setattr(sensors, "sha256_of_file", counting)
    monkeypatch.setattr(raw, "sha256_of_file", counting)
    return counts


class _Passes:
    """Planning passes as the sensor makes them, on a clock the test sets (``cut_batches(now_s=...)``)."""

    def __init__(self, storage: MicroscopeStorage, warehouse: ScoreWarehouse, hashes: Counter[str]) -> None:
        self.storage, self.warehouse, self.hashes = storage, warehouse, hashes
        self.state = PlanState()

    def at(self, now_s: float, state: PlanState | None = None) -> tuple[list[str], int]:
        """One pass at ``now_s``: the batches it cut, and how many checksums it computed."""
        before = sum(self.hashes.values())
        cut = cut_batches(self.storage, self.warehouse, state or self.state, now_s, self.storage.settle_seconds)
        self.state = cut.plan.state
        assert cut.hashed == sum(self.hashes.values()) - before
        return [m.batch_key for m in cut.created], cut.hashed


def _manifests(warehouse: ScoreWarehouse) -> list[BatchManifest]:
    return ledger(warehouse).manifests


def _manifest_named(warehouse: ScoreWarehouse, key: str) -> BatchManifest:
    return BatchManifest.from_document(warehouse.read_document(MANIFESTS, key))


def _stored_checksums(warehouse: ScoreWarehouse) -> set[str]:
    if not warehouse.document_path(CHECKSUMS, UNASSIGNED).exists():
        return set()
    return set(warehouse.read_document(CHECKSUMS, UNASSIGNED)["files"])


def test_each_file_is_hashed_once_across_settling_waiting_restart_sweep_and_run(
    tmp_path: Path, hashes: Counter[str]
) -> None:
    storage_root, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    for i in range(3):
        _write(storage_root, f"mic_{i}", i)
    passes = _Passes(_storage(storage_root), warehouse, hashes)
    assert passes.at(0.0) == ([], 0), "first seen"
    assert passes.at(10.0) == ([], 0), "still settling: nothing is hashed"
    assert passes.at(40.0) == (["grid-00001"], 3), "settled: each file hashed, a full batch cut"
    for now in (55.0, 70.0, 150.0, 290.0):
        assert passes.at(now) == ([], 0), "the third file waits for the batch window, not hashed again"
    assert _stored_checksums(warehouse) == {"grid/micrographs/mic_2.mrc"}, "only files in no manifest are kept"
    # The daemon restarts without its cursor: the waiting file settles again, and is not hashed again.
    assert passes.at(400.0, PlanState()) == ([], 0)
    assert passes.at(440.0) == ([], 0)
    assert passes.at(740.0) == (["grid-00002"], 0)
    assert not _stored_checksums(warehouse)
    # The sweep (every file settled by age) finds nothing new and hashes nothing.
    files = passes.storage.scan().files
    swept = PlanState({o.relative_path: {"size": o.size_bytes, "mtime": o.mtime_s, "since": 0.0} for o in files})
    assert passes.at(2000.0, swept) == ([], 0)
    # The run checks every file against its manifest without hashing it again.
    for manifest in _manifests(warehouse):
        for entry in manifest.files:
            assert entry.mtime_s == os.stat(storage_root / entry.relative_path).st_mtime
            raw.check_unchanged_since_cut(storage_root / entry.relative_path, entry)
    assert hashes == {"mic_0.mrc": 1, "mic_1.mrc": 1, "mic_2.mrc": 1}


def test_the_sensor_hashes_each_file_once_over_many_ticks_and_keeps_checksums_out_of_its_cursor(
    tmp_path: Path, hashes: Counter[str]
) -> None:
    storage_root = tmp_path / "storage"
    for i in range(3):
        _write(storage_root, f"mic_{i}", i)
    resources = {
        "microscope_storage": _storage(storage_root, settle_seconds=0.0, batch_window_seconds=3600.0),
        "warehouse": ScoreWarehouse(root=str(tmp_path / "warehouse")),
    }
    cursor, cut = None, []
    with dg.instance_for_test() as instance:
        for _ in range(6):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            result = sensors.microscope_storage_sensor(context)
            assert isinstance(result, dg.SensorResult)
            cursor = result.cursor
            cut += [r.partition_key for r in result.run_requests or []]
    assert cut == ["grid-00001"]
    assert hashes == {"mic_0.mrc": 1, "mic_1.mrc": 1, "mic_2.mrc": 1}
    assert "sha256" not in (cursor or "") and "mic_2.mrc" in (cursor or ""), "the third file waits, unhashed there"


def test_a_file_whose_size_or_mtime_changes_settles_again_and_is_hashed_again(
    tmp_path: Path, hashes: Counter[str]
) -> None:
    storage_root, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    path = _write(storage_root, "mic_0", 0)
    passes = _Passes(_storage(storage_root, max_batch_size=10), warehouse, hashes)
    passes.at(0.0)
    assert passes.at(40.0) == ([], 1), "hashed, then waits for the batch window"
    # Rewritten in place with other bytes of the same size: a new file to the sensor.
    replaced = _write(tmp_path / "elsewhere", "mic_0", 99).read_bytes()
    path.write_bytes(replaced)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert passes.at(50.0) == ([], 0), "seen changed: settles again, not hashed yet"
    assert passes.at(60.0) == ([], 0)
    assert passes.at(90.0) == ([], 1), "settled again: hashed again"
    # Touched only (same bytes, new mtime): hashed once more, then cut with the checksum of its bytes.
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    passes.at(100.0)
    assert passes.at(130.0) == ([], 1)
    assert passes.at(500.0) == (["grid-00001"], 0)
    [entry] = _manifests(warehouse)[0].files
    assert entry.sha256 == sha256_of_file(path) and entry.mtime_s == 2.0
    assert hashes == {"mic_0.mrc": 3}


def test_a_file_written_to_while_it_is_hashed_settles_again(
    tmp_path: Path, hashes: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage_root, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    path = _write(storage_root, "mic_0", 0)
    counting: Callable[[Path], str] = sensors.sha256_of_file  # type: ignore[attr-defined]

    def rewritten_while_read(target: Path) -> str:
        digest = counting(target)
        if hashes[Path(target).name] == 1:  # the facility's copy tool writes the file again meanwhile
            Path(target).write_bytes(_mrc(tmp_path / "other.mrc", 7).read_bytes())
            os.utime(target, (5.0, 5.0))
        return digest

    monkeypatch.setattr(sensors, "sha256_of_file", rewritten_while_read)
    passes = _Passes(_storage(storage_root, batch_window_seconds=0.0, max_batch_size=1), warehouse, hashes)
    passes.at(0.0)
    assert passes.at(40.0) == ([], 1), "the digest of a file that changed while read is dropped"
    assert not _stored_checksums(warehouse)
    assert passes.at(50.0) == ([], 0), "settles again"
    assert passes.at(90.0) == (["grid-00001"], 1)
    assert _manifests(warehouse)[0].files[0].sha256 == sha256_of_file(path)
    assert hashes == {"mic_0.mrc": 2}


def test_the_run_hashes_only_a_file_whose_size_or_mtime_changed(tmp_path: Path, hashes: Counter[str]) -> None:
    storage_root, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    paths = [_write(storage_root, f"mic_{i}", i) for i in range(4)]
    passes = _Passes(_storage(storage_root, max_batch_size=4), warehouse, hashes)
    passes.at(0.0)
    assert passes.at(40.0) == (["grid-00001"], 4)
    entries = {Path(e.relative_path).stem: e for e in _manifests(warehouse)[0].files}
    hashes.clear()
    raw.check_unchanged_since_cut(paths[0], entries["mic_0"])
    assert not hashes, "same size and mtime: the manifest's checksum stands"
    os.utime(paths[1], (5.0, 5.0))
    raw.check_unchanged_since_cut(paths[1], entries["mic_1"])
    assert hashes == {"mic_1.mrc": 1}, "touched: hashed, same bytes, accepted"
    data = bytearray(paths[2].read_bytes())
    data[-1] ^= 1
    paths[2].write_bytes(bytes(data))
    with pytest.raises(ChangedSinceCutError, match="checksum"):
        raw.check_unchanged_since_cut(paths[2], entries["mic_2"])
    with open(paths[3], "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ChangedSinceCutError, match="size"):
        raw.check_unchanged_since_cut(paths[3], entries["mic_3"])
    assert hashes == {"mic_1.mrc": 1, "mic_2.mrc": 1}, "a size change needs no hash"
    legacy = dataclasses.replace(entries["mic_0"], mtime_s=None)
    raw.check_unchanged_since_cut(paths[0], legacy)
    assert hashes["mic_0.mrc"] == 1, "a manifest cut before mtimes were recorded: hashed, as before"
    document = _manifests(warehouse)[0].to_document()
    files = [{k: v for k, v in f.items() if k != "mtime_s"} for f in document["files"]]  # type: ignore[attr-defined]
    assert {f.mtime_s for f in BatchManifest.from_document({**document, "files": files}).files} == {None}


def test_a_pass_hashes_within_its_budget_and_the_rest_waits_without_a_partial_batch(
    tmp_path: Path, hashes: Counter[str]
) -> None:
    """A backlog: every pass hashes at least one file and stops at the budget (here 0 s: one file a pass);
    the session cuts full batches only until all its ready files are hashed.  Nothing lost, nothing twice."""
    storage_root, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    for i in range(5):
        _write(storage_root, f"mic_{i}", i)
    storage = _storage(storage_root, batch_window_seconds=0.0, checksum_seconds_per_tick=0.0)
    passes = _Passes(storage, warehouse, hashes)
    passes.at(0.0)
    results = [passes.at(40.0 + i) for i in range(6)]
    assert [n for _, n in results] == [1, 1, 1, 1, 1, 0]
    assert [keys for keys, _ in results] == [[], ["grid-00001"], [], ["grid-00002"], ["grid-00003"], []]
    assigned = [f.relative_path for m in _manifests(warehouse) for f in m.files]
    assert sorted(assigned) == [f"grid/micrographs/mic_{i}.mrc" for i in range(5)]
    assert set(hashes.values()) == {1}


def test_stored_checksums_are_dropped_for_files_gone_or_changed(tmp_path: Path, hashes: Counter[str]) -> None:
    storage_root, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    paths = [_write(storage_root, f"mic_{i}", i) for i in range(3)]
    passes = _Passes(_storage(storage_root, max_batch_size=10), warehouse, hashes)
    passes.at(0.0)
    assert passes.at(40.0) == ([], 3)
    assert len(_stored_checksums(warehouse)) == 3
    paths[0].unlink()
    os.utime(paths[1], (5.0, 5.0))
    assert passes.at(50.0) == ([], 0)
    assert _stored_checksums(warehouse) == {"grid/micrographs/mic_2.mrc"}
    # A broken document costs hashing again, nothing else.
    warehouse.document_path(CHECKSUMS, UNASSIGNED).write_text("{not json")
    assert passes.at(60.0) == ([], 1)
    assert passes.at(400.0) == (["grid-00001"], 1)
    assert [Path(f.relative_path).name for f in _manifests(warehouse)[0].files] == ["mic_2.mrc", "mic_1.mrc"]
    assert hashes == {"mic_0.mrc": 1, "mic_1.mrc": 2, "mic_2.mrc": 2}


def _reference_scan(storage: MicroscopeStorage) -> list[FileObservation]:
    """The listing as ``os.walk`` gave it before ``scan`` used ``os.scandir`` directly."""
    root = Path(storage.root)
    patterns = [_pattern_regex(p) for p in storage.patterns]
    files = []
    for session_dir in storage.session_dirs():
        visited: set[tuple[int, int]] = set()
        for folder, subfolders, names in os.walk(session_dir, followlinks=True):
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                subfolders[:] = []
                continue
            visited.add((info.st_dev, info.st_ino))
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            prefix = os.path.relpath(folder, session_dir)
            for name in sorted(names):
                relative = name if prefix == "." else f"{prefix}/{name}"
                if name.startswith(".") or not any(p.match(relative) for p in patterns):
                    continue
                path = Path(folder) / name
                try:
                    found = path.stat()
                except OSError:
                    continue
                if stat.S_ISREG(found.st_mode):
                    relative_path = str(path.relative_to(root))
                    size, mtime, ctime = found.st_size, found.st_mtime, found.st_ctime
                    files.append(FileObservation(relative_path, session_dir.name, size, mtime, ctime))
    return files


def test_the_scan_lists_what_os_walk_listed(tmp_path: Path) -> None:
    """Same files, same order: nested EPU folders, SerialEM stacks, hidden names, links and a link loop; gain
    references (SerialEM's CountRef, EPU's *gain, *gain*ref*) beside the data are not exposures."""
    root = tmp_path / "storage"
    epu = root / "Krios1.grid 2" / "Images-Disc1"
    for square in ("GridSquare_9", "GridSquare_10"):
        for hole in range(3):
            _mrc(epu / square / "Data" / f"FoilHole_{hole}_Data_1_2.mrc", hole)
    data = epu / "GridSquare_9" / "Data"
    for name in (".FoilHole_7_Data_1_2.mrc.part", "FoilHole_8_Data_1_2.xml", "FoilHole_8_Data_1_2.jpg"):
        (data / name).write_bytes(b"x")
    serial = root / "serialem"
    serial.mkdir(parents=True)
    for name in ("stack_001.tif", "stack_001.tif.mdoc", "a.eer", "b.mrc"):
        (serial / name).write_bytes(b"x" * 10)
    (serial / "c.mrc").symlink_to(serial / "b.mrc")
    (serial / "dangling.mrc").symlink_to(serial / "missing.mrc")
    (serial / "micrographs").symlink_to(data)
    (epu / "GridSquare_10" / "Data" / "loop").symlink_to(epu)
    _mrc(root / "plain" / ".snapshot" / "micrographs" / "old.mrc", 1)
    _mrc(root / "plain" / "micrographs" / "new.mrc", 2)
    _mrc(serial / "CountRef_stack.mrc", 3)
    _mrc(data / "Gain_Ref.mrc", 4)
    storage = MicroscopeStorage(root=str(root))
    scan = storage.scan()
    assert list(scan.files) == [o for o in _reference_scan(storage) if not is_gain_reference_name(o.relative_path)]
    assert {o.relative_path for o in scan.files} == {
        *(
            f"Krios1.grid 2/Images-Disc1/GridSquare_{g}/Data/FoilHole_{h}_Data_1_2.mrc"
            for g in (9, 10)
            for h in range(3)
        ),
        "serialem/stack_001.tif",
        "serialem/a.eer",
        "serialem/b.mrc",
        "serialem/c.mrc",
        *(f"serialem/micrographs/FoilHole_{h}_Data_1_2.mrc" for h in range(3)),
        "plain/micrographs/new.mrc",
    }
    assert not scan.unreadable_folders
    skipped = {"serialem/b.mrc", "plain/micrographs/new.mrc"}
    assert list(storage.scan(skip=skipped).files) == [o for o in scan.files if o.relative_path not in skipped]


def test_the_ledger_reads_a_new_or_edited_manifest_again(tmp_path: Path, hashes: Counter[str]) -> None:
    """Manifests stay parsed between ticks, but one written since (or edited by hand) is read again."""
    storage_root, warehouse = tmp_path / "storage", ScoreWarehouse(root=str(tmp_path / "warehouse"))
    for i in range(4):
        _write(storage_root, f"mic_{i}", i)
    passes = _Passes(_storage(storage_root, batch_window_seconds=0.0), warehouse, hashes)
    passes.at(0.0)
    passes.at(40.0)
    assert len(ledger(warehouse, ["grid"]).assigned) == 4
    document = warehouse.read_document(MANIFESTS, "grid-00002")
    path = warehouse.document_path(MANIFESTS, "grid-00002")
    path.write_text(json.dumps({**document, "files": document["files"][:1]}))
    os.utime(path, ns=(path.stat().st_mtime_ns + 1_000_000, path.stat().st_mtime_ns + 1_000_000))
    assert len(ledger(warehouse, ["grid"]).assigned) == 3
    _write(storage_root, "mic_4", 4)
    passes.at(50.0)
    passes.at(90.0)
    assert ledger(warehouse, ["grid"]).next_sequence == {"grid": 4}
    names = [Path(f.relative_path).stem for f in _manifest_named(warehouse, "grid-00003").files]
    assert names == ["mic_3", "mic_4"], "the file edited out of its manifest is batched again, with the new one"
