"""``raw_micrographs``: each manifest file read (movies motion-corrected), its metadata recorded."""

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from cryodecon_assets.batch.common import (
    GROUP,
    ChangedSinceCutError,
    load_manifest,
    quarantine,
    quarantine_row,
    selection,
    warning_check,
)
from cryodecon_assets.batch.figures import thumbnails_markdown, trajectories_markdown
from cryodecon_assets.batch.session_inputs import SETTINGS_TABLE, SessionInputs
from cryodecon_assets.execution import GPU_POOL, GPU_STEP_TAGS
from cryodecon_assets.intake.batching import BatchManifest, ManifestFile
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import (
    MicroscopeStorage,
    MotionSettings,
    OutputStore,
    RestorationSettings,
    ScoreWarehouse,
    SessionSettingsConfig,
    TorchDevice,
)
from cryodecon_resources.storage import sha256_of_file
from cryodecon_resources.tables import tables_metadata
from cryodecon_science.exposure import FALLBACK_VOLTAGE_KV, Exposure
from cryodecon_science.ingest import MovieMotion, PreparedExposure, prepare_exposure
from cryodecon_science.io.errors import InputFileError
from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.io.session import SessionMetadata, SessionMetadataError, read_session_metadata
from cryodecon_science.metadata import flatten_metadata, metadata_to_json
from cryodecon_science.optics import MicroscopeSettings

# MotionCor2's names for the dose-weighted, even-frame and odd-frame sums beside the aligned sum.
MOTION_SUM_SUFFIXES = ("_DW", "_EVN", "_ODD")


def session_description(session_dir: Path, log: Any) -> SessionMetadata | None:
    """The session's ``session.json`` where there is a usable one (simulated sessions), else None."""
    try:
        return read_session_metadata(session_dir)
    except SessionMetadataError as exc:
        log.info(f"no usable session description ({exc}): optics from each exposure's header and sidecar")
        return None


def write_motion_sums(folder: Path, name: str, motion: MovieMotion, pixel_size_angstrom: float) -> None:
    """MotionCor2's _EVN/_ODD (and _DW when dose-weighted) sums beside the aligned sum, float32 MRC."""
    sums = {"_EVN": motion.correction.even_sum, "_ODD": motion.correction.odd_sum}
    if motion.correction.dose_weighted_sum is not None:
        sums["_DW"] = motion.correction.dose_weighted_sum
    for suffix, image in sums.items():
        write_mrc(folder / f"{name}{suffix}.mrc", image.astype(np.float32), pixel_size_angstrom)


def motion_row(motion: MovieMotion) -> dict[str, Any]:
    """One row of ``motion_corrections`` (without micrograph and batch)."""
    correction, patch = motion.correction, motion.correction.patch_motion
    return {
        "n_frames": motion.n_frames,
        "dose_per_frame_e_per_angstrom2": motion.dose_per_frame_e_per_angstrom2,
        "dose_weighted": motion.dose_weighted,
        "iterations": correction.iterations,
        "converged": correction.converged,
        "hot_pixels_replaced": correction.hot_pixel_count,
        "motion_total_angstrom": motion.accumulated.total_angstrom,
        "motion_early_angstrom": motion.accumulated.early_angstrom,
        "motion_late_angstrom": motion.accumulated.late_angstrom,
        "pixel_size_angstrom": motion.pixel_size_angstrom,
        "voltage_kv": motion.voltage_kv,
        # Local motion (patch correction on): the model BIC chose and the RMS of the patch shifts about it.
        "patch_grid": "x".join(str(g) for g in motion.patch_grid) if motion.patch_grid else None,
        "local_motion_model": patch.model if patch is not None else None,
        "local_motion_residual_rms_px": patch.residual_rms_px if patch is not None else None,
    }


