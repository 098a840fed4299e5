"""``exposure_curation``: each exposure accepted or rejected by its session's thresholds, with the reasons.

The thresholds are part of the session's settings (``SessionSettings.thresholds``), resolved when the asset
materialises: after a threshold changes, materialising ``exposure_curation`` alone (UI "Materialize" on the
asset, or ``process_batch`` with only it selected) moves exposures between accepted and rejected without any
image step running again.  The decision compares only what upstream steps measured
(``cryodecon_science.curation``); its inputs are the small per-exposure values:

* ``ctf_estimates`` (``CtfFit``: fit resolution, defocus, astigmatism),
* ``causal_priors`` (the micrograph's own ``ice_thickness`` measurement),
* ``particles`` (``ParticleStack``: particles per exposure, and the ``_extract.star`` files to export),
* ``raw_micrographs`` loaded as records only (``io_manager.RECORDS_ONLY``: each exposure's ``.exposure.pkl``,
  no pixels): optics for the STAR file, and the drift of a movie for the total motion.  Reading the
  ``Exposure`` values would read every micrograph's MRC; the record keeps the edge in the graph (the asset is
  stale when the exposures are) at the cost of a few small pickles.

A human label of ``cryodecon label`` (table ``curation``) overrides the automatic decision and is recorded
beside it.  The accepted exposures (final decision) are exported as RELION ``micrographs_ctf_accepted.star``
and ``particles_accepted.star`` under ``<outputs>/star/<batch>/``, ready for RELION's Import/Select.
"""

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from cryodecon_assets.batch.common import GROUP, load_manifest
from cryodecon_assets.batch.particles import extract_star_path
from cryodecon_assets.facility.maintenance import CURATION_TABLE
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import MicroscopeStorage, OutputStore, ScoreWarehouse, SessionSettingsConfig
from cryodecon_resources.io_manager import RECORDS_ONLY
from cryodecon_resources.tables import tables_metadata
from cryodecon_science.causal.graph import CausalPriors
from cryodecon_science.curation import CurationDecision, ExposureMeasurements, curate_exposure
from cryodecon_science.io.particles import ParticleStack, merge_particles_stars
from cryodecon_science.io.session_settings import SessionSettings, SessionSettingsError
from cryodecon_science.io.star import MicrographCtfRow, write_micrographs_ctf_star
from cryodecon_science.records import CtfFit

DECISIONS_TABLE = "curation_decisions"
MICROGRAPHS_STAR = "micrographs_ctf_accepted.star"
PARTICLES_STAR = "particles_accepted.star"
ICE_NODE = "ice_thickness"


def measurements(
    fit: CtfFit, priors: CausalPriors | None, stack: ParticleStack | None, record: Mapping[str, Any] | None
) -> ExposureMeasurements:
    """What curation compares for one exposure, from the upstream values (None where a step gave none)."""
    ice = next((m.value for m in priors.measurements if m.node == ICE_NODE), None) if priors is not None else None
    drift_px = record.get("drift_total_px") if record is not None else None
    microscope = record.get("microscope") if record is not None else None
    motion = float(drift_px) * microscope.pixel_size_angstrom if drift_px is not None and microscope else None
    return ExposureMeasurements(
        ctf_fit_resolution_angstrom=fit.fit_resolution_angstrom,
        defocus_mean_angstrom=0.5 * (fit.ctf.defocus_u_angstrom + fit.ctf.defocus_v_angstrom),
        astigmatism_angstrom=fit.ctf.astigmatism_angstrom,
        ice_thickness_index=ice,
        total_motion_angstrom=motion,
        particles=stack.n_particles if stack is not None else None,
    )


def human_labels(warehouse: ScoreWarehouse, batch: str) -> dict[str, dict[str, Any]]:
    """The batch's ``cryodecon label`` rows by micrograph (partitions ``<batch>.<micrograph>`` of ``curation``)."""
    folder = warehouse.table_dir(CURATION_TABLE)
    labels: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob(f"{batch}.*.parquet")) if folder.is_dir() else []:
        for row in pd.read_parquet(path).to_dict("records"):
            if row.get("batch") == batch:
                labels[str(row["micrograph"])] = row
    return labels


def decision_row(
    batch: str,
    session: str,
    name: str,
    measured: ExposureMeasurements,
    decision: CurationDecision,
    settings: SessionSettings,
    label: Mapping[str, Any] | None,
    run_id: str,
) -> dict[str, Any]:
    """One ``curation_decisions`` row: the automatic decision, the human label if any, and the final one."""
    human = bool(label["accepted"]) if label is not None else None
    return {
        "micrograph": name,
        "batch": batch,
        "session": session,
        "automatic_accepted": decision.accepted,
        "failed_thresholds": ";".join(decision.failed_thresholds),
        "reasons": "; ".join(decision.reasons),
        "ctf_fit_resolution_angstrom": measured.ctf_fit_resolution_angstrom,
        "defocus_mean_angstrom": measured.defocus_mean_angstrom,
        "astigmatism_angstrom": measured.astigmatism_angstrom,
        "ice_thickness_index": measured.ice_thickness_index,
        "total_motion_angstrom": measured.total_motion_angstrom,
        "particles": measured.particles,
        "human_accepted": human,
        "labelled_by": label["labelled_by"] if label is not None else None,
        "accepted": human if human is not None else decision.accepted,
        "decided_by": "human" if human is not None else "thresholds",
        "session_settings_sha256": settings.sha256,
        "thresholds_json": json.dumps(settings.thresholds.to_document(), sort_keys=True),
        "run_id": run_id,
        "recorded_at": time.time(),
    }


