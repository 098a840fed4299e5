"""Node and edge features of each paper, all from the citation graph as of its publication year y_p.

A paper p is described only by papers published in years ≤ y_p and their reference lists, its own
included, but by no citation p itself receives (:data:`NODE_FEATURES`, :data:`EDGE_FEATURES`).

Node p (published y_p):

* ``topic=<t>``, ``field=<f>`` — one-hot of p's topic and field (vocabulary: the training snapshot's).
* ``log1p_n_references`` — ln(1 + m_p), m_p = length of p's reference list (within the corpus).
* ``has_references`` — 1 if m_p > 0 (the mean over an empty reference list is 0).
* ``topic_share`` — share of p's topic among the papers published in y_p − 2 … y_p (topic activity).
  Absolute counts are left out: they grow with the corpus, so they identify the year and do not transfer
  from training years to later ones.

Edge p → r (reference r of p, seen from year y_p):

* ``log1p_citations`` — ln(1 + k_r(y_p)), k_r(y) = #papers of year ≤ y citing r (r's in-degree as of y).
* ``log1p_age`` — ln(1 + y_p − y_r).
* ``log1p_citation_rate`` — ln(1 + k_r(y_p) / (1 + y_p − y_r)), citations per year since publication.
* ``log_pagerank`` — ln(N_y · PR_r(y_p)), PageRank of r in the snapshot of year y_p (N_y papers, damping
  0.85; Brin & Page 1998), scaled by N_y so that 1 is the snapshot's average.
* ``same_topic`` — 1 if r shares p's topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt

from cryodecon_science.impact.graph import ImpactGraph, _as_impact_graph

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Years of the "recent activity" window of a topic (y − 2 … y).
_ACTIVITY_YEARS = 3

NODE_FEATURES: tuple[str, ...] = (
    "log1p_n_references",
    "has_references",
    "topic_share",
)
EDGE_FEATURES: tuple[str, ...] = (
    "log1p_citations",
    "log1p_age",
    "log1p_citation_rate",
    "log_pagerank",
    "same_topic",
)


@dataclass(frozen=True, eq=False)
class _Features:
    node: FloatArray  # (n, F): NODE_FEATURES then topic and field one-hots
    edge: FloatArray  # (e, G): EDGE_FEATURES of each edge citing → cited as of the citing year
    citing: IntArray
    cited: IntArray
    edge_weight: FloatArray  # 1 / m_citing


def _activity(years: IntArray, topic_codes: IntArray, n_topics: int, first_year: int, n_years: int) -> FloatArray:
    """counts[t, y] of papers of topic t in years y − 2 … y (row n_topics: all topics)."""
    counts = np.zeros((n_topics + 1, n_years))
    np.add.at(counts, (topic_codes, years - first_year), 1.0)
    counts[n_topics] = counts[:n_topics].sum(axis=0)
    cumulative = np.cumsum(counts, axis=1)
    shifted = np.zeros_like(cumulative)
    shifted[:, _ACTIVITY_YEARS:] = cumulative[:, :-_ACTIVITY_YEARS]
    return cumulative - shifted


def _codes(values: Sequence[str], vocabulary: Sequence[str]) -> IntArray:
    """Index of each value in ``vocabulary``; len(vocabulary) for an unknown value."""
    lookup = {v: i for i, v in enumerate(vocabulary)}
    return np.asarray([lookup.get(v, len(vocabulary)) for v in values], dtype=np.int64)


def _node_block(
    n_references: FloatArray,
    topic_codes: IntArray,
    field_codes: IntArray,
    topic_activity: FloatArray,
    corpus_activity: FloatArray,
    n_topic_vocab: int,
    n_field_vocab: int,
) -> FloatArray:
    n = len(n_references)
    topic_onehot = np.zeros((n, n_topic_vocab + 1))
    topic_onehot[np.arange(n), topic_codes] = 1.0
    field_onehot = np.zeros((n, n_field_vocab + 1))
    field_onehot[np.arange(n), field_codes] = 1.0
    base = np.column_stack(
        [
            np.log1p(n_references),
            (n_references > 0).astype(np.float64),
            topic_activity / np.maximum(corpus_activity, 1.0),
        ]
    )
    # The last one-hot column (unknown topic/field) is dropped: unknown is all zeros.
    return np.hstack([base, topic_onehot[:, :-1], field_onehot[:, :-1]])


def _edge_block(arrays: ImpactGraph, as_of_years: IntArray, cited: IntArray, same_topic: FloatArray) -> FloatArray:
    column = np.clip(as_of_years, arrays.first_year, arrays.last_year) - arrays.first_year
    citations = arrays.cumulative_citations[cited, column]
    age = (as_of_years - arrays.years[cited]).astype(np.float64)
    rank = arrays.pagerank[cited, column]
    return np.column_stack(
        [
            np.log1p(citations),
            np.log1p(age),
            np.log1p(citations / (1.0 + age)),
            np.log(np.maximum(rank, 1e-12)),
            same_topic,
        ]
    )


def _features(arrays: ImpactGraph, topics: Sequence[str], fields: Sequence[str], n_nodes: int) -> _Features:
    """Node and edge features of the first ``n_nodes`` papers (a year-closed prefix), each as of its year."""
    years = arrays.years[:n_nodes]
    n_edges = int(np.searchsorted(arrays.citing, n_nodes, side="left"))
    citing, cited = arrays.citing[:n_edges], arrays.cited[:n_edges]
    topic_codes = _codes(arrays.topics[:n_nodes], topics)
    field_codes = _codes(arrays.fields[:n_nodes], fields)
    n_years = arrays.last_year - arrays.first_year + 1
    activity = _activity(years, topic_codes, len(topics), arrays.first_year, n_years)
    column = years - arrays.first_year
    n_references = np.bincount(citing, minlength=n_nodes).astype(np.float64)
    node = _node_block(
        n_references,
        topic_codes,
        field_codes,
        activity[topic_codes, column],
        activity[len(topics), column],
        len(topics),
        len(fields),
    )
    topic_of = np.asarray(arrays.topics[:n_nodes], dtype=object)
    same_topic = (topic_of[citing] == topic_of[cited]).astype(np.float64)
    edge = _edge_block(arrays, years[citing], cited, same_topic)
    edge_weight = 1.0 / np.maximum(n_references[citing], 1.0)
    return _Features(node=node, edge=edge, citing=citing, cited=cited, edge_weight=edge_weight)


def feature_names(topics: Sequence[str], fields: Sequence[str]) -> tuple[str, ...]:
    """Names of the node feature columns for a topic and field vocabulary."""
    return NODE_FEATURES + tuple(f"topic={t}" for t in topics) + tuple(f"field={f}" for f in fields)


def paper_features(
    graph: nx.DiGraph | ImpactGraph, paper: str, topics: Sequence[str], fields: Sequence[str]
) -> tuple[FloatArray, FloatArray]:
    """As-of-publication features of one paper: (node features, edge features of its references).

    The edge rows are ordered by the cited paper's position in :attr:`ImpactGraph.ids`.  Used to check that
    nothing after the paper's year enters (a citation added later leaves both unchanged).

    Raises
    ------
    KeyError
        If ``paper`` is not in the graph.
    """
    arrays = _as_impact_graph(graph)
    try:
        i = arrays.ids.index(paper)
    except ValueError as exc:
        raise KeyError(f"paper {paper!r} is not in the citation graph") from exc
    n_nodes = int(np.searchsorted(arrays.years, arrays.years[i], side="right"))
    features = _features(arrays, topics, fields, n_nodes)
    return features.node[i].copy(), features.edge[features.citing == i].copy()
