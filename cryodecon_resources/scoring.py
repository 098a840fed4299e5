"""Scoring settings: the weights of V, the HyperScore shape, and where the citation graph lives.

Which weights V uses, in order:

1. weights given in the configuration (``weights`` + ``weights_version``), e.g. to reproduce an old run;
2. the newest weights learned from the facility's curation labels (the ``score_weights`` asset writes them
   to the warehouse table ``weights`` with ``source = 'curation'``);
3. the weights shipped with cryodecon, learned on simulated sessions against the true restored quality
   (``cryodecon_science/data/score_weights.json``, beside every other shipped learned parameter; written
   by ``benchmarks/bench_quality_v.py --install``).

Every V and HyperScore row records the version of the weights that produced it.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import field_validator

from cryodecon_science.scoring import COMPONENT_NAMES, ScoreWeights

SHIPPED_WEIGHTS_FILE = Path(str(importlib.resources.files("cryodecon_science") / "data" / "score_weights.json"))
WEIGHTS_TABLE = "weights"


# The proposal's example shape, used only when neither the configuration nor the weights record has one.
DEFAULT_BETA = 5.0
DEFAULT_GAMMA = -math.log(2.0)
DEFAULT_KAPPA = 2.0


def weights_row(
    weights: ScoreWeights,
    source: str,
    learned_at_s: float,
    details: dict[str, Any],
    beta: float | None = None,
    gamma: float | None = None,
) -> dict[str, Any]:
    """One row of the warehouse table ``weights`` (partition = version), with its calibrated β, γ."""
    return {
        "version": weights.version,
        "source": source,
        "learned_at_s": learned_at_s,
        **{f"w_{name}": getattr(weights, name) for name in COMPONENT_NAMES},
        "beta": beta,
        "gamma": gamma,
        "details": json.dumps(details, sort_keys=True, default=float),
    }


def shipped_document() -> dict[str, Any]:
    """The shipped weights record (``cryodecon_science/data/score_weights.json``)."""
    document: dict[str, Any] = json.loads(SHIPPED_WEIGHTS_FILE.read_text())
    return document


def shipped_weights() -> ScoreWeights:
    """The weights learned on simulated sessions that ship with the package (module docstring, 3)."""
    document = shipped_document()
    return ScoreWeights(*(float(document["weights"][name]) for name in COMPONENT_NAMES), version=document["version"])


def shipped_weights_row() -> dict[str, Any]:
    """The shipped weights as a row of the ``weights`` table."""
    document = shipped_document()
    shape = document.get("hyperscore", {})
    return weights_row(shipped_weights(), "simulated", 0.0, {}, shape.get("beta"), shape.get("gamma"))


class ScoringSettings(dg.ConfigurableResource):
    """Configuration of the evaluation pipeline.

    ``weights`` are w₁…w₅ of V = w₁·LogicScore + w₂·Novelty + w₃·log-normalised ImpactFore + w₄·ΔRepro
    + w₅·⋄Meta (normalised to sum 1 before use); empty means "learned" (module docstring).
    HyperScore = 100 × [1 + σ(β·ln V + γ)^κ] with β = ``beta``, γ = ``gamma``, κ = ``kappa``; β and γ
    left unset come from the weights record in force, calibrated with the weights so that the median V
    sits at the logistic's midpoint (``weight_learning.calibrate_hyperscore_shape``), else β = 5,
    γ = −ln 2 (the proposal's example).
    """

    weights: list[float] = []
    weights_version: str = ""
    beta: float | None = None
    gamma: float | None = None
    kappa: float = DEFAULT_KAPPA
    citation_graph_path: str = ""

    @field_validator("weights")
    @classmethod
    def _five_weights_or_none(cls, weights: list[float]) -> list[float]:
        """Empty (learned weights) or five finite, non-negative weights with a positive sum."""
        if weights:
            if len(weights) != len(COMPONENT_NAMES):
                raise ValueError(f"weights must have {len(COMPONENT_NAMES)} entries {COMPONENT_NAMES}, got {weights}")
            ScoreWeights(*weights, version="check")  # raises ScoreDomainError (a ValueError) on bad values
        return weights

    def resolve_weights(self, learned_rows: list[dict[str, Any]]) -> tuple[ScoreWeights, str]:
        """The weights to use and their source (``configured``, ``curation`` or ``simulated``).

        ``learned_rows`` are rows of the warehouse table ``weights``; the newest ``curation`` row (by
        ``learned_at_s``) wins over the shipped weights.
        """
        if self.weights:
            return ScoreWeights(*self.weights, version=self.weights_version or "configured"), "configured"
        curated = [r for r in learned_rows if r.get("source") == "curation"]
        if curated:
            newest = max(curated, key=lambda r: float(r.get("learned_at_s", 0.0)))
            weights = ScoreWeights(*(float(newest[f"w_{n}"]) for n in COMPONENT_NAMES), version=newest["version"])
            return weights, "curation"
        return shipped_weights(), "simulated"

    def resolve_shape(self, learned_rows: list[dict[str, Any]], weights_version: str) -> tuple[float, float, float]:
        """(β, γ, κ) for V computed with ``weights_version``: configured values first, then the ones
        calibrated with those weights (warehouse row or shipped record), then the defaults."""
        record: dict[str, Any] = next((r for r in learned_rows if r.get("version") == weights_version), {})
        if not record and weights_version == shipped_weights().version:
            record = shipped_weights_row()

        def pick(configured: float | None, key: str, default: float) -> float:
            if configured is not None:
                return float(configured)
            value = record.get(key)
            return float(value) if value is not None and math.isfinite(float(value)) else default

        return pick(self.beta, "beta", DEFAULT_BETA), pick(self.gamma, "gamma", DEFAULT_GAMMA), float(self.kappa)
