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
import functools
import json
import math
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import networkx as nx
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
from cryodecon_assets.references import load_citation_graph, load_or_train_impact_model
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
from cryodecon_resources.tables import tables_metadata
from cryodecon_science import causal
from cryodecon_science.citations import max_citations_within_years
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.denoiser import DenoiserUNet, denoise_learned_many
from cryodecon_science.denoiser_finetune import DENOISER_WEIGHTS_NAME, DenoiserRecord, finetune_denoiser
from cryodecon_science.exposure import FALLBACK_VOLTAGE_KV, Exposure
from cryodecon_science.impact import forecast_new_paper, prepare_impact_graph
from cryodecon_science.ingest import MovieMotion, PreparedExposure, prepare_exposure
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser, save_finetuned_denoiser
from cryodecon_science.io.errors import InputFileError
from cryodecon_science.io.layout import read_exposure
from cryodecon_science.io.mrc import Micrograph, write_mrc
from cryodecon_science.io.session import SessionMetadata, SessionMetadataError, read_session_metadata
from cryodecon_science.metadata import flatten_metadata, metadata_to_json
from cryodecon_science.optics import MicroscopeSettings
from cryodecon_science.records import CtfFit
from cryodecon_science.reproducibility import COST_MODEL_STAGES, StepTime, cost_deviations, stable_seed
from cryodecon_science.restore import wiener_deconvolve, wiener_denoise
from cryodecon_science.scoring import (
    COMPONENT_NAMES,
    LOGIC_RULES,
    EvaluationRecord,
    EvaluationSettings,
    MicrographEvaluation,
    ReferenceData,
    evaluate_micrograph,
    hyperscore,
    quality_v,
)

