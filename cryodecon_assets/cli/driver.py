"""Drive the real sensor -> run path on a persistent instance, without the daemon.

``dagster dev`` / ``dagster-daemon`` tick the sensor on their own; this module does the same thing from the
command line (``cryodecon demo``, ``cryodecon tick``): evaluate ``microscope_storage_sensor`` against the
instance, apply its dynamic-partition requests, and execute each run request in process, tagged exactly as
the daemon tags them (``dagster/run_key``, ``dagster/sensor_name``), skipping run keys that already ran.
After a tick's batch runs it redraws the dashboard of each session a run succeeded for, as
``session_dashboard_sensor`` does under the daemon.
The cursor is kept in ``$DAGSTER_HOME/cli_sensor_cursor.json``; the batch ledger is in the warehouse, so
a lost cursor costs one settle period, never a duplicate.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from cryodecon_assets.facility.dashboard import DASHBOARD_JOB, session_of_batch
from cryodecon_assets.intake.sensors import PROCESS_JOB, microscope_storage_sensor
from cryodecon_assets.partitions import SESSIONS

SENSOR_NAME = microscope_storage_sensor.name


@dataclass
class DriveReport:
    ticks: int = 0
    partitions_added: list[str] = field(default_factory=list)
    runs: dict[str, bool] = field(default_factory=dict)  # batch -> success
    skipped_run_keys: list[str] = field(default_factory=list)
    dashboards: dict[str, bool] = field(default_factory=dict)  # session partition -> success


def _cursor_path(instance: dg.DagsterInstance) -> Path:
    return Path(instance.root_directory) / "cli_sensor_cursor.json"


def _load_cursor(instance: dg.DagsterInstance) -> str | None:
    path = _cursor_path(instance)
    return json.loads(path.read_text()).get("cursor") if path.exists() else None


def _save_cursor(instance: dg.DagsterInstance, cursor: str | None) -> None:
    path = _cursor_path(instance)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps({"cursor": cursor}))
    os.replace(tmp, path)


def tick_once(
    instance: dg.DagsterInstance, defs: dg.Definitions, report: DriveReport, log_level: str = "INFO"
) -> dg.SensorResult:
    # A context manager: resources with a teardown (the device lease) are built and torn down in it.
    with dg.build_sensor_context(
        instance=instance,
        cursor=_load_cursor(instance),
        resources=dict(defs.resources or {}),
        definitions=defs,
    ) as context:
        result = microscope_storage_sensor(context)
    assert isinstance(result, dg.SensorResult)
    report.ticks += 1
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            new = [
                k for k in request.partition_keys if not instance.has_dynamic_partition(request.partitions_def_name, k)
            ]
            if new:
                instance.add_dynamic_partitions(request.partitions_def_name, new)
                report.partitions_added.extend(new)
    _save_cursor(instance, result.cursor)  # the daemon also stores the cursor before launching runs
    job = defs.resolve_job_def(PROCESS_JOB)
    sessions: set[str] = set()
    for run_request in result.run_requests or []:
        existing = instance.get_runs(
            filters=dg.RunsFilter(
                tags={"dagster/run_key": run_request.run_key or "", "dagster/sensor_name": SENSOR_NAME}
            ),
            limit=1,
        )
        if existing:
            report.skipped_run_keys.append(str(run_request.run_key))
            continue
        tags = {
            **run_request.tags,
            "dagster/run_key": str(run_request.run_key),
            "dagster/sensor_name": SENSOR_NAME,
        }
        success = execute_batch(instance, job, str(run_request.partition_key), tags, log_level)
        report.runs[str(run_request.partition_key)] = success
        if success:
            sessions.add(session_of_batch(str(run_request.partition_key)))
    for session in sorted(sessions):
        refresh_dashboard(instance, defs, session, report, log_level)
    return result


def execute_batch(
    instance: dg.DagsterInstance, job: dg.JobDefinition, batch: str, tags: Mapping[str, str], log_level: str = "INFO"
) -> bool:
    """Run ``process_batch`` for one batch from this process.  With the in-process executor the steps run here;
    with another (``CRYODECON_EXECUTOR=celery``) this process orchestrates, as a run worker launched by the
    daemon would, and the steps run where the executor sends them, loading the job from the code location."""
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if job.executor_def.name == dg.in_process_executor.name:
        return job.execute_in_process(
            run_config=run_config, instance=instance, partition_key=batch, tags=tags, raise_on_error=False
        ).success
    from cryodecon_assets.definitions import process_batch_job

    with dg.execute_job(
        dg.reconstructable(process_batch_job),
        instance=instance,
        run_config=run_config,
        tags={**tags, "dagster/partition": batch},
        raise_on_error=False,
    ) as result:
        return result.success


def refresh_dashboard(
    instance: dg.DagsterInstance, defs: dg.Definitions, session: str, report: DriveReport, log_level: str = "INFO"
) -> bool:
    """Materialise ``session_dashboard`` for a session partition (registered first if need be)."""
    if not instance.has_dynamic_partition(SESSIONS, session):
        instance.add_dynamic_partitions(SESSIONS, [session])
    outcome = defs.resolve_job_def(DASHBOARD_JOB).execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance,
        partition_key=session,
        tags={"cryodecon/source": "cli"},
        raise_on_error=False,
    )
    report.dashboards[session] = outcome.success
    return outcome.success


def drive(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    settle_seconds: float,
    max_ticks: int = 10,
    log_level: str = "INFO",
) -> DriveReport:
    """Tick until nothing is pending (every complete file batched and run) or ``max_ticks``."""
    report = DriveReport()
    for _ in range(max_ticks):
        result = tick_once(instance, defs, report, log_level)
        pending = json.loads(result.cursor or "{}").get("pending", {})
        if not pending:
            break
        time.sleep(settle_seconds + 0.05)
    return report
