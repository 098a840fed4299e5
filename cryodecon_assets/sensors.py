"""Storage sensor, sweep schedule and daily summary schedule.

The sensor turns complete new exposures into acquisition batches (``batching.plan_batches``): it freezes
each batch's manifest in the warehouse, registers the batch as a dynamic partition and requests one run of
``process_batch`` for it.  Bad files never stop it: a corrupt or truncated file is recorded in the
warehouse table ``quarantine`` with its reason and skipped; the rest of the tick goes on.

The sweep schedule catches what a tick could not finish: files the sensor never saw complete (e.g. it was
stopped), manifests whose partition was never registered (a crash between the two writes) and partitions
whose HyperScores were never materialised with no run under way (a run that died).
"""

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict

import dagster as dg

from cryodecon_assets.batching import (
    MANIFESTS,
    BatchManifest,
    Plan,
    PlanState,
    plan_batches,
    safe_session,
)
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
from cryodecon_resources.storage import sha256_of_file

PROCESS_JOB = "process_batch"


def ledger(
    warehouse: ScoreWarehouse, sessions: Iterable[str] | None = None
) -> tuple[set[str], dict[str, int], list[BatchManifest]]:
    """Paths already assigned to a batch, next sequence number per session, and the manifests.

    With ``sessions``, only the manifests of those sessions are read (keys ``<session>-<sequence>``):
    a tick reads the ledger of the sessions on storage now, not of every batch ever cut.
    """
    assigned: set[str] = set()
    next_sequence: dict[str, int] = {}
    manifests = []
    keys = warehouse.list_documents(MANIFESTS)
    if sessions is not None:
        prefixes = tuple(f"{safe_session(s)}-" for s in set(sessions))
        keys = [k for k in keys if k.startswith(prefixes)]
    for key in keys:
        manifest = BatchManifest.from_document(warehouse.read_document(MANIFESTS, key))
        manifests.append(manifest)
        assigned.update(f.relative_path for f in manifest.files)
        session = safe_session(manifest.session)
        next_sequence[session] = max(next_sequence.get(session, 1), manifest.sequence + 1)
    return assigned, next_sequence, manifests


def cut_batches(
    storage: MicroscopeStorage,
    warehouse: ScoreWarehouse,
    state: PlanState,
    now_s: float,
    settle_seconds: float,
) -> tuple[Plan, list[BatchManifest]]:
    """One planning pass over storage; writes new manifests (create-once) and quarantine rows."""
    observations = list(storage.scan())
    assigned, next_sequence, _ = ledger(warehouse, {obs.session for obs in observations})
    plan = plan_batches(
        observations,
        assigned,
        state,
        {safe_session(k): v for k, v in next_sequence.items()},
        now_s,
        absolute=lambda rel: str(storage.absolute(rel)),
        checksum=lambda rel: sha256_of_file(storage.absolute(rel)),
        settle_seconds=settle_seconds,
        truncated_after_seconds=storage.truncated_after_seconds,
        max_batch_size=storage.max_batch_size,
        batch_window_seconds=storage.batch_window_seconds,
    )
    created = [m for m in plan.new_batches if warehouse.write_document_once(MANIFESTS, m.batch_key, m.to_document())]
    for q in plan.quarantined:
        key = "sensor-" + hashlib.sha1(f"{q.relative_path}:{q.size_bytes}".encode()).hexdigest()[:16]
        row = asdict(q)
        row.update(
            {
                "micrograph": q.relative_path.rsplit("/", 1)[-1].split(".")[0],
                "batch": None,
                "stage": "sensor",
                "recorded_at": q.seen_at_s,
            }
        )
        warehouse.write_rows("quarantine", key, [row])
    return plan, created


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
    plan, created = cut_batches(microscope_storage, warehouse, state, time.time(), microscope_storage.settle_seconds)
    for q in plan.quarantined:
        context.log.warning(f"quarantined {q.relative_path}: {q.reason}: {q.detail}")
    return dg.SensorResult(
        run_requests=run_requests_for(created, "sensor"),
        dynamic_partitions_requests=(
            [acquisition_batches.build_add_request([m.batch_key for m in created])] if created else []
        ),
        cursor=plan.state.to_cursor(),
        skip_reason=None if created else f"no complete new batch ({plan.n_pending} files pending)",
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
            for obs in microscope_storage.scan()
        }
    )
    cut_batches(microscope_storage, warehouse, state, now, microscope_storage.settle_seconds)
    _, _, manifests = ledger(warehouse)
    known = set(instance.get_dynamic_partitions(acquisition_batches.name))
    missing_partitions = [m.batch_key for m in manifests if m.batch_key not in known]
    if missing_partitions:
        instance.add_dynamic_partitions(acquisition_batches.name, missing_partitions)
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
            tags={"cryodecon/session": m.session, "cryodecon/source": "sweep"},
        )
        for m in unfinished
    ]
