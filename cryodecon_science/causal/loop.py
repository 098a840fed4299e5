"""The self-evaluation loop: nodes → Wiener restoration → re-estimated spectra → nodes, until converged.

:func:`fit_priors` measures the nodes of one micrograph, then per pass refines the spectral model
(:func:`~.spectral.refine_spectral_model`: signal from the restored image, background from the residual) and
re-measures every node, until every node moves by less than its 1σ.
The loop refines the spectral model, not the CTF geometry (:func:`refined_ctf_fit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import networkx as nx
import torch

from cryodecon_science.causal.attribution import degradation_weights
from cryodecon_science.causal.graph import CAUSE_NODES, NODE_UNITS, CausalPriors, NodeEstimate, build_causal_graph
from cryodecon_science.causal.nodes import measure_nodes
from cryodecon_science.causal.session_prior import SessionPrior, shrink_towards_prior
from cryodecon_science.causal.spectral import ImageLike, micrograph_spectrum, refine_model
from cryodecon_science.optics import MicroscopeSettings
from cryodecon_science.records import CtfFit
from cryodecon_science.spectrum import DEFAULT_MAX_FIT_PX


def _node_link(
    estimates: Mapping[str, tuple[float, float]],
    measured: Mapping[str, tuple[float, float]],
    weights: Mapping[str, float],
) -> dict[str, Any]:
    """``networkx.node_link_data`` of the graph, each cause annotated with its estimate, measurement and weight."""
    graph = build_causal_graph()
    for node in CAUSE_NODES:
        graph.nodes[node]["value"] = float(estimates[node][0])
        graph.nodes[node]["sigma"] = float(estimates[node][1])
        graph.nodes[node]["measured_value"] = float(measured[node][0])
        graph.nodes[node]["measured_sigma"] = float(measured[node][1])
        graph.nodes[node]["weight"] = float(weights[node])
    data: dict[str, Any] = nx.node_link_data(graph, edges="links")
    return data


def fit_priors(
    image: ImageLike,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    dose_e_per_angstrom2: float | None = None,
    drift_total_px: float | None = None,
    session_prior: SessionPrior | None = None,
    max_iterations: int = 10,
    device: torch.device | str = "cpu",
    max_fit_px: int | None = DEFAULT_MAX_FIT_PX,
) -> CausalPriors:
    """Measure the causal nodes of one micrograph and refine them by the self-evaluation loop.

    Iteration 0 measures the nodes (:func:`~.nodes.estimate_nodes`) with the CTF estimator's spectral model.
    Each pass t = 1, 2, … then (i) restores the image with
    :func:`~cryodecon_science.restoration.restore.wiener_signal_estimate` under the current signal/background
    model, (ii) re-estimates the background from the residual (image − restored) and the signal from the
    restored image (:func:`~.spectral.refine_spectral_model`) and (iii) re-measures every node. The loop stops
    when every node changed by less than its current 1σ since the previous pass (``converged=True``), or after
    ``max_iterations`` passes (``converged=False``; it never runs on silently).  The CTF geometry (defocus,
    astigmatism) is the estimator's and stays fixed; the nodes read from the spectrum (B-factor, noise floor,
    ice, motion, heterogeneity) move.
    Deterministic: no random numbers; the same input gives the same output.

    Parameters
    ----------
    image : ndarray or Tensor, shape (ny, nx)
        Micrograph [y, x] in electron counts.
    ctf_fit : CtfFit
        The CTF estimator's result for this micrograph (start of the loop).
    microscope : MicroscopeSettings
        Optics and pixel size (Å/px).
    dose_e_per_angstrom2, drift_total_px : float or None
        Header exposure (e/Å²) and motion-correction drift (px), when known.
    session_prior : SessionPrior or None
        Prior from earlier micrographs of the session: partial pooling of every node
        (:func:`shrink_towards_prior`) and of the ice power in the B-factor fit (:func:`~.envelope.coherence_bfactor`).
    max_iterations : int
        Maximum number of refinement passes (≥ 1).
    device : torch.device or str
        Device for the restorations.
    max_fit_px : int or None
        A frame with a side longer than this is analysed on its central crop
        (:func:`~cryodecon_science.spectrum.central_fit_crop`: 2048² of a 4096² frame): the spectrum, the
        loop and the spectral nodes, each σ about twice the whole frame's; dose and heterogeneity are
        still measured on the whole frame.  The refined spectral model (on rings in 1/Å) applies to the
        whole frame.  None: always the whole frame.

    Returns
    -------
    CausalPriors
        Final estimates with weights (:func:`degradation_weights`), the unshrunk measurements, the value
        of every node at every iteration, the convergence flag, the number of passes, the refined
        spectral model and the annotated graph.
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    spectrum = micrograph_spectrum(image, microscope, ctf_fit, max_fit_px)

    Measurement = tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]], tuple[float, float] | None]

    def measure(fit: CtfFit) -> Measurement:
        raw, ice_power = measure_nodes(spectrum, fit, microscope, dose_e_per_angstrom2, drift_total_px, session_prior)
        return raw, shrink_towards_prior(raw, session_prior), ice_power

    fit = ctf_fit
    measured, current, ice_power = measure(fit)
    history: list[Mapping[str, float]] = [dict({n: current[n][0] for n in CAUSE_NODES})]
    converged = False
    passes = 0
    while passes < max_iterations:
        passes += 1
        fit = replace(fit, spectral_model=refine_model(spectrum, fit, microscope, device))
        new_measured, new, ice_power = measure(fit)
        history.append(dict({n: new[n][0] for n in CAUSE_NODES}))
        converged = all(abs(new[n][0] - current[n][0]) < new[n][1] for n in CAUSE_NODES)
        measured, current = new_measured, new
        if converged:
            break

    weights = degradation_weights(current, fit, microscope, spectrum.shape_px)

    def records(values: Mapping[str, tuple[float, float]]) -> tuple[NodeEstimate, ...]:
        return tuple(
            NodeEstimate(n, float(values[n][0]), NODE_UNITS[n], float(values[n][1]), float(weights[n]))
            for n in CAUSE_NODES
        )

    return CausalPriors(
        estimates=records(current),
        measurements=records(measured),
        iterations=tuple(history),
        converged=converged,
        n_iterations=passes,
        spectral_model=fit.spectral_model,
        graph_node_link=_node_link(current, measured, weights),
        ice_specimen_power=ice_power,
    )


def refined_ctf_fit(ctf_fit: CtfFit, priors: CausalPriors) -> CtfFit:
    """The CTF fit with its spectral model replaced by the one the self-evaluation loop converged to.

    Restoration uses this: the CTF geometry is the estimator's, the signal and noise spectra are the
    causal priors' (the loop never changes the CTF geometry, see :func:`fit_priors`).
    """
    return replace(ctf_fit, spectral_model=priors.spectral_model)
