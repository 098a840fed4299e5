"""The ImpactFore network: GraphSAGE message passing along the reference edges, and its trained form.

Two rounds of GraphSAGE message passing with the mean aggregator (Hamilton, Ying & Leskovec 2017, NeurIPS,
"Inductive representation learning on large graphs", Algorithm 1: h_v = σ(W · [h_v ‖ mean_u h_u])) along
the reference edges, the edge features appended to each message (edge-conditioned messages; Gilmer et al.
2017, ICML, "Neural message passing for quantum chemistry"), and a linear skip from the first layer's input
to the output (as in jumping-knowledge networks; Xu et al. 2018, ICML):

    z¹_p = [x_p ‖ Σ_r w_pr [x_r ‖ e_pr]],        h¹_p = ReLU(W¹ z¹_p + b¹)
    z²_p = [h¹_p ‖ Σ_r w_pr [h¹_r ‖ e_pr]],      h²_p = ReLU(W² z²_p + b²)
    ŷ_p = o · h²_p + s · z¹_p + c

with w_pr = 1/m_p (mean over references).  Because messages flow from a cited paper to the citing one,
and h¹_r only uses r's own snapshot (year y_r ≤ y_p), the prediction for p uses nothing after y_p.  ŷ is
the standardised ln(1 + c_T(p)) (:mod:`~cryodecon_science.impact.training`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.impact.features import _Features, _features
from cryodecon_science.impact.graph import ImpactGraph, _as_impact_graph

FloatArray = npt.NDArray[np.float64]


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
