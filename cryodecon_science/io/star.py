"""RELION micrograph tables (``micrographs_ctf.star``, ``corrected_micrographs.star``), read and written
with ``starfile``.

Layout of RELION 3.1 and later (Zivanov et al. 2020, IUCrJ 7:253, "optics groups"): a ``data_optics``
loop with one row per optics group and a ``data_micrographs`` loop with one row per micrograph that
refers to its group by ``rlnOpticsGroup``.  Units are RELION's: defocus, astigmatism and resolution in
Å, voltage in kV, C_s in mm, pixel size in Å, defocus angle and phase shift in **degrees** (the
``CtfParams`` phase shift is in radians and is converted here, and only here).  Defocus U ≥ V and the
angle from x to U follow the CTFFIND convention that ``cryodecon_science.optics`` also uses, so no sign or
axis change is needed.

``starfile`` serialises the tables; the one thing it does not write, the ``# version 30001`` comment
that RELION ≥ 3.1 reads to recognise the optics-group format (files without it are taken for pre-3.1
tables), is inserted before each ``data_`` block.  Files are written to a temporary file in the target
folder and moved into place with ``os.replace``, so a reader never sees a half-written table.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pandas as pd
import starfile

from cryodecon_science.io.atomic import atomic_target
from cryodecon_science.optics import CtfParams, MicroscopeSettings
from cryodecon_science.records import CtfFit

RELION_STAR_VERSION = 30001
OPTICS_BLOCK = "optics"
MICROGRAPHS_BLOCK = "micrographs"
OPTICS_COLUMNS = (
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographPixelSize",
)
MICROGRAPH_COLUMNS = (
    "rlnMicrographName",
    "rlnOpticsGroup",
    "rlnCtfImage",  # only when every row has a CTF diagnostic image
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnCtfAstigmatism",
    "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution",
    "rlnPhaseShift",
)

# What a table must hold to be read back (RELION itself may omit the others).
_REQUIRED_OPTICS_COLUMNS = (
    "rlnOpticsGroup",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographPixelSize",
)
_REQUIRED_MICROGRAPH_COLUMNS = (
    "rlnMicrographName",
    "rlnOpticsGroup",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution",
)


# RELION's motion-correction table (``MotionCorr/jobNNN/corrected_micrographs.star``).
CORRECTED_MICROGRAPH_COLUMNS = (
    "rlnMicrographName",  # the dose-weighted sum where there is one (what RELION extracts from)
    "rlnMicrographNameNoDW",  # the plain aligned sum (what CTFFIND fits)
    "rlnMicrographNameEven",
    "rlnMicrographNameOdd",
    "rlnOpticsGroup",
    "rlnAccumMotionTotal",
    "rlnAccumMotionEarly",
    "rlnAccumMotionLate",
)


@dataclass(frozen=True)
class CorrectedMicrographRow:
    """One motion-corrected movie for ``corrected_micrographs.star``.

    Attributes
    ----------
    micrograph_path : str
        ``rlnMicrographName``: the dose-weighted sum, or the aligned sum when no dose is known.
    no_dose_weighting_path : str or None
        ``rlnMicrographNameNoDW``: the aligned sum, when ``micrograph_path`` is dose-weighted.
    even_path, odd_path : str
        ``rlnMicrographNameEven``/``Odd``: sums of the even and odd frames (independent noise).
    microscope : MicroscopeSettings
        Its optics group.
    motion_total_angstrom : float
        ``rlnAccumMotionTotal``, Å.
    motion_early_angstrom, motion_late_angstrom : float or None
        ``rlnAccumMotionEarly``/``Late``, Å (None without a dose per frame).
    """

    micrograph_path: str
    no_dose_weighting_path: str | None
    even_path: str
    odd_path: str
    microscope: MicroscopeSettings
    motion_total_angstrom: float
    motion_early_angstrom: float | None
    motion_late_angstrom: float | None


class StarFormatError(ValueError):
    """A STAR file that is not a RELION ≥ 3.1 micrograph CTF table."""


@dataclass(frozen=True)
class MicrographCtfRow:
    """One micrograph to write: where it is, its CTF fit and the optics it was recorded with.

    Attributes
    ----------
    micrograph_path : str
        Path of the micrograph as RELION should find it (usually relative to the project folder).
    ctf_fit : CtfFit
        Result of ``ctf.estimate_ctf``.
    microscope : MicroscopeSettings
        Voltage, C_s, amplitude contrast and pixel size; rows with equal settings share an optics group.
    ctf_image_path : str, optional
        Diagnostic power-spectrum image (``rlnCtfImage``), e.g. ``"CtfFind/job003/mic.ctf:mrc"``.
    """

    micrograph_path: str
    ctf_fit: CtfFit
    microscope: MicroscopeSettings
    ctf_image_path: str | None = None


@dataclass(frozen=True)
class MicrographCtfRecord:
    """What one ``data_micrographs`` row (with its optics group) holds, as read back.

    Attributes
    ----------
    micrograph_path : str
        ``rlnMicrographName``.
    ctf : CtfParams
        ``rlnDefocusU``/``V`` (Å), ``rlnDefocusAngle`` (deg) and ``rlnPhaseShift`` (converted to rad).
    microscope : MicroscopeSettings
        From the row's optics group.
    fit_resolution_angstrom : float
        ``rlnCtfMaxResolution``, Å.
    figure_of_merit : float
        ``rlnCtfFigureOfMerit`` (here the fit's cross-correlation).
    optics_group : int
        ``rlnOpticsGroup``.
    optics_group_name : str
        ``rlnOpticsGroupName`` of that group.
    ctf_image_path : str or None
        ``rlnCtfImage`` when present.
    """

    micrograph_path: str
    ctf: CtfParams
    microscope: MicroscopeSettings
    fit_resolution_angstrom: float
    figure_of_merit: float
    optics_group: int
    optics_group_name: str
    ctf_image_path: str | None = None


def write_micrographs_ctf_star(path: str | os.PathLike[str], rows: list[MicrographCtfRow]) -> None:
    """Write a RELION ≥ 3.1 ``micrographs_ctf.star`` (module docstring) atomically.

    Optics groups are numbered 1, 2, … in order of first appearance of each distinct
    ``MicroscopeSettings`` and named ``opticsGroup<n>``.

    Raises
    ------
    ValueError
        If ``rows`` is empty, or only some rows have a ``ctf_image_path`` (a STAR loop cannot hold
        empty cells).
    """
    if not rows:
        raise ValueError("no micrographs to write")
    with_image = [row.ctf_image_path is not None for row in rows]
    if any(with_image) and not all(with_image):
        raise ValueError("ctf_image_path must be given for every row or for none")

    groups, optics = _optics_groups([row.microscope for row in rows])
    columns: dict[str, list[object]] = {
        "rlnMicrographName": [row.micrograph_path for row in rows],
        "rlnOpticsGroup": [groups[row.microscope] for row in rows],
    }
    if all(with_image):
        columns["rlnCtfImage"] = [row.ctf_image_path for row in rows]
    columns |= {
        "rlnDefocusU": [row.ctf_fit.ctf.defocus_u_angstrom for row in rows],
        "rlnDefocusV": [row.ctf_fit.ctf.defocus_v_angstrom for row in rows],
        "rlnDefocusAngle": [row.ctf_fit.ctf.astigmatism_angle_deg for row in rows],
        "rlnCtfAstigmatism": [row.ctf_fit.ctf.astigmatism_angstrom for row in rows],
        "rlnCtfFigureOfMerit": [row.ctf_fit.cross_correlation for row in rows],
        "rlnCtfMaxResolution": [row.ctf_fit.fit_resolution_angstrom for row in rows],
        "rlnPhaseShift": [math.degrees(row.ctf_fit.ctf.phase_shift_rad) for row in rows],
    }
    _write_star_atomically(path, optics, pd.DataFrame(columns))


def write_corrected_micrographs_star(path: str | os.PathLike[str], rows: list[CorrectedMicrographRow]) -> None:
    """Write a RELION ≥ 3.1 ``corrected_micrographs.star`` (the table RELION's MotionCorr job writes and its
    CtfFind, ManualPick and Extract jobs read) atomically.  ``rlnMicrographNameNoDW`` is written when every
    row has a dose-weighted sum, the early/late motion when every row has them (a loop has no empty cells).
    """
    if not rows:
        raise ValueError("no micrographs to write")
    groups, optics = _optics_groups([row.microscope for row in rows])
    columns: dict[str, list[object]] = {"rlnMicrographName": [row.micrograph_path for row in rows]}
    if all(row.no_dose_weighting_path is not None for row in rows):
        columns["rlnMicrographNameNoDW"] = [row.no_dose_weighting_path for row in rows]
    columns |= {
        "rlnMicrographNameEven": [row.even_path for row in rows],
        "rlnMicrographNameOdd": [row.odd_path for row in rows],
        "rlnOpticsGroup": [groups[row.microscope] for row in rows],
        "rlnAccumMotionTotal": [row.motion_total_angstrom for row in rows],
    }
    if all(row.motion_early_angstrom is not None and row.motion_late_angstrom is not None for row in rows):
        columns["rlnAccumMotionEarly"] = [row.motion_early_angstrom for row in rows]
        columns["rlnAccumMotionLate"] = [row.motion_late_angstrom for row in rows]
    _write_star_atomically(path, optics, pd.DataFrame(columns))


def _optics_groups(microscopes: list[MicroscopeSettings]) -> tuple[dict[MicroscopeSettings, int], pd.DataFrame]:
    """Optics groups 1, 2, … in order of first appearance, named ``opticsGroup<n>``, and their table."""
    groups: dict[MicroscopeSettings, int] = {}
    for microscope in microscopes:
        groups.setdefault(microscope, len(groups) + 1)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": list(groups.values()),
            "rlnOpticsGroupName": [f"opticsGroup{number}" for number in groups.values()],
            "rlnVoltage": [m.voltage_kv for m in groups],
            "rlnSphericalAberration": [m.spherical_aberration_mm for m in groups],
            "rlnAmplitudeContrast": [m.amplitude_contrast_fraction for m in groups],
            "rlnMicrographPixelSize": [m.pixel_size_angstrom for m in groups],
        },
        columns=list(OPTICS_COLUMNS),
    )
    return groups, optics


def write_star_blocks(path: str | os.PathLike[str], blocks: dict[str, pd.DataFrame] | pd.DataFrame) -> None:
    """Write STAR blocks with RELION's version comment, via a temporary file moved into place (module docstring).

    A single DataFrame is written as one unnamed ``data_`` block (RELION's coordinate files).
    """
    with atomic_target(path) as tmp:
        starfile.write(blocks, tmp)
        text = tmp.read_text()
        version = f"# version {RELION_STAR_VERSION}\n\n"
        text = "".join(version + line if line.startswith("data_") else line for line in text.splitlines(True))
        tmp.write_text(text)


def _write_star_atomically(path: str | os.PathLike[str], optics: pd.DataFrame, micrographs: pd.DataFrame) -> None:
    write_star_blocks(path, {OPTICS_BLOCK: optics, MICROGRAPHS_BLOCK: micrographs})


def read_micrographs_ctf_star(path: str | os.PathLike[str]) -> list[MicrographCtfRecord]:
    """Read a RELION ≥ 3.1 micrograph CTF table (as written by ``write_micrographs_ctf_star`` or RELION).

    Raises
    ------
    StarFormatError
        If the ``optics`` or ``micrographs`` block or a required column is missing, or a row refers to
        an optics group that is not defined.
    """
    blocks = starfile.read(path, always_dict=True)
    if OPTICS_BLOCK not in blocks or MICROGRAPHS_BLOCK not in blocks:
        raise StarFormatError(f"{path}: needs data_{OPTICS_BLOCK} and data_{MICROGRAPHS_BLOCK}, has {list(blocks)}")
    optics, micrographs = blocks[OPTICS_BLOCK], blocks[MICROGRAPHS_BLOCK]
    if not isinstance(optics, pd.DataFrame) or not isinstance(micrographs, pd.DataFrame):
        raise StarFormatError(f"{path}: the optics and micrographs blocks must be loops")
    for block, table, needed in (
        (OPTICS_BLOCK, optics, _REQUIRED_OPTICS_COLUMNS),
        (MICROGRAPHS_BLOCK, micrographs, _REQUIRED_MICROGRAPH_COLUMNS),
    ):
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise StarFormatError(f"{path}: data_{block} lacks {missing}")

    group_settings: dict[int, tuple[MicroscopeSettings, str]] = {}
    for _, group in optics.iterrows():
        number = int(group["rlnOpticsGroup"])
        name = str(group["rlnOpticsGroupName"]) if "rlnOpticsGroupName" in optics.columns else f"opticsGroup{number}"
        settings = MicroscopeSettings(
            voltage_kv=float(group["rlnVoltage"]),
            spherical_aberration_mm=float(group["rlnSphericalAberration"]),
            amplitude_contrast_fraction=float(group["rlnAmplitudeContrast"]),
            pixel_size_angstrom=float(group["rlnMicrographPixelSize"]),
        )
        group_settings[number] = (settings, name)

    records = []
    for _, row in micrographs.iterrows():
        number = int(row["rlnOpticsGroup"])
        if number not in group_settings:
            raise StarFormatError(f"{path}: micrograph {row['rlnMicrographName']} refers to optics group {number}")
        settings, name = group_settings[number]
        phase_shift_deg = float(row["rlnPhaseShift"]) if "rlnPhaseShift" in micrographs.columns else 0.0
        records.append(
            MicrographCtfRecord(
                micrograph_path=str(row["rlnMicrographName"]),
                ctf=CtfParams(
                    defocus_u_angstrom=float(row["rlnDefocusU"]),
                    defocus_v_angstrom=float(row["rlnDefocusV"]),
                    astigmatism_angle_deg=float(row["rlnDefocusAngle"]),
                    phase_shift_rad=math.radians(phase_shift_deg),
                ),
                microscope=settings,
                fit_resolution_angstrom=float(row["rlnCtfMaxResolution"]),
                figure_of_merit=float(row["rlnCtfFigureOfMerit"]),
                optics_group=number,
                optics_group_name=name,
                ctf_image_path=str(row["rlnCtfImage"]) if "rlnCtfImage" in micrographs.columns else None,
            )
        )
    return records
