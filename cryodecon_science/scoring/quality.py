"""The Research Quality Score V = Σᵢ wᵢ·cᵢ of the five components and the HyperScore derived from it.

With Σᵢ wᵢ = 1, V ∈ [0, 1] (:func:`quality_v`), and

    HyperScore = 100 · [1 + σ(β·ln V + γ)^κ],   σ(z) = 1 / (1 + e^(−z)),

with defaults β = 5, γ = −ln 2, κ = 2 (:func:`hyperscore`; research proposal, evaluation module).
HyperScore rises monotonically from 100 (V → 0) to 100·(1 + σ(γ)^κ) (V = 1; 111.11… with the defaults)
and never reaches 200.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cryodecon_science.scoring.components import COMPONENT_NAMES, ScoreComponents, ScoreDomainError, _unit_interval


@dataclass(frozen=True)
class ScoreWeights:
    """Weights wᵢ of the five components, stored normalised so that Σ wᵢ = 1.

    Construct with any non-negative weights (at least one positive): ``ScoreWeights(2, 1, 1, 0, 0, "v2")``
    stores (0.5, 0.25, 0.25, 0, 0).  ``version`` names the weighting so that scores computed with
    different weights are never compared unknowingly.

    Raises
    ------
    ScoreDomainError
        On a negative or non-finite weight, all weights zero, or an empty version.
    """

    logic: float
    novelty: float
    impact: float
    repro: float
    meta: float
    version: str

    def __post_init__(self) -> None:
        raw = [float(getattr(self, name)) for name in COMPONENT_NAMES]
        for name, w in zip(COMPONENT_NAMES, raw, strict=True):
            if not (math.isfinite(w) and w >= 0):
                raise ScoreDomainError(f"weight {name} must be finite and >= 0, got {w}")
        total = math.fsum(raw)
        if not total > 0:
            raise ScoreDomainError("at least one weight must be positive")
        if not self.version:
            raise ScoreDomainError("ScoreWeights.version must be a non-empty string")
        for name, w in zip(COMPONENT_NAMES, raw, strict=True):
            object.__setattr__(self, name, w / total)

    @classmethod
    def equal(cls, version: str = "equal-v1") -> ScoreWeights:
        """All five components weighted 1/5."""
        return cls(1.0, 1.0, 1.0, 1.0, 1.0, version)


def quality_v(components: ScoreComponents, weights: ScoreWeights) -> float:
    """V = Σᵢ wᵢ·cᵢ ∈ [0, 1] (research proposal, evaluation module).

    The sum is clipped to [0, 1] only to absorb floating-point rounding of Σ wᵢ = 1.
    """
    v = math.fsum(getattr(weights, name) * getattr(components, name) for name in COMPONENT_NAMES)
    return min(1.0, max(0.0, v))


def _logistic(z: float) -> float:
    """σ(z) = 1 / (1 + e^(−z)), evaluated without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def hyperscore(v: float, beta: float = 5.0, gamma: float = -math.log(2.0), kappa: float = 2.0) -> float:
    """HyperScore = 100 · [1 + σ(β·ln V + γ)^κ]  (research proposal, evaluation module).

    For β > 0 and κ > 0 it is strictly increasing in V: from 100 at V = 0 (the limit, since
    β·ln V → −∞ makes σ → 0; returned exactly, without evaluating ln 0) to 100·(1 + σ(γ)^κ) at V = 1.
    With the defaults σ(−ln 2) = 1/3, so HyperScore(1) = 100·(1 + 1/9) = 111.11…; for any γ it stays
    below 200.

    Parameters
    ----------
    v : float
        V ∈ [0, 1], from :func:`quality_v`.
    beta : float
        β > 0, sensitivity to ln V.
    gamma : float
        γ, offset of the logistic (default −ln 2).
    kappa : float
        κ > 0, power-boosting exponent.

    Raises
    ------
    ScoreDomainError
        If V is NaN, negative or above 1, or β, κ are not positive, or γ not finite.
    """
    v = _unit_interval("V", v)
    if not (math.isfinite(beta) and beta > 0):
        raise ScoreDomainError(f"beta must be finite and > 0, got {beta}")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ScoreDomainError(f"kappa must be finite and > 0, got {kappa}")
    if not math.isfinite(gamma):
        raise ScoreDomainError(f"gamma must be finite, got {gamma}")
    if v == 0.0:
        return 100.0
    return 100.0 * (1.0 + float(_logistic(beta * math.log(v) + gamma) ** kappa))
