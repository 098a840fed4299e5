"""The five components of V that are formulas of measurements, and the domain checks every score shares.

* **ΔRepro** — reproducibility under perturbation, the weakest link of exp(−δ_q/τ_q)
  (:func:`reproducibility_score`, :func:`limiting_quantity`).
* **⋄Meta** — stability of the iterative self-evaluation loop (:func:`meta_stability_score`).
* **ImpactFore** — forecast citations, log-normalised (:func:`impact_normalised`).

LogicScore is in :mod:`~cryodecon_science.scoring.rules`; Novelty in
:func:`cryodecon_science.embedding.novelty_score`.  :class:`ScoreComponents` holds all five, each in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields


class ScoreDomainError(ValueError):
    """A score or score input outside its domain: NaN, infinite, negative, or above 1 where [0, 1] is required."""


def _finite_nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ScoreDomainError(f"{name} must be finite and >= 0, got {value}")
    return value


def _unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ScoreDomainError(f"{name} must lie in [0, 1], got {value}")
    return value


def reproducibility_score(relative_deviations: Mapping[str, float], tolerances: Mapping[str, float]) -> float:
    """ΔRepro = min_q exp(−δ_q / τ_q) = exp(−max_q δ_q / τ_q): the least reproducible quantity sets it.

    Each quantity q (defocus on independent sub-crops, the restoration on an independent noise split,
    the compute cost, …) is re-measured under a perturbation; δ_q ≥ 0 is its deviation and τ_q the
    deviation regarded as typical.  δ = 0 scores 1, δ = τ scores e⁻¹ ≈ 0.37, smoothly.  A result is
    reproducible only if every part of it reproduces — a restoration that is mostly noise is not redeemed
    by a CTF fit that repeats, nor a perfect image by a defocus that changes between sub-crops — so the
    weakest link sets the score (:func:`limiting_quantity` names it).  An average would let quantities
    that barely vary between exposures dilute the one that does: on simulated sessions the mean of the
    terms ranked 160 exposures by true restored quality with Spearman 0.55, the weakest link with 0.93
    (``benchmarks/bench_quality_v.py``).

    Parameters
    ----------
    relative_deviations : mapping str -> float
        δ_q, dimensionless, finite and ≥ 0.
    tolerances : mapping str -> float
        τ_q > 0 for every key of ``relative_deviations`` (extra keys are ignored).

    Raises
    ------
    ScoreDomainError
        With no deviations, a deviation that is NaN/negative, or a missing or non-positive tolerance.
    """
    return math.exp(-max(_scaled_deviations(relative_deviations, tolerances).values()))


def limiting_quantity(relative_deviations: Mapping[str, float], tolerances: Mapping[str, float]) -> str:
    """The quantity q with the largest δ_q/τ_q: the one that sets :func:`reproducibility_score`."""
    scaled = _scaled_deviations(relative_deviations, tolerances)
    return max(scaled, key=scaled.__getitem__)


def _scaled_deviations(relative_deviations: Mapping[str, float], tolerances: Mapping[str, float]) -> dict[str, float]:
    if not relative_deviations:
        raise ScoreDomainError("no relative deviations: reproducibility is undefined")
    scaled = {}
    for name, deviation in relative_deviations.items():
        delta = _finite_nonnegative(f"relative deviation of {name!r}", deviation)
        if name not in tolerances:
            raise ScoreDomainError(f"no tolerance for {name!r}")
        tau = float(tolerances[name])
        if not (math.isfinite(tau) and tau > 0):
            raise ScoreDomainError(f"tolerance of {name!r} must be finite and > 0, got {tau}")
        scaled[name] = delta / tau
    return scaled


META_NOT_CONVERGED_FACTOR = 0.5
META_SINGLE_ITERATION_SCORE = 0.5


def meta_stability_score(history: Sequence[Mapping[str, float]], sigmas: Mapping[str, float], converged: bool) -> float:
    """⋄Meta = f · exp(−(1/N) Σ_q |x_q⁽ᵀ⁾ − x_q⁽ᵀ⁻¹⁾| / σ_q).

    ``history[t]`` holds the quantities x_q the self-evaluation loop estimated at iteration t; the score
    measures the last step's change in units of each quantity's noise scale σ_q: no change scores 1, a
    change of one σ on average scores e⁻¹.  f = 1 when the loop met its own convergence criterion and
    f = ``META_NOT_CONVERGED_FACTOR`` (0.5) when it stopped at its iteration limit instead: the last step
    says how far it was from stable, the missing convergence that the trend may not hold.

    A one-iteration history has no step to measure: stability is unobserved, and the score is
    ``META_SINGLE_ITERATION_SCORE`` (0.5, the midpoint between "observed stable" and "observed
    diverging"), times f.

    Parameters
    ----------
    history : sequence of mapping str -> float
        Per-iteration estimates, oldest first; the last two must have the same keys.
    sigmas : mapping str -> float
        σ_q > 0 for every quantity of the last iteration, in the quantity's units.
    converged : bool
        Whether the loop met its convergence criterion.

    Raises
    ------
    ScoreDomainError
        For an empty history, mismatched keys, non-finite values or a missing/non-positive σ.
    """
    if len(history) == 0:
        raise ScoreDomainError("empty history: meta-stability is undefined")
    factor = 1.0 if converged else META_NOT_CONVERGED_FACTOR
    last = history[-1]
    if not last:
        raise ScoreDomainError("the last iteration holds no quantity")
    for name, value in last.items():
        if not math.isfinite(float(value)):
            raise ScoreDomainError(f"{name!r} is not finite in the last iteration: {value}")
    if len(history) == 1:
        return META_SINGLE_ITERATION_SCORE * factor
    previous = history[-2]
    if set(previous) != set(last):
        raise ScoreDomainError(
            f"the last two iterations estimate different quantities: {sorted(previous)} vs {sorted(last)}"
        )
    steps = []
    for name, value in last.items():
        sigma = float(sigmas[name]) if name in sigmas else math.nan
        if not (math.isfinite(sigma) and sigma > 0):
            raise ScoreDomainError(f"sigma of {name!r} must be given, finite and > 0")
        before = float(previous[name])
        if not math.isfinite(before):
            raise ScoreDomainError(f"{name!r} is not finite in the previous iteration: {before}")
        steps.append(abs(float(value) - before) / sigma)
    return factor * math.exp(-sum(steps) / len(steps))


def impact_normalised(impact_citations: float, max_citations: float) -> float:
    """Impact = ln(1 + x) / ln(1 + x_max), clipped to 1 for x > x_max.

    Log compression follows the heavy-tailed (log-normal) citation distribution (Radicchi, Fortunato &
    Castellano 2008, PNAS 105:17268): one more citation matters more for a rarely cited paper.  x_max is
    the reference scale (e.g. the largest 5-year count in the citation graph); a forecast above it
    saturates at 1.

    Parameters
    ----------
    impact_citations : float
        x ≥ 0, forecast citations (ImpactFore).
    max_citations : float
        x_max > 0, the count that maps to 1.

    Raises
    ------
    ScoreDomainError
        If x is NaN/negative/infinite or x_max is not positive and finite.
    """
    x = _finite_nonnegative("impact_citations", impact_citations)
    x_max = float(max_citations)
    if not (math.isfinite(x_max) and x_max > 0):
        raise ScoreDomainError(f"max_citations must be finite and > 0, got {max_citations}")
    return min(1.0, math.log1p(x) / math.log1p(x_max))


@dataclass(frozen=True)
class ScoreComponents:
    """The five normalised components of one batch, each in [0, 1].

    Attributes
    ----------
    logic : float
        LogicScore, fraction of applicable rules that hold.
    novelty : float
        Calibrated novelty (empirical CDF of nearest-neighbour distances).
    impact : float
        ImpactFore after log normalisation (:func:`impact_normalised`).
    repro : float
        ΔRepro (:func:`reproducibility_score`).
    meta : float
        ⋄Meta (:func:`meta_stability_score`).

    Raises
    ------
    ScoreDomainError
        If a component is NaN, infinite or outside [0, 1].
    """

    logic: float
    novelty: float
    impact: float
    repro: float
    meta: float

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _unit_interval(f.name, getattr(self, f.name)))


COMPONENT_NAMES = ("logic", "novelty", "impact", "repro", "meta")
