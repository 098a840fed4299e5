"""Restoration throughput on full-size micrographs: cryodecon vs Topaz-Denoise, same device, same size, one run.

    bash benchmarks/setup_topaz.sh                                  # once: benchmark-only venv
    .venv/bin/python benchmarks/bench_restoration_speed.py [--size 4096] [--count 2] [--threads 1]

Writes ``benchmarks/results/restoration_speed_cpu_<size>.json`` and ``.md`` and prints the table.  No
network; deterministic seeds.

What is timed, per micrograph, on this machine's CPU with ``--threads`` torch/BLAS threads for every
method (``bench_restoration.thread_env`` for Topaz's subprocess):

* ``cryodecon_learned`` — ``denoise_learned(counts, model)`` with the shipped U-Net (the asset
  ``learned_denoised_micrographs``), weights loaded once beforehand;
* ``cryodecon_wiener`` — the pipeline's CTF fit (``estimate_ctf``) plus causal-priors loop
  (``causal.fit_priors``, the refined fit) and ``wiener_denoise`` (the asset ``restored_micrographs``);
* ``cryodecon_fused`` — the two above plus the per-ring fusion (what ``fusion.fuse_learned_and_wiener``
  runs for the asset ``fused_denoised_micrographs``: weights fitted on the central ≤ 2048² crop), i.e.
  everything the fused output costs;
* ``topaz_unet`` — Topaz-Denoise's pretrained ``unet`` through ``topaz.denoise.denoise_image`` with its
  CLI defaults (patch 1024, padding 500), model loaded once beforehand (``bench_restoration.run_topaz``).

Throughput ratio = Topaz's mean seconds / ours.  The issue's speed goal (≥ 10× Topaz on a 4096²
micrograph) is stated for an H100-class GPU; this script measures the CPU side of that comparison only,
and says so in its output.  The micrographs are the simulator's defaults at SNR 0.03 (what is timed
does not depend on the content beyond the causal loop's iteration count, recorded).  PSNR against the
clean image is reported too, with the fusion fitted on the whole image beside the product's crop fit.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import write_results
from bench_restoration import FUSION_SEED, least_squares_fit, psnr_db, run_topaz, topaz_environment

from cryodecon_science import causal
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser
from cryodecon_science.restoration import fusion
from cryodecon_science.restoration.denoiser import denoise_learned
from cryodecon_science.restoration.restore import wiener_denoise
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

GOAL_SPEEDUP = 10.0


def fuse(
    counts: Any, model: Any, fit: Any, microscope: Any, full: list[Any], index: int, max_fit_px: int | None
) -> Any:
    """``fusion.fuse_learned_and_wiener`` with its weights fitted on a central crop of ≤ ``max_fit_px`` (the
    product's default) or on the whole image (None)."""
    out, _ = fusion.fuse_learned_and_wiener(
        counts,
        model,
        fit,
        microscope,
        seed=FUSION_SEED + index,
        learned_full=full[0],
        wiener_full=full[1],
        max_fit_px=max_fit_px,
    )
    return out


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def markdown(result: dict[str, Any]) -> str:
    seconds = result["seconds_mean"]
    lines = [
        f"Restoration time per {result['size']}² micrograph on the CPU ({result['machine']['cpu']}, "
        f"{result['threads']} thread(s) per method, {result['count']} micrographs, one run).  "
        "The issue's ≥ 10× goal is for an H100-class GPU: `bench_gpu.py` measures it there (gpu_h200_4096.md).",
        "",
        "| method | s / micrograph (mean) | Topaz's time / ours |",
        "|---|---|---|",
    ]
    topaz = seconds.get("topaz_unet")
    for method, s in seconds.items():
        ratio = f"{topaz / s:.1f}×" if topaz is not None and method != "topaz_unet" else "–"
        lines.append(f"| {method} | {s:.2f} | {ratio} |")
    if topaz is None:
        lines.append(f"| topaz_unet | not run: {result['topaz'].get('reason', result['topaz'].get('error'))} | |")
    lines += ["", f"Causal-loop iterations: {result['causal_iterations']}.", ""]
    lines.append(
        "PSNR against the clean image (dB, after a least-squares scale/offset, mean over the micrographs; the "
        "fusion weights fitted on the central 2048² crop, the product, and on the whole image):"
    )
    lines += ["", "| method | PSNR (dB) |", "|---|---|"]
    lines += [f"| {m} | {v:.2f} |" for m, v in result["psnr_db_mean"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--snr", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--no-topaz", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = SimulationConfig(
        shape_px=(args.size, args.size),
        target_snr=args.snr,
        particles_per_micrograph=round(40 * (args.size / 1024) ** 2),
    )
    microscope = config.microscope
    sims = [simulate_micrograph(config, f"speed_{i:02d}", (args.seed, i)) for i in range(args.count)]
    model = load_pretrained_denoiser()
    seconds: dict[str, list[float]] = {"cryodecon_learned": [], "cryodecon_wiener": [], "cryodecon_fused": []}
    iterations: list[int] = []
    psnr: dict[str, list[float]] = {
        m: []
        for m in ("raw", "cryodecon_learned", "cryodecon_wiener", "cryodecon_fused", "cryodecon_fused_whole_image_fit")
    }
    for index, sim in enumerate(sims):
        learned, t_learned = timed(denoise_learned, sim.counts, model)
        t = time.perf_counter()
        ctf = estimate_ctf(sim.counts, microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom)
        priors = causal.fit_priors(sim.counts, ctf, microscope)
        fit = causal.refined_ctf_fit(ctf, priors)
        t_fit = time.perf_counter() - t
        wiener, t_wiener = timed(wiener_denoise, sim.counts, fit, microscope)
        product, t_fusion = timed(
            fuse, sim.counts, model, fit, microscope, [learned, wiener], index, fusion.DEFAULT_MAX_FIT_PX
        )
        whole, _ = timed(fuse, sim.counts, model, fit, microscope, [learned, wiener], index, None)
        for method, image in (
            ("raw", sim.counts),
            ("cryodecon_learned", learned),
            ("cryodecon_wiener", wiener),
            ("cryodecon_fused", product),
            ("cryodecon_fused_whole_image_fit", whole),
        ):
            psnr[method].append(psnr_db(least_squares_fit(image, sim.clean_image), sim.clean_image))
        seconds["cryodecon_learned"].append(t_learned)
        seconds["cryodecon_wiener"].append(t_fit + t_wiener)
        seconds["cryodecon_fused"].append(t_learned + t_fit + t_wiener + t_fusion)
        iterations.append(priors.n_iterations)
        print(
            f"{sim.name}: learned {t_learned:.2f} s, fit+priors {t_fit:.2f} s, wiener {t_wiener:.2f} s, "
            f"fusion {t_fusion:.2f} s",
            flush=True,
        )
    topaz = topaz_environment() if not args.no_topaz else {"available": False, "reason": "--no-topaz"}
    if topaz.get("available"):
        with tempfile.TemporaryDirectory() as tmp:
            run = run_topaz({s.name: s.counts for s in sims}, microscope.pixel_size_angstrom, args.threads, Path(tmp))
        if run["ok"]:
            seconds["topaz_unet"] = [run["report"]["seconds"][f"{s.name}.mrc"] for s in sims]
            psnr["topaz_unet"] = [
                psnr_db(least_squares_fit(run["denoised"][s.name], s.clean_image), s.clean_image) for s in sims
            ]
            topaz["load_seconds"] = run["report"]["load_seconds"]
        else:
            topaz["error"] = run["reason"]
    mean = {m: statistics.fmean(v) for m, v in seconds.items()}
    result: dict[str, Any] = {
        "size": args.size,
        "count": args.count,
        "threads": args.threads,
        "snr": args.snr,
        "seed": args.seed,
        "command": "python benchmarks/bench_restoration_speed.py " + " ".join(sys.argv[1:]),
        "device": "cpu",
        "machine": {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()},
        "torch": torch.__version__,
        "topaz": topaz,
        "seconds": seconds,
        "seconds_mean": mean,
        "causal_iterations": iterations,
        "psnr_db": psnr,
        "psnr_db_mean": {m: statistics.fmean(v) for m, v in psnr.items()},
        "goal": f"≥ {GOAL_SPEEDUP:g}× Topaz's throughput on an H100-class GPU (bench_gpu.py; not on this CPU)",
    }
    if "topaz_unet" in mean:
        result["speedup_vs_topaz"] = {m: mean["topaz_unet"] / s for m, s in mean.items() if m != "topaz_unet"}
    text = markdown(result)
    write_results(f"restoration_speed_cpu_{args.size}" + ("_no_topaz" if args.no_topaz else ""), result, text)
    print(text)


if __name__ == "__main__":
    main()
