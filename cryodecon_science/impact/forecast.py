"""ImpactFore of a new structure: the forecast citations of a hypothetical paper citing what it resembles.

Premise: a paper reporting a new structure will cite — and be read alongside — the papers of the known
structures it most resembles, so it is placed in the graph as a hypothetical paper whose reference list is
the papers attached to its nearest library neighbours (similarity-weighted), published in the forecast
year.  The forecast is what the model expects for such a paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch

from cryodecon_science.impact.features import _activity, _codes, _edge_block, _Features, _features, _node_block
from cryodecon_science.impact.graph import ImpactGraph, _as_impact_graph
from cryodecon_science.impact.model import ImpactModel, _tensors


def forecast_new_paper(
    model: ImpactModel,
    graph: nx.DiGraph | ImpactGraph,
    cited_papers: Sequence[str],
    year: int,
    weights: Sequence[float] | None = None,
) -> float:
    """Expected T-year citations of a hypothetical paper published in ``year`` citing ``cited_papers``.

    Premise (ImpactFore): a new structure is placed in the citation graph by what it resembles — its
    reference list is taken to be the papers attached to its nearest known structures in the structure
    library, weighted by similarity w_j (the mean aggregation becomes Σ_j w_j m_j / Σ_j w_j; repeats allowed).
    Its own node features: the weight-majority topic and field of the cited papers, the typical (training
    median) reference-list length, and topic/corpus activity as of ``year``.  Edge features are taken as of
    ``year`` (the graph's last year if ``year`` is later: ages use ``year``, citation counts and PageRank the
    latest snapshot).  The forecast is the smeared back-transform E[c] = exp(ŷ) · smearing − 1 (Duan 1983),
    floored at 0.  On a SYNTHETIC graph the number is synthetic too.

    Parameters
    ----------
    model : ImpactModel
    graph : networkx.DiGraph or ImpactGraph
    cited_papers : sequence of str
        Paper ids in the graph, each published in ``year`` or earlier.
    year : int
        Publication year of the hypothetical paper.
    weights : sequence of float, optional
        w_j ≥ 0, finite, positive sum; equal weights if omitted.

    Returns
    -------
    float
        Forecast citations (≥ 0, finite); normalise with ``scoring.impact_normalised``.

    Raises
    ------
    ValueError
        With no cited papers, mismatched or invalid weights, or a cited paper younger than ``year``.
    KeyError
        If a cited paper is not in the graph.
    """
    if len(cited_papers) == 0:
        raise ValueError("no cited papers: the forecast is undefined")
    w = np.ones(len(cited_papers)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(cited_papers),):
        raise ValueError(f"{len(cited_papers)} cited papers but {w.size} weights")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be finite, >= 0 and have a positive sum")
    arrays = _as_impact_graph(graph)
    position = {p: i for i, p in enumerate(arrays.ids)}
    missing = [p for p in cited_papers if p not in position]
    if missing:
        raise KeyError(f"paper {missing[0]!r} is not in the citation graph")
    cited = np.asarray([position[p] for p in cited_papers], dtype=np.int64)
    if np.any(arrays.years[cited] > year):
        raise ValueError(f"a cited paper is published after {year}")
    n_nodes = int(np.searchsorted(arrays.years, year, side="right"))
    features = _features(arrays, model.topics, model.fields, n_nodes)
    # The hypothetical paper: majority topic/field by weight, typical reference count, activity as of year.
    topic_weight: dict[str, float] = {}
    field_weight: dict[str, float] = {}
    for j, wj in zip(cited, w, strict=True):
        topic_weight[arrays.topics[j]] = topic_weight.get(arrays.topics[j], 0.0) + float(wj)
        field_weight[arrays.fields[j]] = field_weight.get(arrays.fields[j], 0.0) + float(wj)
    topic = max(sorted(topic_weight), key=lambda t: topic_weight[t])
    field = max(sorted(field_weight), key=lambda f: field_weight[f])
    n_years = arrays.last_year - arrays.first_year + 1
    topic_codes = _codes(arrays.topics, model.topics)
    activity = _activity(arrays.years, topic_codes, len(model.topics), arrays.first_year, n_years)
    code = int(_codes([topic], model.topics)[0])
    column = arrays.year_index(year)
    new_node = _node_block(
        np.asarray([model.typical_n_references]),
        np.asarray([code]),
        _codes([field], model.fields),
        np.asarray([activity[code, column] if code < len(model.topics) else 0.0]),
        np.asarray([activity[len(model.topics), column]]),
        len(model.topics),
        len(model.fields),
    )
    same_topic = np.asarray([1.0 if arrays.topics[j] == topic else 0.0 for j in cited])
    new_edges = _edge_block(arrays, np.full(len(cited), year, dtype=np.int64), cited, same_topic)
    extended = _Features(
        node=np.vstack([features.node, new_node]),
        edge=np.vstack([features.edge, new_edges]),
        citing=np.concatenate([features.citing, np.full(len(cited), n_nodes, dtype=np.int64)]),
        cited=np.concatenate([features.cited, cited]),
        edge_weight=np.concatenate([features.edge_weight, w / w.sum()]),
    )
    with torch.no_grad():
        out = model.network()(*_tensors(extended, model))
    log_forecast = float(out[n_nodes]) * model.label_std + model.label_mean
    return max(0.0, math.exp(log_forecast) * model.smearing - 1.0)
