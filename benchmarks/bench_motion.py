"""Motion-correction accuracy and CPU time on simulated movies with known drift (issue #6, motion part).

    .venv/bin/python benchmarks/bench_motion.py [--size 1024] [--seeds 3] [--large] [--threads 1]

Movies:

* **uniform** — ``simulate_movie`` at the simulator's defaults (1 Å/px, 40 e⁻/Å² over 16 frames) with the
  drift path length fixed at 10, 25 and 40 px (``drift_total_px_range=(d, d)``), several seeds each.
* **non-uniform** — the simulator cannot deform the specimen, so these are made here from the noise-free
  exposure of ``simulate_micrograph`` on a grid padded by 64 px.  With c the centre of the cropped image,
  s_f the simulator's trajectory (``drift_trajectory_px``), τ_f = f/(n−1) and
  M = (a/R)·[[1, −1], [1, 1]] (an expansion plus a rotation; R = half the image side, so the local
  deviation reaches a·√2·τ px at the edge midpoints), a feature at frame-0 position r₀ is in frame f at
  r = r₀ + σ(r₀, f),  σ(r₀, f) = s_f + τ_f M (r₀ − c).
  The map is affine, so frame f is the exposure / n sampled at r₀ = c + (I + τ_f M)⁻¹ (r − s_f − c)
  (cubic-spline interpolation, ``scipy.ndimage.map_coordinates``), then Poisson-sampled.

Error: RMS over frames (and, for the field, over a 16 × 16 grid of positions r₀ spread over the image)
of |estimated − true shift|, pixels, with the shift referred to frame 0 ("anchored", the strict measure)
and with the constant offset that best aligns the two trajectories removed ("offset-free": a common
shift of every frame moves the sum but does not blur it).  Global correction is ``align_movie`` without
patches (one shift per frame everywhere); patch correction is ``align_movie(..., patch_grid=(5, 5))``
(the field s_f + δ(r₀, τ_f)).  torch-motion-correction (teamtomo, PyPI) is run as well when importable
(``bash benchmarks/setup_tmc.sh`` installs it into ``benchmarks/.tmc``, beside the project's torch):
global cross-correlation followed by its patch cross-correlation refinement, with the patch-mean
trajectory as its estimate.

Times are wall-clock seconds per movie on this machine's CPU (``--threads`` torch threads), including
the dose-weighted sum.  Writes ``benchmarks/results/motion_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
import torch
from _common import json_ready

from cryodecon_science.motion import MotionCorrection, align_movie
from cryodecon_science.simulate import SimulationConfig, drift_trajectory_px, simulate_micrograph, simulate_movie

RESULTS = Path(__file__).resolve().parent / "results"
DRIFTS_PX = (10.0, 25.0, 40.0)
PATCH_GRID = (5, 5)
PAD_PX = 64


def nonuniform_movie(
    config: SimulationConfig, drift_px: float, edge_px: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (n, ny, nx), trajectory s (n, 2) and deformation matrix M (2, 2) (module docstring)."""
    ny, nx = config.shape_px
    padded = replace(config, shape_px=(ny + 2 * PAD_PX, nx + 2 * PAD_PX))
    clean = simulate_micrograph(padded, "nonuniform", (seed, 7)).clean_image.astype(np.float64)
    rng = np.random.default_rng((seed, 8))
    shifts = drift_trajectory_px(rng, config.n_frames, drift_px)
    radius = 0.5 * min(ny, nx)
    matrix = (edge_px / radius) * np.array([[1.0, -1.0], [1.0, 1.0]])
    spline = scipy.ndimage.spline_filter(clean / config.n_frames, order=3)
    centre = np.array([0.5 * (ny - 1), 0.5 * (nx - 1)])
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    frames = np.empty((config.n_frames, ny, nx), dtype=np.float32)
    for f in range(config.n_frames):
        tau = f / (config.n_frames - 1)
        inverse = np.linalg.inv(np.eye(2) + tau * matrix)
        dy, dx = y - shifts[f, 0] - centre[0], x - shifts[f, 1] - centre[1]
        r0y = centre[0] + inverse[0, 0] * dy + inverse[0, 1] * dx
        r0x = centre[1] + inverse[1, 0] * dy + inverse[1, 1] * dx
        expected = scipy.ndimage.map_coordinates(spline, [r0y + PAD_PX, r0x + PAD_PX], order=3, prefilter=False)
        frames[f] = rng.poisson(np.clip(expected, 0.0, None))
    return frames, shifts, matrix


