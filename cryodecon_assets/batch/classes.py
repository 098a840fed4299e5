"""``classes_2d``: the session's streaming 2D classes after each batch, with the automatic selection.

Each batch's particles are folded into the classes the session had after its latest earlier batch
(``<outputs>/sessions/<session>/classes_2d/after-<sequence>.pt``), so a rerun of a batch starts from the
same classes and never from its own result; the first batch of a session (or one whose earlier batches
have no classes yet) starts reference-free.  An unreadable earlier state fails the run with a
``ClassStateError`` naming the file, before anything of the batch is written.  The averages, the
selection with its reasons, where each particle went and whether it is kept (``select_particles``: its class
selected and ln B ≥ 3 against background) are recorded (``particle_classes``, and
``<outputs>/star/<batch>/particles_classified.star``: the batch's particles.star with rlnClassNumber, and
``particles_selected.star``: the kept ones, what RELION's Subset selection or cryoSPARC's Select 2D hands on;
absent when none is kept); the gallery is in the materialization metadata.

Novelty on classes: each class average is embedded (``embed_class_images``) and compared with the class
library (LanceDB table ``class_averages``: reference views of known structures and the good classes of other
sessions, as known when the batch was cut); its calibrated novelty (less the share its half-set noise explains)
goes into the ``classes_2d`` table, the
batch's (the particle-weighted mean over the selected classes) into the metadata.  The session's selected
classes then replace the session's entries in the library (key ``session-<session>``), unless a later batch of
the session has classes already (a rerun of an older batch does not roll the library back).

The asset's value is, per micrograph, the class number (from 1) of each of its particles in stack order.
"""

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from cryodecon_assets.batch.common import GROUP, load_manifest
from cryodecon_assets.batch.figures import class_gallery, picture_data_uri
from cryodecon_assets.execution import GPU_POOL, GPU_STEP_TAGS
from cryodecon_assets.intake.batching import BatchManifest, safe_session
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import OutputStore, PickingSettings, ScoreWarehouse, StructureLibrary, TorchDevice
from cryodecon_resources.tables import tables_metadata
from cryodecon_science.classification import (
    Classification2DConfig,
    ClassNovelty,
    class_novelty,
    embed_class_images,
    half_set_distances,
)
from cryodecon_science.classification.batches import (
    CLASSIFICATION_BOX_PX,
    BatchClassification,
    classify_batch,
    load_state,
    save_state,
)
from cryodecon_science.io.mrc import read_mrc_frames, write_mrc
from cryodecon_science.io.particles import ParticleStack, write_particles_star
from cryodecon_science.picking.micrograph import MicrographPicks

STATE_FOLDER = "classes_2d"
CLASSIFIED_STAR = "particles_classified.star"
SELECTED_STAR = "particles_selected.star"


def state_before(outputs: OutputStore, session: str, sequence: int) -> Path | None:
    """The session's classes after its latest batch with a lower sequence number, if any."""
    folder = outputs.session_path(session, STATE_FOLDER)
    earlier = [
        (int(p.stem.split("-")[1]), p) for p in folder.glob("after-*.pt") if int(p.stem.split("-")[1]) < sequence
    ]
    return max(earlier)[1] if earlier else None


def has_later_state(outputs: OutputStore, session: str, sequence: int) -> bool:
    """Whether a batch of the session with a higher sequence number has classes already."""
    return any(
        int(p.stem.split("-")[1]) > sequence for p in outputs.session_path(session, STATE_FOLDER).glob("after-*.pt")
    )


def library_key(session: str) -> str:
    """The class library's batch key of a session's classes."""
    return f"session-{safe_session(session)}"


@dataclasses.dataclass(frozen=True)
class KnownClasses:
    """Each class's nearest known entry and its novelty."""

    novelty: ClassNovelty
    nearest_distance: np.ndarray
    nearest_structure: list[str | None]
    embeddings: np.ndarray


