"""What a simulation returns: exposures (micrographs, movies) with their truth, and sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cryodecon_science.optics import CtfParams, MicroscopeSettings
from cryodecon_science.simulate.config import SimulationConfig
from cryodecon_science.simulate.regions import ContaminationBlob
from cryodecon_science.simulate.structures import Structure3D

if TYPE_CHECKING:
    from cryodecon_science.simulate.detector_gain import SimulatedGain

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class MicrographTruth:
    """What was simulated for one exposure.

    Attributes
    ----------
    ctf : CtfParams
        True defocus U/V (Å, positive underfocus, U >= V) and astigmatism angle (deg, x axis to U, CCW).
    bfactor_angstrom2 : float
        B of the envelope exp(−B k²/4), Å².
    ice_thickness_nm : float
        Ice thickness t, nm.
    dose_e_per_angstrom2 : float
        Total exposure, e⁻/Å².
    inelastic_fraction : float
        f_in = 1 − exp(−t/λ_in).
    contrast_scale : float
        Factor s applied to the specimen contrast (1 without ``target_snr``).
    particle_positions_px : ndarray, shape (n_particles, 2), float64
        Particle centres [y, x], pixels, in the image (frame 0 for a movie).
    structure_ids : ndarray, shape (n_particles,), int64
        Which structure each particle is.
    euler_angles_deg : ndarray, shape (n_particles, 3), float64
        [rot, tilt, psi] in degrees, RELION ZYZ convention (``rotation_matrix_from_euler_deg``).
    snr : float
        Realised SNR: var(particle_image) / var(counts − clean_image) over the image (for a movie,
        the noise of the frame sum).
    nominal_defocus_angstrom : float
        What the microscope would report: true mean defocus plus a Gaussian error.
    drift_shifts_px : ndarray, shape (n_frames, 2), float64, or None
        Movies only: [dy, dx] in pixels of each frame relative to frame 0.  A specimen feature at
        (y, x) in frame 0 is at (y + dy, x + dx) in the frame, i.e. frame_f(r) = frame_0(r − shift_f).
        Row 0 is (0, 0).  None for micrographs.
    drift_total_px : float
        Path length Σ_f |shift_{f+1} − shift_f| of the drift, pixels (0 for micrographs).
    hot_pixels_yx : ndarray, shape (n_hot, 2), int64
        Detector coordinates [y, x] of hot pixels.

    Regions of the picking benchmark (``simulate.regions``); None where the feature is off:

    carbon_mask : ndarray (ny, nx) bool or None
        Support carbon: pixels farther than the hole radius from the hole centre (frame 0 for a movie).
    hole_centre_yx_px : tuple of float or None
        Centre of the foil hole [y, x], image pixels (usually outside the image).
    hole_radius_px : float or None
        Radius of the foil hole, pixels.
    contamination_mask : ndarray (ny, nx) bool or None
        Pixels inside a contamination blob's outline.
    contamination_blobs : tuple of ContaminationBlob
        The blobs' geometry and thickness (empty without contamination).
    continuous_film_thickness_nm : float
        Thin film over the whole field, nm (0: none).  Not junk.
    particle_on_carbon : ndarray (n_particles,) bool or None
        Whether each particle's centre pixel lies in ``carbon_mask`` (junk for the benchmark).
    particle_under_contamination : ndarray (n_particles,) bool or None
        Whether each particle's centre pixel lies in ``contamination_mask`` (hidden, junk).
    particle_aggregate_ids : ndarray (n_particles,) int64 or None
        Index of each particle's cluster of touching particles, −1 for a single particle.
    """

    ctf: CtfParams
    bfactor_angstrom2: float
    ice_thickness_nm: float
    dose_e_per_angstrom2: float
    inelastic_fraction: float
    contrast_scale: float
    particle_positions_px: FloatArray
    structure_ids: IntArray
    euler_angles_deg: FloatArray
    snr: float
    nominal_defocus_angstrom: float
    drift_shifts_px: FloatArray | None
    drift_total_px: float
    hot_pixels_yx: IntArray
    carbon_mask: BoolArray | None = None
    hole_centre_yx_px: tuple[float, float] | None = None
    hole_radius_px: float | None = None
    contamination_mask: BoolArray | None = None
    contamination_blobs: tuple[ContaminationBlob, ...] = ()
    continuous_film_thickness_nm: float = 0.0
    particle_on_carbon: BoolArray | None = None
    particle_under_contamination: BoolArray | None = None
    particle_aggregate_ids: IntArray | None = None

    @property
    def particle_in_aggregate(self) -> BoolArray | None:
        """Whether each particle belongs to a cluster of touching particles (None without aggregates)."""
        return None if self.particle_aggregate_ids is None else self.particle_aggregate_ids >= 0


@dataclass(frozen=True, eq=False)
class SimulatedMicrograph:
    """One integrated exposure with its truth.  All images are float32 [y, x] in counts per pixel.

    Attributes
    ----------
    name : str
        Exposure name (simple characters).
    counts : ndarray (ny, nx) float32
        What the detector records: Poisson counts + read noise (+ hot pixels).
    clean_image : ndarray (ny, nx) float32
        Expected counts λ(x): CTF-modulated particles and ice plus the inelastic background, no noise
        (ground truth for denoising).
    particle_image : ndarray (ny, nx) float32
        The particles' additive contribution to ``clean_image`` (zero far from particles).
    potential_image : ndarray (ny, nx) float32
        The particles' projected potential before the CTF and envelope, in the same scale:
        D·(1 − f_in)·2·s·σ_e·V_z, so that particle_image = F⁻¹{CTF·E·F{potential_image}} (exactly on the
        padded simulation grid).  Positive where there is protein; truth for CTF deconvolution.
    truth : MicrographTruth
    """

    name: str
    counts: Float32Array
    clean_image: Float32Array
    particle_image: Float32Array
    potential_image: Float32Array
    truth: MicrographTruth


@dataclass(frozen=True, eq=False)
class SimulatedMovie:
    """A dose-fractionated exposure with its truth.

    Attributes
    ----------
    name : str
        Exposure name (simple characters).
    frames : ndarray (n_frames, ny, nx) float32
        Electron counts per frame (integer values), drift applied.
    clean_image, particle_image, potential_image : ndarray (ny, nx) float32
        As in ``SimulatedMicrograph`` for the whole exposure, in frame-0 coordinates (what a perfectly
        aligned frame sum approximates).
    truth : MicrographTruth
        Includes ``drift_shifts_px``.
    """

    name: str
    frames: Float32Array
    clean_image: Float32Array
    particle_image: Float32Array
    potential_image: Float32Array
    truth: MicrographTruth


@dataclass(frozen=True, eq=False)
class SimulatedSession:
    """A simulated acquisition session.

    Attributes
    ----------
    session_name : str
        Stable id (letters, digits, '_' and '-').
    config : SimulationConfig
    microscope : MicroscopeSettings
    seed : int
        Seed of the exposures (structures use ``config.structure_seed``).
    structures : tuple of Structure3D
    micrographs : tuple of SimulatedMicrograph
        Named f"{session_name}_mic_{i:04d}".
    movies : tuple of SimulatedMovie
        Named f"{session_name}_mov_{i:04d}".
    detector_gain : SimulatedGain or None
        The gain the movies were recorded through (``detector_gain.record_through_gain``); None: a flat
        (gain-normalised) detector.
    """

    session_name: str
    config: SimulationConfig
    microscope: MicroscopeSettings
    seed: int
    structures: tuple[Structure3D, ...]
    micrographs: tuple[SimulatedMicrograph, ...]
    movies: tuple[SimulatedMovie, ...]
    detector_gain: SimulatedGain | None = None


# --------------------------------------------------------------------------------------------------
# Physics helpers
