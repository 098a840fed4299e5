"""The live session dashboard: one partition per acquisition session, refreshed after each batch.

``session_dashboard`` summarises a session over the warehouse, like ``daily_summary``: per exposure in
acquisition order the defocus, CTF fit resolution, ice thickness index, total motion, particles and
HyperScore, the accept rate per batch, their histograms, a grid-square / foil-hole map coloured by
HyperScore and the latest 2D class gallery.  The figures go into the materialisation's metadata as Markdown
images and into a self-contained page, ``<outputs>/sessions/<session>/dashboard.html``.

Refresh: the storage sensor registers a session's partition (``acquisition_sessions``) when it cuts the
session's batches, and ``session_dashboard_sensor`` (a run-status sensor on ``process_batch``) requests a
``session_dashboard_job`` run for the batch's session each time a batch run succeeds; ``cryodecon demo`` /
``cryodecon tick`` do the same after their runs (``cli/driver.py``).
"""

import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import mrcfile
import numpy as np
import pandas as pd

from cryodecon_assets.batch.figures import class_gallery, picture_data_uri
from cryodecon_assets.facility import dashboard_figures as figures
from cryodecon_assets.intake.batching import safe_session
from cryodecon_assets.partitions import SESSIONS, acquisition_sessions
from cryodecon_resources import OutputStore, ScoreWarehouse

DASHBOARD_JOB = "session_dashboard_job"
DASHBOARD_FILENAME = "dashboard.html"
# The batch assets whose warehouse rows the dashboard reads (lineage only: it reads the warehouse).
SUMMARISED = ("raw_micrographs", "ctf_estimates", "particles", "classes_2d", "exposure_curation", "hyperscores")