def exposure_tables(
    batch: str, manifest: BatchManifest, prepared: Mapping[str, tuple[ManifestFile, PreparedExposure]]
) -> dict[str, list[dict[str, Any]]]:
    """The rows ``raw_micrographs`` records, by warehouse table."""
    tables: dict[str, list[dict[str, Any]]] = {
        t: []
        for t in (
            "micrographs",
            "exposure_metadata",
            "motion_trajectories",
            "motion_corrections",
            "artifact_corrections",
        )
    }
    for name, (entry, ready) in prepared.items():
        exposure, record = ready.exposure, ready.exposure.metadata
        key = {"micrograph": name, "batch": batch}
        tables["micrographs"].append(
            {
                **key,
                "session": manifest.session,
                "batch_sequence": manifest.sequence,
                "cut_at_s": manifest.cut_at_s,
                "relative_path": entry.relative_path,
                "sha256": entry.sha256,
                "kind": entry.kind,
                "n_frames": ready.n_frames,
                "shape_y_px": int(exposure.data.shape[0]),
                "shape_x_px": int(exposure.data.shape[1]),
                "pixel_size_angstrom": exposure.pixel_size_angstrom,
                "voltage_kv": exposure.microscope.voltage_kv,
                "spherical_aberration_mm": exposure.microscope.spherical_aberration_mm,
                "amplitude_contrast_fraction": exposure.microscope.amplitude_contrast_fraction,
                "dose_e_per_angstrom2": exposure.dose_e_per_angstrom2,
                "nominal_defocus_angstrom": exposure.nominal_defocus_angstrom,
                "grid_square_id": record.acquisition.grid_square_id,
                "foil_hole_id": record.acquisition.foil_hole_id,
                "mean_counts_per_px": float(exposure.data.mean()),
                "drift_total_px": exposure.drift_total_px,
                "residual_blur_px": exposure.residual_blur_px,
            }
        )
        tables["exposure_metadata"].append(
            {
                **key,
                **{k.replace(".", "__"): v for k, v in flatten_metadata(record).items()},
                "n_disagreements": len(record.disagreements),
                "record_json": metadata_to_json(record, indent=None),
            }
        )
        tables["artifact_corrections"].extend({**key, **dataclasses.asdict(c)} for c in ready.artifact_corrections)
        if ready.motion is not None:
            # The drift trajectory (frame × [dy, dx] relative to frame 0) the beam-induced-motion node reads.
            tables["motion_corrections"].append({**key, **motion_row(ready.motion)})
            tables["motion_trajectories"].extend(
                {**key, "frame": frame, "shift_y_px": float(shift[0]), "shift_x_px": float(shift[1])}
                for frame, shift in enumerate(ready.motion.correction.shifts_px)
            )
    return tables


def raw_metadata(
    manifest: BatchManifest,
    prepared: Mapping[str, tuple[ManifestFile, PreparedExposure]],
    tables: Mapping[str, list[dict[str, Any]]],
    failures: list[dict[str, Any]],
    star_path: Path | None,
) -> dict[str, Any]:
    """The UI metadata of ``raw_micrographs``: counts, the motion trajectories and thumbnails."""
    motion_rows = {r["micrograph"]: r for r in tables["motion_corrections"]}
    trajectories = {n: ready.motion.correction.shifts_px for n, (_, ready) in prepared.items() if ready.motion}
    return {
        "session": manifest.session,
        "exposures_in_manifest": len(manifest.files),
        "read": len(prepared),
        "quarantined": len(failures),
        "movies_motion_corrected": len(motion_rows),
        "movies_dose_weighted": sum(1 for r in motion_rows.values() if r["dose_weighted"]),
        "corrected_micrographs_star": dg.MetadataValue.path(str(star_path)) if star_path else "no movies",
        "motion": dg.MetadataValue.md(
            trajectories_markdown(trajectories, motion_rows) if trajectories else "no movies in this batch"
        ),
        "preview": dg.MetadataValue.md(thumbnails_markdown({k: r.exposure.data for k, (_, r) in prepared.items()})),
    }


def metadata_disagreements(prepared: Mapping[str, tuple[ManifestFile, PreparedExposure]]) -> dict[str, list[str]]:
    """Per file, the fields on which header and sidecar disagree beyond tolerance, with every source's value."""
    return {
        entry.relative_path: [
            f"{d.field_name}: " + ", ".join(f"{source}={value}" for source, value in d.values)
            for d in ready.exposure.metadata.disagreements
        ]
        for entry, ready in prepared.values()
        if ready.exposure.metadata.disagreements
    }


