"""``cryodecon pick`` / ``extract`` / ``restore`` on two real EPU micrographs (no ground truth: counts and times).

    .venv/bin/python benchmarks/bench_picking_epu.py [--diameter 150] [--threads 1] [--sdist mrcfile-1.5.4.tar.gz]

Data.  The only real micrographs this project can reach offline are the two that ship inside mrcfile's
source distribution (mrcfile 1.5.4, BSD licence): ``tests/test_data/epu2.9_example.mrc`` (4096², uint16,
EPU 2.9 extended header "FEI2") and ``tests/test_data/fei-extended.mrc`` (3838 × 3710, uint16, "FEI1").
Unless ``--sdist`` names the tarball, it is fetched once with
``pip download --no-deps --no-binary :all: mrcfile==1.5.4`` (needs PyPI) and the two files are extracted
into ``benchmarks/out/epu_mrcfile/`` (git-ignored: they are never committed).  The specimen is not
documented; particles in the denoised images are blobs of roughly 100–160 Å, so the run picks for a
``--diameter`` of 150 Å (an assumption, not a known size).  Pixel sizes come from the headers.

Steps, each the released command line run as a subprocess with ``--device cpu`` and ``--threads``
(OMP_NUM_THREADS) threads, timed by wall clock (Python start and model loading included):

1. ``cryodecon restore MIC... --output-dir restored --target fused`` (the pipeline's fused denoising);
2. ``cryodecon pick MIC... --particle-diameter-angstrom D --output-dir picks`` (learned picker + junk
   rejection; writes ``<stem>_autopick.star`` with the kept picks);
3. ``cryodecon extract MIC --coordinates picks --box-size-px N --output-dir particles/<stem>``, one call per
   micrograph, N = ``particle_box_px(D / pixel size)`` (1.5 diameters, even), since the pixel sizes differ.

Then, in this process, ``pick_micrograph`` on the same micrograph gives every candidate with its reason
(checked against the STAR file: its picks must be exactly the candidates kept; the box size is left to
``extract``), and ``cryodecon_assets.batch.figures.picks_picture`` draws them on the denoised
micrograph (green: in the STAR file; red: set aside).  The first micrograph's picture goes to
``docs/images/picks_epu.png``, reduced to a fixed palette of 14 grey levels plus the two circle colours so
that it stays under 300 kB (the noise of a micrograph compresses poorly); full-colour pictures of both stay
in the cache folder.
If a command fails, the results say exactly which and why, and nothing is worked around.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import torch
from _common import write_results
from PIL import Image

from cryodecon_assets.batch.figures import picks_picture
from cryodecon_science.io.mrc import read_micrograph
from cryodecon_science.io.particles import autopick_star_name, read_autopick_star
from cryodecon_science.io.picker_weights import load_pretrained_picker
from cryodecon_science.picking import particle_box_px
from cryodecon_science.picking.micrograph import pick_micrograph

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / "out" / "epu_mrcfile"
CLI = ROOT / ".venv" / "bin" / "cryodecon"
DOCS_PICTURE = ROOT / "docs" / "images" / "picks_epu.png"
MRCFILE_SDIST = "mrcfile==1.5.4"
MEMBERS = ("epu2.9_example.mrc", "fei-extended.mrc")
PICTURE_SIZE_PX = 800
PICTURE_MAX_BYTES = 300_000
GREY_LEVELS = 14
KEPT_RGB = (40, 200, 60)
REJECTED_RGB = (220, 40, 40)


def fetch_micrographs(sdist: Path | None) -> list[Path]:
    """The two micrographs in the cache, extracted from mrcfile's sdist (downloaded when not given)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    targets = [CACHE / name for name in MEMBERS]
    if all(t.exists() for t in targets):
        return targets
    if sdist is None:
        download = CACHE / "sdist"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", MRCFILE_SDIST]
        subprocess.run([*command, "-d", str(download)], check=True)
        sdist = next(download.glob("mrcfile-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        for target in targets:
            member = next(m for m in archive.getmembers() if m.name.endswith(f"tests/test_data/{target.name}"))
            source = archive.extractfile(member)
            if source is None:
                raise RuntimeError(f"{member.name} is not a file in {sdist}")
            target.write_bytes(source.read())
    return targets


def run_cli(arguments: list[str], threads: int) -> dict[str, Any]:
    """Run ``cryodecon ARGS``; command, exit status, wall time and output tails."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run([str(CLI), *arguments], capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    wall = time.perf_counter() - start
    shown = [a.replace(str(ROOT) + "/", "") for a in arguments]
    return {
        "command": "cryodecon " + shlex.join(shown),
        "returncode": proc.returncode,
        "seconds": wall,
        "stdout": proc.stdout[-3000:],
        "stderr": proc.stderr[-3000:],
    }


def header_info(path: Path) -> dict[str, Any]:
    with mrcfile.open(path, permissive=True, header_only=True) as mrc:
        header = mrc.header
        return {
            "shape_yx": [int(header.ny), int(header.nx)],
            "mode": int(header.mode),
            "exttyp": bytes(header.exttyp).decode("ascii", "replace"),
            "pixel_size_angstrom": float(mrc.voxel_size.x),
        }


def fixed_palette_png(picture: Image.Image, path: Path) -> int:
    """Save ``picture`` with 14 grey levels + the two circle colours (palette PNG); returns the bytes."""
    palette_colours = [(round(255 * i / (GREY_LEVELS - 1)),) * 3 for i in range(GREY_LEVELS)]
    palette_colours += [KEPT_RGB, REJECTED_RGB]
    flat = [c for rgb in palette_colours for c in rgb]
    palette = Image.new("P", (1, 1))
    palette.putpalette(flat + [0] * (768 - len(flat)))
    reduced = picture.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    reduced.save(path, optimize=True)
    return path.stat().st_size


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# cryodecon pick / extract on two real EPU micrographs",
        "",
        "The two micrographs shipped in mrcfile 1.5.4's source distribution (`tests/test_data/`).  The specimen "
        f"is unknown; picked for an assumed diameter of {result['diameter_angstrom']:g} Å (the blobs in the "
        "denoised images measure roughly 100–160 Å).  No ground truth: counts and times only, and the picture "
        "to judge by eye.",
        "",
        "| micrograph | shape (y × x) | Å/px (header) | header | box px | candidates | in the STAR file "
        "(their reason in `pick_micrograph`) | set aside | particles extracted | pick in-process s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["micrographs"].items():
        aside = ", ".join(f"{r} {n}" for r, n in m.get("set_aside_by_reason", {}).items()) or "none"
        star = ", ".join(f"{r} {n}" for r, n in m.get("star_picks_by_reason", {}).items()) or "–"
        lines.append(
            f"| {name} | {m['shape_yx'][0]} × {m['shape_yx'][1]} | {m['pixel_size_angstrom']:.4f} | {m['exttyp']} "
            f"| {m.get('box_px', '–')} | {m.get('candidates', '–')} | {m.get('star_picks', '–')} ({star}) | {aside} "
            f"| {m.get('particles_extracted', '–')} | {seconds(m.get('pick_in_process_seconds'))} |"
        )
    lines += ["", "| step | command | exit | wall s |", "|---|---|---|---|"]
    for step in result["steps"]:
        lines.append(f"| {step['step']} | `{step['command']}` | {step['returncode']} | {step['seconds']:.1f} |")
    failed = [s for s in result["steps"] if s["returncode"] != 0]
    for s in failed:
        lines += ["", f"**{s['step']} failed** (exit {s['returncode']}); its stderr ends:", "", "```"]
        lines += [s["stderr"].strip()[-1500:], "```"]
    checks = result.get("checks", {})
    lines += [
        "",
        f"Checks: {checks}",
        "",
        f"Picture: `docs/images/picks_epu.png` ({result.get('picture', {}).get('micrograph', '–')}, "
        f"{result.get('picture', {}).get('bytes', 0) / 1000:.0f} kB; green = in the STAR file, red = set aside), "
        "drawn on "
        "the fused-denoised micrograph.",
        "",
        f"Machine: {result['machine']}; {result['threads']} thread(s) per command (OMP_NUM_THREADS).  "
        f"Command: `{result['command']}`; runtime {result['runtime_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diameter", type=float, default=150.0, help="assumed particle diameter, Å")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sdist", type=Path, default=None, help="mrcfile-1.5.4.tar.gz already downloaded")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    paths = fetch_micrographs(args.sdist)
    restored, picks, particles = CACHE / "restored", CACHE / "picks", CACHE / "particles"
    result: dict[str, Any] = {
        "command": ".venv/bin/python benchmarks/bench_picking_epu.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), no GPU",
        "threads": args.threads,
        "diameter_angstrom": args.diameter,
        "source": f"{MRCFILE_SDIST} sdist, tests/test_data/{{{','.join(MEMBERS)}}}",
        "micrographs": {p.name: header_info(p) for p in paths},
        "steps": [],
        "checks": {},
    }
    mics = [str(p) for p in paths]
    diameter = str(args.diameter)
    steps = [
        ("restore", ["restore", *mics, "--output-dir", str(restored), "--target", "fused", "--device", "cpu"]),
        (
            "pick",
            ["pick", *mics, "--particle-diameter-angstrom", diameter, "--output-dir", str(picks), "--device", "cpu"],
        ),
    ]
    for step, arguments in steps:
        outcome = run_cli(arguments, args.threads)
        result["steps"].append({"step": step, **outcome})
        print(f"{outcome['command']}: exit {outcome['returncode']}, {outcome['seconds']:.1f} s\n{outcome['stdout']}")
    pick_ok = result["steps"][1]["returncode"] == 0
    for path in paths:
        info = result["micrographs"][path.name]
        box = particle_box_px(args.diameter / info["pixel_size_angstrom"])
        info["box_px"] = box
        if not pick_ok:
            continue
        out_dir = particles / path.stem
        extract = ["extract", str(path), "--coordinates", str(picks), "--box-size-px", str(box)]
        outcome = run_cli([*extract, "--output-dir", str(out_dir), "--device", "cpu"], args.threads)
        result["steps"].append({"step": f"extract {path.name}", **outcome})
        print(f"{outcome['command']}: exit {outcome['returncode']}, {outcome['seconds']:.1f} s\n{outcome['stdout']}")
        stack = out_dir / f"{path.stem}.mrcs"
        if outcome["returncode"] == 0 and stack.exists():
            with mrcfile.open(stack, permissive=True, header_only=True) as mrc:
                info["particles_extracted"] = int(mrc.header.nz)

    if pick_ok:
        model = load_pretrained_picker()
        for index, path in enumerate(paths):
            info = result["micrographs"][path.name]
            micrograph = read_micrograph(path)
            start = time.perf_counter()
            picked = pick_micrograph(
                micrograph.data, micrograph.pixel_size_angstrom, args.diameter, model, device="cpu"
            )
            info["pick_in_process_seconds"] = time.perf_counter() - start
            star = read_autopick_star(picks / autopick_star_name(str(path)))
            n_star = star.coords_yx_px.shape[0]
            in_star = np.zeros(len(picked.reasons), dtype=bool)
            star_found = np.zeros(n_star, dtype=bool)
            if n_star and len(picked.reasons):
                distance = np.linalg.norm(picked.coords_yx_px[:, None, :] - star.coords_yx_px[None, :, :], axis=2)
                in_star = distance.min(axis=1) <= 0.01
                star_found = distance.min(axis=0) <= 0.01
            result["checks"][f"{path.name}: every STAR pick is an in-process candidate"] = bool(star_found.all())
            result["checks"][f"{path.name}: the STAR file holds exactly the kept candidates"] = bool(
                np.array_equal(in_star, picked.kept)
            )
            info.update(
                {
                    "candidates": len(picked.reasons),
                    "star_picks": n_star,
                    "star_picks_by_reason": dict(Counter(str(r) for r in picked.reasons[in_star])),
                    "set_aside_by_reason": dict(Counter(str(r) for r in picked.reasons[~in_star])),
                    "carbon_fraction": picked.carbon_fraction,
                    "contamination_fraction": picked.contamination_fraction,
                    "thick_ice_fraction": picked.thick_ice_fraction,
                    "figure_of_merit_star_median": float(np.median(star.figure_of_merit)) if n_star else None,
                }
            )
            restored_path = restored / path.name
            if not restored_path.exists():
                result["checks"][f"{path.name}: restored micrograph written"] = False
                continue
            denoised = read_micrograph(restored_path).data
            picture = picks_picture(
                denoised,
                picked.coords_yx_px,
                in_star,
                args.diameter / micrograph.pixel_size_angstrom,
                size_px=PICTURE_SIZE_PX,
            )
            full = CACHE / "pictures" / f"picks_{path.stem}.png"
            full.parent.mkdir(parents=True, exist_ok=True)
            picture.save(full, optimize=True)
            if index == 0:
                size = fixed_palette_png(picture, DOCS_PICTURE)
                result["picture"] = {
                    "path": str(DOCS_PICTURE.relative_to(ROOT)),
                    "micrograph": path.name,
                    "bytes": size,
                    "under_limit": size < PICTURE_MAX_BYTES,
                }
    result["runtime_seconds"] = time.perf_counter() - started
    text = markdown(result)
    out = write_results("picking_epu", result, text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
