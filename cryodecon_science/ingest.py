"""From an exposure as read from disk to the exposure the pipeline carries.

A movie is aligned (global drift with its own SSNR weighting, patch motion where asked) and, when its
total exposure and a 200/300 kV voltage are known, dose-weighted with the critical-exposure curve of
Grant & Grigorieff (2015, eLife 4:e06980); the aligned sum is the micrograph every later step reads.
Detector and ice artifacts are then removed (``artifacts.remove_artifacts``).  The optics come from the
session description where one exists, else from the exposure's own record
(``exposure.microscope_from_record``); the session's settings (``io.session_settings``) override voltage,
C_s and amplitude contrast, and give the particle diameter; the pixel size is always the image's (a pixel
size override is applied where the exposure is read, ``layout.read_exposure``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.artifacts import ArtifactCorrection, remove_artifacts
from cryodecon_science.exposure import Exposure, microscope_from_record
from cryodecon_science.io.errors import CorruptHeaderError
from cryodecon_science.io.layout import RawExposure
from cryodecon_science.io.mrc import Micrograph
from cryodecon_science.io.session import SessionMetadata, exposure_name
from cryodecon_science.io.session_settings import SessionSettings
from cryodecon_science.metadata import ExposureMetadata
from cryodecon_science.motion import AccumulatedMotion, MotionCorrection, accumulated_motion, align_movie

# Voltages the critical-exposure curve is fitted for (Grant & Grigorieff 2015); at others no weighting.
DOSE_WEIGHTING_VOLTAGES_KV = (200, 300)


@dataclass(frozen=True)
class MovieMotion:
    """A movie's motion correction and what it was told.

    Attributes
    ----------
    correction : MotionCorrection
        Shifts (frame × [dy, dx], px), aligned, even, odd and (when weighted) dose-weighted sums.
    accumulated : AccumulatedMotion
        Total, early and late motion in Å (RELION's accumulated-motion convention).
    n_frames : int
        Frames in the movie.
    pixel_size_angstrom : float
        Å per pixel of the frames and the sums.
    dose_per_frame_e_per_angstrom2 : float or None
        Exposure per frame, e⁻/Å² (None where the total exposure is unknown).
    voltage_kv : float or None
        Voltage the movie was recorded at, kV (None where no source gives it).
    patch_grid : tuple of int
        (rows, columns) of local-motion patches, () for global alignment only.
    """

    correction: MotionCorrection
    accumulated: AccumulatedMotion
    n_frames: int
    pixel_size_angstrom: float
    dose_per_frame_e_per_angstrom2: float | None
    voltage_kv: float | None
    patch_grid: tuple[int, ...]

    @property
    def dose_weighted(self) -> bool:
        return self.correction.dose_weighted_sum is not None


@dataclass(frozen=True)
class PreparedExposure:
    """An exposure ready for the pipeline, with what was done to it on the way."""

    exposure: Exposure
    n_frames: int
    motion: MovieMotion | None
    artifact_corrections: tuple[ArtifactCorrection, ...]


def correct_movie(
    frames: npt.NDArray[np.generic],
    pixel_size_angstrom: float,
    total_dose_e_per_angstrom2: float | None,
    voltage_kv: float | None,
    device: torch.device | str,
    patch_grid: tuple[int, ...] = (),
) -> MovieMotion:
    """Align a movie and dose-weight it where its exposure and a fitted voltage are known (module docstring).

    Parameters
    ----------
    frames : ndarray, shape (n_frames, ny, nx)
        Counts per frame.
    pixel_size_angstrom : float
        Å per pixel.
    total_dose_e_per_angstrom2, voltage_kv : float or None
        Total exposure (e⁻/Å²) and voltage (kV); dose weighting needs both, at 200 or 300 kV.
    device : torch device or str
        Where the alignment runs.
    patch_grid : tuple of int
        (rows, columns) of patches for local motion, or () for global alignment only.
    """
    n_frames = int(frames.shape[0])
    dose_per_frame = (
        total_dose_e_per_angstrom2 / n_frames
        if total_dose_e_per_angstrom2 is not None and total_dose_e_per_angstrom2 > 0
        else None
    )
    fitted_voltage = voltage_kv if voltage_kv is not None and round(voltage_kv) in DOSE_WEIGHTING_VOLTAGES_KV else None
    weighted = dose_per_frame is not None and fitted_voltage is not None
    correction = align_movie(
        frames,
        pixel_size_angstrom,
        device=device,
        dose_per_frame_e_per_angstrom2=dose_per_frame if weighted else None,
        voltage_kv=float(round(fitted_voltage)) if fitted_voltage is not None else 300.0,
        patch_grid=(int(patch_grid[0]), int(patch_grid[1])) if len(patch_grid) == 2 else None,
    )
    return MovieMotion(
        correction,
        accumulated_motion(correction.shifts_px, pixel_size_angstrom, dose_per_frame),
        n_frames,
        pixel_size_angstrom,
        dose_per_frame,
        voltage_kv,
        tuple(patch_grid),
    )


def _placed(record: ExposureMetadata, position: tuple[str, str] | None) -> ExposureMetadata:
    """The record with the session description's grid square and foil hole where its own files give none."""
    acquisition = record.acquisition
    if position is None or acquisition.grid_square_id is not None or acquisition.foil_hole_id is not None:
        return record
    placed = dataclasses.replace(acquisition, grid_square_id=position[0], foil_hole_id=position[1])
    return dataclasses.replace(record, acquisition=placed)


def prepare_exposure(
    raw: RawExposure,
    name: str,
    is_movie: bool,
    session: str,
    session_metadata: SessionMetadata | None,
    artifact_steps: tuple[str, ...],
    device: torch.device | str,
    patch_grid: tuple[int, ...] = (),
    settings: SessionSettings | None = None,
) -> PreparedExposure:
    """Motion-correct (movies), remove artifacts and attach optics, dose and defocus (module docstring).

    ``settings``: the session's settings; their optics overrides and particle diameter win over the
    session description and the exposure's record.

    Raises
    ------
    CorruptHeaderError
        When no source (header, sidecar) gives the pixel size.
    ValueError
        From the artifact steps or the alignment, on data they cannot use.
    """
    if not raw.pixel_size_angstrom > 0:
        raise CorruptHeaderError(raw.file.path, "no source gives the pixel size")
    record = raw.metadata
    dose: float | None
    voltage: float | None
    if session_metadata is not None:
        dose, voltage = session_metadata.dose_e_per_angstrom2, session_metadata.microscope.voltage_kv
        nominal_defocus = session_metadata.nominal_defocus_angstrom.get(exposure_name(raw.file.path))
        record = _placed(record, session_metadata.positions.get(exposure_name(raw.file.path)))
    else:
        dose, voltage = record.dose.total_dose_e_per_angstrom2, record.optics.voltage_kv
        nominal_defocus = record.optics.nominal_defocus_angstrom
    overrides = settings.optics_overrides if settings is not None else None
    if overrides is not None and overrides.voltage_kv is not None:
        voltage = overrides.voltage_kv
    motion = None
    n_frames = 1
    if is_movie:
        motion = correct_movie(raw.frames, raw.pixel_size_angstrom, dose, voltage, device, patch_grid)
        n_frames = motion.n_frames
        image = motion.correction.aligned_sum.astype(np.float32)
    else:
        image = raw.micrograph
    cleaned, corrections = remove_artifacts(image, raw.pixel_size_angstrom, artifact_steps)
    micrograph = Micrograph(name, cleaned, raw.pixel_size_angstrom)
    microscope = (
        dataclasses.replace(session_metadata.microscope, pixel_size_angstrom=raw.pixel_size_angstrom)
        if session_metadata is not None
        else microscope_from_record(record, raw.pixel_size_angstrom)
    )
    if overrides is not None:
        replaced = {
            key: value
            for key in ("voltage_kv", "spherical_aberration_mm", "amplitude_contrast_fraction")
            if (value := getattr(overrides, key)) is not None
        }
        microscope = dataclasses.replace(microscope, **replaced) if replaced else microscope
    diameter = session_metadata.particle_diameter_angstrom if session_metadata else None
    if settings is not None and settings.particle_diameter_angstrom is not None:
        diameter = settings.particle_diameter_angstrom
    drift_px = float(motion.correction.total_drift_px) if motion is not None else None
    exposure = Exposure(
        micrograph=micrograph,
        microscope=microscope,
        session=session,
        dose_e_per_angstrom2=dose,
        nominal_defocus_angstrom=nominal_defocus,
        drift_total_px=drift_px,
        # After alignment, what blurs the sum is the motion within each frame: the trajectory over the frames.
        residual_blur_px=drift_px / n_frames if drift_px is not None else None,
        metadata=record,
        dose_weighted=(
            Micrograph(name, motion.correction.dose_weighted_sum.astype(np.float32), raw.pixel_size_angstrom)
            if motion is not None and motion.correction.dose_weighted_sum is not None
            else None
        ),
        particle_diameter_angstrom=diameter,
    )
    return PreparedExposure(exposure, n_frames, motion, corrections)
