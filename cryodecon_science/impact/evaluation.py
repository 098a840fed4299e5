"""Temporal split: the GNN and baselines ranked by Spearman ρ on publication years after the training cutoff.

With cutoff year C and window T: training papers have y_p + T ≤ C, and the model is fitted on the snapshot
of year C alone (labels count only citations from papers of year ≤ C); test papers have C < y_p and
y_p + T ≤ the last complete year of the graph.  Baselines on the same test papers, from the same as-of-y_p
information: mean in-degree k_r(y_p) of the references, mean N_y·PR_r(y_p) of the references, the training
mean of the paper's topic, the mean citation rate of the references, and a ridge regression on the node
features with the references' mean features (one hop, no learned messages).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from cryodecon_science.impact.features import _Features, _features
from cryodecon_science.impact.graph import DEFAULT_WINDOW_YEARS, ImpactGraph, _as_impact_graph, five_year_citations
from cryodecon_science.impact.model import predict_log_citations
from cryodecon_science.impact.training import DEFAULT_BURN_IN_YEARS, _mean_std, train_impact_model

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_TEST_YEARS = 4
_RIDGE_ALPHA = 1.0


def spearman(a: Sequence[float] | FloatArray, b: Sequence[float] | FloatArray) -> float:
    """Spearman's ρ: Pearson correlation of average ranks (ties share their mean rank); NaN if constant."""
    ra = np.asarray(rankdata(np.asarray(a, dtype=np.float64)), dtype=np.float64)
    rb = np.asarray(rankdata(np.asarray(b, dtype=np.float64)), dtype=np.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rb, rb)))
    return float(np.dot(ra, rb) / denominator) if denominator > 0 else math.nan


@dataclass(frozen=True)
class ImpactEvaluation:
    """Held-out Spearman ρ between forecast and observed ln(1 + c_T) on later publication years.

    Attributes
    ----------
    spearman_gnn : float
        The GNN.
    spearman_degree : float
        Baseline (a): mean in-degree k_r(y_p) of p's references.
    spearman_pagerank : float
        Baseline (b): mean N_y · PR_r(y_p) of p's references in the snapshot of year y_p.
    spearman_topic_mean : float
        Baseline (c): mean training target of p's topic.
    spearman_reference_rate : float
        Heuristic (d): mean citations per year k_r(y_p) / (1 + y_p − y_r) of p's references.
    spearman_linear : float
        Ablation (e): ridge regression (α = 1) on p's node features, its references' mean node features and
        mean edge features — the same information as the GNN's first hop, without learned messages.
    n_train, n_test : int
    train_years, test_years : tuple of int
        (first, last) publication years.
    train_cutoff_year, window_years, seed : int
    train_seconds : float
        Wall time of :func:`train_impact_model`.
    epochs_trained : int
        Adam steps of the kept weights (early stopping).
    synthetic : bool
        Whether the graph is SYNTHETIC (then so are these numbers).
    """

    spearman_gnn: float
    spearman_degree: float
    spearman_pagerank: float
    spearman_topic_mean: float
    spearman_reference_rate: float
    spearman_linear: float
    n_train: int
    n_test: int
    train_years: tuple[int, int]
    test_years: tuple[int, int]
    train_cutoff_year: int
    window_years: int
    seed: int
    train_seconds: float
    epochs_trained: int
    synthetic: bool


def _reference_mean(values: FloatArray, citing: IntArray, n: int) -> FloatArray:
    """Mean of per-edge ``values`` (rows) over each paper's references; 0 for a paper without any."""
    values2 = values.reshape(len(citing), -1)
    total = np.zeros((n, values2.shape[1]))
    np.add.at(total, citing, values2)
    count = np.bincount(citing, minlength=n).astype(np.float64)
    mean = total / np.maximum(count, 1.0)[:, None]
    return mean if values.ndim == 2 else mean[:, 0]


def _ridge_design(features: _Features, n: int) -> FloatArray:
    reference_node = _reference_mean(features.node[features.cited], features.citing, n)
    reference_edge = _reference_mean(features.edge, features.citing, n)
    return np.hstack([features.node, reference_node, reference_edge])