GROUP = "batch_pipeline"
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
    outcomes: Mapping[str, T | Exception] | None = None,
    seconds: Mapping[str, float] | None = None,
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
    number of micrographs.  ``outcomes`` instead are the results already computed by a step over the batch
    that must see the micrographs in sequence (``causal.fit_session``), with each one's wall time in
    ``seconds``.  Each successful step's wall time goes to the warehouse table ``step_times`` (partition
    ``<batch>.<stage>``): staff see where time goes, and the cost model of ΔRepro calibrates on it.
    """
    if sum(given is not None for given in (step, batch_step, outcomes)) != 1:
        raise TypeError("give exactly one of step, batch_step and outcomes")
    batch = context.partition_key
    results: dict[str, T] = {}
    failures: list[dict[str, Any]] = []
    unexpected: list[Exception] = []
    times: list[dict[str, Any]] = []
    own_seconds: Mapping[str, float] = seconds or {}
    shared_seconds = 0.0
    if batch_step is not None and items:
        started = time.perf_counter()
        outcomes = batch_step(items)
        shared_seconds = (time.perf_counter() - started) / len(items)
    computed: Mapping[str, T | Exception] = outcomes or {}
    for name, item in items.items():
        started = time.perf_counter()
        try:
            if step is not None:
                result = step(name, item)
            else:
                outcome = computed[name]
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
                "seconds": time.perf_counter() - started if step is not None else own_seconds.get(name, shared_seconds),
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


def warning_check(check_name: str, passed: bool, **metadata: Any) -> dg.AssetCheckResult:
    """An asset check result of severity WARN: a failure is shown, downstream assets still run."""
    return dg.AssetCheckResult(
        check_name=check_name, passed=passed, severity=dg.AssetCheckSeverity.WARN, metadata=metadata
    )


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
    held = {
        table: warehouse.write_rows(table, batch, rows, replace_micrographs=chosen) for table, rows in tables.items()
    }
    if chosen is None:
        remove_stale_sums(sums_folder, set(exposures))
    # RELION's corrected_micrographs.star over the whole batch (a selective rerun keeps the other movies' rows).
    star_path = write_motion_star(warehouse, outputs, batch)
    quarantine(warehouse, batch, "raw_micrographs", failures, chosen)
    yield dg.Output(
        exposures, metadata={**raw_metadata(manifest, prepared, tables, failures, star_path), **tables_metadata(held)}
    )
    yield from raw_checks(prepared, failures)


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
    rows = ctf_rows(batch, raw_micrographs, fits)
    held = {"ctf": warehouse.write_rows("ctf", batch, rows, replace_micrographs=selection(context))}
    star_path = write_ctf_star(warehouse, outputs, batch, raw_micrographs, fits)
    return dg.Output(fits, metadata={**ctf_metadata(raw_micrographs, fits, rows, star_path), **tables_metadata(held)})


def ctf_rows(batch: str, raw: Mapping[str, Exposure], fits: Mapping[str, CtfFit]) -> list[dict[str, Any]]:
    """The ``ctf`` table: one row per fitted micrograph."""
    return [
        {
            "micrograph": name,
            "batch": batch,
            "session": raw[name].session,
            "defocus_u_angstrom": fit.ctf.defocus_u_angstrom,
            "defocus_v_angstrom": fit.ctf.defocus_v_angstrom,
            "astigmatism_angle_degrees": fit.ctf.astigmatism_angle_deg,
            "phase_shift_rad": fit.ctf.phase_shift_rad,
            "fit_resolution_angstrom": fit.fit_resolution_angstrom,
            "cross_correlation": fit.cross_correlation,
            "defocus_sigma_angstrom": fit.defocus_sigma_angstrom,
            "nominal_defocus_angstrom": raw[name].nominal_defocus_angstrom,
        }
        for name, fit in fits.items()
    ]


def write_ctf_star(
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
    batch: str,
    raw: Mapping[str, Exposure],
    fits: Mapping[str, CtfFit],
) -> Path:
    """RELION ``micrographs_ctf.star`` over the batch's ``ctf`` rows (a selective rerun keeps the others' fits)."""
    from cryodecon_science.io.star import MicrographCtfRow, write_micrographs_ctf_star

    star_path = outputs.star_path(batch, "micrographs_ctf.star")
    star_rows = []
    stored = load_stored_fits(outputs, batch)
    for row in warehouse.read_rows("ctf", batch).to_dict("records"):
        name = row["micrograph"]
        fit = fits.get(name) or stored.get(name)
        if fit is not None and name in raw:
            star_rows.append(
                MicrographCtfRow(
                    str(outputs.asset_path("raw_micrographs", batch, f"{name}.mrc")), fit, raw[name].microscope
                )
            )
    if star_rows:
        write_micrographs_ctf_star(star_path, star_rows)
    return star_path


def ctf_metadata(
    raw: Mapping[str, Exposure], fits: Mapping[str, CtfFit], rows: list[dict[str, Any]], star_path: Path
) -> dict[str, Any]:
    """The UI metadata of ``ctf_estimates``: medians, the STAR file, diagnostics and the fits' table."""
    defoci = [r["defocus_u_angstrom"] for r in rows]
    return {
        "fitted": len(fits),
        "median_defocus_u_angstrom": float(np.median(defoci)) if defoci else float("nan"),
        "median_fit_resolution_angstrom": (
            float(np.median([r["fit_resolution_angstrom"] for r in rows])) if rows else float("nan")
        ),
        "star_file": dg.MetadataValue.path(str(star_path)),
        "diagnostics": dg.MetadataValue.md(
            ctf_markdown(
                {k: raw[k].data for k in list(fits)[:PREVIEW_LIMIT]},
                fits,
                {k: raw[k].microscope for k in fits},
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
    }


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

    def fit(name: str, session_prior: causal.SessionPrior | None) -> causal.CausalPriors:
        exposure = items[name]
        return causal.fit_priors(
            exposure.data,
            ctf_estimates[name],
            exposure.microscope,
            dose_e_per_angstrom2=exposure.dose_e_per_angstrom2,
            drift_total_px=exposure.residual_blur_px,
            session_prior=session_prior,
            device=torch_device,
        )

    session = causal.fit_session(list(items), fit, prior_before, recoverable=SCIENCE_ERRORS)
    fitted_all = run_per_micrograph(
        context, warehouse, "causal_priors", items, outcomes=session.priors, seconds=session.seconds
    )
    for name, exc in session.refit_errors.items():  # the first fit stands on its own: kept
        context.log.warning(f"causal_priors: {name} refit with the session prior failed, first fit kept: {exc}")
    rows = prior_rows(batch, manifest, fitted_all)
    for name, fitted in fitted_all.items():
        warehouse.write_document("causal_graphs", f"{batch}.{name}", fitted.graph_node_link)
    chosen = selection(context)
    held = {
        "priors": warehouse.write_rows("priors", batch, rows, replace_micrographs=chosen),
        "prior_iterations": warehouse.write_rows(
            "prior_iterations", batch, iteration_rows(batch, fitted_all), replace_micrographs=chosen
        ),
    }
    population_rows = record_session_prior(warehouse, manifest, batch, prior_before)
    held["session_priors"] = len(population_rows)
    metadata = causal_metadata(fitted_all, session.refitted, rows, population_rows)
    return dg.Output(fitted_all, metadata={**metadata, **tables_metadata(held)})


def prior_rows(
    batch: str, manifest: BatchManifest, fitted_all: Mapping[str, causal.CausalPriors]
) -> list[dict[str, Any]]:
    """The ``priors`` table: per micrograph, each cause node and the ice power (estimate and measurement)."""
    rows = []
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
    return rows


def iteration_rows(batch: str, fitted_all: Mapping[str, causal.CausalPriors]) -> list[dict[str, Any]]:
    """The ``prior_iterations`` table: every node's value at every iteration of the self-evaluation loop."""
    return [
        {"micrograph": name, "batch": batch, "iteration": index, "node": node, "value": value}
        for name, fitted in fitted_all.items()
        for index, values in enumerate(fitted.iterations)
        for node, value in values.items()
    ]


def record_session_prior(
    warehouse: ScoreWarehouse, manifest: BatchManifest, batch: str, prior_before: causal.SessionPrior | None
) -> list[dict[str, object]]:
    """Write (and return) the ``session_priors`` rows: the prior after this batch, from its whole partition."""
    batch_measured = measured_per_micrograph(warehouse.read_rows("priors", batch))
    after = causal.session_prior_of(batch_measured, prior_before) if batch_measured else prior_before
    population_rows = session_prior_rows(after, manifest.session, batch, manifest.sequence) if after else []
    warehouse.write_rows("session_priors", batch, population_rows)
    return population_rows


def causal_metadata(
    fitted_all: Mapping[str, causal.CausalPriors],
    refitted: Sequence[str],
    rows: list[dict[str, Any]],
    population_rows: list[dict[str, object]],
) -> dict[str, Any]:
    """The UI metadata of ``causal_priors``: refits, convergence, mean weights, the session prior, graphs."""
    weights: dict[str, list[float]] = {}
    for row in rows:
        if row["node"] in causal.CAUSE_NODES:
            weights.setdefault(row["node"], []).append(row["weight"])
    return {
        "refitted_with_the_session_prior": dg.MetadataValue.json(sorted(refitted)),
        "converged": sum(1 for p in fitted_all.values() if p.converged),
        "not_converged": sum(1 for p in fitted_all.values() if not p.converged),
        "mean_weight_by_node": dg.MetadataValue.json({k: float(np.mean(v)) for k, v in sorted(weights.items())}),
        "session_prior": dg.MetadataValue.md(session_prior_markdown(population_rows)),
        "causal_graph": dg.MetadataValue.md(
            "\n\n".join(causal_graph_markdown(p, name) for name, p in list(fitted_all.items())[:PREVIEW_LIMIT])
        ),
    }


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


def step_times(warehouse: ScoreWarehouse, batch: str) -> dict[str, list[StepTime]]:
    """The batch's ``step_times`` of the cost model's stages (``COST_MODEL_STAGES``), rows with a size only."""
    times: dict[str, list[StepTime]] = {}
    for stage in COST_MODEL_STAGES:
        frame = warehouse.read_rows("step_times", f"{batch}.{stage}")
        rows = frame.dropna(subset=["n_pixels"]).to_dict("records") if not frame.empty else []
        times[stage] = [StepTime(r["micrograph"], float(r["seconds"]), int(r["n_pixels"])) for r in rows]
    return times


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
    record = finetune_denoiser(
        [exposure.data for exposure in raw_micrographs.values()],
        load_pretrained_denoiser(),
        restoration.denoiser_finetune_steps,
        stable_seed(batch),
        functools.partial(save_finetuned_denoiser, outputs.asset_path("session_denoiser", batch)),
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
            seed=stable_seed(name),
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


EVALUATION_CHECKS = [
    dg.AssetCheckSpec(
        f"rule_{rule.name}",
        asset="evaluation_scores",
        description=f"{rule.statement} ({rule.physical_reason})",
    )
    for rule in LOGIC_RULES
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
    references = reference_data(structure_library, graph, outputs, manifest, batch)
    settings = EvaluationSettings(particle_diameter_angstrom=scoring.particle_diameter_angstrom)
    items = {
        k: v
        for k, v in selected(context, raw_micrographs).items()
        if k in restored_micrographs and k in deconvolved_micrographs and k in causal_priors
    }
    cost = cost_deviations(step_times(warehouse, batch))

    def step(name: str, exposure: Exposure) -> MicrographEvaluation:
        return evaluate_micrograph(
            exposure,
            ctf_estimates[name],
            causal_priors[name],
            restored_micrographs[name].data,
            deconvolved_micrographs[name].data,
            references=references,
            settings=settings,
            cost_deviation=cost.get(name),
            seed=stable_seed(name),
            device=torch_device,
        )

    evaluations = run_per_micrograph(context, warehouse, "evaluation_scores", items, step)
    if selection(context) is None:  # a selective rerun leaves the batch's library entries as they are
        grow_library(structure_library, manifest, batch, {n: e.embeddings for n, e in evaluations.items()})
    records = {name: evaluation.record for name, evaluation in evaluations.items()}
    synthetic = bool(graph.graph.get("synthetic", False)) if graph is not None else None
    rows = score_rows(batch, manifest.session, records, synthetic)
    chosen = selection(context)
    held = {
        "scores": warehouse.write_rows("scores", batch, rows, replace_micrographs=chosen),
        "rules": warehouse.write_rows("rules", batch, rule_rows(batch, records), replace_micrographs=chosen),
    }
    yield dg.Output(records, metadata={**evaluation_metadata(rows, structure_library.count()), **tables_metadata(held)})
    yield from rule_checks(records)


def reference_data(
    structure_library: StructureLibrary,
    graph: nx.DiGraph | None,
    outputs: OutputStore,
    manifest: BatchManifest,
    batch: str,
) -> ReferenceData:
    """The structure library and the ImpactFore model as known when the batch was cut (``cut_at_s``)."""
    max_citations = max_citations_within_years(graph, 5) if graph is not None else 0
    prepared_graph = prepare_impact_graph(graph) if graph is not None else None
    model = load_or_train_impact_model(outputs, prepared_graph) if prepared_graph is not None else None
    publication_year = datetime.fromtimestamp(manifest.cut_at_s, UTC).year
    library_distances = structure_library.library_nn_distances(before_s=manifest.cut_at_s)

    def forecast(papers: Sequence[str], weights: Sequence[float]) -> float:
        # A new structure enters the citation graph as a paper citing the papers of the structures it resembles.
        return forecast_new_paper(model, prepared_graph, papers, publication_year, weights)

    return ReferenceData(
        nearest=functools.partial(structure_library.nearest, k=1, before_s=manifest.cut_at_s, exclude_batch=batch),
        library_nn_distances=library_distances,
        forecast_citations=forecast if model is not None and prepared_graph is not None else None,
        max_citations=float(max_citations),
    )


def grow_library(
    structure_library: StructureLibrary, manifest: BatchManifest, batch: str, embeddings: Mapping[str, np.ndarray]
) -> None:
    """Add the batch's particles to the library (idempotent per batch: a rerun replaces them)."""
    all_embeddings = [e for e in embeddings.values() if len(e)]
    if not all_embeddings:
        return
    stacked = np.concatenate(all_embeddings)
    structure_library.add_embeddings(
        stacked,
        structure_ids=[f"{batch}:{n}" for n, e in embeddings.items() for _ in range(len(e))],
        batch_key=batch,
        session=manifest.session,
        paper_ids=[None] * len(stacked),
        registered_before_s=manifest.cut_at_s,
    )


def score_rows(
    batch: str, session: str, records: Mapping[str, EvaluationRecord], synthetic_graph: bool | None
) -> list[dict[str, Any]]:
    """The ``scores`` table: the five components and their details, one row per micrograph."""
    rows = []
    for name, record in records.items():
        c = record.components
        rows.append(
            {
                "micrograph": name,
                "batch": batch,
                "session": session,
                "logic": c.logic,
                "novelty": c.novelty,
                "impact": c.impact,
                "impact_citations": record.impact_citations,
                # ImpactFore from a generated citation graph must never pass for bibliometrics.
                "impact_graph_synthetic": synthetic_graph,
                "repro": c.repro,
                "repro_limited_by": record.repro_limited_by,
                "half_set_correlation": record.details["half_set_correlation"],
                "half_set_frc_0143_angstrom": record.half_set_frc_0143_angstrom,
                "meta": c.meta,
                "n_particles": record.n_particles,
                "details": json.dumps(dict(record.details), sort_keys=True),
            }
        )
    return rows


def rule_rows(batch: str, records: Mapping[str, EvaluationRecord]) -> list[dict[str, Any]]:
    """The ``rules`` table: every consistency rule's outcome, one row per micrograph and rule."""
    return [
        {"micrograph": name, "batch": batch, "rule": result.name, "status": result.status, "observed": result.observed}
        for name, record in records.items()
        for result in record.rules
    ]


def evaluation_metadata(rows: list[dict[str, Any]], library_entries: int) -> dict[str, Any]:
    """The UI metadata of ``evaluation_scores``: means, the library's size and the half-set quality table."""
    return {
        "scored": len(rows),
        "mean_logic": float(np.mean([r["logic"] for r in rows])) if rows else float("nan"),
        "mean_novelty": float(np.mean([r["novelty"] for r in rows])) if rows else float("nan"),
        "library_entries": library_entries,
        "half_set_quality": dg.MetadataValue.md(half_set_table(rows)),
    }


def rule_checks(records: Mapping[str, EvaluationRecord]) -> Iterator[dg.AssetCheckResult]:
    """One asset check per consistency rule: which micrographs failed it."""
    for rule in LOGIC_RULES:
        statuses = {name: next(r for r in rec.rules if r.name == rule.name) for name, rec in records.items()}
        failed = sorted(n for n, r in statuses.items() if r.status == "fail")
        yield warning_check(
            f"rule_{rule.name}",
            not failed,
            failed=len(failed),
            not_applicable=sum(1 for r in statuses.values() if r.status == "not_applicable"),
            failed_micrographs=dg.MetadataValue.json({n: statuses[n].observed for n in failed}),
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
        name: quality_v(record.components, weights) for name, record in selected(context, evaluation_scores).items()
    }
    rows = [
        {
            "micrograph": n,
            "batch": batch,
            "v": v,
            "weights_version": weights.version,
            "weights_source": source,
            "weights": json.dumps({k: getattr(weights, k) for k in COMPONENT_NAMES}),
        }
        for n, v in values.items()
    ]
    held = {"quality": warehouse.write_rows("quality", batch, rows, replace_micrographs=selection(context))}
    return dg.Output(
        values,
        metadata={
            **tables_metadata(held),
            "mean_v": float(np.mean(list(values.values()))) if values else float("nan"),
            "weights_version": weights.version,
            "weights_source": source,
            "weights": dg.MetadataValue.json({k: round(getattr(weights, k), 4) for k in COMPONENT_NAMES}),
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
        values[name] = hyperscore(v, beta=beta, gamma=gamma, kappa=kappa)
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
    held = {"hyperscores": warehouse.write_rows("hyperscores", batch, rows, replace_micrographs=selection(context))}
    table = "| micrograph | V | HyperScore |\n|---|---|---|\n" + "\n".join(
        f"| {r['micrograph']} | {r['v']:.3f} | {r['hyperscore']:.2f} |" for r in rows
    )
    return dg.Output(
        values,
        metadata={
            **tables_metadata(held),
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
