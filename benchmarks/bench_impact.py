"""ImpactFore GNN vs degree / PageRank baselines on held-out years of a SYNTHETIC citation graph (Spearman ρ).

    .venv/bin/python benchmarks/bench_impact.py [--papers 20000] [--seeds 0 1 2 3 4] [--threads 1]

Writes ``benchmarks/results/impact_gnn.json`` and ``.md`` and prints the Markdown table.  No network;
deterministic seeds.

Data.  ``citations.generate_citation_graph(n_papers, start_year=1985, end_year=2025, seed=s)`` for each
generator seed s: SYNTHETIC (preferential attachment with fitness and ageing; a paper's hidden fitness
shapes its reference list, see that docstring).  Nothing here is bibliometrics.

Split.  ``impact.evaluate_temporal_split`` with cutoff C = 2016 and T = 5: the model is trained on the
graph as of 2016 (papers of 1995-2011 after a 10-year burn-in; 2010-2011 hold out for early stopping),
and tested on papers of 2017-2020, whose 5-year windows close by 2025.  Each test paper is forecast from the
snapshot of its own publication year; the target is ln(1 + c₅).

Methods on the same test papers, from the same as-of-publication information: the GNN (model seed 0);
(a) degree — mean in-degree of the paper's references as of its year; (b) PageRank — their mean PageRank in
that year's snapshot; (c) the training mean of the paper's topic; (d) the references' mean citation rate
(citations per year since publication); (e) a ridge regression on the GNN's node features plus the
references' mean node and edge features (one hop, no message passing).  Spearman ρ per seed and mean ± sd
over seeds; times are wall-clock seconds of one process with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import json_ready

from cryodecon_science.impact import evaluate_temporal_split, prepare_impact_graph
from cryodecon_science.simulate import generate_citation_graph

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = (
    ("gnn", "spearman_gnn", "ImpactFore GNN"),
    ("degree", "spearman_degree", "(a) degree of references"),
    ("pagerank", "spearman_pagerank", "(b) PageRank of references"),
    ("topic_mean", "spearman_topic_mean", "(c) topic mean"),
    ("reference_rate", "spearman_reference_rate", "(d) citation rate of references"),
    ("linear", "spearman_linear", "(e) ridge on one-hop features"),
)
START_YEAR, END_YEAR, CUTOFF = 1985, 2025, 2016


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--papers", type=int, default=20000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--model-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        started = time.perf_counter()
        graph = generate_citation_graph(n_papers=args.papers, start_year=START_YEAR, end_year=END_YEAR, seed=seed)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        arrays = prepare_impact_graph(graph)
        prepare_s = time.perf_counter() - started
        started = time.perf_counter()
        evaluation = evaluate_temporal_split(arrays, CUTOFF, seed=args.model_seed)
        evaluate_s = time.perf_counter() - started
        run = {
            "graph_seed": seed,
            "n_edges": graph.number_of_edges(),
            **asdict(evaluation),
            "generate_seconds": generate_s,
            "prepare_seconds": prepare_s,
            "evaluate_seconds": evaluate_s,
        }
        runs.append(run)
        print(
            f"seed {seed}: "
            + ", ".join(f"{key} {run[attr]:.3f}" for key, attr, _ in METHODS)
            + f"; train {evaluation.train_seconds:.1f} s ({evaluation.epochs_trained} steps)",
            file=sys.stderr,
        )

    summary = {key: mean_sd([run[attr] for run in runs]) for key, attr, _ in METHODS}
    margins = {
        f"gnn_minus_{key}": mean_sd([run["spearman_gnn"] - run[attr] for run in runs]) for key, attr, _ in METHODS[1:]
    }
    wins = {f"gnn_beats_{key}": sum(run["spearman_gnn"] > run[attr] for run in runs) for key, attr, _ in METHODS[1:]}
    result = {
        "label": "SYNTHETIC citation graph: generated, not bibliometrics",
        "config": {
            "papers": args.papers,
            "graph_seeds": args.seeds,
            "model_seed": args.model_seed,
            "years": [START_YEAR, END_YEAR],
            "train_cutoff_year": CUTOFF,
            "window_years": 5,
            "threads": args.threads,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        },
        "runs": runs,
        "summary_mean_sd": summary,
        "margins_mean_sd": margins,
        "wins": wins,
        "train_seconds_mean_sd": mean_sd([run["train_seconds"] for run in runs]),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "impact_gnn.json"
    out.write_text(json.dumps(json_ready(result), indent=1))

    first = runs[0]
    lines = [
        f"**SYNTHETIC** citation graphs ({args.papers} generated papers, {START_YEAR}-{END_YEAR}, generator seeds "
        f"{', '.join(map(str, args.seeds))}): not bibliometrics.",
        "",
        f"Temporal split: trained on the graph as of {CUTOFF} (papers {first['train_years'][0]}-"
        f"{first['train_years'][1]}, ~{first['n_train']} per graph), tested on papers of {first['test_years'][0]}-"
        f"{first['test_years'][1]} (~{first['n_test']} per graph); Spearman ρ of each forecast with ln(1 + 5-year "
        "citations), all from as-of-publication information.",
        "",
        "| method | " + " | ".join(f"seed {run['graph_seed']}" for run in runs) + " | mean ± sd |",
        "|---|" + "---|" * (len(runs) + 1),
    ]
    for key, attr, label in METHODS:
        cells = " | ".join(f"{run[attr]:.3f}" for run in runs)
        lines.append(f"| {label} | {cells} | {summary[key][0]:.3f} ± {summary[key][1]:.3f} |")
    lines += [
        "",
        "GNN − baseline (mean ± sd over seeds; seeds where the GNN is higher):",
        "",
    ]
    for key, _, label in METHODS[1:]:
        m, s = margins[f"gnn_minus_{key}"]
        lines.append(f"- {label}: {m:+.3f} ± {s:.3f} ({wins[f'gnn_beats_{key}']}/{len(runs)})")
    not_beaten = [label for key, _, label in METHODS[1:] if wins[f"gnn_beats_{key}"] < len(runs)]
    lines += [
        "",
        "Reading: the GNN beats the degree and PageRank baselines on every seed."
        if wins["gnn_beats_degree"] == wins["gnn_beats_pagerank"] == len(runs)
        else "Reading: the GNN does NOT beat the degree and PageRank baselines on every seed.",
    ]
    if not_beaten:
        lines.append(
            f"It does not beat {', '.join(not_beaten)} on every seed: on this synthetic graph the observable signal "
            "is first-order (the references' citations and ages), which a linear model on the references' mean "
            "features already captures; message passing adds nothing measurable here."
        )
    train_mean, train_sd = result["train_seconds_mean_sd"]
    lines += [
        "",
        f"Training time {train_mean:.1f} ± {train_sd:.1f} s per graph (early stopping at "
        f"{', '.join(str(run['epochs_trained']) for run in runs)} steps; {args.threads} torch thread(s), "
        f"{result['environment']['machine']}); graph preparation (as-of citation counts, yearly PageRank) "
        f"{statistics.fmean(run['prepare_seconds'] for run in runs):.1f} s, generation "
        f"{statistics.fmean(run['generate_seconds'] for run in runs):.1f} s.",
    ]
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
