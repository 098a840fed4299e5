"""The batch lineage: raw micrographs -> CTF estimates -> causal priors -> restored micrographs ->
evaluation scores -> quality score V -> HyperScore, one acquisition batch per partition.

Each asset loads its inputs, calls science functions per micrograph, writes its warehouse rows
(``ScoreWarehouse.write_rows``: one Parquet file per table and partition, replaced atomically) and
returns ``dict[micrograph, value]`` to the ``BatchIOManager``.  A micrograph that fails a step is
quarantined with its reason (warehouse table ``quarantine``) and the rest of the batch goes on.

Reprocessing one micrograph: launch the ``process_batch`` job for its partition with the run tag
``cryodecon/micrographs=<name>[,<name>…]`` (``cryodecon reprocess``): every asset then handles only those
micrographs and replaces only their rows and files.
"""

import dataclasses
import hashlib
import json
import math
import pickle
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import numpy as np

from cryodecon_assets.batching import MANIFESTS, BatchManifest, ManifestFile
from cryodecon_assets.figures import (
    PREVIEW_LIMIT,
    before_after_markdown,
    causal_graph_markdown,
    ctf_markdown,
    thumbnails_markdown,
    trajectories_markdown,
)
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_assets.references import load_citation_graph, load_or_train_impact_model, particle_box_px
from cryodecon_resources import (
    MicroscopeStorage,
    MotionSettings,
    OutputStore,
    RestorationSettings,
    ScoreWarehouse,
    ScoringSettings,
    StructureLibrary,
    TorchDevice,
)
from cryodecon_resources.io_manager import SELECTION_TAG
from cryodecon_resources.scoring import WEIGHTS_TABLE
from cryodecon_resources.storage import sha256_of_file
from cryodecon_science import causal, scores
from cryodecon_science.citations import max_citations_within_years
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.denoiser import DenoiserUNet, denoise_learned_many
from cryodecon_science.embedding import embed_particles, novelty_score
from cryodecon_science.exposure import FALLBACK_VOLTAGE_KV, Exposure
from cryodecon_science.impact_gnn import forecast_new_paper, prepare_impact_graph
from cryodecon_science.ingest import MovieMotion, PreparedExposure, prepare_exposure
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser
from cryodecon_science.io.layout import read_exposure
from cryodecon_science.io.mrc import InputFileError, Micrograph, write_mrc
from cryodecon_science.io.session import SessionMetadata, SessionMetadataError, read_session_metadata
from cryodecon_science.metadata import flatten_metadata, metadata_to_json
from cryodecon_science.optics import MicroscopeSettings
from cryodecon_science.picking import excluded_area_mask, extract_boxes, pick_particles
from cryodecon_science.records import CtfFit
from cryodecon_science.reproducibility import (
    binomial_split_counts,
    defocus_phase_error_rad,
    filtered_half_correlation,
    frc_resolution_angstrom,
    half_set_frc,
    predict_seconds,
    relative_cost_deviation,
)
from cryodecon_science.restore import wiener_deconvolve, wiener_denoise, wiener_denoise_filter

GROUP = "batch_pipeline"
DENOISER_WEIGHTS_NAME = "denoiser_v1 (cryodecon_science/data/denoiser_v1.pt)"
# DoG peak threshold in robust σ of the filtered map.  2.0 measured on the demo session (demo seed 0,
# deconvolved images): recall 0.1–0.44, precision 0.43–0.91 against the simulator's true positions; 3.0
# gave recall ≤ 0.2.  A learned picker replaces this with the picking issue.
PICK_THRESHOLD_SIGMA = 2.0
T = TypeVar("T")


class ChangedSinceCutError(InputFileError):
    """The file's checksum no longer matches the batch manifest: it changed after the batch was cut."""

    reason = "changed_since_cut"


# ---- helpers shared by the assets -------------------------------------------------------------------
def load_manifest(warehouse: ScoreWarehouse, batch: str) -> BatchManifest:
    return BatchManifest.from_document(warehouse.read_document(MANIFESTS, batch))