def compare_with_library(
    class_library: StructureLibrary, result: BatchClassification, manifest: BatchManifest, device: Any
) -> KnownClasses:
    """Novelty of the classes against the class library as known at the batch's cut, other sessions only."""
    embeddings = embed_class_images(result.averages, result.state.pixel_size_angstrom, device=device)
    filled = np.flatnonzero(np.linalg.norm(embeddings, axis=1) > 0)  # an empty class embeds as zero
    distance = np.full(len(embeddings), np.nan)
    nearest: list[str | None] = [None] * len(embeddings)
    if filled.size:
        found, hits = class_library.nearest(
            embeddings[filled], k=1, before_s=manifest.cut_at_s, exclude_batch=library_key(manifest.session)
        )
        distance[filled] = found[:, 0]
        for k, h in zip(filled, hits, strict=True):
            nearest[k] = h[0].structure_id if h else None
    calibration = class_library.library_nn_distances(before_s=manifest.cut_at_s)
    s = result.selection
    noise = half_set_distances(result.state, device=device)
    novelty = class_novelty(distance, calibration, s.particle_count, s.selected, noise)
    return KnownClasses(novelty, distance, nearest, embeddings)


def register_classes(
    class_library: StructureLibrary, known: KnownClasses, result: BatchClassification, manifest: BatchManifest
) -> int:
    """Replace the session's entries in the class library with its selected classes after this batch."""
    chosen = np.flatnonzero(result.selection.selected & (np.linalg.norm(known.embeddings, axis=1) > 0))
    safe = safe_session(manifest.session)
    return class_library.add_embeddings(
        known.embeddings[chosen],
        [f"{safe}:class-{k + 1}" for k in chosen],
        library_key(manifest.session),
        manifest.session,
        [None] * len(chosen),
        registered_before_s=manifest.cut_at_s,
    )


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"torch", "mrc"},
    description="The session's streaming 2D classes after this batch: the batch's particles (Fourier-cropped to "
    f"{CLASSIFICATION_BOX_PX} px) aligned to and folded into the classes of the session's earlier batches "
    "(mini-batch EM, CTF-aware Wiener averages, half-set FRC), automatic selection with the rule each rejected "
    "class failed; `class_averages.mrcs`, warehouse tables `classes_2d` (per class) and `particle_classes` "
    "(per particle); the gallery in the metadata.",
)
def classes_2d(
    context: dg.AssetExecutionContext,
    particles: dict[str, ParticleStack],
    particle_picks: dict[str, MicrographPicks],
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
    device: TorchDevice,
    picking: PickingSettings,
    class_library: StructureLibrary,
) -> dg.Output[dict[str, np.ndarray]]:
    batch = context.partition_key
    manifest = load_manifest(warehouse, batch)
    names = sorted(n for n, s in particles.items() if s.n_particles and n in particle_picks)
    rows = [row for n in names for row in particles[n].rows]
    folder = outputs.session_path(manifest.session, STATE_FOLDER)
    if not rows:
        return dg.Output({}, metadata={"particles": 0, "why": "no particles in this batch"})
    previous_path = state_before(outputs, manifest.session, manifest.sequence)
    previous = load_state(previous_path) if previous_path else None
    n_classes = previous.n_classes if previous else picking.n_classes_2d
    if previous is None and len(rows) < 2 * n_classes:
        why = f"{len(rows)} particles: fewer than 2 per class for the first {n_classes} classes"
        return dg.Output({}, metadata={"particles": len(rows), "why": why})
    boxes = np.concatenate([read_mrc_frames(particles[n].stack_path)[0] for n in names])
    diameter = particle_picks[names[0]].particle_diameter_angstrom
    config = Classification2DConfig(n_classes=n_classes, particle_diameter_angstrom=diameter)
    result = classify_batch(boxes, rows, previous, config, CLASSIFICATION_BOX_PX, device=device.torch_device())
    known = compare_with_library(class_library, result, manifest, device.torch_device())
    save_state(result.state, folder / f"after-{manifest.sequence:06d}.pt")
    write_mrc(
        outputs.asset_path("classes_2d", batch, "class_averages.mrcs"),
        result.averages,
        result.state.pixel_size_angstrom,
    )
    classified = [
        dataclasses.replace(row, class_number=int(k) + 1)
        for row, k in zip(rows, result.assignments.class_index, strict=True)
    ]
    star = outputs.star_path(batch, CLASSIFIED_STAR)
    write_particles_star(star, classified, particles[names[0]].box_px)
    selected_star = outputs.star_path(batch, SELECTED_STAR)
    kept_rows = [row for row, keep in zip(classified, result.kept, strict=True) if keep]
    if kept_rows:
        write_particles_star(selected_star, kept_rows, particles[names[0]].box_px)
    else:
        selected_star.unlink(missing_ok=True)  # a rerun that keeps nothing leaves no stale selection
    held = {
        "classes_2d": warehouse.write_rows("classes_2d", batch, class_rows(batch, manifest.session, result, known)),
        "particle_classes": warehouse.write_rows("particle_classes", batch, particle_class_rows(batch, rows, result)),
    }
    registered = None
    if not has_later_state(outputs, manifest.session, manifest.sequence):
        registered = register_classes(class_library, known, result, manifest)
    bounds = np.cumsum([0] + [particles[n].n_particles for n in names])
    numbers = result.assignments.class_index + 1
    per_micrograph = {n: numbers[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
    metadata = {
        **classes_metadata(result, len(rows), previous_path, known),
        "class_library_entries_of_session": registered
        if registered is not None
        else "unchanged (a later batch has classes)",
        "classified_star": dg.MetadataValue.path(str(star)),
        "selected_star": dg.MetadataValue.path(str(selected_star)) if kept_rows else "none kept",
        **tables_metadata(held),
    }
    return dg.Output(per_micrograph, metadata=metadata)


def class_rows(batch: str, session: str, result: BatchClassification, known: KnownClasses) -> list[dict[str, Any]]:
    """The ``classes_2d`` table: one row per class of the session after this batch."""
    s = result.selection
    batch_counts = np.bincount(result.assignments.class_index, minlength=len(s.selected))
    return [
        {
            "batch": batch,
            "session": session,
            "class_number": k + 1,
            "particles": int(s.particle_count[k]),
            "particles_this_batch": int(batch_counts[k]),
            "resolution_angstrom": float(s.resolution_0143_angstrom[k]),
            "centre_offset_px": float(s.centre_offset_px[k]),
            "mask_fit_fraction": float(s.mask_fit_fraction[k]),
            "contrast": float(s.contrast[k]),
            "selected": bool(s.selected[k]),
            "reasons": ";".join(s.reasons[k]),
            "novelty": float(known.novelty.per_class[k]),  # NaN: an empty class
            "nearest_known": known.nearest_structure[k],
            "nearest_known_distance": float(known.nearest_distance[k]),
        }
        for k in range(len(s.selected))
    ]


def particle_class_rows(batch: str, rows: list[Any], result: BatchClassification) -> list[dict[str, Any]]:
    """The ``particle_classes`` table: where each particle of the batch went."""
    a = result.assignments
    return [
        {
            "batch": batch,
            "micrograph": Path(row.micrograph_path).stem,
            "image_name": f"{row.index_in_stack:06d}@{row.stack_path}",
            "class_number": int(a.class_index[i]) + 1,
            "angle_deg": float(a.angle_deg[i]),
            "shift_x_px": float(a.shift_yx_px[i, 1]),
            "shift_y_px": float(a.shift_yx_px[i, 0]),
            "posterior": float(a.posterior[i]),
            "log_evidence_ratio": float(a.log_evidence_ratio[i]),
            "selected": bool(result.selection.selected[a.class_index[i]]),
            "kept": bool(result.kept[i]),
        }
        for i, row in enumerate(rows)
    ]


def classes_metadata(
    result: BatchClassification, n_batch: int, previous: Path | None, known: KnownClasses
) -> dict[str, Any]:
    s = result.selection
    table = [
        "| class | particles | resolution Å | selected | failed rules | novelty | nearest known |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {k + 1} | {int(s.particle_count[k])} | {s.resolution_0143_angstrom[k]:.1f} | "
        f"{'yes' if s.selected[k] else 'no'} | {', '.join(s.reasons[k]) or '–'} | "
        f"{known.novelty.per_class[k]:.2f} | {known.nearest_structure[k] or '–'} |"
        for k in range(len(s.selected))
    ]
    return {
        "particles_this_batch": n_batch,
        "particles_in_classes": int(s.particle_count.sum()),
        "particles_retired": result.state.retired_count,
        "classes_selected": int(s.selected.sum()),
        "class_novelty": None if np.isnan(known.novelty.batch) else float(known.novelty.batch),
        "particles_in_selected_classes": int(s.particle_count[s.selected].sum()),
        "particles_kept_this_batch": int(result.kept.sum()),
        "started_from": dg.MetadataValue.path(str(previous)) if previous else "reference-free (first batch)",
        "gallery": dg.MetadataValue.md(
            f"![classes]({picture_data_uri(class_gallery(result.averages, s.selected, s.particle_count))})"
            "\n\ngreen: selected; number: class, then its particles"
        ),
        "classes": dg.MetadataValue.md("\n".join(table)),
    }
