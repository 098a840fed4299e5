"""Citation graph conventions and the transparent ImpactFore baseline (neighbours' citations).

Graph convention: a ``networkx.DiGraph`` whose nodes are paper ids with attributes ``year`` (int),
``topic`` (str), ``field`` (str), ``title`` (str) and ``synthetic`` (bool); an edge citing → cited means
"citing's reference list contains cited", so cited.year ≤ citing.year and a paper's citations are its
in-edges (``graph.predecessors``).  The graph attribute ``synthetic`` says whether the whole graph is
generated; a generated graph must never be reported as bibliometrics.

A facility supplies a real citation graph (e.g. an OpenAlex export); the simulator generates a synthetic
one with the statistical features real citation networks show (``simulate.generate_citation_graph``).
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np


def _year(graph: nx.DiGraph, paper: str) -> int:
    if paper not in graph:
        raise KeyError(f"paper {paper!r} is not in the citation graph")
    return int(graph.nodes[paper]["year"])


def citations_within_years(graph: nx.DiGraph, paper: str, years: int = 5) -> int:
    """Citations a paper received from papers published at most ``years`` years after it.

    c_T(p) = #{q : q → p, 0 ≤ year(q) − year(p) ≤ T}.  For papers published less than T years before the
    graph's last year the window is censored (not yet complete), so their counts are lower bounds.

    Raises
    ------
    KeyError
        If ``paper`` is not a node of ``graph``.
    """
    if years < 0:
        raise ValueError(f"years must be >= 0, got {years}")
    published = _year(graph, paper)
    return sum(1 for citing in graph.predecessors(paper) if 0 <= int(graph.nodes[citing]["year"]) - published <= years)


def max_citations_within_years(graph: nx.DiGraph, years: int = 5) -> int:
    """max_p c_T(p) over all papers: the reference scale for ``scoring.impact_normalised``."""
    return max((citations_within_years(graph, p, years) for p in graph.nodes), default=0)


def forecast_impact(
    graph: nx.DiGraph,
    neighbour_papers: Sequence[str],
    neighbour_weights: Sequence[float],
    years: int = 5,
) -> float:
    """ImpactFore baseline: similarity-weighted mean of neighbour papers' T-year citations.

    The pipeline forecasts with the graph neural network of :mod:`cryodecon_science.impact` (which
    beats degree and PageRank baselines on held-out years); this function stays as the transparent
    reference a reader can check by hand.

    ImpactFore = Σ_j w_j · c_T(p_j) / Σ_j w_j

    where p_j are the papers attached to the batch's nearest known structures and w_j ≥ 0 their
    similarities (e.g. 1 − cosine distance from ``StructureLibrary.nearest``).  The premise: work on a
    structure resembling well-cited ones tends to be cited similarly.

    Parameters
    ----------
    graph : networkx.DiGraph
        Citation graph (module conventions).
    neighbour_papers : sequence of str
        Paper ids, each a node of ``graph`` (repeats allowed: one paper can back several neighbours).
    neighbour_weights : sequence of float
        w_j, finite and ≥ 0, same length, positive sum.
    years : int
        Citation window T in years.

    Returns
    -------
    float
        Forecast citation count (≥ 0); normalise with ``scoring.impact_normalised``.

    Raises
    ------
    ValueError
        With no neighbours, mismatched lengths, or invalid weights.
    KeyError
        If a paper is not in the graph.
    """
    if len(neighbour_papers) == 0:
        raise ValueError("no neighbour papers: ImpactFore is undefined")
    if len(neighbour_papers) != len(neighbour_weights):
        raise ValueError(f"{len(neighbour_papers)} neighbour papers but {len(neighbour_weights)} weights")
    weights = np.asarray(neighbour_weights, dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("neighbour_weights must be finite and >= 0")
    total = float(weights.sum())
    if not total > 0:
        raise ValueError("neighbour_weights must have a positive sum")
    counts = np.asarray([citations_within_years(graph, p, years) for p in neighbour_papers], dtype=np.float64)
    return float(np.dot(weights, counts) / total)
