"""Synthetic citation graph structure, Parquet round trip, and ImpactFore arithmetic on a hand-made graph."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryodecon_science.citations import (
    citations_within_years,
    forecast_impact,
    max_citations_within_years,
)
from cryodecon_science.io.citations import (
    CitationTableError,
    read_citation_graph,
    read_citation_tables,
    write_citation_edges,
    write_citation_graph,
    write_citation_nodes,
)
from cryodecon_science.simulate import generate_citation_graph


@pytest.fixture(scope="module")
def synthetic() -> nx.DiGraph:
    return generate_citation_graph(n_papers=400, start_year=2005, end_year=2024, seed=3)


def test_synthetic_graph_is_a_dag_with_ordered_years(synthetic: nx.DiGraph) -> None:
    assert synthetic.number_of_nodes() == 400
    assert synthetic.number_of_edges() > 400
    assert nx.is_directed_acyclic_graph(synthetic)
    for citing, cited in synthetic.edges:
        assert synthetic.nodes[cited]["year"] <= synthetic.nodes[citing]["year"]
    years = [attrs["year"] for _, attrs in synthetic.nodes(data=True)]
    assert min(years) >= 2005 and max(years) <= 2024


def test_synthetic_graph_is_labelled_synthetic(synthetic: nx.DiGraph) -> None:
    assert synthetic.graph["synthetic"] is True
    for paper, attrs in synthetic.nodes(data=True):
        assert attrs["synthetic"] is True
        assert attrs["title"] == f"synthetic paper {int(paper.split('-')[1])}"
        assert attrs["topic"] and attrs["field"] in {"structures", "methods"}


def test_synthetic_graph_is_heavy_tailed_and_deterministic(synthetic: nx.DiGraph) -> None:
    in_degree = np.array([d for _, d in synthetic.in_degree()])
    # Preferential attachment: the most cited paper collects far more than the median one.
    assert in_degree.max() > 10 * max(np.median(in_degree), 1.0)
    again = generate_citation_graph(n_papers=400, start_year=2005, end_year=2024, seed=3)
    assert set(again.edges) == set(synthetic.edges)
    other = generate_citation_graph(n_papers=400, start_year=2005, end_year=2024, seed=4)
    assert set(other.edges) != set(synthetic.edges)


def test_parquet_round_trip(synthetic: nx.DiGraph, tmp_path: Path) -> None:
    folder = tmp_path / "citations"
    write_citation_graph(synthetic, folder)
    assert pq.read_schema(folder / "edges.parquet").names == ["citing", "cited", "year"]
    back = read_citation_graph(folder)
    assert back.graph["synthetic"] is True and back.graph["seed"] == 3
    assert set(back.edges) == set(synthetic.edges)
    assert dict(back.nodes(data=True)) == dict(synthetic.nodes(data=True))


def test_single_table_round_trip(tmp_path: Path) -> None:
    graph = _hand_graph()
    write_citation_edges(graph, tmp_path / "e.parquet")
    write_citation_nodes(graph, tmp_path / "n.parquet")
    back = read_citation_tables(tmp_path / "e.parquet", tmp_path / "n.parquet")
    assert set(back.edges) == set(graph.edges) and back.graph == {"synthetic": False}
    assert back.nodes["C"]["year"] == 2015 and back.nodes["C"]["synthetic"] is False


def test_missing_column_is_a_clear_error(synthetic: nx.DiGraph, tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.parquet"
    write_citation_nodes(synthetic, nodes)
    broken = tmp_path / "edges.parquet"
    pq.write_table(pa.table({"citing": ["synthetic-00001"], "cited": ["synthetic-00000"]}), broken)
    with pytest.raises(CitationTableError, match=r"missing column\(s\) \['year'\]"):
        read_citation_tables(broken, nodes)


def test_unknown_paper_and_wrong_year_are_errors(tmp_path: Path) -> None:
    graph = _hand_graph()
    nodes = tmp_path / "nodes.parquet"
    write_citation_nodes(graph, nodes)
    unknown = tmp_path / "unknown.parquet"
    pq.write_table(pa.table({"citing": ["B"], "cited": ["Z"], "year": [2011]}), unknown)
    with pytest.raises(CitationTableError, match="unknown paper 'Z'"):
        read_citation_tables(unknown, nodes)
    wrong_year = tmp_path / "wrong_year.parquet"
    pq.write_table(pa.table({"citing": ["B"], "cited": ["A"], "year": [1999]}), wrong_year)
    with pytest.raises(CitationTableError, match="year"):
        read_citation_tables(wrong_year, nodes)


def _hand_graph() -> nx.DiGraph:
    """A (2010) cited by B (2011), C (2015), D (2016); E (2012) cited by F (2012)."""
    graph = nx.DiGraph(synthetic=False)
    for paper, year in {"A": 2010, "B": 2011, "C": 2015, "D": 2016, "E": 2012, "F": 2012}.items():
        graph.add_node(paper, year=year, topic="t", field="structures", title=paper, synthetic=False)
    graph.add_edges_from([("B", "A"), ("C", "A"), ("D", "A"), ("F", "E")])
    return graph


def test_citations_within_years_counts_the_window_inclusively() -> None:
    graph = _hand_graph()
    assert citations_within_years(graph, "A", years=5) == 2  # B (Δ1) and C (Δ5); D is Δ6
    assert citations_within_years(graph, "A", years=6) == 3
    assert citations_within_years(graph, "A", years=0) == 0
    assert citations_within_years(graph, "E", years=0) == 1  # same-year citation
    assert citations_within_years(graph, "B") == 0
    assert max_citations_within_years(graph, years=5) == 2
    with pytest.raises(KeyError):
        citations_within_years(graph, "nope")


def test_forecast_impact_is_the_weighted_mean() -> None:
    graph = _hand_graph()
    # (3·2 + 1·1) / (3 + 1) = 1.75
    assert forecast_impact(graph, ["A", "E"], [3.0, 1.0]) == pytest.approx(1.75)
    assert forecast_impact(graph, ["A", "E"], [1.0, 0.0]) == pytest.approx(2.0)
    assert forecast_impact(graph, ["B"], [0.5]) == 0.0
    with pytest.raises(ValueError):
        forecast_impact(graph, [], [])
    with pytest.raises(ValueError):
        forecast_impact(graph, ["A"], [1.0, 2.0])
    with pytest.raises(ValueError):
        forecast_impact(graph, ["A", "E"], [0.0, 0.0])
    with pytest.raises(ValueError):
        forecast_impact(graph, ["A"], [-1.0])
    with pytest.raises(KeyError):
        forecast_impact(graph, ["Z"], [1.0])
