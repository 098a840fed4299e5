"""A causal graph of what degrades a micrograph, its nodes measured from the data, refined by a loop.

The graph (:func:`build_causal_graph`) follows the weak-phase image-formation model written in
:mod:`cryodecon_science.optics` and :mod:`cryodecon_science.records`:

    PS(k) = S₀(k) · E²(k) · M²(k) · CTF²(k; Δf, ΔΔf, C_s) + [F + I(k)]

* **dose** sets the scale: the specimen signal S₀ grows as dose² (counts²) and the shot-noise floor as
  dose (Poisson variance = mean counts); it also drives beam-induced motion and radiation damage.
* **detector_noise**: the flat floor F of a counting detector, ≈ the Poisson expectation (mean counts)
  for an ideal one, higher with read-out/excess noise, lower where the noise transfer falls (DQE).
* **ice_thickness**: inelastic scattering in the ice (fraction 1 − exp(−t/λ_in), Beer–Lambert) turns
  elastic, phase-contrast electrons into a smooth low-frequency *intensity* background I(k) that the
  CTF does not modulate (:func:`_ice_index`).
* **defocus, astigmatism, spherical_aberration**: the phase χ(k) and so the Thon-ring positions.
* **coherence_envelope**: the envelope E²(k) = exp(−B k²/2) (partial coherence, damage, drift within
  frames, detector MTF), summarised by a B-factor (Å²) fitted together with the specimen's own
  spectrum, particles' fall-off plus vitreous ice (:func:`_coherence_bfactor`).
* **beam_induced_motion**: linear blur of length d during the exposure, M²(k) = sinc²(k·d).
* **sample_heterogeneity**: variation of the specimen across the micrograph (aggregation, empty
  areas, carbon) that no single spectrum describes.

Edges carry a ``mechanism`` string; effects are the ``observed_power_spectrum`` and ``image_quality``.

Each cause is *measured* by :func:`estimate_nodes` (value, σ) and *weighted* by
:func:`degradation_weights` (its share of the information lost in the 12 Å band).
:func:`fit_priors` runs the self-evaluation loop: nodes → Wiener restoration with the current spectral
model → re-estimation of signal and noise spectra from the restored image and the residual → nodes, until
every node moves by less than 1σ (the proposal's convergence rule).  :class:`SessionPrior` /
:func:`update_session_prior` carry a hierarchical-normal (random-effects) prior across the micrographs of a
session: every node's session mean and between-micrograph spread are learned from the measurements, and
the specimen's ice power, a nuisance of the B-factor fit, is pooled the same way.

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

Weights (:func:`degradation_weights`): each cause's share of the information the micrograph loses.
Every Fourier sample of the band from the model's first valid ring to 12 Å (one band for all
micrographs) is a Gaussian channel of capacity ln(1 + ψ), ψ the particles' spectral SNR; a cause is
charged the information gained by the intervention do(cause = ideal) on the fitted model, the other
nodes held: no envelope, no blur, no ice background or ice phase contrast, an ideal counting detector,
perfect transfer (shared between defocus, astigmatism and C_s by their phase terms), the optimal exposure
of Grant & Grigorieff (2015) where the dose is below it, and the Jensen gap of the specimen's variation
across the micrograph (:func:`degradation_losses`).  The band means, normalised to sum 1, are the
weights.

The loop (:func:`fit_priors`, :func:`refine_spectral_model`) refines the spectral model, not the CTF:
one damped Fisher-scoring step of the Whittle likelihood per pass in the signal amplitude and envelope
(ln S += α + β min(k d_fit, 1)²) and a smooth background correction (ln B += Σ γ_j φ_j(k)), with the scores
computed from the Wiener-restored image and its residual (EM expected powers).  The Cramér–Rao
covariance of these parameters gives the σ of the B-factor, the noise floor and the ice index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import networkx as nx
import numpy as np
import numpy.typing as npt
import scipy.optimize
import torch

from cryodecon_science.optics import (
    MicroscopeSettings,
    amorphous_ice_spectrum_shape,
    frequency_grid_per_angstrom,
)
from cryodecon_science.records import CtfFit, SpectralModel
from cryodecon_science.restore import expected_ctf_squared, wiener_signal_filter
from cryodecon_science.spectrum import DEFAULT_MAX_FIT_PX, central_fit_crop

FloatArray = npt.NDArray[np.float64]
ImageLike = npt.NDArray[np.floating] | torch.Tensor

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

INELASTIC_BAND_ANGSTROM = 100.0
"""Finest period (Å) of the band 0 < k ≤ 1/100 Å where the inelastic intensity background is measured."""
HETEROGENEITY_BAND_ANGSTROM = (50.0, 10.0)
"""Resolution band (Å) of the tiles' signal amplitude for sample_heterogeneity (≥ 2 cycles per tile)."""
FLOOR_BAND_FRACTION_OF_NYQUIST = (0.75, 1.0)
"""Band (fractions of Nyquist) where a re-estimated background is averaged into the noise floor."""
MOTION_ANNULUS_FRACTION = (0.3, 0.7)
"""Annulus (fractions of min(k_fit, Nyquist)) where spectral anisotropy measures motion blur."""
SPHERICAL_ABERRATION_RELATIVE_SIGMA = 0.02
"""Assumed σ of C_s: 2 % of the nominal value (manufacturers quote C_s to a few per cent)."""
SPHERICAL_ABERRATION_SIGMA_FLOOR_MM = 0.01
"""Assumed σ floor of C_s (mm), for C_s-corrected microscopes with C_s ≈ 0."""
DRIFT_SIGMA_FLOOR_PX = 0.25
DRIFT_RELATIVE_SIGMA = 0.1
"""Assumed σ of a drift read from motion correction: √(0.25² + (0.1 d)²) px (sub-pixel trajectories)."""
UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2 = 1000.0
"""σ reported for B when the spectrum cannot separate the envelope from the specimen (:func:`_coherence_bfactor`)."""
ENVELOPE_BAND_ANGSTROM = 8.0
"""Coarsest period (Å) of the band where the specimen is taken to be the ice (:func:`_ice_signal`)."""
MIN_ENVELOPE_RINGS = 6
"""Fewest rings (samples) with signal for an envelope fit or an ice amplitude (4 parameters need > 4)."""
_PARTICLE_FALLOFF_STARTS_ANGSTROM2 = (200.0, 600.0, 2000.0)
PRIOR_CONSISTENCY_Z = 3.0
"""A measurement further than this many predictive σ from the session prior is not shrunk towards it."""
MIN_PRIOR_MICROGRAPHS = 5
"""Fewest measurements of a quantity before the session prior is used for it: the between-micrograph
variance τ² of :meth:`SessionPrior.population` needs a few to be more than a guess."""
ICE_SPECIMEN_POWER = "ice_specimen_power"
"""Key of the session's nuisance measurement η = ln(a/⟨counts⟩²) of the B-factor fit (:func:`_coherence_bfactor`):
the vitreous ice's share of the specimen spectrum at k = 0, relative to the squared mean count (dimensionless,
∝ the ice thickness).  Not a cause node; stored and pooled beside them."""
ICE_SPECIMEN_POWER_UNIT = "ln(1)"
"""Unit recorded for η (a natural log of a dimensionless ratio)."""
ICE_SPECIMEN_POWER_SIGMA_CAP = 10.0
"""Largest σ (ln units) recorded for η: where the rings stop before the ice shows, its σ is this, i.e. no weight."""
UNDETECTED_HETEROGENEITY_SIGMA = 1.0
"""σ reported for sample_heterogeneity when no low-frequency signal is detected in the tiles (value 0)."""
ATTRIBUTION_BAND_ANGSTROM = 12.0
"""Finest period (Å) of the band of the degradation weights (:func:`degradation_losses`): one band for every
micrograph, inside the fit resolution of any micrograph worth keeping (all 252 exposures of the attribution
benchmark fit to 11.6 Å or better; curation thresholds are typically 6–10 Å)."""
CRITICAL_EXPOSURE_COEFFICIENTS = (0.245, -1.665, 2.81)
"""(a, b, c) of the critical exposure N_e(k) = a k^b + c, e/Å² with k in 1/Å (Grant & Grigorieff 2015, 300 kV)."""
OPTIMAL_EXPOSURE_PER_CRITICAL = 2.51
"""The exposure that maximises the SNR at k, in units of the critical exposure (Grant & Grigorieff 2015)."""
CTF_GEOMETRY_NODES: tuple[str, ...] = ("defocus", "astigmatism")
"""Per-micrograph CTF parameters: never shrunk towards the session prior (restoration uses the fit)."""

_DAMPING = 0.1
_MAX_LOG_STEP = math.log(4.0)
_RELATIVE_SIGMA_FLOOR = 1e-9
_MAX_MOTION_SAMPLES = 20000
_N_BISECTION = 24
_SINC2_TABLE_SIZE = 8192


# ----------------------------------------------------------------------------------------- the graph
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


# ------------------------------------------------------------------------------------ records
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
        Share of the information the micrograph loses to degradation (:func:`degradation_weights`); the
        weights of all causes sum to 1.
    """

    node: str
    value: float
    unit: str
    sigma: float
    weight: float


@dataclass(frozen=True)
class Population:
    """A session's population of one quantity under the hierarchical normal model (:class:`SessionPrior`).

    Attributes
    ----------
    mean : float
        μ̂, the random-effects mean of the session's micrographs (the quantity's unit).
    between_variance : float
        τ̂², how much the true value varies from micrograph to micrograph (unit²; Paule–Mandel).
    mean_variance : float
        Var μ̂ = 1/Σ 1/(σ_i² + τ̂²) (unit²).
    n : int
        Number of measurements.
    """

    mean: float
    between_variance: float
    mean_variance: float
    n: int

    @property
    def predictive_variance(self) -> float:
        """τ̂² + Var μ̂: the prior variance of the true value on the session's next micrograph."""
        return self.between_variance + self.mean_variance


