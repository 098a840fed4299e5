"""Particle coordinates and particle tables in RELION's STAR formats, read and written with ``starfile``.

Coordinates.  ``rlnCoordinateX`` / ``rlnCoordinateY`` are the particle centre's column and row in pixels of
the micrograph, counted from 0 at the first pixel of the array as it is stored (``mrcfile`` reads it as
``data[y, x]``); RELION's Extract cuts the box from round(x) − B/2 (``relion_preprocess``), and cryoSPARC
converts the same numbers to fractions of the micrograph's width and height on import.  No axis is flipped.

Files:

* ``<micrograph stem>_autopick.star``: one unnamed ``data_`` loop with rlnCoordinateX, rlnCoordinateY,
  rlnAutopickFigureOfMerit — what RELION's AutoPick writes and its Extract job reads.
* ``<micrograph stem>_extract.star``: one micrograph's particles, as RELION's Extract writes beside each
  stack; ``particles.star`` merges them (``merge_particles_stars``).
* ``particles.star``: RELION ≥ 3.1 (Zivanov et al. 2020, IUCrJ 7:253) ``data_optics`` (voltage, C_s,
  amplitude contrast, rlnImagePixelSize, rlnImageSize, rlnImageDimensionality = 2,
  rlnMicrographOriginalPixelSize) and ``data_particles`` (rlnImageName ``<n>@<stack>.mrcs`` with n counted
  from 1, rlnMicrographName, rlnCoordinateX/Y, rlnDefocusU/V/Angle in Å and degrees, rlnPhaseShift in
  degrees, rlnCtfMaxResolution, rlnAutopickFigureOfMerit, rlnOpticsGroup, and rlnClassNumber once
  classified).  These are the columns cryoSPARC's "Import Particle Stack" reads from a RELION 3.1 file
  (image, micrograph, location, CTF with the optics of the particle's group).

Both are written atomically with RELION's ``# version 30001`` comment (``io.star``).  A file that cannot be
read back raises ``ParticleFileError`` naming the file and, for a bad row, its line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import starfile

from cryodecon_science.io.errors import InputFileError
from cryodecon_science.io.star import write_star_blocks
from cryodecon_science.optics import CtfParams, MicroscopeSettings

FloatArray = npt.NDArray[np.float64]

AUTOPICK_SUFFIX = "_autopick.star"
AUTOPICK_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit")
PARTICLES_BLOCK = "particles"
OPTICS_BLOCK = "optics"
PARTICLE_OPTICS_COLUMNS = (
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnMicrographOriginalPixelSize",
)
PARTICLE_COLUMNS = (
    "rlnImageName",
    "rlnMicrographName",
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfMaxResolution",
    "rlnAutopickFigureOfMerit",
    "rlnOpticsGroup",
)
CLASS_COLUMN = "rlnClassNumber"


class ParticleFileError(InputFileError):
    """A coordinate or particle STAR file that cannot be used: missing columns, bad values, bad rows."""

    reason = "bad_particle_file"


@dataclass(frozen=True, eq=False)
class PickedCoordinates:
    """Particle centres of one micrograph with their figure of merit.

    Attributes
    ----------
    coords_yx_px : ndarray, shape (n, 2), float64
        Centres [y, x] in pixels of the micrograph (0-based row, column; module docstring).
    figure_of_merit : ndarray, shape (n,), float64
        The picker's score of each centre (higher is more particle-like).
    """

    coords_yx_px: FloatArray
    figure_of_merit: FloatArray

    def __post_init__(self) -> None:
        if self.coords_yx_px.shape != (self.figure_of_merit.shape[0], 2):
            raise ValueError(f"coords {self.coords_yx_px.shape} and scores {self.figure_of_merit.shape} disagree")


@dataclass(frozen=True)
class ParticleRow:
    """One extracted particle as ``particles.star`` lists it.

    Attributes
    ----------
    stack_path : str
        The ``.mrcs`` stack holding its box.
    index_in_stack : int
        Its section in the stack, counted from 1 (RELION's ``<n>@<stack>``).
    micrograph_path : str
        The micrograph it was cut from.
    coord_yx_px : tuple of float
        Centre [y, x] in pixels of the micrograph.
    ctf : CtfParams
        The defocus at the particle (the micrograph's fit), Å, U ≥ V, angle in degrees.
    microscope : MicroscopeSettings
        Optics of the micrograph (its pixel size is the micrograph's).
    fit_resolution_angstrom : float
        Resolution to which the micrograph's CTF fit holds, Å.
    figure_of_merit : float
        The picker's score.
    class_number : int or None
        2D class, counted from 1, once classified.
    """

    stack_path: str
    index_in_stack: int
    micrograph_path: str
    coord_yx_px: tuple[float, float]
    ctf: CtfParams
    microscope: MicroscopeSettings
    fit_resolution_angstrom: float
    figure_of_merit: float
    class_number: int | None = None

    @property
    def image_name(self) -> str:
        return f"{self.index_in_stack:06d}@{self.stack_path}"


def autopick_star_name(micrograph_path: str | os.PathLike[str]) -> str:
    """``<micrograph stem>_autopick.star`` (RELION's AutoPick naming)."""
    return Path(micrograph_path).stem + AUTOPICK_SUFFIX


def write_autopick_star(
    path: str | os.PathLike[str], coords_yx_px: npt.ArrayLike, figure_of_merit: npt.ArrayLike
) -> None:
    """Write one micrograph's picks (centres [y, x] in pixels, scores) as a RELION coordinate file, atomically."""
    picks = PickedCoordinates(
        np.asarray(coords_yx_px, dtype=np.float64).reshape(-1, 2), np.asarray(figure_of_merit, dtype=np.float64)
    )
    table = pd.DataFrame(
        {
            "rlnCoordinateX": picks.coords_yx_px[:, 1],
            "rlnCoordinateY": picks.coords_yx_px[:, 0],
            "rlnAutopickFigureOfMerit": picks.figure_of_merit,
        },
        columns=list(AUTOPICK_COLUMNS),
    )
    write_star_blocks(path, table)


def first_data_line(path: Path, block: str) -> int:
    """1-based line number of the first data row of the loop in ``data_<block>`` (0 when there is none): the
    line an error about a row names."""
    in_block, in_header = False, False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("data_"):
            in_block, in_header = stripped == f"data_{block}", False
        elif in_block and stripped.startswith("_"):
            in_header = True
        elif in_block and in_header and stripped and not stripped.startswith("#"):
            return number
    return 0


def _loop(path: Path, block: str, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        blocks = starfile.read(path, always_dict=True)
    except FileNotFoundError as exc:
        raise ParticleFileError(path, "no such file") from exc
    except Exception as exc:  # starfile raises several types on malformed text
        raise ParticleFileError(path, f"not a STAR file ({exc})") from exc
    table = blocks.get(block)
    if not isinstance(table, pd.DataFrame):
        raise ParticleFileError(path, f"no data_{block} loop (blocks: {list(blocks)})")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ParticleFileError(path, f"data_{block} lacks the columns {missing}")
    return table


def _numeric(path: Path, block: str, table: pd.DataFrame, columns: tuple[str, ...]) -> FloatArray:
    values: FloatArray = table[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        line = first_data_line(path, block) + row
        raise ParticleFileError(path, f"line {line}: {list(columns)} must be finite numbers")
    return values


def read_autopick_star(path: str | os.PathLike[str], shape_yx_px: tuple[int, int] | None = None) -> PickedCoordinates:
    """Read a RELION coordinate file; with ``shape_yx_px``, every centre must lie on the micrograph.

    A file without rlnAutopickFigureOfMerit (e.g. manual picks) gets a figure of merit of 1 for every pick.

    Raises
    ------
    ParticleFileError
        Missing columns, non-numeric values, or a centre outside the micrograph (naming the line).
    """
    source = Path(path)
    table = _loop(source, "", AUTOPICK_COLUMNS[:2])
    xy = _numeric(source, "", table, AUTOPICK_COLUMNS[:2])
    if "rlnAutopickFigureOfMerit" in table.columns:
        merit = _numeric(source, "", table, AUTOPICK_COLUMNS[2:])[:, 0]
    else:
        merit = np.ones(len(table))
    coords = np.ascontiguousarray(xy[:, ::-1])
    if shape_yx_px is not None:
        outside = ~np.all((coords >= -0.5) & (coords < np.asarray(shape_yx_px, dtype=np.float64) - 0.5), axis=1)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            line = first_data_line(source, "") + row
            raise ParticleFileError(
                source, f"line {line}: centre [x, y] = {xy[row].tolist()} lies outside the {shape_yx_px} micrograph"
            )
    return PickedCoordinates(coords, np.asarray(merit, dtype=np.float64))


def write_particles_star(path: str | os.PathLike[str], rows: list[ParticleRow], box_px: int) -> None:
    """Write a RELION ≥ 3.1 ``particles.star`` (module docstring) atomically.

    Optics groups are numbered 1, 2, … in order of first appearance of each distinct ``MicroscopeSettings``;
    the boxes were cut at the micrograph's sampling, so rlnImagePixelSize equals rlnMicrographOriginalPixelSize.
    rlnClassNumber is written when every row has a class.

    Raises
    ------
    ValueError
        No rows, or only some rows with a class (a STAR loop has no empty cells).
    """
    if not rows:
        raise ValueError("no particles to write")
    classified = [row.class_number is not None for row in rows]
    if any(classified) and not all(classified):
        raise ValueError("class_number must be given for every particle or for none")
    groups: dict[MicroscopeSettings, int] = {}
    for row in rows:
        groups.setdefault(row.microscope, len(groups) + 1)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": list(groups.values()),
            "rlnOpticsGroupName": [f"opticsGroup{n}" for n in groups.values()],
            "rlnVoltage": [m.voltage_kv for m in groups],
            "rlnSphericalAberration": [m.spherical_aberration_mm for m in groups],
            "rlnAmplitudeContrast": [m.amplitude_contrast_fraction for m in groups],
            "rlnImagePixelSize": [m.pixel_size_angstrom for m in groups],
            "rlnImageSize": [box_px] * len(groups),
            "rlnImageDimensionality": [2] * len(groups),
            "rlnMicrographOriginalPixelSize": [m.pixel_size_angstrom for m in groups],
        },
        columns=list(PARTICLE_OPTICS_COLUMNS),
    )
    columns: dict[str, list[object]] = {
        "rlnImageName": [row.image_name for row in rows],
        "rlnMicrographName": [row.micrograph_path for row in rows],
        "rlnCoordinateX": [row.coord_yx_px[1] for row in rows],
        "rlnCoordinateY": [row.coord_yx_px[0] for row in rows],
        "rlnDefocusU": [row.ctf.defocus_u_angstrom for row in rows],
        "rlnDefocusV": [row.ctf.defocus_v_angstrom for row in rows],
        "rlnDefocusAngle": [row.ctf.astigmatism_angle_deg for row in rows],
        "rlnPhaseShift": [math.degrees(row.ctf.phase_shift_rad) for row in rows],
        "rlnCtfMaxResolution": [row.fit_resolution_angstrom for row in rows],
        "rlnAutopickFigureOfMerit": [row.figure_of_merit for row in rows],
        "rlnOpticsGroup": [groups[row.microscope] for row in rows],
    }
    if all(classified):
        columns[CLASS_COLUMN] = [row.class_number for row in rows]
    write_star_blocks(path, {OPTICS_BLOCK: optics, PARTICLES_BLOCK: pd.DataFrame(columns)})


def merge_particles_stars(sources: list[Path], target: str | os.PathLike[str]) -> int:
    """Concatenate ``particles.star`` files into ``target`` (atomically); returns the particles written.

    Optics groups that agree in every optics column are merged and renumbered 1, 2, … in order of first
    appearance; each particle keeps its own group's optics.  Sources are read in the order given.

    Raises
    ------
    ParticleFileError
        A source cannot be read (``read_particles_star``).
    """
    optics_key = [c for c in PARTICLE_OPTICS_COLUMNS if c not in ("rlnOpticsGroup", "rlnOpticsGroupName")]
    groups: dict[tuple[object, ...], int] = {}
    optics_rows: list[dict[str, object]] = []
    tables = []
    for source in sources:
        optics, particles = read_particles_star(source)
        mapping = {}
        for _, group in optics.iterrows():
            key = tuple(group[c] for c in optics_key if c in optics.columns)
            if key not in groups:
                groups[key] = len(groups) + 1
                optics_rows.append(
                    {
                        **group.to_dict(),
                        "rlnOpticsGroup": groups[key],
                        "rlnOpticsGroupName": f"opticsGroup{groups[key]}",
                    }
                )
            mapping[int(group["rlnOpticsGroup"])] = groups[key]
        tables.append(particles.assign(rlnOpticsGroup=particles["rlnOpticsGroup"].map(mapping)))
    if not tables:
        raise ValueError("no particles.star files to merge")
    merged = pd.concat(tables, ignore_index=True)
    write_star_blocks(target, {OPTICS_BLOCK: pd.DataFrame(optics_rows), PARTICLES_BLOCK: merged})
    return len(merged)


def read_particles_star(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``particles.star``: (optics, particles) tables, every required column checked.

    Raises
    ------
    ParticleFileError
        A block or a required column missing, a non-numeric coordinate or defocus (naming the line), or a
        particle whose optics group is not defined.
    """
    source = Path(path)
    optics = _loop(source, OPTICS_BLOCK, PARTICLE_OPTICS_COLUMNS[:1] + PARTICLE_OPTICS_COLUMNS[2:7])
    particles = _loop(source, PARTICLES_BLOCK, PARTICLE_COLUMNS[:7] + PARTICLE_COLUMNS[10:])
    _numeric(source, PARTICLES_BLOCK, particles, ("rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV"))
    unknown = ~particles["rlnOpticsGroup"].isin(optics["rlnOpticsGroup"])
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        line = first_data_line(source, PARTICLES_BLOCK) + row
        raise ParticleFileError(source, f"line {line}: optics group {particles['rlnOpticsGroup'].iloc[row]} undefined")
    return optics, particles


@dataclass(frozen=True)
class ParticleStack:
    """One micrograph's extracted particles: the ``.mrcs`` stack and its ``particles.star`` rows.

    Attributes
    ----------
    stack_path : str
        The stack, float32 MRC, one section per particle, pixel size in the header (no file when the
        micrograph gave no particle).
    box_px : int
        Box edge, pixels.
    rows : tuple of ParticleRow
        One per section, in stack order.
    n_box_outside : int
        Kept picks not extracted because their box leaves the micrograph.
    """

    stack_path: str
    box_px: int
    rows: tuple[ParticleRow, ...]
    n_box_outside: int = 0

    @property
    def n_particles(self) -> int:
        return len(self.rows)
