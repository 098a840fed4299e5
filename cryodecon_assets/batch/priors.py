"""``causal_priors``: the causal degradation model of each micrograph, fitted with the session's prior."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import numpy as np

from cryodecon_assets.batch.common import GROUP, SCIENCE_ERRORS, load_manifest, run_per_micrograph, selected, selection
from cryodecon_assets.batch.figures import PREVIEW_LIMIT, causal_graph_markdown
from cryodecon_assets.execution import GPU_POOL, GPU_STEP_TAGS
from cryodecon_assets.intake.batching import BatchManifest
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import ScoreWarehouse, TorchDevice
from cryodecon_resources.tables import tables_metadata
from cryodecon_science import causal
from cryodecon_science.exposure import Exposure
from cryodecon_science.records import CtfFit


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
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
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
