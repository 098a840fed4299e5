"""Scoring settings: the weights of V, the HyperScore shape, and where the citation graph lives."""

from __future__ import annotations

import math

import dagster as dg


class ScoringSettings(dg.ConfigurableResource):
    """Configuration of the evaluation pipeline.

    ``weights`` are w₁…w₅ of V = w₁·LogicScore + w₂·Novelty + w₃·log-normalised ImpactFore + w₄·ΔRepro
    + w₅·⋄Meta (normalised to sum 1 before use); ``weights_version`` is recorded on every score row.
    Equal weights are the documented starting point until weights are learned (the scoring issue).
    HyperScore = 100 × [1 + σ(β·ln V + γ)^κ] with β = ``beta``, γ = ``gamma``, κ = ``kappa``.
    """

    weights: list[float] = [0.2, 0.2, 0.2, 0.2, 0.2]
    weights_version: str = "equal-v1"
    beta: float = 5.0
    gamma: float = -math.log(2.0)
    kappa: float = 2.0
    particle_diameter_angstrom: float = 150.0
    citation_graph_path: str = ""