def selection(context: dg.AssetExecutionContext) -> set[str] | None:
    """Micrographs selected by the run tag ``cryodecon/micrographs`` (None = the whole batch)."""
    raw = context.run.tags.get(SELECTION_TAG, "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    return names or None


def selected(context: dg.AssetExecutionContext, items: Mapping[str, T]) -> dict[str, T]:
    chosen = selection(context)
    return {k: v for k, v in sorted(items.items()) if chosen is None or k in chosen}


def quarantine(
    warehouse: ScoreWarehouse, batch: str, stage: str, rows: list[dict[str, Any]], chosen: set[str] | None
) -> None:
    """Replace this batch's quarantine rows for ``stage`` (file ``quarantine/<batch>.<stage>.parquet``)."""
    warehouse.write_rows("quarantine", f"{batch}.{stage}", rows, replace_micrographs=chosen)


SCIENCE_ERRORS = (ValueError, InputFileError, FloatingPointError, np.linalg.LinAlgError)
"""What a micrograph's own data can make a science step raise: the micrograph is quarantined, not the batch."""


class InvalidOutputError(ValueError):
    """A step produced an image no later step can use (NaN/Inf, or constant): quarantined at that step."""


def check_output(stage: str, name: str, result: Any) -> None:
    """Refuse an image result that is not finite or has no variation, naming the step that produced it."""
    data = getattr(result, "data", None)
    if not isinstance(data, np.ndarray) or data.size == 0:
        return
    if not np.all(np.isfinite(data)):
        raise InvalidOutputError(f"{stage} produced {int(data.size - np.isfinite(data).sum())} NaN/Inf pixels")
    if data.max() == data.min():
        raise InvalidOutputError(f"{stage} produced a constant image ({float(data.flat[0]):g} everywhere)")


def run_per_micrograph(
    context: dg.AssetExecutionContext,
    warehouse: ScoreWarehouse,
    stage: str,
    items: Mapping[str, Any],
    step: Callable[[str, Any], T] | None = None,
    batch_step: Callable[[Mapping[str, Any]], Mapping[str, T | Exception]] | None = None,
) -> dict[str, T]:
    """Apply ``step`` to each micrograph; a failure of one micrograph quarantines it, not the batch.

    A science error (``SCIENCE_ERRORS``) or an unusable image result (``check_output``) quarantines the
    micrograph with its reason.  Any other exception of one micrograph is quarantined too (reason: its
    type, logged with the traceback), unless it struck every micrograph of a batch of several: then it is
    not the data but the step or the node (a lost GPU, a bug), and it is raised so the run fails and is
    retried or looked at, instead of quarantining a whole batch of good exposures.

    ``batch_step`` instead takes the whole selection at once and returns, per micrograph, its result or
    the science error it met (a GPU pipeline that overlaps one frame's copies with another's compute,
    ``denoiser.denoise_learned_many``); then each micrograph's time is the batch's wall time over the
    number of micrographs.  Each successful step's wall time goes to the warehouse table ``step_times``
    (partition ``<batch>.<stage>``): staff see where time goes, and the cost model of ΔRepro calibrates on it.
    """
    if (step is None) == (batch_step is None):
        raise TypeError("give exactly one of step and batch_step")
    batch = context.partition_key
    results: dict[str, T] = {}
    failures: list[dict[str, Any]] = []
    unexpected: list[Exception] = []
    times: list[dict[str, Any]] = []
    outcomes: Mapping[str, T | Exception] = {}
    shared_seconds = 0.0
    if batch_step is not None and items:
        started = time.perf_counter()
        outcomes = batch_step(items)
        shared_seconds = (time.perf_counter() - started) / len(items)
    for name, item in items.items():
        started = time.perf_counter()
        try:
            if step is not None:
                result = step(name, item)
            else:
                outcome = outcomes[name]
                if isinstance(outcome, Exception):
                    raise outcome
                result = outcome
            check_output(stage, name, result)
            results[name] = result
        except SCIENCE_ERRORS as exc:
            context.log.warning(f"{stage}: {name} quarantined: {exc}")
            failures.append(quarantine_row(name, batch, stage, type(exc).__name__, str(exc)))
            continue
        except Exception as exc:
            context.log.exception(f"{stage}: {name} quarantined after an unexpected {type(exc).__name__}")
            failures.append(quarantine_row(name, batch, stage, type(exc).__name__, f"{exc!r} (unexpected)"))
            unexpected.append(exc)
            continue
        data = getattr(item, "data", None)
        times.append(
            {
                "micrograph": name,
                "batch": batch,
                "stage": stage,
                "seconds": time.perf_counter() - started if step is not None else shared_seconds,
                "n_pixels": int(data.size) if data is not None else None,
                "run_id": context.run.run_id,
            }
        )
    if len(items) > 1 and len(unexpected) == len(items):
        raise unexpected[0]
    quarantine(warehouse, batch, stage, failures, selection(context))
    warehouse.write_rows("step_times", f"{batch}.{stage}", times, replace_micrographs=selection(context))
    return results


def quarantine_row(
    micrograph: str, batch: str, stage: str, reason: str, detail: str, relative_path: str = ""
) -> dict[str, Any]:
    return {
        "micrograph": micrograph,
        "batch": batch,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "relative_path": relative_path,
        "recorded_at": time.time(),
    }


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


def load_stored_fits(outputs: OutputStore, batch: str) -> dict[str, CtfFit]:
    """CTF fits already stored for the batch (a selective rerun keeps the others in the STAR file)."""
    directory = outputs.asset_path("ctf_estimates", batch)
    fits: dict[str, CtfFit] = {}
    for path in sorted(directory.glob("*.pkl")) if directory.is_dir() else []:
        with open(path, "rb") as handle:
            fits[path.stem] = pickle.load(handle)
    return fits


# ---- the assets -------------------------------------------------------------------------------------
@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
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
    "record from header + sidecar); movies motion-corrected (global alignment with the movie's own "
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
) -> Iterable[dg.Output[dict[str, Exposure]] | dg.AssetCheckResult]:
    batch = context.partition_key
    manifest = load_manifest(warehouse, batch)
    chosen = selection(context)
    session_metadata = session_description(Path(microscope_storage.root) / manifest.session, context.log)
    sums_folder = outputs.asset_path("motion_corrected", batch)
    exposures: dict[str, Exposure] = {}
    prepared: dict[str, tuple[ManifestFile, PreparedExposure]] = {}
    failures: list[dict[str, Any]] = []
    for entry in (f for f in manifest.files if chosen is None or f.name in chosen):
        path = microscope_storage.absolute(entry.relative_path)
        try:
            if sha256_of_file(path) != entry.sha256:
                raise ChangedSinceCutError(path, "checksum differs from the batch manifest")
            ready = prepare_exposure(
                read_exposure(path),  # any format; header + sidecar merged, announced frames checked
                entry.name,
                entry.kind == "movie",
                manifest.session,
                session_metadata,
                tuple(restoration.artifact_steps),
                device.torch_device(),
                tuple(motion.patch_grid),
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
    for table, rows in tables.items():
        warehouse.write_rows(table, batch, rows, replace_micrographs=chosen)
    if chosen is None:
        remove_stale_sums(sums_folder, set(exposures))
    # RELION's corrected_micrographs.star over the whole batch (a selective rerun keeps the other movies' rows).
    star_path = write_motion_star(warehouse, outputs, batch)
    quarantine(warehouse, batch, "raw_micrographs", failures, chosen)
    yield dg.Output(exposures, metadata=raw_metadata(manifest, prepared, tables, failures, star_path))
    disagreements = metadata_disagreements(prepared)
    yield dg.AssetCheckResult(
        check_name="metadata_sources_agree",
        passed=not disagreements,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "exposures_with_disagreements": len(disagreements),
            "disagreements": dg.MetadataValue.json(disagreements),
        },
    )
    yield dg.AssetCheckResult(
        check_name="no_quarantined_exposures",
        passed=not failures,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "quarantined": len(failures),
            "reasons": dg.MetadataValue.json({f["relative_path"]: f"{f['reason']}: {f['detail']}" for f in failures}),
        },
    )


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool="gpu",
    kinds={"torch"},
    description="CTF fit per micrograph (tile-averaged periodogram, 1D search + 2D refinement); rows in "
    "the warehouse table `ctf` and a RELION `micrographs_ctf.star` per batch.",
)
def ctf_estimates(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
    device: TorchDevice,
) -> dg.Output[dict[str, CtfFit]]:
    from cryodecon_science.io.star import MicrographCtfRow, write_micrographs_ctf_star

    batch = context.partition_key
    torch_device = device.torch_device()

    def step(name: str, exposure: Exposure) -> CtfFit:
        return estimate_ctf(
            exposure.data,
            exposure.microscope,
            nominal_defocus_angstrom=exposure.nominal_defocus_angstrom,
            device=torch_device,
        )

    fits = run_per_micrograph(context, warehouse, "ctf_estimates", selected(context, raw_micrographs), step)
    rows = [
        {
            "micrograph": name,
            "batch": batch,
            "session": raw_micrographs[name].session,
            "defocus_u_angstrom": fit.ctf.defocus_u_angstrom,
            "defocus_v_angstrom": fit.ctf.defocus_v_angstrom,
            "astigmatism_angle_degrees": fit.ctf.astigmatism_angle_deg,
            "phase_shift_rad": fit.ctf.phase_shift_rad,
            "fit_resolution_angstrom": fit.fit_resolution_angstrom,
            "cross_correlation": fit.cross_correlation,
            "defocus_sigma_angstrom": fit.defocus_sigma_angstrom,
            "nominal_defocus_angstrom": raw_micrographs[name].nominal_defocus_angstrom,
        }
        for name, fit in fits.items()
    ]
    warehouse.write_rows("ctf", batch, rows, replace_micrographs=selection(context))
    all_rows = warehouse.read_rows("ctf", batch)
    star_path = outputs.star_path(batch, "micrographs_ctf.star")
    star_rows = []
    stored = load_stored_fits(outputs, batch)
    for row in all_rows.to_dict("records"):
        name = row["micrograph"]
        fit = fits.get(name) or stored.get(name)
        if fit is not None and name in raw_micrographs:
            star_rows.append(
                MicrographCtfRow(
                    str(outputs.asset_path("raw_micrographs", batch, f"{name}.mrc")),
                    fit,
                    raw_micrographs[name].microscope,
                )
            )
    if star_rows:
        write_micrographs_ctf_star(star_path, star_rows)
    defoci = [r["defocus_u_angstrom"] for r in rows]
    return dg.Output(
        fits,
        metadata={
            "fitted": len(fits),
            "median_defocus_u_angstrom": float(np.median(defoci)) if defoci else float("nan"),
            "median_fit_resolution_angstrom": (
                float(np.median([r["fit_resolution_angstrom"] for r in rows])) if rows else float("nan")
            ),
            "star_file": dg.MetadataValue.path(str(star_path)),
            "diagnostics": dg.MetadataValue.md(
                ctf_markdown(
                    {k: raw_micrographs[k].data for k in list(fits)[:PREVIEW_LIMIT]},
                    fits,
                    {k: raw_micrographs[k].microscope for k in fits},
                )
            ),
            "fits": dg.MetadataValue.md(
                "| micrograph | ΔfU (Å) | ΔfV (Å) | angle (°) | fit res (Å) | CC |\n|---|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {r['micrograph']} | {r['defocus_u_angstrom']:.0f} | {r['defocus_v_angstrom']:.0f} | "
                    f"{r['astigmatism_angle_degrees']:.1f} | {r['fit_resolution_angstrom']:.2f} | "
                    f"{r['cross_correlation']:.3f} |"
                    for r in rows
                )
            ),
        },
    )


