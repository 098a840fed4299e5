"""Denoising quality and CPU time on simulated micrographs with known clean images: cryodecon vs Topaz-Denoise.

    bash benchmarks/setup_topaz.sh                 # once: benchmark-only venv benchmarks/.venv-topaz
    .venv/bin/python benchmarks/bench_restoration.py [--size 1024] [--count 4] [--snr 0.1 0.03 0.01]

Writes ``benchmarks/results/restoration_cpu.json`` and ``.md``.  No network at run time; deterministic seeds.
All times are wall-clock seconds per micrograph on this machine's CPU (2 cores shared with other jobs),
``--threads`` torch/BLAS threads for every method (Topaz included), so they compare methods on the same
footing, not absolute speeds.

Data.  ``simulate_micrograph(SimulationConfig(shape_px=(N, N), target_snr=snr), name, (seed, i))`` with
the simulator's defaults (structures of ``structure_seed=0``, which the shipped denoiser never saw: it was
trained on ``structure_seed=7``).  Micrograph i has the same optics and noise seed at every SNR.

Methods (each maps the raw counts to an image; the clean image λ(x) is the target):

* ``raw`` — the counts.
* ``gaussian`` — Gaussian low-pass, σ (px) chosen per SNR as the best PSNR over
  ``GAUSSIAN_SIGMAS_PX`` on a separate calibration micrograph (seed ``CALIBRATION_SEED``).
* ``wiener_true_ctf`` — an oracle Wiener filter H = S/(S + F) from the truth: F = mean(λ) + read noise²
  (the white shot + read noise floor, exactly known), S(k) = A(|k|)·CTF²(k) + G(|k|) with the true
  astigmatic CTF and B-factor envelope, A and G ≥ 0 fitted per Fourier ring to the clean image's
  periodogram (A: CTF-modulated specimen power, G: unmodulated inelastic background).  An upper
  reference for linear filtering, not a usable method.
* ``topaz_unet`` — Topaz-Denoise's pretrained ``unet`` (``unet_L2_v0.2.2``; Bepler et al. 2020,
  Nat. Commun. 11:5208) through ``topaz.denoise.denoise_image`` with the CLI's defaults (patch 1024,
  padding 500, no low-pass, no deconvolution), in ``benchmarks/.venv-topaz`` as a subprocess on float32
  MRC files; time per micrograph measured inside the subprocess (model load excluded, reported apart).
  One micrograph is also tried through the ``topaz denoise`` command line; without torchvision (see
  ``setup_topaz.sh``) that fails at import, which the JSON records (``cli_check``).
* ``cryodecon_wiener`` — the pipeline's restoration: ``estimate_ctf`` (nominal defocus given) →
  ``causal.fit_priors`` → ``restore.wiener_denoise`` with ``causal.refined_ctf_fit``.
* ``cryodecon_learned`` — ``denoiser.denoise_learned`` with the shipped weights.

Metrics against the clean image: PSNR and SSIM after a least-squares scale/offset a·x + b (peak/data range
= max − min of the clean image; SSIM of Wang et al. 2004, IEEE TIP 13:600, Gaussian window σ = 1.5 px,
K1 = 0.01, K2 = 0.03), and the Fourier ring correlation with the clean image inside particle boxes: a
``BOX_PX`` box around every true particle position that lies wholly inside the image, each box's mean
removed, FRC per ring (1 Fourier pixel wide) averaged over all boxes of the SNR; the resolution is where
the averaged curve first drops below 0.5 and 0.143 (linear interpolation, Å; smaller is better; the
Nyquist 2·pixel when it never does).  The FRC is invariant to scale and offset; on the whole periodic image a
filter constant on rings would leave it unchanged, so differences between linear filters come from the
unmasked box edges (leakage into rings where the filter removed the power) and from astigmatism; read the
FRC-0.143 column with that caveat (boxes are not apodised).

Goals (issue #3): PSNR ≥ Topaz + 1 dB at every SNR; FRC-0.143 resolution ≥ 30 % better than raw
(d ≤ 0.7·d_raw) and better than Topaz.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
import torch
from _common import json_ready

from cryodecon_science import causal
from cryodecon_science.ctf_estimate import estimate_ctf
from cryodecon_science.denoiser import denoise_learned
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser
from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.optics import ctf_2d, frequency_grid_per_angstrom
from cryodecon_science.restore import apply_fourier_filter, wiener_denoise
from cryodecon_science.simulate import SimulatedMicrograph, SimulationConfig, simulate_micrograph

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TOPAZ_PYTHON = HERE / ".venv-topaz" / "bin" / "python"
TOPAZ_CLI = HERE / ".venv-topaz" / "bin" / "topaz"

GAUSSIAN_SIGMAS_PX = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
CALIBRATION_SEED = 777
BOX_PX = 192
METHODS = ("raw", "gaussian", "wiener_true_ctf", "topaz_unet", "cryodecon_wiener", "cryodecon_learned")
GOAL_PSNR_MARGIN_DB = 1.0
GOAL_FRC_IMPROVEMENT = 0.30

# Runs inside .venv-topaz: argv = input folder, output folder, threads.  Prints one JSON line.
TOPAZ_RUNNER = r"""
import json, os, sys, time
import numpy as np
import torch
threads = int(sys.argv[3])
torch.set_num_threads(threads)
import topaz
from topaz.denoise import Denoise, denoise_image
from topaz.utils.data.loader import load_image
t0 = time.perf_counter()
model = Denoise("unet", use_cuda=False)
load_s = time.perf_counter() - t0
seconds = {}
for name in sorted(os.listdir(sys.argv[1])):
    image = load_image(os.path.join(sys.argv[1], name), make_image=False)
    image = image[0] if isinstance(image, tuple) else image
    mic = np.asarray(image, dtype=np.float32)
    t = time.perf_counter()
    out = denoise_image(mic, [model], lowpass=1, cutoff=0, deconvolve=False, patch_size=1024, padding=500,
                        normalize=False, use_cuda=False)
    seconds[name] = time.perf_counter() - t
    np.save(os.path.join(sys.argv[2], name.replace(".mrc", ".npy")), np.asarray(out, dtype=np.float32))
