"""The causal graph of what degrades a micrograph, its node vocabulary and the records of a fit.

The graph (:func:`build_causal_graph`) follows the weak-phase image-formation model written in
:mod:`cryodecon_science.optics` and :mod:`cryodecon_science.records`:

    PS(k) = S₀(k) · E²(k) · M²(k) · CTF²(k; Δf, ΔΔf, C_s) + [F + I(k)]

* **dose** sets the scale: the specimen signal S₀ grows as dose² (counts²) and the shot-noise floor as
  dose (Poisson variance = mean counts); it also drives beam-induced motion and radiation damage.
* **detector_noise**: the flat floor F of a counting detector, ≈ the Poisson expectation (mean counts)
  for an ideal one, higher with read-out/excess noise, lower where the noise transfer falls (DQE).
* **ice_thickness**: inelastic scattering in the ice (fraction 1 − exp(−t/λ_in), Beer–Lambert) turns
  elastic, phase-contrast electrons into a smooth low-frequency *intensity* background I(k) that the
  CTF does not modulate (:func:`~.nodes._ice_index`).
* **defocus, astigmatism, spherical_aberration**: the phase χ(k) and so the Thon-ring positions.
* **coherence_envelope**: the envelope E²(k) = exp(−B k²/2) (partial coherence, damage, drift within
  frames, detector MTF), summarised by a B-factor (Å²) fitted together with the specimen's own
  spectrum, particles' fall-off plus vitreous ice (:mod:`cryodecon_science.causal.envelope`).
* **beam_induced_motion**: linear blur of length d during the exposure, M²(k) = sinc²(k·d).
* **sample_heterogeneity**: variation of the specimen across the micrograph (aggregation, empty
  areas, carbon) that no single spectrum describes.

Edges carry a ``mechanism`` string; effects are the ``observed_power_spectrum`` and ``image_quality``.

Node definitions and units (all measured on the full micrograph, image in electron counts):

=====================  ======  ==================================================================
node                   unit    definition
=====================  ======  ==================================================================
dose                   e/Å²    mean counts per pixel / pixel_size² (counting detector, gain 1)
beam_induced_motion    px      linear blur length left in the image
ice_thickness          1       RMS of the non-phase-contrast intensity at k ≤ 1/100 Å / mean counts
detector_noise         1       F / mean counts (1 for an ideal counting detector with Poisson noise)
defocus                Å       mean defocus (U + V)/2 of the CTF fit
astigmatism            Å       U − V of the CTF fit
spherical_aberration   mm      C_s from the microscope settings
coherence_envelope     Å²      B of the signal envelope exp(−B k²/2) over particle + ice spectra
sample_heterogeneity   1       excess coefficient of variation over tiles of the 50–10 Å signal
=====================  ======  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

from cryodecon_science.records import SpectralModel

CAUSE_NODES: tuple[str, ...] = (
    "dose",
    "beam_induced_motion",
    "ice_thickness",
    "detector_noise",
    "defocus",
    "astigmatism",
    "spherical_aberration",
    "coherence_envelope",
    "sample_heterogeneity",
)
EFFECT_NODES: tuple[str, ...] = ("observed_power_spectrum", "image_quality")

NODE_UNITS: Mapping[str, str] = MappingProxyType(
    {
        "dose": "e/Å²",
        "beam_induced_motion": "px",
        "ice_thickness": "1",
        "detector_noise": "1",
        "defocus": "Å",
        "astigmatism": "Å",
        "spherical_aberration": "mm",
        "coherence_envelope": "Å²",
        "sample_heterogeneity": "1",
        "observed_power_spectrum": "counts²/px (periodogram)",
        "image_quality": "1",
    }
)

ICE_SPECIMEN_POWER = "ice_specimen_power"
"""Key of the session's nuisance measurement η = ln(a/⟨counts⟩²) of the B-factor fit
(:func:`~.envelope.coherence_bfactor`): the vitreous ice's share of the specimen spectrum at k = 0, relative to the
squared mean count (dimensionless, ∝ the ice thickness).  Not a cause node; stored and pooled beside them."""
ICE_SPECIMEN_POWER_UNIT = "ln(1)"
"""Unit recorded for η (a natural log of a dimensionless ratio)."""

_RELATIVE_SIGMA_FLOOR = 1e-9


def build_causal_graph() -> nx.DiGraph:
    """The causal DAG of image degradation (module docstring), as a ``networkx.DiGraph``.

    Nodes: the nine causes in :data:`CAUSE_NODES` (attribute ``kind='cause'``) and the two effects in
    :data:`EFFECT_NODES` (``kind='effect'``); each node has ``unit`` and ``description``.  Edges follow
    the image-formation model, each with a ``mechanism``:

    * dose → detector_noise (shot noise sets the Poisson floor the detector index is referred to),
      dose → beam_induced_motion (motion grows with accumulated exposure; Brilot et al. 2012, JSB 177:630),
      dose → coherence_envelope (radiation damage fades high resolution; Grant & Grigorieff 2015),
      dose → observed_power_spectrum (signal ∝ dose², floor ∝ dose);
    * ice_thickness → observed_power_spectrum (inelastic low-frequency background),
      ice_thickness → coherence_envelope (energy loss → chromatic blur);
    * detector_noise → observed_power_spectrum (flat noise floor);
    * defocus → coherence_envelope (partial spatial coherence envelope widens with defocus;
      Frank 1973), defocus, astigmatism, spherical_aberration → observed_power_spectrum (Thon rings);
    * coherence_envelope, beam_induced_motion → observed_power_spectrum (envelope, sinc² blur);
    * observed_power_spectrum → image_quality (spectral SNR in the trusted band);
      sample_heterogeneity → image_quality (variability no spectrum describes).
    """
    graph = nx.DiGraph(name="cryodecon image degradation")
    descriptions = {
        "dose": "Electron exposure: sets signal (∝ dose²) and shot noise (∝ dose).",
        "beam_induced_motion": "Specimen/beam-induced movement during the exposure; blurs as sinc²(k·d).",
        "ice_thickness": "Ice thickness via inelastic scattering: smooth low-frequency background.",
        "detector_noise": "Flat noise floor relative to the Poisson expectation of a counting detector.",
        "defocus": "Mean defocus (U+V)/2: Thon-ring spacing, χ ∝ λ Δf k².",
        "astigmatism": "Defocus difference U−V: elliptical Thon rings.",
        "spherical_aberration": "C_s: k⁴ phase term compressing high-frequency rings.",
        "coherence_envelope": "Apparent B-factor of the signal envelope exp(−B k²/2).",
        "sample_heterogeneity": "Spread of low-frequency signal power across the micrograph.",
        "observed_power_spectrum": "PS(k) = S·CTF² + background, periodogram units.",
        "image_quality": "Restorability: spectral SNR in the trusted band and specimen uniformity.",
    }
    for node in CAUSE_NODES:
        graph.add_node(node, kind="cause", unit=NODE_UNITS[node], description=descriptions[node])
    for node in EFFECT_NODES:
        graph.add_node(node, kind="effect", unit=NODE_UNITS[node], description=descriptions[node])
    edges = [
        ("dose", "detector_noise", "shot noise: Poisson variance = mean counts sets the floor's reference"),
        ("dose", "beam_induced_motion", "beam-induced motion accumulates with exposure (Brilot 2012)"),
        (
            "dose",
            "coherence_envelope",
            "radiation damage fades high-frequency signal (Grant & Grigorieff 2015)",
        ),
        ("dose", "observed_power_spectrum", "signal power ∝ dose², shot-noise floor ∝ dose"),
        ("ice_thickness", "observed_power_spectrum", "inelastic scattering adds low-frequency background"),
        ("ice_thickness", "coherence_envelope", "energy loss in thick ice adds chromatic blur"),
        ("detector_noise", "observed_power_spectrum", "flat noise floor F (DQE)"),
        ("defocus", "observed_power_spectrum", "Thon-ring positions, χ = π λ Δf k²"),
        ("defocus", "coherence_envelope", "spatial-coherence envelope narrows with defocus (Frank 1973)"),
        ("astigmatism", "observed_power_spectrum", "elliptical Thon rings, Δf(θ)"),
        ("spherical_aberration", "observed_power_spectrum", "χ term −½ π C_s λ³ k⁴"),
        ("coherence_envelope", "observed_power_spectrum", "signal envelope exp(−B k²/2)"),
        ("beam_induced_motion", "observed_power_spectrum", "linear blur: signal × sinc²(k·d)"),
        ("observed_power_spectrum", "image_quality", "spectral SNR in the trusted band bounds restoration"),
        ("sample_heterogeneity", "image_quality", "specimen variability not described by one spectrum"),
    ]
    for source, target, mechanism in edges:
        graph.add_edge(source, target, mechanism=mechanism)
    return graph


def sigma_floor(sigma: float, value: float) -> float:
    """σ never below a relative numerical floor, so that 'change < σ' is well defined."""
    return max(float(sigma), _RELATIVE_SIGMA_FLOOR * max(1.0, abs(float(value))))


@dataclass(frozen=True)
class NodeEstimate:
    """One cause's measured value.

    Attributes
    ----------
    node : str
        Node name (one of :data:`CAUSE_NODES`).
    value : float
        Estimate, in ``unit``.
    unit : str
        Unit of ``value`` and ``sigma`` ("1" = dimensionless).
    sigma : float
        One-standard-deviation uncertainty, same unit.
    weight : float
        Share of the information the micrograph loses to degradation (:func:`~.attribution.degradation_weights`); the
        weights of all causes sum to 1.
    """

    node: str
    value: float
    unit: str
    sigma: float
    weight: float


@dataclass(frozen=True)
class CausalPriors:
    """Result of :func:`~.loop.fit_priors` for one micrograph.

    Attributes
    ----------
    estimates : tuple[NodeEstimate, ...]
        Final estimate of every cause (after shrinkage towards the session prior where applied), with
        degradation weights.
    measurements : tuple[NodeEstimate, ...]
        The same before shrinkage: what this micrograph alone measured (feed these to
        :func:`~.session_prior.update_session_prior`, via :meth:`measured_values`, to avoid counting the prior twice).
    iterations : tuple[Mapping[str, float], ...]
        node → value at iteration 0 (the input spectral model) and after each refinement pass.
    converged : bool
        True when the last pass moved every node by less than its σ.
    n_iterations : int
        Number of refinement passes run (``len(iterations) - 1``).
    spectral_model : SpectralModel
        The spectral model after the last pass; ``dataclasses.replace(ctf_fit, spectral_model=...)``
        restores with it.
    graph_node_link : dict
        ``networkx.node_link_data`` (edges under "links") of :func:`build_causal_graph` with ``value``,
        ``sigma`` and ``weight`` set on the cause nodes; JSON-ready (plain str/float/int/bool/None).
    ice_specimen_power : tuple[float, float] or None
        This micrograph's own ice power η = ln(a/⟨counts⟩²) with σ (:data:`ICE_SPECIMEN_POWER`, measured
        without the session's), after the last pass; None where the envelope could not be fitted.
    """

    estimates: tuple[NodeEstimate, ...]
    measurements: tuple[NodeEstimate, ...]
    iterations: tuple[Mapping[str, float], ...]
    converged: bool
    n_iterations: int
    spectral_model: SpectralModel = field(compare=False)
    graph_node_link: dict[str, Any] = field(compare=False)
    ice_specimen_power: tuple[float, float] | None = None

    def values(self) -> dict[str, tuple[float, float]]:
        """node → (value, σ) of the final estimates."""
        return {e.node: (e.value, e.sigma) for e in self.estimates}

    def measured_values(self) -> dict[str, tuple[float, float]]:
        """node → (value, σ) before shrinkage."""
        return {e.node: (e.value, e.sigma) for e in self.measurements}

    def session_measurements(self) -> dict[str, tuple[float, float]]:
        """What this micrograph adds to the session prior (:func:`~.session_prior.update_session_prior`): the
        cause nodes before shrinkage and, where measured, :data:`ICE_SPECIMEN_POWER`."""
        out = self.measured_values()
        if self.ice_specimen_power is not None:
            out[ICE_SPECIMEN_POWER] = self.ice_specimen_power
        return out
