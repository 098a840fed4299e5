"""A causal graph of what degrades a micrograph, its nodes measured from the data, refined by a loop.

Each cause of the graph is *measured* from the micrograph (value, σ), *weighted* by its share of the
information the micrograph loses, and refined by a self-evaluation loop that re-estimates the spectral
model from the Wiener-restored image and its residual; a hierarchical session prior pools the
measurements of a session's micrographs.

Modules, in dependency order (each imports only from those above it):

* :mod:`~.graph`: the DAG (:func:`build_causal_graph`), node names and units, and
  the records :class:`NodeEstimate` and :class:`CausalPriors`.
* :mod:`~.session_prior`: :class:`SessionPrior` (random-effects populations),
  :func:`update_session_prior`, :func:`session_prior_of`, :func:`leave_one_out_priors`,
  :func:`shrink_towards_prior`.
* :mod:`~.spectral`: the micrograph's spectrum, the spectral model on it, its Fisher
  information and the loop's update :func:`refine_spectral_model`.
* :mod:`~.envelope`: the coherence envelope's two-component B-factor fit.
* :mod:`~.nodes`: :func:`estimate_nodes`, every cause measured from one micrograph.
* :mod:`~.attribution`: :func:`degradation_losses` and :func:`degradation_weights`.
* :mod:`~.loop`: :func:`fit_priors`, the self-evaluation loop, and
  :func:`refined_ctf_fit`.
* :mod:`~.session_fit`: :func:`fit_session`, a session's micrographs fitted in arrival order with the
  prior of those before them, the first ones refitted with the prior of all the others (:class:`SessionFit`).
"""

from cryodecon_science.causal.attribution import (
    ATTRIBUTION_BAND_ANGSTROM,
    degradation_losses,
    degradation_weights,
    optimal_exposure_e_per_angstrom2,
)
from cryodecon_science.causal.envelope import UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2
from cryodecon_science.causal.graph import (
    CAUSE_NODES,
    EFFECT_NODES,
    ICE_SPECIMEN_POWER,
    ICE_SPECIMEN_POWER_UNIT,
    NODE_UNITS,
    CausalPriors,
    NodeEstimate,
    build_causal_graph,
)
from cryodecon_science.causal.loop import fit_priors, refined_ctf_fit
from cryodecon_science.causal.nodes import estimate_nodes
from cryodecon_science.causal.session_fit import REFIT_RECOVERABLE_ERRORS, FitWithPrior, SessionFit, fit_session
from cryodecon_science.causal.session_prior import (
    MIN_PRIOR_MICROGRAPHS,
    PRIOR_CONSISTENCY_Z,
    Population,
    SessionPrior,
    leave_one_out_priors,
    session_prior_of,
    shrink_towards_prior,
    update_session_prior,
)
from cryodecon_science.causal.spectral import refine_spectral_model, ring_average_sinc2

__all__ = [
    "ATTRIBUTION_BAND_ANGSTROM",
    "CAUSE_NODES",
    "EFFECT_NODES",
    "ICE_SPECIMEN_POWER",
    "ICE_SPECIMEN_POWER_UNIT",
    "MIN_PRIOR_MICROGRAPHS",
    "NODE_UNITS",
    "PRIOR_CONSISTENCY_Z",
    "REFIT_RECOVERABLE_ERRORS",
    "UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2",
    "CausalPriors",
    "FitWithPrior",
    "NodeEstimate",
    "Population",
    "SessionFit",
    "SessionPrior",
    "build_causal_graph",
    "degradation_losses",
    "degradation_weights",
    "estimate_nodes",
    "fit_priors",
    "fit_session",
    "leave_one_out_priors",
    "optimal_exposure_e_per_angstrom2",
    "refine_spectral_model",
    "refined_ctf_fit",
    "ring_average_sinc2",
    "session_prior_of",
    "shrink_towards_prior",
    "update_session_prior",
]
