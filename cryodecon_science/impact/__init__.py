"""ImpactFore as a graph neural network: 5-year citations predicted from what is known at publication.

Everything here respects time: a paper p published in year y_p is described only by the citation graph
*as of* y_p — papers published in years ≤ y_p and their reference lists, its own included, but no citation
p itself receives.  Yearly resolution: the snapshot of year y holds every paper of year ≤ y (a same-year
citation *to a reference of p* counts, one *to p* never does).

* :mod:`~.graph`: the graph as arrays for as-of-year queries (:class:`ImpactGraph`; k_r(y), PageRank).
* :mod:`~.features`: node and edge features of each paper from its own snapshot.
* :mod:`~.model`: the GraphSAGE network with edge-conditioned messages, :class:`ImpactModel`, predictions.
* :mod:`~.training`: fitting on the snapshot of a cutoff year, with early stopping and a burn-in.
* :mod:`~.forecast`: the forecast of a new structure as a hypothetical paper citing what it resembles.
* :mod:`~.evaluation`: the temporal split against degree, PageRank, topic, rate and ridge baselines.
"""

from cryodecon_science.impact.evaluation import DEFAULT_TEST_YEARS, ImpactEvaluation, evaluate_temporal_split, spearman
from cryodecon_science.impact.features import EDGE_FEATURES, NODE_FEATURES, feature_names, paper_features
from cryodecon_science.impact.forecast import forecast_new_paper
from cryodecon_science.impact.graph import (
    DEFAULT_WINDOW_YEARS,
    PAGERANK_DAMPING,
    ImpactGraph,
    five_year_citations,
    prepare_impact_graph,
)
from cryodecon_science.impact.model import ImpactModel, predict_log_citations
from cryodecon_science.impact.training import DEFAULT_BURN_IN_YEARS, train_impact_model

__all__ = [
    "DEFAULT_BURN_IN_YEARS",
    "DEFAULT_TEST_YEARS",
    "DEFAULT_WINDOW_YEARS",
    "EDGE_FEATURES",
    "NODE_FEATURES",
    "PAGERANK_DAMPING",
    "ImpactEvaluation",
    "ImpactGraph",
    "ImpactModel",
    "evaluate_temporal_split",
    "feature_names",
    "five_year_citations",
    "forecast_new_paper",
    "paper_features",
    "predict_log_citations",
    "prepare_impact_graph",
    "spearman",
    "train_impact_model",
]
