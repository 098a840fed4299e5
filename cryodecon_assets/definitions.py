"""The one ``Definitions`` of the cryodecon code location, assembled explicitly."""

from __future__ import annotations

import dagster as dg

from cryodecon_assets.batch import BATCH_ASSETS
from cryodecon_assets.execution import batch_executor
from cryodecon_assets.facility.dashboard import build_dashboard_sensor, session_dashboard, session_dashboard_job
from cryodecon_assets.facility.maintenance import (
    impact_model,
    impact_model_job,
    impact_model_schedule,
    library_maintenance_job,
    library_maintenance_schedule,
    score_weights,
    score_weights_job,
    score_weights_schedule,
    structure_library_index,
)
from cryodecon_assets.facility.summary import daily_summary, daily_summary_job, daily_summary_schedule
from cryodecon_assets.intake.sensors import PROCESS_JOB, microscope_storage_sensor, storage_sweep_schedule
from cryodecon_resources import Settings, build_resources

# By default one run processes one batch through the whole lineage in one process: per-step processes
# would re-import torch for each of the eight steps (~19 s vs 6–8 s for a small run, measured).  On Celery
# workers (CRYODECON_EXECUTOR=celery) each step is a task on a long-lived worker that imported torch once.
process_batch = dg.define_asset_job(
    PROCESS_JOB,
    selection=dg.AssetSelection.assets(*BATCH_ASSETS),
    executor_def=batch_executor(),
    description="Process one acquisition batch: raw micrographs to HyperScores.",
)
# Each successful batch run requests a redraw of its session's dashboard.
session_dashboard_sensor = build_dashboard_sensor(process_batch)


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The code location; ``settings`` default to the environment's, whose paths the runs resolve as EnvVars."""
    resources = (
        build_resources(settings, env_vars=False)
        if settings
        else build_resources(Settings.from_environment(), env_vars=True)
    )
    return dg.Definitions(
        assets=[*BATCH_ASSETS, daily_summary, session_dashboard, score_weights, structure_library_index, impact_model],
        jobs=[
            process_batch,
            session_dashboard_job,
            daily_summary_job,
            score_weights_job,
            library_maintenance_job,
            impact_model_job,
        ],
        sensors=[microscope_storage_sensor, session_dashboard_sensor],
        schedules=[
            storage_sweep_schedule,
            daily_summary_schedule,
            score_weights_schedule,
            library_maintenance_schedule,
            impact_model_schedule,
        ],
        resources=resources.as_dict(),
    )


defs = build_definitions()


def process_batch_job() -> dg.JobDefinition:
    """``process_batch`` as resolved by the code location: the target of ``dg.reconstructable`` for runs that
    execute in other processes (Celery workers load it from this module)."""
    return defs.resolve_job_def(PROCESS_JOB)
