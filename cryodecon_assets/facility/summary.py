"""Daily summary of the facility's output: one row per session and day, from the warehouse."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np

from cryodecon_assets.partitions import summary_days
from cryodecon_resources import ScoreWarehouse
from cryodecon_resources.tables import table_metadata


@dg.asset(
    partitions_def=summary_days,
    group_name="facility_reports",
    # Reads every batch's HyperScores (filtered by cut time), so each day depends on all batches.
    deps=[dg.AssetDep("hyperscores", partition_mapping=dg.AllPartitionMapping())],
    description="Per session and UTC day: exposures scored, quarantined, median HyperScore, defocus and "
    "CTF fit resolution (warehouse table `daily_summary`).",
)
def daily_summary(context: dg.AssetExecutionContext, warehouse: ScoreWarehouse) -> dg.MaterializeResult:
    day = context.partition_key
    start = datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()
    end = start + 86400.0
    scores = warehouse.read_rows("hyperscores")
    ctf = warehouse.read_rows("ctf")
    quarantine = warehouse.read_rows("quarantine")
    rows = []
    if not scores.empty:
        today = scores[(scores["cut_at_s"] >= start) & (scores["cut_at_s"] < end)]
        if not ctf.empty and not today.empty:
            today = today.merge(
                ctf[["micrograph", "batch", "defocus_u_angstrom", "fit_resolution_angstrom"]],
                on=["micrograph", "batch"],
                how="left",
            )
        for session, group in today.groupby("session"):
            q_today = (
                quarantine[(quarantine["recorded_at"] >= start) & (quarantine["recorded_at"] < end)]
                if not quarantine.empty
                else quarantine
            )
            n_quarantined = (
                int((q_today["batch"].astype(str).str.startswith(f"{session}-")).sum()) if not q_today.empty else 0
            )
            rows.append(
                {
                    "day": day,
                    "session": session,
                    "exposures_scored": len(group),
                    "exposures_quarantined": n_quarantined,
                    "median_hyperscore": float(np.median(group["hyperscore"])),
                    "median_defocus_u_angstrom": float(np.nanmedian(group["defocus_u_angstrom"]))
                    if "defocus_u_angstrom" in group
                    else float("nan"),
                    "median_fit_resolution_angstrom": float(np.nanmedian(group["fit_resolution_angstrom"]))
                    if "fit_resolution_angstrom" in group
                    else float("nan"),
                }
            )
    warehouse.write_rows("daily_summary", day, rows)
    return dg.MaterializeResult(
        metadata={
            "sessions": len(rows),
            "exposures_scored": sum(r["exposures_scored"] for r in rows),
            **table_metadata("daily_summary", rows),
        }
    )


daily_summary_job = dg.define_asset_job("daily_summary_job", selection=[daily_summary])


@dg.schedule(
    cron_schedule="30 0 * * *",
    job=daily_summary_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_summary_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """At 00:30 UTC, summarise the day that just ended."""
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"daily-summary-{day}", partition_key=day)
