"""GPU figures, one CUDA device, one run: the CTF fit and restoration of full-size micrographs, cryodecon
beside Topaz-Denoise on the same GPU.

    python benchmarks/bench_gpu.py --out DIR [--device cuda] [--size 4096] [--count 3] [--sections …] [--tag T]

Topaz-Denoise (``topaz-em``, benchmark-only) must be importable in the same interpreter (on the lent GPU
machine it travels as an unpacked wheel on ``PYTHONPATH``; see the README's GPU section).  Writes
``gpu_<device>_<size>[_<tag>].json`` and ``.md`` to ``--out`` (section by section, so a run cut short keeps
what it measured), plus ``gpu_<device>_ctf_profile_<size>.txt`` (``torch.profiler`` of one CTF fit) and prints
the table.

What is timed, per micrograph (host ``time.perf_counter`` around the call with ``torch.cuda.synchronize``
before and after; each configuration warmed up once on the first micrograph, which is timed again):

* ``ctf_fit`` — ``estimate_ctf(counts, …, device)`` from a float32 numpy array in host memory to the
  ``CtfFit`` (the issue's goal: ≤ 20 ms on an H100-class GPU), with the periodogram alone
  (``half_set_power_spectra``, the FFT-bound part) and the host→device copy alone beside it, the time of
  each stage of one fit (``ctf_stage_seconds``) and the profiler's counts of kernel launches, stream
  synchronisations and copies; the GPU estimate is compared with the CPU one on the same micrograph;
* ``unet_*`` — ``denoise_learned`` (bf16 autocast) numpy in, numpy out, for several tilings/batch sizes,
  with and without ``torch.backends.cudnn.benchmark``; compared with the CPU float32 output;
* ``topaz_unet`` — Topaz-Denoise's pretrained ``unet`` through ``topaz.denoise.denoise_image`` with the
  CLI defaults (patch 1024, padding 500), ``use_cuda=True``, model loaded once beforehand (float32: Topaz
  has no reduced-precision path); the faster of its runs with and without ``cudnn.benchmark`` is the
  reference of the throughput ratio;
* ``fused`` — what the asset ``fused_denoised_micrographs`` costs on the GPU: CTF fit, causal-priors loop
  (``causal.fit_priors(device=…)``), Wiener filter, U-Net and the per-ring fusion.
* ``ctf_concurrent`` — throughput of 1, 2, 4, 8 CTF fits in flight (host threads, one CUDA stream each),
  and how many of those fits came out wrong (|ΔD|/D > 1 %: threads on CUDA are not safe, README);
* ``motion`` — global and 5×5-patch motion correction of ``bench_motion.py --large``'s 4096² × 40-frame
  movie (its CPU times, from ``results/motion_cpu.json``, quoted for scale).

Micrographs: the simulator's defaults at SNR 0.03 with particles at constant density (40 per 1024²), as
``bench_restoration_speed.py``; PSNR against the clean image (least-squares scale/offset) is reported so
that a fast wrong answer cannot pass.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import json_ready, ls_psnr_db

from cryodecon_science import causal
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.ctf.layout import TILE_OVERLAP_FRACTION as _TILE_OVERLAP_FRACTION
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser
from cryodecon_science.motion import align_movie
from cryodecon_science.restoration import fusion
from cryodecon_science.restoration.denoiser import (
    DEFAULT_TILE_PX,
    TILE_MARGIN_PX,
    _normalise_on,
    _run_tiles,
    denoise_learned,
    denoise_learned_many,
)
from cryodecon_science.restoration.restore import wiener_denoise
from cryodecon_science.simulate import SimulatedMicrograph as Simulation
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph, simulate_movie
from cryodecon_science.spectrum import half_set_power_spectra

GOAL_CTF_SECONDS = 0.020
GOAL_SPEEDUP = 10.0
FUSION_SEED = 11


# ------------------------------------------------------------------------------------------ helpers
def relative_rms(a: np.ndarray, reference: np.ndarray) -> float:
    """RMS of a − reference over the standard deviation of the reference."""
    return float(np.sqrt(np.mean((a.astype(np.float64) - reference) ** 2)) / np.std(reference))


class Clock:
    """Wall time of a call with the device synchronised before and after (CUDA work is asynchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        self.sync()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        return out, time.perf_counter() - t


def simulate(job: tuple[int, float, int, int]) -> Simulation:
    size, snr, seed, index = job
    config = SimulationConfig(
        shape_px=(size, size), target_snr=snr, particles_per_micrograph=round(40 * (size / 1024) ** 2)
    )
    return simulate_micrograph(config, f"gpu_{index:02d}", (seed, index))


def ctf_summary(fit: Any) -> dict[str, float]:
    return {
        "defocus_u_angstrom": fit.ctf.defocus_u_angstrom,
        "defocus_v_angstrom": fit.ctf.defocus_v_angstrom,
        "angle_deg": fit.ctf.astigmatism_angle_deg,
        "fit_resolution_angstrom": fit.fit_resolution_angstrom,
    }


def relative_defocus_error(fit: Any, truth: Any) -> float:
    mean_fit = 0.5 * (fit.ctf.defocus_u_angstrom + fit.ctf.defocus_v_angstrom)
    mean_truth = 0.5 * (truth.defocus_u_angstrom + truth.defocus_v_angstrom)
    return abs(mean_fit - mean_truth) / mean_truth


# ------------------------------------------------------------------------------------------ sections
CTF_STAGES = (
    "validated_image",
    "half_set_power_spectra",
    "flatten_spectrum",
    "smooth_level",
    "search_mean_defocus",
    "fit_envelopes",
    "grid_and_refine",
    "refine",
    "equiphase_average",
    "fit_resolution_per_angstrom",
    "defocus_sigma_angstrom",
    "spectral_model",
)
"""Functions called by ``cryodecon_science.ctf.estimate``, timed one by one in ``ctf_stage_seconds`` (outermost
calls only)."""


def ctf_stage_seconds(fit: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Wall time of each stage of one ``estimate_ctf`` call, the device synchronised around each stage
    (which adds a few synchronisations: the stages sum to a little more than an undisturbed fit).
    Inspects the estimator's private functions on purpose, as ``diagnose_ctf_angle.py`` does."""
    import cryodecon_science.ctf.estimate as ce

    clock = Clock(device)
    seconds: dict[str, float] = {}
    depth = [0]
    originals = {name: getattr(ce, name) for name in CTF_STAGES}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return function(*args, **kwargs)
            depth[0] += 1
            try:
                out, s = clock(function, *args, **kwargs)
            finally:
                depth[0] -= 1
            seconds[name] = seconds.get(name, 0.0) + s
            return out

        return wrapper

    for name, function in originals.items():
        setattr(ce, name, timed(name, function))
    try:
        _, total = clock(fit)
    finally:
        for name, function in originals.items():
            setattr(ce, name, function)
    seconds["total"] = total
    seconds["other"] = total - sum(v for k, v in seconds.items() if k != "total")
    return seconds


def bench_ctf(sims: list[Simulation], device: torch.device, clock: Clock, profile_path: Path) -> dict[str, Any]:
    microscope = SimulationConfig().microscope

    def fit(sim: Simulation, on: torch.device | str) -> Any:
        return estimate_ctf(
            sim.counts, microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom, device=on
        )

    clock(fit, sims[0], device)  # warm-up: CUDA context, cuFFT plans, kernels
    seconds, periodogram, copy, per_sim = [], [], [], []
    for sim in sims:
        times = []
        gpu_fit = None
        for _ in range(3):
            gpu_fit, s = clock(fit, sim, device)
            times.append(s)
        seconds.append(statistics.median(times))
        _, p = clock(half_set_power_spectra, sim.counts, 512, _TILE_OVERLAP_FRACTION, device)
        periodogram.append(p)
        _, c = clock(lambda a: torch.from_numpy(a).to(device), sim.counts)
        copy.append(c)
        torch.set_num_threads(1)
        cpu_fit, cpu_s = Clock(torch.device("cpu"))(fit, sim, "cpu")
        torch.set_num_threads(os.cpu_count() or 1)
        per_sim.append(
            {
                "name": sim.name,
                "gpu_seconds": times,
                "cpu_seconds_one_thread": cpu_s,
                "gpu": ctf_summary(gpu_fit),
                "cpu": ctf_summary(cpu_fit),
                "truth": {
                    "defocus_u_angstrom": sim.truth.ctf.defocus_u_angstrom,
                    "defocus_v_angstrom": sim.truth.ctf.defocus_v_angstrom,
                    "angle_deg": sim.truth.ctf.astigmatism_angle_deg,
                },
                "gpu_relative_defocus_error": relative_defocus_error(gpu_fit, sim.truth.ctf),
                "cpu_relative_defocus_error": relative_defocus_error(cpu_fit, sim.truth.ctf),
                "gpu_minus_cpu_mean_defocus_angstrom": 0.5
                * (
                    gpu_fit.ctf.defocus_u_angstrom
                    + gpu_fit.ctf.defocus_v_angstrom
                    - cpu_fit.ctf.defocus_u_angstrom
                    - cpu_fit.ctf.defocus_v_angstrom
                ),
            }
        )
        print(
            f"ctf {sim.name}: gpu {min(times) * 1e3:.1f} ms, periodogram {p * 1e3:.1f} ms, cpu {cpu_s:.2f} s",
            flush=True,
        )
    stages = ctf_stage_seconds(lambda: fit(sims[0], device), device)
    print("ctf stages: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in stages.items()), flush=True)
    profile_text = ""
    profile_counts: dict[str, int] = {}
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fit(sims[0], device)
            torch.cuda.synchronize()
        averages = prof.key_averages()
        calls = {e.key: e.count for e in averages}
        profile_counts = {
            "kernel_launches": sum(n for k, n in calls.items() if k.startswith(("cudaLaunchKernel", "cuLaunchKernel"))),
            "stream_synchronisations": calls.get("cudaStreamSynchronize", 0),
            "memcpy_calls": calls.get("cudaMemcpyAsync", 0),
        }
        profile_text = (
            "== by self CPU time ==\n"
            + averages.table(sort_by="self_cpu_time_total", row_limit=45)
            + "\n== by device time ==\n"
            + averages.table(sort_by="self_device_time_total", row_limit=30)
        )
        profile_path.write_text(profile_text)
    return {
        "seconds_median_per_micrograph": seconds,
        "seconds_mean": statistics.fmean(seconds),
        "periodogram_seconds": periodogram,
        "host_to_device_copy_seconds": copy,
        "profile_counts_one_fit": profile_counts,
        "stage_seconds_one_fit": stages,
        "per_micrograph": per_sim,
        "goal_seconds": GOAL_CTF_SECONDS,
        "goal_met": statistics.fmean(seconds) <= GOAL_CTF_SECONDS,
    }


PIPELINE_REPEATS = 4
"""``denoise_learned_many`` runs over the micrographs repeated this many times (fill and drain amortised)."""


def bench_unet(sims: list[Simulation], device: torch.device, clock: Clock) -> dict[str, Any]:
    model = load_pretrained_denoiser()
    size = sims[0].counts.shape[0]
    tilings = [
        ("tile1024_batch4", DEFAULT_TILE_PX, 4),
        ("tile1024_batch16", DEFAULT_TILE_PX, 16),
        ("whole_frame", size, 1),
    ]
    results: dict[str, Any] = {}
    outputs: dict[str, np.ndarray] = {}

    def run(key: str, net: Any, tile: int, batch: int, pipelined: bool, **flags: bool) -> None:
        if pipelined:
            frames = [s.counts for s in sims] * PIPELINE_REPEATS
            clock(denoise_learned_many, frames[:2], net, device=device, tile_px=tile, batch_size=batch)
            outs, total = clock(denoise_learned_many, frames, net, device=device, tile_px=tile, batch_size=batch)
            bad = [o for o in outs if not isinstance(o, np.ndarray)]
            if bad:
                raise RuntimeError(f"{key}: {bad[0]!r}")
            times = [total / len(frames)]
            restored_all = [np.asarray(o) for o in outs[: len(sims)]]
        else:
            clock(denoise_learned, sims[0].counts, net, device=device, tile_px=tile, batch_size=batch)
            times, restored_all = [], []
            for sim in sims:
                restored, t = clock(denoise_learned, sim.counts, net, device=device, tile_px=tile, batch_size=batch)
                times.append(t)
                restored_all.append(restored)
        psnr = [ls_psnr_db(r, sim.clean_image) for r, sim in zip(restored_all, sims, strict=True)]
        outputs[key] = restored_all[0]
        results[key] = {
            "tile_px": tile,
            "batch_size": batch,
            "pipelined": pipelined,
            **flags,
            "seconds": times,
            "seconds_mean": statistics.fmean(times),
            "psnr_db": psnr,
        }
        print(f"{key}: {statistics.fmean(times) * 1e3:.1f} ms/frame, PSNR {statistics.fmean(psnr):.2f} dB", flush=True)

    for cudnn_benchmark in (False, True):
        torch.backends.cudnn.benchmark = cudnn_benchmark
        for label, tile, batch in tilings:
            key = f"unet_{label}" + ("_cudnn_benchmark" if cudnn_benchmark else "")
            run(key, model, tile, batch, False, cudnn_benchmark=cudnn_benchmark, channels_last=False)
    single_best = min(results, key=lambda k: results[k]["seconds_mean"])
    torch.backends.cudnn.benchmark = results[single_best]["cudnn_benchmark"]
    for label, tile, batch in tilings:
        run(
            f"unet_pipelined_{label}",
            model,
            tile,
            batch,
            True,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            channels_last=False,
        )
    channels_last = load_pretrained_denoiser().to(device=device, memory_format=torch.channels_last)
    tile, batch = results[single_best]["tile_px"], results[single_best]["batch_size"]
    for pipelined in (False, True):
        key = "unet_channels_last" + ("_pipelined" if pipelined else "") + f"_tile{tile}_batch{batch}"
        run(
            key,
            channels_last,
            tile,
            batch,
            pipelined,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            channels_last=True,
        )
    best = min(results, key=lambda k: results[k]["seconds_mean"])
    # Where the best single-frame configuration's time goes, on the first micrograph.
    counts = sims[0].counts
    (z, mean, scale), t_norm = clock(_normalise_on, counts, device)
    _, t_copy = clock(lambda a: torch.from_numpy(a).to(device), counts)
    pred, t_forward = clock(_run_tiles, model, z, tile, TILE_MARGIN_PX, batch, device)
    _, t_back = clock(lambda p: (p.double() * scale + mean).float().cpu().numpy(), pred)
    breakdown = {
        "configuration": single_best,
        "copy_in_seconds": t_copy,
        "normalise_incl_copy_seconds": t_norm,
        "forward_seconds": t_forward,
        "denormalise_and_copy_out_seconds": t_back,
    }
    # Agreement with the CPU float32 path (default tiling) on the first micrograph.
    torch.set_num_threads(os.cpu_count() or 1)
    cpu_model = load_pretrained_denoiser()
    cpu_out, cpu_s = Clock(torch.device("cpu"))(denoise_learned, counts, cpu_model, device="cpu")
    agreement = {key: relative_rms(out, cpu_out.astype(np.float64)) for key, out in outputs.items()}
    return {
        "variants": results,
        "best": best,
        "best_seconds_mean": results[best]["seconds_mean"],
        "best_single_frame": single_best,
        "breakdown_best_single_frame_first_micrograph": breakdown,
        "pipeline_frames": len(sims) * PIPELINE_REPEATS,
        "cpu_seconds_all_threads_first_micrograph": cpu_s,
        "cpu_psnr_db_first_micrograph": ls_psnr_db(cpu_out, sims[0].clean_image),
        "relative_rms_vs_cpu_first_micrograph": agreement,
        "n_parameters": model.n_parameters(),
    }


def bench_topaz(sims: list[Simulation], device: torch.device, clock: Clock) -> dict[str, Any]:
    try:
        import topaz
        from topaz.denoise import Denoise, denoise_image
    except Exception as exc:  # the peer is optional: record why it did not run
        return {"available": False, "reason": repr(exc)}
    use_cuda = device.type == "cuda"
    model, load_s = clock(Denoise, "unet", use_cuda=use_cuda)

    def run(image: np.ndarray) -> np.ndarray:
        out = denoise_image(
            image,
            [model],
            lowpass=1,
            cutoff=0,
            deconvolve=False,
            patch_size=1024,
            padding=500,
            normalize=False,
            use_cuda=use_cuda,
        )
        return np.asarray(out, dtype=np.float32)

    runs: dict[str, Any] = {}
    for cudnn_benchmark in (False, True):
        torch.backends.cudnn.benchmark = cudnn_benchmark
        clock(run, sims[0].counts)
        times, psnr = [], []
        for sim in sims:
            out, s = clock(run, sim.counts)
            times.append(s)
            psnr.append(ls_psnr_db(out, sim.clean_image))
        runs["cudnn_benchmark" if cudnn_benchmark else "default"] = {
            "seconds": times,
            "seconds_mean": statistics.fmean(times),
            "psnr_db": psnr,
        }
        print(f"topaz (cudnn.benchmark={cudnn_benchmark}): {statistics.fmean(times) * 1e3:.1f} ms", flush=True)
    best = min(runs, key=lambda k: runs[k]["seconds_mean"])
    return {
        "available": True,
        "topaz_version": topaz.__version__,
        "model": "unet (unet_L2_v0.2.2.sav, bundled in topaz-em), patch 1024, padding 500, float32",
        "load_seconds": load_s,
        "runs": runs,
        "best": best,
        "best_seconds_mean": runs[best]["seconds_mean"],
    }


CONCURRENT_FITS = 24
CONCURRENT_REPEATS = 3
"""Timed passes over the ``CONCURRENT_FITS`` micrographs per worker count (the median is reported)."""
CONCURRENT_WRONG_FIT = 0.01
"""|ΔD|/D above which a fit counts as wrong (one fit at a time is within 0.1 % on these micrographs)."""
"""Fits per worker count in ``ctf_concurrent`` (the micrographs repeated)."""


def bench_ctf_concurrent(sims: list[Simulation], device: torch.device, clock: Clock) -> dict[str, Any]:
    """Throughput of K CTF fits in flight at once: K host threads, each on its own CUDA stream.

    One fit is bound by the host (kernel launches and scalar read-backs, ``ctf_profile_*.txt``), not by
    the GPU, and PyTorch releases the GIL inside its operators, so K threads keep the GPU busier.  This is
    throughput (micrographs per second over a stream of micrographs), not the latency of one fit.
    """
    microscope = SimulationConfig().microscope
    frames = [sims[i % len(sims)] for i in range(CONCURRENT_FITS)]
    streams: dict[int, torch.cuda.Stream] = {}

    def fit(sim: Simulation) -> float:
        if device.type == "cuda":
            ident = threading.get_ident()
            stream = streams.setdefault(ident, torch.cuda.Stream(device))
            with torch.cuda.stream(stream):
                result = estimate_ctf(
                    sim.counts, microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom, device=device
                )
        else:
            result = estimate_ctf(
                sim.counts, microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom, device=device
            )
        return relative_defocus_error(result, sim.truth.ctf)

    runs: dict[str, Any] = {}
    for workers in (1, 2, 4, 8):
        errors: list[float] = []
        times: list[float] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fit, frames[:workers]))  # warm-up per thread
            for _ in range(CONCURRENT_REPEATS):
                out, seconds = clock(lambda: list(pool.map(fit, frames)))
                errors += out
                times.append(seconds)
        seconds = statistics.median(times)
        runs[str(workers)] = {
            "seconds_total": times,
            "seconds_per_micrograph": seconds / len(frames),
            "max_relative_defocus_error": max(errors),
            "fits": len(errors),
            "wrong_fits": sum(e > CONCURRENT_WRONG_FIT for e in errors),
        }
        print(
            f"ctf, {workers} concurrent: {seconds / len(frames) * 1e3:.1f} ms per micrograph, "
            f"{runs[str(workers)]['wrong_fits']} of {len(errors)} fits off by > {CONCURRENT_WRONG_FIT:.0%}",
            flush=True,
        )
    best = min(runs, key=lambda k: runs[k]["seconds_per_micrograph"])
    return {
        "fits_per_run": len(frames),
        "runs": runs,
        "best_workers": int(best),
        "best_seconds_per_micrograph": runs[best]["seconds_per_micrograph"],
    }


MOTION_CPU_RESULTS = Path(__file__).resolve().parent / "results" / "motion_cpu.json"
PATCH_GRID = (5, 5)


def simulate_large_movie(shape: tuple[int, int]) -> Any:
    """bench_motion.py --large's movie: (4096², 40 frames), 25 px drift, seed (2026, 4096)."""
    size, n_frames = shape
    config = SimulationConfig(shape_px=(size, size), n_frames=n_frames, drift_total_px_range=(25.0, 25.0))
    return config, simulate_movie(config, "large", (2026, 4096))


def bench_motion(movie_job: Any, device: torch.device, clock: Clock) -> dict[str, Any]:
    """Global and 5×5-patch motion correction of one 4096² × 40-frame movie on the device.

    The same movie (config and seed) as ``bench_motion.py --large``, whose CPU times (one thread, the
    2-core development machine, another run) are quoted beside for scale.
    """
    config, movie = movie_job.result()
    truth = movie.truth.drift_shifts_px

    def align(frames: np.ndarray, grid: tuple[int, int] | None) -> Any:
        return align_movie(
            frames,
            config.pixel_size_angstrom,
            device,
            patch_grid=grid,
            dose_per_frame_e_per_angstrom2=config.dose_e_per_angstrom2 / config.n_frames,
            voltage_kv=config.voltage_kv,
        )

    clock(align, movie.frames[:8, :1024, :1024], (2, 2))  # warm-up: cuFFT plans and kernels
    global_result, global_s = clock(align, movie.frames, None)
    patch_result, patch_s = clock(align, movie.frames, PATCH_GRID)
    error = global_result.shifts_px - truth
    out: dict[str, Any] = {
        "shape_px": list(config.shape_px),
        "n_frames": config.n_frames,
        "drift_px": 25.0,
        "global_seconds": global_s,
        "patch_seconds": patch_s,
        "global_anchored_rms_px": float(np.sqrt(np.mean(np.sum(error**2, axis=-1)))),
        "patch_model": patch_result.patch_motion.model if patch_result.patch_motion else None,
    }
    if MOTION_CPU_RESULTS.exists() and config.shape_px == (4096, 4096) and config.n_frames == 40:
        large = json.loads(MOTION_CPU_RESULTS.read_text()).get("large") or {}
        out["cpu_reference"] = {k: large.get(k) for k in ("global_seconds", "patch_seconds")}
    print(
        f"motion {config.shape_px[0]}² × {config.n_frames} on {device}: global {global_s:.2f} s, "
        f"patch 5×5 {patch_s:.2f} s",
        flush=True,
    )
    return out


def bench_fused(sims: list[Simulation], device: torch.device, clock: Clock, unet: dict[str, Any]) -> dict[str, Any]:
    model = load_pretrained_denoiser()
    microscope = SimulationConfig().microscope
    best = unet["variants"][unet["best"]] if unet else {"tile_px": DEFAULT_TILE_PX, "batch_size": 4}
    per_sim = []
    for index, sim in enumerate(sims):
        stages: dict[str, float] = {}
        ctf, stages["ctf_fit"] = clock(
            estimate_ctf,
            sim.counts,
            microscope,
            nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom,
            device=device,
        )
        priors, stages["causal_priors"] = clock(causal.fit_priors, sim.counts, ctf, microscope, device=device)
        fit = causal.refined_ctf_fit(ctf, priors)
        wiener, stages["wiener"] = clock(wiener_denoise, sim.counts, fit, microscope, device=device)
        learned, stages["unet"] = clock(
            denoise_learned, sim.counts, model, device=device, tile_px=best["tile_px"], batch_size=best["batch_size"]
        )
        (fused, _), stages["fusion"] = clock(
            fusion.fuse_learned_and_wiener,
            sim.counts,
            model,
            fit,
            microscope,
            seed=FUSION_SEED + index,
            learned_full=learned,
            wiener_full=wiener,
            device=device,
        )
        per_sim.append(
            {
                "name": sim.name,
                "stage_seconds": stages,
                "seconds": sum(stages.values()),
                "causal_iterations": priors.n_iterations,
                "psnr_db": {
                    "wiener": ls_psnr_db(wiener, sim.clean_image),
                    "fused": ls_psnr_db(fused, sim.clean_image),
                },
            }
        )
        print(f"fused {sim.name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()), flush=True)
    return {"per_micrograph": per_sim, "seconds_mean": statistics.fmean(r["seconds"] for r in per_sim)}


# ------------------------------------------------------------------------------------------ report
def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"GPU figures on {env.get('gpu_name', env['device'])} (torch {env['torch']}, CUDA {env.get('cuda')}), "
        f"{result['size']}² micrographs, {result['count']} per configuration, one run "
        f"(`{result['command']}`).",
        "",
    ]
    ctf = result.get("ctf")
    if ctf and "error" not in ctf:
        lines += [
            "| CTF fit | ms / micrograph | goal |",
            "|---|---|---|",
            f"| estimate_ctf (numpy in → CtfFit) | {ctf['seconds_mean'] * 1e3:.1f} | "
            f"≤ {GOAL_CTF_SECONDS * 1e3:.0f} ms: {'met' if ctf['goal_met'] else 'MISSED'} |",
            "| of which the periodogram (half_set_power_spectra) | "
            f"{statistics.fmean(ctf['periodogram_seconds']) * 1e3:.1f} | |",
            f"| host→device copy of the frame | {statistics.fmean(ctf['host_to_device_copy_seconds']) * 1e3:.1f} | |",
            "| the fit less that copy (a frame already on the GPU) | "
            f"{(ctf['seconds_mean'] - statistics.fmean(ctf['host_to_device_copy_seconds'])) * 1e3:.1f} | |",
        ]
        stages = ctf.get("stage_seconds_one_fit")
        if stages:
            lines.append(
                "| stages of one fit (synchronised around each): "
                + ", ".join(f"{k.strip('_')} {v * 1e3:.1f}" for k, v in stages.items())
                + " | | |"
            )
        counts = ctf.get("profile_counts_one_fit")
        if counts:
            lines.append(
                f"| one fit under `torch.profiler`: {counts['kernel_launches']} kernel launches, "
                f"{counts['stream_synchronisations']} stream synchronisations, {counts['memcpy_calls']} copies | | |",
            )
        concurrent = result.get("ctf_concurrent")
        if concurrent and "runs" in concurrent:
            lines += [
                f"| throughput with {k} fits in flight (threads × streams), per micrograph | "
                f"{r['seconds_per_micrograph'] * 1e3:.1f} | (throughput, not latency; "
                f"{r.get('wrong_fits', '?')} of {r.get('fits', '?')} fits off by > 1 %) |"
                for k, r in concurrent["runs"].items()
            ]
        lines += [
            "",
            "GPU vs CPU estimate, same micrograph: "
            + ", ".join(f"{r['gpu_minus_cpu_mean_defocus_angstrom']:+.2f} Å" for r in ctf["per_micrograph"])
            + "; |ΔD|/D vs truth (GPU): "
            + ", ".join(f"{100 * r['gpu_relative_defocus_error']:.3f} %" for r in ctf["per_micrograph"]),
            "",
        ]
    elif ctf:
        lines += [f"CTF section failed: {ctf['error'][-300:]}", ""]
    unet, topaz = result.get("unet"), result.get("topaz")
    if unet and "error" not in unet:
        reference = topaz["best_seconds_mean"] if topaz and topaz.get("available") and "error" not in topaz else None
        lines += ["| restoration | ms / micrograph | Topaz's time / ours | PSNR (dB) |", "|---|---|---|---|"]
        for key, v in unet["variants"].items():
            ratio = f"{reference / v['seconds_mean']:.1f}×" if reference else "–"
            lines.append(f"| {key} | {v['seconds_mean'] * 1e3:.1f} | {ratio} | {statistics.fmean(v['psnr_db']):.2f} |")
        if reference:
            for key, run in topaz["runs"].items():
                lines.append(
                    f"| topaz_unet ({key}) | {run['seconds_mean'] * 1e3:.1f} | – | "
                    f"{statistics.fmean(run['psnr_db']):.2f} |"
                )
        fused = result.get("fused")
        if fused and "error" not in fused:
            ratio = f"{reference / fused['seconds_mean']:.2f}×" if reference else "–"
            lines.append(
                f"| fused (CTF + causal loop + Wiener + U-Net + fusion) | {fused['seconds_mean'] * 1e3:.0f} | "
                f"{ratio} | {statistics.fmean(r['psnr_db']['fused'] for r in fused['per_micrograph']):.2f} |"
            )
        b = unet["breakdown_best_single_frame_first_micrograph"]
        lines += [
            "",
            f"Best single-frame U-Net configuration {b['configuration']}: copy in {b['copy_in_seconds'] * 1e3:.1f} ms, "
            "normalise (incl. "
            f"copy) {b['normalise_incl_copy_seconds'] * 1e3:.1f} ms, forward {b['forward_seconds'] * 1e3:.1f} ms, "
            f"denormalise + copy out {b['denormalise_and_copy_out_seconds'] * 1e3:.1f} ms.  GPU (bf16) vs CPU "
            "(float32) output, RMS difference / std: "
            + ", ".join(f"{k} {v:.4f}" for k, v in unet["relative_rms_vs_cpu_first_micrograph"].items()),
        ]
        if reference:
            ratio = reference / unet["best_seconds_mean"]
            lines.append(
                f"\nThroughput goal ≥ {GOAL_SPEEDUP:g}× Topaz (U-Net, best configuration): "
                f"{ratio:.1f}× — {'met' if ratio >= GOAL_SPEEDUP else 'MISSED'}."
            )
    elif unet:
        lines += [f"U-Net section failed: {unet['error'][-300:]}"]
    motion = result.get("motion")
    if motion and "error" not in motion:
        cpu = motion.get("cpu_reference") or {}
        lines.append(
            f"\nMotion correction of one {motion['shape_px'][0]}² × {motion['n_frames']}-frame movie "
            f"(`bench_motion.py --large`'s): global {motion['global_seconds']:.2f} s, patch 5×5 "
            f"{motion['patch_seconds']:.2f} s on the GPU (global trajectory RMS error "
            f"{motion['global_anchored_rms_px']:.3f} px)"
            + (
                f"; one CPU thread of the development machine took {cpu['global_seconds']:.1f} s and "
                f"{cpu['patch_seconds']:.1f} s (another run, `motion_cpu.json`)."
                if cpu.get("global_seconds")
                else "."
            )
        )
    elif motion:
        lines.append(f"\nMotion section failed: {motion['error'][-300:]}")
    if topaz and not topaz.get("available", True):
        lines.append(f"\nTopaz not run: {topaz['reason']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the results files")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--snr", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--sections", nargs="+", default=["unet", "topaz", "ctf", "ctf_concurrent", "motion", "fused"])
    parser.add_argument("--tag", default="", help="suffix of the results files' names (a run of some sections)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Simulate first, in forked workers, before CUDA is initialised in this process.
    jobs = [(args.size, args.snr, args.seed, i) for i in range(args.count)]
    pool = ProcessPoolExecutor(max_workers=args.count + 1, mp_context=multiprocessing.get_context("fork"))
    movie_shape = (4096, 40) if args.size == 4096 else (args.size, 8)  # the full-size movie with full-size frames
    movie_job = pool.submit(simulate_large_movie, movie_shape) if "motion" in args.sections else None
    sims = list(pool.map(simulate, jobs))
    print(f"simulated {args.count} × {args.size}² in {time.perf_counter() - started:.0f} s", flush=True)
    device = torch.device(args.device)
    clock = Clock(device)
    environment: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        environment.update(
            gpu_name=props.name,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            multiprocessors=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
        )
    slug = (environment.get("gpu_name", str(device))).lower().replace("nvidia", "").strip().replace(" ", "_")
    result: dict[str, Any] = {
        "size": args.size,
        "count": args.count,
        "snr": args.snr,
        "seed": args.seed,
        "command": "python benchmarks/bench_gpu.py "
        + " ".join("DIR" if a == str(args.out) else a for a in sys.argv[1:]),
        "environment": environment,
    }
    name = f"gpu_{slug}_{args.size}" + (f"_{args.tag}" if args.tag else "")

    def save() -> None:
        (args.out / f"{name}.json").write_text(json.dumps(json_ready(result), indent=1))
        (args.out / f"{name}.md").write_text(markdown(result) + "\n")

    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "ctf": lambda: bench_ctf(sims, device, clock, args.out / f"gpu_{slug}_ctf_profile_{args.size}.txt"),
        "unet": lambda: bench_unet(sims, device, clock),
        "topaz": lambda: bench_topaz(sims, device, clock),
        "fused": lambda: bench_fused(sims, device, clock, result.get("unet", {})),
        "ctf_concurrent": lambda: bench_ctf_concurrent(sims, device, clock),
        "motion": lambda: bench_motion(movie_job, device, clock),
    }
    for section in args.sections:
        t = time.perf_counter()
        try:
            result[section] = sections[section]()
        except Exception:  # one section's failure is a result; the others still run
            result[section] = {"error": traceback.format_exc()}
            print(result[section]["error"], file=sys.stderr, flush=True)
        print(f"[{section}: {time.perf_counter() - t:.0f} s]", flush=True)
        save()
    unet, topaz = result.get("unet", {}), result.get("topaz", {})
    if "best_seconds_mean" in unet and topaz.get("available") and "best_seconds_mean" in topaz:
        result["speedup_vs_topaz"] = {"unet_best": topaz["best_seconds_mean"] / unet["best_seconds_mean"]}
        if "seconds_mean" in result.get("fused", {}):
            result["speedup_vs_topaz"]["fused"] = topaz["best_seconds_mean"] / result["fused"]["seconds_mean"]
    pool.shutdown()
    result["total_seconds"] = time.perf_counter() - started
    save()
    print(markdown(result))


if __name__ == "__main__":
    main()
