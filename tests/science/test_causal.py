"""The causal degradation graph, its node estimates, the session prior and the self-evaluation loop.

Synthetic micrographs come from ``test_restore.synthesize_micrograph`` (known CTF, B-factor, drift,
ice background and Poisson noise; its ``ctf_fit`` carries the true spectral model).  Where a test must
show that the loop *learns* from the data, it starts from a deliberately wrong spectral model.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import networkx as nx
import numpy as np
import pytest

from cryodecon_science.causal import (
    ATTRIBUTION_BAND_ANGSTROM,
    CAUSE_NODES,
    EFFECT_NODES,
    ICE_SPECIMEN_POWER,
    UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2,
    NodeEstimate,
    SessionPrior,
    build_causal_graph,
    degradation_losses,
    degradation_weights,
    estimate_nodes,
    fit_priors,
    fit_session,
    leave_one_out_priors,
    optimal_exposure_e_per_angstrom2,
    ring_average_sinc2,
    session_prior_of,
    shrink_towards_prior,
    update_session_prior,
)
from cryodecon_science.optics import amorphous_ice_spectrum_shape, frequency_grid_per_angstrom
from cryodecon_science.records import CtfFit, SpectralModel
from cryodecon_science.restoration.restore import expected_ctf_squared
from tests.science.test_restore import MICROSCOPE, synthesize_micrograph


def _wrong_start(
    fit: CtfFit, bfactor_angstrom2: float = 100.0, noise_factor: float = 1.5, ice_shaped: bool = False
) -> CtfFit:
    """The true model with its envelope replaced by exp(−B k²/2) (times the ice spectrum shape when
    ``ice_shaped``) and its background scaled."""
    model = fit.spectral_model
    k = model.frequency_per_angstrom
    signal = model.signal_power[0] * np.exp(-bfactor_angstrom2 * k**2 / 2.0)
    if ice_shaped:
        signal = signal * amorphous_ice_spectrum_shape(k)
    wrong = replace(
        model,
        signal_power=signal,
        background_power=model.background_power * noise_factor,
        noise_floor_power=model.noise_floor_power * noise_factor,
    )
    return replace(fit, spectral_model=wrong)


def _weights(estimates: tuple[NodeEstimate, ...]) -> dict[str, float]:
    return {e.node: e.weight for e in estimates}


# ------------------------------------------------------------------------------------------ graph
def test_graph_is_a_dag_with_the_physical_nodes() -> None:
    graph = build_causal_graph()
    assert nx.is_directed_acyclic_graph(graph)
    assert set(graph.nodes) == set(CAUSE_NODES) | set(EFFECT_NODES)
    for node in CAUSE_NODES:
        assert graph.nodes[node]["kind"] == "cause"
        assert nx.has_path(graph, node, "image_quality")
    for node in EFFECT_NODES:
        assert graph.nodes[node]["kind"] == "effect"
    for _, attrs in graph.nodes(data=True):
        assert attrs["unit"] and attrs["description"]
    for _, _, attrs in graph.edges(data=True):
        assert attrs["mechanism"]
    assert graph.has_edge("dose", "detector_noise")
    assert graph.has_edge("ice_thickness", "observed_power_spectrum")
    assert graph.has_edge("sample_heterogeneity", "image_quality")


# -------------------------------------------------------------------------------- node estimates
def test_bfactor_is_learned_from_the_data() -> None:
    # The specimen has the spectrum of vitreous ice, which the envelope estimate reads B against.
    estimates = {}
    for b_true in (50.0, 150.0):
        syn = synthesize_micrograph(bfactor_angstrom2=b_true, seed=0, ice_shaped_specimen=True)
        priors = fit_priors(syn.image, _wrong_start(syn.ctf_fit, ice_shaped=True), syn.microscope)
        estimates[b_true] = priors.values()["coherence_envelope"][0]
        assert priors.iterations[0]["coherence_envelope"] == pytest.approx(100.0, rel=1e-3)
        # 30 %: the Cramér–Rao σ of B on a 256² image is ≈ 8 % at B = 50 and ≈ 12 % at B = 150.
        assert estimates[b_true] == pytest.approx(b_true, rel=0.3)
    assert estimates[50.0] < estimates[150.0]


def test_detector_index_is_one_for_pure_poisson_noise() -> None:
    syn = synthesize_micrograph(seed=3)
    rng = np.random.default_rng(3)
    image = rng.poisson(40.0, size=syn.image.shape).astype(np.float32)
    no_signal = replace(syn.ctf_fit.spectral_model, signal_power=np.zeros_like(syn.ctf_fit.spectral_model.signal_power))
    start = _wrong_start(replace(syn.ctf_fit, spectral_model=no_signal), noise_factor=1.5)
    priors = fit_priors(image, start, syn.microscope)
    index, sigma = priors.values()["detector_noise"]
    assert priors.iterations[0]["detector_noise"] == pytest.approx(1.5, rel=0.01)
    # σ ≈ 1 % from ~10⁴ floor-band samples (checked calibrated over 20 seeds); a 4σ bound fails for
    # fewer than 1 in 10⁴ seeds.
    assert abs(index - 1.0) < 4.0 * sigma
    assert sigma < 0.02


def test_ice_index_grows_with_the_low_frequency_background() -> None:
    values = []
    for ice in (0.0, 200.0, 800.0):
        syn = synthesize_micrograph(ice_power=ice, seed=1)
        values.append(fit_priors(syn.image, syn.ctf_fit, syn.microscope).values()["ice_thickness"])
    (v0, s0), (v1, _), (v2, s2) = values
    assert v0 < v1 < v2
    assert v2 - v0 > 3.0 * math.hypot(s0, s2)


def test_motion_blur_is_read_from_spectral_anisotropy() -> None:
    blurred = synthesize_micrograph(drift_px=4.0, seed=2)
    still = synthesize_micrograph(drift_px=0.0, seed=2)
    d4, s4 = estimate_nodes(blurred.image, blurred.ctf_fit, blurred.microscope, None, None, None)["beam_induced_motion"]
    d0, _ = estimate_nodes(still.image, still.ctf_fit, still.microscope, None, None, None)["beam_induced_motion"]
    # 1 px: the harmonic fit sees ~0.3 px scatter at this SNR (σ reported alongside).
    assert abs(d4 - 4.0) < 1.0 and s4 < 1.0
    assert d0 < 1.5
    given = estimate_nodes(still.image, still.ctf_fit, still.microscope, None, 3.0, None)["beam_induced_motion"]
    assert given[0] == 3.0 and given[1] == pytest.approx(math.hypot(0.25, 0.3))


def test_heterogeneity_detects_an_empty_half() -> None:
    syn = synthesize_micrograph(seed=4)
    uniform = estimate_nodes(syn.image, syn.ctf_fit, syn.microscope, None, None, None)["sample_heterogeneity"]
    half = syn.image.copy()
    half[:, : half.shape[1] // 2] = np.random.default_rng(4).poisson(40.0, size=(half.shape[0], half.shape[1] // 2))
    patchy = estimate_nodes(half, syn.ctf_fit, syn.microscope, None, None, None)["sample_heterogeneity"]
    assert patchy[0] > uniform[0] + 2.0 * math.hypot(uniform[1], patchy[1])


def test_geometry_and_dose_nodes() -> None:
    syn = synthesize_micrograph(seed=5)
    nodes = estimate_nodes(syn.image, syn.ctf_fit, syn.microscope, None, None, None)
    assert nodes["defocus"] == (14500.0, 20.0)
    assert nodes["astigmatism"] == (1000.0, 40.0)
    assert nodes["spherical_aberration"][0] == 2.7
    dose, dose_sigma = nodes["dose"]
    assert dose == pytest.approx(float(syn.image.astype(np.float64).mean()) / 1.5**2)
    with_header = estimate_nodes(syn.image, syn.ctf_fit, syn.microscope, dose + 1.0, None, None)["dose"]
    assert with_header[1] == pytest.approx(math.hypot(dose_sigma, 1.0))


def test_estimates_need_an_image_in_counts() -> None:
    syn = synthesize_micrograph(shape_px=(128, 128))
    with pytest.raises(ValueError, match="counts"):
        estimate_nodes(syn.image - syn.image.mean(), syn.ctf_fit, syn.microscope, None, None, None)


# ------------------------------------------------------------------------------- session prior
def _session(key: str, measurements: list[tuple[float, float]]) -> SessionPrior:
    prior = None
    for value, sigma in measurements:
        prior = update_session_prior(prior, {key: (value, sigma)})
    assert prior is not None
    return prior


def test_population_by_hand() -> None:
    # x = 10, 12, …, 18 with σ = 1: Σ(x − 14)² = 16 + 4 + 0 + 4 + 16 = 40, and Q(τ²) = 40/(1 + τ²) equals
    # n − 1 = 4 at τ² = 9; w* = 1/10 each: μ = 14, Var μ = 1/(5/10) = 2, predictive 9 + 2 = 11.
    values = [(10.0, 1.0), (12.0, 1.0), (14.0, 1.0), (16.0, 1.0), (18.0, 1.0)]
    # Four measurements: a population is estimated (the session prior table shows it) but not yet used.
    # Σ(x − 13)² = 20 and 20/(1 + τ²) = n − 1 = 3 at τ² = 17/3.
    early = _session("coherence_envelope", values[:4])
    assert early.population("coherence_envelope") is None
    first_four = early.populations()["coherence_envelope"]
    assert first_four.n == 4 and first_four.between_variance == pytest.approx(17.0 / 3.0)
    assert first_four.mean == pytest.approx(13.0)
    prior = _session("coherence_envelope", values)
    population = prior.population("coherence_envelope")
    assert population is not None and population.n == 5
    expected = (14.0, 9.0, 2.0)
    assert (population.mean, population.between_variance, population.mean_variance) == pytest.approx(expected)
    assert population.predictive_variance == pytest.approx(11.0)
    # Scatter no larger than the σ: no between-micrograph variance, the precision-weighted mean.
    agreeing = _session("dose", [(40.0, 0.5), (40.2, 0.5), (39.9, 1.0), (40.1, 0.5), (40.0, 1.0)])
    same = agreeing.population("dose")
    assert same is not None and same.between_variance == 0.0
    assert same.mean == pytest.approx((40.0 * 4 + 40.2 * 4 + 39.9 + 40.1 * 4 + 40.0) / 14.0)
    assert same.mean_variance == pytest.approx(1.0 / 14.0)
    # Built at once (the warehouse replay) or micrograph by micrograph: the same prior.
    assert session_prior_of([{"coherence_envelope": v} for v in values]) == prior
    with pytest.raises(TypeError):
        prior.measurements["dose"] = ((1.0, 1.0),)  # type: ignore[index]
    with pytest.raises(ValueError, match="σ > 0"):
        update_session_prior(prior, {"dose": (40.0, 0.0)})


def test_the_first_micrographs_are_refitted_with_the_prior_of_all_the_others() -> None:
    session = [(f"m{i}", {"coherence_envelope": (10.0 + 2.0 * i, 1.0), "dose": (40.0, 0.1)}) for i in range(6)]
    # Six micrographs: each of the first four gets the other five (a population); m0's is m1 … m5.
    priors = leave_one_out_priors(session, ["m0", "m1", "m2", "m3"])
    assert set(priors) == {"m0", "m1", "m2", "m3"}
    assert priors["m0"] == session_prior_of([measured for _, measured in session[1:]])
    assert priors["m2"].measurements["coherence_envelope"] == tuple((10.0 + 2.0 * i, 1.0) for i in (0, 1, 3, 4, 5))
    # Five micrographs: the others are four, too few to pool with — no refit.
    assert leave_one_out_priors(session[:5], ["m0"]) == {}
    # Earlier batches count: one earlier micrograph makes four others enough.
    earlier = update_session_prior(None, {"dose": (40.0, 0.1)})
    assert set(leave_one_out_priors(session[:5], ["m0"], earlier)) == {"m0"}


class _Fitted:
    """Stands in for ``CausalPriors`` in :func:`fit_session`: the measurements and the prior it was fitted with."""

    def __init__(self, name: str, prior: SessionPrior | None) -> None:
        self.name, self.prior = name, prior

    def session_measurements(self) -> dict[str, tuple[float, float]]:
        return {"dose": (40.0 + float(self.name[1:]), 1.0)}


def test_a_session_is_fitted_in_order_and_its_first_micrographs_again_with_all_the_others() -> None:
    names = [f"m{i}" for i in range(7)]
    calls: list[tuple[str, int]] = []

    def fit(name: str, prior: SessionPrior | None) -> Any:
        calls.append((name, 0 if prior is None else prior.n_micrographs))
        if name == "m2":
            raise ValueError("no Thon rings")
        if name == "m1" and prior is not None and prior.n_micrographs >= 5:
            raise FloatingPointError("refit diverged")
        return _Fitted(name, prior)

    session = fit_session(names, fit)
    # First pass in arrival order, each with the micrographs fitted before it (m2 failed: not counted).
    assert calls[:7] == [("m0", 0), ("m1", 1), ("m2", 2), ("m3", 2), ("m4", 3), ("m5", 4), ("m6", 5)]
    # Fitted with fewer than MIN_PRIOR_MICROGRAPHS (5) to pool with: m0, m1, m3, m4, m5; refitted with the
    # five others.  m1's refit fails: its first fit stands.
    assert calls[7:] == [("m0", 5), ("m1", 5), ("m3", 5), ("m4", 5), ("m5", 5)]
    assert session.refitted == ("m0", "m3", "m4", "m5")
    assert set(session.refit_errors) == {"m1"} and session.priors["m1"].prior.n_micrographs == 1  # type: ignore[union-attr]
    assert isinstance(session.priors["m2"], ValueError) and list(session.priors) == names
    assert list(session.fitted()) == ["m0", "m1", "m3", "m4", "m5", "m6"]
    assert set(session.seconds) == set(session.fitted()) and all(t >= 0 for t in session.seconds.values())
    m0_prior = session.fitted()["m0"].prior  # type: ignore[attr-defined]
    assert m0_prior.measurements["dose"] == ((41.0, 1.0), (43.0, 1.0), (44.0, 1.0), (45.0, 1.0), (46.0, 1.0))

    def fit_then_break(name: str, prior: SessionPrior | None) -> Any:
        if prior is not None and prior.n_micrographs >= 5 and name == "m0":
            raise RuntimeError("device lost")
        return _Fitted(name, prior)

    with pytest.raises(RuntimeError):  # not recoverable: raised
        fit_session(names, fit_then_break)


def test_partial_pooling_by_hand() -> None:
    prior = _session("coherence_envelope", [(10.0, 1.0), (12.0, 1.0), (14.0, 1.0), (16.0, 1.0), (18.0, 1.0)])
    # Predictive N(14, 11) × N(20, 9): the conjugate posterior.
    weak = shrink_towards_prior({"coherence_envelope": (20.0, 3.0)}, prior)["coherence_envelope"]
    assert weak[0] == pytest.approx((14.0 / 11.0 + 20.0 / 9.0) / (1 / 11.0 + 1 / 9.0))
    assert weak[1] == pytest.approx(math.sqrt(1.0 / (1 / 11.0 + 1 / 9.0)))
    # A precise measurement barely moves: by the fraction σ²/(σ² + 11).
    precise = shrink_towards_prior({"coherence_envelope": (20.0, 0.1)}, prior)["coherence_envelope"]
    assert precise[0] == pytest.approx(20.0 - 6.0 * 0.01 / 11.01)
    # CTF geometry is never pooled; nodes without a population pass unchanged.
    untouched = {"defocus": (20000.0, 500.0), "dose": (40.0, 3.0)}
    assert shrink_towards_prior(untouched, prior) == untouched


def test_pooling_spares_a_micrograph_that_differs_from_the_session() -> None:
    prior = _session("coherence_envelope", [(10.0, 1.0), (12.0, 1.0), (14.0, 1.0), (16.0, 1.0), (18.0, 1.0)])
    # Predictive σ √(9 + 11) ≈ 4.5: 40 is 5.8 σ from 14, beyond PRIOR_CONSISTENCY_Z = 3, kept as measured.
    assert shrink_towards_prior({"coherence_envelope": (40.0, 3.0)}, prior)["coherence_envelope"] == (40.0, 3.0)
    # 27 is 2.9 σ away: pooled.
    assert shrink_towards_prior({"coherence_envelope": (27.0, 3.0)}, prior)["coherence_envelope"][0] < 27.0


def test_a_node_that_varies_over_the_session_is_not_pulled_to_its_best_measured_micrographs() -> None:
    # B varies from micrograph to micrograph; the low ones are measured precisely, the high ones not
    # (their rings stop early).  A common-value (fixed-effect) prior would be ≈ 21 Å² with σ < 1 and pull
    # a weakly measured 170 Å² micrograph there; the hierarchical prior learns τ from the scatter (the
    # sample SD of the six values is 47 Å²).
    prior = _session(
        "coherence_envelope", [(20.0, 1.0), (22.0, 1.0), (55.0, 2.5), (80.0, 6.0), (110.0, 25.0), (140.0, 30.0)]
    )
    population = prior.population("coherence_envelope")
    assert population is not None and math.sqrt(population.between_variance) > 30.0
    fixed_effect_mean = (20.0 + 22.0 + 55.0 / 6.25 + 80.0 / 36 + 110.0 / 625 + 140.0 / 900) / (
        2.0 + 1 / 6.25 + 1 / 36 + 1 / 625 + 1 / 900
    )
    assert fixed_effect_mean < 25.0
    high = shrink_towards_prior({"coherence_envelope": (170.0, 40.0)}, prior)["coherence_envelope"]
    assert 120.0 < high[0] < 170.0 and high[1] < 40.0


def test_the_session_ice_power_pins_a_weakly_measured_bfactor() -> None:
    """Rings only to 10 Å: B and the ice amplitude trade off (wide σ).  A session whose ice is known —
    η = ln(a/⟨counts⟩²) = ln(contrast²) for this specimen — pins the ice term: σ_B falls, B stays right.
    The micrograph's own η is reported unchanged by the prior (never fed back into it)."""
    syn = synthesize_micrograph(bfactor_angstrom2=80.0, seed=0, ice_shaped_specimen=True, contrast_sd=0.2)
    coarse = replace(syn.ctf_fit, fit_resolution_angstrom=7.0)
    alone = fit_priors(syn.image, coarse, syn.microscope, max_iterations=1)
    sigma_alone = alone.values()["coherence_envelope"][1]
    assert alone.ice_specimen_power is not None
    eta, sigma_eta = alone.ice_specimen_power
    eta_true = math.log(0.2**2)  # a = dose² · contrast², ⟨counts⟩ = dose
    assert abs(eta - eta_true) < 3.0 * sigma_eta + 0.05
    known_ice = _session(ICE_SPECIMEN_POWER, [(eta_true + d, 0.02) for d in (-0.01, 0.0, 0.01, 0.0, 0.005)])
    pooled = fit_priors(syn.image, coarse, syn.microscope, max_iterations=1, session_prior=known_ice)
    b_pooled, sigma_pooled = pooled.values()["coherence_envelope"]
    assert sigma_pooled < 0.5 * sigma_alone
    assert abs(b_pooled - 80.0) < 3.0 * sigma_pooled
    assert pooled.ice_specimen_power == alone.ice_specimen_power
    assert pooled.session_measurements()[ICE_SPECIMEN_POWER] == alone.ice_specimen_power
    # Rings to 3.2 Å: this micrograph measures its own ice (σ_η ≈ 0.3).  A session whose ice has 10× the
    # power is inconsistent with it (> 3 predictive σ): B as measured alone.
    fine = replace(syn.ctf_fit, fit_resolution_angstrom=3.2)
    own = fit_priors(syn.image, fine, syn.microscope, max_iterations=1)
    thicker = math.log(10.0)
    other_ice = _session(ICE_SPECIMEN_POWER, [(eta_true + thicker + d, 0.02) for d in (-0.01, 0.0, 0.01, 0.0, 0.0)])
    apart = fit_priors(syn.image, fine, syn.microscope, max_iterations=1, session_prior=other_ice)
    assert apart.values()["coherence_envelope"] == own.values()["coherence_envelope"]


