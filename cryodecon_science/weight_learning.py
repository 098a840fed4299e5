"""Learning the weights wᵢ of V = Σᵢ wᵢ·cᵢ by Bayesian optimisation (optuna's TPE sampler).

The research proposal calls for weights learned from data rather than guessed.  What V should agree with
is an *outcome* measured independently of the five components:

* on simulated sessions, the true quality of the restored micrograph (its correlation with the noise-free
  image, known only to the simulator — ``benchmarks/bench_quality_v.py``);
* on real data, the facility's curation labels (exposures staff accepted = 1 or rejected = 0, warehouse
  table ``curation``).

Agreement is Spearman's rank correlation ρ_s(V, outcome): V is used to rank and threshold exposures, so
only its order matters, and ρ_s is insensitive to the monotone HyperScore mapping applied afterwards.  For
binary labels ρ_s is the rank-biserial correlation, a rescaled area under the ROC curve.

The search space is w ∈ [0, 1]⁵ (normalised to Σ w = 1 by ``ScoreWeights``); optuna's Tree-structured
Parzen Estimator (Bergstra et al. 2011, NeurIPS 24; Akiba et al. 2019, KDD, optuna) proposes weights,
seeded so a run is reproducible.  A component that does not help the ranking can receive weight ≈ 0:
that is a finding to report, not a failure.

A component that is constant over the training samples carries no information about the outcome, and
any weight on it leaves the training Spearman unchanged — the optimiser would assign it an arbitrary
weight that then acts as noise wherever the component does vary.  Such components are fixed at weight 0
and reported (``LearnedWeights.uninformative``); learning them needs data in which they vary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import optuna
from scipy.stats import spearmanr

from cryodecon_science.scoring import COMPONENT_NAMES, ScoreComponents, ScoreWeights

FloatArray = npt.NDArray[np.float64]
# Fewer samples than this give a Spearman estimate too noisy to learn five weights from.
MIN_SAMPLES = 10


@dataclass(frozen=True)
class LearnedWeights:
    """Weights found by :func:`learn_score_weights` and how well they did on their training data.

    Attributes
    ----------
    weights : ScoreWeights
        Normalised weights with their version string.
    spearman_train : float
        ρ_s(V, outcome) on the training samples with these weights.
    spearman_equal_train : float
        ρ_s with equal weights on the same samples, for comparison.
    n_samples : int
        Training samples.
    n_trials : int
        Optimisation trials run.
    seed : int
        Seed of the TPE sampler.
    uninformative : tuple of str
        Components constant over the training samples, fixed at weight 0 (module docstring).
    """

    weights: ScoreWeights
    spearman_train: float
    spearman_equal_train: float
    n_samples: int
    n_trials: int
    seed: int
    uninformative: tuple[str, ...]


def components_matrix(components: Sequence[ScoreComponents]) -> FloatArray:
    """Stack components into an (n, 5) array, columns in ``COMPONENT_NAMES`` order."""
    return np.asarray([[getattr(c, name) for name in COMPONENT_NAMES] for c in components], dtype=np.float64)


def spearman_rho(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Spearman's rank correlation ρ_s (average ranks for ties); 0 when either input is constant."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two equal-length samples of at least 2 values, got {a.size} and {b.size}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    rho = float(spearmanr(a, b).statistic)
    return rho if math.isfinite(rho) else 0.0


def quality_v_matrix(components: FloatArray, weights: ScoreWeights) -> FloatArray:
    """V for each row of an (n, 5) component matrix: V = components · w (``scoring.quality_v``, vectorised)."""
    w = np.asarray([getattr(weights, name) for name in COMPONENT_NAMES], dtype=np.float64)
    return np.clip(np.asarray(components, dtype=np.float64) @ w, 0.0, 1.0)


def learn_score_weights(
    components: npt.ArrayLike,
    outcome: npt.ArrayLike,
    version: str,
    n_trials: int = 300,
    seed: int = 0,
) -> LearnedWeights:
    """Weights maximising ρ_s(V, outcome) by TPE Bayesian optimisation (module docstring).

    Parameters
    ----------
    components : array, shape (n, 5)
        Component values cᵢ ∈ [0, 1] per sample, columns in ``COMPONENT_NAMES`` order
        (:func:`components_matrix`).
    outcome : array, shape (n,)
        What V should rank like: true restored quality, or 1/0 curation labels.
    version : str
        Version string for the resulting ``ScoreWeights``.
    n_trials : int
        Optimisation trials (≥ 1); the equal-weight point is always evaluated first.
    seed : int
        Seed of the TPE sampler.

    Raises
    ------
    ValueError
        With fewer than ``MIN_SAMPLES`` samples, a constant outcome, non-finite values or components
        outside [0, 1].
    """
    x = np.asarray(components, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64).ravel()
    if x.ndim != 2 or x.shape[1] != len(COMPONENT_NAMES) or x.shape[0] != y.size:
        raise ValueError(f"components must be (n, {len(COMPONENT_NAMES)}) matching outcome (n,), got {x.shape}")
    if y.size < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} samples to learn weights, got {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("components and outcome must be finite")
    if np.any(x < 0) or np.any(x > 1):
        raise ValueError("components must lie in [0, 1]")
    if np.ptp(y) == 0:
        raise ValueError("the outcome is constant: there is no ranking to agree with")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")

    informative = [name for i, name in enumerate(COMPONENT_NAMES) if np.ptp(x[:, i]) > 0]
    if not informative:
        raise ValueError("every component is constant over the samples: nothing to learn weights from")

    def weight_vector(params: dict[str, float]) -> FloatArray:
        return np.asarray([params.get(name, 0.0) for name in COMPONENT_NAMES], dtype=np.float64)

    def objective(trial: optuna.Trial) -> float:
        w = weight_vector({name: trial.suggest_float(name, 0.0, 1.0) for name in informative})
        if not w.sum() > 0:
            return -1.0
        return spearman_rho(x @ (w / w.sum()), y)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(dict.fromkeys(informative, 1.0))
    study.optimize(objective, n_trials=n_trials)
    logic, novelty, impact, repro, meta = (float(w) for w in weight_vector(study.best_params))
    weights = ScoreWeights(logic, novelty, impact, repro, meta, version)
    equal = ScoreWeights.equal()
    return LearnedWeights(
        weights=weights,
        spearman_train=spearman_rho(quality_v_matrix(x, weights), y),
        spearman_equal_train=spearman_rho(quality_v_matrix(x, equal), y),
        n_samples=int(y.size),
        n_trials=n_trials,
        seed=seed,
        uninformative=tuple(name for name in COMPONENT_NAMES if name not in informative),
    )


@dataclass(frozen=True)
class HyperScoreShape:
    """β and γ of HyperScore = 100·[1 + σ(β·ln V + γ)^κ], calibrated on a V distribution.

    Attributes
    ----------
    beta : float
        β > 0, sensitivity.
    gamma : float
        γ, bias: the logistic is at 50 % where V = exp(−γ/β).
    v_low, v_mid, v_high : float
        The V quantiles (default 5 %, 50 %, 95 %) the calibration used.
    """

    beta: float
    gamma: float
    v_low: float
    v_mid: float
    v_high: float


def calibrate_hyperscore_shape(
    v_values: npt.ArrayLike, quantiles: tuple[float, float, float] = (0.05, 0.5, 0.95), spread: float = 0.9
) -> HyperScoreShape:
    """Place the HyperScore's logistic over the V values that actually occur.

    The formula's σ(β·ln V + γ) is at 50 % where ln V = −γ/β and moves from 1 − s to s over
    Δ(β·ln V) = 2·ln(s/(1 − s)).  With V's quantiles q_low, q_mid, q_high:

        β = 2·ln(s/(1 − s)) / (ln q_high − ln q_low),   γ = −β·ln q_mid,

    so the median V sits at the curve's midpoint and the central 90 % of V spans about σ ∈ [0.1, 0.9]
    (s = 0.9; exactly when V is log-symmetric about its median), i.e. HyperScore ≈ 101 … 181 with κ = 2.
    Without this, the proposal's example values (β = 5, γ = −ln 2) put the midpoint at V = 2^(1/5) ≈ 1.15,
    outside [0, 1], and every V below ~0.6 maps to 100.0x.  Monotonicity in V and the [100, 200] bounds
    hold for any β > 0.

    Parameters
    ----------
    v_values : array
        V of representative micrographs, in (0, 1].
    quantiles : (float, float, float)
        Lower, middle and upper quantile, increasing, in (0, 1).
    spread : float
        s ∈ (0.5, 1): the logistic's value at the upper quantile.

    Raises
    ------
    ValueError
        With fewer than 2 positive values, quantiles that coincide, or bad parameters.
    """
    v = np.asarray(v_values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    low_q, mid_q, high_q = quantiles
    if not 0.0 < low_q < mid_q < high_q < 1.0:
        raise ValueError(f"quantiles must increase within (0, 1), got {quantiles}")
    if not 0.5 < spread < 1.0:
        raise ValueError(f"spread must lie in (0.5, 1), got {spread}")
    if v.size < 2:
        raise ValueError("need at least two positive V values to calibrate the HyperScore")
    v_low, v_mid, v_high = (float(q) for q in np.quantile(v, [low_q, mid_q, high_q]))
    if not v_high > v_low:
        raise ValueError("V does not vary between the quantiles: nothing to spread the HyperScore over")
    beta = 2.0 * math.log(spread / (1.0 - spread)) / (math.log(v_high) - math.log(v_low))
    return HyperScoreShape(beta=beta, gamma=-beta * math.log(v_mid), v_low=v_low, v_mid=v_mid, v_high=v_high)
