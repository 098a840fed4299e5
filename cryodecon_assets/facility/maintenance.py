"""Facility-wide assets beside the batch lineage: learned weights of V and the structure library's index.

* ``score_weights`` learns the weights of V from the curation labels staff record (``cryodecon label``,
  warehouse table ``curation``) once enough exist, and records every weights version in the warehouse
  table ``weights`` (the shipped simulated weights included), so each V row's ``weights_version`` can be
  looked up.  Daily schedule; until labels exist, V uses the shipped weights.
* ``impact_model`` trains the ImpactFore graph neural network on the citation graph (weekly: the graph
  changes slowly); ``evaluation_scores`` forecasts each batch's impact with it.
* ``structure_library_index`` builds (above its row threshold) and compacts the LanceDB structure
  library's ANN index.  Nightly schedule: the library grows with every batch's particles, and LanceDB
  leaves new rows unindexed and fragments small until it is optimised.
"""

import hashlib
import time

import dagster as dg
import numpy as np
import pandas as pd

from cryodecon_assets.facility.references import load_citation_graph, train_and_store_impact_model
from cryodecon_resources import OutputStore, ScoreWarehouse, ScoringSettings, StructureLibrary
from cryodecon_resources.scoring import WEIGHTS_TABLE, shipped_weights, shipped_weights_row, weights_row
from cryodecon_resources.tables import table_metadata
from cryodecon_science.impact import evaluate_temporal_split, prepare_impact_graph
from cryodecon_science.scoring import COMPONENT_NAMES
from cryodecon_science.weight_learning import (
    MIN_SAMPLES,
    calibrate_hyperscore_shape,
    learn_score_weights,
    quality_v_matrix,
)

GROUP = "facility"
CURATION_TABLE = "curation"
# Trials of the TPE search on curation labels (each trial is one Spearman over the labelled rows).
CURATION_TRIALS = 200


def curation_row(batch: str, micrograph: str, accepted: bool, labelled_by: str) -> dict[str, object]:
    """One curation label (partition ``<batch>.<micrograph>`` of table ``curation``: a relabel replaces it)."""
    return {
        "micrograph": micrograph,
        "batch": batch,
        "accepted": bool(accepted),
        "labelled_by": labelled_by,
        "labelled_at_s": time.time(),
    }


def labelled_components(warehouse: ScoreWarehouse) -> pd.DataFrame:
    """Curation labels joined with the five components of the same micrograph (inner join)."""
    labels = warehouse.read_rows(CURATION_TABLE)
    components = warehouse.read_rows("scores")
    if labels.empty or components.empty:
        return pd.DataFrame(columns=["micrograph", "batch", "accepted", *COMPONENT_NAMES])
    return labels.merge(components[["micrograph", "batch", *COMPONENT_NAMES]], on=["micrograph", "batch"])


