"""ImpactFore as a graph neural network: 5-year citations predicted from what is known at publication.

The citation graph follows ``cryodecon_science.citations`` (edge citing → cited, node ``year`` and
``topic``/``field``).  Everything here respects time: a paper p published in year y_p is described only by
the graph *as of* y_p — papers published in years ≤ y_p and their reference lists, its own reference list
included, but no citation p itself receives.  Yearly resolution: the snapshot of year y holds every paper of
year ≤ y (a same-year citation *to a reference of p* counts, one *to p* never does).

Features (all from the as-of-y_p snapshot; :data:`NODE_FEATURES`, :data:`EDGE_FEATURES`)
-----------------------------------------------------------------------------------------
Node p (published y_p):

* ``topic=<t>``, ``field=<f>`` — one-hot of p's topic and field (vocabulary: the training snapshot's).
* ``log1p_n_references`` — ln(1 + m_p), m_p = length of p's reference list (within the corpus).
* ``has_references`` — 1 if m_p > 0 (the mean over an empty reference list is 0).
* ``topic_share`` — share of p's topic among the papers published in y_p − 2 … y_p (topic activity).
  Absolute counts are left out on purpose: they grow with the corpus, so they identify the year and do
  not transfer from training years to later ones.

Edge p → r (reference r of p, seen from year y_p):

* ``log1p_citations`` — ln(1 + k_r(y_p)), k_r(y) = #papers of year ≤ y citing r (r's in-degree as of y).
* ``log1p_age`` — ln(1 + y_p − y_r).
* ``log1p_citation_rate`` — ln(1 + k_r(y_p) / (1 + y_p − y_r)), citations per year since publication.
* ``log_pagerank`` — ln(N_y · PR_r(y_p)), PageRank of r in the snapshot graph of year y_p (N_y papers,
  damping 0.85; Brin & Page 1998), scaled by N_y so that 1 is the snapshot's average.
* ``same_topic`` — 1 if r shares p's topic.

Model
-----
Two rounds of GraphSAGE message passing with the mean aggregator (Hamilton, Ying & Leskovec 2017, NeurIPS,
"Inductive representation learning on large graphs", Algorithm 1: h_v = σ(W · [h_v ‖ mean_u h_u])) along
the reference edges, the edge features appended to each message (edge-conditioned messages; Gilmer et al.
2017, ICML, "Neural message passing for quantum chemistry"), and a linear skip from the first layer's input
to the output (as in jumping-knowledge networks; Xu et al. 2018, ICML):

    z¹_p = [x_p ‖ Σ_r w_pr [x_r ‖ e_pr]],        h¹_p = ReLU(W¹ z¹_p + b¹)
    z²_p = [h¹_p ‖ Σ_r w_pr [h¹_r ‖ e_pr]],      h²_p = ReLU(W² z²_p + b²)
    ŷ_p = o · h²_p + s · z¹_p + c

with w_pr = 1/m_p (mean over references).  Because messages flow from a cited paper to the citing one,
and h¹_r only uses r's own snapshot (year y_r ≤ y_p), the prediction for p uses nothing after y_p.  The
target is the standardised ln(1 + c₅(p)), c₅ = citations from papers published 0 … 5 years after p
(``citations.citations_within_years``); log targets follow the log-normal citation distribution (Radicchi,
Fortunato & Castellano 2008).  Training is full-batch Adam on the squared error with early stopping: the
last two training publication years are held out as validation, and the weights with the lowest
validation error (checked every 10 steps; stop after 5 checks without improvement) are kept.  A few
thousand labelled papers are easily memorised by even a small network, so early stopping is what makes
it generalise.

Left truncation: papers of the corpus's first years cite a literature that is mostly outside the corpus,
so their reference features (ages, counts) are not comparable to later ones; training skips papers of the
first ``burn_in_years`` (default 10) years.

Temporal split (:func:`evaluate_temporal_split`)
------------------------------------------------
With cutoff year C and window T: training papers have y_p + T ≤ C, and the model is fitted on the snapshot
of year C alone (labels count only citations from papers of year ≤ C); test papers have C < y_p and
y_p + T ≤ the last complete year of the graph.  Baselines on the same test papers, from the same as-of-y_p
information: mean in-degree k_r(y_p) of the references, mean N_y·PR_r(y_p) of the references, the training
mean of the paper's topic, the mean citation rate of the references, and a ridge regression on the node
features with the references' mean features (one hop, no learned messages).

A new structure's forecast (:func:`forecast_new_paper`)
-------------------------------------------------------
Premise: a paper reporting a new structure will cite — and be read alongside — the papers of the known
structures it most resembles, so it is placed in the graph as a hypothetical paper whose reference list is
the papers attached to its nearest library neighbours (similarity-weighted), published in the forecast
year.  The forecast is what the model expects for such a paper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import rankdata

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_WINDOW_YEARS = 5
DEFAULT_TEST_YEARS = 4
DEFAULT_BURN_IN_YEARS = 10
# Early stopping: the last _VALIDATION_YEARS training years validate, checked every _CHECK_EVERY steps,
# stopping after _PATIENCE checks without improvement.
_VALIDATION_YEARS = 2
_CHECK_EVERY = 10
_PATIENCE = 5
# Years of the "recent activity" window of a topic (y − 2 … y).
_ACTIVITY_YEARS = 3
# PageRank damping (Brin & Page 1998) and power-iteration stopping rule.
PAGERANK_DAMPING = 0.85
_PAGERANK_TOL = 1e-10
_PAGERANK_MAX_ITER = 200
_RIDGE_ALPHA = 1.0

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


# --------------------------------------------------------------------------------------------------
# Graph preparation: as-of-year arrays
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class _ImpactGNN(torch.nn.Module):
    """Two GraphSAGE mean-aggregation layers with edge features and a linear skip (module docstring)."""

    def __init__(self, n_node: int, n_edge: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = torch.nn.Linear(2 * n_node + n_edge, hidden)
        self.layer2 = torch.nn.Linear(2 * hidden + n_edge, hidden)
        self.readout = torch.nn.Linear(hidden, 1)
        self.skip = torch.nn.Linear(2 * n_node + n_edge, 1, bias=False)

    @staticmethod
    def _aggregate(messages: torch.Tensor, citing: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
        out = torch.zeros(n, messages.shape[1], dtype=messages.dtype)
        return out.index_add_(0, citing, messages * weight[:, None])

    def forward(
        self,
        x: torch.Tensor,
        edge: torch.Tensor,
        citing: torch.Tensor,
        cited: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        n = x.shape[0]
        z1 = torch.cat([x, self._aggregate(torch.cat([x[cited], edge], dim=1), citing, weight, n)], dim=1)
        h1 = torch.relu(self.layer1(z1))
        z2 = torch.cat([h1, self._aggregate(torch.cat([h1[cited], edge], dim=1), citing, weight, n)], dim=1)
        h2 = torch.relu(self.layer2(z2))
        out: torch.Tensor = (self.readout(h2) + self.skip(z1)).squeeze(1)
        return out


@dataclass(frozen=True, eq=False)
class ImpactModel:
    """A trained ImpactFore GNN with everything needed to apply it to another snapshot.

    Attributes
    ----------
    state_dict : mapping of str to torch.Tensor
        Weights of the network (float32).
    node_mean, node_std, edge_mean, edge_std : tuple of float
        Standardisation of node and edge features (training snapshot statistics).
    label_mean, label_std : float
        Standardisation of the target ln(1 + c_T).
    smearing : float
        Duan's smearing factor mean(exp(residual)) of the training fit in log space (Duan 1983, JASA
        78:605): E[1 + c] ≈ exp(ŷ) · smearing.
    topics, fields : tuple of str
        One-hot vocabularies (the training snapshot's).
    hidden_size : int
    max_epochs, epochs_trained : int
        Step budget and the step whose weights were kept (early stopping).
    learning_rate, weight_decay : float
    burn_in_years : int
        Papers of the corpus's first ``burn_in_years`` years were not trained on (left truncation).
    validation_years : tuple of int
        (first, last) publication year of the early-stopping validation papers.
    validation_loss : float
        Mean squared error (standardised target) of the kept weights on the validation papers.
    window_years : int
        T of the target c_T.
    train_cutoff_year : int
        C: the model saw the graph as of year C only.
    train_years : tuple of int
        (first, last) publication year of the training papers; last + T ≤ C.
    n_train : int
        Training papers (fit + validation).
    typical_n_references : float
        Median reference-list length of the training papers (used for a hypothetical new paper).
    seed : int
    graph_synthetic : bool
        Whether the training graph is SYNTHETIC; forecasts from such a model must be labelled so.
    """

    state_dict: Mapping[str, torch.Tensor]
    node_mean: tuple[float, ...]
    node_std: tuple[float, ...]
    edge_mean: tuple[float, ...]
    edge_std: tuple[float, ...]
    label_mean: float
    label_std: float
    smearing: float
    topics: tuple[str, ...]
    fields: tuple[str, ...]
    hidden_size: int
    max_epochs: int
    epochs_trained: int
    learning_rate: float
    weight_decay: float
    burn_in_years: int
    validation_years: tuple[int, int]
    validation_loss: float
    window_years: int
    train_cutoff_year: int
    train_years: tuple[int, int]
    n_train: int
    typical_n_references: float
    seed: int
    graph_synthetic: bool

    def network(self) -> _ImpactGNN:
        net = _ImpactGNN(len(self.node_mean), len(self.edge_mean), self.hidden_size)
        net.load_state_dict(dict(self.state_dict))
        net.eval()
        return net


def _standardise(values: FloatArray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    scaled = (values - np.asarray(mean)) / np.asarray(std)
    return torch.as_tensor(scaled, dtype=torch.float32)


def _tensors(
    features: _Features, model: ImpactModel
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        _standardise(features.node, model.node_mean, model.node_std),
        _standardise(features.edge, model.edge_mean, model.edge_std),
        torch.as_tensor(features.citing),
        torch.as_tensor(features.cited),
        torch.as_tensor(features.edge_weight, dtype=torch.float32),
    )


def _mean_std(values: FloatArray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if values.shape[0] == 0:
        return tuple([0.0] * values.shape[1]), tuple([1.0] * values.shape[1])
    std = values.std(axis=0)
    return tuple(float(v) for v in values.mean(axis=0)), tuple(float(v) if v > 1e-12 else 1.0 for v in std)


def train_impact_model(
    graph: nx.DiGraph | ImpactGraph,
    train_cutoff_year: int,
    seed: int = 0,
    *,
    window_years: int = DEFAULT_WINDOW_YEARS,
    burn_in_years: int = DEFAULT_BURN_IN_YEARS,
    hidden_size: int = 16,
    max_epochs: int = 300,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-3,
) -> ImpactModel:
    """Fit the ImpactFore GNN on the graph as of ``train_cutoff_year``.

    Training papers: first year + burn-in ≤ y_p and y_p + T ≤ C; target ln(1 + c_T(p)) with c_T counted
    from papers of year ≤ C (all of a training paper's window); inputs: the snapshot of year C only (papers
    of later years are ignored, so a graph truncated at C trains the identical model).  The training papers
    of the last two publication years are the validation set for early stopping (module docstring); full-
    batch Adam (lr, weight decay) on the mean squared error of the standardised target.
    ``torch.manual_seed(seed)`` fixes the initialisation, so the result is deterministic given the
    arguments (on CPU).

    Parameters
    ----------
    graph : networkx.DiGraph or ImpactGraph
        Citation graph (prepare once with :func:`prepare_impact_graph` to reuse).
    train_cutoff_year : int
        C.
    seed : int
        Seed of the weight initialisation.
    window_years : int
        T (5 for 5-year citations).
    burn_in_years : int
        Skip papers of the corpus's first years (left truncation).
    hidden_size, max_epochs, learning_rate, weight_decay
        Network width and optimiser settings.

    Returns
    -------
    ImpactModel

    Raises
    ------
    ValueError
        If fewer than 10 papers are left to fit or to validate on, or T < 0.
    """
    if window_years < 0:
        raise ValueError(f"window_years must be >= 0, got {window_years}")
    arrays = _as_impact_graph(graph)
    n_snapshot = int(np.searchsorted(arrays.years, train_cutoff_year, side="right"))
    snapshot_years = arrays.years[:n_snapshot]
    train = np.flatnonzero(
        (snapshot_years + window_years <= train_cutoff_year) & (snapshot_years >= arrays.first_year + burn_in_years)
    )
    last_train_year = train_cutoff_year - window_years
    validation = train[arrays.years[train] > last_train_year - _VALIDATION_YEARS]
    fit = train[arrays.years[train] <= last_train_year - _VALIDATION_YEARS]
    if len(fit) < 10 or len(validation) < 10:
        raise ValueError(
            f"{len(fit)} papers to fit and {len(validation)} to validate on with a complete {window_years}-year "
            f"window by {train_cutoff_year} after a {burn_in_years}-year burn-in; need 10 of each"
        )
    topics = tuple(sorted({t for t in arrays.topics[:n_snapshot] if t}))
    fields = tuple(sorted({f for f in arrays.fields[:n_snapshot] if f}))
    features = _features(arrays, topics, fields, n_snapshot)
    # Labels from the snapshot's edges only (citing year ≤ C).
    lag = arrays.years[features.citing] - arrays.years[features.cited]
    inside = (lag >= 0) & (lag <= window_years)
    counts = np.bincount(features.cited[inside], minlength=n_snapshot).astype(np.float64)
    assert np.all(arrays.years[train] + window_years <= train_cutoff_year)
    target = np.log1p(counts)
    label_mean = float(target[train].mean())
    label_std = float(target[train].std()) if float(target[train].std()) > 1e-12 else 1.0
    node_mean, node_std = _mean_std(features.node[train])
    edge_mean, edge_std = _mean_std(features.edge)

    torch.manual_seed(seed)
    net = _ImpactGNN(features.node.shape[1], features.edge.shape[1], hidden_size)
    x = _standardise(features.node, node_mean, node_std)
    e = _standardise(features.edge, edge_mean, edge_std)
    citing_t, cited_t = torch.as_tensor(features.citing), torch.as_tensor(features.cited)
    weight_t = torch.as_tensor(features.edge_weight, dtype=torch.float32)
    fit_t, validation_t = torch.as_tensor(fit), torch.as_tensor(validation)
    y = torch.as_tensor((target - label_mean) / label_std, dtype=torch.float32)
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best_loss, best_epoch = math.inf, 0
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for epoch in range(1, max_epochs + 1):
        net.train()
        optimiser.zero_grad()
        loss = torch.mean((net(x, e, citing_t, cited_t, weight_t)[fit_t] - y[fit_t]) ** 2)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        if epoch % _CHECK_EVERY == 0:
            net.eval()
            with torch.no_grad():
                validation_loss = float(
                    torch.mean((net(x, e, citing_t, cited_t, weight_t)[validation_t] - y[validation_t]) ** 2)
                )
            if validation_loss < best_loss:
                best_loss, best_epoch = validation_loss, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            elif epoch - best_epoch >= _CHECK_EVERY * _PATIENCE:
                break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        fitted = net(x, e, citing_t, cited_t, weight_t)[fit_t].double().numpy() * label_std + label_mean
    smearing = float(np.mean(np.exp(target[fit] - fitted)))
    return ImpactModel(
        state_dict=best_state,
        node_mean=node_mean,
        node_std=node_std,
        edge_mean=edge_mean,
        edge_std=edge_std,
        label_mean=label_mean,
        label_std=label_std,
        smearing=smearing,
        topics=topics,
        fields=fields,
        hidden_size=hidden_size,
        max_epochs=max_epochs,
        epochs_trained=best_epoch,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        burn_in_years=burn_in_years,
        validation_years=(int(arrays.years[validation].min()), int(arrays.years[validation].max())),
        validation_loss=best_loss,
        window_years=window_years,
        train_cutoff_year=train_cutoff_year,
        train_years=(int(arrays.years[train].min()), int(arrays.years[train].max())),
        n_train=len(train),
        typical_n_references=float(np.median(np.bincount(features.citing, minlength=n_snapshot)[train])),
        seed=seed,
        graph_synthetic=arrays.synthetic,
    )


def predict_log_citations(model: ImpactModel, graph: nx.DiGraph | ImpactGraph, up_to_year: int) -> FloatArray:
    """ŷ_p = predicted ln(1 + c_T(p)) for every paper of year ≤ ``up_to_year``, each from its own snapshot.

    Returns an array over the first papers of :attr:`ImpactGraph.ids` (those of year ≤ ``up_to_year``).
    """
    arrays = _as_impact_graph(graph)
    n_nodes = int(np.searchsorted(arrays.years, up_to_year, side="right"))
    features = _features(arrays, model.topics, model.fields, n_nodes)
    with torch.no_grad():
        out = model.network()(*_tensors(features, model))
    return np.asarray(out.double().numpy() * model.label_std + model.label_mean, dtype=np.float64)


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
        Forecast citations (≥ 0, finite); normalise with ``scores.impact_normalised``.

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


# --------------------------------------------------------------------------------------------------
# Temporal evaluation
# --------------------------------------------------------------------------------------------------


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
