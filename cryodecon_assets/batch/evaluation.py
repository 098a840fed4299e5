"""``evaluation_scores``: the five score components of each micrograph, its rules and perturbations."""

import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import networkx as nx
import numpy as np

from cryodecon_assets.batch.common import GROUP, load_manifest, run_per_micrograph, selected, selection, warning_check
from cryodecon_assets.execution import GPU_POOL, GPU_STEP_TAGS
from cryodecon_assets.facility.references import load_citation_graph, load_or_train_impact_model
from cryodecon_assets.intake.batching import BatchManifest
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import OutputStore, ScoreWarehouse, ScoringSettings, StructureLibrary, TorchDevice
from cryodecon_resources.tables import tables_metadata
from cryodecon_science import causal
from cryodecon_science.citations import max_citations_within_years
from cryodecon_science.exposure import Exposure
from cryodecon_science.impact import forecast_new_paper, prepare_impact_graph
from cryodecon_science.io.mrc import Micrograph
from cryodecon_science.picking.micrograph import MicrographPicks
from cryodecon_science.picking.region_graph import packing_facts
from cryodecon_science.records import CtfFit
from cryodecon_science.reproducibility import COST_MODEL_STAGES, StepTime, cost_deviations, stable_seed
from cryodecon_science.scoring import (
    LOGIC_RULES,
    EvaluationRecord,
    MicrographEvaluation,
    ReferenceData,
    evaluate_micrograph,
)


def step_times(warehouse: ScoreWarehouse, batch: str) -> dict[str, list[StepTime]]:
    """The batch's ``step_times`` of the cost model's stages (``COST_MODEL_STAGES``), rows with a size only."""
    times: dict[str, list[StepTime]] = {}
    for stage in COST_MODEL_STAGES:
        frame = warehouse.read_rows("step_times", f"{batch}.{stage}")
        rows = frame.dropna(subset=["n_pixels"]).to_dict("records") if not frame.empty else []
        times[stage] = [StepTime(r["micrograph"], float(r["seconds"]), int(r["n_pixels"])) for r in rows]
    return times


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
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
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
    particle_picks: dict[str, MicrographPicks],
    region_graph: dict[str, nx.DiGraph],
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
    batch_graph = nx.compose_all(region_graph.values()) if region_graph else nx.DiGraph()
    items = {
        k: v
        for k, v in selected(context, raw_micrographs).items()
        if k in restored_micrographs and k in deconvolved_micrographs and k in causal_priors and k in particle_picks
    }
    cost = cost_deviations(step_times(warehouse, batch))

    def step(name: str, exposure: Exposure) -> MicrographEvaluation:
        return evaluate_micrograph(
            exposure,
            ctf_estimates[name],
            causal_priors[name],
            restored_micrographs[name].data,
            deconvolved_micrographs[name].data,
            picks=particle_picks[name],
            packing=packing_facts(batch_graph, name) if name in region_graph else None,
            references=references,
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