def raw_checks(
    prepared: Mapping[str, tuple[ManifestFile, PreparedExposure]], failures: list[dict[str, Any]]
) -> Iterator[dg.AssetCheckResult]:
    """The checks of ``raw_micrographs``: header and sidecar agree, and no exposure was quarantined."""
    disagreements = metadata_disagreements(prepared)
    yield warning_check(
        "metadata_sources_agree",
        not disagreements,
        exposures_with_disagreements=len(disagreements),
        disagreements=dg.MetadataValue.json(disagreements),
    )
    yield warning_check(
        "no_quarantined_exposures",
        not failures,
        quarantined=len(failures),
        reasons=dg.MetadataValue.json({f["relative_path"]: f"{f['reason']}: {f['detail']}" for f in failures}),
    )


def check_unchanged_since_cut(path: Path, entry: ManifestFile) -> None:
    """Raise ``ChangedSinceCutError`` unless ``path`` still holds the bytes the manifest's checksum is of.

    Same size and mtime as when the sensor hashed it: not hashed again (the sensor's hash was taken with
    that size and mtime before and after the read).  Another size: changed, without reading it.  Another
    mtime (touched, or re-copied) or a manifest without mtime: hashed again and compared.
    """
    info = os.stat(path)
    if info.st_size != entry.size_bytes:
        raise ChangedSinceCutError(path, f"size {info.st_size} differs from the batch manifest's {entry.size_bytes}")
    if entry.mtime_s is not None and info.st_mtime == entry.mtime_s:
        return
    if sha256_of_file(path) != entry.sha256:
        raise ChangedSinceCutError(path, "checksum differs from the batch manifest")


def remove_stale_sums(folder: Path, kept: set[str]) -> None:
    """After a full run of a batch: drop the sums of movies no longer in its output (quarantined on rerun)."""
    for path in folder.glob("*.mrc") if folder.is_dir() else []:
        stem = path.stem
        for suffix in MOTION_SUM_SUFFIXES:
            if stem.endswith(suffix) and stem[: -len(suffix)] not in kept:
                path.unlink(missing_ok=True)


