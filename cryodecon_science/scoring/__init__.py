"""Scoring: the five components of the Research Quality Score V, V itself and the HyperScore.

* :mod:`~.rules`: the consistency rules and LogicScore.
* :mod:`~.power_ratios`: restored/raw power in frequency bands, measured for the restoration rules.
* :mod:`~.components`: ΔRepro, ⋄Meta, the log-normalised ImpactFore, :class:`ScoreComponents` and the
  domain checks (:class:`ScoreDomainError`).
* :mod:`~.quality`: the weights, V = Σᵢ wᵢ·cᵢ and the HyperScore.
* :mod:`~.evaluate`: :func:`evaluate_micrograph`, LogicScore, Novelty, ImpactFore, ΔRepro and ⋄Meta of one
  micrograph, and its :class:`EvaluationRecord`.

The perturbations of ΔRepro are in :mod:`cryodecon_science.reproducibility`.
"""

from cryodecon_science.scoring.components import (
    COMPONENT_NAMES,
    ScoreComponents,
    ScoreDomainError,
    impact_normalised,
    limiting_quantity,
    meta_stability_score,
    reproducibility_score,
)
from cryodecon_science.scoring.evaluate import (
    EvaluationRecord,
    ImpactForecast,
    LibraryHit,
    MicrographEvaluation,
    NearestStructures,
    ReferenceData,
    evaluate_micrograph,
)
from cryodecon_science.scoring.power_ratios import low_frequency_power_ratio, power_beyond_ratio
from cryodecon_science.scoring.quality import ScoreWeights, hyperscore, quality_v
from cryodecon_science.scoring.rules import LOGIC_RULES, Rule, RuleInputs, RuleResult, evaluate_rules, logic_score

__all__ = [
    "COMPONENT_NAMES",
    "LOGIC_RULES",
    "EvaluationRecord",
    "ImpactForecast",
    "LibraryHit",
    "MicrographEvaluation",
    "NearestStructures",
    "ReferenceData",
    "Rule",
    "RuleInputs",
    "RuleResult",
    "ScoreComponents",
    "ScoreDomainError",
    "ScoreWeights",
    "evaluate_micrograph",
    "evaluate_rules",
    "hyperscore",
    "impact_normalised",
    "limiting_quantity",
    "logic_score",
    "low_frequency_power_ratio",
    "meta_stability_score",
    "power_beyond_ratio",
    "quality_v",
    "reproducibility_score",
]
