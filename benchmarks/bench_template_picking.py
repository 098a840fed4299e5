"""Template picking from selected 2D class averages, alone and combined with the learned picker.

    .venv/bin/python benchmarks/bench_template_picking.py            # 2 specimens x 3 SNR; 12 + 3 + 6 micrographs each
    .venv/bin/python benchmarks/bench_template_picking.py --quick    # smoke run: globular, SNR 0.1, 3 + 1 + 1

Options: ``--classification N --calibration N --test N --snr ... --particles ... --classes K --threads 1``.
Writes ``benchmarks/results/template_picking.json`` and ``.md`` and prints the Markdown; ``--quick`` only prints
(about a minute).  No network; deterministic seeds; one torch thread by default (``OMP_NUM_THREADS=1
MKL_NUM_THREADS=1`` in the environment keeps BLAS to one as well).

Data.  The simulated picking sets of ``bench_picking.py``, imported from it: ``simulation_config`` (1024², 40
particles requested, foil-hole carbon edge in about half, contamination, 15 % aggregates), the specimens
``PARTICLES`` (150 Å globular at 1 Å/px; 250 Å rod at 2 Å/px), SNR 0.1 / 0.03 / 0.01, and its seeds: the
calibration and test micrographs are exactly those of ``picking.md`` ((BENCH_SEED, specimen, 0 | 1, i)).  Each
condition adds ``--classification`` micrographs of its own ((BENCH_SEED, specimen, 2, i)), the earlier part of the
session whose 2D classes give the templates.

Workflow per condition (specimen, SNR), as the pipeline runs it:

1. Every micrograph: CTF estimate (``ctf.estimate_ctf``, as the ``ctf_estimates`` asset; its defocus error against
   the truth is reported), the product's picks (``picking.micrograph.pick_micrograph``: learned picker + junk
   rejection) and the learned picks decoded once at ``LEARNED_FLOOR``.
2. Classification micrographs: the product's kept picks whose box fits (``box_inside``) → ``extract_particles``
   (RELION normalisation, contrast inverted) → ``ParticleRow`` with the CTF estimate → ``classify_batch`` (first
   batch, K = ``--classes``, ``Classification2DConfig`` defaults otherwise; Fourier crop to 64 px) →
   ``select_classes`` (default criteria) → the selected averages are the templates, at the classification box's
   pixel size.  With no class selected the template rows of the condition are empty (reported).
3. Calibration and test micrographs: ``template_score_map`` with those templates and the micrograph's CTF
   estimate (``TemplatePickingConfig`` defaults: 20 Å low-pass, 10° step, whitening, CTF filtering), decoded once
   at ``TEMPLATE_FLOOR_SIGMA`` (``TemplatePicks.above`` then equals picking at any higher threshold).

Methods (rows).  ``learned``: ``pick_particles_learned`` alone; ``cryodecon``: the product (learned + junk
rejection), for reference; ``template``: the template picker alone; ``confirm``: the learned picks (shipped
threshold) that the templates confirm (``confirm_learned_picks``: template z within d/4 ≥ t); ``rescue``: the
learned picks at the shipped threshold plus the weaker learned candidates (p ≥ ``RESCUE_FLOOR_P``) the templates
confirm; ``union``: the learned picks plus the template picks (z ≥ t) farther than 0.8 d from every learned pick
(``union_picks``).  Ablations of the template picker (diagnostics): the true CTF instead of the estimate, no CTF
filtering (templates only contrast-inverted), no whitening.

Thresholds and scoring as ``bench_picking.py``: each row's *default* threshold (learned: the weights'
``detection_threshold``; template and union: ``DEFAULT_THRESHOLD_SIGMA``; confirm and rescue:
``CONFIRM_DEFAULT_SIGMA``) and its *calibrated* threshold (the grid value with the best pooled F1 on the
calibration micrographs, ties to the lowest); a pick matches a good particle (not on carbon, not under
contamination) within half a diameter, one-to-one; counts pooled over the test micrographs.

Times.  Median seconds per test micrograph, one thread: learned = ``pick_particles_learned`` at the shipped
threshold; template = ``template_score_map`` + ``picks_from_score_map``; combined rows = learned + template.  2D
classification of the classification micrographs is a once-per-session cost, reported per condition.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import bench_picking as bp
import numpy as np
import numpy.typing as npt
import torch
from _common import write_results

from cryodecon_science.classification import Classification2DConfig
from cryodecon_science.classification.batches import CLASSIFICATION_BOX_PX, classify_batch
from cryodecon_science.ctf.estimate import estimate_ctf
from cryodecon_science.io.particles import ParticleRow
from cryodecon_science.optics import CtfParams, MicroscopeSettings
from cryodecon_science.picking import box_inside, extract_particles
from cryodecon_science.picking.junk import detect_regions
from cryodecon_science.picking.learned import PickerUNet, pick_particles_learned
from cryodecon_science.picking.micrograph import pick_micrograph
from cryodecon_science.picking.templates import (
    CONFIRM_RADIUS_DIAMETER_FRACTION,
    DEFAULT_THRESHOLD_SIGMA,
    MIN_SEPARATION_DIAMETER_FRACTION,
    TemplatePickingConfig,
    TemplatePicks,
    TemplateScoreMap,
    TemplateStack,
    confirm_learned_picks,
    picks_from_score_map,
    template_score_map,
    union_picks,
)
from cryodecon_science.simulate import simulate_micrograph

FloatArray = npt.NDArray[np.float64]

CLASSIFICATION_SPLIT = 2
TEMPLATE_FLOOR_SIGMA = 1.0
TEMPLATE_GRID_SIGMA = tuple(float(t) for t in np.round(np.arange(1.5, 8.001, 0.25), 2))
CONFIRM_GRID_SIGMA = tuple(float(t) for t in np.round(np.arange(-1.0, 6.001, 0.25), 2))
CONFIRM_DEFAULT_SIGMA = 2.0
RESCUE_FLOOR_P = 0.05
ABLATIONS: dict[str, TemplatePickingConfig] = {
    "template_no_ctf": TemplatePickingConfig(ctf_filter=False),
    "template_no_whitening": TemplatePickingConfig(whiten=False),
}


class Micrograph(bp.Micrograph):
    """``bench_picking.Micrograph`` plus its CTF (estimate and truth) and the template picker's output."""

    def __init__(self, name: str, particle: str, snr: float, split: str, index: int) -> None:
        super().__init__(name, particle, snr, split, index)
        self.microscope = MicroscopeSettings(pixel_size_angstrom=self.pixel_size)
        self.ctf_estimate = CtfParams(1.0, 1.0, 0.0)
        self.ctf_true = CtfParams(1.0, 1.0, 0.0)
        self.score_maps: dict[str, TemplateScoreMap] = {}
        self.template_picks: dict[str, TemplatePicks] = {}
        self.learned_z = np.zeros(0, dtype=np.float64)  # template z near each learned floor pick
        self.floor_threshold = 1.0  # the picker's shipped threshold, set by main


