"""``cryodecon classify2d``: reference-free 2D classification of a RELION particles.star, without Dagster.

Input.  A RELION ≥ 3.1 ``particles.star`` (``data_optics`` and ``data_particles``).  Needed: rlnImageName
(``<n>@<stack>``, n counted from 1; the stack path resolved against the current folder, as RELION resolves it
against its project folder), rlnDefocusU/V (Å), and per optics group rlnVoltage, rlnSphericalAberration,
rlnAmplitudeContrast.  Optional: rlnDefocusAngle (deg, default 0), rlnPhaseShift (deg, default 0), rlnOpticsGroup
(needed when there are several groups), rlnImagePixelSize (default: the stack header's).  The groups used must
share voltage, C_s, amplitude contrast and pixel size.  Boxes are RELION's: particles white (contrast inverted at
extraction), centre at index B//2 of an even box.  Each stack is memory-mapped once; only the sections named are
read.  Every box is normalised as RELION's extraction leaves it (background beyond 0.75 · B/2 at mean 0,
standard deviation 1; a no-op on RELION-normalised boxes), then Fourier-cropped to ``--box-size-px`` when larger
(``classification.batches.fourier_crop_boxes``; the pixel size grows by B/B′).

Classification (``cryodecon_science.classification``).  Up to ``STREAM_ABOVE`` particles: one call of
``update_classes(None, …)`` over all of them (``--iterations`` EM iterations from a reference-free start).  More:
the particles are streamed in file order in about equal chunks of at most ``STREAM_CHUNK`` (and at least 2K)
through ``update_classes`` (``--iterations`` on the first chunk, two E/M passes on each later one), then every
particle is assigned once more against the final classes (``assign_particles``), so that each label and pose
refers to the class averages written, not to the classes as they stood when its chunk went through.

Outputs in ``--output-dir``, each written atomically once everything is computed (bad input writes nothing):

* ``class_averages.mrcs``: K sections, float32, the Wiener class averages (particles white) at the classification
  box and pixel size (in the header).
* ``particles.star``: the input, every block and column kept, with per particle rlnClassNumber (1 … K),
  rlnAnglePsi, rlnOriginXAngst, rlnOriginYAngst and rlnMaxValueProbDistribution (the posterior probability of the
  class given) set.  RELION's conventions (``Euler_angles2matrix``, ``Projector::rotate2D``): the particle is the
  class average turned by −ψ (clockwise by ψ in the (x, y) index plane, x the column, y the row as mrcfile reads
  the stack) and then moved by −origin, so the origin is the shift that centres the particle (its centre lies at
  box centre − origin).  The classification's pose (``ClassAssignments``: average turned counter-clockwise by r,
  then shifted by s) gives ψ = −r, wrapped to (−180°, 180°], and origin = −s · pixel size, in Å of the specimen.
  Origins already in the input are not applied and are replaced.
* ``classes.csv``: class_number, particles (labels in ``particles.star``; they sum to n), resolution_angstrom (half-
  set FRC at 0.143; ``inf`` when not even the first ring is resolved), selected (true/false) and reasons (the
  selection rules failed, ``;``-joined, empty when selected; ``classification.selection``) and particles_kept (the
  class's particles that its model explains at least 20 times better than background, ln B ≥ 3, counted for
  selected classes only; ``select_particles``).
* ``particles_selected.star``: the rows of ``particles.star`` kept (a selected class and ln B ≥ 3), what RELION's
  Subset selection or cryoSPARC's Select 2D hands on; not written when no particle is kept.

Exit 0 on success, 2 on bad input (the message names the file, and the line where one applies) or bad options,
1 when the classification itself fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from cryodecon_assets.cli.science import resolve_device

STREAM_ABOVE = 2000
"""More particles than this are streamed through ``update_classes`` in chunks instead of classified in one call."""
STREAM_CHUNK = 1000
"""Largest chunk of a stream, particles (chunks are about equal, in file order, at least 2K each)."""
DEFAULT_DIAMETER_BOX_FRACTION = 0.67
"""Without ``--particle-diameter-angstrom`` the mask diameter is 0.67 × the box edge: the particle a box 1.5 × its
diameter holds (RELION's advice is a box of 1.5–2 × the particle)."""
READ_CHUNK_ELEMENTS = 1 << 25
"""Pixels read from a stack at a time (≈ 256 MB as float64: 8,192 boxes of 64², 128 of 512²)."""
_BACKGROUND_RADIUS_FRACTION = 0.75  # RELION's default background radius, 0.75 · B/2 (``picking.extraction``)

PREFIX = "cryodecon classify2d"


class ClassifyInputError(Exception):
    """Input that cannot be classified; the message names the file (and the line where one applies)."""


@dataclasses.dataclass(frozen=True)
class _Particles:
    """What the classification needs from the STAR file, in file order."""

    blocks: dict[str, Any]  # every block of the file as starfile read it (written back with the new columns)
    stacks: list[str]  # stack path of each particle, as written
    indices: list[int]  # section of each particle in its stack, from 1
    lines: list[int]  # line of each particle in the STAR file
    defocus_u_angstrom: Any
    defocus_v_angstrom: Any
    astigmatism_angle_deg: Any
    phase_shift_rad: Any
    voltage_kv: float
    spherical_aberration_mm: float
    amplitude_contrast_fraction: float
    pixel_size_angstrom: float | None  # rlnImagePixelSize, None when the optics table has none


def cmd_classify2d(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from cryodecon_science.classification import (
        Classification2DConfig,
        ParticleCtfs,
        assign_particles,
        class_averages,
        select_classes,
        select_particles,
        update_classes,
    )
    from cryodecon_science.optics import MicroscopeSettings

    star = Path(args.particles)
    k = args.classes
    if k < 1:
        return _refuse(f"--classes must be >= 1, got {k}")
    if args.box_size_px < 16 or args.box_size_px % 2:
        return _refuse(f"--box-size-px must be even and >= 16, got {args.box_size_px}")
    if args.iterations is not None and args.iterations < 1:
        return _refuse(f"--iterations must be >= 1, got {args.iterations}")
    if args.particle_diameter_angstrom is not None and not args.particle_diameter_angstrom > 0:
        return _refuse(f"--particle-diameter-angstrom must be positive, got {args.particle_diameter_angstrom}")
    device = resolve_device(args.device)
    try:
        particles = _read_star(star)
        n = len(particles.stacks)
        if n < 2 * k:
            raise ClassifyInputError(f"{star}: {n} particles, fewer than 2 per class (2 × {k} = {2 * k})")
        boxes, input_box, header_pixel = _read_boxes(star, particles, args.box_size_px)
        input_pixel = particles.pixel_size_angstrom or header_pixel
        if not (input_pixel and input_pixel > 0):
            raise ClassifyInputError(f"{star}: no rlnImagePixelSize and no pixel size in the stack headers")
        box = boxes.shape[1]
        pixel = input_pixel * input_box / box
        diameter = args.particle_diameter_angstrom or DEFAULT_DIAMETER_BOX_FRACTION * input_box * input_pixel
        if diameter > box * pixel:
            raise ClassifyInputError(
                f"{star}: the particle diameter {diameter:.0f} Å exceeds the box ({input_box} px × {input_pixel:.3f} Å)"
            )
        ctfs = ParticleCtfs(
            particles.defocus_u_angstrom,
            particles.defocus_v_angstrom,
            particles.astigmatism_angle_deg,
            particles.phase_shift_rad,
            MicroscopeSettings(
                particles.voltage_kv,
                particles.spherical_aberration_mm,
                particles.amplitude_contrast_fraction,
                pixel_size_angstrom=pixel,
            ),
        )
        config = Classification2DConfig(n_classes=k, particle_diameter_angstrom=diameter, seed=args.seed)
        if args.iterations is not None:
            config = dataclasses.replace(config, initial_iterations=args.iterations)
    except (ClassifyInputError, ValueError) as exc:
        return _refuse(str(exc))

    try:
        if n <= STREAM_ABOVE:
            state, assigned = update_classes(None, boxes, ctfs, config, device=device)
            parts = [assigned]
            how = f"one batch, {config.initial_iterations} EM iterations"
        else:
            chunks = stream_chunks(n, k)
            state, _ = update_classes(None, boxes[chunks[0]], ctfs.subset(chunks[0]), config, device=device)
            for rows in chunks[1:]:
                state, _ = update_classes(state, boxes[rows], ctfs.subset(rows), config, device=device)
            parts = [assign_particles(state, boxes[rows], ctfs.subset(rows), config, device=device) for rows in chunks]
            how = f"streamed in {len(chunks)} chunks of ≤ {len(chunks[0])} in file order, then assigned again"
        selection = select_classes(state)
        averages = class_averages(state).detach().to("cpu", torch.float32).numpy()
    except (RuntimeError, ValueError) as exc:
        print(f"{PREFIX}: classification failed: {exc}", file=sys.stderr)
        return 1

    labels = np.concatenate([a.class_index for a in parts])
    angles = np.concatenate([a.angle_deg for a in parts])
    shifts = np.concatenate([a.shift_yx_px for a in parts])
    posterior = np.concatenate([a.posterior for a in parts])
    counts = np.bincount(labels, minlength=k)
    kept = np.concatenate([select_particles(a, selection) for a in parts])
    kept_counts = np.bincount(labels[kept], minlength=k)
    psi = -np.asarray(angles, dtype=np.float64)
    psi = np.where(psi <= -180.0, psi + 360.0, psi)  # −r with r in [0, 360): (−360, 0] → (−180, 180]
    psi = np.where(psi > 180.0, psi - 360.0, psi)
    columns = {  # + 0.0 turns −0.0 into 0.0
        "rlnClassNumber": labels.astype(np.int64) + 1,
        "rlnAnglePsi": psi + 0.0,
        "rlnOriginXAngst": -shifts[:, 1] * pixel + 0.0,
        "rlnOriginYAngst": -shifts[:, 0] * pixel + 0.0,
        "rlnMaxValueProbDistribution": np.asarray(posterior, dtype=np.float64),
    }
    output = Path(args.output_dir)
    paths = (
        output / "class_averages.mrcs",
        output / "particles.star",
        output / "classes.csv",
        output / "particles_selected.star",
    )
    try:
        _write_outputs(paths, particles, columns, averages, pixel, counts, kept, kept_counts, selection)
    except OSError as exc:
        return _refuse(f"cannot write the outputs in {output}: {exc}")

    print(
        f"{n} particles from {star} in {k} classes ({how}); box {box} px at {pixel:.3f} Å/px, "
        f"particle diameter {diameter:.0f} Å"
        + ("" if args.particle_diameter_angstrom else f" ({DEFAULT_DIAMETER_BOX_FRACTION} × the box)")
    )
    for c in range(k):
        verdict = (
            f"selected, {int(kept_counts[c])} particles kept"
            if selection.selected[c]
            else f"rejected ({'; '.join(selection.reasons[c])})"
        )
        print(
            f"class {c + 1}: {int(counts[c])} particles, {selection.resolution_0143_angstrom[c]:.1f} Å "
            f"(FRC 0.143), {verdict}"
        )
    for path in paths[:3] if not kept.any() else paths:
        print(f"wrote {path}")
    return 0


def stream_chunks(n: int, n_classes: int) -> list[Any]:
    """Particle indices 0 … n − 1 in file order, split into about equal chunks of at most ``STREAM_CHUNK`` (or 2K
    when that is larger); the first chunk, which starts the classes, holds at least 2K."""
    import numpy as np

    size = max(STREAM_CHUNK, 2 * n_classes)
    parts = math.ceil(n / size)
    if n // parts < 2 * n_classes:
        parts = max(1, n // (2 * n_classes))
    return list(np.array_split(np.arange(n), parts))


def _refuse(message: str) -> int:
    print(f"{PREFIX}: {message}", file=sys.stderr)
    return 2


def _read_star(star: Path) -> _Particles:
    """The particles of a RELION ≥ 3.1 particles.star (module docstring); ClassifyInputError names the file."""
    import numpy as np
    import pandas as pd
    import starfile

    from cryodecon_science.io.particles import first_data_line

    if not star.is_file():
        raise ClassifyInputError(f"{star}: no such file")
    try:
        blocks = starfile.read(star, always_dict=True)
    except Exception as exc:  # starfile raises several types on malformed text
        raise ClassifyInputError(f"{star}: not a STAR file ({exc})") from exc
    optics, table = blocks.get("optics"), blocks.get("particles")
    if not isinstance(optics, pd.DataFrame) or not isinstance(table, pd.DataFrame):
        raise ClassifyInputError(
            f"{star}: needs the loops data_optics and data_particles (RELION ≥ 3.1), has {list(blocks)}"
        )
    missing = [c for c in ("rlnImageName", "rlnDefocusU", "rlnDefocusV") if c not in table.columns]
    if missing:
        raise ClassifyInputError(f"{star}: data_particles lacks the columns {missing}")
    missing = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast") if c not in optics.columns]
    if missing:
        raise ClassifyInputError(f"{star}: data_optics lacks the columns {missing}")
    if len(table) == 0:
        raise ClassifyInputError(f"{star}: data_particles holds no particle")
    first = first_data_line(star, "particles")
    lines = [first + i for i in range(len(table))]

    def numbers(frame: pd.DataFrame, block: str, names: list[str], row_lines: list[int] | None) -> Any:
        values = frame[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = f"line {row_lines[i]}: " if row_lines else ""
            raise ClassifyInputError(f"{star}: {where}data_{block} {names} must be finite numbers")
        return values

    ctf_names = ["rlnDefocusU", "rlnDefocusV"] + [c for c in ("rlnDefocusAngle", "rlnPhaseShift") if c in table]
    ctf = numbers(table, "particles", ctf_names, lines)
    angle = ctf[:, 2] if "rlnDefocusAngle" in table else np.zeros(len(table))
    phase_deg = ctf[:, ctf_names.index("rlnPhaseShift")] if "rlnPhaseShift" in table else np.zeros(len(table))

    if "rlnOpticsGroup" in table.columns:
        groups = numbers(table, "particles", ["rlnOpticsGroup"], lines)[:, 0].astype(np.int64)
        if "rlnOpticsGroup" not in optics.columns:
            raise ClassifyInputError(f"{star}: data_optics lacks rlnOpticsGroup")
        defined = numbers(optics, "optics", ["rlnOpticsGroup"], None)[:, 0].astype(np.int64)
        unknown = ~np.isin(groups, defined)
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise ClassifyInputError(f"{star}: line {lines[i]}: optics group {groups[i]} is not in data_optics")
        used = optics[np.isin(defined, groups)]
    elif len(optics) == 1:
        used = optics
    else:
        raise ClassifyInputError(f"{star}: {len(optics)} optics groups but data_particles has no rlnOpticsGroup")
    optic_names = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    optic_names += ["rlnImagePixelSize"] if "rlnImagePixelSize" in used.columns else []
    settings = numbers(used, "optics", optic_names, None)
    if not np.allclose(settings, settings[:1], rtol=1e-6, atol=0.0):
        raise ClassifyInputError(
            f"{star}: the particles' optics groups differ in {optic_names}; classify one kind of optics per call"
        )

    stacks, indices = [], []
    for line, name in zip(lines, table["rlnImageName"].astype(str), strict=True):
        index, at, stack = name.partition("@")
        if not at or not index.strip().isdigit() or int(index) < 1 or not stack.strip():
            raise ClassifyInputError(f"{star}: line {line}: rlnImageName {name!r} is not <index ≥ 1>@<stack>")
        stacks.append(stack.strip())
        indices.append(int(index))
    return _Particles(
        blocks=blocks,
        stacks=stacks,
        indices=indices,
        lines=lines,
        defocus_u_angstrom=np.ascontiguousarray(ctf[:, 0]),
        defocus_v_angstrom=np.ascontiguousarray(ctf[:, 1]),
        astigmatism_angle_deg=np.ascontiguousarray(angle),
        phase_shift_rad=np.radians(phase_deg),
        voltage_kv=float(settings[0, 0]),
        spherical_aberration_mm=float(settings[0, 1]),
        amplitude_contrast_fraction=float(settings[0, 2]),
        pixel_size_angstrom=float(settings[0, 3]) if len(optic_names) == 4 else None,
    )


def _read_boxes(star: Path, particles: _Particles, box_px: int) -> tuple[Any, int, float]:
    """Every particle's box, normalised and Fourier-cropped to ``box_px`` when larger, in file order; with the
    input box edge and the first stack header's pixel size (0 when it has none)."""
    import mrcfile
    import numpy as np

    from cryodecon_science.classification.batches import fourier_crop_boxes

    by_stack: dict[str, list[int]] = {}
    for i, stack in enumerate(particles.stacks):
        by_stack.setdefault(stack, []).append(i)
    out: Any = None
    input_box, header_pixel, first_stack = 0, 0.0, ""
    for stack, rows in by_stack.items():
        path = Path(stack)
        where = f"{star}: line {particles.lines[rows[0]]}: stack {stack}"
        where += "" if path.is_absolute() else f" (resolved against the current folder {Path.cwd()})"
        if not path.is_file():
            raise ClassifyInputError(f"{where}: no such file")
        with warnings.catch_warnings(record=True) as caught:  # permissive mode warns; the message says why
            warnings.simplefilter("always")
            try:
                mrc = mrcfile.mmap(path, mode="r", permissive=True)
            except (ValueError, OSError) as exc:
                raise ClassifyInputError(f"{where}: not a readable MRC stack ({exc})") from exc
        with mrc:
            data = mrc.data
            if data is None or data.ndim not in (2, 3):
                why = "; ".join(str(w.message) for w in caught) or "no image data"
                raise ClassifyInputError(f"{where}: not a readable MRC stack ({why}; truncated?)")
            sections = data[None] if data.ndim == 2 else data
            size = sections.shape[1:]
            indices = np.asarray([particles.indices[i] for i in rows], dtype=np.int64)
            beyond = np.flatnonzero(indices > sections.shape[0])
            if beyond.size:
                i = rows[int(beyond[0])]
                raise ClassifyInputError(
                    f"{star}: line {particles.lines[i]}: image {particles.indices[i]}@{stack}, but {path} holds "
                    f"{sections.shape[0]} images"
                )
            if size[0] != size[1]:
                raise ClassifyInputError(f"{where}: boxes of {size[1]} × {size[0]} px are not square")
            if out is None:
                input_box, first_stack = int(size[0]), stack
                header_pixel = float(mrc.voxel_size.x)
                if input_box % 2 or input_box < 16:
                    raise ClassifyInputError(f"{where}: boxes of {input_box} px; an even edge of at least 16 is needed")
                out = np.empty((len(particles.stacks), min(box_px, input_box), min(box_px, input_box)), np.float32)
            elif size[0] != input_box:
                raise ClassifyInputError(
                    f"{where}: boxes of {size[0]} px, but {first_stack} has boxes of {input_box} px (one size per call)"
                )
            order = np.argsort(indices, kind="stable")  # read the stack front to back
            step = max(1, READ_CHUNK_ELEMENTS // (input_box * input_box))
            for start in range(0, len(rows), step):
                chosen = order[start : start + step]
                chunk = np.asarray(sections[indices[chosen] - 1], dtype=np.float64)
                if not np.all(np.isfinite(chunk)):
                    raise ClassifyInputError(f"{where}: boxes contain NaN or Inf")
                out[np.asarray(rows)[chosen]] = fourier_crop_boxes(_normalised(chunk), 1.0, box_px)[0]
    return out, input_box, header_pixel


def _normalised(boxes: Any) -> Any:
    """Boxes (n, B, B) with the background beyond 0.75 · B/2 at mean 0 and standard deviation 1 (RELION's
    ``--norm`` without its ramp; idempotent on RELION-normalised boxes); a flat background is only centred."""
    import numpy as np

    box = boxes.shape[-1]
    offsets = np.arange(box) - box // 2
    background = np.hypot(offsets[:, None], offsets[None, :]) > _BACKGROUND_RADIUS_FRACTION * box / 2
    values = boxes[:, background]
    mean = values.mean(axis=1)
    std = values.std(axis=1)
    scale = np.where(std > 0, std, 1.0)
    return (boxes - mean[:, None, None]) / scale[:, None, None]


def _write_outputs(
    paths: tuple[Path, Path, Path],
    particles: _Particles,
    columns: dict[str, Any],
    averages: Any,
    pixel_size_angstrom: float,
    counts: Any,
    kept: Any,
    kept_counts: Any,
    selection: Any,
) -> None:
    """Write class_averages.mrcs, particles.star, classes.csv and (when any particle is kept)
    particles_selected.star, each atomically; a selection file of an earlier run that kept nothing is removed."""
    import csv

    from cryodecon_science.io.atomic import atomic_target
    from cryodecon_science.io.mrc import write_mrc
    from cryodecon_science.io.star import write_star_blocks

    averages_path, star_path, csv_path, selected_path = paths
    write_mrc(averages_path, averages, pixel_size_angstrom)
    blocks = dict(particles.blocks)
    table = blocks["particles"].copy()
    for name, values in columns.items():
        table[name] = values
    blocks["particles"] = table
    write_star_blocks(star_path, blocks)
    if kept.any():
        write_star_blocks(selected_path, {**blocks, "particles": table[kept].reset_index(drop=True)})
    else:
        selected_path.unlink(missing_ok=True)
    with atomic_target(csv_path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_number", "particles", "resolution_angstrom", "selected", "reasons", "particles_kept"])
        for c in range(len(counts)):
            resolution = float(selection.resolution_0143_angstrom[c])
            writer.writerow(
                [
                    c + 1,
                    int(counts[c]),
                    f"{resolution:.2f}" if math.isfinite(resolution) else "inf",
                    "true" if selection.selected[c] else "false",
                    ";".join(selection.reasons[c]),
                    int(kept_counts[c]),
                ]
            )
