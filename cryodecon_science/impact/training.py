"""Training the ImpactFore GNN on the citation graph as of a cutoff year, with early stopping.

The target is the standardised ln(1 + c_T(p)), c_T = citations from papers published 0 … T years after p
(T = 5; ``citations.citations_within_years``); log targets follow the log-normal citation distribution
(Radicchi, Fortunato & Castellano 2008, PNAS 105:17268).  Full-batch Adam on the squared error with early
stopping: the last two training publication years are held out as validation, and the weights with the
lowest validation error (checked every 10 steps; stop after 5 checks without improvement) are kept.  A few
thousand labelled papers are easily memorised by even a small network, so early stopping is what makes it
generalise.

Left truncation: papers of the corpus's first years cite a literature that is mostly outside the corpus,
so their reference features (ages, counts) are not comparable to later ones; training skips papers of the
first ``burn_in_years`` (default 10) years.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.impact.features import _features
from cryodecon_science.impact.graph import DEFAULT_WINDOW_YEARS, ImpactGraph, _as_impact_graph
from cryodecon_science.impact.model import ImpactModel, _ImpactGNN, _standardise

FloatArray = npt.NDArray[np.float64]

DEFAULT_BURN_IN_YEARS = 10
# Early stopping: the last _VALIDATION_YEARS training years validate, checked every _CHECK_EVERY steps,
# stopping after _PATIENCE checks without improvement.
_VALIDATION_YEARS = 2
_CHECK_EVERY = 10
_PATIENCE = 5


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