@dg.asset(
    group_name=GROUP,
    deps=["evaluation_scores"],
    kinds={"optuna", "duckdb"},
    description="Weights of V: learned by Bayesian optimisation (optuna TPE) to rank exposures like the "
    "facility's curation labels (Spearman), versioned in the warehouse table `weights`; the shipped "
    "weights learned on simulated sessions until enough labels exist.",
)
def score_weights(context: dg.AssetExecutionContext, warehouse: ScoreWarehouse) -> dg.MaterializeResult:
    shipped = shipped_weights()
    warehouse.write_rows(WEIGHTS_TABLE, shipped.version, [shipped_weights_row()])
    data = labelled_components(warehouse)
    accepted = int(data["accepted"].sum()) if not data.empty else 0
    rejected = len(data) - accepted
    metadata: dict[str, object] = {
        "labelled_micrographs": len(data),
        "accepted": accepted,
        "rejected": rejected,
        **table_metadata(WEIGHTS_TABLE, len(warehouse.read_rows(WEIGHTS_TABLE))),
    }
    if len(data) < MIN_SAMPLES or accepted == 0 or rejected == 0:
        context.log.info(
            f"{len(data)} labelled micrographs ({accepted} accepted, {rejected} rejected): need at least "
            f"{MIN_SAMPLES} with both outcomes to learn weights; V keeps using {shipped.version}"
        )
        return dg.MaterializeResult(metadata={**metadata, "weights_version_in_use": shipped.version})
    ordered = data.sort_values(["batch", "micrograph"])
    digest = hashlib.sha256(ordered[["batch", "micrograph", "accepted"]].to_csv(index=False).encode()).hexdigest()[:10]
    learned = learn_score_weights(
        ordered[list(COMPONENT_NAMES)].to_numpy(dtype=np.float64),
        ordered["accepted"].to_numpy(dtype=np.float64),
        version=f"curation-{digest}",
        n_trials=CURATION_TRIALS,
        seed=0,
    )
    details = {
        "n_samples": learned.n_samples,
        "accepted": accepted,
        "rejected": rejected,
        "spearman_train": learned.spearman_train,
        "spearman_equal_train": learned.spearman_equal_train,
        "trials": learned.n_trials,
    }
    # The HyperScore's shape follows the new weights: calibrated on V of every scored micrograph.
    scored = warehouse.read_rows("scores")
    shape = calibrate_hyperscore_shape(
        quality_v_matrix(scored[list(COMPONENT_NAMES)].to_numpy(dtype=np.float64), learned.weights)
    )
    row = weights_row(learned.weights, "curation", time.time(), details, shape.beta, shape.gamma)
    warehouse.write_rows(WEIGHTS_TABLE, learned.weights.version, [row])
    return dg.MaterializeResult(
        metadata={
            **metadata,
            **table_metadata(WEIGHTS_TABLE, len(warehouse.read_rows(WEIGHTS_TABLE))),
            "weights_version_in_use": learned.weights.version,
            "weights": dg.MetadataValue.json({k: round(getattr(learned.weights, k), 4) for k in COMPONENT_NAMES}),
            "spearman_train": learned.spearman_train,
            "spearman_equal_weights": learned.spearman_equal_train,
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=["evaluation_scores"],
    kinds={"lancedb"},
    description="The structure library's ANN index, built once the library outgrows exact search, and its "
    "table compacted (small fragments merged, old versions pruned, new rows indexed).",
)
def structure_library_index(
    context: dg.AssetExecutionContext, structure_library: StructureLibrary
) -> dg.MaterializeResult:
    started = time.perf_counter()
    built = structure_library.build_index()
    compaction = structure_library.compact()
    info = structure_library.index_info()
    context.log.info(f"library index: built={built}, compaction={compaction}, info={info}")
    return dg.MaterializeResult(
        metadata={
            "rows": structure_library.count(),
            "index_built_now": built,
            "index": dg.MetadataValue.json(info),
            "compaction": dg.MetadataValue.json(compaction),
            "seconds": time.perf_counter() - started,
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"torch", "networkx"},
    description="ImpactFore: a graph neural network over the citation graph (GraphSAGE-style, features known "
    "at publication) predicting 5-year citations, trained on every complete window; its temporal-split "
    "Spearman against degree and PageRank baselines is in the metadata.  The demo's graph is SYNTHETIC.",
)
def impact_model(
    context: dg.AssetExecutionContext, scoring: ScoringSettings, outputs: OutputStore
) -> dg.MaterializeResult:
    graph = load_citation_graph(scoring)
    if graph is None:
        raise dg.Failure(
            description=f"no citation graph at {scoring.citation_graph_path!r} (edges.parquet + nodes.parquet); "
            "set CRYODECON_CITATION_GRAPH"
        )
    prepared = prepare_impact_graph(graph)
    evaluation = evaluate_temporal_split(prepared, seed=0)
    model = train_and_store_impact_model(outputs, prepared)
    synthetic = bool(graph.graph.get("synthetic", False))
    context.log.info(f"impact model trained on {model.n_train} papers; held-out Spearman {evaluation.spearman_gnn:.3f}")
    return dg.MaterializeResult(
        metadata={
            "graph": "SYNTHETIC citation graph" if synthetic else "citation graph",
            "papers": graph.number_of_nodes(),
            "citations": graph.number_of_edges(),
            "train_papers": model.n_train,
            "train_years": f"{model.train_years[0]}–{model.train_years[1]}",
            "heldout_years": f"{evaluation.test_years[0]}–{evaluation.test_years[1]}",
            "spearman_gnn_heldout": evaluation.spearman_gnn,
            "spearman_degree_heldout": evaluation.spearman_degree,
            "spearman_pagerank_heldout": evaluation.spearman_pagerank,
        }
    )


impact_model_job = dg.define_asset_job("train_impact_model", selection=[impact_model])
impact_model_schedule = dg.ScheduleDefinition(
    job=impact_model_job,
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    name="weekly_impact_model",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
score_weights_job = dg.define_asset_job("learn_score_weights", selection=[score_weights])
library_maintenance_job = dg.define_asset_job("library_maintenance", selection=[structure_library_index])
score_weights_schedule = dg.ScheduleDefinition(
    job=score_weights_job,
    cron_schedule="0 1 * * *",
    execution_timezone="UTC",
    name="daily_score_weights",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
library_maintenance_schedule = dg.ScheduleDefinition(
    job=library_maintenance_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    name="nightly_library_index",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