def session_prior_before(warehouse: ScoreWarehouse, session: str, batch_sequence: int) -> causal.SessionPrior | None:
    """The session prior from every earlier batch of the session, replayed in batch order.

    Only batches with a lower sequence number count, so a rerun of a batch sees the same prior.  The rows'
    measured values (each micrograph alone: the cause nodes and the ice power) are what is replayed.
    """
    directory = warehouse.table_dir("priors")
    files = sorted(directory.glob(f"{session}-*.parquet")) if directory.is_dir() else []
    per_micrograph: list[dict[str, tuple[float, float]]] = []
    for path in files:
        try:
            sequence = int(path.stem.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if sequence >= batch_sequence:
            continue
        per_micrograph += measured_per_micrograph(warehouse.read_rows("priors", path.stem))
    return causal.session_prior_of(per_micrograph) if per_micrograph else None


def measured_per_micrograph(frame: Any) -> list[dict[str, tuple[float, float]]]:
    """A ``priors`` partition's measured values, node → (value, σ), one mapping per micrograph (sorted)."""
    if frame.empty:
        return []
    return [
        {row["node"]: (float(row["measured_value"]), float(row["measured_sigma"])) for row in group.to_dict("records")}
        for _, group in frame.sort_values(["micrograph", "node"]).groupby("micrograph", sort=True)
    ]


def session_prior_rows(
    prior: causal.SessionPrior, session: str, batch: str, batch_sequence: int
) -> list[dict[str, object]]:
    """The ``session_priors`` table: one row per quantity of the session prior after ``batch``.

    ``mean``, ``between_sd`` (τ, how much the quantity varies from micrograph to micrograph) and ``mean_sd``
    are the hierarchical population of :meth:`causal.SessionPrior.populations`; ``pooling`` says whether
    the next micrograph is pooled with it (at least ``causal.MIN_PRIOR_MICROGRAPHS`` measurements).
    """
    units = {**causal.NODE_UNITS, causal.ICE_SPECIMEN_POWER: causal.ICE_SPECIMEN_POWER_UNIT}
    return [
        {
            "session": session,
            "batch": batch,
            "batch_sequence": batch_sequence,
            "quantity": key,
            "unit": units.get(key, ""),
            "n": population.n,
            "mean": population.mean,
            "between_sd": math.sqrt(population.between_variance),
            "mean_sd": math.sqrt(population.mean_variance),
            "pooling": population.n >= causal.MIN_PRIOR_MICROGRAPHS,
        }
        for key, population in sorted(prior.populations().items())
    ]


def session_prior_markdown(rows: list[dict[str, object]]) -> str:
    """The session prior table for the UI."""
    if not rows:
        return "No session prior yet."
    lines = ["| quantity | n | mean | τ (between micrographs) | σ of the mean | pooling |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['quantity']} ({r['unit']}) | {r['n']} | {r['mean']:.4g} | {r['between_sd']:.3g} "
            f"| {r['mean_sd']:.3g} | {'yes' if r['pooling'] else 'not yet'} |"
        )
    return "\n".join(lines)


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    kinds={"networkx"},
    description="Causal graph of image degradation per micrograph: node estimates with σ and weights, "
    "refined by the self-evaluation loop until every change < 1σ; session prior updated batch by batch.",
)
def causal_priors(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    ctf_estimates: dict[str, CtfFit],
    warehouse: ScoreWarehouse,
    device: TorchDevice,
) -> dg.Output[dict[str, causal.CausalPriors]]:
    batch = context.partition_key
    manifest = load_manifest(warehouse, batch)
    items = {k: v for k, v in selected(context, raw_micrographs).items() if k in ctf_estimates}
    torch_device = device.torch_device()
    prior_before = session_prior_before(warehouse, manifest.session, manifest.sequence)
    prior = prior_before
    early: list[str] = []  # fitted before the session had MIN_PRIOR_MICROGRAPHS micrographs to pool with

    def fit(name: str, exposure: Exposure, session_prior: causal.SessionPrior | None) -> causal.CausalPriors:
        return causal.fit_priors(
            exposure.data,
            ctf_estimates[name],
            exposure.microscope,
            dose_e_per_angstrom2=exposure.dose_e_per_angstrom2,
            drift_total_px=exposure.residual_blur_px,
            session_prior=session_prior,
            device=torch_device,
        )

    def step(name: str, exposure: Exposure) -> causal.CausalPriors:
        nonlocal prior
        if prior is None or prior.n_micrographs < causal.MIN_PRIOR_MICROGRAPHS:
            early.append(name)
        fitted = fit(name, exposure, prior)
        prior = causal.update_session_prior(prior, fitted.session_measurements())
        return fitted

    fitted_all = run_per_micrograph(context, warehouse, "causal_priors", items, step)
    # The session's first micrographs again, now with the prior of all the others (leave_one_out_priors).
    measured_in_order = [(name, fitted.session_measurements()) for name, fitted in fitted_all.items()]
    refits = causal.leave_one_out_priors(measured_in_order, [n for n in early if n in fitted_all], prior_before)
    refitted = []
    for name, loo_prior in refits.items():
        try:
            fitted_all[name] = fit(name, items[name], loo_prior)
            refitted.append(name)
        except SCIENCE_ERRORS as exc:  # the first fit stands on its own: keep it
            context.log.warning(f"causal_priors: {name} refit with the session prior failed, first fit kept: {exc}")
    rows, iteration_rows = [], []
    for name, fitted in fitted_all.items():
        measured = fitted.session_measurements()
        # The cause nodes, then the ice power: a nuisance the session pools, not a cause (weight 0, never shrunk).
        estimates = [(e.node, e.value, e.sigma, e.weight, e.unit) for e in fitted.estimates]
        if fitted.ice_specimen_power is not None:
            estimates.append(
                (causal.ICE_SPECIMEN_POWER, *fitted.ice_specimen_power, 0.0, causal.ICE_SPECIMEN_POWER_UNIT)
            )
        for node, value, sigma, weight, unit in estimates:
            rows.append(
                {
                    "micrograph": name,
                    "batch": batch,
                    "session": manifest.session,
                    "batch_sequence": manifest.sequence,
                    "node": node,
                    "estimate": value,
                    "sigma": sigma,
                    "weight": weight,
                    "measured_value": measured[node][0],
                    "measured_sigma": measured[node][1],
                    "unit": unit,
                    "converged": fitted.converged,
                    "n_iterations": fitted.n_iterations,
                }
            )
        for index, values in enumerate(fitted.iterations):
            for node, value in values.items():
                iteration_rows.append(
                    {"micrograph": name, "batch": batch, "iteration": index, "node": node, "value": value}
                )
        warehouse.write_document("causal_graphs", f"{batch}.{name}", fitted.graph_node_link)
    chosen = selection(context)
    warehouse.write_rows("priors", batch, rows, replace_micrographs=chosen)
    warehouse.write_rows("prior_iterations", batch, iteration_rows, replace_micrographs=chosen)
    # The session prior as it stands after this batch: the earlier batches' plus this batch's whole partition.
    batch_measured = measured_per_micrograph(warehouse.read_rows("priors", batch))
    after = causal.session_prior_of(batch_measured, prior_before) if batch_measured else prior_before
    population_rows = session_prior_rows(after, manifest.session, batch, manifest.sequence) if after else []
    warehouse.write_rows("session_priors", batch, population_rows)
    weights: dict[str, list[float]] = {}
    for row in rows:
        if row["node"] in causal.CAUSE_NODES:
            weights.setdefault(row["node"], []).append(row["weight"])
    return dg.Output(
        fitted_all,
        metadata={
            "refitted_with_the_session_prior": dg.MetadataValue.json(sorted(refitted)),
            "converged": sum(1 for p in fitted_all.values() if p.converged),
            "not_converged": sum(1 for p in fitted_all.values() if not p.converged),
            "mean_weight_by_node": dg.MetadataValue.json({k: float(np.mean(v)) for k, v in sorted(weights.items())}),
            "session_prior": dg.MetadataValue.md(session_prior_markdown(population_rows)),
            "causal_graph": dg.MetadataValue.md(
                "\n\n".join(causal_graph_markdown(p, name) for name, p in list(fitted_all.items())[:PREVIEW_LIMIT])
            ),
        },
    )


