"""Storage sensor, sweep schedule and daily summary schedule.

The sensor turns complete new exposures into acquisition batches (``batching.plan_batches``): it freezes
each batch's manifest in the warehouse, registers the batch as a dynamic partition and requests one run of
``process_batch`` for it.  Bad files never stop it: a corrupt or truncated file is recorded in the
warehouse table ``quarantine`` with its reason and skipped; the rest of the tick goes on.

Each settled file is hashed once per (relative path, size, mtime): the checksums of files not yet in a
manifest are kept in the warehouse document ``checksums/unassigned`` (``batching.Checksums``), read and
rewritten under the manifest lock, and dropped once the file is in a manifest (which carries the checksum
and the mtime it was taken at, for the run) or gone.  A pass hashes for at most
``checksum_seconds_per_tick``, so a backlog is hashed over several ticks, each within Dagster's time limit.

The sensor also registers each batch's session as a partition of ``acquisition_sessions`` (the session
dashboard's partitions).

The sweep schedule catches what a tick could not finish: files the sensor never saw complete (e.g. it was
stopped), manifests whose partition (batch or session) was never registered (a crash between the two
writes) and partitions whose HyperScores were never materialised with no run under way (a run that died).
"""

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg

from cryodecon_assets.intake.batching import (
    CHECKSUMS,
    MANIFESTS,
    BatchManifest,
    Checksums,
    Plan,
    PlanState,
    plan_batches,
    safe_session,
)
from cryodecon_assets.partitions import SESSIONS, acquisition_batches, acquisition_sessions
from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
from cryodecon_resources.storage import FileObservation, StorageScan, UnreadableFolder, sha256_of_file
from cryodecon_science.io.session import exposure_name

PROCESS_JOB = "process_batch"
UNASSIGNED = "unassigned"  # the ``checksums`` document of files not yet in a manifest


@dataclass(frozen=True)
class Ledger:
    """What the manifests of some sessions say: assigned paths, their checksums, next sequence numbers."""

    assigned: set[str]
    checksums: dict[str, str]  # SHA-256 -> the relative path that landed first
    next_sequence: dict[str, int]  # per safe_session name
    manifests: list[BatchManifest]


_PARSED: dict[str, tuple[tuple[int, int], BatchManifest]] = {}  # document path -> (mtime_ns, size), manifest


def _manifest(
    warehouse: ScoreWarehouse, key: str, fresh: dict[str, tuple[tuple[int, int], BatchManifest]]
) -> BatchManifest:
    """A manifest document, parsed once per process while its file keeps its mtime and size (manifests are
    created once; one edited by hand is read again), recorded in ``fresh``."""
    path = str(warehouse.document_path(MANIFESTS, key))
    try:
        info = os.stat(path)
        version = (info.st_mtime_ns, info.st_size)
    except OSError:
        version = (-1, -1)
    parsed = _PARSED.get(path)
    manifest = (
        parsed[1]
        if parsed is not None and parsed[0] == version and version[0] >= 0
        else BatchManifest.from_document(warehouse.read_document(MANIFESTS, key))
    )
    fresh[path] = (version, manifest)
    return manifest


def ledger(warehouse: ScoreWarehouse, sessions: Iterable[str] | None = None) -> Ledger:
    """The manifests (of ``sessions`` only, when given: keys ``<safe_session>-<sequence>``) as a ledger.

    Each tick reads the listing of the manifests; a manifest's file is parsed again only when it changed,
    and only the manifests of the last call stay parsed in memory.
    """
    global _PARSED
    result = Ledger(set(), {}, {}, [])
    keys = warehouse.list_documents(MANIFESTS)
    if sessions is not None:
        prefixes = tuple(f"{safe_session(s)}-" for s in set(sessions))
        keys = [k for k in keys if k.startswith(prefixes)]
    fresh: dict[str, tuple[tuple[int, int], BatchManifest]] = {}
    for key in keys:
        manifest = _manifest(warehouse, key, fresh)
        result.manifests.append(manifest)
        for f in manifest.files:
            result.assigned.add(f.relative_path)
            result.checksums.setdefault(f.sha256, f.relative_path)
        session = safe_session(manifest.session)
        result.next_sequence[session] = max(result.next_sequence.get(session, 1), manifest.sequence + 1)
    _PARSED = fresh
    return result


