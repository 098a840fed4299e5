"""Attribution of the causal graph: does the varied factor's node move, and only it?

    .venv/bin/python benchmarks/bench_attribution.py [--size 1024] [--replicates 3] [--seed 2026] [--tag TAG]

Writes ``benchmarks/results/attribution.json`` and ``attribution.md`` (``attribution_<TAG>.*`` with ``--tag``)
and prints the Markdown tables.
No network, deterministic seeds, one torch thread (``--threads``).

Design.  One factor at a time, the others fixed at mid values: mean defocus 1.5 µm, no astigmatism
(``max_astigmatism_angstrom = 0``), B = 80 Å², ice 40 nm, 40 e⁻/Å², read noise 0.5 counts, physical
contrast (no ``target_snr``, so dose and ice act as they physically do).  Each ``SimulationConfig`` range is
set to a single value.  Six levels per sweep; replicate r uses the seed (seed, r) at every level and in every
sweep, so the levels of a sweep differ only in the varied factor.

=================  ===============================  ===========================================
sweep              levels                           node(s) expected to carry it
=================  ===============================  ===========================================
ice_thickness      10, 28, 46, 64, 82, 100 nm       ice_thickness
bfactor            20, 50, 80, 110, 140, 170 Å²     coherence_envelope
read_noise         0, 1, 2, 3, 4, 5 counts          detector_noise (or dose)
dose               10, 20, 40, 60, 80, 100 e⁻/Å²    dose (or detector_noise)
defocus            0.5, 1, 1.5, 2, 2.5, 3 µm        defocus
drift              0, 4, 8, 12, 16, 20 px path      beam_induced_motion
=================  ===============================  ===========================================

Drift: ``simulate_movie`` (16 electron-counted frames, drift path length = the level) summed *without*
alignment, i.e. the blur stays in the image.  ``fit_priors`` reads ``drift_total_px`` as the drift from
motion correction: it sets beam_induced_motion to that value (σ assumed) and divides the sinc² blur out of
the B-factor.  So the drift sweep runs twice on the same sums: ``drift`` with ``drift_total_px=None``
(the node is *measured* from the spectrum's 2θ anisotropy: the test) and ``drift_given`` with the true
path length passed (the node echoes the input; it shows what the weights and B do with it).

Every case: ``estimate_ctf(image, microscope, nominal_defocus)`` then ``causal.fit_priors(image, fit,
microscope, dose_e_per_angstrom2=<header dose>, drift_total_px=...)``; every node's value, σ and weight,
``converged`` and ``n_iterations`` are recorded.

Two modes on the same images and CTF fits.  *Alone*: each exposure without a session prior.  *As a
session*: the sweep's exposures as one batch in a random arrival order (``run_session``), each fitted with
the session prior of those before it and then added to it, and the first ``MIN_PRIOR_MICROGRAPHS``
arrivals, which had no population to pool with, fitted again with the prior of all the others, as the
``causal_priors`` asset does; each sweep runs in ``--orders`` seeded orders (default 5), reported as median and range;
the warehouse's ``estimate`` (partially pooled) and ``measured_value`` (the micrograph alone, except for the
ice power that the B-factor fit pools) are both analysed.  A sweep holds everything but its factor fixed, so
the session prior is as strong as it can be for the fixed factors and as weak as the data make it for the
varied one (its learned between-micrograph spread τ is the sweep's range).

Per sweep: (a) the node whose weight changed most between the lowest and highest level (replicate means)
must be the varied factor's node; (b) Spearman ρ (``scipy.stats.spearmanr``, all levels × replicates)
between the true level and the expected node's estimated value, goal ≥ 0.9 (ρ of its weight also given);
(c) the loop stops within ``max_iterations`` on every case, non-converged fits counted and listed.
Beside the goals, where the truth is in the node's own units (B, dose, defocus, drift): whether the
reported σ covers the error, RMS of z = (estimate − truth)/σ and the share of cases within ±2σ
(:func:`calibration`).  For the drift measured from the spectrum the truth is the blur-equivalent straight
length of the frames' shifts (:func:`blur_equivalent_px`), which is what the anisotropy measures; for
``drift_given`` it is the path length passed in.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.stats
import torch
from _common import write_results

from cryodecon_science import causal
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph, simulate_movie

GOAL_SPEARMAN = 0.9
MAX_ITERATIONS = 10
N_ORDERS = 5


@dataclass(frozen=True)
class Sweep:
    name: str
    unit: str
    levels: tuple[float, ...]
    expected_nodes: tuple[str, ...]  # first = the node whose value is rank-correlated with the level
    movie: bool = False
    drift_given: bool = False
    truth_key: str | None = None  # the case's truth in the primary node's units, for the σ calibration

    def config(self, base: SimulationConfig, level: float) -> SimulationConfig:
        if self.name == "ice_thickness":
            return replace(base, ice_thickness_range_nm=(level, level))
        if self.name == "bfactor":
            return replace(base, bfactor_range_angstrom2=(level, level))
        if self.name == "read_noise":
            return replace(base, read_noise_std_counts=level)
        if self.name == "dose":
            return replace(base, dose_e_per_angstrom2=level)
        if self.name == "defocus":
            return replace(base, defocus_range_angstrom=(level, level))
        if self.name in ("drift", "drift_given"):
            return replace(base, drift_total_px_range=(level, level))
        raise ValueError(self.name)


DRIFT_PX = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0)
"""Levels of both drift sweeps: they run on the same movies (``run_case``'s cache is keyed by level)."""
SWEEPS = (
    Sweep("ice_thickness", "nm", (10.0, 28.0, 46.0, 64.0, 82.0, 100.0), ("ice_thickness",)),
    Sweep(
        "bfactor", "Å²", (20.0, 50.0, 80.0, 110.0, 140.0, 170.0), ("coherence_envelope",), truth_key="bfactor_angstrom2"
    ),
    Sweep("read_noise", "counts", (0.0, 1.0, 2.0, 3.0, 4.0, 5.0), ("detector_noise", "dose")),
    Sweep(
        "dose",
        "e/Å²",
        (10.0, 20.0, 40.0, 60.0, 80.0, 100.0),
        ("dose", "detector_noise"),
        truth_key="dose_e_per_angstrom2",
    ),
    Sweep(
        "defocus",
        "Å",
        (5000.0, 10000.0, 15000.0, 20000.0, 25000.0, 30000.0),
        ("defocus",),
        truth_key="mean_defocus_angstrom",
    ),
    Sweep("drift", "px", DRIFT_PX, ("beam_induced_motion",), movie=True, truth_key="drift_blur_equivalent_px"),
    Sweep(
        "drift_given",
        "px",
        DRIFT_PX,
        ("beam_induced_motion",),
        movie=True,
        drift_given=True,
        truth_key="drift_total_px",
    ),
)


def base_config(size: int) -> SimulationConfig:
    """Every factor at its mid value, each range a single value (module docstring)."""
    return SimulationConfig(
        shape_px=(size, size),
        defocus_range_angstrom=(15000.0, 15000.0),
        max_astigmatism_angstrom=0.0,
        bfactor_range_angstrom2=(80.0, 80.0),
        ice_thickness_range_nm=(40.0, 40.0),
        dose_e_per_angstrom2=40.0,
        read_noise_std_counts=0.5,
        drift_total_px_range=(0.0, 0.0),
    )


def blur_equivalent_px(shifts_px: np.ndarray | None) -> float:
    """Length d (px) of the straight uniform blur whose kernel has the same largest variance as the frames'
    shifts: the summed movie's blur kernel is the mean of deltas at the shifts, with covariance Σ; a straight
    blur of length d has variance d²/12 along it, and both transfer functions are 1 − 4π² kᵀΣk to second
    order in k, so d = √(12 λ_max(Σ)).  This is what the spectrum's anisotropy measures
    (``causal.nodes``, blur from the anisotropy); a curved path of length L gives d < L."""
    if shifts_px is None:
        return 0.0
    covariance = np.cov(np.asarray(shifts_px, dtype=np.float64).T, bias=True)
    return float(math.sqrt(12.0 * max(float(np.linalg.eigvalsh(covariance)[-1]), 0.0)))


@dataclass(frozen=True)
class Exposure:
    """One simulated case with its CTF fit, kept so that both modes fit the same images."""

    name: str
    level: float
    seed: tuple[int, int]
    image: np.ndarray
    fit: Any
    truth: dict[str, float]
    drift_passed: float | None
    seconds: dict[str, float]


def simulate_case(
    sweep: Sweep, config: SimulationConfig, level: float, seed: tuple[int, int], movies: dict[Any, Any]
) -> Exposure:
    """Simulate one level and estimate its CTF."""
    name = f"{sweep.name}_{seed[1]}_{level:g}".replace(".", "p")
    t = time.perf_counter()
    if sweep.movie:
        key = (level, seed)  # drift and drift_given share the same movies
        if key not in movies:
            movies[key] = simulate_movie(config, name, seed)
        sim = movies[key]
        image = sim.frames.sum(axis=0, dtype=np.float64).astype(np.float32)  # uncorrected: blur stays
    else:
        sim = simulate_micrograph(config, name, seed)
        image = sim.counts
    simulate_seconds = time.perf_counter() - t
    t = time.perf_counter()
    fit = estimate_ctf(image, config.microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom)
    ctf_seconds = time.perf_counter() - t
    truth = {
        "mean_defocus_angstrom": sim.truth.ctf.mean_defocus_angstrom,
        "bfactor_angstrom2": sim.truth.bfactor_angstrom2,
        "ice_thickness_nm": sim.truth.ice_thickness_nm,
        "dose_e_per_angstrom2": sim.truth.dose_e_per_angstrom2,
        "drift_total_px": sim.truth.drift_total_px,
        "drift_net_px": (
            float(np.linalg.norm(sim.truth.drift_shifts_px[-1])) if sim.truth.drift_shifts_px is not None else 0.0
        ),
        "drift_blur_equivalent_px": blur_equivalent_px(sim.truth.drift_shifts_px),
        "snr": sim.truth.snr,
    }
    drift = sim.truth.drift_total_px if sweep.drift_given else None
    return Exposure(name, level, seed, image, fit, truth, drift, {"simulate": simulate_seconds, "ctf": ctf_seconds})


def run_case(
    exposure: Exposure, config: SimulationConfig, session_prior: causal.SessionPrior | None = None
) -> tuple[dict[str, Any], causal.CausalPriors]:
    """Fit the priors of one exposure (with the session's prior so far, if any); everything recorded."""
    t = time.perf_counter()
    priors = causal.fit_priors(
        exposure.image,
        exposure.fit,
        config.microscope,
        dose_e_per_angstrom2=config.dose_e_per_angstrom2,
        drift_total_px=exposure.drift_passed,
        session_prior=session_prior,
        max_iterations=MAX_ITERATIONS,
    )
    priors_seconds = time.perf_counter() - t
    fit = exposure.fit
    record = {
        "name": exposure.name,
        "level": exposure.level,
        "seed": list(exposure.seed),
        "truth": exposure.truth,
        "drift_total_px_passed": exposure.drift_passed,
        "ctf": {
            "mean_defocus_angstrom": fit.ctf.mean_defocus_angstrom,
            "astigmatism_angstrom": fit.ctf.astigmatism_angstrom,
            "fit_resolution_angstrom": fit.fit_resolution_angstrom,
        },
        "nodes": {
            e.node: {"value": e.value, "unit": e.unit, "sigma": e.sigma, "weight": e.weight} for e in priors.estimates
        },
        "ice_specimen_power": priors.ice_specimen_power,
        "converged": priors.converged,
        "n_iterations": priors.n_iterations,
        "seconds": {**exposure.seconds, "priors": priors_seconds},
    }
    return record, priors


def run_session(
    exposures: list[Exposure], configs: dict[str, SimulationConfig], order_seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The sweep's exposures as one session (one batch), in a seeded random arrival order, fitted by
    ``causal.fit_session`` as ``causal_priors`` fits a batch: each with the prior of those before it, then the
    first ones, which had nothing to pool with, again with the prior of all the others.  Returns the
    records of the estimates (partially pooled, what the warehouse's ``estimate`` column holds) and of the
    measurements (each micrograph alone except for the ice power its B-factor fit pools), both in the
    sweep's order; ``refitted`` marks the first ones.  Any failed fit is raised."""
    order = [int(i) for i in np.random.default_rng(order_seed).permutation(len(exposures))]
    by_name = {exposure.name: exposure for exposure in exposures}
    records: dict[str, dict[str, Any]] = {}  # each micrograph's latest fit (its refit, where it had one)

    def fit(name: str, session_prior: causal.SessionPrior | None) -> causal.CausalPriors:
        records[name], priors = run_case(by_name[name], configs[name], session_prior)
        return priors

    arrivals = [exposures[i].name for i in order]
    session = causal.fit_session(arrivals, fit, recoverable=())
    failed = [outcome for outcome in session.priors.values() if isinstance(outcome, Exception)]
    if failed:
        raise failed[0]
    fitted = session.fitted()
    estimates: list[dict[str, Any]] = []
    measured: list[dict[str, Any]] = []
    for exposure in exposures:
        name = exposure.name
        record = {**records[name], "arrival": arrivals.index(name), "refitted": name in session.refitted}
        estimates.append(record)
        measured.append(
            {
                **record,
                "nodes": {
                    e.node: {"value": e.value, "unit": e.unit, "sigma": e.sigma, "weight": e.weight}
                    for e in fitted[name].measurements
                },
            }
        )
    return estimates, measured


def analyse(sweep: Sweep, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """(a) largest weight change, (b) Spearman ρ, (c) convergence, for one sweep."""
    nodes = list(causal.CAUSE_NODES)
    low, high = min(sweep.levels), max(sweep.levels)

    def mean_weight(level: float, node: str) -> float:
        return statistics.fmean(c["nodes"][node]["weight"] for c in cases if c["level"] == level)

    change = {n: mean_weight(high, n) - mean_weight(low, n) for n in nodes}
    largest = max(nodes, key=lambda n: abs(change[n]))
    primary = sweep.expected_nodes[0]
    levels = [c["level"] for c in cases]
    values = [c["nodes"][primary]["value"] for c in cases]
    weights = [c["nodes"][primary]["weight"] for c in cases]
    rho_value = float(scipy.stats.spearmanr(levels, values).statistic)
    rho_weight = float(scipy.stats.spearmanr(levels, weights).statistic)
    not_converged = [c["name"] for c in cases if not c["converged"]]
    per_level = []
    for level in sweep.levels:
        at = [c for c in cases if c["level"] == level]
        top = statistics.mode(max(nodes, key=lambda n, c=c: c["nodes"][n]["weight"]) for c in at)
        per_level.append(
            {
                "level": level,
                "value_mean": statistics.fmean(c["nodes"][primary]["value"] for c in at),
                "sigma_mean": statistics.fmean(c["nodes"][primary]["sigma"] for c in at),
                "weight_mean": statistics.fmean(c["nodes"][primary]["weight"] for c in at),
                "top_weight_node": top,
                "fit_resolution_angstrom_mean": statistics.fmean(c["ctf"]["fit_resolution_angstrom"] for c in at),
                "drift_net_px_mean": statistics.fmean(c["truth"]["drift_net_px"] for c in at),
                "n_iterations": [c["n_iterations"] for c in at],
                "converged": [c["converged"] for c in at],
            }
        )
    return {
        "calibration": calibration(sweep, cases),
        "levels": list(sweep.levels),
        "unit": sweep.unit,
        "expected_nodes": list(sweep.expected_nodes),
        "weight_change_low_to_high": change,
        "largest_weight_change_node": largest,
        "attribution_pass": largest in sweep.expected_nodes,
        "spearman_node": primary,
        "spearman_level_vs_value": rho_value,
        "spearman_level_vs_weight": rho_weight,
        "spearman_pass": bool(rho_value >= GOAL_SPEARMAN),
        "n_cases": len(cases),
        "max_n_iterations": max(c["n_iterations"] for c in cases),
        "stopped_within_max_iterations": all(c["n_iterations"] <= MAX_ITERATIONS for c in cases),
        "not_converged": len(not_converged),
        "not_converged_cases": not_converged,
        "per_level": per_level,
    }


def calibration(sweep: Sweep, cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Does the expected node's σ cover its error?  z = (estimate − truth)/σ over all cases of the sweep.

    For an honest σ, the RMS of z is ≈ 1 and ≈ 95 % of the cases lie within ±2σ; larger values mean the
    reported σ understates the error (model error, not only noise).  Only for sweeps whose truth is in
    the node's own units (``Sweep.truth_key``); None otherwise.
    """
    if sweep.truth_key is None:
        return None
    node = sweep.expected_nodes[0]
    errors = np.array([c["nodes"][node]["value"] - c["truth"][sweep.truth_key] for c in cases])
    sigmas = np.array([c["nodes"][node]["sigma"] for c in cases])
    z = errors / np.maximum(sigmas, 1e-12)
    return {
        "node": node,
        "truth_key": sweep.truth_key,
        "rms_z": float(np.sqrt(np.mean(z**2))),
        "fraction_within_2_sigma": float(np.mean(np.abs(z) <= 2.0)),
        "median_abs_error": float(np.median(np.abs(errors))),
        "median_sigma": float(np.median(sigmas)),
        "z": z.tolist(),
    }


def compact_session_cases(
    sweep: Sweep, estimates: list[dict[str, Any]], measured: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One order's cases for the results file: arrival, the expected node's estimate and measurement, the ice
    power, convergence (the alone-mode records hold everything else about the same exposures)."""
    node = sweep.expected_nodes[0]
    return [
        {
            "name": e["name"],
            "level": e["level"],
            "arrival": e["arrival"],
            "refitted": e["refitted"],
            "estimate": [e["nodes"][node]["value"], e["nodes"][node]["sigma"], e["nodes"][node]["weight"]],
            "measured": [m["nodes"][node]["value"], m["nodes"][node]["sigma"]],
            "ice_specimen_power": e["ice_specimen_power"],
            "converged": e["converged"],
            "n_iterations": e["n_iterations"],
        }
        for e, m in zip(estimates, measured, strict=True)
    ]


def session_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over the arrival orders of ρ (estimate, measured), (a), (b) and the σ calibration."""

    def spread(values: list[float]) -> dict[str, float]:
        return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}

    estimate = [r["estimate"] for r in runs]
    calibrated = [e["calibration"] for e in estimate if e.get("calibration")]
    return {
        "n_orders": len(runs),
        "rho_estimate": spread([e["spearman_level_vs_value"] for e in estimate]),
        "rho_measured": spread([r["measured"]["spearman_level_vs_value"] for r in runs]),
        "rho_weight": spread([e["spearman_level_vs_weight"] for e in estimate]),
        "orders_spearman_pass": sum(e["spearman_pass"] for e in estimate),
        "orders_attribution_pass": sum(e["attribution_pass"] for e in estimate),
        "largest_weight_change_nodes": sorted({e["largest_weight_change_node"] for e in estimate}),
        "weight_change_expected": spread([e["weight_change_low_to_high"][e["expected_nodes"][0]] for e in estimate]),
        "not_converged": sum(e["not_converged"] for e in estimate),
        "n_cases": sum(e["n_cases"] for e in estimate),
        "rms_z": spread([c["rms_z"] for c in calibrated]) if calibrated else None,
        "within_2_sigma": spread([c["fraction_within_2_sigma"] for c in calibrated]) if calibrated else None,
    }


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"


def markdown(result: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    lines = [
        f"Attribution on simulated {result['size_px']}² exposures, {result['replicates']} replicate(s) per level, "
        f"one factor at a time (fit_priors max_iterations = {MAX_ITERATIONS}).",
        "",
        "| sweep | levels | largest weight change (Δw) | expected node (Δw) | (a) | Spearman ρ (value / weight) "
        "| (b) ρ ≥ 0.9 | not converged | max iterations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["sweeps"].items():
        node = s["largest_weight_change_node"]
        levels = ", ".join(f"{v:g}" for v in s["levels"])
        change = s["weight_change_low_to_high"]
        expected = " / ".join(f"{n} ({change[n]:+.3f})" for n in s["expected_nodes"])
        lines.append(
            f"| {name} | {levels} {s['unit']} | {node} ({change[node]:+.3f}) | {expected} "
            f"| {mark(s['attribution_pass'])} "
            f"| {s['spearman_node']}: {s['spearman_level_vs_value']:.2f} / {s['spearman_level_vs_weight']:.2f} "
            f"| {mark(s['spearman_pass'])} | {s['not_converged']}/{s['n_cases']} | {s['max_n_iterations']} |"
        )
    if result.get("session"):
        n_orders = next(iter(result["session"].values()))["summary"]["n_orders"]
        lines += [
            "",
            f"As a session (one batch), in {n_orders} random arrival orders per sweep: each exposure fitted with the "
            "session prior of those before it, and the first "
            f"{causal.MIN_PRIOR_MICROGRAPHS}, which had none, again with the prior of all the others, as "
            "`causal_priors` does. *estimate*: the partially pooled values (the "
            "warehouse's `estimate`); *measured*: each micrograph alone except for the ice power its B-factor fit "
            "pools (`measured_value`). Median (min–max) over the orders.",
            "",
            "| sweep | expected node Δw | (a) orders passing | Spearman ρ estimate | ρ measured | ρ weight "
            "| (b) orders with ρ ≥ 0.9 | RMS z (estimate) | not converged |",
            "|---|---|---|---|---|---|---|---|---|",
        ]

        def med(d: dict[str, float], digits: int = 2) -> str:
            return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}–{d['max']:.{digits}f})"

        for name, both in result["session"].items():
            summary = both["summary"]
            n = summary["n_orders"]
            rms = med(summary["rms_z"]) if summary["rms_z"] else "–"
            lines.append(
                f"| {name} | {med(summary['weight_change_expected'], 3)} | {summary['orders_attribution_pass']}/{n} "
                f"| {med(summary['rho_estimate'])} | {med(summary['rho_measured'])} | {med(summary['rho_weight'])} "
                f"| {summary['orders_spearman_pass']}/{n} | {rms} | {summary['not_converged']}/{summary['n_cases']} |"
            )
    lines += ["", "Per level (replicate means of the expected node, each micrograph alone):", ""]
    lines += [
        "| sweep | level | node value ± σ | weight | top-weight node | fit res. (Å) | iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in result["sweeps"].items():
        for p in s["per_level"]:
            its = ",".join(
                str(n) + ("" if ok else "*") for n, ok in zip(p["n_iterations"], p["converged"], strict=True)
            )
            level = f"{p['level']:g} {s['unit']}"
            if name.startswith("drift"):
                level += f" (net {p['drift_net_px_mean']:.1f})"
            lines.append(
                f"| {name} | {level} | {s['spearman_node']} {fmt(p['value_mean'])} ± "
                f"{fmt(p['sigma_mean'])} | {p['weight_mean']:.3f} | {p['top_weight_node']} "
                f"| {p['fit_resolution_angstrom_mean']:.1f} | {its} |"
            )
    lines.append("")
    lines.append("(* = not converged within max_iterations; drift levels are path lengths, net = end-to-end shift)")
    lines += [
        "",
        "Uncertainty calibration of the expected node, where the truth is in its units (z = (estimate − truth)/σ "
        "over all cases; an honest σ gives RMS z ≈ 1 and ≈ 95 % within ±2σ):",
        "",
        "| sweep | node | RMS z | within ±2σ | median abs. error | median σ |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["sweeps"].items():
        cal = s.get("calibration")
        if cal:
            lines.append(
                f"| {name} | {cal['node']} | {cal['rms_z']:.2f} | {100 * cal['fraction_within_2_sigma']:.0f} % "
                f"| {fmt(cal['median_abs_error'])} {s['unit']} | {fmt(cal['median_sigma'])} {s['unit']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--replicates", type=int, default=3, help="seeds per level (same seeds at every level)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sweeps", nargs="+", default=[s.name for s in SWEEPS], choices=[s.name for s in SWEEPS])
    parser.add_argument("--orders", type=int, default=N_ORDERS, help="arrival orders of each sweep as a session")
    parser.add_argument("--tag", default="", help="suffix of the results files (attribution_<tag>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = base_config(args.size)
    movies: dict[Any, Any] = {}
    cases: dict[str, list[dict[str, Any]]] = {}
    sweeps: dict[str, dict[str, Any]] = {}
    session_sweeps: dict[str, dict[str, Any]] = {}
    session_cases: dict[str, list[list[dict[str, Any]]]] = {}
    for sweep_index, sweep in enumerate(s for s in SWEEPS if s.name in args.sweeps):
        cases[sweep.name] = []
        exposures: list[Exposure] = []
        configs: dict[str, SimulationConfig] = {}
        for level in sweep.levels:
            config = sweep.config(base, level)
            for r in range(args.replicates):
                exposure = simulate_case(sweep, config, level, (args.seed, r), movies)
                exposures.append(exposure)
                configs[exposure.name] = config
                case, _ = run_case(exposure, config)
                cases[sweep.name].append(case)
                print(
                    f"{case['name']}: {sweep.expected_nodes[0]} = {case['nodes'][sweep.expected_nodes[0]]['value']:.4g}"
                    f" (w {case['nodes'][sweep.expected_nodes[0]]['weight']:.3f}), "
                    f"{case['n_iterations']} it{'' if case['converged'] else ' NOT CONVERGED'}",
                    flush=True,
                )
        if sweep.drift_given:
            movies.clear()  # the drift sweeps share their movies; nothing after them needs them
        sweeps[sweep.name] = analyse(sweep, cases[sweep.name])
        session_cases[sweep.name] = []
        runs = []
        for order in range(args.orders):
            estimates, measured = run_session(
                exposures, configs, order_seed=args.seed * 1000 + sweep_index * 100 + order
            )
            session_cases[sweep.name].append(compact_session_cases(sweep, estimates, measured))
            runs.append(
                {
                    "estimate": analyse(sweep, estimates),
                    "measured": analyse(sweep, measured),
                    "arrival_order": [c["name"] for c in sorted(estimates, key=lambda c: c["arrival"])],
                }
            )
            rho = {mode: runs[-1][mode]["spearman_level_vs_value"] for mode in ("estimate", "measured")}
            print(
                f"{sweep.name} as a session, order {order}: "
                f"ρ estimate {rho['estimate']:.3f}, measured {rho['measured']:.3f}"
            )
        session_sweeps[sweep.name] = {"orders": runs, "summary": session_summary(runs)}
    all_cases = [c for per in cases.values() for c in per]
    result: dict[str, Any] = {
        "size_px": args.size,
        "replicates": args.replicates,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "max_iterations": MAX_ITERATIONS,
        "base_config": {
            "mean_defocus_angstrom": 15000.0,
            "astigmatism_angstrom": 0.0,
            "bfactor_angstrom2": 80.0,
            "ice_thickness_nm": 40.0,
            "dose_e_per_angstrom2": 40.0,
            "read_noise_std_counts": 0.5,
            "target_snr": None,
            "movie_frames": base.n_frames,
        },
        "goals": {"spearman_min": GOAL_SPEARMAN, "attribution": "largest |Δweight| low→high is the varied node"},
        "sweeps": sweeps,
        "session": session_sweeps,
        "totals": {
            "cases": len(all_cases),
            "not_converged": sum(1 for c in all_cases if not c["converged"]),
            "max_n_iterations": max(c["n_iterations"] for c in all_cases),
            "seconds_median": {
                k: statistics.median(c["seconds"][k] for c in all_cases) for k in ("simulate", "ctf", "priors")
            },
        },
        "cases": cases,
        "session_cases": session_cases,
    }
    result["runtime_seconds"] = time.perf_counter() - started
    table = markdown(result)
    out = write_results(f"attribution_{args.tag}" if args.tag else "attribution", result, table)
    print(table)
    print(f"wrote {out}; runtime {result['runtime_seconds']:.0f} s")


if __name__ == "__main__":
    main()