def write_motion_star(warehouse: ScoreWarehouse, outputs: OutputStore, batch: str) -> Path | None:
    """RELION ``corrected_micrographs.star`` for the batch's motion-corrected movies (None without movies)."""
    from cryodecon_science.io.star import CorrectedMicrographRow, write_corrected_micrographs_star

    table = warehouse.read_rows("motion_corrections", batch)
    folder = outputs.asset_path("motion_corrected", batch)
    star_rows = []
    for row in table.to_dict("records") if len(table) else []:
        name = row["micrograph"]
        even, odd, dw = (folder / f"{name}{suffix}.mrc" for suffix in ("_EVN", "_ODD", "_DW"))
        if not (even.is_file() and odd.is_file()):
            continue
        aligned = str(outputs.asset_path("raw_micrographs", batch, f"{name}.mrc"))
        weighted = bool(row["dose_weighted"]) and dw.is_file()
        voltage = row.get("voltage_kv")
        microscope = MicroscopeSettings(
            voltage_kv=float(voltage) if voltage is not None and voltage == voltage else FALLBACK_VOLTAGE_KV,
            pixel_size_angstrom=float(row["pixel_size_angstrom"]),
        )
        early, late = row.get("motion_early_angstrom"), row.get("motion_late_angstrom")
        star_rows.append(
            CorrectedMicrographRow(
                micrograph_path=str(dw) if weighted else aligned,
                no_dose_weighting_path=aligned if weighted else None,
                even_path=str(even),
                odd_path=str(odd),
                microscope=microscope,
                motion_total_angstrom=float(row["motion_total_angstrom"]),
                motion_early_angstrom=None if early is None or early != early else float(early),
                motion_late_angstrom=None if late is None or late != late else float(late),
            )
        )
    if not star_rows:
        return None
    path = outputs.star_path(batch, "corrected_micrographs.star")
    write_corrected_micrographs_star(path, star_rows)
    return path


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"mrc"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_quarantined_exposures",
            asset="raw_micrographs",
            description="Every exposure of the batch's manifest was read; quarantined ones are listed.",
        ),
        dg.AssetCheckSpec(
            "metadata_sources_agree",
            asset="raw_micrographs",
            description="Header (MRC/FEI extended header, TIFF, EER) and sidecar (EPU XML, SerialEM mdoc) agree "
            "on every field both carry, within tolerance; disagreements are listed with both values.",
        ),
    ],
    description="Exposures of the batch's frozen manifest, read and verified (MRC, TIFF, EER; metadata "
    "record from header + sidecar); movies gain-corrected with the session's gain reference (quarantined "
    "where one is needed and missing; the session's settings versioned in `session_settings`) and "
    "motion-corrected (global alignment with the movie's own "
    "signal-to-noise weighting; the aligned sum is this asset, what CTF fitting reads) and, when their dose "
    "is known, dose-weighted (Grant & Grigorieff); the _DW/_EVN/_ODD sums go to `motion_corrected/<batch>/` "
    "with RELION's `corrected_micrographs.star` and one row per movie in `motion_corrections`; detector and "
    "ice artifacts removed as configured (`RestorationSettings`, one row per step in "
    "`artifact_corrections`).  Micrographs in counts, float32 MRC.",
)
def raw_micrographs(
    context: dg.AssetExecutionContext,
    microscope_storage: MicroscopeStorage,
    warehouse: ScoreWarehouse,
    device: TorchDevice,
    restoration: RestorationSettings,
    outputs: OutputStore,
    motion: MotionSettings,
    session_settings: SessionSettingsConfig,
) -> Iterable[dg.Output[dict[str, Exposure]] | dg.AssetCheckResult]:
    batch = context.partition_key
    manifest = load_manifest(warehouse, batch)
    chosen = selection(context)
    session_metadata = session_description(Path(microscope_storage.root) / manifest.session, context.log)
    # The session's settings (gain, optics overrides, particle diameter), resolved once; a bad document fails the run.
    inputs = SessionInputs.for_session(session_settings, microscope_storage.root, manifest.session)
    sums_folder = outputs.asset_path("motion_corrected", batch)
    exposures: dict[str, Exposure] = {}
    prepared: dict[str, tuple[ManifestFile, PreparedExposure]] = {}
    failures: list[dict[str, Any]] = []
    for entry in (f for f in manifest.files if chosen is None or f.name in chosen):
        path = microscope_storage.absolute(entry.relative_path)
        try:
            check_unchanged_since_cut(path, entry)
            ready = prepare_exposure(
                inputs.read(path),  # any format; header + sidecar merged, frames checked, gain applied
                entry.name,
                entry.kind == "movie",
                manifest.session,
                session_metadata,
                tuple(restoration.artifact_steps),
                device.torch_device(),
                tuple(motion.patch_grid),
                inputs.settings,
            )
            if ready.motion is not None:
                write_motion_sums(sums_folder, entry.name, ready.motion, ready.exposure.pixel_size_angstrom)
        except (InputFileError, OSError, ValueError) as exc:
            context.log.warning(f"quarantined {entry.relative_path}: {exc}")
            reason = getattr(exc, "reason", type(exc).__name__)
            failures.append(quarantine_row(entry.name, batch, "raw_micrographs", reason, str(exc), entry.relative_path))
            continue
        exposures[entry.name] = ready.exposure
        prepared[entry.name] = (entry, ready)
    tables = exposure_tables(batch, manifest, prepared)
    inputs.stamp(tables)
    held = {
        table: warehouse.write_rows(table, batch, rows, replace_micrographs=chosen) for table, rows in tables.items()
    }
    held[SETTINGS_TABLE] = inputs.record(
        warehouse, batch, manifest.session, len(prepared), context.run.run_id, whole_batch=chosen is None
    )
    if chosen is None:
        remove_stale_sums(sums_folder, set(exposures))
    # RELION's corrected_micrographs.star over the whole batch (a selective rerun keeps the other movies' rows).
    star_path = write_motion_star(warehouse, outputs, batch)
    quarantine(warehouse, batch, "raw_micrographs", failures, chosen)
    yield dg.Output(
        exposures, metadata={**raw_metadata(manifest, prepared, tables, failures, star_path), **tables_metadata(held)}
    )
    yield from raw_checks(prepared, failures)
