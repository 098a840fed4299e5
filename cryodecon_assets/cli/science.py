"""``cryodecon ctf`` and ``cryodecon restore``: the science on files, without Dagster."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def resolve_device(name: str) -> str:
    import torch

    torch.set_num_threads(int(os.environ.get("CRYODECON_CPU_THREADS", "1")))  # see TorchDevice.cpu_threads
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"cryodecon: device {name!r} requested but no CUDA device is visible")
    return name


def microscope_from_arguments(args: argparse.Namespace, pixel_size_angstrom: float):  # type: ignore[no-untyped-def]
    from cryodecon_science.optics import MicroscopeSettings

    return MicroscopeSettings(
        voltage_kv=args.voltage_kv,
        spherical_aberration_mm=args.spherical_aberration_mm,
        amplitude_contrast_fraction=args.amplitude_contrast,
        pixel_size_angstrom=args.pixel_size_angstrom or pixel_size_angstrom,
    )


# ---- commands -----------------------------------------------------------------------------------------
def cmd_ctf(args: argparse.Namespace) -> int:
    from cryodecon_science.ctf import estimate_ctf
    from cryodecon_science.io.mrc import InputFileError, read_micrograph
    from cryodecon_science.io.star import MicrographCtfRow, write_micrographs_ctf_star

    device = resolve_device(args.device)
    results, star_rows, failed = [], [], 0
    for path in args.inputs:
        try:
            micrograph = read_micrograph(path)
            microscope = microscope_from_arguments(args, micrograph.pixel_size_angstrom)
            fit = estimate_ctf(micrograph.data, microscope, device=device)
        except (InputFileError, ValueError, OSError) as exc:
            print(f"cryodecon ctf: skipped {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        results.append(
            {
                "micrograph": str(path),
                "defocus_u_angstrom": fit.ctf.defocus_u_angstrom,
                "defocus_v_angstrom": fit.ctf.defocus_v_angstrom,
                "astigmatism_angle_degrees": fit.ctf.astigmatism_angle_deg,
                "fit_resolution_angstrom": fit.fit_resolution_angstrom,
                "cross_correlation": fit.cross_correlation,
            }
        )
        star_rows.append(MicrographCtfRow(str(path), fit, microscope))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1))
    if args.star and star_rows:
        write_micrographs_ctf_star(args.star, star_rows)
    return 2 if failed and not results else (1 if failed else 0)


def cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np

    from cryodecon_science import causal
    from cryodecon_science.ctf import estimate_ctf
    from cryodecon_science.io.mrc import InputFileError, read_micrograph, write_mrc
    from cryodecon_science.restoration.restore import wiener_deconvolve, wiener_denoise

    device = resolve_device(args.device)
    restore = wiener_deconvolve if args.target == "deconvolved" else wiener_denoise
    model = None
    if args.target == "fused":
        from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser

        model = load_pretrained_denoiser()
    output_dir = Path(args.output_dir)
    failed = 0
    for path in args.inputs:
        try:
            micrograph = read_micrograph(path)
            microscope = microscope_from_arguments(args, micrograph.pixel_size_angstrom)
            fit = estimate_ctf(micrograph.data, microscope, device=device)
            priors = causal.fit_priors(micrograph.data, fit, microscope, device=device)
            refined = causal.refined_ctf_fit(fit, priors)
            if model is not None:
                from cryodecon_science.restoration.fusion import fuse_learned_and_wiener

                data, _ = fuse_learned_and_wiener(micrograph.data, model, refined, microscope, device=device)
            else:
                data = restore(micrograph.data, refined, microscope, device=device)
        except (InputFileError, ValueError, OSError) as exc:
            print(f"cryodecon restore: skipped {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        write_mrc(output_dir / Path(path).name, np.asarray(data, dtype=np.float32), microscope.pixel_size_angstrom)
    return 2 if failed == len(args.inputs) else (1 if failed else 0)