def test_bfactor_is_unconstrained_where_the_specimen_explains_the_falloff() -> None:
    # An ice-shaped specimen under B = 80 Å²: the two-component model is exact, B comes out exact.
    syn = synthesize_micrograph(bfactor_angstrom2=80.0, seed=0, ice_shaped_specimen=True)
    fine = estimate_nodes(syn.image, syn.ctf_fit, syn.microscope, None, None, None)["coherence_envelope"]
    assert fine[0] == pytest.approx(80.0, rel=1e-3)
    # Signal only to 10 Å: little of the ice term shows, B trades off with the specimen; σ grows.
    coarse = replace(syn.ctf_fit, fit_resolution_angstrom=10.0)
    wide = estimate_nodes(syn.image, coarse, syn.microscope, None, None, None)["coherence_envelope"]
    assert wide[1] > 4.0 * fine[1]
    # A white specimen (no ice term at all): the fall-off may be the specimen's or the envelope's;
    # nothing separates them, and σ says so.
    white = synthesize_micrograph(bfactor_angstrom2=80.0, seed=0)
    unknown = estimate_nodes(white.image, white.ctf_fit, white.microscope, None, None, None)["coherence_envelope"]
    assert unknown[1] == UNCONSTRAINED_BFACTOR_SIGMA_ANGSTROM2


