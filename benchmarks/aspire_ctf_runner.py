"""Run ASPIRE's CTF estimator on micrographs and write its raw results as JSON (bench_ctf.py's other side).

Runs under the benchmark-only ASPIRE virtual environment (``benchmarks/setup_aspire.sh``), never under
cryodecon's, and imports nothing from cryodecon:

    benchmarks/.venv-aspire/bin/python benchmarks/aspire_ctf_runner.py INPUT_DIR OUT.json --pixel-size 1.0 \
        --voltage-kv 300 --cs-mm 2.7 --amplitude-contrast 0.07

``INPUT_DIR`` holds one sub-folder per micrograph with one ``.mrc`` in it.  ``aspire.ctf.estimate_ctf``
(ASPIRE 0.14, ``aspire/ctf/ctf_estimator.py``; Heimowitz, Andén & Singer 2020, Ultramicroscopy 212:112950)
takes a *folder* of MRC files, so each micrograph gets its own folder and call: the wall time of one call
is the time for that micrograph (it includes ASPIRE's per-call set-up, e.g. the Fourier–Bessel basis;
``setup_seconds`` below reports a warm-up call on the first micrograph, which is then timed again).

Output, one JSON object in ``OUT.json`` (stdout and stderr carry ASPIRE's own messages):
``aspire_version``, ``parameters`` and ``results`` (one entry per sub-folder, sorted by name) with
ASPIRE's values **as it returns them**: ``defocus_u``/``defocus_v`` in Å (estimate_ctf converts from its
internal nm), ``defocus_ang`` in radians (its STAR writer converts to degrees), ``seconds`` and ``error``
(the exception text, or null).  Conversion to cryodecon's convention
happens in bench_ctf.py, in one named function.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_json", type=Path, help="where the results are written (stdout is ASPIRE's)")
    parser.add_argument("--pixel-size", type=float, required=True, help="Å/px")
    parser.add_argument("--voltage-kv", type=float, required=True)
    parser.add_argument("--cs-mm", type=float, required=True)
    parser.add_argument("--amplitude-contrast", type=float, required=True)
    parser.add_argument("--psd-size", type=int, default=512, help="ASPIRE block size (its default, 512)")
    parser.add_argument("--g-min", type=float, default=30.0, help="low-resolution limit, Å (ASPIRE default 30)")
    parser.add_argument("--g-max", type=float, default=5.0, help="high-resolution limit, Å (ASPIRE default 5)")
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default="float64", help="float64 as ASPIRE's CTF tutorial uses"
    )
    args = parser.parse_args()

    import aspire
    import numpy as np
    from aspire.ctf import estimate_ctf

    folders = sorted(p for p in args.input_dir.iterdir() if p.is_dir())

    def run(folder: Path) -> dict[str, object]:
        files = sorted(folder.glob("*.mrc"))
        if len(files) != 1:
            raise SystemExit(f"{folder} must hold exactly one .mrc, found {len(files)}")
        start = time.perf_counter()
        try:
            out = estimate_ctf(
                data_folder=str(folder),
                pixel_size=args.pixel_size,
                cs=args.cs_mm,
                amplitude_contrast=args.amplitude_contrast,
                voltage=args.voltage_kv,
                psd_size=args.psd_size,
                g_min=args.g_min,
                g_max=args.g_max,
                output_dir=str(folder / "aspire_star"),
                dtype=np.dtype(args.dtype),
            )
            result = out[files[0].name]
            entry: dict[str, object] = {
                "defocus_u": float(result["defocus_u"]),
                "defocus_v": float(result["defocus_v"]),
                "defocus_ang": float(result["defocus_ang"]),
                "error": None,
            }
        except Exception as exc:  # a failed fit is a result to report, not a crash of the benchmark
            entry = {"defocus_u": None, "defocus_v": None, "defocus_ang": None, "error": repr(exc)}
            traceback.print_exc(file=sys.stderr)
        entry["seconds"] = time.perf_counter() - start
        entry["name"] = folder.name
        return entry

    setup_seconds = None
    if folders:
        setup_seconds = run(folders[0])["seconds"]
    results = [run(folder) for folder in folders]
    payload = {
        "aspire_version": aspire.__version__,
        "python": sys.version.split()[0],
        "parameters": {
            "pixel_size": args.pixel_size,
            "voltage": args.voltage_kv,
            "cs": args.cs_mm,
            "amplitude_contrast": args.amplitude_contrast,
            "psd_size": args.psd_size,
            "g_min": args.g_min,
            "g_max": args.g_max,
            "num_tapers": 2,
            "dtype": args.dtype,
        },
        "setup_seconds": setup_seconds,
        "results": results,
    }
    args.output_json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
