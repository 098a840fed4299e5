"""ImpactFore GNN: time-respecting features, no leakage across the temporal split, determinism, forecasts of a
new paper, model files, and held-out Spearman against the degree and PageRank baselines.

All graphs here are SYNTHETIC (``citations.generate_citation_graph``); the numbers say nothing about real
bibliometrics.  Graphs start in 1985 so that the training years (1995-2011 after the 10-year burn-in) lie
past the generator's start-up transient.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from cryodecon_science.impact import (
    ImpactGraph,
    ImpactModel,
    evaluate_temporal_split,
    forecast_new_paper,
    paper_features,
    predict_log_citations,
    prepare_impact_graph,
    spearman,
    train_impact_model,
)
from cryodecon_science.io.impact_model import ImpactModelFileError, load_impact_model, save_impact_model
from cryodecon_science.simulate import generate_citation_graph

CUTOFF = 2016
N_PAPERS = 3000
START_YEAR = 1985


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return generate_citation_graph(n_papers=N_PAPERS, start_year=START_YEAR, end_year=2025, seed=0)


@pytest.fixture(scope="module")
def arrays(graph: nx.DiGraph) -> ImpactGraph:
    return prepare_impact_graph(graph)


@pytest.fixture(scope="module")
def model(arrays: ImpactGraph) -> ImpactModel:
    torch.set_num_threads(1)
    return train_impact_model(arrays, CUTOFF, seed=0)


def _paper_with_references(graph: nx.DiGraph, year: int) -> str:
    return next(p for p, a in sorted(graph.nodes(data=True)) if a["year"] == year and graph.out_degree(p) >= 5)


def test_features_ignore_citations_after_publication(graph: nx.DiGraph, model: ImpactModel) -> None:
    paper = _paper_with_references(graph, 2010)
    reference = next(iter(sorted(graph.successors(paper))))
    node_before, edge_before = paper_features(graph, paper, model.topics, model.fields)
    predicted_before = predict_log_citations(model, graph, 2010)

    later = graph.copy()
    citing_later = [p for p, a in sorted(later.nodes(data=True)) if a["year"] == 2014][:3]
    for citer in citing_later:
        later.add_edge(citer, paper)  # citations the paper receives after publication
        later.add_edge(citer, reference)  # and its reference, after the paper's year
    later.add_node("late-paper", year=2011, topic=later.nodes[paper]["topic"], field="structures", synthetic=True)
    later.add_edge("late-paper", paper)
    node_after, edge_after = paper_features(later, paper, model.topics, model.fields)
    assert np.array_equal(node_before, node_after)
    assert np.array_equal(edge_before, edge_after)
    index = prepare_impact_graph(graph).ids.index(paper)
    assert predict_log_citations(model, later, 2010)[index] == predicted_before[index]

    # The check is sensitive: a citation of the reference from a paper of the same year does change them.
    earlier = graph.copy()
    same_year = next(
        p
        for p, a in sorted(earlier.nodes(data=True))
        if a["year"] == 2010 and p != paper and not earlier.has_edge(p, reference)
    )
    earlier.add_edge(same_year, reference)
    _, edge_changed = paper_features(earlier, paper, model.topics, model.fields)
    assert not np.array_equal(edge_before, edge_changed)


def test_training_sees_nothing_after_the_cutoff(graph: nx.DiGraph, model: ImpactModel) -> None:
    assert model.train_years[1] + model.window_years <= CUTOFF
    assert model.validation_years[1] == model.train_years[1]
    assert model.train_years[0] >= START_YEAR + model.burn_in_years
    truncated = graph.subgraph([p for p, a in graph.nodes(data=True) if a["year"] <= CUTOFF]).copy()
    again = train_impact_model(truncated, CUTOFF, seed=0)
    assert again.state_dict.keys() == model.state_dict.keys()
    for name, tensor in model.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name
    assert (again.label_mean, again.smearing, again.epochs_trained) == (
        model.label_mean,
        model.smearing,
        model.epochs_trained,
    )


def test_training_is_deterministic(arrays: ImpactGraph, model: ImpactModel) -> None:
    again = train_impact_model(arrays, CUTOFF, seed=0)
    for name, tensor in model.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name
    other = train_impact_model(arrays, CUTOFF, seed=1)
    assert any(not torch.equal(t, other.state_dict[n]) for n, t in model.state_dict.items())
    assert model.graph_synthetic is True and model.seed == 0


def test_forecast_rises_with_the_citations_of_the_cited_papers(arrays: ImpactGraph, model: ImpactModel) -> None:
    # Papers of 2012-2014 seen from 2020: the most cited ten vs the least cited ten (same ages).  On the synthetic
    # graph fitter papers cite fitter, hence more cited, work, so the first set must forecast more citations.
    column = arrays.year_index(2020)
    candidates = np.flatnonzero((arrays.years >= 2012) & (arrays.years <= 2014))
    order = candidates[np.argsort(arrays.cumulative_citations[candidates, column], kind="stable")]
    low = [arrays.ids[i] for i in order[:10]]
    high = [arrays.ids[i] for i in order[-10:]]
    forecast_high = forecast_new_paper(model, arrays, high, 2020)
    forecast_low = forecast_new_paper(model, arrays, low, 2020)
    assert math.isfinite(forecast_high) and math.isfinite(forecast_low)
    assert forecast_low >= 0.0
    assert forecast_high > 1.5 * forecast_low
    # Weights: all weight on one paper equals citing that paper alone; repeats are allowed.
    weighted = forecast_new_paper(model, arrays, [high[0], low[0]], 2020, weights=[1.0, 0.0])
    assert weighted == pytest.approx(forecast_new_paper(model, arrays, [high[0]], 2020), rel=1e-5)
    assert forecast_new_paper(model, arrays, [high[0], high[0]], 2020) == pytest.approx(
        forecast_new_paper(model, arrays, [high[0]], 2020), rel=1e-5
    )
    # A year past the graph's end uses the latest snapshot.
    assert math.isfinite(forecast_new_paper(model, arrays, high, 2030))


def test_forecast_rejects_bad_input(arrays: ImpactGraph, model: ImpactModel) -> None:
    paper = arrays.ids[-1]
    with pytest.raises(ValueError):
        forecast_new_paper(model, arrays, [], 2020)
    with pytest.raises(ValueError):
        forecast_new_paper(model, arrays, [paper], 2025, weights=[1.0, 2.0])
    with pytest.raises(ValueError):
        forecast_new_paper(model, arrays, [paper], 2025, weights=[0.0])
    with pytest.raises(ValueError, match="after"):
        forecast_new_paper(model, arrays, [paper], 2000)
    with pytest.raises(KeyError):
        forecast_new_paper(model, arrays, ["no-such-paper"], 2020)


def test_model_file_round_trip(arrays: ImpactGraph, model: ImpactModel, tmp_path: Path) -> None:
    path = tmp_path / "models" / "impact.pt"
    save_impact_model(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["impact.pt"]  # no temporary file left behind
    back = load_impact_model(path)
    for name, tensor in model.state_dict.items():
        assert torch.equal(tensor, back.state_dict[name])
    for field in ("node_mean", "topics", "train_years", "validation_years", "smearing", "graph_synthetic"):
        assert getattr(back, field) == getattr(model, field), field
    papers = list(arrays.ids[100:105])
    assert forecast_new_paper(back, arrays, papers, 2020) == forecast_new_paper(model, arrays, papers, 2020)


def test_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImpactModelFileError, match="no such file"):
        load_impact_model(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(ImpactModelFileError):
        load_impact_model(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ImpactModelFileError, match=r"not a cryodecon\.impact_model"):
        load_impact_model(other)


def test_spearman_handles_ties() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 1, 2, 2]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


# Measured on 3000-paper graphs (start 1985, cutoff 2016, test years 2017-2020, ~430 test papers), graph seeds
# 0-5 with model seed 0 and model seeds 0-2 on graph 0: GNN − degree 0.12-0.25, GNN − PageRank 0.22-0.32,
# GNN 0.25-0.46.  The margins asserted sit below the smallest measured ones.
@pytest.mark.parametrize("graph_seed", [0, 1])
def test_gnn_beats_degree_and_pagerank_on_held_out_years(graph_seed: int, arrays: ImpactGraph) -> None:
    if graph_seed != 0:
        arrays = prepare_impact_graph(
            generate_citation_graph(n_papers=N_PAPERS, start_year=START_YEAR, end_year=2025, seed=graph_seed)
        )
    evaluation = evaluate_temporal_split(arrays, CUTOFF, seed=0)
    assert evaluation.synthetic is True
    assert evaluation.train_years[1] + evaluation.window_years <= CUTOFF < evaluation.test_years[0]
    assert evaluation.test_years == (2017, 2020) and evaluation.n_test > 300 and evaluation.n_train > 800
    assert evaluation.spearman_gnn > 0.3
    assert evaluation.spearman_gnn > evaluation.spearman_degree + 0.08
    assert evaluation.spearman_gnn > evaluation.spearman_pagerank + 0.15