def test_ice_structure_loss_grows_with_the_ice_signal() -> None:
    # An ice-shaped specimen: its phase contrast is charged to ice_thickness, more when it is stronger,
    # nothing when the fit does not reach the band (beyond 8 Å) where ice can be told from particles.
    losses = []
    for contrast in (0.1, 0.3):
        syn = synthesize_micrograph(contrast_sd=contrast, seed=0, ice_shaped_specimen=True)
        nodes = estimate_nodes(syn.image, syn.ctf_fit, syn.microscope, None, None, None)
        losses.append(degradation_losses(nodes, syn.ctf_fit, syn.microscope, syn.image.shape)["ice_thickness"])
    assert 0.0 < losses[0] < losses[1]
    coarse = replace(syn.ctf_fit, fit_resolution_angstrom=10.0)
    nodes = estimate_nodes(syn.image, coarse, syn.microscope, None, None, None)
    white = degradation_losses(nodes, coarse, syn.microscope, syn.image.shape)["ice_thickness"]
    assert white < 0.1 * losses[0]


# --------------------------------------------------------------------------- loop and weights
def test_loop_converges_and_records_every_iteration() -> None:
    syn = synthesize_micrograph(seed=6)
    priors = fit_priors(syn.image, _wrong_start(syn.ctf_fit), syn.microscope, max_iterations=10)
    assert priors.converged
    assert 1 <= priors.n_iterations <= 10
    assert len(priors.iterations) == priors.n_iterations + 1
    final = priors.values()
    last, before = priors.iterations[-1], priors.iterations[-2]
    for node in CAUSE_NODES:
        assert last[node] == final[node][0]
        assert abs(last[node] - before[node]) < final[node][1]
    again = fit_priors(syn.image, _wrong_start(syn.ctf_fit), syn.microscope, max_iterations=10)
    assert again.values() == priors.values()  # deterministic