def _quarantine_key(relative_path: str) -> str:
    """One sensor-stage quarantine row per path: its latest verdict, removed once the file is batched."""
    return "sensor-" + hashlib.sha1(relative_path.encode()).hexdigest()[:16]


def _record_set_aside(warehouse: ScoreWarehouse, row: dict[str, Any], micrograph: str | None) -> None:
    """The sensor-stage ``quarantine`` row of a file or folder (relative_path, session, reason, detail,
    size_bytes, seen_at_s), keyed by its path."""
    stage = {"micrograph": micrograph, "batch": None, "stage": "sensor", "recorded_at": row["seen_at_s"]}
    warehouse.write_rows("quarantine", _quarantine_key(row["relative_path"]), [{**row, **stage}])


def sha256_if_unchanged(storage: MicroscopeStorage, obs: FileObservation) -> str | None:
    """The file's SHA-256, or None when its size or mtime differ from ``obs`` after the read (it was
    written to: the digest may mix old and new bytes)."""
    path = storage.absolute(obs.relative_path)
    digest = sha256_of_file(path)
    info = os.stat(path)
    return digest if (info.st_size, info.st_mtime) == (obs.size_bytes, obs.mtime_s) else None


def load_checksums(warehouse: ScoreWarehouse, storage: MicroscopeStorage) -> Checksums:
    """The stored checksums of unassigned files, hashing for ``checksum_seconds_per_tick`` from now."""
    try:
        document = warehouse.read_document(CHECKSUMS, UNASSIGNED)
    except (FileNotFoundError, ValueError):  # none yet, or unreadable: costs hashing again, nothing else
        document = {}
    return Checksums.from_document(
        document, lambda obs: sha256_if_unchanged(storage, obs), time.monotonic() + storage.checksum_seconds_per_tick
    )


def store_checksums(
    warehouse: ScoreWarehouse, checksums: Checksums, before: dict[str, Any], scan: StorageScan, assigned: set[str]
) -> None:
    """Keep the checksums of files still on storage as they were hashed and in no manifest (and of those
    in folders this scan could not list); rewrite the document only when that changed from ``before``."""
    seen = {obs.relative_path: obs for obs in scan.files}
    unlisted = tuple(f"{folder.relative_path}/" for folder in scan.unreadable_folders)
    kept = {
        path: entry
        for path, entry in checksums.entries.items()
        if path not in assigned
        and (path.startswith(unlisted) or (path in seen and checksums.known(seen[path]) is not None))
    }
    if kept != before:
        warehouse.write_document(CHECKSUMS, UNASSIGNED, Checksums(checksums.hash_file, kept).to_document())


@dataclass(frozen=True)
class CutResult:
    plan: Plan
    created: list[BatchManifest]
    conflicts: list[str]  # batch keys whose manifest already existed: a fault, logged as an error
    unreadable_folders: tuple[UnreadableFolder, ...]  # every folder this pass could not list
    new_unreadable_folders: tuple[UnreadableFolder, ...]  # of those, the ones the previous pass could list
    hashed: int = 0  # files this pass computed a checksum of