def _restore(
    context: dg.AssetExecutionContext,
    stage: str,
    raw_micrographs: dict[str, Exposure],
    ctf_estimates: dict[str, CtfFit],
    causal_priors: dict[str, causal.CausalPriors],
    warehouse: ScoreWarehouse,
    device: TorchDevice,
    restore: Callable[..., np.ndarray],
) -> dict[str, Micrograph]:
    torch_device = device.torch_device()
    items = {k: v for k, v in selected(context, raw_micrographs).items() if k in ctf_estimates and k in causal_priors}

    def step(name: str, exposure: Exposure) -> Micrograph:
        fit = causal.refined_ctf_fit(ctf_estimates[name], causal_priors[name])
        data = restore(exposure.data, fit, exposure.microscope, device=torch_device)
        return Micrograph(name, np.asarray(data, dtype=np.float32), exposure.pixel_size_angstrom)

    return run_per_micrograph(context, warehouse, stage, items, step)


def before_after(raw: Mapping[str, Exposure], restored: Mapping[str, Micrograph], label: str) -> dg.MetadataValue:
    """Before/after thumbnails of the first ``PREVIEW_LIMIT`` restored micrographs, as UI markdown."""
    shown = list(restored)[:PREVIEW_LIMIT]
    return dg.MetadataValue.md(
        before_after_markdown({k: raw[k].data for k in shown}, {k: restored[k].data for k in shown}, label)
    )


def restoration_asset(name: str, restore: Callable[..., np.ndarray], description: str) -> dg.AssetsDefinition:
    """One restoration target as an asset: same inputs, same GPU pool, its own Wiener filter."""

    @dg.asset(
        name=name,
        partitions_def=acquisition_batches,
        group_name=GROUP,
        pool="gpu",
        kinds={"torch", "mrc"},
        description=description,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        raw_micrographs: dict[str, Exposure],
        ctf_estimates: dict[str, CtfFit],
        causal_priors: dict[str, causal.CausalPriors],
        warehouse: ScoreWarehouse,
        device: TorchDevice,
    ) -> dg.Output[dict[str, Micrograph]]:
        result = _restore(context, name, raw_micrographs, ctf_estimates, causal_priors, warehouse, device, restore)
        pixel_sizes = {m.pixel_size_angstrom for m in result.values()}
        return dg.Output(
            result,
            metadata={
                "micrographs": len(result),
                "pixel_size_angstrom": float(pixel_sizes.pop()) if len(pixel_sizes) == 1 else float("nan"),
                "before_after": before_after(raw_micrographs, result, name.removesuffix("_micrographs")),
            },
        )

    return _asset


restored_micrographs = restoration_asset(
    "restored_micrographs",
    wiener_denoise,
    "Denoised micrographs (CTF kept): Wiener filter (S·CTF² + G)/(S·CTF² + G + F) from the causal priors' "
    "refined spectra: detector noise floor F removed, specimen signal S and ice background G kept.  "
    "float32 MRC, pixel size in the header.",
)
deconvolved_micrographs = restoration_asset(
    "deconvolved_micrographs",
    wiener_deconvolve,
    "CTF-corrected micrographs: Wiener deconvolution CTF·S/(S·CTF² + B), zero beyond the fit resolution "
    "(never invents power there).  float32 MRC, pixel size in the header.",
)