def test_loop_flags_non_convergence() -> None:
    syn = synthesize_micrograph(seed=7)
    bad = _wrong_start(syn.ctf_fit, noise_factor=5.0)
    priors = fit_priors(syn.image, bad, syn.microscope, max_iterations=1)
    assert not priors.converged
    assert priors.n_iterations == 1 and len(priors.iterations) == 2
    with pytest.raises(ValueError, match="max_iterations"):
        fit_priors(syn.image, bad, syn.microscope, max_iterations=0)


def test_weights_sum_to_one_and_follow_the_varied_factor() -> None:
    weights = {}
    for b_true in (50.0, 200.0):
        syn = synthesize_micrograph(bfactor_angstrom2=b_true, seed=8, ice_shaped_specimen=True)
        priors = fit_priors(syn.image, syn.ctf_fit, syn.microscope, drift_total_px=1.0)
        weights[b_true] = _weights(priors.estimates)
        assert sum(weights[b_true].values()) == pytest.approx(1.0)
        assert all(w >= 0.0 for w in weights[b_true].values())
    change = {node: weights[200.0][node] - weights[50.0][node] for node in CAUSE_NODES}
    assert max(change, key=lambda node: change[node]) == "coherence_envelope"

    syn = synthesize_micrograph(seed=8)
    nodes = estimate_nodes(syn.image, syn.ctf_fit, syn.microscope, None, 0.5, None)
    moved = dict(nodes, beam_induced_motion=(4.0, 0.5))
    w_small = degradation_weights(nodes, syn.ctf_fit, syn.microscope, syn.image.shape)
    w_large = degradation_weights(moved, syn.ctf_fit, syn.microscope, syn.image.shape)
    change = {node: w_large[node] - w_small[node] for node in CAUSE_NODES}
    assert max(change, key=lambda node: change[node]) == "beam_induced_motion"