def simulate_and_pick(particle: str, snr: float, split: str, index: int, model: PickerUNet) -> Micrograph:
    """Simulate one micrograph as ``bench_picking`` does (same names and seeds), estimate its CTF, pick it."""
    split_index = {"calibration": 0, "test": 1, "classification": CLASSIFICATION_SPLIT}[split]
    name = f"{particle}_snr{snr:g}_{split}_{index}".replace(".", "p")
    m = Micrograph(name, particle, snr, split, index)
    config = bp.simulation_config(particle, snr)
    start = time.perf_counter()
    sim = simulate_micrograph(config, name, (bp.BENCH_SEED, list(bp.PARTICLES).index(particle), split_index, index))
    m.seconds["simulate"] = time.perf_counter() - start
    m.truth = bp.truth_of(sim, m.diameter_px)
    m.counts = np.asarray(sim.counts, dtype=np.float32)
    m.microscope = config.microscope
    m.ctf_true = sim.truth.ctf
    start = time.perf_counter()
    m.ctf_estimate = estimate_ctf(m.counts, config.microscope).ctf
    m.seconds["ctf"] = time.perf_counter() - start
    start = time.perf_counter()
    m.pipeline = pick_micrograph(m.counts, m.pixel_size, m.diameter, model, device="cpu")
    m.seconds["cryodecon"] = time.perf_counter() - start
    if split == "classification":
        return m
    start = time.perf_counter()
    pick_particles_learned(m.counts, m.pixel_size, m.diameter, model, device="cpu")
    m.seconds["learned"] = time.perf_counter() - start
    m.floor = pick_particles_learned(
        m.counts, m.pixel_size, m.diameter, model, device="cpu", threshold=bp.LEARNED_FLOOR
    )
    m.regions = detect_regions(np.asarray(m.counts, dtype=np.float64), m.pixel_size, m.diameter)
    return m


