"""A citation graph as arrays for as-of-year queries: ordering, time-consistent edges, k_r(y), PageRank.

The citation graph follows ``cryodecon_science.citations`` (edge citing → cited, node ``year`` and
``topic``/``field``).  The snapshot of year y holds every paper of year ≤ y and their reference lists;
k_r(y) is r's in-degree in it and N_y·PR_r(y) its PageRank (damping 0.85; Brin & Page 1998) scaled by the
N_y papers of the snapshot, so that 1 is the snapshot's average.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_WINDOW_YEARS = 5
# PageRank damping (Brin & Page 1998) and power-iteration stopping rule.
PAGERANK_DAMPING = 0.85
_PAGERANK_TOL = 1e-10
_PAGERANK_MAX_ITER = 200


@dataclass(frozen=True, eq=False)
class ImpactGraph:
    """A citation graph as arrays for as-of-year queries (:func:`prepare_impact_graph`).

    Attributes
    ----------
    ids : tuple of str
        Paper ids ordered by (year, id); index i below refers to ``ids[i]``.
    years : ndarray of int64, shape (n,)
        Publication years, non-decreasing.
    topics, fields : tuple of str
        Topic and field of each paper ("" if absent).
    citing, cited : ndarray of int64, shape (e,)
        Edges citing → cited, sorted by (citing, cited); edges whose cited paper is younger than the citing
        one (impossible as of publication) and self-citations of a paper id are dropped.
    first_year, last_year : int
        Year range of the papers.
    cumulative_citations : ndarray of float64, shape (n, last_year − first_year + 1)
        k_r(y): in-degree of paper r counting citing papers of year ≤ y.
    pagerank : ndarray of float64, same shape
        N_y · PR_r(y) in the snapshot of year y (0 where r is not yet published).
    synthetic : bool
        The graph's ``synthetic`` attribute (False if absent).
    n_dropped_edges : int
        Edges dropped as time-inconsistent.
    """

    ids: tuple[str, ...]
    years: IntArray
    topics: tuple[str, ...]
    fields: tuple[str, ...]
    citing: IntArray
    cited: IntArray
    first_year: int
    last_year: int
    cumulative_citations: FloatArray
    pagerank: FloatArray
    synthetic: bool
    n_dropped_edges: int

    @property
    def n_papers(self) -> int:
        return len(self.ids)

    def year_index(self, year: int) -> int:
        """Column of ``year`` in the as-of arrays, clamped to the graph's years."""
        return min(max(year, self.first_year), self.last_year) - self.first_year


def _snapshot_pagerank(n_nodes: int, citing: IntArray, cited: IntArray, out_degree: FloatArray) -> FloatArray:
    """PageRank of a citation snapshot by power iteration (Brin & Page 1998), scaled to mean 1.

    PR_r = (1 − d)/N + d · (Σ_{q→r} PR_q / m_q + D/N), D = Σ_{q: m_q = 0} PR_q (dangling mass), d = 0.85;
    the returned vector is N · PR.
    """
    if n_nodes == 0:
        return np.zeros(0)
    rank = np.full(n_nodes, 1.0 / n_nodes)
    dangling = out_degree[:n_nodes] == 0
    share = np.where(dangling, 0.0, 1.0 / np.maximum(out_degree[:n_nodes], 1.0))
    for _ in range(_PAGERANK_MAX_ITER):
        flow = np.bincount(cited, weights=(rank * share)[citing], minlength=n_nodes)
        new = (1.0 - PAGERANK_DAMPING) / n_nodes + PAGERANK_DAMPING * (flow + rank[dangling].sum() / n_nodes)
        done = float(np.abs(new - rank).sum()) < _PAGERANK_TOL
        rank = new
        if done:
            break
    return rank * n_nodes


def prepare_impact_graph(graph: nx.DiGraph) -> ImpactGraph:
    """Arrays of ``graph`` for as-of-year features: ordering, edges, k_r(y) and snapshot PageRank.

    Parameters
    ----------
    graph : networkx.DiGraph
        Citation graph (``citations`` module conventions); every node needs an integer ``year``.

    Returns
    -------
    ImpactGraph

    Raises
    ------
    ValueError
        If the graph is empty or a node has no ``year``.
    """
    if graph.number_of_nodes() == 0:
        raise ValueError("the citation graph is empty")
    try:
        keyed = sorted((int(attrs["year"]), str(paper), paper) for paper, attrs in graph.nodes(data=True))
    except KeyError as exc:
        raise ValueError("every paper of the citation graph needs a 'year'") from exc
    ids = tuple(k[1] for k in keyed)
    index = {k[2]: i for i, k in enumerate(keyed)}
    years = np.asarray([k[0] for k in keyed], dtype=np.int64)
    topics = tuple(str(graph.nodes[k[2]].get("topic", "")) for k in keyed)
    fields = tuple(str(graph.nodes[k[2]].get("field", "")) for k in keyed)
    pairs = np.asarray([(index[a], index[b]) for a, b in graph.edges], dtype=np.int64).reshape(-1, 2)
    keep = (pairs[:, 0] != pairs[:, 1]) & (years[pairs[:, 1]] <= years[pairs[:, 0]])
    n_dropped = int((~keep).sum())
    pairs = pairs[keep]
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    citing, cited = pairs[:, 0].copy(), pairs[:, 1].copy()
    first_year, last_year = int(years[0]), int(years[-1])
    n_years = last_year - first_year + 1
    n = len(ids)
    yearly = np.zeros((n, n_years))
    np.add.at(yearly, (cited, years[citing] - first_year), 1.0)
    cumulative = np.cumsum(yearly, axis=1)
    out_degree = np.bincount(citing, minlength=n).astype(np.float64)
    pagerank = np.zeros((n, n_years))
    for column in range(n_years):
        year = first_year + column
        n_nodes = int(np.searchsorted(years, year, side="right"))
        n_edges = int(np.searchsorted(citing, n_nodes, side="left"))  # citing < n_nodes ⇔ citing year ≤ year
        pagerank[:n_nodes, column] = _snapshot_pagerank(n_nodes, citing[:n_edges], cited[:n_edges], out_degree)
    return ImpactGraph(
        ids=ids,
        years=years,
        topics=topics,
        fields=fields,
        citing=citing,
        cited=cited,
        first_year=first_year,
        last_year=last_year,
        cumulative_citations=cumulative,
        pagerank=pagerank,
        synthetic=bool(graph.graph.get("synthetic", False)),
        n_dropped_edges=n_dropped,
    )


def _as_impact_graph(graph: nx.DiGraph | ImpactGraph) -> ImpactGraph:
    return graph if isinstance(graph, ImpactGraph) else prepare_impact_graph(graph)


def five_year_citations(arrays: ImpactGraph, window_years: int = DEFAULT_WINDOW_YEARS) -> FloatArray:
    """c_T(p) = #{q → p : 0 ≤ y_q − y_p ≤ T} for every paper (``citations.citations_within_years``)."""
    lag = arrays.years[arrays.citing] - arrays.years[arrays.cited]
    inside = (lag >= 0) & (lag <= window_years)
    return np.bincount(arrays.cited[inside], minlength=arrays.n_papers).astype(np.float64)