def _flat_spectrum_fit(signal: float, floor: float, inelastic: float = 0.0) -> tuple[CtfFit, dict[str, Any]]:
    """A 256² micrograph's true CTF with a hand-made spectral model: flat signal, floor F and an inelastic
    background ``inelastic``·F·exp(−(k/0.02 Å⁻¹)²); fit to 10 Å, so no ice phase contrast is split off."""
    syn = synthesize_micrograph(seed=8)
    f = syn.ctf_fit.spectral_model.frequency_per_angstrom
    background = floor * (1.0 + inelastic * np.exp(-((f / 0.02) ** 2)))
    model = SpectralModel(f, np.full_like(f, signal), background, floor, 1, f.size - 1)
    fit = replace(syn.ctf_fit, spectral_model=model, fit_resolution_angstrom=10.0)
    px = syn.microscope.pixel_size_angstrom
    ky, kx = frequency_grid_per_angstrom(syn.image.shape, px, rfft=True)
    k = np.hypot(ky, kx).ravel()
    band = (k >= f[1]) & (k <= 1.0 / ATTRIBUTION_BAND_ANGSTROM)
    transfer = expected_ctf_squared(syn.image.shape, fit, syn.microscope).numpy().astype(np.float64).ravel()
    return fit, {"k": k[band], "transfer": transfer[band], "px": px, "shape": syn.image.shape}


