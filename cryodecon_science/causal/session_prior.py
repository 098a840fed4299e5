"""The session prior: a hierarchical-normal (random-effects) prior across the micrographs of a session.

Every quantity's session mean and between-micrograph spread are learned from the measurements
(:class:`SessionPrior`, :func:`update_session_prior`, :func:`session_prior_of`): the cause nodes and the
specimen's ice power, a nuisance of the B-factor fit (:data:`~.graph.ICE_SPECIMEN_POWER`).
Each micrograph's measurement is then partially pooled with the session's population
(:func:`shrink_towards_prior`; Gelman et al., *Bayesian Data Analysis*, 3rd ed., §5.4–5.5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import scipy.optimize

from cryodecon_science.causal.graph import sigma_floor

PRIOR_CONSISTENCY_Z = 3.0
"""A measurement further than this many predictive σ from the session prior is not shrunk towards it."""
MIN_PRIOR_MICROGRAPHS = 5
"""Fewest measurements of a quantity before the session prior is used for it: the between-micrograph
variance τ² of :meth:`SessionPrior.population` needs a few to be more than a guess."""
CTF_GEOMETRY_NODES: tuple[str, ...] = ("defocus", "astigmatism")
"""Per-micrograph CTF parameters: never shrunk towards the session prior (restoration uses the fit)."""


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
        key → ((x_i, σ_i), …) in arrival order: the cause nodes and :data:`~.graph.ICE_SPECIMEN_POWER`, each
        measured by one micrograph alone (:meth:`~.graph.CausalPriors.session_measurements`).  Stored read-only.
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
        moment, it is not dominated by the most precise measurements.  Where the σ_i under-state the scatter,
        the excess shows up as τ̂²: the prior widens instead of trusting them.
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


def update_session_prior(prior: SessionPrior | None, estimates: Mapping[str, tuple[float, float]]) -> SessionPrior:
    """The session prior with one more micrograph's measurements appended (:class:`SessionPrior`).

    Parameters
    ----------
    prior : SessionPrior or None
        The prior so far (None: nothing measured yet).
    estimates : Mapping[str, tuple[float, float]]
        key → (value, σ > 0) in the quantity's unit, measured by this micrograph alone:
        :meth:`~.graph.CausalPriors.session_measurements` (its cause nodes before shrinkage and the ice power),
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
    would otherwise decide how well they are measured.  Under the hierarchical model each micrograph's
    prior is the population of all the *others* (exchangeability, Gelman et al., BDA3 §5.2): for each
    name in ``refit``, ``prior_before`` plus the session measurements
    (:meth:`~.graph.CausalPriors.session_measurements`) of every other micrograph of ``session`` (name,
    measurements; in order), returned only where it holds at least :data:`MIN_PRIOR_MICROGRAPHS`
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


def consistent(value: float, sigma: float, population: Population) -> bool:
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
    (:func:`consistent`, :data:`PRIOR_CONSISTENCY_Z` predictive σ): a micrograph that really differs
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
        if population is None or not consistent(value, sigma, population):
            continue
        mean1, var1 = _combine_normal(population.mean, population.predictive_variance, value, sigma**2)
        out[node] = (mean1, sigma_floor(math.sqrt(var1), mean1))
    return out