def classify_session(micrographs: list[Micrograph], n_classes: int) -> tuple[TemplateStack | None, dict[str, Any]]:
    """Extract the product's kept picks, classify them in one first batch, select; the selected averages."""
    rows: list[ParticleRow] = []
    stacks = []
    for m in micrographs:
        assert m.pipeline is not None
        keep = m.pipeline.kept & box_inside(m.pipeline.coords_yx_px, m.pipeline.box_px, m.counts.shape)
        coords = m.pipeline.coords_yx_px[keep]
        merit = m.pipeline.figure_of_merit[keep]
        if coords.shape[0] == 0:
            continue
        stacks.append(extract_particles(m.counts, coords, m.pipeline.box_px))
        for (y, x), fom in zip(coords, merit, strict=True):
            rows.append(
                ParticleRow(
                    stack_path=f"{m.name}.mrcs",
                    index_in_stack=len(rows) + 1,
                    micrograph_path=f"{m.name}.mrc",
                    coord_yx_px=(float(y), float(x)),
                    ctf=m.ctf_estimate,
                    microscope=m.microscope,
                    fit_resolution_angstrom=math.nan,
                    figure_of_merit=float(fom),
                )
            )
    diameter = micrographs[0].diameter
    info: dict[str, Any] = {"n_particles": len(rows), "n_classes": n_classes}
    if len(rows) < 2 * n_classes:
        info["why_no_templates"] = f"{len(rows)} particles: fewer than 2 per class"
        return None, info
    config = Classification2DConfig(n_classes=n_classes, particle_diameter_angstrom=diameter)
    start = time.perf_counter()
    result = classify_batch(np.concatenate(stacks), rows, None, config, CLASSIFICATION_BOX_PX)
    info["seconds"] = time.perf_counter() - start
    selection = result.selection
    selected = selection.selected_classes
    info.update(
        {
            "class_pixel_size_angstrom": result.state.pixel_size_angstrom,
            "box_px": int(result.averages.shape[-1]),
            "selected": selected.tolist(),
            "particle_count": selection.particle_count.tolist(),
            "resolution_0143_angstrom": selection.resolution_0143_angstrom.tolist(),
            "reasons": [list(r) for r in selection.reasons],
            "selected_particles": int(selection.particle_count[selected].sum()),
        }
    )
    if selected.size == 0:
        info["why_no_templates"] = "select_classes kept no class"
        return None, info
    return TemplateStack(result.averages[selected], result.state.pixel_size_angstrom), info


def template_pass(m: Micrograph, templates: TemplateStack) -> None:
    """Score maps and floor-threshold picks of the template picker and its ablations on one micrograph."""
    variants: dict[str, tuple[TemplatePickingConfig, CtfParams]] = {
        "template": (TemplatePickingConfig(), m.ctf_estimate),
        "template_true_ctf": (TemplatePickingConfig(), m.ctf_true),
        **{name: (config, m.ctf_estimate) for name, config in ABLATIONS.items()},
    }
    for name, (config, ctf) in variants.items():
        start = time.perf_counter()
        score_map = template_score_map(m.counts, m.microscope, ctf, templates, m.diameter, config, device="cpu")
        picks = picks_from_score_map(score_map, TEMPLATE_FLOOR_SIGMA, MIN_SEPARATION_DIAMETER_FRACTION)
        m.seconds[name] = time.perf_counter() - start
        m.score_maps[name], m.template_picks[name] = score_map, picks
    assert m.floor is not None
    radius_px = CONFIRM_RADIUS_DIAMETER_FRACTION * m.diameter_px
    m.learned_z = m.score_maps["template"].sigma_near(m.floor.coords_yx_px, radius_px)
    shipped = m.floor.figure_of_merit >= m.floor_threshold
    m.checks["confirm_equals_z_threshold"] = bool(
        np.array_equal(
            confirm_learned_picks(m.floor.coords_yx_px[shipped], m.score_maps["template"], CONFIRM_DEFAULT_SIGMA),
            m.learned_z[shipped] >= CONFIRM_DEFAULT_SIGMA,
        )
    )
    m.seconds["learned+template"] = m.seconds["learned"] + m.seconds["template"]