def _nodes(**values: float) -> dict[str, tuple[float, float]]:
    nodes = {node: (0.0, 1.0) for node in CAUSE_NODES}
    nodes.update({node: (value, 1.0) for node, value in values.items()})
    return nodes


def test_information_losses_have_their_known_values() -> None:
    # Pure shot noise (F = ⟨counts⟩), no envelope, blur, ice or heterogeneity: only the CTF and the dose
    # below its optimal exposure lose information; ψ = S·C/F per sample, I = ln(1 + ψ).
    floor, signal = 40.0, 8.0
    fit, grid = _flat_spectrum_fit(signal, floor)
    microscope = MICROSCOPE  # synthesize_micrograph's, which _flat_spectrum_fit uses
    nodes = _nodes(dose=floor / grid["px"] ** 2)
    losses = degradation_losses(nodes, fit, microscope, grid["shape"])
    psi = signal * grid["transfer"] / floor
    for node in (
        "beam_induced_motion",
        "ice_thickness",
        "detector_noise",
        "coherence_envelope",
        "sample_heterogeneity",
    ):
        assert losses[node] == 0.0
    ctf_loss = np.mean(np.log1p(signal / floor) - np.log1p(psi))
    assert losses["defocus"] + losses["astigmatism"] + losses["spherical_aberration"] == pytest.approx(ctf_loss)
    assert losses["defocus"] > 10.0 * losses["astigmatism"] > 0.0  # 14.5 k vs 1 k Å of phase
    exposure = np.maximum(optimal_exposure_e_per_angstrom2(grid["k"]) / (floor / grid["px"] ** 2), 1.0)
    assert losses["dose"] == pytest.approx(np.mean(np.log1p(exposure * psi) - np.log1p(psi)))
    # Above the optimal exposure at every frequency of the band (≈ 2.5 k e/Å² at its first ring), more
    # electrons would only add damage: dose loses nothing.
    many = degradation_losses(_nodes(dose=1e5), fit, microscope, grid["shape"])
    assert many["dose"] == 0.0

    # Every other cause on, one term each: envelope B, a 3-px blur, an excess detector floor (F = 1.3
    # ⟨counts⟩), an inelastic background and tile-to-tile variation CV.
    b_factor, drift, cv = 60.0, 3.0, 0.5
    fit, grid = _flat_spectrum_fit(signal, floor, inelastic=0.5)
    counts = floor / 1.3
    nodes = _nodes(
        dose=counts / grid["px"] ** 2,
        coherence_envelope=b_factor,
        beam_induced_motion=drift,
        sample_heterogeneity=cv,
    )
    losses = degradation_losses(nodes, fit, microscope, grid["shape"])
    k, c = grid["k"], grid["transfer"]
    noise = fit.spectral_model.interpolate(k)[1]  # F + the inelastic background, between the model's rings
    inelastic = noise - floor
    psi = signal * c / noise
    blur = ring_average_sinc2(k, drift, grid["px"])

    def gain(psi_after: np.ndarray) -> float:
        return float(np.mean(np.log1p(psi_after) - np.log1p(psi)))

    assert losses["coherence_envelope"] == pytest.approx(gain(psi * np.exp(b_factor * k**2 / 2.0)))
    assert losses["beam_induced_motion"] == pytest.approx(gain(psi / blur))
    assert losses["detector_noise"] == pytest.approx(gain(signal * c / (counts + inelastic)))
    assert losses["ice_thickness"] == pytest.approx(gain(signal * c / floor))
    assert losses["sample_heterogeneity"] == pytest.approx(
        float(np.mean(psi**2 * cv**2 / (2 * (1 + psi) ** 2))), rel=1e-4
    )
    # The envelope is charged for signal that exists: a hundredfold weaker signal loses ≈ a hundredth
    # (low-SNR limit ψ·(e^{Bk²/2} − 1)), not the same B k²/2 as the log-SNR loss would.
    faint, _ = _flat_spectrum_fit(signal / 100.0, floor, inelastic=0.5)
    weak = degradation_losses(nodes, faint, microscope, grid["shape"])["coherence_envelope"]
    assert weak == pytest.approx(float(np.mean(psi / 100.0 * np.expm1(b_factor * k**2 / 2.0))), rel=0.02)
    assert weak < 0.02 * float(np.mean(b_factor * k**2 / 2.0))


