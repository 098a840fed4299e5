"""``cryodecon pick`` and ``cryodecon extract``: particles from micrograph files, without Dagster.

Each input is handled on its own: an unreadable micrograph or a bad coordinate file is reported on stderr,
naming the file (and the line), and the other inputs complete.  Exit 0 when all succeed, 1 when some fail,
2 when none succeeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cryodecon_assets.cli.science import microscope_from_arguments, resolve_device


def _outcome(done: int, failed: int) -> int:
    return 2 if failed and not done else (1 if failed else 0)


def cmd_pick(args: argparse.Namespace) -> int:
    from cryodecon_science.io.errors import InputFileError
    from cryodecon_science.io.mrc import read_micrograph
    from cryodecon_science.io.particles import autopick_star_name, write_autopick_star
    from cryodecon_science.io.picker_weights import PickerWeightsError, load_pretrained_picker
    from cryodecon_science.picking.micrograph import pick_micrograph

    device = resolve_device(args.device)
    try:
        model = load_pretrained_picker()
    except PickerWeightsError as exc:
        print(f"cryodecon pick: the shipped picker cannot be loaded: {exc}", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir)
    diameter = args.particle_diameter_angstrom
    if diameter is None:
        try:
            diameter = estimated_diameter(args.inputs, args.pixel_size_angstrom, model, device)
        except ValueError as exc:
            print(f"cryodecon pick: give --particle-diameter-angstrom: {exc}", file=sys.stderr)
            return 2
    done = failed = 0
    for path in args.inputs:
        try:
            micrograph = read_micrograph(path)
            pixel_size = args.pixel_size_angstrom or micrograph.pixel_size_angstrom
            picked = pick_micrograph(micrograph.data, pixel_size, diameter, model, device=device)
        except (InputFileError, ValueError, OSError) as exc:
            print(f"cryodecon pick: skipped {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        kept = picked.kept
        write_autopick_star(
            output_dir / autopick_star_name(path), picked.coords_yx_px[kept], picked.figure_of_merit[kept]
        )
        rejected = ", ".join(f"{n} {r}" for r, n in picked.rejected_counts().items()) or "none"
        print(f"{path}: {int(kept.sum())} particles (set aside: {rejected})")
        done += 1
    return _outcome(done, failed)


ESTIMATE_FROM = 4
"""Micrographs the particle diameter is estimated from when ``cryodecon pick`` is not given one."""


def estimated_diameter(inputs: list[str], pixel_size_override: float | None, model: Any, device: Any) -> float:
    """The particle diameter, Å, estimated from the first readable inputs of the first one's sampling
    (``picking.diameter``); printed with the counts it was read from."""
    from cryodecon_science.io.errors import InputFileError
    from cryodecon_science.io.mrc import read_micrograph
    from cryodecon_science.picking.diameter import estimate_particle_diameter

    images, pixel_size, used = [], None, []
    for path in inputs:
        try:
            micrograph = read_micrograph(path)
        except (InputFileError, OSError):
            continue  # reported when it is picked
        size = pixel_size_override or micrograph.pixel_size_angstrom
        if pixel_size is None:
            pixel_size = size
        if abs(size - pixel_size) <= 1e-3 * pixel_size:
            images.append(micrograph.data)
            used.append(path)
        if len(images) == ESTIMATE_FROM:
            break
    if pixel_size is None:
        raise ValueError("no readable micrograph to estimate the particle diameter from")
    estimate = estimate_particle_diameter(images, pixel_size, model, device=device)
    counts = ", ".join(
        f"{g:.0f} Å: {n:.1f}"
        for g, n in zip(estimate.trial_diameters_angstrom, estimate.picks_per_micrograph, strict=True)
    )
    print(
        f"estimated particle diameter: {estimate.diameter_angstrom:.0f} Å from {len(used)} micrograph(s) "
        f"(picks per micrograph by trial diameter: {counts})"
    )
    return estimate.diameter_angstrom


def cmd_extract(args: argparse.Namespace) -> int:
    from cryodecon_science.ctf import estimate_ctf
    from cryodecon_science.io.errors import InputFileError
    from cryodecon_science.io.mrc import read_micrograph, write_mrc
    from cryodecon_science.io.particles import ParticleRow, autopick_star_name, read_autopick_star, write_particles_star
    from cryodecon_science.picking import box_inside, extract_particles

    device = resolve_device(args.device)
    output_dir = Path(args.output_dir)
    rows: list[ParticleRow] = []
    done = failed = 0
    for path in args.inputs:
        try:
            micrograph = read_micrograph(path)
            shape = (micrograph.data.shape[0], micrograph.data.shape[1])
            picks = read_autopick_star(Path(args.coordinates) / autopick_star_name(path), shape_yx_px=shape)
            inside = box_inside(picks.coords_yx_px, args.box_size_px, shape)
            coords, merit = picks.coords_yx_px[inside], picks.figure_of_merit[inside]
            if coords.shape[0] == 0:
                raise ValueError(f"no particle box of {args.box_size_px} px lies inside the micrograph")
            microscope = microscope_from_arguments(args, micrograph.pixel_size_angstrom)
            fit = estimate_ctf(micrograph.data, microscope, device=device)
            boxes = extract_particles(micrograph.data, coords, args.box_size_px)
        except (InputFileError, ValueError, OSError) as exc:
            print(f"cryodecon extract: skipped {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        stack = output_dir / f"{Path(path).stem}.mrcs"
        write_mrc(stack, boxes, microscope.pixel_size_angstrom)
        rows += [
            ParticleRow(
                str(stack),
                i + 1,
                str(path),
                (float(y), float(x)),
                fit.ctf,
                microscope,
                fit.fit_resolution_angstrom,
                float(m),
            )
            for i, ((y, x), m) in enumerate(zip(coords, merit, strict=True))
        ]
        edge = int((~inside).sum())
        print(f"{path}: {coords.shape[0]} particles" + (f" ({edge} too close to the edge for the box)" if edge else ""))
        done += 1
    if rows:
        write_particles_star(output_dir / "particles.star", rows, args.box_size_px)
    return _outcome(done, failed)
