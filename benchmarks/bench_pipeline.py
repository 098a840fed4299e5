"""Per-step time and CTF accuracy of the batch pipeline's science on simulated micrographs.

    .venv/bin/python benchmarks/bench_pipeline.py [--size 1024] [--count 6] [--device cpu]

Writes ``benchmarks/results/pipeline_<device>_<size>.json`` and prints a Markdown table (README
"Figures").  Times are wall-clock seconds per micrograph on this machine (2 cores unless stated); the CTF
error is |estimated mean defocus − true mean defocus| / true, against the simulator's ground truth.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cryodecon_science import causal
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.embedding import embed_particles
from cryodecon_science.picking import extract_boxes, pick_particles
from cryodecon_science.restoration.restore import wiener_deconvolve, wiener_denoise
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core node)"
    )
    args = parser.parse_args()
    config = SimulationConfig(shape_px=(args.size, args.size))
    steps: dict[str, list[float]] = {
        k: [] for k in ("simulate", "ctf", "priors", "denoise", "deconvolve", "pick_embed")
    }
    errors, angle_errors = [], []
    picks_per_micrograph: list[int] = []
    torch.set_num_threads(args.threads)
    for i in range(args.count):
        t = time.perf_counter()
        sim = simulate_micrograph(config, f"bench_{i}", (args.seed, 0, i))
        steps["simulate"].append(time.perf_counter() - t)
        micro = config.microscope
        t = time.perf_counter()
        fit = estimate_ctf(
            sim.counts, micro, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom, device=args.device
        )
        steps["ctf"].append(time.perf_counter() - t)
        truth = sim.truth.ctf
        errors.append(abs(fit.ctf.mean_defocus_angstrom - truth.mean_defocus_angstrom) / truth.mean_defocus_angstrom)
        if truth.astigmatism_angstrom > 500:
            d = abs(fit.ctf.astigmatism_angle_deg - truth.astigmatism_angle_deg) % 180.0
            angle_errors.append(min(d, 180.0 - d))
        t = time.perf_counter()
        priors = causal.fit_priors(
            sim.counts, fit, micro, dose_e_per_angstrom2=config.dose_e_per_angstrom2, device=args.device
        )
        steps["priors"].append(time.perf_counter() - t)
        refined = causal.refined_ctf_fit(fit, priors)
        t = time.perf_counter()
        wiener_denoise(sim.counts, refined, micro, device=args.device)
        steps["denoise"].append(time.perf_counter() - t)
        t = time.perf_counter()
        deconvolved = wiener_deconvolve(sim.counts, refined, micro, device=args.device)
        steps["deconvolve"].append(time.perf_counter() - t)
        t = time.perf_counter()
        picks = pick_particles(
            deconvolved,
            micro.pixel_size_angstrom,
            config.particle_diameter_angstrom,
            threshold_sigma=2.0,
            dark_particles=False,
        )
        if len(picks):
            embed_particles(extract_boxes(deconvolved, picks, 226), device=args.device)
        steps["pick_embed"].append(time.perf_counter() - t)
        picks_per_micrograph.append(len(picks))
    result = {
        "size_px": args.size,
        "count": args.count,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "seconds_per_micrograph_median": {k: statistics.median(v) for k, v in steps.items()},
        "picks_per_micrograph": picks_per_micrograph,
        "ctf_relative_defocus_error": {
            "median": float(np.median(errors)),
            "p95": float(np.percentile(errors, 95)),
            "max": float(np.max(errors)),
        },
        "ctf_angle_error_deg_where_astig_gt_500A": (
            {
                "median": float(np.median(angle_errors)),
                "max": float(np.max(angle_errors)),
                "n": len(angle_errors),
            }
            if angle_errors
            else None
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"pipeline_{args.device}_{args.size}_t{args.threads}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"| step | s/micrograph ({args.size}², {args.device}, {result['torch_threads']} threads) |\n|---|---|")
    for k, v in result["seconds_per_micrograph_median"].items():
        print(f"| {k} | {v:.2f} |")
    print(
        json.dumps(result["ctf_relative_defocus_error"]),
        json.dumps(result["ctf_angle_error_deg_where_astig_gt_500A"]),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