def test_optimal_exposure_follows_grant_and_grigorieff() -> None:
    # N_e(k) = 0.245 k^−1.665 + 2.81 e/Å² (eLife 2015; 4:e06980), optimum 2.51 N_e: 35.5 e/Å² at 10 Å,
    # 97 e/Å² at 20 Å, falling towards 2.51·2.81 = 7.05 e/Å² at high resolution.
    values = optimal_exposure_e_per_angstrom2(np.array([1 / 10.0, 1 / 20.0, 1 / 1.0]))
    assert values == pytest.approx([35.5, 97.2, 2.51 * (0.245 + 2.81)], abs=0.1)


def test_priors_are_json_ready_and_feed_the_session_prior() -> None:
    syn = synthesize_micrograph(seed=9)
    first = fit_priors(syn.image, syn.ctf_fit, syn.microscope, dose_e_per_angstrom2=17.8)
    text = json.dumps(first.graph_node_link, allow_nan=False)
    data = json.loads(text)
    by_id = {node["id"]: node for node in data["nodes"]}
    assert set(by_id) == set(CAUSE_NODES) | set(EFFECT_NODES)
    assert by_id["coherence_envelope"]["weight"] == pytest.approx(_weights(first.estimates)["coherence_envelope"])
    assert len(data["links"]) == build_causal_graph().number_of_edges()

    session = None
    for _ in range(5):  # five micrographs' worth: enough for a population (MIN_PRIOR_MICROGRAPHS)
        session = update_session_prior(session, first.session_measurements())
    second = fit_priors(syn.image, syn.ctf_fit, syn.microscope, session_prior=session)
    assert set(second.values()) == set(CAUSE_NODES)
    for node in ("defocus", "astigmatism"):
        assert second.values()[node] == first.values()[node]


