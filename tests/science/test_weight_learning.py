"""Learning the weights of V with optuna: recovers the informative component, reproducible, validated."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from cryodecon_science.scoring import COMPONENT_NAMES, ScoreWeights
from cryodecon_science.weight_learning import (
    components_matrix,
    learn_score_weights,
    quality_v_matrix,
    spearman_rho,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcome driven by 'repro' (strongly) and 'meta' (weakly); the other components are noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, 5))
    outcome = 2.0 * x[:, 3] + 0.5 * x[:, 4] + rng.normal(0.0, 0.1, n)
    return x, outcome


def test_learned_weights_favour_the_informative_component_and_generalise() -> None:
    x, y = _dataset(120, seed=0)
    learned = learn_score_weights(x, y, version="test-v1", n_trials=150, seed=0)
    weights = {name: getattr(learned.weights, name) for name in COMPONENT_NAMES}
    assert max(weights, key=weights.__getitem__) == "repro"
    assert weights["repro"] > 0.4
    assert learned.spearman_train > learned.spearman_equal_train + 0.2
    # Held-out data from the same process: the learned weights still beat equal weights.
    x_test, y_test = _dataset(120, seed=1)
    held_out = spearman_rho(quality_v_matrix(x_test, learned.weights), y_test)
    equal = spearman_rho(quality_v_matrix(x_test, ScoreWeights.equal()), y_test)
    assert held_out > 0.85
    assert held_out > equal + 0.2
    assert learned.weights.version == "test-v1"


def test_components_constant_in_training_get_no_weight() -> None:
    x, y = _dataset(60, seed=6)
    x[:, 1] = 1.0  # novelty saturated in every training sample: no information about the ranking
    learned = learn_score_weights(x, y, version="v", n_trials=60, seed=0)
    assert learned.uninformative == ("novelty",)
    assert learned.weights.novelty == 0.0
    with pytest.raises(ValueError, match="constant"):
        learn_score_weights(np.full((20, 5), 0.5), y[:20], version="v")


def test_learning_is_reproducible_with_a_seed() -> None:
    x, y = _dataset(40, seed=2)
    first = learn_score_weights(x, y, version="a", n_trials=30, seed=5)
    second = learn_score_weights(x, y, version="a", n_trials=30, seed=5)
    assert first.weights == second.weights


def test_binary_labels_are_a_valid_outcome() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.0, (60, 5))
    accepted = (x[:, 0] > 0.5).astype(float)  # staff accepted exactly the logically consistent ones
    learned = learn_score_weights(x, accepted, version="curation-test", n_trials=80, seed=0)
    assert learned.weights.logic == max(getattr(learned.weights, n) for n in COMPONENT_NAMES)
    assert learned.spearman_train > 0.8


def test_bad_inputs_are_rejected() -> None:
    x, y = _dataset(20, seed=4)
    with pytest.raises(ValueError, match="at least"):
        learn_score_weights(x[:5], y[:5], version="v")
    with pytest.raises(ValueError, match="constant"):
        learn_score_weights(x, np.ones(20), version="v")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        learn_score_weights(x * 2.0, y, version="v")
    with pytest.raises(ValueError, match="finite"):
        learn_score_weights(np.where(x > 0.9, np.nan, x), y, version="v")
    with pytest.raises(ValueError, match="matching"):
        learn_score_weights(x[:, :4], y, version="v")


def test_spearman_and_v_matrix_helpers() -> None:
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rho([1, 1, 1], [1, 2, 3]) == 0.0
    weights = ScoreWeights(1, 0, 0, 1, 0, "half-half")
    v = quality_v_matrix(np.array([[1.0, 0, 0, 0, 0], [0.5, 0, 0, 0.5, 0]]), weights)
    np.testing.assert_allclose(v, [0.5, 0.5])
    from cryodecon_science.scoring import ScoreComponents

    matrix = components_matrix([ScoreComponents(0.1, 0.2, 0.3, 0.4, 0.5)])
    np.testing.assert_allclose(matrix, [[0.1, 0.2, 0.3, 0.4, 0.5]])


def test_hyperscore_shape_puts_the_median_at_the_midpoint() -> None:
    import math

    from cryodecon_science.scoring import hyperscore
    from cryodecon_science.weight_learning import calibrate_hyperscore_shape

    v = np.geomspace(0.25, 1.0, 101)  # log-symmetric about its median 0.5
    shape = calibrate_hyperscore_shape(v)
    low, mid, high = v[5], v[50], v[95]  # the 5 / 50 / 95 % quantiles of 101 points
    assert (shape.v_low, shape.v_mid, shape.v_high) == pytest.approx((low, mid, high))
    # Hand-computed: β = 2 ln 9 / ln(q95/q5), γ = −β ln q50.
    assert shape.beta == pytest.approx(2.0 * math.log(9.0) / math.log(high / low))
    assert shape.gamma == pytest.approx(-shape.beta * math.log(mid))
    # σ = ½ at the median, 0.1 and 0.9 at the outer quantiles: HyperScore 125, 101, 181 with κ = 2.
    assert hyperscore(mid, shape.beta, shape.gamma, 2.0) == pytest.approx(125.0)
    assert hyperscore(low, shape.beta, shape.gamma, 2.0) == pytest.approx(101.0)
    assert hyperscore(high, shape.beta, shape.gamma, 2.0) == pytest.approx(181.0)
    with pytest.raises(ValueError, match="vary"):
        calibrate_hyperscore_shape(np.full(10, 0.4))
    with pytest.raises(ValueError, match="quantiles"):
        calibrate_hyperscore_shape(v, quantiles=(0.5, 0.4, 0.9))