@dataclass(frozen=True)
class SessionPrior:
    """Hierarchical normal prior per quantity, learned from the measurements of a session's micrographs.

    Model (random effects; Gelman et al., *Bayesian Data Analysis*, 3rd ed., §5.4–5.5): micrograph i's
    true value θ_i ~ N(μ, τ²), the session's population, and its measurement x_i ~ N(θ_i, σ_i²).  μ and
    τ² are learned from the (x_i, σ_i) (:meth:`population`), so a quantity that is the same on every
    micrograph (C_s, a fixed exposure, the ice of one grid square) gets τ̂ ≈ 0 and pools strongly, and
    one that varies (B-factor, drift) gets a τ̂ as wide as it varies and pools only where a micrograph's
    own σ is wider still.  A fixed-effect (common value) update would instead pull every weakly measured
    micrograph to the session's best-measured ones, hiding the micrographs that differ.

    Attributes
    ----------
    measurements : Mapping[str, tuple[tuple[float, float], ...]]
        key → ((x_i, σ_i), …) in arrival order: the cause nodes and :data:`ICE_SPECIMEN_POWER`, each
        measured by one micrograph alone (:meth:`CausalPriors.session_measurements`).  Stored read-only.
    """

    measurements: Mapping[str, tuple[tuple[float, float], ...]]
    _populations: dict[str, Population] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        frozen: dict[str, tuple[tuple[float, float], ...]] = {}
        for key, values in self.measurements.items():
            pairs = tuple((float(x), float(sigma)) for x, sigma in values)
            for x, sigma in pairs:
                if not (math.isfinite(x) and math.isfinite(sigma) and sigma > 0):
                    raise ValueError(f"measurement of {key!r} needs a finite value and σ > 0, got ({x}, {sigma})")
            frozen[str(key)] = pairs
        object.__setattr__(self, "measurements", MappingProxyType(frozen))

    @property
    def n_micrographs(self) -> int:
        """How many micrographs the prior holds (the most measurements of any one quantity)."""
        return max((len(pairs) for pairs in self.measurements.values()), default=0)

    def population(self, key: str) -> Population | None:
        """μ̂, τ̂² and Var μ̂ of ``key`` (None below :data:`MIN_PRIOR_MICROGRAPHS` measurements).

        τ̂² by the Paule–Mandel estimator (Paule & Mandel 1982, J. Res. Natl. Bur. Stand. 87:377–385; the
        one recommended by Veroniki et al. 2016, Res. Synth. Methods 7:55–79): the τ² ≥ 0 at which the
        generalised Q statistic Σ w*(x − μ̂)² with w* = 1/(σ_i² + τ²) equals its expectation n − 1 (0 when
        Q(0) ≤ n − 1); then μ̂ = Σ w* x/Σ w* and Var μ̂ = 1/Σ w*.  Unlike the one-step DerSimonian–Laird
        moment, it is not dominated by the most precise measurements, which matters here: on a session
        whose B runs 20–140 Å² with σ 1–30 Å², DerSimonian–Laird gives τ̂ = 15 Å², Paule–Mandel ≈ 45 Å².
        Where the σ_i under-state the scatter, the excess shows up as τ̂²: the prior widens instead of
        trusting them.
        """
        population = self.populations().get(key)
        return population if population is not None and population.n >= MIN_PRIOR_MICROGRAPHS else None

    def populations(self) -> dict[str, Population]:
        """Every quantity's population as estimated so far (:meth:`population`, without its minimum count):
        the session prior table."""
        for key, pairs in self.measurements.items():
            if pairs and key not in self._populations:  # computed once per key (the prior is immutable)
                self._populations[key] = self._population(key)
        return dict(self._populations)

    def _population(self, key: str) -> Population:
        pairs = self.measurements[key]
        n = len(pairs)
        x = np.array([p[0] for p in pairs])
        variance = np.array([p[1] for p in pairs]) ** 2

        def excess_q(tau2: float) -> float:
            w = 1.0 / (variance + tau2)
            mean = float(np.sum(w * x) / np.sum(w))
            return float(np.sum(w * (x - mean) ** 2)) - (n - 1)

        tau2 = 0.0
        if excess_q(0.0) > 0.0:
            high = max(float(np.var(x)), float(np.max(variance)), 1e-300)
            while excess_q(high) > 0.0:  # Q decreases in τ² towards Σ(x − x̄)²/τ² → 0
                high *= 4.0
            tau2 = float(scipy.optimize.brentq(excess_q, 0.0, high, xtol=1e-12 * high, rtol=1e-10))
        w_star = 1.0 / (variance + tau2)
        mean = float(np.sum(w_star * x) / np.sum(w_star))
        return Population(mean, tau2, 1.0 / float(np.sum(w_star)), n)


