"""Is a missed astigmatism angle the search's fault or the data's?  NCC at the estimate vs at the truth.

    .venv/bin/python benchmarks/diagnose_ctf_angle.py [--snr 0.01] [--cases 2 7 8 12 13 14 17 18] [--size 1024]

Re-simulates ``bench_ctf.py``'s micrographs (same seeds, same constant particle density) and runs
``estimate_ctf`` on each.  The final refinement's pixel set (the weighted periodogram pixels of the fit
band, ``ctf.refine_2d.band_pixels``, of the whole spectrum: the jackknife refits that follow it for the
defocus σ are skipped) is captured by wrapping ``refine`` where ``ctf.estimate`` calls it; on it the script
evaluates the fit's objective, the weighted NCC (``ctf.refine_2d._ncc``), at the estimate and at the true
(D, h_x, h_y), and refines from the truth with the estimator's own local optimiser.  If the NCC at the
estimate is at least that at the truth, the estimator found the better optimum of its objective and the
angle error comes from the noise in the data, not from the search.  Writes
``benchmarks/results/ctf_angle_diagnosis_<size>.json`` / ``.md``.  Uses private functions on purpose: it
inspects the estimator, it is not part of it.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
import torch
from _common import write_results
from bench_ctf import angle_error_deg, particles_at_constant_density

import cryodecon_science.ctf.estimate as ce
from cryodecon_science.ctf import refine_2d
from cryodecon_science.optics import CtfParams
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph


def components(p: CtfParams) -> np.ndarray:
    """(mean defocus, h_x, h_y) in Å, h = (U − V)/2 at twice the astigmatism angle (the estimator's variables)."""
    d = 0.5 * (p.defocus_u_angstrom + p.defocus_v_angstrom)
    h = 0.5 * (p.defocus_u_angstrom - p.defocus_v_angstrom)
    a = math.radians(p.astigmatism_angle_deg)
    return np.array([d, h * math.cos(2 * a), h * math.sin(2 * a)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snr", type=float, default=0.01)
    parser.add_argument("--cases", type=int, nargs="+", default=[2, 7, 8, 12, 13, 14, 17, 18])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SimulationConfig(
        shape_px=(args.size, args.size),
        target_snr=args.snr,
        particles_per_micrograph=particles_at_constant_density(args.size),
    )
    captured: dict[str, Any] = {}
    refine = ce.refine

    def recording_refine(pixels: Any, starts: np.ndarray, bounds: Any) -> tuple[np.ndarray, np.ndarray]:
        if len(pixels.s_norm2) == 1:  # the whole spectrum, not the jackknife's group spectra
            captured["pixels"], captured["bounds"] = pixels, bounds
        return refine(pixels, starts, bounds)

    ce.refine = recording_refine  # type: ignore[assignment]
    rows = []
    for i in args.cases:
        sim = simulate_micrograph(config, f"case{i}", (args.seed, i))
        truth = sim.truth.ctf
        fit = ce.estimate_ctf(
            sim.counts, config.microscope, nominal_defocus_angstrom=sim.truth.nominal_defocus_angstrom
        )
        pixels, bounds = captured["pixels"], captured["bounds"]  # the last refinement: the full fit band
        estimate_params, truth_params = components(fit.ctf), components(truth)
        ncc = refine_2d._ncc(pixels, torch.as_tensor(np.stack([estimate_params, truth_params])))
        refined, refined_ncc = refine(pixels, truth_params[None, :], bounds)
        from_truth, ncc_from_truth = refined[0], float(refined_ncc[0])
        angle_from_truth = math.degrees(math.atan2(float(from_truth[2]), float(from_truth[1]))) / 2 % 180
        rows.append(
            {
                "case": i,
                "mean_defocus_angstrom": truth.mean_defocus_angstrom,
                "astigmatism_angstrom": truth.astigmatism_angstrom,
                "angle_error_deg": angle_error_deg(fit.ctf.astigmatism_angle_deg, truth.astigmatism_angle_deg),
                "ncc_at_estimate": float(ncc[0]),
                "ncc_at_truth": float(ncc[1]),
                "ncc_refined_from_truth": ncc_from_truth,
                "angle_error_refined_from_truth_deg": angle_error_deg(angle_from_truth, truth.astigmatism_angle_deg),
                "fit_resolution_angstrom": fit.fit_resolution_angstrom,
            }
        )
        print(rows[-1], flush=True)
    ce.refine = refine  # type: ignore[assignment]
    lines = [
        f"Astigmatism angle at SNR {args.snr:g}, {args.size}² (bench_ctf.py's micrographs with U − V > 500 Å): "
        "the fit's objective at the estimate vs at the truth.",
        "",
        "| case | mean D (Å) | U − V (Å) | angle error | NCC at estimate | NCC at truth "
        "| from truth: NCC, angle error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['mean_defocus_angstrom']:.0f} | {r['astigmatism_angstrom']:.0f} "
            f"| {r['angle_error_deg']:.1f}° | {r['ncc_at_estimate']:.5f} | {r['ncc_at_truth']:.5f} "
            f"| {r['ncc_refined_from_truth']:.5f}, {r['angle_error_refined_from_truth_deg']:.1f}° |"
        )
    text = "\n".join(lines)
    write_results(f"ctf_angle_diagnosis_{args.size}", {"snr": args.snr, "size": args.size, "cases": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