def evaluate_temporal_split(
    graph: nx.DiGraph | ImpactGraph,
    train_cutoff_year: int | None = None,
    seed: int = 0,
    *,
    window_years: int = DEFAULT_WINDOW_YEARS,
    last_complete_year: int | None = None,
    burn_in_years: int = DEFAULT_BURN_IN_YEARS,
    hidden_size: int = 16,
    max_epochs: int = 300,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-3,
) -> ImpactEvaluation:
    """Train on early years, compare GNN and baselines by Spearman ρ on later publication years.

    Test papers: C < y_p ≤ L − T with L the last complete year (default: the graph's last year) and C the
    cutoff (default L − T − 4, i.e. four test years).  Each test paper's forecast and baselines use the
    snapshot of its own year; its observed c_T counts citations up to y_p + T ≤ L.  See the module
    docstring for the baselines.

    Raises
    ------
    ValueError
        If there are no test years, or fewer than 10 training papers.
    """
    arrays = _as_impact_graph(graph)
    last = arrays.last_year if last_complete_year is None else last_complete_year
    cutoff = last - window_years - DEFAULT_TEST_YEARS if train_cutoff_year is None else train_cutoff_year
    if cutoff + 1 > last - window_years:
        raise ValueError(f"no test years: cutoff {cutoff}, last complete year {last}, window {window_years}")
    started = time.perf_counter()
    model = train_impact_model(
        arrays,
        cutoff,
        seed,
        window_years=window_years,
        burn_in_years=burn_in_years,
        hidden_size=hidden_size,
        max_epochs=max_epochs,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
    )
    train_seconds = time.perf_counter() - started
    n_nodes = int(np.searchsorted(arrays.years, last - window_years, side="right"))
    test = np.flatnonzero(arrays.years[:n_nodes] > cutoff)
    if len(test) < 3:
        raise ValueError(f"only {len(test)} test papers")
    observed = np.log1p(five_year_citations(arrays, window_years)[test])
    predicted = predict_log_citations(model, arrays, last - window_years)[test]

    features = _features(arrays, model.topics, model.fields, n_nodes)
    column = arrays.years[features.citing] - arrays.first_year
    degree = _reference_mean(arrays.cumulative_citations[features.cited, column], features.citing, n_nodes)
    pagerank = _reference_mean(arrays.pagerank[features.cited, column], features.citing, n_nodes)
    age = (arrays.years[features.citing] - arrays.years[features.cited]).astype(np.float64)
    rate = _reference_mean(arrays.cumulative_citations[features.cited, column] / (1.0 + age), features.citing, n_nodes)

    # Training targets (snapshot of year C) for the topic-mean and ridge baselines.
    n_snapshot = int(np.searchsorted(arrays.years, cutoff, side="right"))
    snapshot_years = arrays.years[:n_snapshot]
    train = np.flatnonzero(
        (snapshot_years + window_years <= cutoff) & (snapshot_years >= arrays.first_year + burn_in_years)
    )
    keep = arrays.years[arrays.citing] <= cutoff
    lag = arrays.years[arrays.citing] - arrays.years[arrays.cited]
    inside = keep & (lag >= 0) & (lag <= window_years)
    train_target = np.log1p(np.bincount(arrays.cited[inside], minlength=arrays.n_papers)[train].astype(np.float64))
    topic_of = np.asarray(arrays.topics, dtype=object)
    topic_mean = {t: float(train_target[topic_of[train] == t].mean()) for t in set(topic_of[train])}
    overall = float(train_target.mean())
    topic_forecast = np.asarray([topic_mean.get(t, overall) for t in topic_of[test]])

    design = _ridge_design(features, n_nodes)
    mean, std = _mean_std(design[train])
    scaled = (design - np.asarray(mean)) / np.asarray(std)
    xt = np.hstack([scaled[train], np.ones((len(train), 1))])
    penalty = _RIDGE_ALPHA * np.eye(xt.shape[1])
    penalty[-1, -1] = 0.0
    coefficients = np.linalg.solve(xt.T @ xt + penalty, xt.T @ train_target)
    linear = np.hstack([scaled[test], np.ones((len(test), 1))]) @ coefficients

    return ImpactEvaluation(
        spearman_gnn=spearman(predicted, observed),
        spearman_degree=spearman(degree[test], observed),
        spearman_pagerank=spearman(pagerank[test], observed),
        spearman_topic_mean=spearman(topic_forecast, observed),
        spearman_reference_rate=spearman(rate[test], observed),
        spearman_linear=spearman(linear, observed),
        n_train=model.n_train,
        n_test=len(test),
        train_years=model.train_years,
        test_years=(int(arrays.years[test].min()), int(arrays.years[test].max())),
        train_cutoff_year=cutoff,
        window_years=window_years,
        seed=seed,
        train_seconds=train_seconds,
        epochs_trained=model.epochs_trained,
        synthetic=arrays.synthetic,
    )
