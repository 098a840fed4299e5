"""Every warehouse table, declared once: its columns with types, units (in the names) and meaning, and the
asset or entry point that fills it.

``ScoreWarehouse.write_rows`` writes a declared table through its schema (a row with a column the table
does not declare is refused; a declared column a row lacks is null), so a table's types do not drift
from batch to batch, and a view exists for every declared table even before its first row.  The writing
asset shows its table in the UI as ``dagster/column_schema`` and ``dagster/row_count``
(``table_metadata``), so lineage says which asset fills which table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa

_STR, _F64, _I64, _BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str


@dataclass(frozen=True)
class Table:
    """A warehouse table: one row per ``grain``; ``open_columns`` admits columns beyond the declared ones
    (``exposure_metadata``: the flattened metadata record, whose fields its schema version defines)."""

    name: str
    grain: str
    written_by: str
    columns: tuple[Column, ...]
    open_columns: bool = False

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, metadata={"doc": c.doc}) for c in self.columns])

    @property
    def column_schema(self) -> dg.TableSchema:
        return dg.TableSchema(columns=[dg.TableColumn(c.name, str(c.type), description=c.doc) for c in self.columns])


def _c(name: str, kind: pa.DataType, doc: str) -> Column:
    return Column(name, kind, doc)


_MICROGRAPH = _c("micrograph", _STR, "exposure name (file stem without the movie suffix)")
_BATCH = _c("batch", _STR, "acquisition batch (Dagster partition key)")
_SESSION = _c("session", _STR, "acquisition session")
_KEY = (_MICROGRAPH, _BATCH)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "micrographs",
            "exposure",
            "raw_micrographs",
            (
                *_KEY,
                _SESSION,
                _c("batch_sequence", _I64, "the batch's number within its session"),
                _c("cut_at_s", _F64, "when the batch was cut, Unix s"),
                _c("relative_path", _STR, "path under the storage root"),
                _c("sha256", _STR, "SHA-256 of the file as cut"),
                _c("kind", _STR, "micrograph or movie"),
                _c("n_frames", _I64, "frames (1 for a micrograph)"),
                _c("shape_y_px", _I64, "rows"),
                _c("shape_x_px", _I64, "columns"),
                _c("pixel_size_angstrom", _F64, "Å per pixel"),
                _c("voltage_kv", _F64, "acceleration voltage"),
                _c("spherical_aberration_mm", _F64, "C_s"),
                _c("amplitude_contrast_fraction", _F64, "amplitude contrast"),
                _c("dose_e_per_angstrom2", _F64, "total exposure"),
                _c("nominal_defocus_angstrom", _F64, "defocus the acquisition targeted, underfocus positive"),
                _c("grid_square_id", _STR, "EPU grid square"),
                _c("foil_hole_id", _STR, "EPU foil hole"),
                _c("mean_counts_per_px", _F64, "mean of the (aligned, cleaned) micrograph"),
                _c("drift_total_px", _F64, "total drift of a movie's trajectory"),
                _c("residual_blur_px", _F64, "motion left within a frame after alignment ≈ drift / frames"),
                _c("session_settings_sha256", _STR, "version of the session settings it was read with"),
            ),
        ),
        Table(
            "session_settings",
            "batch × settings version",
            "raw_micrographs",
            (
                _BATCH,
                _SESSION,
                _c("sha256", _STR, "version: SHA-256 of the canonical JSON of the resolved settings"),
                _c("settings_json", _STR, "the resolved settings (particle diameter, gain, optics overrides), JSON"),
                _c("sources_json", _STR, "where each value came from (configuration or session.json), JSON"),
                _c("particle_diameter_angstrom", _F64, "particle diameter, Å (null: the deployment default)"),
                _c("gain_path", _STR, "gain reference the settings name (null: found by convention)"),
                _c("gain_rotate_quarter_turns_ccw", _I64, "MotionCor2 -RotGain applied to the session's gain"),
                _c("gain_flip", _STR, "MotionCor2 -FlipGain applied after it: none, upside_down, left_right"),
                _c("gain_convention", _STR, "multiply (raw × gain) or divide (raw / gain)"),
                _c("gain_references_json", _STR, "gain references the batch's movies used: path -> sha256, JSON"),
                _c("exposures", _I64, "exposures of the batch read with these settings"),
                _c("run_id", _STR, "Dagster run"),
                _c("recorded_at", _F64, "Unix s"),
            ),
        ),
        Table(
            "exposure_metadata",
            "exposure",
            "raw_micrographs",
            (
                *_KEY,
                _c("n_disagreements", _I64, "fields on which header and sidecar disagree beyond tolerance"),
                _c("record_json", _STR, "the versioned metadata record, JSON"),
            ),
            open_columns=True,
        ),
        Table(
            "motion_trajectories",
            "movie × frame",
            "raw_micrographs",
            (
                *_KEY,
                _c("frame", _I64, "frame index"),
                _c("shift_y_px", _F64, "shift relative to frame 0, rows"),
                _c("shift_x_px", _F64, "shift relative to frame 0, columns"),
            ),
        ),
        Table(
            "motion_corrections",
            "movie",
            "raw_micrographs",
            (
                *_KEY,
                _c("n_frames", _I64, "frames"),
                _c("dose_per_frame_e_per_angstrom2", _F64, "exposure per frame (null: unknown)"),
                _c("dose_weighted", _BOOL, "a _DW sum was written"),
                _c("iterations", _I64, "global alignment iterations"),
                _c("converged", _BOOL, "alignment converged"),
                _c("hot_pixels_replaced", _I64, "hot pixels replaced before alignment"),
                _c("motion_total_angstrom", _F64, "path length of the trajectory (RELION rlnAccumMotionTotal)"),
                _c("motion_early_angstrom", _F64, "path length over the first 4 e⁻/Å² (rlnAccumMotionEarly)"),
                _c("motion_late_angstrom", _F64, "path length after it (rlnAccumMotionLate)"),
                _c("pixel_size_angstrom", _F64, "Å per pixel"),
                _c("voltage_kv", _F64, "voltage the dose weighting used"),
                _c("patch_grid", _STR, "rows x columns of local-motion patches, null for global only"),
                _c("local_motion_model", _STR, "local motion model chosen by BIC"),
                _c("local_motion_residual_rms_px", _F64, "RMS of the patch shifts about the model"),
            ),
        ),
        Table(
            "artifact_corrections",
            "exposure × artifact step",
            "raw_micrographs",
            (
                *_KEY,
                _c("step", _STR, "artifact step"),
                _c("causal_node", _STR, "the causal node the artifact belongs to"),
                _c("pixels_changed", _I64, "pixels the step replaced"),
                _c("magnitude", _F64, "size of the artifact, in `unit`"),
                _c("unit", _STR, "unit of `magnitude`"),
            ),
        ),
        Table(
            "ctf",
            "micrograph",
            "ctf_estimates",
            (
                *_KEY,
                _SESSION,
                _c("defocus_u_angstrom", _F64, "defocus along U, underfocus positive (U ≥ V)"),
                _c("defocus_v_angstrom", _F64, "defocus along V"),
                _c("astigmatism_angle_degrees", _F64, "angle from x to U, counter-clockwise"),
                _c("phase_shift_rad", _F64, "phase-plate shift"),
                _c("fit_resolution_angstrom", _F64, "where the fit stops agreeing with the spectrum"),
                _c("cross_correlation", _F64, "fit's normalised cross-correlation"),
                _c("defocus_sigma_angstrom", _F64, "jackknife σ of the mean defocus"),
                _c("nominal_defocus_angstrom", _F64, "defocus the acquisition targeted"),
            ),
        ),
        Table(
            "priors",
            "micrograph × causal node",
            "causal_priors",
            (
                *_KEY,
                _SESSION,
                _c("batch_sequence", _I64, "the batch's number within its session"),
                _c("node", _STR, "causal node"),
                _c("estimate", _F64, "session-pooled estimate, in `unit`"),
                _c("sigma", _F64, "its σ"),
                _c("weight", _F64, "degradation weight (share of lost information)"),
                _c("measured_value", _F64, "this micrograph alone"),
                _c("measured_sigma", _F64, "its σ"),
                _c("unit", _STR, "unit of the node"),
                _c("converged", _BOOL, "refinement loop converged (every change < 1σ)"),
                _c("n_iterations", _I64, "loop passes"),
            ),
        ),
        Table(
            "prior_iterations",
            "micrograph × node × iteration",
            "causal_priors",
            (*_KEY, _c("iteration", _I64, "loop pass"), _c("node", _STR, "causal node"), _c("value", _F64, "value")),
        ),
        Table(
            "session_priors",
            "batch × quantity",
            "causal_priors",
            (
                _SESSION,
                _BATCH,
                _c("batch_sequence", _I64, "the batch's number within its session"),
                _c("quantity", _STR, "pooled quantity (node or ice power)"),
                _c("unit", _STR, "unit"),
                _c("n", _I64, "measurements in the session prior"),
                _c("mean", _F64, "session mean μ"),
                _c("between_sd", _F64, "τ: spread between micrographs (Paule–Mandel)"),
                _c("mean_sd", _F64, "σ of μ"),
                _c("pooling", _BOOL, "enough measurements to pool"),
            ),
        ),
        Table(
            "scores",
            "micrograph",
            "evaluation_scores",
            (
                *_KEY,
                _SESSION,
                _c("logic", _F64, "LogicScore"),
                _c("novelty", _F64, "Novelty"),
                _c("impact", _F64, "ImpactFore, normalised"),
                _c("impact_citations", _F64, "forecast 5-year citations"),
                _c("impact_graph_synthetic", _BOOL, "the citation graph is generated, not bibliometric"),
                _c("repro", _F64, "ΔRepro"),
                _c("repro_limited_by", _STR, "the perturbation that limits ΔRepro"),
                _c("half_set_correlation", _F64, "correlation of independently restored noise halves"),
                _c("half_set_frc_0143_angstrom", _F64, "half-set FRC 0.143 resolution"),
                _c("meta", _F64, "⋄Meta"),
                _c("n_particles", _I64, "picks"),
                _c("details", _STR, "every ΔRepro deviation, JSON"),
            ),
        ),
        Table(
            "rules",
            "micrograph × rule",
            "evaluation_scores",
            (
                *_KEY,
                _c("rule", _STR, "consistency rule"),
                _c("status", _STR, "pass, fail or not_applicable"),
                _c("observed", _STR, "observed value"),
            ),
        ),
        Table(
            "quality",
            "micrograph",
            "quality_scores",
            (
                *_KEY,
                _c("v", _F64, "Research Quality Score V"),
                _c("weights_version", _STR, "weights of V used"),
                _c("weights_source", _STR, "shipped, curation or configured"),
                _c("weights", _STR, "w1…w5, JSON"),
            ),
        ),
        Table(
            "hyperscores",
            "micrograph",
            "hyperscores",
            (
                *_KEY,
                _SESSION,
                _c("v", _F64, "V"),
                _c("hyperscore", _F64, "100 × [1 + σ(β ln V + γ)^κ]"),
                _c("beta", _F64, "β"),
                _c("gamma", _F64, "γ"),
                _c("kappa", _F64, "κ"),
                _c("weights_version", _STR, "weights of V used"),
                _c("cut_at_s", _F64, "when the batch was cut, Unix s"),
            ),
        ),
        Table(
            "weights",
            "weights version",
            "score_weights",
            (
                _c("version", _STR, "weights version"),
                _c("source", _STR, "simulated, curation or configured"),
                _c("learned_at_s", _F64, "Unix s"),
                *(_c(f"w_{n}", _F64, f"weight of {n}") for n in ("logic", "novelty", "impact", "repro", "meta")),
                _c("beta", _F64, "calibrated β"),
                _c("gamma", _F64, "calibrated γ"),
                _c("details", _STR, "fit details, JSON"),
            ),
        ),
        Table(
            "curation",
            "labelled micrograph",
            "cryodecon label",
            (
                *_KEY,
                _c("accepted", _BOOL, "the curator kept it"),
                _c("labelled_by", _STR, "who"),
                _c("labelled_at_s", _F64, "Unix s"),
            ),
        ),
        Table(
            "curation_decisions",
            "exposure",
            "exposure_curation",
            (
                *_KEY,
                _SESSION,
                _c("automatic_accepted", _BOOL, "within every applied threshold of the session's settings"),
                _c("failed_thresholds", _STR, "the thresholds it failed, ';'-joined settings names (empty: none)"),
                _c("reasons", _STR, "each failure with measured value and limit ('not measured' where none)"),
                _c("ctf_fit_resolution_angstrom", _F64, "CTF fit resolution compared"),
                _c("defocus_mean_angstrom", _F64, "(U + V) / 2 compared with the defocus range"),
                _c("astigmatism_angstrom", _F64, "U − V compared"),
                _c("ice_thickness_index", _F64, "the micrograph's own ice_thickness node (dimensionless)"),
                _c("total_motion_angstrom", _F64, "total drift of the movie, Å (null: not a movie)"),
                _c("particles", _I64, "particles extracted (null: no particle stack)"),
                _c("human_accepted", _BOOL, "the `cryodecon label` of the micrograph (null: none)"),
                _c("labelled_by", _STR, "who labelled it"),
                _c("accepted", _BOOL, "final decision: the human label where there is one, else automatic"),
                _c("decided_by", _STR, "human or thresholds"),
                _c("session_settings_sha256", _STR, "version of the session settings (thresholds) applied"),
                _c("thresholds_json", _STR, "the thresholds applied (null: not applied), JSON"),
                _c("run_id", _STR, "Dagster run"),
                _c("recorded_at", _F64, "Unix s"),
            ),
        ),
        Table(
            "step_times",
            "micrograph × stage",
            "every batch asset",
            (
                *_KEY,
                _c("stage", _STR, "asset"),
                _c("seconds", _F64, "wall time of the micrograph's step"),
                _c("n_pixels", _I64, "pixels of the input"),
                _c("run_id", _STR, "Dagster run"),
            ),
        ),
        Table(
            "picks",
            "candidate pick",
            "particle_picks",
            (
                *_KEY,
                _SESSION,
                _c("pick", _I64, "index of the candidate in the micrograph, strongest first"),
                _c("x_px", _F64, "centre column, pixels of the micrograph from 0 (RELION rlnCoordinateX)"),
                _c("y_px", _F64, "centre row, pixels of the micrograph from 0 (RELION rlnCoordinateY)"),
                _c("figure_of_merit", _F64, "the picker's heatmap peak, 0–1"),
                _c("reason", _STR, "ok (kept) or why set aside: carbon, contamination, thick_ice, aggregate"),
                _c("particle_diameter_angstrom", _F64, "diameter picked for"),
            ),
        ),
        Table(
            "particle_stacks",
            "exposure",
            "particles",
            (
                *_KEY,
                _SESSION,
                _c("particles", _I64, "particles extracted"),
                _c("box_outside", _I64, "kept picks not extracted: their box leaves the micrograph"),
                _c("box_px", _I64, "box edge, pixels"),
                _c("stack_path", _STR, "the .mrcs stack"),
                _c("star_path", _STR, "the micrograph's _extract.star (RELION 3.1 particles)"),
            ),
        ),
        Table(
            "classes_2d",
            "batch × 2D class",
            "classes_2d",
            (
                _BATCH,
                _SESSION,
                _c("class_number", _I64, "class, from 1 (RELION rlnClassNumber)"),
                _c("particles", _I64, "particles of the session in the class after this batch"),
                _c("particles_this_batch", _I64, "of them from this batch"),
                _c("resolution_angstrom", _F64, "half-set FRC 0.143 of the class average, Å (inf: unresolved)"),
                _c("centre_offset_px", _F64, "centre of mass of the average from the box centre, pixels"),
                _c("mask_fit_fraction", _F64, "share of the average's positive power inside the particle circle"),
                _c("contrast", _F64, "average inside the circle over the rim's noise"),
                _c("selected", _BOOL, "kept by the automatic selection"),
                _c("reasons", _STR, "the selection rules the class failed, ';'-joined (empty: selected)"),
                _c("novelty", _F64, "calibrated novelty of the class average against the class library, 0–1"),
                _c("nearest_known", _STR, "structure id of the nearest known view or class (other sessions)"),
                _c("nearest_known_distance", _F64, "its cosine distance (inf: the library was empty)"),
            ),
        ),
        Table(
            "particle_classes",
            "particle",
            "classes_2d",
            (
                _BATCH,
                _MICROGRAPH,
                _c("image_name", _STR, "RELION rlnImageName: <index>@<stack>"),
                _c("class_number", _I64, "most probable class, from 1"),
                _c("angle_deg", _F64, "in-plane angle of the best pose in that class, degrees"),
                _c("shift_x_px", _F64, "shift of the best pose, pixels of the classification box"),
                _c("shift_y_px", _F64, "shift of the best pose, pixels of the classification box"),
                _c("posterior", _F64, "posterior probability of the class"),
                _c("log_evidence_ratio", _F64, "ln Bayes factor of the class's model against background alone"),
                _c("selected", _BOOL, "the class is selected"),
                _c("kept", _BOOL, "the particle is kept: its class is selected and ln B >= 3 (strong evidence)"),
            ),
        ),
        Table(
            "region_nodes",
            "node of the decomposition graph",
            "region_graph",
            (
                _c("node", _STR, "node id: <kind>:<path>"),
                _BATCH,
                _c("kind", _STR, "session, grid_square, foil_hole, micrograph, region or particle"),
                _c("label", _STR, "the node's own name (foil hole id, region kind, pick index, …)"),
                _SESSION,
                _c("grid_square", _STR, "EPU grid square it lies in (unassigned where unknown)"),
                _c("foil_hole", _STR, "EPU foil hole it lies in (unassigned where unknown)"),
                _c("micrograph", _STR, "micrograph it lies in"),
                _c("area_um2", _F64, "micrographs: imaged area, µm²"),
                _c("region_kind", _STR, "regions: carbon, contamination or thick_ice"),
                _c("area_fraction", _F64, "regions: share of the micrograph"),
                _c("x_px", _F64, "particles: centre column, pixels"),
                _c("y_px", _F64, "particles: centre row, pixels"),
                _c("figure_of_merit", _F64, "particles: the picker's score"),
                _c("reason", _STR, "particles: ok, or why set aside"),
            ),
        ),
        Table(
            "region_edges",
            "edge of the decomposition graph",
            "region_graph",
            (
                _c("source", _STR, "node id"),
                _c("target", _STR, "node id"),
                _BATCH,
                _c("relation", _STR, "contains, overlaps, near or too_close"),
                _c("distance_px", _F64, "near: centre to carbon; too_close: centre to centre; pixels"),
            ),
        ),
        Table(
            "quarantine",
            "set-aside file or micrograph × stage",
            "the storage sensor and every batch asset",
            (
                _MICROGRAPH,
                _BATCH,
                _c("stage", _STR, "sensor or the asset that set it aside"),
                _c("reason", _STR, "typed reason (empty, truncated, duplicate, invalid_pixels, …)"),
                _c("detail", _STR, "what was found"),
                _c("relative_path", _STR, "path under the storage root"),
                _SESSION,
                _c("size_bytes", _I64, "file size when set aside"),
                _c("seen_at_s", _F64, "when the sensor saw it, Unix s"),
                _c("recorded_at", _F64, "Unix s"),
            ),
        ),
        Table(
            "daily_summary",
            "day × session",
            "daily_summary",
            (
                _c("day", _STR, "UTC day"),
                _SESSION,
                _c("exposures_scored", _I64, "exposures with HyperScores"),
                _c("exposures_quarantined", _I64, "exposures set aside"),
                _c("median_hyperscore", _F64, "median HyperScore"),
                _c("median_defocus_u_angstrom", _F64, "median defocus U"),
                _c("median_fit_resolution_angstrom", _F64, "median CTF fit resolution"),
            ),
        ),
    )
}


def declared(name: str) -> Table | None:
    return TABLES.get(name)


def table_metadata(name: str, rows: Sequence[object] | int) -> dict[str, object]:
    """UI metadata for the asset that writes table ``name``: its column schema and the rows it holds."""
    return tables_metadata({name: rows if isinstance(rows, int) else len(rows)})


def tables_metadata(rows_held: Mapping[str, int]) -> dict[str, object]:
    """UI metadata for an asset that writes ``rows_held`` (table -> rows its partition holds).

    The first table is the asset's ``dagster/column_schema`` and ``dagster/row_count``; every table is
    listed under ``warehouse_tables`` with its rows, and each further table's schema under
    ``column_schema/<table>``, so lineage shows which asset fills which table.
    """
    names = list(rows_held)
    metadata: dict[str, object] = {
        "dagster/column_schema": TABLES[names[0]].column_schema,
        "dagster/row_count": int(rows_held[names[0]]),
        "warehouse_tables": dg.MetadataValue.json({n: int(rows_held[n]) for n in names}),
    }
    for name in names[1:]:
        metadata[f"column_schema/{name}"] = dg.MetadataValue.table_schema(TABLES[name].column_schema)
    return metadata