def _session_rows(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    if frame.empty or "session" not in frame:
        return frame.iloc[0:0]
    return frame[frame["session"].astype(str).map(safe_session) == key]


def _batch_rows(frame: pd.DataFrame, batches: set[str]) -> pd.DataFrame:
    return frame[frame["batch"].isin(batches)] if not frame.empty and "batch" in frame else frame.iloc[0:0]


def _timestamp_s(value: object) -> float:
    if not isinstance(value, str) or not value:
        return float("nan")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("nan")


def _pick(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """``frame``'s key and ``columns`` (source -> name), null columns where the table lacks one."""
    out = frame[["micrograph", "batch"]].copy() if not frame.empty else pd.DataFrame(columns=["micrograph", "batch"])
    for source, name in columns.items():
        out[name] = frame[source] if source in frame else np.nan
    return out


def session_frame(warehouse: ScoreWarehouse, key: str) -> tuple[str | None, pd.DataFrame]:
    """(the session's name, one row per exposure of session partition ``key`` in acquisition order, with
    ``dashboard_figures.COLUMNS``)."""
    micrographs = _session_rows(warehouse.read_rows("micrographs"), key)
    if micrographs.empty:
        return None, pd.DataFrame(columns=list(figures.COLUMNS))
    session = str(micrographs["session"].iloc[0])
    batches = set(micrographs["batch"])
    frame = micrographs[["micrograph", "batch", "batch_sequence", "cut_at_s", "grid_square_id", "foil_hole_id"]]
    frame = frame.rename(columns={"grid_square_id": "grid_square", "foil_hole_id": "foil_hole"})
    metadata = _pick(
        _batch_rows(warehouse.read_rows("exposure_metadata"), batches),
        {
            "acquisition_timestamp_utc_iso": "timestamp",
            "stage_x_um": "stage_x_um",
            "stage_y_um": "stage_y_um",
            "acquisition_grid_square_id": "grid_square_md",
            "acquisition_foil_hole_id": "foil_hole_md",
        },
    )
    ctf = _batch_rows(warehouse.read_rows("ctf"), batches)
    if not ctf.empty:
        ctf = ctf.assign(defocus_angstrom=(ctf["defocus_u_angstrom"] + ctf["defocus_v_angstrom"]) / 2.0)
    ctf = _pick(ctf, {"defocus_angstrom": "defocus_angstrom", "fit_resolution_angstrom": "fit_resolution_angstrom"})
    curation = _pick(
        _batch_rows(warehouse.read_rows("curation_decisions"), batches),
        {
            "ice_thickness_index": "ice_thickness_index",
            "total_motion_angstrom": "total_motion_angstrom",
            "accepted": "accepted",
        },
    )
    stacks = _pick(_batch_rows(warehouse.read_rows("particle_stacks"), batches), {"particles": "particles"})
    scores = _pick(_batch_rows(warehouse.read_rows("hyperscores"), batches), {"hyperscore": "hyperscore"})
    for part in (metadata, ctf, curation, stacks, scores):
        frame = frame.merge(part, on=["micrograph", "batch"], how="left")
    frame["grid_square"] = frame["grid_square"].fillna(frame["grid_square_md"])
    frame["foil_hole"] = frame["foil_hole"].fillna(frame["foil_hole_md"])
    frame["acquired_at_s"] = frame["timestamp"].map(_timestamp_s)
    # Acquisition order: the timestamp where known, else the batch and the exposure's name (EPU numbers them).
    frame = frame.sort_values(["batch_sequence", "acquired_at_s", "micrograph"], na_position="last")
    return session, frame.reset_index(drop=True)[list(figures.COLUMNS)]


def latest_class_gallery(warehouse: ScoreWarehouse, outputs: OutputStore, key: str) -> tuple[str, str] | None:
    """(batch, PNG data URI) of the session's 2D classes after its latest classified batch, or None."""
    classes = _session_rows(warehouse.read_rows("classes_2d"), key)
    if classes.empty:
        return None
    latest = classes.sort_values("batch")["batch"].iloc[-1]
    rows = classes[classes["batch"] == latest].sort_values("class_number")
    path = outputs.asset_path("classes_2d", str(latest), "class_averages.mrcs")
    if not path.exists():
        return None
    with mrcfile.open(path, permissive=True) as mrc:
        averages = np.asarray(mrc.data, dtype=np.float64)
    if averages.ndim == 2:
        averages = averages[None]
    if len(averages) != len(rows):
        return None
    picture = class_gallery(
        averages, rows["selected"].fillna(False).to_numpy(dtype=bool), rows["particles"].fillna(0).to_numpy(dtype=int)
    )
    return str(latest), picture_data_uri(picture)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _image(title: str, uri: str) -> str:
    return f"**{title}**\n\n![{title}]({uri})"


@dg.asset(
    partitions_def=acquisition_sessions,
    group_name="facility_reports",
    # Summarises every batch of its session (read from the warehouse); the batch partitions of a session
    # are not a partition mapping Dagster can express between two dynamic partitionings, so all of them.
    deps=[dg.AssetDep(name, partition_mapping=dg.AllPartitionMapping()) for name in SUMMARISED],
    description="Per session: trends over acquisition time (defocus, CTF fit resolution, ice, motion, "
    "particles, HyperScore, accept rate), histograms, a grid map coloured by HyperScore and the latest 2D "
    "class gallery; also `<outputs>/sessions/<session>/dashboard.html`.",
)
def session_dashboard(
    context: dg.AssetExecutionContext, warehouse: ScoreWarehouse, outputs: OutputStore
) -> dg.MaterializeResult:
    key = context.partition_key
    session, frame = session_frame(warehouse, key)
    if session is None:
        context.log.warning(f"session {key}: no exposures in the warehouse yet")
        return dg.MaterializeResult(metadata={"exposures": 0})
    shown = {
        "Trends": figures.figure_data_uri(figures.trends_figure(frame)),
        "Histograms": figures.figure_data_uri(figures.histograms_figure(frame)),
        "Grid map": figures.figure_data_uri(figures.grid_map_figure(frame)),
    }
    gallery = latest_class_gallery(warehouse, outputs, key)
    if gallery is not None:
        shown[f"2D classes after {gallery[0]} (green: selected)"] = gallery[1]
    summary = figures.summary_rows(frame)
    rates = figures.accept_rate_per_batch(frame)
    path = outputs.session_path(session, DASHBOARD_FILENAME)
    _write_atomically(
        path,
        figures.html_report(
            f"Session {session}: dashboard",
            summary,
            shown,
            note=f"{len(frame)} exposures in {frame['batch'].nunique()} batches, up to "
            f"{frame['batch'].iloc[-1]}; generated {datetime.now().astimezone().isoformat(timespec='seconds')}.",
        ),
    )
    scores = pd.to_numeric(frame["hyperscore"], errors="coerce")
    metadata: dict[str, Any] = {
        "exposures": len(frame),
        "batches": int(frame["batch"].nunique()),
        "accepted": int(frame["accepted"].dropna().astype(bool).sum()),
        "median_hyperscore": float(scores.median()) if scores.notna().any() else float("nan"),
        "summary": dg.MetadataValue.md(figures.markdown_table(summary)),
        "accept_rate_per_batch": dg.MetadataValue.json(
            json.loads(rates.to_json(orient="records"))  # NaN -> null
        ),
        "trends": dg.MetadataValue.md(_image("Trends", shown["Trends"])),
        "histograms": dg.MetadataValue.md(_image("Histograms", shown["Histograms"])),
        "grid_map": dg.MetadataValue.md(_image("Grid map", shown["Grid map"])),
        "dashboard_html": dg.MetadataValue.path(str(path)),
    }
    if gallery is not None:
        metadata["class_gallery"] = dg.MetadataValue.md(_image(f"2D classes after {gallery[0]}", gallery[1]))
    context.log.info(f"session {session}: dashboard of {len(frame)} exposures at {path}")
    return dg.MaterializeResult(metadata=metadata)


session_dashboard_job = dg.define_asset_job(
    DASHBOARD_JOB,
    selection=[session_dashboard],
    executor_def=dg.in_process_executor,
    description="Redraw one session's dashboard from the warehouse.",
)


def session_of_batch(batch_key: str) -> str:
    """The session partition of a batch partition ``<safe_session>-<sequence>``."""
    return batch_key.rsplit("-", 1)[0]


def dashboard_run_request(session_key: str, source: str, run_key: str | None) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        partition_key=session_key,
        job_name=DASHBOARD_JOB,
        tags={"cryodecon/source": source},
    )


def build_dashboard_sensor(process_batch: Any) -> dg.RunStatusSensorDefinition:
    """A run-status sensor on the ``process_batch`` job (``define_asset_job``'s): each successful batch run
    requests its session's dashboard."""

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[process_batch],
        request_job=session_dashboard_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        name="session_dashboard_sensor",
    )
    def session_dashboard_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        batch = context.dagster_run.tags.get("dagster/partition")
        if not batch:
            return dg.SkipReason(f"run {context.dagster_run.run_id} has no batch partition")
        session = session_of_batch(batch)
        if not context.instance.has_dynamic_partition(SESSIONS, session):
            context.instance.add_dynamic_partitions(SESSIONS, [session])  # batches cut before
        return dashboard_run_request(session, "batch_succeeded", f"dashboard-{context.dagster_run.run_id}")

    return session_dashboard_sensor