def test_sinc2_average_of_a_whole_grid_matches_the_direct_average() -> None:
    """Above the table size the blur average is interpolated from a 1-D table: within 1e-5 of the direct
    90-azimuth average at every frequency, for blurs up to 40 px; and it is 1 at k = 0."""
    rng = np.random.default_rng(3)
    k = rng.uniform(0.0, 0.5, size=20000)
    k[0] = 0.0
    for drift_px in (0.5, 4.0, 40.0):
        tabulated = ring_average_sinc2(k, drift_px, 1.0)
        direct = np.concatenate([ring_average_sinc2(chunk, drift_px, 1.0) for chunk in np.split(k, 5)])
        np.testing.assert_allclose(tabulated, direct, atol=1e-5)
        assert tabulated[0] == pytest.approx(1.0)


def test_a_large_frame_runs_the_loop_on_its_central_crop() -> None:
    syn = synthesize_micrograph(shape_px=(512, 512), seed=8)
    start = _wrong_start(syn.ctf_fit)
    whole = fit_priors(syn.image, start, syn.microscope, max_fit_px=None)
    cropped = fit_priors(syn.image, start, syn.microscope, max_fit_px=256)
    assert cropped.converged and whole.converged
    # The refined model lives on the crop's rings (width 1/(256 px)), valid for the whole frame's filters.
    ring_width = 1.0 / (256 * syn.microscope.pixel_size_angstrom)
    assert cropped.spectral_model.frequency_per_angstrom[1] == pytest.approx(ring_width)
    assert whole.spectral_model.frequency_per_angstrom[1] == pytest.approx(ring_width / 2)
    a, b = whole.values(), cropped.values()
    # Dose and heterogeneity are measured on the whole frame either way; the spectral nodes on a quarter
    # of the Fourier samples agree within their (larger) uncertainty.
    assert b["dose"] == a["dose"]
    for node in ("coherence_envelope", "detector_noise", "ice_thickness"):
        assert abs(a[node][0] - b[node][0]) < 3.0 * math.hypot(a[node][1], b[node][1]), node
    # The noise floor's σ comes from the number of floor-band samples: a quarter of them, twice the σ.
    assert b["detector_noise"][1] == pytest.approx(2.0 * a["detector_noise"][1], rel=0.05)
    # A frame that fits is analysed whole: the same numbers as with no limit.
    assert fit_priors(syn.image, start, syn.microscope, max_fit_px=512).values() == a