print(json.dumps({"topaz": topaz.__version__, "torch": torch.__version__, "load_seconds": load_s,
                  "seconds": seconds, "threads": torch.get_num_threads()}))
"""


# ------------------------------------------------------------------------------------------ metrics
def least_squares_fit(estimate: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """a·estimate + b with (a, b) minimising the squared error to ``clean``."""
    x = estimate.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, clean.astype(np.float64).ravel(), rcond=None)
    return (design @ coef).reshape(clean.shape)


def psnr_db(fitted: np.ndarray, clean: np.ndarray) -> float:
    peak = float(clean.max() - clean.min())
    return 10.0 * math.log10(peak**2 / float(np.mean((fitted - clean) ** 2)))


def ssim(fitted: np.ndarray, clean: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004), Gaussian window σ = 1.5 px, data range of the clean image."""
    x = fitted.astype(np.float64)
    y = clean.astype(np.float64)
    data_range = float(y.max() - y.min())
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return np.asarray(scipy.ndimage.gaussian_filter(a, 1.5, truncate=3.5), dtype=np.float64)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx**2
    vy = blur(y * y) - my**2
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def particle_boxes(positions_px: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of BOX_PX boxes centred on the particles that lie wholly inside the image."""
    half = BOX_PX // 2
    corners = []
    for y, x in positions_px:
        y0, x0 = round(float(y)) - half, round(float(x)) - half
        if 0 <= y0 and 0 <= x0 and y0 + BOX_PX <= shape[0] and x0 + BOX_PX <= shape[1]:
            corners.append((y0, x0))
    return corners


def frc_curve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FRC per ring r = 0 … BOX_PX/2 − 1 (ring index = radius in Fourier pixels) of two boxes."""
    fa = np.fft.fft2(a - a.mean())
    fb = np.fft.fft2(b - b.mean())
    n = a.shape[0]
    f = np.fft.fftfreq(n) * n
    radius = np.rint(np.hypot(f[:, None], f[None, :])).astype(np.int64).ravel()
    n_rings = n // 2
    keep = radius < n_rings
    cross = np.bincount(radius[keep], np.real(fa * np.conj(fb)).ravel()[keep], n_rings)
    pa = np.bincount(radius[keep], (np.abs(fa) ** 2).ravel()[keep], n_rings)
    pb = np.bincount(radius[keep], (np.abs(fb) ** 2).ravel()[keep], n_rings)
    return np.asarray(cross / np.sqrt(np.maximum(pa * pb, 1e-300)), dtype=np.float64)


def frc_resolution_angstrom(curve: np.ndarray, threshold: float, pixel_size_angstrom: float) -> float:
    """First crossing below ``threshold`` (from ring 1 on), as a resolution in Å; Nyquist if none."""
    box_angstrom = BOX_PX * pixel_size_angstrom
    for r in range(2, curve.shape[0]):
        if curve[r] < threshold:
            r0, r1 = r - 1, r
            frac = (curve[r0] - threshold) / (curve[r0] - curve[r1]) if curve[r0] != curve[r1] else 0.0
            k = (r0 + frac) / box_angstrom
            return 1.0 / k
    return 2.0 * pixel_size_angstrom


# ------------------------------------------------------------------------------------------ methods
def gaussian(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return np.asarray(scipy.ndimage.gaussian_filter(image.astype(np.float32), sigma_px, mode="reflect"))


def true_ctf_wiener(sim: SimulatedMicrograph, config: SimulationConfig) -> np.ndarray:
    """Oracle Wiener filter from the truth (module docstring)."""
    clean = sim.clean_image.astype(np.float64)
    shape = clean.shape
    n_pix = clean.size
    ctf = ctf_2d(
        sim.truth.ctf,
        config.microscope,
        shape,
        rfft=True,
        bfactor_angstrom2=sim.truth.bfactor_angstrom2,
        dtype=torch.float64,
    ).numpy()
    c2 = ctf**2
    power = np.abs(np.fft.rfft2(clean - clean.mean())) ** 2 / n_pix
    ky, kx = frequency_grid_per_angstrom(shape, config.pixel_size_angstrom, rfft=True)
    ring = np.rint(np.hypot(ky, kx) * shape[0] * config.pixel_size_angstrom).astype(np.int64).ravel()
    n_rings = int(ring.max()) + 1

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring, values.ravel(), n_rings)

    n = ring_sum(np.ones_like(c2))
    s1, s2 = ring_sum(c2), ring_sum(c2**2)
    p0, p1 = ring_sum(power), ring_sum(power * c2)
    det = n * s2 - s1**2
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(det > 1e-12 * n * s2, (n * p1 - s1 * p0) / det, 0.0)
        bg = np.where(det > 1e-12 * n * s2, (s2 * p0 - s1 * p1) / det, p0 / np.maximum(n, 1))
    # Non-negativity: fall back to one-term fits where a coefficient comes out negative.
    only_amp = np.where(s2 > 0, p1 / np.maximum(s2, 1e-300), 0.0)
    only_bg = p0 / np.maximum(n, 1)
    bad_amp, bad_bg = amp < 0, bg < 0
    amp = np.where(bad_amp, 0.0, np.where(bad_bg, only_amp, amp))
    bg = np.where(bad_amp, only_bg, np.where(bad_bg, 0.0, bg))
    signal = amp[ring].reshape(c2.shape) * c2 + bg[ring].reshape(c2.shape)
    floor = float(clean.mean()) + config.read_noise_std_counts**2
    h = signal / (signal + floor)
    h[0, 0] = 1.0
    return apply_fourier_filter(sim.counts, torch.from_numpy(h.astype(np.float32)))


def cryodecon_wiener(sim: SimulatedMicrograph, config: SimulationConfig) -> np.ndarray:
    microscope = config.microscope
    fit = estimate_ctf(sim.counts, microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom)
    priors = causal.fit_priors(sim.counts, fit, microscope)
    return wiener_denoise(sim.counts, causal.refined_ctf_fit(fit, priors), microscope)


# ------------------------------------------------------------------------------------------ topaz
def topaz_environment() -> dict[str, Any]:
    if not TOPAZ_PYTHON.exists():
        return {"available": False, "reason": f"{TOPAZ_PYTHON} not found: run `bash benchmarks/setup_topaz.sh` first"}
    probe = subprocess.run(
        [
            str(TOPAZ_PYTHON),
            "-c",
            "import topaz, torch, sys; print(topaz.__version__, torch.__version__, sys.version.split()[0])",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return {"available": False, "reason": f"`import topaz` failed in {TOPAZ_PYTHON}: {probe.stderr[-800:]}"}
    topaz_version, torch_version, python_version = probe.stdout.split()
    return {
        "available": True,
        "topaz_version": topaz_version,
        "torch": torch_version,
        "python": python_version,
        "venv": str(TOPAZ_PYTHON.parent.parent),
        "model": "unet (unet_L2_v0.2.2.sav, bundled in topaz-em)",
    }


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run_topaz(images: dict[str, np.ndarray], pixel_size: float, threads: int, work: Path) -> dict[str, Any]:
    """Denoise ``images`` with Topaz's unet in its venv; outputs keyed by name, times, and a CLI check."""
    inputs, outputs = work / "in", work / "out"
    inputs.mkdir()
    outputs.mkdir()
    for name, image in images.items():
        write_mrc(inputs / f"{name}.mrc", image.astype(np.float32), pixel_size)
    proc = subprocess.run(
        [str(TOPAZ_PYTHON), "-c", TOPAZ_RUNNER, str(inputs), str(outputs), str(threads)],
        capture_output=True,
        text=True,
        cwd=work,
        env=thread_env(threads),
        check=False,
    )
    if proc.returncode != 0:
        return {"ok": False, "reason": proc.stderr[-1500:]}
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    denoised = {p.stem: np.load(p) for p in outputs.glob("*.npy")}
    # Command-line check on the first micrograph: `topaz denoise` with its defaults writes an MRC.
    first = sorted(images)[0]
    cli_out = work / "cli"
    cli = subprocess.run(
        [str(TOPAZ_CLI), "denoise", "-o", str(cli_out), str(inputs / f"{first}.mrc")],
        capture_output=True,
        text=True,
        cwd=work,
        env=thread_env(threads),
        check=False,
    )
    cli_check: dict[str, Any] = {"returncode": cli.returncode}
    if cli.returncode == 0:
        from cryodecon_science.io.mrc import read_micrograph

        written = list(cli_out.glob("*.mrc"))
        if written:
            data = read_micrograph(written[0]).data
            cli_check["max_abs_difference_vs_api"] = float(np.max(np.abs(data - denoised[first])))
            cli_check["api_output_range"] = float(denoised[first].max() - denoised[first].min())
    else:
        cli_check["stderr"] = cli.stderr[-800:]
    return {"ok": True, "report": report, "denoised": denoised, "cli_check": cli_check}


# ------------------------------------------------------------------------------------------ main
def calibrate_gaussian(size: int, snr: float) -> tuple[float, dict[str, float]]:
    config = SimulationConfig(shape_px=(size, size), target_snr=snr)
    sim = simulate_micrograph(config, "calibration", (CALIBRATION_SEED, 0))
    scores = {
        str(s): psnr_db(least_squares_fit(gaussian(sim.counts, s), sim.clean_image), sim.clean_image)
        for s in GAUSSIAN_SIGMAS_PX
    }
    best = max(GAUSSIAN_SIGMAS_PX, key=lambda s: scores[str(s)])
    return best, scores


def evaluate(estimate: np.ndarray, sim: SimulatedMicrograph) -> tuple[float, float, list[np.ndarray]]:
    clean = sim.clean_image.astype(np.float64)
    fitted = least_squares_fit(estimate, clean)
    curves = [
        frc_curve(estimate[y : y + BOX_PX, x : x + BOX_PX].astype(np.float64), clean[y : y + BOX_PX, x : x + BOX_PX])
        for y, x in particle_boxes(sim.truth.particle_positions_px, clean.shape)
    ]
    return psnr_db(fitted, clean), ssim(fitted, clean), curves


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Denoising on simulated {result['size']}² micrographs, {result['count']} per SNR (CPU, 2 cores shared "
        f"with other jobs, {result['threads']} thread(s) per method)",
        "",
        "PSNR/SSIM vs the clean image after a least-squares scale/offset; FRC resolution vs the clean image "
        f"inside {BOX_PX}-px particle boxes (Å, smaller is better); seconds per micrograph on this CPU.",
        "",
    ]
    for snr_key, block in result["per_snr"].items():
        lines += [
            f"## SNR {snr_key}  (Gaussian σ = {block['gaussian_sigma_px']} px)",
            "",
            "| method | PSNR (dB) | SSIM | FRC-0.5 (Å) | FRC-0.143 (Å) | s / micrograph (CPU) |",
            "|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            row = block["methods"].get(method)
            if row is None:
                lines.append(f"| {method} | n/a | n/a | n/a | n/a | n/a |")
                continue
            lines.append(
                f"| {method} | {row['psnr_db']:.2f} | {row['ssim']:.3f} | {row['frc_0.5_angstrom']:.1f} | "
                f"{row['frc_0.143_angstrom']:.1f} | {row['seconds_per_micrograph']:.2f} |"
            )
        lines.append("")
    lines += ["## Goals", ""] + [f"- {g}" for g in result["goals"]["lines"]]
    topaz = result["topaz"]
    lines += ["", f"Topaz: {json.dumps({k: v for k, v in topaz.items() if k != 'reason'})}"]
    if not topaz.get("available"):
        lines.append(f"Topaz not run: {topaz.get('reason')}")
    return "\n".join(lines) + "\n"


def goals(result: dict[str, Any]) -> dict[str, Any]:
    lines: list[str] = []
    met = {"psnr_vs_topaz": True, "frc_vs_raw": True, "frc_vs_topaz": True}
    for snr_key, block in result["per_snr"].items():
        m = block["methods"]
        ours, raw, topaz = m["cryodecon_learned"], m["raw"], m.get("topaz_unet")
        d_ours, d_raw = ours["frc_0.143_angstrom"], raw["frc_0.143_angstrom"]
        ok_raw = bool(d_ours <= (1.0 - GOAL_FRC_IMPROVEMENT) * d_raw)
        met["frc_vs_raw"] &= ok_raw
        text = (
            f"SNR {snr_key}: FRC-0.143 {d_ours:.1f} Å vs raw {d_raw:.1f} Å "
            f"({100 * (1 - d_ours / d_raw):.0f} % better; goal ≥ 30 %: {'met' if ok_raw else 'MISSED'})"
        )
        if topaz is None:
            met["psnr_vs_topaz"] = met["frc_vs_topaz"] = False
            text += "; Topaz not run: PSNR/FRC goals vs Topaz not assessed"
        else:
            gain = ours["psnr_db"] - topaz["psnr_db"]
            ok_psnr = bool(gain >= GOAL_PSNR_MARGIN_DB)
            ok_frc = bool(d_ours < topaz["frc_0.143_angstrom"])
            met["psnr_vs_topaz"] &= ok_psnr
            met["frc_vs_topaz"] &= ok_frc
            text += (
                f"; PSNR {gain:+.2f} dB vs Topaz (goal ≥ +1 dB: {'met' if ok_psnr else 'MISSED'}); "
                f"FRC-0.143 vs Topaz {topaz['frc_0.143_angstrom']:.1f} Å ({'met' if ok_frc else 'MISSED'})"
            )
        lines.append(text)
    speed = result.get("speed")
    if speed:
        lines.append(
            f"Speed (CPU, {result['threads']} thread(s), {result['size']}²): cryodecon_learned "
            f"{speed['cryodecon_learned_s']:.2f} s vs Topaz unet {speed['topaz_unet_s']:.2f} s per micrograph "
            f"({speed['speedup']:.1f}× throughput)"
        )
    lines.append("Overall: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    return {"met": met, "lines": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.03, 0.01])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "restoration_cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_pretrained_denoiser()
    topaz = topaz_environment()
    result: dict[str, Any] = {
        "size": args.size,
        "count": args.count,
        "seed": args.seed,
        "threads": args.threads,
        "box_px": BOX_PX,
        "command": "python benchmarks/bench_restoration.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cpus": os.cpu_count(),
            "note": "CPU, 2 cores shared with other jobs",
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "topaz": topaz,
        "per_snr": {},
    }
    learned_times: list[float] = []
    topaz_times: list[float] = []
    for snr in args.snr:
        config = SimulationConfig(shape_px=(args.size, args.size), target_snr=snr)
        sigma, sigma_scores = calibrate_gaussian(args.size, snr)
        sims = [
            simulate_micrograph(config, f"snr{snr:g}_{i:02d}".replace(".", "p"), (args.seed, i))
            for i in range(args.count)
        ]
        outputs: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
        seconds: dict[str, list[float]] = {m: [] for m in METHODS}
        for sim in sims:
            for method, fn in (
                ("raw", lambda s: s.counts),
                ("gaussian", lambda s, sg=sigma: gaussian(s.counts, sg)),
                ("wiener_true_ctf", lambda s, c=config: true_ctf_wiener(s, c)),
                ("cryodecon_wiener", lambda s, c=config: cryodecon_wiener(s, c)),
                ("cryodecon_learned", lambda s: denoise_learned(s.counts, model)),
            ):
                t = time.perf_counter()
                outputs[method].append(np.asarray(fn(sim), dtype=np.float32))
                seconds[method].append(time.perf_counter() - t)
        learned_times += seconds["cryodecon_learned"]
        topaz_info: dict[str, Any] = {}
        if topaz.get("available"):
            with tempfile.TemporaryDirectory() as tmp:
                run = run_topaz({s.name: s.counts for s in sims}, config.pixel_size_angstrom, args.threads, Path(tmp))
            if run["ok"]:
                outputs["topaz_unet"] = [run["denoised"][s.name] for s in sims]
                seconds["topaz_unet"] = [run["report"]["seconds"][f"{s.name}.mrc"] for s in sims]
                topaz_times += seconds["topaz_unet"]
                topaz_info = {"load_seconds": run["report"]["load_seconds"], "cli_check": run["cli_check"]}
            else:
                topaz_info = {"error": run["reason"]}
        block: dict[str, Any] = {
            "gaussian_sigma_px": sigma,
            "gaussian_calibration_psnr_db": sigma_scores,
            "realised_snr": [s.truth.snr for s in sims],
            "topaz_run": topaz_info,
            "methods": {},
        }
        for method in METHODS:
            if not outputs[method]:
                continue
            psnrs, ssims, curves = [], [], []
            for sim, est in zip(sims, outputs[method], strict=True):
                p, s, c = evaluate(est, sim)
                psnrs.append(p)
                ssims.append(s)
                curves += c
            mean_curve = np.mean(curves, axis=0)
            block["methods"][method] = {
                "psnr_db": statistics.fmean(psnrs),
                "ssim": statistics.fmean(ssims),
                "frc_0.5_angstrom": frc_resolution_angstrom(mean_curve, 0.5, config.pixel_size_angstrom),
                "frc_0.143_angstrom": frc_resolution_angstrom(mean_curve, 0.143, config.pixel_size_angstrom),
                "seconds_per_micrograph": statistics.fmean(seconds[method]),
                "psnr_db_per_micrograph": psnrs,
                "ssim_per_micrograph": ssims,
                "n_boxes": len(curves),
                "frc_curve": mean_curve.tolist(),
            }
        result["per_snr"][f"{snr:g}"] = block
        print(
            f"SNR {snr:g}: " + ", ".join(f"{m} {v['psnr_db']:.2f} dB" for m, v in block["methods"].items()), flush=True
        )
    if learned_times and topaz_times:
        ours, theirs = statistics.fmean(learned_times), statistics.fmean(topaz_times)
        result["speed"] = {"cryodecon_learned_s": ours, "topaz_unet_s": theirs, "speedup": theirs / ours}
    result["goals"] = goals(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(json_ready(result), indent=1) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
