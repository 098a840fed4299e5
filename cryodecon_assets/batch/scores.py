"""``quality_scores`` (V) and ``hyperscores`` of each micrograph."""

import json

import dagster as dg
import numpy as np

from cryodecon_assets.batch.common import GROUP, load_manifest, selected, selection
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import ScoreWarehouse, ScoringSettings
from cryodecon_resources.scoring import WEIGHTS_TABLE
from cryodecon_resources.tables import tables_metadata
from cryodecon_science.scoring import COMPONENT_NAMES, EvaluationRecord, hyperscore, quality_v


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