# τ of each ΔRepro deviation (scores.reproducibility_score: a deviation of τ scores e⁻¹ ≈ 0.37).
REPRO_TOLERANCES = {
    # CTF phase error at the fit resolution from the defocus spread between independent sub-crops
    # (reproducibility.defocus_phase_error_rad): at 1 rad a CTF correction keeps cos(1) ≈ 54 % of the
    # signal at the fit resolution.
    "defocus_subcrops_phase": 1.0,
    # NRMSD of the restoration of a one-pixel-shifted input: a shift-invariant filter moves by round-off only.
    "restoration_shift": 0.05,
    # 1 − correlation of the restored independent noise halves above 1/200 Å⁻¹.  Measured half-set
    # correlations of simulated 1k micrographs span 0.02–0.65; τ = 0.5 maps that to e^-2 … e^-0.7, using
    # the score's range instead of crowding near 0.
    "noise_split": 0.5,
    # NRMSD between CPU and GPU restorations: float32 FFT round-off is ~1e-6; 1e-3 means a real difference.
    "cpu_vs_device": 1e-3,
    # |t − t̂|/t̂ of the compute time against the cost model; 2.0 because timings on a shared machine
    # scatter by tens of per cent without anything being wrong, while a step taking 3× its prediction
    # (δ = 2, a self-evaluation loop that needed every iteration, a silent CPU fallback) should register.
    "compute_cost": 2.0,
}
COST_MODEL_STAGES = ("ctf_estimates", "causal_priors", "restored_micrographs", "deconvolved_micrographs")