def cut_batches(
    storage: MicroscopeStorage,
    warehouse: ScoreWarehouse,
    state: PlanState,
    now_s: float,
    settle_seconds: float,
) -> CutResult:
    """One planning pass over storage; writes new manifests (create-once) and quarantine rows.

    Reading the ledger, planning and writing the manifests happen under the warehouse's manifest lock,
    so the sensor and the sweep (or two daemons) never plan from the same ledger: a file can be in one
    manifest only, whatever order each of them sorts ready files in.  The checksums of unassigned files
    are read and stored under the same lock, stored even when the pass fails (each one is a fact).
    Files already in a manifest before the pass are listed but not ``stat``-ed.
    """
    sessions = [folder.name for folder in storage.session_dirs()]
    scan = storage.scan(skip=ledger(warehouse, sessions).assigned)
    with warehouse.lock(MANIFESTS):
        book = ledger(warehouse, sessions)
        checksums = load_checksums(warehouse, storage)
        before = dict(checksums.entries)
        created: list[BatchManifest] = []
        conflicts: list[str] = []
        try:
            plan = plan_batches(
                scan.files,
                book.assigned,
                state,
                book.next_sequence,
                now_s,
                absolute=lambda rel: str(storage.absolute(rel)),
                checksums=checksums,
                settle_seconds=settle_seconds,
                truncated_after_seconds=storage.truncated_after_seconds,
                max_batch_size=storage.max_batch_size,
                batch_window_seconds=storage.batch_window_seconds,
                known_checksums=book.checksums,
            )
            for manifest in plan.new_batches:
                if warehouse.write_document_once(MANIFESTS, manifest.batch_key, manifest.to_document()):
                    created.append(manifest)
                else:
                    conflicts.append(manifest.batch_key)
        finally:
            in_manifests = book.assigned | {f.relative_path for m in created for f in m.files}
            store_checksums(warehouse, checksums, before, scan, in_manifests)
    for manifest in created:
        for f in manifest.files:
            warehouse.delete_rows("quarantine", _quarantine_key(f.relative_path))
    for q in plan.quarantined:
        _record_set_aside(warehouse, asdict(q), exposure_name(q.relative_path))
    unreadable = {folder.relative_path: folder for folder in scan.unreadable_folders}
    for relative_path in set(state.unreadable_folders) - set(unreadable):
        warehouse.delete_rows("quarantine", _quarantine_key(relative_path))  # listed again: its files are seen
    new_folders = tuple(f for path, f in sorted(unreadable.items()) if path not in state.unreadable_folders)
    for folder in new_folders:
        row = {"relative_path": folder.relative_path, "session": folder.session, "reason": "unreadable_folder"}
        _record_set_aside(warehouse, {**row, "detail": folder.detail, "size_bytes": None, "seen_at_s": now_s}, None)
    plan.state.unreadable_folders = {path: state.unreadable_folders.get(path, now_s) for path in unreadable}
    return CutResult(plan, created, conflicts, scan.unreadable_folders, new_folders, checksums.computed)


def report_cut(log: Any, cut: CutResult) -> None:
    """Log what a pass set aside; an existing manifest is an error, never a silent no-op."""
    for q in cut.plan.quarantined:
        log.warning(f"set aside {q.relative_path}: {q.reason}: {q.detail}")
    for folder in cut.new_unreadable_folders:
        log.warning(f"cannot list {folder.relative_path} (its exposures are not seen): {folder.detail}")
    for key in cut.conflicts:
        log.error(
            f"batch {key}: a manifest with this key already exists in the warehouse, its files stay pending; "
            "the ledger and the manifests disagree (was a manifest copied in or edited by hand?)"
        )


def queue_priority(manifest: BatchManifest) -> int:
    """First cut, first served: ``dagster/priority`` falls by one per minute of cut time.

    The queue otherwise serves runs in the order they were created, so the retry of a run whose worker
    died (created minutes later) would wait behind every batch cut since; it inherits its parent's tags,
    this priority with them, and goes first.  The `gpu` pool's waiting steps are ordered the same way.
    """
    return -int(manifest.cut_at_s // 60)


def run_requests_for(manifests: Sequence[BatchManifest], source: str) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(
            run_key=m.batch_key,
            partition_key=m.batch_key,
            job_name=PROCESS_JOB,
            tags={
                "cryodecon/session": m.session,
                "cryodecon/source": source,
                "cryodecon/exposures": str(len(m.files)),
                "dagster/priority": str(queue_priority(m)),
            },
        )
        for m in manifests
    ]