def export_accepted(
    outputs: OutputStore,
    batch: str,
    accepted: list[str],
    fits: Mapping[str, CtfFit],
    records: Mapping[str, Mapping[str, Any]],
    stacks: Mapping[str, ParticleStack],
) -> dict[str, tuple[Path, int]]:
    """Write the accepted exposures' ``micrographs_ctf_accepted.star`` and ``particles_accepted.star``.

    A file with nothing to list is removed (a STAR loop cannot be empty; an old file would list exposures
    that are no longer accepted).  Returns file -> (path, rows) for the files written.
    """
    written: dict[str, tuple[Path, int]] = {}
    micrographs_path = outputs.star_path(batch, MICROGRAPHS_STAR)
    rows = [
        MicrographCtfRow(
            str(outputs.asset_path("raw_micrographs", batch, f"{name}.mrc")), fits[name], records[name]["microscope"]
        )
        for name in accepted
        if name in records
    ]
    if rows:
        write_micrographs_ctf_star(micrographs_path, rows)
        written["micrographs"] = (micrographs_path, len(rows))
    else:
        micrographs_path.unlink(missing_ok=True)
    particles_path = outputs.star_path(batch, PARTICLES_STAR)
    sources = [
        Path(extract_star_path(stacks[name].stack_path))
        for name in accepted
        if name in stacks and stacks[name].n_particles > 0
    ]
    if sources:
        written["particles"] = (particles_path, merge_particles_stars(sources, particles_path))
    else:
        particles_path.unlink(missing_ok=True)
    return written


def curation_metadata(rows: list[dict[str, Any]], written: Mapping[str, tuple[Path, int]]) -> dict[str, Any]:
    """Counts, the thresholds' version and a table of rejections by threshold."""
    by_threshold = Counter(t for r in rows if not r["automatic_accepted"] for t in r["failed_thresholds"].split(";"))
    table = "| threshold | exposures failing |\n|---|---|\n" + "\n".join(
        f"| {name} | {count} |" for name, count in by_threshold.most_common()
    )
    overrides = [r for r in rows if r["decided_by"] == "human" and r["human_accepted"] != r["automatic_accepted"]]
    metadata: dict[str, Any] = {
        "exposures": len(rows),
        "accepted": sum(bool(r["accepted"]) for r in rows),
        "rejected": sum(not r["accepted"] for r in rows),
        "accepted_by_thresholds": sum(bool(r["automatic_accepted"]) for r in rows),
        "human_overrides": len(overrides),
        "session_settings_sha256": rows[0]["session_settings_sha256"] if rows else "",
        "thresholds": dg.MetadataValue.json(json.loads(rows[0]["thresholds_json"]) if rows else {}),
        "rejections_by_threshold": dg.MetadataValue.md(table if by_threshold else "no exposure failed a threshold"),
    }
    for kind, (path, count) in written.items():
        metadata[f"{kind}_star"] = dg.MetadataValue.path(str(path))
        metadata[f"{kind}_star_rows"] = count
    return metadata


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    kinds={"star"},
    ins={"raw_micrographs": dg.AssetIn(metadata={RECORDS_ONLY: True})},
    description="Exposure curation: each exposure accepted or rejected by the session's thresholds (CTF fit "
    "resolution, defocus range, astigmatism, ice, total motion, particles; `thresholds` in the session "
    "settings), with the thresholds it failed; a `cryodecon label` overrides it. Rows in "
    "`curation_decisions`; the accepted exposures as RELION `micrographs_ctf_accepted.star` and "
    "`particles_accepted.star`. No image work: re-materialise it after changing a threshold.",
)
def exposure_curation(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Any],
    ctf_estimates: dict[str, CtfFit],
    causal_priors: dict[str, CausalPriors],
    particles: dict[str, ParticleStack],
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
    microscope_storage: MicroscopeStorage,
    session_settings: SessionSettingsConfig,
) -> dg.Output[dict[str, dict[str, Any]]]:
    batch = context.partition_key
    session = load_manifest(warehouse, batch).session
    try:
        settings = session_settings.for_session(microscope_storage.root, session)
    except SessionSettingsError as exc:
        raise dg.Failure(
            description=f"session settings of {session!r} are not usable: {exc}",
            metadata={"document": exc.source, "field": exc.field_name, "detail": exc.detail},
        ) from exc
    labels = human_labels(warehouse, batch)
    rows = []
    for name, fit in sorted(ctf_estimates.items()):  # an exposure without a CTF fit was quarantined upstream
        measured = measurements(fit, causal_priors.get(name), particles.get(name), raw_micrographs.get(name))
        decision = curate_exposure(measured, settings.thresholds)
        rows.append(
            decision_row(batch, session, name, measured, decision, settings, labels.get(name), context.run.run_id)
        )
    held = {DECISIONS_TABLE: warehouse.write_rows(DECISIONS_TABLE, batch, rows)}
    accepted = [r["micrograph"] for r in rows if r["accepted"]]
    written = export_accepted(outputs, batch, accepted, ctf_estimates, raw_micrographs, particles)
    context.log.info(f"curation of {batch}: {len(accepted)} of {len(rows)} accepted (settings {settings.sha256[:12]})")
    return dg.Output(
        {r["micrograph"]: r for r in rows}, metadata={**curation_metadata(rows, written), **tables_metadata(held)}
    )