@dataclass(frozen=True)
class CausalPriors:
    """Result of :func:`fit_priors` for one micrograph.

    Attributes
    ----------
    estimates : tuple[NodeEstimate, ...]
        Final estimate of every cause (after shrinkage towards the session prior where applied), with
        degradation weights.
    measurements : tuple[NodeEstimate, ...]
        The same before shrinkage: what this micrograph alone measured (feed these to
        :func:`update_session_prior`, via :meth:`measured_values`, to avoid counting the prior twice).
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
        """What this micrograph adds to the session prior (:func:`update_session_prior`): the cause nodes
        before shrinkage and, where measured, :data:`ICE_SPECIMEN_POWER`."""
        out = self.measured_values()
        if self.ice_specimen_power is not None:
            out[ICE_SPECIMEN_POWER] = self.ice_specimen_power
        return out


# ---------------------------------------------------------------------------- the session prior
def update_session_prior(prior: SessionPrior | None, estimates: Mapping[str, tuple[float, float]]) -> SessionPrior:
    """The session prior with one more micrograph's measurements appended (:class:`SessionPrior`).

    Parameters
    ----------
    prior : SessionPrior or None
        The prior so far (None: nothing measured yet).
    estimates : Mapping[str, tuple[float, float]]
        key → (value, σ > 0) in the quantity's unit, measured by this micrograph alone:
        :meth:`CausalPriors.session_measurements` (its cause nodes before shrinkage and the ice power),
        never the shrunk estimates, which would count the prior twice.  Keys of the prior not in
        ``estimates`` are carried over.
    """
    return session_prior_of([estimates], prior)


def session_prior_of(
    per_micrograph: Iterable[Mapping[str, tuple[float, float]]], prior: SessionPrior | None = None
) -> SessionPrior:
    """:func:`update_session_prior` for many micrographs at once (in order), in time linear in their number."""
    measurements: dict[str, list[tuple[float, float]]] = (
        {key: list(pairs) for key, pairs in prior.measurements.items()} if prior is not None else {}
    )
    for estimates in per_micrograph:
        for key, (value, sigma) in estimates.items():
            measurements.setdefault(key, []).append((float(value), float(sigma)))
    return SessionPrior({key: tuple(pairs) for key, pairs in measurements.items()})


def leave_one_out_priors(
    session: Sequence[tuple[str, Mapping[str, tuple[float, float]]]],
    refit: Iterable[str],
    prior_before: SessionPrior | None = None,
) -> dict[str, SessionPrior]:
    """The priors with which a session's first micrographs are fitted again once the session can pool.

    Each micrograph is fitted with the prior of those before it, so the first
    :data:`MIN_PRIOR_MICROGRAPHS` of a session have nothing to pool with; which exposures those are
    would otherwise decide how well they are measured (on the attribution benchmark's 18-exposure
    sessions, the spread of the B-factor's rank correlation over arrival orders).  Under the
    hierarchical model each micrograph's prior is the population of all the *others* (exchangeability,
    Gelman et al., BDA3 §5.2): for each name in ``refit``, ``prior_before`` plus the session
    measurements (:meth:`CausalPriors.session_measurements`) of every other micrograph of ``session``
    (name, measurements; in order), returned only where it holds at least :data:`MIN_PRIOR_MICROGRAPHS`
    micrographs.
    """
    out: dict[str, SessionPrior] = {}
    for name in refit:
        others = [measured for other, measured in session if other != name]
        prior = session_prior_of(others, prior_before)
        if prior.n_micrographs >= MIN_PRIOR_MICROGRAPHS:
            out[name] = prior
    return out


def _combine_normal(mean0: float, var0: float, value: float, variance: float) -> tuple[float, float]:
    """Posterior (mean, variance) of N(mean0, var0) prior × N(value, variance) likelihood (both variances > 0)."""
    precision = 1.0 / var0 + 1.0 / variance
    return (mean0 / var0 + value / variance) / precision, 1.0 / precision


def _consistent(value: float, sigma: float, population: Population) -> bool:
    """|x − μ̂| ≤ :data:`PRIOR_CONSISTENCY_Z` · √(σ² + τ̂² + Var μ̂), the prior predictive spread of one micrograph."""
    spread = math.sqrt(sigma**2 + population.predictive_variance)
    return abs(value - population.mean) <= PRIOR_CONSISTENCY_Z * spread


def shrink_towards_prior(
    measured: Mapping[str, tuple[float, float]], prior: SessionPrior | None
) -> dict[str, tuple[float, float]]:
    """Each node's posterior under the session's hierarchical prior: partial pooling (posterior mean and σ).

    With the prior predictive N(μ̂, τ̂² + Var μ̂) of :meth:`SessionPrior.population` and this micrograph's
    measurement N(x, σ²), the posterior of its true value is the conjugate combination (Gelman et al.,
    BDA3 §5.5): it moves x towards μ̂ by the fraction σ²/(σ² + τ̂² + Var μ̂), so a precise measurement
    stays where it is and a weak one borrows strength from the session — by as much as the session's
    micrographs agree with each other.  Only where the measurement is *consistent* with the session
    (:func:`_consistent`, :data:`PRIOR_CONSISTENCY_Z` predictive σ): a micrograph that really differs
    (thicker ice on this square, a drifting stage) keeps its own value, the behaviour of a heavy-tailed
    prior in its simplest form (O'Hagan 1979, J. R. Stat. Soc. B 41:358, "On outlier rejection
    phenomena in Bayes inference").  The CTF geometry nodes (:data:`CTF_GEOMETRY_NODES`) are never
    shrunk: they are per-micrograph and the restoration uses the fitted values.  Nodes without a
    population yet (fewer than :data:`MIN_PRIOR_MICROGRAPHS` measurements) pass unchanged.
    """
    out = dict(measured)
    if prior is None:
        return out
    for node, (value, sigma) in measured.items():
        population = None if node in CTF_GEOMETRY_NODES else prior.population(node)
        if population is None or not _consistent(value, sigma, population):
            continue
        mean1, var1 = _combine_normal(population.mean, population.predictive_variance, value, sigma**2)
        out[node] = (mean1, _sigma_floor(math.sqrt(var1), mean1))
    return out


# -------------------------------------------------------------------------- spectral bookkeeping
@dataclass(frozen=True)
class _Spectrum:
    """Fourier-domain view of one micrograph on the rfft grid (all float64, flattened over samples)."""

    shape_px: tuple[int, int]
    mean_counts: float
    power: FloatArray  # |FFT(x − mean)|² / N_pixels per sample
    k_per_angstrom: FloatArray
    theta_rad: FloatArray
    ring: npt.NDArray[np.int64]  # ring index per sample (−1: excluded: DC and corners beyond Nyquist)
    ring_k_per_angstrom: FloatArray
    ring_counts: FloatArray
    ctf2: FloatArray  # CTF²_eff of restore.expected_ctf_squared per sample (fixed while the CTF is)
    tile_px: int
    tile_ctf2: FloatArray  # the same on the rfft grid of one heterogeneity tile, shape (tile, tile//2+1)
    tiles: _Tiles  # the whole frame's heterogeneity tiles (fixed: they do not depend on any model)


@dataclass(frozen=True)
class _Tiles:
    """The whole frame cut into ``tile_px`` tiles (:func:`_tiles`): what :func:`_heterogeneity_and_dose_se`
    needs of them, computed once per micrograph instead of once per pass of the loop.

    ``band_power`` holds each tile's periodogram P = |FFT(w·(x − mean))|²/Σw² (Hann window w) on the
    samples of the heterogeneity band (``band_iy``, ``band_ix`` on the tile's rfft grid, at
    ``band_k_per_angstrom``).
    """

    means: FloatArray  # (n_tiles,)
    frame_mean: float
    frame_size: int
    band_iy: npt.NDArray[np.intp]
    band_ix: npt.NDArray[np.intp]
    band_k_per_angstrom: FloatArray
    band_power: FloatArray  # (n_tiles, n_band)
    window: FloatArray  # (tile, tile)


def _tile_statistics(full: FloatArray, tile: int, microscope: MicroscopeSettings) -> _Tiles:
    """:class:`_Tiles` of a frame; band 50–10 Å (``HETEROGENEITY_BAND_ANGSTROM``), from ≥ 2 cycles per tile."""
    tiles = _tiles(full, tile)
    px = microscope.pixel_size_angstrom
    cycles = 1.0 / (tile * px)
    k_lo = max(1.0 / HETEROGENEITY_BAND_ANGSTROM[0], 2.0 * cycles)
    k_hi = min(max(1.0 / HETEROGENEITY_BAND_ANGSTROM[1], k_lo + 2.0 * cycles), microscope.nyquist_per_angstrom)
    ky, kx = frequency_grid_per_angstrom((tile, tile), px, rfft=True)
    k = np.hypot(ky, kx)
    iy, ix = np.nonzero((k >= k_lo) & (k <= k_hi))
    hann = np.hanning(tile)
    window = np.outer(hann, hann)
    norm = float(np.sum(window**2))
    band_power = np.empty((len(tiles), iy.size))
    for i, t in enumerate(tiles):
        band_power[i] = (np.abs(np.fft.rfft2(window * (t - t.mean()))) ** 2 / norm)[iy, ix]
    return _Tiles(
        means=np.array([float(t.mean()) for t in tiles]),
        frame_mean=float(full.mean()),
        frame_size=int(full.size),
        band_iy=iy,
        band_ix=ix,
        band_k_per_angstrom=k[iy, ix],
        band_power=band_power,
        window=window,
    )


def _spectrum(
    image: ImageLike, microscope: MicroscopeSettings, ctf_fit: CtfFit, max_fit_px: int | None = None
) -> _Spectrum:
    """The periodogram and ring geometry of ``image``, or of its :func:`central_fit_crop` when a side
    exceeds ``max_fit_px``; the heterogeneity tiles (``tile_px``) are sized from the whole frame."""
    full = np.asarray(torch.as_tensor(image).detach().cpu().numpy(), dtype=np.float64)
    if full.ndim != 2:
        raise ValueError(f"image must be 2-D [y, x], got shape {full.shape}")
    if not np.all(np.isfinite(full)):
        raise ValueError("image contains non-finite values")
    tile = _tile_size_px((int(full.shape[0]), int(full.shape[1])))
    x = central_fit_crop(full, max_fit_px)
    ny, nx = x.shape
    mean_counts = float(x.mean())
    image_ft = np.fft.rfft2(x)
    power = np.abs(image_ft) ** 2 / x.size
    power[0, 0] = 0.0  # the transform of x − mean: identical elsewhere
    ky, kx = frequency_grid_per_angstrom((ny, nx), microscope.pixel_size_angstrom, rfft=True)
    k = np.hypot(ky, kx)
    ring_width = 1.0 / (max(ny, nx) * microscope.pixel_size_angstrom)
    n_rings = max(ny, nx) // 2 + 1
    ring = np.rint(k / ring_width).astype(np.int64)
    ring[(ring >= n_rings) | (ring == 0)] = -1
    valid = ring >= 0
    counts = np.bincount(ring[valid], minlength=n_rings).astype(np.float64)
    return _Spectrum(
        shape_px=(ny, nx),
        mean_counts=mean_counts,
        power=power.ravel(),
        k_per_angstrom=k.ravel(),
        theta_rad=np.arctan2(ky, kx).ravel(),
        ring=ring.ravel(),
        ring_k_per_angstrom=np.arange(n_rings, dtype=np.float64) * ring_width,
        ring_counts=counts,
        ctf2=expected_ctf_squared((ny, nx), ctf_fit, microscope).double().numpy().ravel(),
        tile_px=tile,
        tile_ctf2=expected_ctf_squared((tile, tile), ctf_fit, microscope).double().numpy(),
        tiles=_tile_statistics(full, tile, microscope),
    )


def _ring_sum(spectrum: _Spectrum, values: FloatArray) -> FloatArray:
    """Sum of ``values`` per ring; samples outside every ring (ring index −1) land in bin 0, dropped."""
    n = spectrum.ring_k_per_angstrom.size
    return np.bincount(spectrum.ring + 1, weights=values, minlength=n + 1)[1 : n + 1].astype(np.float64)


@dataclass(frozen=True)
class _ModelOnGrid:
    """The spectral model and CTF evaluated at every rfft sample of the micrograph."""

    signal: FloatArray
    background: FloatArray
    ctf2: FloatArray  # CTF²_eff of restore.expected_ctf_squared
    total: FloatArray  # μ = S·CTF² + B
    signal_fraction: FloatArray  # H = S·CTF² / μ


def _model_on_grid(spectrum: _Spectrum, ctf_fit: CtfFit) -> _ModelOnGrid:
    signal, background = ctf_fit.spectral_model.interpolate(spectrum.k_per_angstrom)
    signal = np.maximum(signal, 0.0)
    background = np.maximum(background, 0.0)
    ctf2 = spectrum.ctf2
    modulated = signal * ctf2
    total = modulated + background
    fraction = np.divide(modulated, total, out=np.zeros_like(total), where=total > 0)
    return _ModelOnGrid(signal, background, ctf2, total, fraction)


def _band_indices(model: SpectralModel) -> tuple[float, float]:
    """(k_from, k_to) in 1/Å of the model's valid range (indices inclusive, clipped to the grid)."""
    f = model.frequency_per_angstrom
    lo = int(np.clip(model.valid_from_index, 0, f.size - 1))
    hi = int(np.clip(model.valid_to_index, 0, f.size - 1))
    return float(f[lo]), float(f[max(lo, hi)])


def _sigma_floor(sigma: float, value: float) -> float:
    """σ never below a relative numerical floor, so that 'change < σ' is well defined."""
    return max(float(sigma), _RELATIVE_SIGMA_FLOOR * max(1.0, abs(float(value))))


def ring_average_sinc2(k_per_angstrom: FloatArray, drift_px: float, pixel_size_angstrom: float) -> FloatArray:
    """⟨sinc²(k_px d cos φ)⟩ over the azimuth φ: rotational average of a linear blur of d px (k in 1/Å).

    sinc(x) = sin(πx)/(πx); k_px = k·pixel_size is in cycles/px.  Averaged over 90 azimuths in [0, π).
    More than :data:`_SINC2_TABLE_SIZE` frequencies are interpolated linearly from a table of that many
    evenly spaced |k| (spacing ≤ 1/(8192 Å) up to Nyquist at 1 Å/px: error < 10⁻⁵ for d ≤ 50 px).
    """
    k = np.asarray(k_per_angstrom, dtype=np.float64)
    phi = np.linspace(0.0, math.pi, 90, endpoint=False)

    def average(k_values: FloatArray) -> FloatArray:
        arg = np.outer(k_values * pixel_size_angstrom * drift_px, np.cos(phi))
        return np.asarray(np.mean(np.sinc(arg) ** 2, axis=1), dtype=np.float64)

    if k.size <= _SINC2_TABLE_SIZE:
        return average(k)
    # A whole rfft grid (8 M samples at 4096²): tabulate on a fine 1-D grid of |k| and interpolate.
    table_k = np.linspace(0.0, float(np.max(np.abs(k))), _SINC2_TABLE_SIZE)
    return np.asarray(np.interp(np.abs(k), table_k, average(table_k)), dtype=np.float64)


# ---------------------------------------------------------------------------------- the spectral fit
N_BACKGROUND_KNOTS = 10
"""Background correction ln B(k) ← ln B(k) + Σ_j γ_j φ_j(k): hat functions on knots Nyquist·(j/10)²."""


def _background_basis(k_per_angstrom: FloatArray, nyquist_per_angstrom: float) -> FloatArray:
    """Hat functions φ_j(k), j = 0 … J, on knots κ_j = Nyquist·(j/J)² (dense at low k); shape (J+1, n)."""
    knots = nyquist_per_angstrom * (np.arange(N_BACKGROUND_KNOTS + 1) / N_BACKGROUND_KNOTS) ** 2
    k = np.clip(np.asarray(k_per_angstrom, dtype=np.float64), 0.0, nyquist_per_angstrom)
    basis = np.empty((knots.size, k.size))
    for j in range(knots.size):
        unit = np.zeros(knots.size)
        unit[j] = 1.0
        basis[j] = np.interp(k, knots, unit)
    return basis


@dataclass(frozen=True)
class _Fisher:
    """Whittle-likelihood Fisher information of the refinement parameters at the current model.

    Parameters θ = (α, β, γ_0 … γ_J): ln S(k) += α + β min(k/k_fit, 1)² over the model's valid range
    (beyond the fit resolution the change holds its value at the fit), ln B(k) += Σ γ_j φ_j(k)
    everywhere.  The signal's change is scored on every ring it is applied to: beyond the fit the rings
    constrain S·½ + B (CTF²_eff, the phase unknown), and an update extrapolated there unscored — β (k/k_fit)²
    grows 16-fold to Nyquist at a 4 Å fit — raised the in-band likelihood while the whole spectrum's
    fell and the background drifted to absorb it.  Each periodogram sample P ~ μ·Exp(1),
    μ = S·CTF² + B, contributes g gᵀ with g = ∂ ln μ/∂θ = (H, H x, G φ_j), H = S·CTF²/μ, G = 1 − H.
    ``covariance`` is its inverse: the Cramér–Rao covariance of θ from this micrograph.
    """

    information: FloatArray
    covariance: FloatArray
    ring_signal_features: FloatArray  # (2, n_rings): [1, min(x, 1)] over the valid range, 0 below it
    ring_basis: FloatArray  # (J+1, n_rings)
    ring_hh: FloatArray  # Σ H² per ring


def _signal_band_rings(spectrum: _Spectrum, ctf_fit: CtfFit, stop_at_fit: bool = True) -> npt.NDArray[np.bool_]:
    """Rings with samples from the model's first valid ring up to the fit resolution (``stop_at_fit``,
    capped at the valid range's end) or to Nyquist; never the DC ring."""
    k_from, k_to = _band_indices(ctf_fit.spectral_model)
    k_hi = min(k_to, 1.0 / ctf_fit.fit_resolution_angstrom) if stop_at_fit else math.inf
    k = spectrum.ring_k_per_angstrom
    band: npt.NDArray[np.bool_] = (k >= k_from) & (k <= k_hi) & (spectrum.ring_counts > 0)
    band[0] = False
    return band


def _signal_update_shape(k_per_angstrom: FloatArray, ctf_fit: CtfFit) -> FloatArray:
    """x = min(k/k_fit, 1)² of the loop's signal update ln S += α + β x (:class:`_Fisher`)."""
    return np.minimum((k_per_angstrom * ctf_fit.fit_resolution_angstrom) ** 2, 1.0)


def _fisher(spectrum: _Spectrum, grid: _ModelOnGrid, ctf_fit: CtfFit, microscope: MicroscopeSettings) -> _Fisher:
    h = grid.signal_fraction
    g = 1.0 - h
    hh, hg, gg = (_ring_sum(spectrum, v) for v in (h * h, h * g, g * g))
    k = spectrum.ring_k_per_angstrom
    x = _signal_update_shape(k, ctf_fit)
    in_band = _signal_band_rings(spectrum, ctf_fit, stop_at_fit=False).astype(np.float64)
    fs = np.stack([in_band, in_band * x])
    fb = _background_basis(k, microscope.nyquist_per_angstrom)
    fb[:, 0] = 0.0
    info = np.block(
        [
            [(fs * hh) @ fs.T, (fs * hg) @ fb.T],
            [(fb * hg) @ fs.T, (fb * gg) @ fb.T],
        ]
    )
    # A vanishing eigenvalue means a parameter the data do not constrain; the pseudo-inverse returns
    # infinite-like variance there only through the relative cut-off, so add a tiny ridge instead.
    ridge = 1e-9 * max(float(np.trace(info)), 1e-300) / info.shape[0]
    covariance = np.linalg.inv(info + ridge * np.eye(info.shape[0]))
    return _Fisher(info, covariance, fs, fb, hh)


@dataclass(frozen=True)
class _EnvelopeFit:
    """(B, σ_B) in Å² and the ice term's ln a with its σ, of :func:`_two_component_envelope`."""

    b_factor: float
    sigma_b_factor: float
    ln_ice: float
    sigma_ln_ice: float


def _coherence_bfactor(
    spectrum: _Spectrum,
    fisher: _Fisher,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    drift_px: float | None,
    ice_prior: Population | None = None,
) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """Envelope B (Å²) from a two-component fit of the signal: particles' fall-off plus the ice, × envelope.

    Why two components.  The signal S(k) of the spectral model is the specimen's power spectrum times
    the envelope, S = S_spec(k)·exp(−B k²/2).  A plain regression of ln S on k² measures the specimen
    as much as the microscope: at low resolution S_spec falls steeply (the particles' form factor, the
    Guinier region), at high resolution it is that of the embedding ice, whose shape is known
    (:func:`~cryodecon_science.optics.amorphous_ice_spectrum_shape`, McMullan et al. 2015; a protein's
    own Wilson-regime spectrum is, to first order, as flat).  So over the rings of the signal band
    (valid range up to the fit resolution) the model is

        ln S(k) = ln[p·exp(−B_p k²/2) + a·shape_ice(k)] − B k²/2,

    a Guinier-like particle term (amplitude p, fall-off B_p) plus the ice term (amplitude a), under the
    envelope B — the two regimes of a Guinier plot (Rosenthal & Henderson 2003, J. Mol. Biol.
    333:721–745, read B from the high-resolution one).  Weighted nonlinear least squares
    (``scipy.optimize.least_squares``, three starts in B_p), weights Σ H² per ring (the Fisher
    information on ln S of the ring, :class:`_Fisher`); σ_B from the Gauss–Newton covariance
    (JᵀWJ)⁻¹ times max(1, reduced χ²).  Where the fit resolution stops before the ice term shows, B and
    the specimen trade off and σ_B is large by itself (capped at
    :data:`UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2`, which is also the σ when fewer than
    :data:`MIN_ENVELOPE_RINGS` rings carry signal).  A drift measured independently (``drift_px``) is
    divided out first (⟨sinc²⟩); otherwise the blur is part of B.

    The session's ice.  The ice term's amplitude relative to the squared mean count,
    η = ln(a/⟨counts⟩²), is the ice's projected-potential power per unit contrast, ∝ its thickness
    (uncorrelated slabs add), and does not depend on the envelope.  Where the rings reach the water ring
    (3.7 Å) one micrograph measures it to a few per cent; where they stop at 5–7 Å (high B, thick ice,
    low dose) η and B trade off and B alone is noisy.  So η is a nuisance pooled over the session: its
    population ``ice_prior`` (:meth:`SessionPrior.population` of :data:`ICE_SPECIMEN_POWER`) enters the
    fit as a normal prior on ln a, N(μ̂ + ln⟨counts⟩², τ̂² + Var μ̂), unless this micrograph's own η is
    inconsistent with it (:func:`_consistent`; ice that really differs keeps its own).  On a session of
    constant ice τ̂ is small and pins the ice term; on one whose ice varies τ̂ is wide and the prior
    weak.  The micrograph's own η (fit without the prior, σ capped at
    :data:`ICE_SPECIMEN_POWER_SIGMA_CAP`) is returned for the session (None where no fit ran), so the
    prior is never fed back into itself.

    Returns
    -------
    ((B, σ_B), (η, σ_η) or None)
    """
    model = ctf_fit.spectral_model
    k_r = spectrum.ring_k_per_angstrom
    signal_r, _ = model.interpolate(k_r)
    if drift_px:
        blur = ring_average_sinc2(k_r, drift_px, microscope.pixel_size_angstrom)
        signal_r = signal_r / np.maximum(blur, 1e-6)
    use = _signal_band_rings(spectrum, ctf_fit) & (fisher.ring_hh > 0) & (signal_r > 0)
    if int(use.sum()) < MIN_ENVELOPE_RINGS:
        return (0.0, UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2), None
    k, signal, information = k_r[use], signal_r[use], fisher.ring_hh[use]
    alone = _two_component_envelope(k, signal, information)
    ln_counts2 = 2.0 * math.log(spectrum.mean_counts)
    ln_power = alone.ln_ice - ln_counts2
    # σ floored like every node's: the session prior refuses σ = 0 (a degenerate covariance can give it).
    eta = (ln_power, _sigma_floor(min(alone.sigma_ln_ice, ICE_SPECIMEN_POWER_SIGMA_CAP), ln_power))
    fit = alone
    if ice_prior is not None and _consistent(eta[0], eta[1], ice_prior):
        fit = _two_component_envelope(
            k, signal, information, ln_ice_prior=(ice_prior.mean + ln_counts2, ice_prior.predictive_variance)
        )
    return (fit.b_factor, min(fit.sigma_b_factor, UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2)), eta


def _two_component_envelope(
    k: FloatArray, signal: FloatArray, information: FloatArray, ln_ice_prior: tuple[float, float] | None = None
) -> _EnvelopeFit:
    """ln S = ln[p e^{−B_p k²/2} + a shape_ice(k)] − B k²/2 (:func:`_coherence_bfactor`), optionally with a
    normal prior (mean, variance) on ln a: one more residual (ln a − mean)/√variance in the same χ²."""
    x = k**2
    y = np.log(signal)
    ln_shape = np.log(amorphous_ice_spectrum_shape(k))
    scale = float(information.max())
    root_w = np.sqrt(information / scale)

    def residual(theta: FloatArray) -> FloatArray:
        ln_p, b_particle, ln_a, b_factor = theta
        predicted = np.logaddexp(ln_p - b_particle * x / 2.0, ln_a + ln_shape) - b_factor * x / 2.0
        r = root_w * (predicted - y)
        if ln_ice_prior is not None:
            r = np.append(r, (ln_a - ln_ice_prior[0]) / math.sqrt(ln_ice_prior[1] * scale))
        return np.asarray(r, dtype=np.float64)

    best: Any = None
    for b_particle in _PARTICLE_FALLOFF_STARTS_ANGSTROM2:
        start = np.array([float(y[0]), b_particle, float(y[-1]), 50.0])
        result = scipy.optimize.least_squares(
            residual,
            start,
            bounds=([-np.inf, 0.0, -np.inf, -100.0], [np.inf, 1e5, np.inf, 5000.0]),
            x_scale=np.array([1.0, 100.0, 1.0, 20.0]),
        )
        if best is None or result.cost < best.cost:
            best = result
    dof = max(y.size + (ln_ice_prior is not None) - 4, 1)
    chi2_reduced = 2.0 * float(best.cost) * scale / dof
    jac = np.asarray(best.jac, dtype=np.float64)
    # No pseudo-inverse: where the data cannot tell B from the particles' fall-off (no ice term), the
    # columns of B and B_p are collinear and B's variance must come out huge, not minimum-norm.
    information = jac.T @ jac
    ridge = 1e-12 * max(float(np.trace(information)), 1e-300)
    covariance = np.linalg.inv(information + ridge * np.eye(4)) / scale * max(1.0, chi2_reduced)
    return _EnvelopeFit(
        b_factor=float(best.x[3]),
        sigma_b_factor=math.sqrt(max(float(covariance[3, 3]), 0.0)),
        ln_ice=float(best.x[2]),
        sigma_ln_ice=math.sqrt(max(float(covariance[2, 2]), 0.0)),
    )


def _band_basis_mean(spectrum: _Spectrum, fisher: _Fisher, rings: npt.NDArray[np.bool_]) -> FloatArray:
    """Sample-weighted mean of the background basis over ``rings``, padded to the full parameter vector."""
    counts = spectrum.ring_counts * rings
    mean_basis = (fisher.ring_basis @ counts) / max(float(counts.sum()), 1.0)
    return np.concatenate([np.zeros(2), mean_basis])


def _floor_band(spectrum: _Spectrum, microscope: MicroscopeSettings) -> npt.NDArray[np.bool_]:
    nyquist = microscope.nyquist_per_angstrom
    lo, hi = FLOOR_BAND_FRACTION_OF_NYQUIST
    k = spectrum.ring_k_per_angstrom
    band: npt.NDArray[np.bool_] = (k >= lo * nyquist) & (k <= hi * nyquist) & (spectrum.ring_counts > 0)
    return band


def _detector_index(
    spectrum: _Spectrum, fisher: _Fisher, model: SpectralModel, microscope: MicroscopeSettings
) -> tuple[float, float]:
    """F / mean counts; σ: Cramér–Rao σ of ln B over 0.75–1 Nyquist, and the mean's standard error."""
    mean = spectrum.mean_counts
    index = model.noise_floor_power / mean
    d = _band_basis_mean(spectrum, fisher, _floor_band(spectrum, microscope))
    relative_floor = math.sqrt(max(float(d @ fisher.covariance @ d), 0.0))
    # SE of the mean: the image variance is the mean of the periodogram over all frequencies.
    relative_mean = math.sqrt(float(np.mean(spectrum.power)) / spectrum.power.size) / mean
    return index, index * math.hypot(relative_floor, relative_mean)


def _rfft_multiplicity(shape_px: tuple[int, int]) -> FloatArray:
    """How many samples of the full 2-D spectrum each ``rfft2`` sample stands for (flattened).

    2 for 0 < k_x < Nyquist (the Friedel mate −k has the same power), 1 on the k_x = 0 column and, for
    an even width, on the Nyquist column.
    """
    ny, nx = shape_px
    multiplicity = np.full((ny, nx // 2 + 1), 2.0)
    multiplicity[:, 0] = 1.0
    if nx % 2 == 0:
        multiplicity[:, -1] = 1.0
    return multiplicity.ravel()


def _ice_index(spectrum: _Spectrum, grid: _ModelOnGrid, model: SpectralModel) -> tuple[float, float]:
    """Relative RMS of the low-frequency intensity that no phase contrast explains: σ_I / ⟨counts⟩.

    Physics.  An electron scattered inelastically in the ice (fraction f_in = 1 − exp(−t/λ_in),
    λ_in ≈ 350 nm in vitreous ice at 300 kV; Rice et al. 2018, J. Struct. Biol. 204:38, Beer–Lambert)
    has lost its coherence with the unscattered wave, so it carries no phase contrast; on a detector
    without energy filter it still arrives, as a smooth low-resolution *intensity* image
    f_in · D · (1 + a·g(x)) (D the dose per pixel, g the relative variation of the inelastic image from
    thickness and density changes).  The mean count therefore stays ≈ D (the ratio of mean counts to
    header dose, t = λ_in ln(D/⟨counts⟩), only works for zero-loss-filtered or aperture-limited images),
    but the low-frequency intensity modulation grows as f_in · a ≈ (t/λ_in) · a.  Below
    :data:`INELASTIC_BAND_ANGSTROM` (100 Å) the phase contrast of a weak-phase object is weak
    (CTF ≈ −(w + π λ Δf k²), a few %) and is subtracted with the model: what remains is this amplitude
    background.

    Estimate.  Over the rfft samples 0 < k ≤ 1/100 Å (at least three rings), the excess
    e = P − F − S·CTF²_eff (P = |FFT(x − ⟨x⟩)|²/N, F the white floor, S·CTF² the phase signal of the
    spectral model) summed over the full plane is, by Parseval, the variance σ_I² (counts²) of the
    low-frequency intensity; the index is √max(σ_I², 0)/⟨counts⟩ (dimensionless; ≈ f_in · a, monotone
    in the thickness, not a thickness in nm: a, the relative contrast of the inelastic image, is not
    known from one unfiltered image).  σ: each half-plane periodogram sample is exponential
    (Var P = μ² ≈ P²/2 unbiased from E P² = 2μ²), so Var σ_I² = Σ m² P²/(2 N²) (m the Friedel
    multiplicity); propagated through the square root as σ_v / (⟨counts⟩ (2√v + √σ_v)), which is the
    delta-method σ_v/(2√v) for v ≫ σ_v and √σ_v at v = 0.
    """
    k = spectrum.k_per_angstrom
    band = (spectrum.ring >= 1) & (k <= 1.0 / INELASTIC_BAND_ANGSTROM)
    if int(np.unique(spectrum.ring[band]).size) < 3:  # coarse sampling: use the first three rings
        band = (spectrum.ring >= 1) & (spectrum.ring <= 3)
    floor = model.noise_floor_power
    if not floor > 0:
        raise ValueError("spectral model has a non-positive noise floor")
    n_pixels = float(spectrum.shape_px[0] * spectrum.shape_px[1])
    multiplicity = _rfft_multiplicity(spectrum.shape_px)[band]
    power = spectrum.power[band]
    phase_signal = grid.signal[band] * grid.ctf2[band]
    variance = float(np.sum(multiplicity * (power - floor - phase_signal))) / n_pixels
    sigma_variance = math.sqrt(float(np.sum((multiplicity * power) ** 2)) / 2.0) / n_pixels
    mean = spectrum.mean_counts
    index = math.sqrt(max(variance, 0.0)) / mean
    sigma = sigma_variance / (mean * (2.0 * math.sqrt(max(variance, 0.0)) + math.sqrt(sigma_variance)))
    return index, sigma


# ---------------------------------------------------------------------------------- node estimates
def _tile_size_px(shape_px: tuple[int, int]) -> int:
    side = min(shape_px) // 4
    return max(16, 1 << max(math.floor(math.log2(max(side, 1))), 4))


def _tiles(image: FloatArray, tile: int) -> list[FloatArray]:
    ny, nx = image.shape
    oy, ox = (ny % tile) // 2, (nx % tile) // 2
    return [
        image[oy + i * tile : oy + (i + 1) * tile, ox + j * tile : ox + (j + 1) * tile]
        for i in range(ny // tile)
        for j in range(nx // tile)
    ]


def _windowed_sum_variance(
    coefficients: FloatArray,
    mean_power: FloatArray,
    index_y: npt.NDArray[np.intp],
    index_x: npt.NDArray[np.intp],
    window: FloatArray,
) -> float:
    """Var(Σ a_i P_i) for periodogram samples P_i of one windowed tile with means μ_i.

    For a Gaussian stationary field, Cov(P_i, P_j) ≈ μ_i μ_j (|ρ(k_i − k_j)|² + |ρ(k_i + k_j)|²) with
    ρ = FFT(w²)/Σw² the window's spectral correlation (Percival & Walden, *Spectral Analysis for Physical
    Applications*, 1993, §6.6): neighbouring bins of a Hann-windowed periodogram are correlated.  Exact
    double sum up to 2500 samples; beyond, the white approximation Σ (a μ)² · Σ_Δ |ρ(Δ)|².
    """
    size = window.shape[0]
    rho2 = np.abs(np.fft.fft2(window**2)) ** 2 / float(np.sum(window**2)) ** 2
    weighted = coefficients * mean_power
    if weighted.size <= 2500:
        dy = (index_y[:, None] - index_y[None, :]) % size
        dx = (index_x[:, None] - index_x[None, :]) % size
        sy = (index_y[:, None] + index_y[None, :]) % size
        sx = (index_x[:, None] + index_x[None, :]) % size
        covariance = rho2[dy, dx] + rho2[sy, sx]
        return float(weighted @ covariance @ weighted)
    return float(np.sum(weighted**2)) * float(np.sum(rho2))


def _heterogeneity_and_dose_se(
    spectrum: _Spectrum, ctf_fit: CtfFit, microscope: MicroscopeSettings
) -> tuple[tuple[float, float], float]:
    """((excess CV, σ) of low-frequency signal over tiles, standard error of the mean counts).

    Per tile t (Hann-windowed, mean removed, periodogram P = |FFT(w·x)|²/Σw²; :class:`_Tiles`), the
    low-frequency signal is the least-squares amplitude s_t = Σ c (P − B) / Σ c² over the band
    (c = CTF²_eff, B the model background), with sampling variance v from :func:`_windowed_sum_variance`
    (μ = S·c + B).  The excess CV removes the expected sampling scatter: CV = √max(0, Var_t(s) − v) /
    mean_t(s); σ_CV = SD_t(s) / (mean_t(s) √(2(n−1))) (normal-theory SE of a sample SD).  Band: 50–10 Å,
    starting at ≥ 2 cycles per tile.
    """
    tiles = spectrum.tiles
    n = tiles.means.size
    dose_se = float(np.std(tiles.means, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    dose_se = max(dose_se, math.sqrt(max(tiles.frame_mean, 0.0) / tiles.frame_size))
    if n < 3:
        return (0.0, UNDETECTED_HETEROGENEITY_SIGMA), dose_se
    c = spectrum.tile_ctf2[tiles.band_iy, tiles.band_ix]
    signal, background = ctf_fit.spectral_model.interpolate(tiles.band_k_per_angstrom)
    mu = np.maximum(signal, 0.0) * c + np.maximum(background, 0.0)
    c2 = float(np.sum(c**2))
    if not c2 > 0:
        return (0.0, UNDETECTED_HETEROGENEITY_SIGMA), dose_se
    s = (tiles.band_power - background) @ c / c2
    v = _windowed_sum_variance(c / c2, mu, tiles.band_iy, tiles.band_ix, tiles.window)
    mean_s = float(np.mean(s))
    var_s = float(np.var(s, ddof=1))
    if not mean_s > 0:
        return (0.0, UNDETECTED_HETEROGENEITY_SIGMA), dose_se
    cv = math.sqrt(max(0.0, var_s - v)) / mean_s
    sigma = math.sqrt(var_s / (2.0 * (n - 1))) / mean_s
    return (cv, sigma), dose_se


def _anisotropy_normal_equations(
    c: FloatArray, theta: FloatArray, weights: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Design X = c·(1, cos 2θ, sin 2θ), Xᵀ W and the (ridged) normal matrix Xᵀ W X of
    :func:`_anisotropy_fit`."""
    design = np.stack([c, c * np.cos(2 * theta), c * np.sin(2 * theta)], axis=1)
    xtw = design.T * weights
    normal = xtw @ design
    normal = normal + np.eye(3) * (1e-12 * max(float(np.trace(normal)), 1e-300))
    return design, xtw, normal


def _anisotropy_fit(
    y: FloatArray, c: FloatArray, theta: FloatArray, weights: FloatArray
) -> tuple[FloatArray, FloatArray, float]:
    """WLS of y ≈ c·(a₀ + a₁ cos 2θ + a₂ sin 2θ); returns (a, covariance, reduced χ²)."""
    design, xtw, normal = _anisotropy_normal_equations(c, theta, weights)
    coef = np.asarray(np.linalg.solve(normal, xtw @ y), dtype=np.float64)
    residual = y - design @ coef
    chi2 = float(np.sum(weights * residual**2)) / max(y.size - 3, 1)
    return coef, np.asarray(np.linalg.inv(normal), dtype=np.float64), chi2


def _blur_from_anisotropy(
    spectrum: _Spectrum, grid: _ModelOnGrid, ctf_fit: CtfFit, microscope: MicroscopeSettings
) -> tuple[float, float]:
    """Linear blur length d (px) from the 2θ anisotropy of the background-subtracted spectrum.

    In the annulus 0.3–0.7 of min(k_fit, Nyquist), y = (P − B)/S ≈ CTF²·A(θ) with A = sinc²(k_px d
    cos(θ − θ_m)) for motion along θ_m.  A WLS fit (weights (S/μ)², the inverse variance of y) of
    y ≈ CTF²(a₀ + a₁ cos 2θ + a₂ sin 2θ) gives the anisotropy a = √(a₁² + a₂² − σ₁² − σ₂²)/a₀ (Rice-bias
    corrected); d is the first solution of a(d) = a for the same fit applied to the noiseless model A
    (grid on [0, 4/k_px,max] and bisection).  σ_d = the larger distance to the solutions for a ± σ_a
    (when a + σ_a is out of reach, σ_d = the grid's extent: unbounded above).  Isotropic jitter and other
    anisotropies (detector, preferred orientation) are not separated: the σ is a lower bound.
    """
    k_top = min(1.0 / ctf_fit.fit_resolution_angstrom, microscope.nyquist_per_angstrom)
    lo, hi = MOTION_ANNULUS_FRACTION
    k = spectrum.k_per_angstrom
    annulus = (spectrum.ring >= 0) & (k >= lo * k_top) & (k <= hi * k_top) & (grid.signal > 0)
    if int(annulus.sum()) < 16:
        return 0.0, 1.0 / max(hi * k_top * microscope.pixel_size_angstrom, 1e-9)
    signal = grid.signal[annulus]
    y = (spectrum.power[annulus] - grid.background[annulus]) / signal
    weights = (signal / grid.total[annulus]) ** 2
    c = grid.ctf2[annulus]
    theta = spectrum.theta_rad[annulus]
    coef, cov, chi2 = _anisotropy_fit(y, c, theta, weights)
    cov = cov * max(1.0, chi2)
    k_px_max = hi * k_top * microscope.pixel_size_angstrom
    d_max = 1.0 / k_px_max
    if not coef[0] > 0:
        return 0.0, d_max
    amp2 = float(coef[1] ** 2 + coef[2] ** 2 - cov[1, 1] - cov[2, 2])
    anisotropy = math.sqrt(max(amp2, 0.0)) / float(coef[0])
    sigma_a = math.sqrt(0.5 * float(cov[1, 1] + cov[2, 2])) / float(coef[0])
    # motion direction: where the power is lowest, 90° from the harmonic's maximum
    theta_m = 0.5 * math.atan2(float(coef[2]), float(coef[1])) + 0.5 * math.pi
    stride = max(1, c.size // _MAX_MOTION_SAMPLES)
    c_s, th_s, w_s = c[::stride], theta[::stride], weights[::stride]
    # The same WLS on the noiseless model A(θ; d) for every trial d: its coefficients are projector @ y.
    _, xtw_s, normal_s = _anisotropy_normal_equations(c_s, th_s, w_s)
    projector = np.linalg.solve(normal_s, xtw_s)  # (3, n)
    phase_per_px = (k[annulus] * microscope.pixel_size_angstrom)[::stride] * np.cos(th_s - theta_m)

    def anisotropy_of(blur_px: npt.ArrayLike) -> FloatArray:
        """a(d) for blur lengths d (any shape)."""
        d = np.asarray(blur_px, dtype=np.float64)
        b = (c_s * np.sinc(d[..., None] * phase_per_px) ** 2) @ projector.T
        return np.asarray(np.hypot(b[..., 1], b[..., 2]) / b[..., 0], dtype=np.float64)

    # a(d) rises from 0 and ripples once sinc zeros enter the annulus: take the first crossing on a grid
    # of [0, 4 d_max], refined by bisection; beyond the grid the blur is only bounded below.
    d_grid = np.linspace(0.0, 4.0 * d_max, 65)
    a_grid = anisotropy_of(d_grid)

    def solve(target: float) -> float:
        if target <= 0:
            return 0.0
        above = np.nonzero(a_grid >= target)[0]
        if above.size == 0:
            return float(d_grid[-1])
        j = int(above[0])
        if j == 0:
            return 0.0
        lo_d, hi_d = float(d_grid[j - 1]), float(d_grid[j])
        for _ in range(_N_BISECTION):
            mid = 0.5 * (lo_d + hi_d)
            if float(anisotropy_of(mid)) < target:
                lo_d = mid
            else:
                hi_d = mid
        return 0.5 * (lo_d + hi_d)

    d = solve(anisotropy)
    upper = solve(anisotropy + sigma_a)
    if upper >= d_grid[-1]:  # not bounded above by the data
        upper = d + float(d_grid[-1])
    sigma = max(upper - d, d - solve(anisotropy - sigma_a))
    return d, sigma


def _estimate_raw(
    spectrum: _Spectrum,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    dose_e_per_angstrom2: float | None,
    drift_total_px: float | None,
    session_prior: SessionPrior | None = None,
) -> tuple[dict[str, tuple[float, float]], tuple[float, float] | None]:
    """Every cause node measured by this micrograph (node → (value, σ)) and its own ice power η
    (:data:`ICE_SPECIMEN_POWER`, None where no envelope fit ran); the B-factor fit pools η with the
    session's (:func:`_coherence_bfactor`), nothing else uses ``session_prior``."""
    if not spectrum.mean_counts > 0:
        raise ValueError(
            f"image mean is {spectrum.mean_counts}: node estimates need a micrograph in electron counts (> 0)"
        )
    model = ctf_fit.spectral_model
    grid = _model_on_grid(spectrum, ctf_fit)
    fisher = _fisher(spectrum, grid, ctf_fit, microscope)
    px2 = microscope.pixel_size_angstrom**2
    out: dict[str, tuple[float, float]] = {}

    heterogeneity, mean_se = _heterogeneity_and_dose_se(spectrum, ctf_fit, microscope)
    dose = spectrum.tiles.frame_mean / px2  # the whole frame (the spectrum may be of its central crop)
    dose_var = (mean_se / px2) ** 2
    if dose_e_per_angstrom2 is not None:
        dose_var += (dose - float(dose_e_per_angstrom2)) ** 2
    out["dose"] = (dose, math.sqrt(dose_var))

    if drift_total_px is not None:
        d = abs(float(drift_total_px))
        out["beam_induced_motion"] = (d, math.hypot(DRIFT_SIGMA_FLOOR_PX, DRIFT_RELATIVE_SIGMA * d))
    else:
        out["beam_induced_motion"] = _blur_from_anisotropy(spectrum, grid, ctf_fit, microscope)

    out["ice_thickness"] = _ice_index(spectrum, grid, model)
    out["detector_noise"] = _detector_index(spectrum, fisher, model, microscope)
    sigma_defocus = float(ctf_fit.defocus_sigma_angstrom)
    out["defocus"] = (ctf_fit.ctf.mean_defocus_angstrom, sigma_defocus)
    out["astigmatism"] = (ctf_fit.ctf.astigmatism_angstrom, 2.0 * sigma_defocus)
    cs = microscope.spherical_aberration_mm
    out["spherical_aberration"] = (
        cs,
        max(SPHERICAL_ABERRATION_RELATIVE_SIGMA * abs(cs), SPHERICAL_ABERRATION_SIGMA_FLOOR_MM),
    )
    ice_prior = session_prior.population(ICE_SPECIMEN_POWER) if session_prior is not None else None
    out["coherence_envelope"], ice_power = _coherence_bfactor(
        spectrum, fisher, ctf_fit, microscope, float(drift_total_px) if drift_total_px else None, ice_prior
    )
    out["sample_heterogeneity"] = heterogeneity
    return {node: (float(v), _sigma_floor(s, v)) for node, (v, s) in out.items()}, ice_power


def estimate_nodes(
    image: ImageLike,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    dose_e_per_angstrom2: float | None,
    drift_total_px: float | None,
    session_prior: SessionPrior | None,
) -> dict[str, tuple[float, float]]:
    """Measure every cause node of :func:`build_causal_graph` from one micrograph: node → (value, σ).

    Definitions (module docstring table for units):

    * defocus: (U + V)/2, σ = ``ctf_fit.defocus_sigma_angstrom``.
    * astigmatism: U − V, σ = 2 σ_defocus (independent U, V errors σ_u: mean has σ_u/√2, difference
      √2 σ_u).
    * spherical_aberration: C_s of ``microscope``; σ assumed, 2 % (floor 0.01 mm).
    * coherence_envelope: B (Å²) of a Fisher-weighted two-component fit of ln S(k) over the valid band
      up to the fit resolution, ln[p e^{−B_p k²/2} + a shape_ice(k)] − B k²/2 (particles' Guinier
      fall-off plus ice, under the envelope; :func:`_coherence_bfactor`); σ from its covariance.  With a
      session prior the ice term's amplitude is pooled with the session's (:data:`ICE_SPECIMEN_POWER`).
    * detector_noise: F/⟨counts⟩ with F = ``noise_floor_power``; ≈ 1 for Poisson counting.  σ from the
      number of floor-band samples (each periodogram sample has SD equal to its mean).
    * ice_thickness: relative RMS of the low-frequency (k ≤ 1/100 Å) intensity that the phase-contrast
      model S·CTF² + F does not explain (the inelastic background, ≈ f_in · a, :func:`_ice_index`),
      dimensionless and monotone in the thickness, not a thickness in nm; σ from periodogram statistics.
    * dose: ⟨counts⟩/pixel² (e/Å², gain 1); σ = the tile-to-tile standard error of the mean, combined
      in quadrature with |measured − header| when the header dose is given (a gain/calibration
      discrepancy counts as uncertainty).
    * beam_induced_motion: ``drift_total_px`` when given (σ assumed √(0.25² + (0.1 d)²) px); otherwise
      the blur length from the spectrum's 2θ anisotropy at mid frequencies (large, computed σ).
    * sample_heterogeneity: excess CV of the tiles' low-frequency signal (50–10 Å), σ computed.

    With ``session_prior`` the B-factor fit pools the ice power with the session's and every node is
    partially pooled (:func:`shrink_towards_prior`).

    Parameters
    ----------
    image : ndarray or Tensor, shape (ny, nx)
        Micrograph [y, x] in electron counts (mean > 0).
    ctf_fit : CtfFit
        CTF and spectral model (periodogram units of ``image``).
    microscope : MicroscopeSettings
        Optics and pixel size (Å/px).
    dose_e_per_angstrom2 : float or None
        Total exposure from the header, e/Å², or None.
    drift_total_px : float or None
        Drift (px) from motion correction, or None.
    session_prior : SessionPrior or None
        Session prior for shrinkage, or None.
    """
    spectrum = _spectrum(image, microscope, ctf_fit)
    raw, _ = _estimate_raw(spectrum, ctf_fit, microscope, dose_e_per_angstrom2, drift_total_px, session_prior)
    return shrink_towards_prior(raw, session_prior)


# ------------------------------------------------------------------------------------ the weights
def degradation_weights(
    nodes: Mapping[str, tuple[float, float]],
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    shape_px: tuple[int, int],
) -> dict[str, float]:
    """Each cause's share of the degradation: :func:`degradation_losses` normalised to sum 1.

    Uniform (1/9 each) when no cause loses anything.
    """
    losses = degradation_losses(nodes, ctf_fit, microscope, shape_px)
    total = sum(losses.values())
    if not total > 0:
        return {node: 1.0 / len(CAUSE_NODES) for node in CAUSE_NODES}
    return {node: losses[node] / total for node in CAUSE_NODES}


def degradation_losses(
    nodes: Mapping[str, tuple[float, float]],
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    shape_px: tuple[int, int],
) -> dict[str, float]:
    """Each cause's information loss (nats per Fourier sample) in the attribution band, before normalisation.

    Channel.  Each rfft sample k of an image of ``shape_px`` is a Gaussian channel for the particles'
    signal, of capacity I(k) = ln(1 + ψ(k)) nats (Shannon 1949, Proc. IRE 37:10; the spectral SNR ψ
    is what a Wiener filter works with), with

        ψ = S_p·C / (N_shot + N_excess + N_inel + S_ice·C),

    S = S_p + S_ice the model signal (``ctf_fit.spectral_model``: specimen × envelope × blur), S_ice its
    amorphous-ice part (:func:`_ice_signal`, × the blur; 0 when the fit does not reach beyond 8 Å) —
    the ice's phase contrast is structural noise for the particles — C = CTF²_eff
    (:func:`~cryodecon_science.restore.expected_ctf_squared`: ½ beyond the fit resolution), and the
    background B = F + N_inel split into shot noise N_shot = min(⟨counts⟩, F), the detector's excess
    N_excess = max(F − ⟨counts⟩, 0) and the inelastic/ice background N_inel = max(B − F, 0).

    Loss of a cause.  The information gained by the intervention do(cause = ideal) on this model, every
    other node held at its value: L_c = ⟨ln(1 + ψ_c) − ln(1 + ψ)⟩ over the band, with ψ_c

    * coherence_envelope: B → 0, S_p and S_ice × exp(B k²/2);
    * beam_induced_motion: drift → 0, S_p / ⟨sinc²⟩ and S_ice un-blurred (:func:`ring_average_sinc2`);
    * ice_thickness: no ice, N_inel → 0 and S_ice → 0 (the elastic signal the ice scatters away is not
      charged: one unfiltered image cannot tell it from a weaker specimen, see :func:`_ice_index`);
    * detector_noise: N_excess → 0 (an ideal counting detector);
    * defocus, astigmatism, spherical_aberration: perfect transfer, C → 1, the gain shared per sample
      in proportion to |χ_i| of each term of the phase (π λ Δf̄ k², π λ (U−V)/2 cos 2(θ−θ_a) k²,
      ½ π C_s λ³ k⁴);
    * dose: the exposure raised to the optimal exposure at k where it is below it,
      D → max(D, D_opt(k)) (:func:`optimal_exposure_e_per_angstrom2`; beyond D_opt radiation damage
      destroys more signal than the extra electrons add), with S ∝ D², N_shot ∝ D, N_inel ∝ D² and
      N_excess fixed;
    * sample_heterogeneity: the Jensen gap of a specimen whose signal varies across the micrograph with
      coefficient of variation CV, ln(1 + ψ) − E ln(1 + ψX) ≈ ψ² CV² / (2 (1 + ψ)²) (second order in
      X, E X = 1): information does not care where the particles are at low SNR, it does at high SNR.

    Properties: L_c ≥ 0; at high SNR the envelope's loss tends to B k²/2 and the blur's to −ln⟨sinc²⟩
    (the log-SNR loss), at low SNR to ψ·(gain − 1) — a cause is charged only for signal that exists.

    Band: the model's valid range up to 1/:data:`ATTRIBUTION_BAND_ANGSTROM` (12 Å), the same for every
    micrograph, so that weights compare across a session, and inside the fit of every micrograph worth
    keeping: beyond a micrograph's fit the signal without its envelope, S·exp(B k²/2), is noise
    amplified by a poorly known B.

    Each L is the band mean (all zero when the band is empty); :func:`degradation_weights` divides by
    Σ_c L_c.
    """
    model = ctf_fit.spectral_model
    px = microscope.pixel_size_angstrom
    ky, kx = frequency_grid_per_angstrom(shape_px, px, rfft=True)
    k = np.hypot(ky, kx).ravel()
    theta = np.arctan2(ky, kx).ravel()
    k_from, k_to = _band_indices(model)
    band = (k >= max(k_from, 1e-12)) & (
        k <= min(k_to, 1.0 / ATTRIBUTION_BAND_ANGSTROM, microscope.nyquist_per_angstrom)
    )
    if not band.any():
        return {node: 0.0 for node in CAUSE_NODES}
    k_b, theta_b = k[band], theta[band]

    b_factor = max(nodes["coherence_envelope"][0], 0.0)
    drift = max(nodes["beam_induced_motion"][0], 0.0)
    signal, background = model.interpolate(k_b)
    signal = np.maximum(signal, 0.0)
    blur = ring_average_sinc2(k_b, drift, px) if drift > 0 else np.ones_like(k_b)
    ice = _ice_signal(model, ctf_fit, b_factor, k_b)
    ice_seen = np.minimum(ice * blur, signal)
    particles = signal - ice_seen
    transfer = expected_ctf_squared(shape_px, ctf_fit, microscope).numpy().astype(np.float64).ravel()[band]

    dose = nodes["dose"][0]
    floor = model.noise_floor_power
    shot = min(dose * px**2, floor)
    excess = max(floor - dose * px**2, 0.0)
    inelastic = np.maximum(background - floor, 0.0)

    def information(
        particles: FloatArray = particles,
        ice: FloatArray | float = ice_seen,
        transfer: FloatArray | float = transfer,
        shot: FloatArray | float = shot,
        excess: float = excess,
        inelastic: FloatArray | float = inelastic,
    ) -> FloatArray:
        """ln(1 + ψ) per sample; the defaults are this micrograph's terms."""
        noise = np.maximum(shot + excess + inelastic + ice * transfer, 1e-300)
        return np.asarray(np.log1p(particles * transfer / noise), dtype=np.float64)

    now = information()
    envelope = np.exp(b_factor * k_b**2 / 2.0)
    exposure = np.maximum(optimal_exposure_e_per_angstrom2(k_b) / max(dose, 1e-12), 1.0)
    lam = microscope.wavelength_angstrom
    ctf = ctf_fit.ctf
    phases = np.abs(
        np.stack(
            [
                math.pi * lam * ctf.mean_defocus_angstrom * k_b**2,
                math.pi
                * lam
                * 0.5
                * ctf.astigmatism_angstrom
                * np.cos(2 * (theta_b - math.radians(ctf.astigmatism_angle_deg)))
                * k_b**2,
                0.5 * math.pi * microscope.spherical_aberration_mm * 1e7 * lam**3 * k_b**4,
            ]
        )
    )
    phase_total = phases.sum(axis=0)
    phase_share = np.divide(phases, phase_total, out=np.full_like(phases, 1.0 / 3.0), where=phase_total > 0)
    transfer_gain = information(transfer=1.0) - now
    snr = np.expm1(now)
    cv = max(nodes["sample_heterogeneity"][0], 0.0)
    per_sample = {
        "dose": information(
            particles=particles * exposure**2,
            ice=ice_seen * exposure**2,
            shot=shot * exposure,
            inelastic=inelastic * exposure**2,
        )
        - now,
        "beam_induced_motion": information(particles=particles / np.maximum(blur, 1e-6), ice=ice) - now,
        "ice_thickness": information(ice=0.0, inelastic=0.0) - now,
        "detector_noise": information(excess=0.0) - now,
        "defocus": transfer_gain * phase_share[0],
        "astigmatism": transfer_gain * phase_share[1],
        "spherical_aberration": transfer_gain * phase_share[2],
        "coherence_envelope": information(particles=particles * envelope, ice=ice_seen * envelope) - now,
        "sample_heterogeneity": snr**2 * cv**2 / (2.0 * (1.0 + snr) ** 2),
    }
    return {node: max(float(np.mean(per_sample[node])), 0.0) for node in CAUSE_NODES}


def optimal_exposure_e_per_angstrom2(k_per_angstrom: FloatArray) -> FloatArray:
    """The exposure (e/Å²) that maximises the SNR at spatial frequency k (1/Å): 2.51 × the critical exposure.

    Critical exposure N_e(k) = a k^b + c with a = 0.245, b = −1.665, c = 2.81 (e/Å², k in 1/Å), the
    exposure after which the signal at k has fallen to 1/e by radiation damage, measured at 300 kV on
    rotavirus VP6; the SNR of a frame sum is largest at 2.51 N_e (Grant & Grigorieff 2015, eLife
    4:e06980, eq. 3 and Fig. 2).  At 10 Å ≈ 35 e/Å², at 20 Å ≈ 97 e/Å².
    """
    a, b, c = CRITICAL_EXPOSURE_COEFFICIENTS
    k = np.maximum(np.asarray(k_per_angstrom, dtype=np.float64), 1e-6)
    return np.asarray(OPTIMAL_EXPOSURE_PER_CRITICAL * (a * np.power(k, b) + c), dtype=np.float64)


def _ice_signal(model: SpectralModel, ctf_fit: CtfFit, b_factor: float, k: FloatArray) -> FloatArray:
    """The vitreous ice's part of the model signal at ``k``: a · shape_ice(k) · exp(−B k²/2).

    Beyond 1/:data:`ENVELOPE_BAND_ANGSTROM` (8 Å) the specimen spectrum is the ice's (the particles'
    form factor has fallen off; :func:`_coherence_bfactor`), so where the trusted band (the model's
    valid range up to the fit resolution) holds at least :data:`MIN_ENVELOPE_RINGS` model samples
    there, the ice amplitude is a = median of S(k)·exp(B k²/2)/shape_ice(k) over them.  Otherwise the
    ice cannot be told from the particles and its part is 0.
    """
    f = model.frequency_per_angstrom
    k_from, k_to = _band_indices(model)
    k_top = min(k_to, 1.0 / ctf_fit.fit_resolution_angstrom)
    ice_band = (f >= max(k_from, 1.0 / ENVELOPE_BAND_ANGSTROM)) & (f <= k_top) & (model.signal_power > 0)
    if int(ice_band.sum()) < MIN_ENVELOPE_RINGS:
        return np.zeros_like(k)
    f_i = f[ice_band]
    amplitude = float(
        np.median(model.signal_power[ice_band] * np.exp(b_factor * f_i**2 / 2.0) / amorphous_ice_spectrum_shape(f_i))
    )
    return np.asarray(amplitude * amorphous_ice_spectrum_shape(k) * np.exp(-b_factor * k**2 / 2.0), dtype=np.float64)


# ------------------------------------------------------------------------------ the refinement loop
def _refine_model(
    spectrum: _Spectrum,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    device: torch.device | str,
) -> SpectralModel:
    model = ctf_fit.spectral_model
    grid = _model_on_grid(spectrum, ctf_fit)
    fisher = _fisher(spectrum, grid, ctf_fit, microscope)
    # Ĉ = H_sig·Y (restore.wiener_signal_estimate) and the residual Y − Ĉ.  H_sig is real, so their powers
    # are H_sig²·P and (1 − H_sig)²·P with P = |Y|²/N the periodogram: no complex spectra per pass (the
    # DC sample, where P is set to 0, lies outside every ring and is never summed).
    h_sig = np.asarray(
        wiener_signal_filter(spectrum.shape_px, ctf_fit, microscope, device=device).detach().cpu().numpy(),
        dtype=np.float64,
    ).ravel()
    posterior_var = grid.signal_fraction * grid.background  # Var[CTF·X | Y] = H·B (Gaussian posterior)
    expected_signal = h_sig * h_sig * spectrum.power + posterior_var
    residual_gain = 1.0 - h_sig
    expected_noise = residual_gain * residual_gain * spectrum.power + posterior_var
    modulated = grid.signal * grid.ctf2
    informative = modulated > 1e-12 * np.maximum(grid.background, 1e-300)
    # ρ − 1 where the ratio is defined, 0 elsewhere (np.zeros is a lazily zeroed allocation).
    score_s = np.zeros_like(modulated)
    np.divide(expected_signal, modulated, out=score_s, where=informative)
    np.subtract(score_s, 1.0, out=score_s, where=informative)
    has_background = grid.background > 0
    score_b = np.zeros_like(modulated)
    np.divide(expected_noise, grid.background, out=score_b, where=has_background)
    np.subtract(score_b, 1.0, out=score_b, where=has_background)
    score = np.concatenate(
        [
            fisher.ring_signal_features @ _ring_sum(spectrum, score_s),
            fisher.ring_basis @ _ring_sum(spectrum, score_b),
        ]
    )
    damped = fisher.information + np.diag(_DAMPING * np.diag(fisher.information) + 1e-12)
    step = np.linalg.solve(damped, score)

    ring_k = spectrum.ring_k_per_angstrom
    log_s = step[0] + step[1] * _signal_update_shape(ring_k, ctf_fit)
    log_b = step[2:] @ _background_basis(ring_k, microscope.nyquist_per_angstrom)
    largest = max(float(np.max(np.abs(log_s))), float(np.max(np.abs(log_b))))
    if largest > _MAX_LOG_STEP:  # trust region: no profile changes by more than a factor 4 per pass
        log_s, log_b = log_s * (_MAX_LOG_STEP / largest), log_b * (_MAX_LOG_STEP / largest)
    signal_r, background_r = model.interpolate(ring_k)
    signal_new = np.maximum(signal_r, 0.0) * np.exp(log_s)
    background_new = np.maximum(background_r, 0.0) * np.exp(log_b)
    signal_new[0], background_new[0] = signal_new[1], background_new[1]

    floor_band = _floor_band(spectrum, microscope)
    if floor_band.any():
        counts = spectrum.ring_counts[floor_band]
        floor = float(np.sum(counts * background_new[floor_band]) / np.sum(counts))
    else:
        floor = float(background_new[-1])
    k_from, k_to = _band_indices(model)
    last = ring_k.size - 1
    from_index = int(np.clip(np.searchsorted(ring_k, k_from - 1e-12), 0, last))
    to_index = int(np.clip(np.searchsorted(ring_k, k_to + 1e-12, side="right") - 1, from_index, last))
    return SpectralModel(
        frequency_per_angstrom=ring_k.copy(),
        signal_power=signal_new,
        background_power=background_new,
        noise_floor_power=floor,
        valid_from_index=from_index,
        valid_to_index=to_index,
    )


def refine_spectral_model(
    image: ImageLike, ctf_fit: CtfFit, microscope: MicroscopeSettings, device: torch.device | str = "cpu"
) -> SpectralModel:
    """One pass of the self-evaluation loop's spectrum update: restore, then re-fit S(k) and B(k).

    1. Ĉ = :func:`~cryodecon_science.restore.wiener_signal_estimate` (current model), residual R = Y − Ĉ.
    2. Expected powers under the Gaussian posterior (the E-step of EM; Dempster, Laird & Rubin 1977,
       JRSS B 39:1): E|CTF·X|² = |Ĉ|²/N + H·B from the restored image and E|noise|² = |R|²/N + H·B from
       the residual.  Their ratios to the model, ρ_S = E|CTF·X|²/(CTF²·S) and ρ_B = E|noise|²/B, obey
       ρ_S − 1 = H (P/μ − 1) and ρ_B − 1 = (1 − H)(P/μ − 1): the Whittle-likelihood scores of ln S and
       ln B at each Fourier sample (P the periodogram, μ = S·CTF² + B).
    3. One damped Fisher-scoring (Levenberg–Marquardt, 10 % of the diagonal) step in the parameters of
       :class:`_Fisher`: ln S(k) += α + β min(k·d_fit, 1)² (amplitude and envelope, so Δβ is a change of
       the B-factor, ΔB = −2 Δβ d_fit², up to the fit resolution) and ln B(k) += Σ γ_j φ_j(k) (a smooth
       background correction on 11 hat functions).  Signal and background separate because S is
       modulated by the CTF² rings and B is not (as in CTFFIND4's background fit).  No profile changes by
       more than a factor 4 per pass.

    The result lives on rings of width 1/(max(ny, nx)·pixel) from 0 to Nyquist; its floor is the
    sample-weighted mean background over 0.75–1 Nyquist; its valid band is the input's.
    """
    return _refine_model(_spectrum(image, microscope, ctf_fit), ctf_fit, microscope, device)


def _node_link(
    estimates: Mapping[str, tuple[float, float]],
    measured: Mapping[str, tuple[float, float]],
    weights: Mapping[str, float],
) -> dict[str, Any]:
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

    Iteration 0 measures the nodes (:func:`estimate_nodes`) with the CTF estimator's spectral model.
    Each pass t = 1, 2, … then (i) restores the image with :func:`~cryodecon_science.restore.wiener_signal_estimate`
    under the current signal/background model, (ii) re-estimates the background from the residual
    (image − restored) and the signal from the restored image (:func:`refine_spectral_model`) and (iii)
    re-measures every node.  The loop stops when every node changed by less than its current 1σ since
    the previous pass (``converged=True``), or after ``max_iterations`` passes (``converged=False``; it
    never runs on silently).  The CTF geometry (defocus, astigmatism) is the estimator's and stays
    fixed; the nodes read from the spectrum (B-factor, noise floor, ice, motion, heterogeneity) move.
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
        (:func:`shrink_towards_prior`) and of the ice power in the B-factor fit (:func:`_coherence_bfactor`).
    max_iterations : int
        Maximum number of refinement passes (≥ 1).
    device : torch.device or str
        Device for the restorations.
    max_fit_px : int or None
        A frame with a side longer than this is analysed on its central crop
        (:func:`~cryodecon_science.spectrum.central_fit_crop`: 2048² of a 4096² frame): the spectrum, the
        loop and the spectral nodes, each σ about twice the whole frame's; dose and heterogeneity are
        still measured on the whole frame.  The refined spectral model (on rings in 1/Å) applies to the
        whole frame.  On 4096² simulated frames this cut the loop 4–7× (27.6 → 4.1 s and 16.6 → 4.0 s on
        one core) at equal or better Wiener PSNR on the whole frame.  None: always the whole frame.

    Returns
    -------
    CausalPriors
        Final estimates with weights (:func:`degradation_weights`), the unshrunk measurements, the value
        of every node at every iteration, the convergence flag, the number of passes, the refined
        spectral model and the annotated graph.
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    spectrum = _spectrum(image, microscope, ctf_fit, max_fit_px)

    Measurement = tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]], tuple[float, float] | None]

    def measure(fit: CtfFit) -> Measurement:
        raw, ice_power = _estimate_raw(spectrum, fit, microscope, dose_e_per_angstrom2, drift_total_px, session_prior)
        return raw, shrink_towards_prior(raw, session_prior), ice_power

    fit = ctf_fit
    measured, current, ice_power = measure(fit)
    history: list[Mapping[str, float]] = [dict({n: current[n][0] for n in CAUSE_NODES})]
    converged = False
    passes = 0
    while passes < max_iterations:
        passes += 1
        fit = replace(fit, spectral_model=_refine_model(spectrum, fit, microscope, device))
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