# --------------------------------------------------------------------------------------- methods
def template_only(variant: str) -> Callable[[Micrograph, float], FloatArray]:
    def picks(m: Micrograph, t: float) -> FloatArray:
        if variant not in m.template_picks:
            return np.zeros((0, 2))
        return m.template_picks[variant].above(t).coords_yx_px

    return picks


def learned_at_shipped(m: Micrograph) -> FloatArray:
    assert m.floor is not None
    return m.floor.above(m.floor_threshold).coords_yx_px


def confirm(m: Micrograph, t: float) -> FloatArray:
    assert m.floor is not None
    if "template" not in m.score_maps:
        return learned_at_shipped(m)
    keep = (m.floor.figure_of_merit >= m.floor_threshold) & (m.learned_z >= t)
    return m.floor.coords_yx_px[keep]


def rescue(m: Micrograph, t: float) -> FloatArray:
    assert m.floor is not None
    if "template" not in m.score_maps:
        return learned_at_shipped(m)
    p = m.floor.figure_of_merit
    keep = (p >= m.floor_threshold) | ((p >= RESCUE_FLOOR_P) & (m.learned_z >= t))
    return m.floor.coords_yx_px[keep]


def union(m: Micrograph, t: float) -> FloatArray:
    learned = learned_at_shipped(m)
    if "template" not in m.template_picks:
        return learned
    extra = m.template_picks["template"].above(t).coords_yx_px
    return union_picks(learned, extra, MIN_SEPARATION_DIAMETER_FRACTION * m.diameter_px)


def method_families(shipped: float) -> dict[str, dict[str, Any]]:
    learned_grid = tuple(sorted({*bp.LEARNED_THRESHOLDS, round(shipped, 6)}))
    template_grid = tuple(sorted({*TEMPLATE_GRID_SIGMA, DEFAULT_THRESHOLD_SIGMA}))
    families: dict[str, dict[str, Any]] = {
        "learned": {"picks": bp.learned_only, "grid": learned_grid, "default": shipped, "time": "learned"},
        "cryodecon": {"picks": bp.cryodecon_kept, "grid": learned_grid, "default": shipped, "time": "cryodecon"},
        "template": {
            "picks": template_only("template"),
            "grid": template_grid,
            "default": DEFAULT_THRESHOLD_SIGMA,
            "time": "template",
        },
        "confirm": {
            "picks": confirm,
            "grid": CONFIRM_GRID_SIGMA,
            "default": CONFIRM_DEFAULT_SIGMA,
            "time": "learned+template",
        },
        "rescue": {
            "picks": rescue,
            "grid": template_grid,
            "default": CONFIRM_DEFAULT_SIGMA,
            "time": "learned+template",
        },
        "union": {
            "picks": union,
            "grid": template_grid,
            "default": DEFAULT_THRESHOLD_SIGMA,
            "time": "learned+template",
        },
    }
    for name in ("template_true_ctf", *ABLATIONS):
        families[name] = {
            "picks": template_only(name),
            "grid": template_grid,
            "default": DEFAULT_THRESHOLD_SIGMA,
            "time": name,
        }
    return families


LABELS = {
    "learned": "learned picker alone",
    "cryodecon": "cryodecon product (learned + junk rejection), reference",
    "template": "template picker alone",
    "confirm": "learned, kept where templates confirm",
    "rescue": "learned + weaker learned picks templates confirm",
    "union": "learned ∪ template picks",
    "template_true_ctf": "template picker, true CTF (diagnostic)",
    "template_no_ctf": "template picker, no CTF filter (ablation)",
    "template_no_whitening": "template picker, no whitening (ablation)",
}
PRIMARY = ("learned", "template", "confirm", "rescue", "union", "cryodecon")


def threshold_text(method: str, t: float) -> str:
    return f"p ≥ {t:.3g}" if method in ("learned", "cryodecon") else f"z ≥ {t:g} σ"