def sample_points(shape: tuple[int, int]) -> np.ndarray:
    """16 × 16 positions (y, x) spread over the image (cell centres)."""
    ys = (np.arange(16) + 0.5) * shape[0] / 16
    xs = (np.arange(16) + 0.5) * shape[1] / 16
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def estimated_field(result: MotionCorrection, points: np.ndarray) -> np.ndarray:
    """(n_points, n_frames, 2) total shift at frame-0 positions: global, plus δ when patches were used."""
    n = result.shifts_px.shape[0]
    field = np.repeat(result.shifts_px[None], len(points), axis=0)
    if result.patch_motion is not None:
        for f in range(n):
            field[:, f] += result.patch_motion.local_shifts_px(points[:, 0], points[:, 1], f)
    return field


def rms_errors(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Anchored and offset-free RMS of |estimate − truth| over (…, n_frames, 2)."""
    error = estimate - truth
    anchored = float(np.sqrt(np.mean(np.sum(error**2, axis=-1))))
    offset = error - error.mean(axis=-2, keepdims=True)
    return {"anchored": anchored, "offset_free": float(np.sqrt(np.mean(np.sum(offset**2, axis=-1))))}


def tmc_trajectory(frames: np.ndarray, pixel_size: float) -> np.ndarray | None:
    """torch-motion-correction's patch-refined trajectory (frame-0 referenced), or None if not importable."""
    installed = Path(__file__).resolve().parent / ".tmc"  # bash benchmarks/setup_tmc.sh
    if installed.is_dir() and str(installed) not in sys.path:
        sys.path.append(str(installed))
    try:
        import torch_motion_correction as tmc  # type: ignore[import-not-found]
    except ImportError:
        return None
    image = torch.as_tensor(frames)
    global_field = tmc.estimate_global_motion(image, pixel_size)
    patch_size = 2 * (min(frames.shape[1:]) // 6)
    field, _ = tmc.estimate_motion_cross_correlation_patches(
        image,
        pixel_size,
        tmc.PatchSamplingConfig((patch_size, patch_size), 0.5),
        initial_deformation_field=global_field,
    )
    shifts = field.data.detach().mean(dim=(2, 3)).T.double().numpy() / pixel_size
    return np.asarray(shifts - shifts[0])


def timed(frames: np.ndarray, config: SimulationConfig, grid: tuple[int, int] | None) -> tuple[MotionCorrection, float]:
    start = time.perf_counter()
    result = align_movie(
        frames,
        config.pixel_size_angstrom,
        "cpu",
        patch_grid=grid,
        dose_per_frame_e_per_angstrom2=config.dose_e_per_angstrom2 / config.n_frames,
        voltage_kv=config.voltage_kv,
    )
    return result, time.perf_counter() - start


def summarise(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return {}
    return {
        measure: {
            "mean": statistics.fmean(v[measure] for v in values),
            "max": max(v[measure] for v in values),
        }
        for measure in ("anchored", "offset_free")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--edge-px", type=float, default=3.0, help="local deviation scale a of the non-uniform movies")
    parser.add_argument("--large", action="store_true", help="also time one 4096² × 40-frame movie")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = SimulationConfig(shape_px=(args.size, args.size))
    uniform: list[dict[str, Any]] = []
    nonuniform: list[dict[str, Any]] = []
    points = sample_points(base.shape_px)
    for drift in DRIFTS_PX:
        config = replace(base, drift_total_px_range=(drift, drift))
        for seed in range(args.seeds):
            movie = simulate_movie(config, "bench", (2026, int(drift), seed))
            truth = movie.truth.drift_shifts_px
            assert truth is not None
            global_result, global_s = timed(movie.frames, config, None)
            patch_result, patch_s = timed(movie.frames, config, PATCH_GRID)
            truth_field = np.repeat(truth[None], len(points), axis=0)
            row: dict[str, Any] = {
                "drift_px": drift,
                "seed": seed,
                "global": rms_errors(global_result.shifts_px, truth),
                "patch": rms_errors(estimated_field(patch_result, points), truth_field),
                "patch_model": patch_result.patch_motion.model if patch_result.patch_motion else None,
                "global_seconds": global_s,
                "patch_seconds": patch_s,
            }
            tmc_start = time.perf_counter()
            tmc = tmc_trajectory(movie.frames, config.pixel_size_angstrom)
            if tmc is not None:
                row["torch_motion_correction"] = rms_errors(tmc, truth)
                row["torch_motion_correction_seconds"] = time.perf_counter() - tmc_start
            uniform.append(row)
            print(json.dumps(json_ready(row)), flush=True)
        for seed in range(max(1, args.seeds - 1)):
            frames, shifts, matrix = nonuniform_movie(config, drift, args.edge_px, 100 + seed)
            centre = np.array([0.5 * (args.size - 1), 0.5 * (args.size - 1)])
            tau = np.arange(config.n_frames) / (config.n_frames - 1)
            truth_field = shifts[None] + tau[None, :, None] * ((points - centre) @ matrix.T)[:, None, :]
            global_result, global_s = timed(frames, config, None)
            patch_result, patch_s = timed(frames, config, PATCH_GRID)
            row = {
                "drift_px": drift,
                "edge_px": args.edge_px,
                "seed": seed,
                "true_local_rms_px": float(np.sqrt(np.mean(np.sum((truth_field - shifts[None]) ** 2, axis=-1)))),
                "global": rms_errors(estimated_field(global_result, points), truth_field),
                "patch": rms_errors(estimated_field(patch_result, points), truth_field),
                "patch_model": patch_result.patch_motion.model if patch_result.patch_motion else None,
                "global_seconds": global_s,
                "patch_seconds": patch_s,
            }
            nonuniform.append(row)
            print(json.dumps(json_ready(row)), flush=True)
    large = None
    if args.large:
        config = SimulationConfig(shape_px=(4096, 4096), n_frames=40, drift_total_px_range=(25.0, 25.0))
        start = time.perf_counter()
        movie = simulate_movie(config, "large", (2026, 4096))
        simulate_s = time.perf_counter() - start
        truth = movie.truth.drift_shifts_px
        assert truth is not None
        global_result, global_s = timed(movie.frames, config, None)
        patch_result, patch_s = timed(movie.frames, config, PATCH_GRID)
        large = {
            "shape_px": [4096, 4096],
            "n_frames": 40,
            "drift_px": 25.0,
            "simulate_seconds": simulate_s,
            "global_seconds": global_s,
            "patch_seconds": patch_s,
            "global": rms_errors(global_result.shifts_px, truth),
            "patch_model": patch_result.patch_motion.model if patch_result.patch_motion else None,
        }
        print(json.dumps(json_ready(large)), flush=True)
    result = {
        "size_px": args.size,
        "n_frames": base.n_frames,
        "dose_e_per_angstrom2": base.dose_e_per_angstrom2,
        "pixel_size_angstrom": base.pixel_size_angstrom,
        "patch_grid": list(PATCH_GRID),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "uniform_summary": {k: summarise(uniform, k) for k in ("global", "patch", "torch_motion_correction")},
        "nonuniform_summary": {k: summarise(nonuniform, k) for k in ("global", "patch")},
        "seconds_per_movie_median": {
            "global": statistics.median(r["global_seconds"] for r in uniform + nonuniform),
            "patch": statistics.median(r["patch_seconds"] for r in uniform + nonuniform),
        },
        "uniform": uniform,
        "nonuniform": nonuniform,
        "large": large,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "motion_cpu.json").write_text(json.dumps(json_ready(result), indent=1))
    lines = [
        f"# Motion correction on simulated movies ({args.size}², {base.n_frames} frames, "
        f"{base.dose_e_per_angstrom2:g} e⁻/Å², CPU, {result['torch_threads']} thread(s))",
        "",
        "RMS trajectory error, px (mean / max over movies); goal ≤ 0.3 px.",
        "",
        "| movies | method | anchored mean | anchored max | offset-free mean | offset-free max |",
        "|---|---|---|---|---|---|",
    ]
    for label, summary in (("uniform", result["uniform_summary"]), ("non-uniform", result["nonuniform_summary"])):
        for method, values in summary.items():
            if values:
                a, o = values["anchored"], values["offset_free"]
                lines.append(
                    f"| {label} | {method} | {a['mean']:.3f} | {a['max']:.3f} | {o['mean']:.3f} | {o['max']:.3f} |"
                )
    seconds = result["seconds_per_movie_median"]
    lines += ["", f"Median seconds per movie: global {seconds['global']:.2f}, patch 5×5 {seconds['patch']:.2f}."]
    if large is not None:
        lines.append(
            f"4096² × 40 frames: global {large['global_seconds']:.1f} s, patch 5×5 {large['patch_seconds']:.1f} s "
            f"(anchored RMS {large['global']['anchored']:.3f} px)."
        )
    (RESULTS / "motion_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