def _nrmsd(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_rms / std(b): image deviation relative to the image's own contrast."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)) / (float(np.std(b)) + 1e-12))


def _stable_seed(name: str) -> int:
    """A seed derived from the micrograph name, so the noise split is the same on every rerun."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def compute_cost_deviations(warehouse: ScoreWarehouse, batch: str) -> dict[str, float]:
    """δ_cost per micrograph: measured time of the FFT-bound steps vs the cost model (leave one out).

    For each stage in ``COST_MODEL_STAGES`` the model t̂ = c·n·log₂ n is calibrated on the batch's other
    micrographs (``reproducibility.predict_seconds``); the stage times and predictions are summed and
    compared.  Micrographs missing a stage's time, or alone in their batch, get no cost deviation.
    """
    measured: dict[str, float] = {}
    predicted: dict[str, float] = {}
    complete: set[str] | None = None
    for stage in COST_MODEL_STAGES:
        frame = warehouse.read_rows("step_times", f"{batch}.{stage}")
        if frame.empty:
            return {}
        rows = frame.dropna(subset=["n_pixels"]).to_dict("records")
        names = {r["micrograph"] for r in rows}
        complete = names if complete is None else complete & names
        for row in rows:
            others = [r for r in rows if r["micrograph"] != row["micrograph"]]
            guess = predict_seconds(
                [float(r["seconds"]) for r in others], [int(r["n_pixels"]) for r in others], int(row["n_pixels"])
            )
            if guess is None:
                continue
            measured[row["micrograph"]] = measured.get(row["micrograph"], 0.0) + float(row["seconds"])
            predicted[row["micrograph"]] = predicted.get(row["micrograph"], 0.0) + guess
    return {
        name: relative_cost_deviation(measured[name], predicted[name])
        for name in sorted(complete or set())
        if name in predicted and predicted[name] > 0
    }


@dataclass(frozen=True)
class DenoiserRecord:
    """Which denoiser restores a batch: the shipped model, or one fine-tuned on the batch's micrographs.

    ``weights_path`` is the fine-tuned weights file (None for the shipped model); the two held-out
    Noise2Noise losses (``noise2noise_loss``, fresh binomial splits of the batch, a seed not used in
    training) compare them on the same pairs — the fine-tuned model is used only when its loss is lower.
    """

    source: str  # "shipped" | "fine-tuned"
    weights_path: str | None
    finetune_steps: int
    shipped_loss: float | None
    finetuned_loss: float | None
    n_micrographs: int

    @property
    def description(self) -> str:
        if self.weights_path is None:
            return f"{DENOISER_WEIGHTS_NAME}, shipped"
        return f"{DENOISER_WEIGHTS_NAME} fine-tuned for {self.finetune_steps} steps on this batch ({self.weights_path})"


# Held-out comparison of the shipped and the fine-tuned denoiser: patch pairs, patch edge, seed offset.
FINETUNE_HOLDOUT_PAIRS = 64
FINETUNE_PATCH_PX = 128


def finetune_denoiser(micrographs: Mapping[str, Micrograph], steps: int, seed: int, folder: Path) -> DenoiserRecord:
    """Fine-tune the shipped denoiser on a batch's micrographs (counts) and keep it only if it lowers the
    held-out Noise2Noise loss; ``steps`` = 0 or no usable micrograph: the shipped model."""
    from cryodecon_science.denoiser import TrainingConfig, noise2noise_loss, train_noise2noise
    from cryodecon_science.io.denoiser_weights import save_denoiser

    shipped = load_pretrained_denoiser()
    counts = [
        m.data.astype(np.float32)
        for m in micrographs.values()
        if min(m.data.shape) >= FINETUNE_PATCH_PX and float(m.data.mean()) > 1.0
    ]
    if steps == 0 or not counts:
        return DenoiserRecord("shipped", None, 0, None, None, len(counts))
    training = TrainingConfig(steps=steps, batch_size=4, patch_px=FINETUNE_PATCH_PX, learning_rate=1e-4, seed=seed)
    tuned, _ = train_noise2noise(counts, shipped.config, training, initial=shipped)
    holdout_seed = seed + 1_000_003
    shipped_loss = noise2noise_loss(shipped, counts, FINETUNE_HOLDOUT_PAIRS, FINETUNE_PATCH_PX, holdout_seed)
    tuned_loss = noise2noise_loss(tuned, counts, FINETUNE_HOLDOUT_PAIRS, FINETUNE_PATCH_PX, holdout_seed)
    if not tuned_loss < shipped_loss:
        return DenoiserRecord("shipped", None, steps, shipped_loss, tuned_loss, len(counts))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "denoiser_finetuned.pt"
    save_denoiser(tuned, path, {"base": DENOISER_WEIGHTS_NAME, "steps": steps, "holdout_loss": tuned_loss})
    return DenoiserRecord("fine-tuned", str(path), steps, shipped_loss, tuned_loss, len(counts))


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool="gpu",
    kinds={"torch"},
    description="The denoiser that restores this batch: the shipped U-Net, or — with "
    "`CRYODECON_FINETUNE_STEPS` > 0 — the shipped U-Net fine-tuned on the batch's own micrographs "
    "(Noise2Noise on binomial splits, from the shipped weights), kept only if its held-out Noise2Noise "
    "loss on fresh splits of the batch is lower.  Its lineage shows which model restored which micrograph.",
)
def session_denoiser(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    restoration: RestorationSettings,
    outputs: OutputStore,
) -> dg.Output[dict[str, DenoiserRecord]]:
    batch = context.partition_key
    seed = int(hashlib.sha256(batch.encode()).hexdigest()[:8], 16)
    record = finetune_denoiser(
        raw_micrographs,
        restoration.denoiser_finetune_steps,
        seed,
        outputs.asset_path("session_denoiser", batch),
    )
    metadata: dict[str, Any] = {"model": record.description, "source": record.source}
    if record.shipped_loss is not None and record.finetuned_loss is not None:
        metadata |= {
            "holdout_loss_shipped": record.shipped_loss,
            "holdout_loss_finetuned": record.finetuned_loss,
        }
    return dg.Output({"model": record}, metadata=metadata)


def session_model(session_denoiser: Mapping[str, DenoiserRecord]) -> tuple[DenoiserUNet, str]:
    """The U-Net `session_denoiser` chose (its fine-tuned copy, or the shipped weights) and its description."""
    from cryodecon_science.io.denoiser_weights import load_denoiser

    record = session_denoiser.get("model")
    if record is not None and record.weights_path is not None:
        return load_denoiser(record.weights_path), record.description
    description = record.description if record is not None else f"{DENOISER_WEIGHTS_NAME}, shipped"
    return load_pretrained_denoiser(), description


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool="gpu",
    kinds={"torch", "mrc"},
    description="Micrographs denoised by the self-supervised U-Net of `session_denoiser` (the shipped "
    "Noise2Noise model on binomial splits of the counts, `cryodecon_science/data/denoiser_v1.pt`, or its "
    "fine-tuned copy; bf16 on a GPU, float32 on CPU): the CTF is kept.  float32 MRC, pixel size in the header.",
)
def learned_denoised_micrographs(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    session_denoiser: dict[str, DenoiserRecord],
    warehouse: ScoreWarehouse,
    device: TorchDevice,
) -> dg.Output[dict[str, Micrograph]]:
    model, model_description = session_model(session_denoiser)
    torch_device = device.torch_device()

    def batch_step(items: Mapping[str, Micrograph]) -> dict[str, Micrograph | Exception]:
        # On a GPU the frames stream through pinned buffers, copies overlapping compute (benchmarks/bench_gpu.py).
        outcomes = denoise_learned_many([m.data for m in items.values()], model, device=torch_device)
        return {
            name: outcome
            if isinstance(outcome, Exception)
            else Micrograph(name, outcome, micrograph.pixel_size_angstrom)
            for (name, micrograph), outcome in zip(items.items(), outcomes, strict=True)
        }

    result = run_per_micrograph(
        context,
        warehouse,
        "learned_denoised_micrographs",
        selected(context, raw_micrographs),
        batch_step=batch_step,
    )
    return dg.Output(
        result,
        metadata={
            "micrographs": len(result),
            "model": model_description,
            "before_after": before_after(raw_micrographs, result, "learned"),
        },
    )


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool="gpu",
    kinds={"torch", "mrc"},
    description="The product's denoised micrographs (CTF kept): `learned_denoised_micrographs` and the Wiener "
    "`restored_micrographs` fused per Fourier ring, with weights fitted on binomial splits of each "
    "micrograph's own counts (Noise2Noise; `cryodecon_science.fusion`): the network's particle-scale "
    "contrast, the Wiener filter's low frequencies and Thon rings.  float32 MRC, pixel size in the header.",
)
def fused_denoised_micrographs(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    ctf_estimates: dict[str, CtfFit],
    causal_priors: dict[str, causal.CausalPriors],
    session_denoiser: dict[str, DenoiserRecord],
    learned_denoised_micrographs: dict[str, Micrograph],
    restored_micrographs: dict[str, Micrograph],
    warehouse: ScoreWarehouse,
    device: TorchDevice,
) -> dg.Output[dict[str, Micrograph]]:
    from cryodecon_science.fusion import fuse_learned_and_wiener

    model, model_description = session_model(session_denoiser)
    torch_device = device.torch_device()
    items = {
        k: v
        for k, v in selected(context, raw_micrographs).items()
        if k in learned_denoised_micrographs and k in restored_micrographs and k in causal_priors
    }
    low_weights: dict[str, float] = {}

    def step(name: str, exposure: Exposure) -> Micrograph:
        fit = causal.refined_ctf_fit(ctf_estimates[name], causal_priors[name])
        data, weights = fuse_learned_and_wiener(
            exposure.data,
            model,
            fit,
            exposure.microscope,
            seed=_stable_seed(name),
            learned_full=learned_denoised_micrographs[name].data,
            wiener_full=restored_micrographs[name].data,
            device=torch_device,
        )
        low_weights[name] = float(weights.ring_weights()[1:9, 0].mean())
        return Micrograph(name, np.asarray(data, dtype=np.float32), exposure.pixel_size_angstrom)

    result = run_per_micrograph(context, warehouse, "fused_denoised_micrographs", items, step)
    return dg.Output(
        result,
        metadata={
            "micrographs": len(result),
            "model": model_description,
            "mean_learned_weight_rings_1_8": float(np.mean(list(low_weights.values())))
            if low_weights
            else float("nan"),
            "before_after": before_after(raw_micrographs, result, "fused"),
        },
    )


@dataclass(frozen=True)
class EvaluationRecord:
    components: scores.ScoreComponents
    rules: tuple[scores.RuleResult, ...]
    n_particles: int
    impact_citations: float
    details: Mapping[str, float]
    repro_limited_by: str
    half_set_frc_0143_angstrom: float | None


EVALUATION_CHECKS = [
    dg.AssetCheckSpec(
        f"rule_{rule.name}",
        asset="evaluation_scores",
        description=f"{rule.statement} ({rule.physical_reason})",
    )
    for rule in scores.LOGIC_RULES
]


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    kinds={"lancedb", "torch"},
    check_specs=EVALUATION_CHECKS,
    deps=["impact_model"],
    description="The five components of V per micrograph: LogicScore (consistency rules, one asset check "
    "each), Novelty (LanceDB structure library), ImpactFore (citation-graph GNN, `impact_model`), ΔRepro "
    "(weakest link of perturbations: noise split, sub-crops, shift, CPU vs GPU, compute cost), "
    "⋄Meta (stability of the self-evaluation loop).",
)
def evaluation_scores(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    ctf_estimates: dict[str, CtfFit],
    causal_priors: dict[str, causal.CausalPriors],
    restored_micrographs: dict[str, Micrograph],
    deconvolved_micrographs: dict[str, Micrograph],
    warehouse: ScoreWarehouse,
    structure_library: StructureLibrary,
    scoring: ScoringSettings,
    device: TorchDevice,
    outputs: OutputStore,
) -> Iterable[dg.Output[dict[str, EvaluationRecord]] | dg.AssetCheckResult]:
    batch = context.partition_key
    manifest = load_manifest(warehouse, batch)
    torch_device = device.torch_device()
    graph = load_citation_graph(scoring)
    max_citations = max_citations_within_years(graph, 5) if graph is not None else 0
    prepared_graph = prepare_impact_graph(graph) if graph is not None else None
    model = load_or_train_impact_model(outputs, prepared_graph) if prepared_graph is not None else None
    publication_year = datetime.fromtimestamp(manifest.cut_at_s, UTC).year
    library_distances = structure_library.library_nn_distances(before_s=manifest.cut_at_s)
    items = {
        k: v
        for k, v in selected(context, raw_micrographs).items()
        if k in restored_micrographs and k in deconvolved_micrographs and k in causal_priors
    }
    embeddings_by_name: dict[str, np.ndarray] = {}
    cost_deviations = compute_cost_deviations(warehouse, batch)

    def step(name: str, exposure: Exposure) -> EvaluationRecord:
        raw = exposure
        fit = ctf_estimates[name]
        priors = causal_priors[name]
        restored = restored_micrographs[name].data
        pixel = raw.pixel_size_angstrom
        diameter_px = scoring.particle_diameter_angstrom / pixel
        # Picked on the CTF-corrected image, where dense particles are bright blobs (on the denoised
        # image, defocus fringes spread them into rings and the DoG picker misses most of them).
        picks = pick_particles(
            deconvolved_micrographs[name].data,
            pixel,
            scoring.particle_diameter_angstrom,
            threshold_sigma=PICK_THRESHOLD_SIGMA,
            dark_particles=False,
        )
        # LogicScore
        inputs = scores.RuleInputs(
            defocus_u_angstrom=fit.ctf.defocus_u_angstrom,
            defocus_v_angstrom=fit.ctf.defocus_v_angstrom,
            nominal_defocus_angstrom=exposure.nominal_defocus_angstrom,
            fit_resolution_angstrom=fit.fit_resolution_angstrom,
            pixel_size_angstrom=pixel,
            dose_header_e_per_angstrom2=exposure.dose_e_per_angstrom2,
            mean_counts_per_pixel=float(raw.data.mean()),
            low_frequency_power_ratio=scores.low_frequency_power_ratio(raw.data, restored, pixel),
            beyond_fit_power_ratio=scores.power_beyond_ratio(
                raw.data, deconvolved_micrographs[name].data, pixel, fit.fit_resolution_angstrom
            ),
            particle_positions_px=picks,
            particle_diameter_px=diameter_px,
            image_shape_px=(int(raw.data.shape[0]), int(raw.data.shape[1])),
            excluded_area_mask=excluded_area_mask(raw.data, pixel),
        )
        rule_results = scores.evaluate_rules(inputs)
        logic = scores.logic_score(rule_results)
        # Novelty and ImpactFore through the structure library, on CTF-corrected particle boxes (the
        # references are CTF-free projections, so CTF-modulated boxes would look novel for that alone).
        box_px = particle_box_px(diameter_px)
        deconvolved = deconvolved_micrographs[name].data
        boxes = extract_boxes(deconvolved, picks, box_px) if len(picks) else np.zeros((0, box_px, box_px), np.float32)
        embeddings = embed_particles(boxes, device=torch_device) if len(boxes) else np.zeros((0, 1), np.float32)
        impact_citations = 0.0
        if len(embeddings):
            # An empty library gives infinite distances, hence novelty 1: nothing is known yet.
            distances, neighbours = structure_library.nearest(
                embeddings, k=1, before_s=manifest.cut_at_s, exclude_batch=batch
            )
            novelty = novelty_score(distances[:, 0], library_distances)
            cited = [
                (hits[0].paper_id, 1.0 - hits[0].distance)
                for hits in neighbours
                if hits and hits[0].paper_id and hits[0].distance < 1.0
            ]
            if model is not None and prepared_graph is not None and cited:
                # A new structure enters the citation graph as a paper citing the papers of the known
                # structures it resembles (impact_gnn.forecast_new_paper).
                impact_citations = forecast_new_paper(
                    model, prepared_graph, [str(p) for p, _ in cited], publication_year, [w for _, w in cited]
                )
        else:
            novelty = 0.0  # no particle found: empty ice or contamination is not a novel structure
        impact = scores.impact_normalised(impact_citations, float(max_citations)) if max_citations > 0 else 0.0
        embeddings_by_name[name] = embeddings
        # ΔRepro: the CTF on independent sub-crops (tile halves), the restoration on an independent
        # noise split and on a one-pixel shift, CPU vs GPU when on a GPU, and the compute-cost deviation.
        fit_used = causal.refined_ctf_fit(fit, priors)
        shifted = wiener_denoise(np.roll(raw.data, 1, axis=1), fit_used, exposure.microscope, device=torch_device)
        deviations = {
            "defocus_subcrops_phase": defocus_phase_error_rad(
                fit.defocus_sigma_angstrom, fit.fit_resolution_angstrom, exposure.microscope.voltage_kv
            ),
            "restoration_shift": _nrmsd(np.roll(shifted, -1, axis=1), restored),
        }
        half_a, half_b = binomial_split_counts(raw.data, seed=_stable_seed(name))
        denoise_filter = wiener_denoise_filter(raw.data.shape, fit_used, exposure.microscope, device=torch_device)
        half_correlation = filtered_half_correlation(half_a, half_b, denoise_filter, pixel)
        # Quality without ground truth: where the independently restored halves stop agreeing.
        frc_resolution = frc_resolution_angstrom(*half_set_frc(half_a, half_b, denoise_filter, pixel))
        deviations["noise_split"] = max(0.0, 1.0 - half_correlation)
        if torch_device.type != "cpu":
            on_cpu = wiener_denoise(raw.data, fit_used, exposure.microscope, device="cpu")
            deviations["cpu_vs_device"] = _nrmsd(restored, on_cpu)
        if name in cost_deviations:
            deviations["compute_cost"] = cost_deviations[name]
        repro = scores.reproducibility_score(deviations, REPRO_TOLERANCES)
        limiting = scores.limiting_quantity(deviations, REPRO_TOLERANCES)
        sigmas = {e.node: e.sigma for e in priors.estimates}
        meta = scores.meta_stability_score(priors.iterations, sigmas, priors.converged)
        components = scores.ScoreComponents(logic=logic, novelty=novelty, impact=impact, repro=repro, meta=meta)
        return EvaluationRecord(
            components,
            rule_results,
            len(picks),
            impact_citations,
            {**{f"repro_{k}": v for k, v in deviations.items()}, "half_set_correlation": half_correlation},
            limiting,
            frc_resolution,
        )

    records = run_per_micrograph(context, warehouse, "evaluation_scores", items, step)
    # Grow the library with this batch's particles (idempotent per batch: a rerun replaces them).
    all_embeddings = [e for e in embeddings_by_name.values() if len(e)]
    if all_embeddings and selection(context) is None:
        stacked = np.concatenate(all_embeddings)
        structure_library.add_embeddings(
            stacked,
            structure_ids=[f"{batch}:{n}" for n, e in embeddings_by_name.items() for _ in range(len(e))],
            batch_key=batch,
            session=manifest.session,
            paper_ids=[None] * len(stacked),
            registered_before_s=manifest.cut_at_s,
        )
    rows, rule_rows = [], []
    for name, record in records.items():
        c = record.components
        rows.append(
            {
                "micrograph": name,
                "batch": batch,
                "session": manifest.session,
                "logic": c.logic,
                "novelty": c.novelty,
                "impact": c.impact,
                "impact_citations": record.impact_citations,
                # ImpactFore from a generated citation graph must never pass for bibliometrics.
                "impact_graph_synthetic": bool(graph.graph.get("synthetic", False)) if graph is not None else None,
                "repro": c.repro,
                "repro_limited_by": record.repro_limited_by,
                "half_set_correlation": record.details["half_set_correlation"],
                "half_set_frc_0143_angstrom": record.half_set_frc_0143_angstrom,
                "meta": c.meta,
                "n_particles": record.n_particles,
                "details": json.dumps(dict(record.details), sort_keys=True),
            }
        )
        for result in record.rules:
            rule_rows.append(
                {
                    "micrograph": name,
                    "batch": batch,
                    "rule": result.name,
                    "status": result.status,
                    "observed": result.observed,
                }
            )
    chosen = selection(context)
    warehouse.write_rows("scores", batch, rows, replace_micrographs=chosen)
    warehouse.write_rows("rules", batch, rule_rows, replace_micrographs=chosen)
    yield dg.Output(
        records,
        metadata={
            "scored": len(records),
            "mean_logic": float(np.mean([r["logic"] for r in rows])) if rows else float("nan"),
            "mean_novelty": float(np.mean([r["novelty"] for r in rows])) if rows else float("nan"),
            "library_entries": structure_library.count(),
            "half_set_quality": dg.MetadataValue.md(half_set_table(rows)),
        },
    )
    for rule in scores.LOGIC_RULES:
        statuses = {name: next(r for r in rec.rules if r.name == rule.name) for name, rec in records.items()}
        failed = sorted(n for n, r in statuses.items() if r.status == "fail")
        yield dg.AssetCheckResult(
            check_name=f"rule_{rule.name}",
            passed=not failed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "failed": len(failed),
                "not_applicable": sum(1 for r in statuses.values() if r.status == "not_applicable"),
                "failed_micrographs": dg.MetadataValue.json({n: statuses[n].observed for n in failed}),
            },
        )


def half_set_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per micrograph, how well independently restored noise halves agree (no ground truth)."""
    lines = [
        "| micrograph | half-set correlation | half-set FRC-0.143 (Å) | ΔRepro | limited by |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        frc = row["half_set_frc_0143_angstrom"]
        lines.append(
            f"| {row['micrograph']} | {row['half_set_correlation']:.3f} | "
            f"{'—' if frc is None else f'{frc:.1f}'} | {row['repro']:.3f} | {row['repro_limited_by']} |"
        )
    return "\n".join(lines)


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    deps=["score_weights"],
    description="Research Quality Score V = Σ wᵢ·componentᵢ ∈ [0, 1] with the weights in force (configured, "
    "learned from curation labels by `score_weights`, or the shipped simulation-learned ones), their version "
    "recorded on every row.",
)
def quality_scores(
    context: dg.AssetExecutionContext,
    evaluation_scores: dict[str, EvaluationRecord],
    warehouse: ScoreWarehouse,
    scoring: ScoringSettings,
) -> dg.Output[dict[str, float]]:
    batch = context.partition_key
    learned = warehouse.read_rows(WEIGHTS_TABLE)
    weights, source = scoring.resolve_weights(learned.to_dict("records") if not learned.empty else [])
    values = {
        name: scores.quality_v(record.components, weights)
        for name, record in selected(context, evaluation_scores).items()
    }
    rows = [
        {
            "micrograph": n,
            "batch": batch,
            "v": v,
            "weights_version": weights.version,
            "weights_source": source,
            "weights": json.dumps({k: getattr(weights, k) for k in scores.COMPONENT_NAMES}),
        }
        for n, v in values.items()
    ]
    warehouse.write_rows("quality", batch, rows, replace_micrographs=selection(context))
    return dg.Output(
        values,
        metadata={
            "mean_v": float(np.mean(list(values.values()))) if values else float("nan"),
            "weights_version": weights.version,
            "weights_source": source,
            "weights": dg.MetadataValue.json({k: round(getattr(weights, k), 4) for k in scores.COMPONENT_NAMES}),
        },
    )


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    description="HyperScore = 100 × [1 + σ(β·ln V + γ)^κ] per micrograph, in [100, 200].",
)
def hyperscores(
    context: dg.AssetExecutionContext,
    quality_scores: dict[str, float],
    warehouse: ScoreWarehouse,
    scoring: ScoringSettings,
) -> dg.Output[dict[str, float]]:
    batch = context.partition_key
    manifest = load_manifest(warehouse, batch)
    quality_rows = warehouse.read_rows("quality", batch)
    versions = dict(zip(quality_rows["micrograph"], quality_rows["weights_version"], strict=True))
    learned = warehouse.read_rows(WEIGHTS_TABLE)
    learned_rows = learned.to_dict("records") if not learned.empty else []
    shapes = {version: scoring.resolve_shape(learned_rows, version) for version in set(versions.values())}
    values = {}
    for name, v in selected(context, quality_scores).items():
        beta, gamma, kappa = shapes[versions[name]]
        values[name] = scores.hyperscore(v, beta=beta, gamma=gamma, kappa=kappa)
    rows = [
        {
            "micrograph": n,
            "batch": batch,
            "session": manifest.session,
            "v": quality_scores[n],
            "hyperscore": h,
            "beta": shapes[versions[n]][0],
            "gamma": shapes[versions[n]][1],
            "kappa": shapes[versions[n]][2],
            "weights_version": versions[n],
            "cut_at_s": manifest.cut_at_s,
        }
        for n, h in values.items()
    ]
    warehouse.write_rows("hyperscores", batch, rows, replace_micrographs=selection(context))
    table = "| micrograph | V | HyperScore |\n|---|---|---|\n" + "\n".join(
        f"| {r['micrograph']} | {r['v']:.3f} | {r['hyperscore']:.2f} |" for r in rows
    )
    return dg.Output(
        values,
        metadata={
            "mean_hyperscore": float(np.mean(list(values.values()))) if values else float("nan"),
            "hyperscores": dg.MetadataValue.md(table),
        },
    )


BATCH_ASSETS = [
    raw_micrographs,
    ctf_estimates,
    causal_priors,
    restored_micrographs,
    deconvolved_micrographs,
    session_denoiser,
    learned_denoised_micrographs,
    fused_denoised_micrographs,
    evaluation_scores,
    quality_scores,
    hyperscores,
]