def evaluate(micrographs: list[Micrograph], families: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Calibrate each family per condition and score the test micrographs (``bench_picking.calibrate``)."""
    summary: dict[str, Any] = {}
    conditions = sorted(
        {(m.particle, m.snr) for m in micrographs}, key=lambda c: (list(bp.PARTICLES).index(c[0]), -c[1])
    )
    for particle, snr in conditions:
        calibration = [m for m in micrographs if (m.particle, m.snr, m.split) == (particle, snr, "calibration")]
        test = [m for m in micrographs if (m.particle, m.snr, m.split) == (particle, snr, "test")]
        rows: dict[str, Any] = {}
        for name, family in families.items():
            chosen = bp.calibrate(family, calibration)
            sweep = chosen.pop("sweep")
            for variant, t in (("default", family["default"]), ("calibrated", chosen["threshold"])):
                per = [bp.score_picks(family["picks"](m, t), m.truth, 0.5 * m.diameter_px) for m in test]
                row = bp.pooled(per)
                rows[f"{name}/{variant}"] = {
                    "method": name,
                    "variant": variant,
                    "threshold": t,
                    **{k: row[k] for k in ("precision", "recall", "f1", "f1_interior", "median_centre_error_px")},
                    **{k: row[k] for k in ("picks_per_micrograph", "true_per_micrograph", "on_junk_fraction")},
                    "seconds_per_micrograph": statistics.median(m.seconds.get(family["time"], math.nan) for m in test),
                    **({"calibration_f1": chosen["calibration_f1"], "sweep": sweep} if variant == "calibrated" else {}),
                }
        summary[f"{particle}@snr{snr:g}"] = {"particle": particle, "snr": snr, "rows": rows}
    return summary


# -------------------------------------------------------------------------------------- markdown
def fmt(x: float | None, digits: int = 2) -> str:
    return bp.fmt(x, digits)


def markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    keys = list(summary)
    lines = [
        "# Template picking from selected 2D class averages",
        "",
        f"The simulated picking sets of `picking.md` ({result['n_test']} test + {result['n_calibration']} "
        f"calibration micrographs per condition, the same seeds), plus {result['n_classification']} classification "
        "micrographs per condition whose product picks are extracted, classified "
        f"(`classify_batch`, K = {result['n_classes']}) and selected (`select_classes`); the selected averages are "
        "the templates, CTF-filtered by each micrograph's CTF estimate.  Truth, matching (half a diameter, "
        "one-to-one, pooled) and threshold calibration (best pooled F1 on the calibration micrographs) as "
        "`bench_picking.py`.  Module docstring of `benchmarks/bench_template_picking.py` for every setting.",
        "",
        "## F1 on the test micrographs",
        "",
        "| method | threshold | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    families = list(LABELS)
    for name in families:
        for variant in ("default", "calibrated"):
            cells = []
            for k in keys:
                row = summary[k]["rows"].get(f"{name}/{variant}")
                cells.append(fmt(row["f1"]) if row else "–")
            lines.append(f"| {LABELS[name]} | {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Precision, recall, time",
        "",
        "Threshold: the default or the calibrated value.  Centre error in micrograph pixels.  *on junk*: share of "
        "picks on true carbon or contamination.  Time: median s per test micrograph, one thread (combined rows: "
        "learned + template).",
        "",
        "| condition | method | threshold | precision | recall | F1 | centre err. px | picks / mic | good / mic "
        "| on junk | s / mic |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in keys:
        for name in families:
            for variant in ("default", "calibrated"):
                r = summary[k]["rows"][f"{name}/{variant}"]
                lines.append(
                    f"| {k} | {LABELS[name]} | {variant}: {threshold_text(name, r['threshold'])} "
                    f"| {fmt(r['precision'])} | {fmt(r['recall'])} | **{fmt(r['f1'])}** "
                    f"| {fmt(r['median_centre_error_px'], 1)} | {fmt(r['picks_per_micrograph'], 1)} "
                    f"| {fmt(r['true_per_micrograph'], 1)} | {bp.pct(r['on_junk_fraction'])} "
                    f"| {fmt(r['seconds_per_micrograph'], 2)} |"
                )
    lines += [
        "",
        "## Templates (2D classes of the classification micrographs)",
        "",
        "| condition | particles | K | selected classes (particles) | FRC-0.143 of the selected, Å | classification s "
        "| CTF estimate: median |ΔDf| Å |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in keys:
        c = result["classes"][k]
        selected = c.get("selected", [])
        counts = ", ".join(f"{i} ({c['particle_count'][i]})" for i in selected) or f"none ({c.get('why_no_templates')})"
        res = ", ".join(fmt(c["resolution_0143_angstrom"][i], 0) for i in selected) or "–"
        lines.append(
            f"| {k} | {c['n_particles']} | {c['n_classes']} | {counts} | {res} | {fmt(c.get('seconds'), 1)} "
            f"| {fmt(result['ctf_error'][k], 0)} |"
        )
    lines += ["", "## Findings (computed from the figures above)", ""]
    lines += [f"* {s}" for s in findings(result)]
    lines += [
        "",
        "## Caveats",
        "",
        "* The learned picker was trained on this project's simulator (other structures and exposures), i.e. on "
        "data like the test data; the templates come from a few hundred particles of one short session.  On real "
        "data, where the learned picker is out of its training distribution, the balance may differ.",
        f"* Calibration uses {result['n_calibration']} micrographs per condition: calibrated thresholds are noisy; "
        "with several combination rules calibrated on the same micrographs, a small gain on the test micrographs "
        "can be chance (the binomial standard error of F1 ≈ 0.9 over ~125 particles is ≈ 0.03).",
        "* The simulated specimens have 4 structures each at random 3D orientations: a handful of 2D class averages "
        "covers few of their views, which limits any template picker here.",
        "",
        "## How it was run",
        "",
        f"* command: `{result['command']}`",
        f"* machine: {result['machine']}; load average at start {result['load_average_start']}",
        f"* torch {result['torch_version']}, {result['torch_threads']} thread(s)",
        f"* runtime: {result['runtime_seconds']:.0f} s",
        f"* consistency checks (all must be true): {result['consistency']}",
    ]
    return "\n".join(lines)


def findings(result: dict[str, Any]) -> list[str]:
    out = []
    summary = result["summary"]
    for k, cond in summary.items():
        rows = cond["rows"]
        learned = rows["learned/default"]["f1"]
        template = rows["template/calibrated"]["f1"]
        best_combined = max(
            (f"{n}/{v}" for n in ("confirm", "rescue", "union") for v in ("default", "calibrated")),
            key=lambda key: rows[key]["f1"],
        )
        delta = rows[best_combined]["f1"] - learned
        out.append(
            f"{k}: learned {learned:.3f}; template alone (calibrated) {template:.3f} "
            f"({'loses' if template < learned else 'wins'} by {abs(template - learned):.3f}); best combination "
            f"{best_combined} {rows[best_combined]['f1']:.3f} ({delta:+.3f} vs learned)."
        )
    junk = [
        f"{k} {bp.pct(cond['rows']['template/calibrated']['on_junk_fraction'])} "
        f"(learned {bp.pct(cond['rows']['learned/default']['on_junk_fraction'])})"
        for k, cond in summary.items()
    ]
    out.append("Share of picks on true carbon or contamination, template picker (calibrated): " + "; ".join(junk) + ".")
    centre = [
        f"{k} {fmt(cond['rows']['template/calibrated']['median_centre_error_px'], 1)} "
        f"(learned {fmt(cond['rows']['learned/default']['median_centre_error_px'], 1)})"
        for k, cond in summary.items()
    ]
    out.append("Median centre error of matched picks, px, template picker (calibrated): " + "; ".join(centre) + ".")
    times = [
        f"{k} {fmt(cond['rows']['template/default']['seconds_per_micrograph'], 2)} "
        f"(learned {fmt(cond['rows']['learned/default']['seconds_per_micrograph'], 2)})"
        for k, cond in summary.items()
    ]
    out.append("Seconds per micrograph, template picker: " + "; ".join(times) + ".")
    means = {}
    for name in ("learned", "template", "confirm", "rescue", "union"):
        for variant in ("default", "calibrated"):
            values = [cond["rows"][f"{name}/{variant}"]["f1"] for cond in summary.values()]
            means[f"{name}/{variant}"] = statistics.fmean(values)
    ranked = sorted(means.items(), key=lambda kv: -kv[1])
    out.append("Mean F1 over the conditions: " + ", ".join(f"{k} {v:.3f}" for k, v in ranked) + ".")
    for name, label in (
        ("template_true_ctf", "true CTF instead of the estimate"),
        ("template_no_ctf", "no CTF filtering"),
        ("template_no_whitening", "no whitening"),
    ):
        diffs = [
            cond["rows"][f"{name}/calibrated"]["f1"] - cond["rows"]["template/calibrated"]["f1"]
            for cond in summary.values()
        ]
        out.append(
            f"Template picker with {label}: calibrated F1 changes by "
            + ", ".join(f"{d:+.3f}" for d in diffs)
            + f" (mean {statistics.fmean(diffs):+.3f})."
        )
    return out


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classification", type=int, default=12, help="classification micrographs per condition")
    parser.add_argument("--calibration", type=int, default=3, help="calibration micrographs per condition")
    parser.add_argument("--test", type=int, default=6, help="test micrographs per condition")
    parser.add_argument("--snr", type=float, nargs="+", default=list(bp.SNRS))
    parser.add_argument("--particles", nargs="+", default=list(bp.PARTICLES), choices=list(bp.PARTICLES))
    parser.add_argument("--classes", type=int, default=8, help="K of the 2D classification")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: globular, SNR 0.1, 3 + 1 + 1 micrographs")
    args = parser.parse_args()
    if args.quick:
        args.classification, args.calibration, args.test = 3, 1, 1
        args.snr, args.particles, args.classes = [0.1], [next(iter(bp.PARTICLES))], 4
    name = "template_picking_quick" if args.quick else "template_picking"
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()
    model, picker_meta = bp.load_model(False)
    shipped = float(model.detection_threshold)

    micrographs: list[Micrograph] = []
    classes: dict[str, Any] = {}
    ctf_error: dict[str, float] = {}
    for particle in args.particles:
        for snr in args.snr:
            key = f"{particle}@snr{snr:g}"
            session: list[Micrograph] = []
            for split, count in (
                ("classification", args.classification),
                ("calibration", args.calibration),
                ("test", args.test),
            ):
                for i in range(count):
                    m = simulate_and_pick(particle, snr, split, i, model)
                    m.floor_threshold = shipped
                    session.append(m)
            templates, info = classify_session([m for m in session if m.split == "classification"], args.classes)
            classes[key] = info
            print(f"{key}: {info.get('n_particles')} particles, selected {info.get('selected')}", flush=True)
            for m in session:
                if m.split == "classification":
                    continue
                if templates is not None:
                    template_pass(m, templates)
                micrographs.append(m)
            ctf_error[key] = statistics.median(
                abs(m.ctf_estimate.mean_defocus_angstrom - m.ctf_true.mean_defocus_angstrom) for m in session
            )

    families = method_families(shipped)
    summary = evaluate(micrographs, families)
    checks = sorted({c for m in micrographs for c in m.checks})
    consistency = {c: all(m.checks.get(c, True) for m in micrographs) for c in checks}
    result: dict[str, Any] = {
        "name": name,
        "command": "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/bench_template_picking.py "
        + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {bp.cpu_model()}, {os.cpu_count()} cores (shared), no GPU",
        "load_average_start": [round(x, 2) for x in load_start],
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "n_classification": args.classification,
        "n_calibration": args.calibration,
        "n_test": args.test,
        "n_classes": args.classes,
        "snr": args.snr,
        "particles": {k: bp.PARTICLES[k] for k in args.particles},
        "picker": picker_meta,
        "template_config": {
            **{k: getattr(TemplatePickingConfig(), k) for k in TemplatePickingConfig.__dataclass_fields__},
            "confirm_radius_diameter_fraction": CONFIRM_RADIUS_DIAMETER_FRACTION,
            "confirm_default_sigma": CONFIRM_DEFAULT_SIGMA,
            "rescue_floor_p": RESCUE_FLOOR_P,
        },
        "grids": {"template_sigma": list(TEMPLATE_GRID_SIGMA), "confirm_sigma": list(CONFIRM_GRID_SIGMA)},
        "classes": classes,
        "ctf_error": ctf_error,
        "consistency": consistency,
        "summary": summary,
    }
    result["runtime_seconds"] = time.perf_counter() - started
    text = markdown(result)
    written = {k: v for k, v in result.items() if k != "summary"}
    for key, cond in summary.items():
        rows = {r: {k: v for k, v in row.items() if k != "sweep"} for r, row in cond["rows"].items()}
        written[f"condition {key}"] = {**cond, "rows": rows}
    print(text)
    if args.quick:
        print(f"--quick: nothing written; runtime {result['runtime_seconds']:.0f} s")
        return
    out = write_results(name, written, text)
    print(f"wrote {out}; runtime {result['runtime_seconds']:.0f} s")


if __name__ == "__main__":
    main()