@dg.sensor(job_name=PROCESS_JOB, minimum_interval_seconds=15, default_status=dg.DefaultSensorStatus.RUNNING)
def microscope_storage_sensor(
    context: dg.SensorEvaluationContext, microscope_storage: MicroscopeStorage, warehouse: ScoreWarehouse
) -> dg.SensorResult:
    """Cut acquisition batches from complete new exposures and request a run for each."""
    state = PlanState.from_cursor(context.cursor)
    cut = cut_batches(microscope_storage, warehouse, state, time.time(), microscope_storage.settle_seconds)
    report_cut(context.log, cut)
    plan, created = cut.plan, cut.created
    return dg.SensorResult(
        run_requests=run_requests_for(created, "sensor"),
        dynamic_partitions_requests=(
            [
                acquisition_batches.build_add_request([m.batch_key for m in created]),
                # the session dashboard's partition (adding a known key again is a no-op)
                acquisition_sessions.build_add_request(sorted({safe_session(m.session) for m in created})),
            ]
            if created
            else []
        ),
        cursor=plan.state.to_cursor(),
        skip_reason=None
        if created
        else f"no complete new batch ({plan.n_pending} files pending"
        + (f", {len(cut.conflicts)} manifest conflicts" if cut.conflicts else "")
        + (f", {len(cut.unreadable_folders)} unreadable folders" if cut.unreadable_folders else "")
        + ")",
    )


@dg.schedule(cron_schedule="*/30 * * * *", job_name=PROCESS_JOB, default_status=dg.DefaultScheduleStatus.RUNNING)
def storage_sweep_schedule(
    context: dg.ScheduleEvaluationContext, microscope_storage: MicroscopeStorage, warehouse: ScoreWarehouse
) -> list[dg.RunRequest] | dg.SkipReason:
    """Every 30 min: cut batches from files the sensor missed and re-request batches that never finished.

    Without the sensor's tick-to-tick memory, stability is judged by age: a file counts once its mtime is
    older than ``settle_seconds`` and its header size matches (same completeness rule otherwise).
    """
    instance = context.instance
    now = time.time()
    # Files whose mtime is already older than the settle window are treated as seen-and-stable.
    state = PlanState(
        pending={
            obs.relative_path: {"size": obs.size_bytes, "mtime": obs.mtime_s, "since": obs.mtime_s}
            for obs in microscope_storage.scan().files
        }
    )
    report_cut(context.log, cut_batches(microscope_storage, warehouse, state, now, microscope_storage.settle_seconds))
    manifests = ledger(warehouse).manifests
    known = set(instance.get_dynamic_partitions(acquisition_batches.name))
    missing_partitions = [m.batch_key for m in manifests if m.batch_key not in known]
    if missing_partitions:
        instance.add_dynamic_partitions(acquisition_batches.name, missing_partitions)
    sessions_known = set(instance.get_dynamic_partitions(SESSIONS))
    missing_sessions = sorted({safe_session(m.session) for m in manifests} - sessions_known)
    if missing_sessions:
        instance.add_dynamic_partitions(SESSIONS, missing_sessions)
    done = instance.get_materialized_partitions(dg.AssetKey("hyperscores"))
    in_flight = {
        run.tags.get("dagster/partition")
        for run in instance.get_runs(
            filters=dg.RunsFilter(
                statuses=[
                    dg.DagsterRunStatus.QUEUED,
                    dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.STARTED,
                ]
            )
        )
    }
    unfinished = [m for m in manifests if m.batch_key not in done and m.batch_key not in in_flight]
    if not unfinished:
        return dg.SkipReason("every batch has HyperScores or a run under way")
    stamp = (
        context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else str(int(now))
    )
    return [
        dg.RunRequest(
            run_key=f"sweep-{m.batch_key}-{stamp}",
            partition_key=m.batch_key,
            job_name=PROCESS_JOB,
            tags={
                "cryodecon/session": m.session,
                "cryodecon/source": "sweep",
                "dagster/priority": str(queue_priority(m)),
            },
        )
        for m in unfinished
    ]
