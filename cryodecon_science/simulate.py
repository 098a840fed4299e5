"""Synthetic cryo-EM exposures with known truth: micrographs, dose-fractionated movies and sessions.

Image-formation model
---------------------
The model is the linear weak-phase-object image of Vulović et al. (2013, "Image formation modeling in
cryo-electron microscopy", J. Struct. Biol. 183:19–32) and of the ``simulate`` program of Himes &
Grigorieff (2021, "Cryo-TEM simulations of amorphous radiation-sensitive samples using multislice wave
propagation", IUCrJ 8:943–953), reduced to what a CTF estimator, a denoiser and a restoration need:

1. **Specimen.**  The projected Coulomb potential V_z(x) = ∫ V(x, z) dz (V·Å) is the sum of

   * particles: ``Structure3D`` pseudo-atom clouds (3D Gaussians) at non-overlapping random positions
     (centres ≥ one diameter apart and ≥ one radius from the edges) in orientations drawn uniformly on
     SO(3), each atom integrated exactly over the square pixel;
   * amorphous ice: a stationary Gaussian random field whose power spectrum is a smooth component plus
     the broad water peak at 1/3.7 Å⁻¹ (McMullan et al. 2015, Ultramicroscopy 158:26–32, "Thon rings
     from amorphous ice …").  Projected-potential power grows linearly with the ice thickness t
     (uncorrelated slabs add), so Thon rings are visible in empty regions, as in real data.

   The phase shift is φ(x) = σ_e V_z(x) with the relativistic interaction constant σ_e
   (``interaction_constant_rad_per_volt_angstrom``; Kirkland, *Advanced Computing in Electron
   Microscopy*, eq. 5.6).

2. **Optics.**  For a weak phase object the elastic image is I_el(x) = 1 + c(x) with
   c = 2 · F⁻¹{CTF(k) · E(k) · F{φ}},  CTF = −sin χ(k) from ``optics.ctf_2d`` (amplitude contrast
   included, so CTF(0) = −w and particles are dark) and the B-factor envelope E(k) = exp(−B k²/4).

3. **Inelastic background.**  A fraction f_in = 1 − exp(−t/λ_in) of the electrons is scattered
   inelastically in ice of thickness t (λ_in ≈ 350 nm at 300 kV) and carries no phase contrast; it
   reaches the (unfiltered) detector as a smooth, low-frequency intensity 1 + a·g(x) (g a unit-variance
   Gaussian random field with ≈300 Å correlation length).  The expected image is

       λ(x) = D · [(1 − f_in) · (1 + s·c(x)) + f_in · (1 + a·g(x))],   D = dose · pixel²  (e⁻/pixel),

   clipped at ≥ 0.  s is the contrast scale: 1 for the physical model; with ``target_snr`` it is chosen
   so that var(particle signal) / var(detector noise) = target_snr over the micrograph.

4. **Detector.**  Counts = Poisson(λ) + Normal(0, read_noise²) for an integrated micrograph; a movie
   frame is electron-counted, Poisson(λ_f) with no read noise (counting detectors threshold it away),
   with λ_f the dose-split, drift-shifted λ.  Optional hot pixels add Poisson counts at
   ``HOT_PIXEL_RATE_FACTOR`` times the mean rate at fixed detector positions.

Simulation runs on a grid padded by the CTF delocalisation (capped at a quarter of the image) and the
largest drift, then cropped, so the image has no wrap-around of delocalised signal or of drift.

Coordinates: pixel (iy, ix) has its centre at (iy, ix); particle positions are continuous (y, x) pixel
coordinates of the structure's centre of mass in the returned image.

Determinism: every random draw comes from ``numpy.random.default_rng`` streams spawned from
``numpy.random.SeedSequence(seed)``; the same seed gives bit-identical arrays.  Structures come from
their own ``structure_seed`` so a reference library can regenerate them without any micrograph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.special
import torch

from cryodecon_science.optics import (
    CtfParams,
    MicroscopeSettings,
    amorphous_ice_spectrum_shape,
    ctf_2d,
    electron_wavelength_angstrom,
    frequency_grid_per_angstrom,
)

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Rest energy of the electron, keV (CODATA 2018).
_ELECTRON_REST_ENERGY_KEV = 510.99895

# Potential of protein relative to the surrounding vitreous ice, V.  Protein (≈1.35 g/cm³) scatters more
# than ice (≈0.93 g/cm³); the mean-inner-potential difference is a few volts.  A model choice: with
# ``target_snr`` the contrast is rescaled anyway.
PROTEIN_CONTRAST_POTENTIAL_VOLT = 2.0
# Amorphous-ice projected-potential power per nm of ice thickness, (V·Å)²·Å² (i.e. PSD units) at the
# peak of the smooth component.  Calibrated so that 40 nm of ice at 1 Å/pixel has a projected phase of
# ≈0.055 rad standard deviation at 300 kV and its Thon rings show in empty areas at normal dose.
ICE_POWER_PER_NM = 200.0
# Inelastic background: relative modulation a and correlation length of g(x).
_INELASTIC_MODULATION = 0.1
_INELASTIC_CORRELATION_ANGSTROM = 300.0
HOT_PIXEL_RATE_FACTOR = 25.0
# Amplitude below which the B-factor envelope no longer carries visible delocalised signal.
_ENVELOPE_FLOOR = 0.01


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated acquisition, with the ranges per-exposure draws come from.

    Attributes
    ----------
    shape_px : tuple of int
        Image size (ny, nx) in pixels.
    pixel_size_angstrom : float
        Sampling on the specimen, Å/pixel.
    voltage_kv, spherical_aberration_mm, amplitude_contrast_fraction : float
        Microscope optics (``optics.MicroscopeSettings``).
    defocus_range_angstrom : tuple of float
        Range of the true mean defocus (U+V)/2 in Å, positive = underfocus (0.5–3 µm default).
    max_astigmatism_angstrom : float
        Astigmatism U − V is drawn uniformly in [0, max]; its angle uniformly in [0, 180) degrees.
    bfactor_range_angstrom2 : tuple of float
        Range of the B-factor of the envelope exp(−B k²/4), Å².
    dose_e_per_angstrom2 : float
        Total exposure, e⁻/Å² (split evenly over movie frames).
    ice_thickness_range_nm : tuple of float
        Range of ice thickness t, nm; sets the ice power (∝ t) and the inelastic fraction.
    particle_diameter_angstrom : float
        Diameter of the structures' bounding sphere, Å.
    particles_per_micrograph : int
        Particles requested per exposure.  Placement is random sequential addition with centres one
        diameter apart; when the field cannot hold that many (e.g. 1024 px at 1 Å with 150 Å particles
        holds about 25–30) the exposure gets as many as fit, and the truth lists those.
    n_structures : int
        Number of distinct structures, ids 0 … n_structures − 1.
    structure_seed : int
        Seed of the structures alone (independent of the exposures' seeds).
    read_noise_std_counts : float
        Gaussian read noise of integrated micrographs, counts (movies are electron-counted: none).
    hot_pixel_fraction : float
        Fraction of detector pixels that are hot.
    n_frames : int
        Frames per movie.
    drift_total_px_range : tuple of float
        Range of the beam-induced drift path length over a movie, pixels.
    target_snr : float or None
        If set, scale the specimen contrast so that var(particle signal) / var(detector noise) equals
        this value over the image (the benchmarks' SNR 0.1 / 0.03 / 0.01).
    nominal_defocus_error_std_angstrom : float
        Standard deviation of the microscope's nominal defocus about the true mean defocus, Å.
    inelastic_mean_free_path_nm : float
        Inelastic mean free path λ_in in vitreous ice, nm (≈350 nm at 300 kV).
    """

    shape_px: tuple[int, int] = (1024, 1024)
    pixel_size_angstrom: float = 1.0
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast_fraction: float = 0.07
    defocus_range_angstrom: tuple[float, float] = (5000.0, 30000.0)
    max_astigmatism_angstrom: float = 1000.0
    bfactor_range_angstrom2: tuple[float, float] = (40.0, 120.0)
    dose_e_per_angstrom2: float = 40.0
    ice_thickness_range_nm: tuple[float, float] = (20.0, 60.0)
    particle_diameter_angstrom: float = 150.0
    particles_per_micrograph: int = 40
    n_structures: int = 4
    structure_seed: int = 0
    read_noise_std_counts: float = 0.5
    hot_pixel_fraction: float = 0.0
    n_frames: int = 16
    drift_total_px_range: tuple[float, float] = (10.0, 40.0)
    target_snr: float | None = None
    nominal_defocus_error_std_angstrom: float = 300.0
    inelastic_mean_free_path_nm: float = 350.0

    def __post_init__(self) -> None:
        ny, nx = self.shape_px
        if ny < 16 or nx < 16:
            raise ValueError(f"shape_px must be at least 16 x 16, got {self.shape_px}")
        for label, (low, high) in (
            ("defocus_range_angstrom", self.defocus_range_angstrom),
            ("bfactor_range_angstrom2", self.bfactor_range_angstrom2),
            ("ice_thickness_range_nm", self.ice_thickness_range_nm),
            ("drift_total_px_range", self.drift_total_px_range),
        ):
            if not 0.0 <= low <= high or not math.isfinite(high):
                raise ValueError(f"{label} must be an ordered non-negative range, got {(low, high)}")
        positives = {
            "pixel_size_angstrom": self.pixel_size_angstrom,
            "dose_e_per_angstrom2": self.dose_e_per_angstrom2,
            "particle_diameter_angstrom": self.particle_diameter_angstrom,
            "inelastic_mean_free_path_nm": self.inelastic_mean_free_path_nm,
        }
        for label, value in positives.items():
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value}")
        if self.defocus_range_angstrom[0] - 0.5 * self.max_astigmatism_angstrom <= 0:
            raise ValueError("the smallest defocus minus half the astigmatism must stay underfocus (> 0 Å)")
        if self.max_astigmatism_angstrom < 0 or self.read_noise_std_counts < 0:
            raise ValueError("max_astigmatism_angstrom and read_noise_std_counts must be >= 0")
        if not 0.0 <= self.hot_pixel_fraction < 1.0:
            raise ValueError(f"hot_pixel_fraction must lie in [0, 1), got {self.hot_pixel_fraction}")
        if self.particles_per_micrograph < 0 or self.n_structures < 1 or self.structure_seed < 0:
            raise ValueError("particles_per_micrograph >= 0, n_structures >= 1 and structure_seed >= 0 required")
        if self.n_frames < 2:
            raise ValueError(f"a movie needs n_frames >= 2, got {self.n_frames}")
        if self.target_snr is not None:
            if not self.target_snr > 0:
                raise ValueError(f"target_snr must be positive, got {self.target_snr}")
            if self.particles_per_micrograph == 0:
                raise ValueError("target_snr scales the particle signal: particles_per_micrograph must be > 0")
        # Validates voltage, amplitude contrast and pixel size once, here.
        self.microscope  # noqa: B018

    @property
    def microscope(self) -> MicroscopeSettings:
        """The optical settings as the rest of cryodecon uses them."""
        return MicroscopeSettings(
            voltage_kv=self.voltage_kv,
            spherical_aberration_mm=self.spherical_aberration_mm,
            amplitude_contrast_fraction=self.amplitude_contrast_fraction,
            pixel_size_angstrom=self.pixel_size_angstrom,
        )

    @property
    def dose_per_pixel_e(self) -> float:
        """Mean electrons per pixel D = dose · pixel²."""
        return self.dose_e_per_angstrom2 * self.pixel_size_angstrom**2


@dataclass(frozen=True, eq=False)
class Structure3D:
    """A synthetic "protein": a cloud of 3D Gaussian pseudo-atoms.

    Attributes
    ----------
    structure_id : int
        Index k of the structure in its library (same k, same seed -> same structure).
    atom_positions_angstrom : ndarray, shape (n_atoms, 3), float64
        Pseudo-atom centres [x, y, z] in Å relative to the potential-weighted centre of mass.
    atom_sigma_angstrom : ndarray, shape (n_atoms,), float64
        Standard deviation of each isotropic Gaussian, Å.
    atom_potential_volt_angstrom3 : ndarray, shape (n_atoms,), float64
        Integrated contrast potential ∫ V d³r of each pseudo-atom relative to ice, V·Å³.
    n_lobes : int
        Number of subunits (the shape family).
    diameter_angstrom : float
        Diameter of the bounding sphere; every atom centre lies within diameter/2 of the origin.
    """

    structure_id: int
    atom_positions_angstrom: FloatArray
    atom_sigma_angstrom: FloatArray
    atom_potential_volt_angstrom3: FloatArray
    n_lobes: int
    diameter_angstrom: float

    @property
    def n_atoms(self) -> int:
        return int(self.atom_positions_angstrom.shape[0])


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
    """

    session_name: str
    config: SimulationConfig
    microscope: MicroscopeSettings
    seed: int
    structures: tuple[Structure3D, ...]
    micrographs: tuple[SimulatedMicrograph, ...]
    movies: tuple[SimulatedMovie, ...]


# --------------------------------------------------------------------------------------------------
# Physics helpers


def interaction_constant_rad_per_volt_angstrom(voltage_kv: float) -> float:
    """Relativistic interaction constant σ_e = (2π / (λ U)) · (E₀ + eU) / (2E₀ + eU), rad/(V·Å).

    Phase shift per unit projected potential (Kirkland, *Advanced Computing in Electron Microscopy*,
    2nd ed., eq. 5.6).  300 kV -> 6.526e-4, 200 kV -> 7.288e-4 rad/(V·Å).
    """
    lam = electron_wavelength_angstrom(voltage_kv)
    e0 = _ELECTRON_REST_ENERGY_KEV
    return 2.0 * math.pi / (lam * voltage_kv * 1e3) * (e0 + voltage_kv) / (2.0 * e0 + voltage_kv)


def rotation_matrix_from_euler_deg(rot_deg: float, tilt_deg: float, psi_deg: float) -> FloatArray:
    """Rotation matrix A of RELION/Xmipp ZYZ Euler angles (Heymann et al. 2005, J. Struct. Biol. 151:196).

    A = R_z(ψ) R_y(θ) R_z(φ) with R_z(α) = [[cos α, sin α, 0], [−sin α, cos α, 0], [0, 0, 1]] and
    R_y(β) = [[cos β, 0, −sin β], [0, 1, 0], [sin β, 0, cos β]] (RELION ``Euler_angles2matrix``).  A
    point r = [x, y, z] of a structure lands at A·r; its projection is the (x, y) of A·r.
    """
    alpha, beta, gamma = (math.radians(rot_deg), math.radians(tilt_deg), math.radians(psi_deg))
    ca, sa = math.cos(alpha), math.sin(alpha)
    cb, sb = math.cos(beta), math.sin(beta)
    cg, sg = math.cos(gamma), math.sin(gamma)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ],
        dtype=np.float64,
    )


def _unit_ball(rng: np.random.Generator, n: int) -> FloatArray:
    """n points uniform in the unit ball."""
    direction = rng.standard_normal((n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.random(n) ** (1.0 / 3.0)
    return np.asarray(direction * radius[:, None], dtype=np.float64)


def _lobe_layout(structure_id: int, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """Lobe centres (m, 3) in units of the particle radius and lobe radii (m,), by shape family.

    0: one elongated body; 1: dumbbell of unequal lobes; 2: trimer (triangle); 3: tetramer
    (tetrahedron); 4: flat hexameric ring; >= 5: 2–7 lobes at random directions.
    """
    family = structure_id if structure_id < 5 else 5
    if family == 0:
        centres = np.array([[0.0, 0.0, -0.35], [0.0, 0.0, 0.0], [0.0, 0.0, 0.35]])
        radii = np.array([0.4, 0.5, 0.45])
    elif family == 1:
        centres = np.array([[0.0, 0.0, -0.45], [0.0, 0.0, 0.5]])
        radii = np.array([0.5, 0.38])
    elif family == 2:
        angles = 2.0 * np.pi * np.arange(3) / 3.0
        centres = 0.52 * np.stack([np.cos(angles), np.sin(angles), np.zeros(3)], axis=1)
        radii = np.full(3, 0.4)
    elif family == 3:
        tetra = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
        centres = 0.55 * tetra / math.sqrt(3.0)
        radii = np.full(4, 0.38)
    elif family == 4:
        angles = 2.0 * np.pi * np.arange(6) / 6.0
        centres = 0.65 * np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
        radii = np.full(6, 0.28)
    else:
        m = int(rng.integers(2, 8))
        direction = rng.standard_normal((m, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        radii = rng.uniform(0.25, 0.45, m)
        centres = direction * (0.95 - radii)[:, None] * rng.uniform(0.5, 1.0, m)[:, None]
    # Break the symmetry a little so that every structure is chiral and distinct.
    radii = radii * rng.uniform(0.85, 1.15, radii.shape[0])
    centres = centres + rng.normal(0.0, 0.04, centres.shape)
    return np.asarray(centres, dtype=np.float64), np.asarray(radii, dtype=np.float64)


def _make_structure(structure_id: int, diameter_angstrom: float, seed: int) -> Structure3D:
    rng = np.random.default_rng([seed, structure_id])
    radius = 0.5 * diameter_angstrom
    centres, radii = _lobe_layout(structure_id, rng)
    n_atoms = int(rng.integers(100, 301))
    volumes = radii**3
    counts = np.maximum(1, np.round(n_atoms * volumes / volumes.sum()).astype(np.int64))
    positions = np.concatenate(
        [(centres[i] + radii[i] * _unit_ball(rng, int(counts[i]))) * radius for i in range(len(radii))]
    )
    sigma = rng.uniform(2.5, 5.0, positions.shape[0])
    # Protein volume = the lobes' volume; potential integral ΔV · volume shared unevenly among atoms.
    protein_volume_angstrom3 = float(np.sum(4.0 / 3.0 * np.pi * (radii * radius) ** 3))
    weights = np.asarray(rng.uniform(0.5, 1.5, positions.shape[0]), dtype=np.float64)
    potential = PROTEIN_CONTRAST_POTENTIAL_VOLT * protein_volume_angstrom3 * weights / weights.sum()
    positions = positions - (potential[:, None] * positions).sum(axis=0) / potential.sum()
    # Keep every atom centre inside the bounding sphere.
    extent = float(np.max(np.linalg.norm(positions, axis=1)))
    if extent > 0.95 * radius:
        positions *= 0.95 * radius / extent
    return Structure3D(
        structure_id=structure_id,
        atom_positions_angstrom=np.ascontiguousarray(positions, dtype=np.float64),
        atom_sigma_angstrom=np.asarray(sigma, dtype=np.float64),
        atom_potential_volt_angstrom3=np.asarray(potential, dtype=np.float64),
        n_lobes=len(radii),
        diameter_angstrom=float(diameter_angstrom),
    )


def make_structures(n_structures: int, diameter_angstrom: float, seed: int) -> tuple[Structure3D, ...]:
    """Generate ``n_structures`` distinct synthetic proteins, deterministically.

    Structure k depends only on (seed, k, diameter): it is the same whatever ``n_structures`` is and
    whatever micrograph it appears in.  Each is a cloud of 100–300 Gaussian pseudo-atoms (σ 2.5–5 Å)
    filling 1–7 lobes inside a sphere of ``diameter_angstrom``; the shape family changes with k (single
    body, dumbbell, trimer, tetramer, hexameric ring, then random assemblies).  The integrated potential
    is PROTEIN_CONTRAST_POTENTIAL_VOLT × lobe volume (V·Å³).

    Parameters
    ----------
    n_structures : int
        How many (ids 0 … n_structures − 1).
    diameter_angstrom : float
        Bounding-sphere diameter, Å.
    seed : int
        Non-negative structure seed (``SimulationConfig.structure_seed``).
    """
    if n_structures < 0 or seed < 0 or not diameter_angstrom > 0:
        raise ValueError("n_structures >= 0, seed >= 0 and diameter_angstrom > 0 required")
    return tuple(_make_structure(k, diameter_angstrom, seed) for k in range(n_structures))


def _pixel_fractions(centre_px: FloatArray, sigma_px: FloatArray, start: int, n_px: int) -> FloatArray:
    """Fraction of each 1D Gaussian's mass inside pixels start … start+n_px−1 (pixel i spans i ± ½)."""
    edges = np.arange(start, start + n_px + 1, dtype=np.float64) - 0.5
    z = (edges[None, :] - centre_px[:, None]) / (sigma_px[:, None] * math.sqrt(2.0))
    cdf = 0.5 * np.asarray(scipy.special.erf(z), dtype=np.float64)
    return np.asarray(np.diff(cdf, axis=1), dtype=np.float64)


def _render_projection(
    structure: Structure3D,
    rotation: FloatArray,
    centre_yx_px: tuple[float, float],
    pixel_size_angstrom: float,
    origin_yx_px: tuple[int, int],
    window_shape_px: tuple[int, int],
) -> FloatArray:
    """Pixel-averaged projected potential (V·Å) of a rotated structure on a window of a larger grid.

    The window covers rows origin_y … origin_y+h−1 and columns origin_x … origin_x+w−1; the structure's
    centre sits at ``centre_yx_px``.  Separable: image = (F_yᵀ · diag(w)) · F_x / pixel².
    """
    rotated = structure.atom_positions_angstrom @ rotation.T
    y_px = centre_yx_px[0] + rotated[:, 1] / pixel_size_angstrom
    x_px = centre_yx_px[1] + rotated[:, 0] / pixel_size_angstrom
    sigma_px = structure.atom_sigma_angstrom / pixel_size_angstrom
    fy = _pixel_fractions(y_px, sigma_px, origin_yx_px[0], window_shape_px[0])
    fx = _pixel_fractions(x_px, sigma_px, origin_yx_px[1], window_shape_px[1])
    image = (fy * structure.atom_potential_volt_angstrom3[:, None]).T @ fx
    return np.asarray(image / pixel_size_angstrom**2, dtype=np.float64)


def _as_rotation(orientation: FloatArray | tuple[float, float, float]) -> FloatArray:
    array = np.asarray(orientation, dtype=np.float64)
    if array.shape == (3,):
        return rotation_matrix_from_euler_deg(float(array[0]), float(array[1]), float(array[2]))
    if array.shape == (3, 3):
        if not np.allclose(array @ array.T, np.eye(3), atol=1e-6) or np.linalg.det(array) < 0:
            raise ValueError("a 3x3 orientation must be a proper rotation matrix")
        return array
    raise ValueError(f"orientation must be Euler angles (3,) in degrees or a 3x3 matrix, got {array.shape}")


def project_structure(
    structure: Structure3D,
    orientation: FloatArray | tuple[float, float, float],
    box_px: int,
    pixel_size_angstrom: float,
) -> FloatArray:
    """Projected potential V_z = ∫ V dz of a structure in one orientation, V·Å per pixel.

    Each Gaussian pseudo-atom is integrated exactly over the square pixels (erf differences), so the
    sum of the image times pixel² equals the total potential integral for atoms well inside the box.

    Parameters
    ----------
    structure : Structure3D
    orientation : (rot, tilt, psi) in degrees (RELION ZYZ) or a 3x3 rotation matrix A
        The atom at r is projected from A·r along z (``rotation_matrix_from_euler_deg``).
    box_px : int
        Size of the square output; the centre of mass lands on pixel (box_px // 2, box_px // 2), the
        FFT-centre convention of RELION.
    pixel_size_angstrom : float
        Å per pixel.

    Returns
    -------
    ndarray, shape (box_px, box_px), float64, indexed [y, x]
        The same values ``simulate_micrograph`` renders for a particle (before σ_e and the CTF), so a
        reference library built with it matches the simulated particles.
    """
    if box_px < 1 or not pixel_size_angstrom > 0:
        raise ValueError("box_px >= 1 and pixel_size_angstrom > 0 required")
    centre = float(box_px // 2)
    return _render_projection(
        structure, _as_rotation(orientation), (centre, centre), pixel_size_angstrom, (0, 0), (box_px, box_px)
    )


def random_euler_angles_deg(rng: np.random.Generator, n: int) -> FloatArray:
    """n orientations uniform on SO(3) as RELION (rot, tilt, psi) in degrees.

    rot and psi uniform in [0, 360), cos(tilt) uniform in [−1, 1] (the Haar measure in ZYZ angles).
    """
    rot = rng.uniform(0.0, 360.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(0.0, 360.0, n)
    return np.ascontiguousarray(np.stack([rot, tilt, psi], axis=1), dtype=np.float64)


def place_particles(
    rng: np.random.Generator, shape_px: tuple[int, int], diameter_px: float, n_particles: int
) -> FloatArray:
    """Random non-overlapping centres [y, x] (pixels) by random sequential addition.

    Centres are >= ``diameter_px`` apart and >= diameter_px/2 from the image edges.  Up to 200 candidates
    per requested particle are tried; the result holds at most ``n_particles`` rows, fewer when the field
    is full.  Returns an array of shape (m, 2), float64.
    """
    radius = 0.5 * diameter_px
    ny, nx = shape_px
    if n_particles <= 0 or ny - 1 < 2 * radius or nx - 1 < 2 * radius:
        return np.zeros((0, 2), dtype=np.float64)
    accepted: list[FloatArray] = []
    accepted_array = np.zeros((0, 2), dtype=np.float64)
    batch = 64
    for _ in range((200 * n_particles + batch - 1) // batch):
        candidates = np.stack(
            [rng.uniform(radius, ny - 1 - radius, batch), rng.uniform(radius, nx - 1 - radius, batch)], axis=1
        )
        for candidate in candidates:
            if accepted_array.shape[0]:
                distance2 = np.sum((accepted_array - candidate) ** 2, axis=1)
                if float(distance2.min()) < diameter_px**2:
                    continue
            accepted.append(candidate)
            accepted_array = np.asarray(accepted, dtype=np.float64)
            if len(accepted) == n_particles:
                return accepted_array
    return accepted_array


def ice_power_spectrum(k_per_angstrom: FloatArray, ice_thickness_nm: float) -> FloatArray:
    """Power spectral density of the amorphous-ice projected potential, (V·Å)²·Å².

    S(k) = t · ICE_POWER_PER_NM · shape(k), with ``optics.amorphous_ice_spectrum_shape`` (a smooth
    falloff plus the water ring at 1/3.7 Å⁻¹; McMullan et al. 2015).  Linear in thickness t (nm).
    """
    shape = amorphous_ice_spectrum_shape(k_per_angstrom)
    return np.asarray(ice_thickness_nm * ICE_POWER_PER_NM * shape, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Exposure simulation


@dataclass(frozen=True, eq=False)
class _ExposureDraws:
    ctf: CtfParams
    bfactor_angstrom2: float
    ice_thickness_nm: float
    nominal_defocus_angstrom: float


@dataclass(frozen=True, eq=False)
class _ExpectedImage:
    """Noise-free images on the padded grid and what the truth needs."""

    expected: FloatArray  # λ(x), counts per pixel, padded
    particle: FloatArray  # particle contribution, padded
    potential: FloatArray  # particle potential image, padded
    pad_yx_px: tuple[int, int]
    draws: _ExposureDraws
    positions_px: FloatArray
    structure_ids: IntArray
    euler_angles_deg: FloatArray
    inelastic_fraction: float
    contrast_scale: float


def _streams(seed: int | Sequence[int]) -> list[np.random.Generator]:
    """Independent generators: 0 optics, 1 positions, 2 orientations, 3 ice, 4 inelastic, 5 drift,
    6 noise, 7 hot pixels."""
    sequence = np.random.SeedSequence(seed)
    return [np.random.default_rng(child) for child in sequence.spawn(8)]


def _draw_exposure(config: SimulationConfig, rng: np.random.Generator) -> _ExposureDraws:
    mean_defocus = float(rng.uniform(*config.defocus_range_angstrom))
    astigmatism = float(rng.uniform(0.0, config.max_astigmatism_angstrom))
    angle = float(rng.uniform(0.0, 180.0))
    bfactor = float(rng.uniform(*config.bfactor_range_angstrom2))
    thickness = float(rng.uniform(*config.ice_thickness_range_nm))
    nominal = mean_defocus + float(rng.normal(0.0, config.nominal_defocus_error_std_angstrom))
    ctf = CtfParams(mean_defocus + 0.5 * astigmatism, mean_defocus - 0.5 * astigmatism, angle % 180.0)
    return _ExposureDraws(ctf, bfactor, thickness, nominal)


def _padding_px(config: SimulationConfig, draws: _ExposureDraws, max_drift_px: float) -> int:
    """Pad by the CTF delocalisation λ·Δf_max·k_env (capped at a quarter image) and by the drift."""
    lam = electron_wavelength_angstrom(config.voltage_kv)
    nyquist = 0.5 / config.pixel_size_angstrom
    if draws.bfactor_angstrom2 > 0:
        k_env = min(nyquist, math.sqrt(4.0 * math.log(1.0 / _ENVELOPE_FLOOR) / draws.bfactor_angstrom2))
    else:
        k_env = nyquist
    delocalisation_px = lam * draws.ctf.defocus_u_angstrom * k_env / config.pixel_size_angstrom
    cap = max(config.shape_px) // 4
    return int(max(math.ceil(min(delocalisation_px, cap)), math.ceil(max_drift_px) + 8, 8))


def _gaussian_field_spectrum(
    rng: np.random.Generator, shape_px: tuple[int, int], amplitude: FloatArray
) -> npt.NDArray[np.complex128]:
    """rfft2 of a stationary Gaussian random field with spectral amplitude ``amplitude``(k).

    Drawn directly in Fourier space: complex normal coefficients with E|c|² = N (the rfft2 of unit
    white noise on N pixels) times the amplitude, so that the field's variance is Σ|amplitude|²/N.  Only
    coefficients where the amplitude is non-zero are drawn (a low-pass field costs a few of them).  The
    k_x = 0 and Nyquist columns are not Hermitian-symmetrised; irfft2 keeps their symmetric part, which
    lowers the power of those two columns only.
    """
    n_pixels = shape_px[0] * shape_px[1]
    rows = np.flatnonzero(np.any(amplitude != 0, axis=1))
    cols = np.flatnonzero(np.any(amplitude != 0, axis=0))
    spectrum = np.zeros(amplitude.shape, dtype=np.complex128)
    if rows.size == 0:
        return spectrum
    block = np.ix_(rows, cols)
    draws = rng.standard_normal((2, rows.size, cols.size))
    spectrum[block] = (draws[0] + 1j * draws[1]) * math.sqrt(0.5 * n_pixels) * amplitude[block]
    return spectrum


def _expected_image(
    config: SimulationConfig,
    structures: Sequence[Structure3D],
    generators: list[np.random.Generator],
    max_drift_px: float,
    noise_floor_variance: float,
) -> _ExpectedImage:
    """λ(x) on the padded grid (module docstring, steps 1–3) and the particle truth images."""
    draws = _draw_exposure(config, generators[0])
    pad = _padding_px(config, draws, max_drift_px)
    ny, nx = config.shape_px
    padded = (
        scipy.fft.next_fast_len(ny + 2 * pad, real=True),
        scipy.fft.next_fast_len(nx + 2 * pad, real=True),
    )
    pad_yx = ((padded[0] - ny) // 2, (padded[1] - nx) // 2)
    px = config.pixel_size_angstrom
    sigma_e = interaction_constant_rad_per_volt_angstrom(config.voltage_kv)
    dose_px = config.dose_per_pixel_e

    # 1. Specimen: particles.
    diameter_px = config.particle_diameter_angstrom / px
    positions = place_particles(generators[1], config.shape_px, diameter_px, config.particles_per_micrograph)
    n_particles = positions.shape[0]
    structure_ids = np.asarray(generators[2].integers(0, len(structures), n_particles), dtype=np.int64)
    euler = random_euler_angles_deg(generators[2], n_particles)
    particle_potential = np.zeros(padded, dtype=np.float64)
    for i in range(n_particles):
        structure = structures[int(structure_ids[i])]
        sigma_max = float(structure.atom_sigma_angstrom.max())
        half = math.ceil((0.5 * structure.diameter_angstrom + 5.0 * sigma_max) / px) + 1
        centre = (float(positions[i, 0]) + pad_yx[0], float(positions[i, 1]) + pad_yx[1])
        y0 = max(0, math.floor(centre[0]) - half)
        x0 = max(0, math.floor(centre[1]) - half)
        y1 = min(padded[0], math.floor(centre[0]) + half + 1)
        x1 = min(padded[1], math.floor(centre[1]) + half + 1)
        rotation = rotation_matrix_from_euler_deg(*(float(a) for a in euler[i]))
        particle_potential[y0:y1, x0:x1] += _render_projection(
            structure, rotation, centre, px, (y0, x0), (y1 - y0, x1 - x0)
        )
    particle_phase_ft = np.asarray(scipy.fft.rfft2(sigma_e * particle_potential), dtype=np.complex128)

    # 1b. Specimen: amorphous ice, generated directly as a spectrum (H = √S / pixel, see below).
    ky, kx = frequency_grid_per_angstrom(padded, px, rfft=True)
    k = np.sqrt(ky**2 + kx**2)
    ice_amplitude = sigma_e * np.sqrt(ice_power_spectrum(k, draws.ice_thickness_nm)) / px
    ice_phase_ft = _gaussian_field_spectrum(generators[3], padded, ice_amplitude)

    # 2. Optics: CTF with B-factor envelope.
    ctf_b = ctf_2d(
        draws.ctf,
        config.microscope,
        padded,
        rfft=True,
        bfactor_angstrom2=draws.bfactor_angstrom2,
        dtype=torch.float64,
    )
    ctf_b_np = np.asarray(ctf_b.numpy(), dtype=np.float64)
    particle_contrast = 2.0 * np.asarray(scipy.fft.irfft2(ctf_b_np * particle_phase_ft, s=padded), dtype=np.float64)
    specimen_contrast = 2.0 * np.asarray(
        scipy.fft.irfft2(ctf_b_np * (particle_phase_ft + ice_phase_ft), s=padded), dtype=np.float64
    )

    # 3. Inelastic background.
    inelastic_fraction = 1.0 - math.exp(-draws.ice_thickness_nm / config.inelastic_mean_free_path_nm)
    lowpass = np.exp(-0.5 * (k * _INELASTIC_CORRELATION_ANGSTROM) ** 2)
    lowpass[lowpass < 1e-6] = 0.0  # beyond ≈ 5/(300 Å): draw no coefficients there
    g_ft = _gaussian_field_spectrum(generators[4], padded, lowpass)
    g = np.asarray(scipy.fft.irfft2(g_ft, s=padded), dtype=np.float64)
    g_std = float(g.std())
    if g_std > 0:
        g = g / g_std
    base = dose_px * ((1.0 - inelastic_fraction) + inelastic_fraction * (1.0 + _INELASTIC_MODULATION * g))
    elastic = dose_px * (1.0 - inelastic_fraction)

    # Contrast scale: solve s² A = T (B + s C) on the cropped image (module docstring, step 3).
    crop = (slice(pad_yx[0], pad_yx[0] + ny), slice(pad_yx[1], pad_yx[1] + nx))
    scale = 1.0
    if config.target_snr is not None:
        signal_variance = float(np.var(elastic * particle_contrast[crop]))
        if not signal_variance > 0:
            raise ValueError("target_snr is set but no particle could be placed in the image")
        target = config.target_snr
        b_term = float(np.mean(base[crop])) + noise_floor_variance
        c_term = float(np.mean(elastic * specimen_contrast[crop]))
        scale = (target * c_term + math.sqrt((target * c_term) ** 2 + 4.0 * signal_variance * target * b_term)) / (
            2.0 * signal_variance
        )
    expected = np.maximum(base + scale * elastic * specimen_contrast, 0.0)
    return _ExpectedImage(
        expected=expected,
        particle=scale * elastic * particle_contrast,
        potential=scale * elastic * 2.0 * sigma_e * particle_potential,
        pad_yx_px=pad_yx,
        draws=draws,
        positions_px=positions,
        structure_ids=structure_ids,
        euler_angles_deg=euler,
        inelastic_fraction=inelastic_fraction,
        contrast_scale=scale,
    )


def _hot_pixels(rng: np.random.Generator, shape_px: tuple[int, int], fraction: float) -> IntArray:
    n_hot = round(fraction * shape_px[0] * shape_px[1])
    if n_hot == 0:
        return np.zeros((0, 2), dtype=np.int64)
    flat = np.sort(rng.choice(shape_px[0] * shape_px[1], size=n_hot, replace=False))
    return np.ascontiguousarray(np.stack(np.unravel_index(flat, shape_px), axis=1), dtype=np.int64)


def _check_name(name: str) -> None:
    if not name or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        raise ValueError(f"names may hold only ASCII letters, digits, '_' and '-', got {name!r}")


def _resolve_structures(config: SimulationConfig, structures: Sequence[Structure3D] | None) -> tuple[Structure3D, ...]:
    if structures is None:
        return make_structures(config.n_structures, config.particle_diameter_angstrom, config.structure_seed)
    if len(structures) == 0:
        raise ValueError("structures must not be empty")
    return tuple(structures)


def _truth(
    config: SimulationConfig,
    image: _ExpectedImage,
    snr: float,
    drift_shifts_px: FloatArray | None,
    hot_pixels: IntArray,
) -> MicrographTruth:
    drift_total = 0.0
    if drift_shifts_px is not None:
        drift_total = float(np.sum(np.linalg.norm(np.diff(drift_shifts_px, axis=0), axis=1)))
    return MicrographTruth(
        ctf=image.draws.ctf,
        bfactor_angstrom2=image.draws.bfactor_angstrom2,
        ice_thickness_nm=image.draws.ice_thickness_nm,
        dose_e_per_angstrom2=config.dose_e_per_angstrom2,
        inelastic_fraction=image.inelastic_fraction,
        contrast_scale=image.contrast_scale,
        particle_positions_px=image.positions_px,
        structure_ids=image.structure_ids,
        euler_angles_deg=image.euler_angles_deg,
        snr=snr,
        nominal_defocus_angstrom=image.draws.nominal_defocus_angstrom,
        drift_shifts_px=drift_shifts_px,
        drift_total_px=drift_total,
        hot_pixels_yx=hot_pixels,
    )


def simulate_micrograph(
    config: SimulationConfig,
    name: str,
    seed: int | Sequence[int],
    structures: Sequence[Structure3D] | None = None,
) -> SimulatedMicrograph:
    """Simulate one integrated micrograph (model in the module docstring).

    Parameters
    ----------
    config : SimulationConfig
    name : str
        Exposure name (ASCII letters, digits, '_' and '-').
    seed : int or sequence of int
        Entropy of ``numpy.random.SeedSequence``; the same seed gives bit-identical output.
    structures : sequence of Structure3D, optional
        Defaults to ``make_structures(config.n_structures, config.particle_diameter_angstrom,
        config.structure_seed)``.
    """
    _check_name(name)
    generators = _streams(seed)
    library = _resolve_structures(config, structures)
    read_variance = config.read_noise_std_counts**2
    image = _expected_image(config, library, generators, 0.0, read_variance)
    ny, nx = config.shape_px
    crop = (
        slice(image.pad_yx_px[0], image.pad_yx_px[0] + ny),
        slice(image.pad_yx_px[1], image.pad_yx_px[1] + nx),
    )
    clean = image.expected[crop]
    noise_rng = generators[6]
    counts = noise_rng.poisson(clean).astype(np.float64)
    if config.read_noise_std_counts > 0:
        counts += noise_rng.normal(0.0, config.read_noise_std_counts, clean.shape)
    hot = _hot_pixels(generators[7], config.shape_px, config.hot_pixel_fraction)
    if hot.shape[0]:
        counts[hot[:, 0], hot[:, 1]] += generators[7].poisson(
            HOT_PIXEL_RATE_FACTOR * config.dose_per_pixel_e, hot.shape[0]
        )
    particle = image.particle[crop]
    noise_variance = float(np.var(counts - clean))
    snr = float(np.var(particle)) / noise_variance if noise_variance > 0 else math.inf
    return SimulatedMicrograph(
        name=name,
        counts=counts.astype(np.float32),
        clean_image=clean.astype(np.float32),
        particle_image=particle.astype(np.float32),
        potential_image=image.potential[crop].astype(np.float32),
        truth=_truth(config, image, snr, None, hot),
    )


def drift_trajectory_px(rng: np.random.Generator, n_frames: int, total_path_px: float) -> FloatArray:
    """Beam-induced drift [dy, dx] per frame relative to frame 0, pixels, path length ``total_path_px``.

    Smooth part: speed decaying as exp(−t/τ) (τ 1.5–4 frames) over a floor of 10–25 % (the fast initial
    motion of Li et al. 2013, Nat. Methods 10:584, and Zheng et al. 2017, Nat. Methods 14:331), along a
    direction that turns slowly (Normal(0, 0.1) rad per frame).  Random part: per-step jitter of 15 % of
    the mean step.  The steps are scaled so that Σ_f |shift_{f+1} − shift_f| = total_path_px.  Sign
    convention: ``MicrographTruth.drift_shifts_px``.
    """
    steps_t = np.arange(n_frames - 1, dtype=np.float64) + 0.5
    tau = float(rng.uniform(1.5, 4.0))
    floor = float(rng.uniform(0.1, 0.25))
    speed = np.exp(-steps_t / tau) + floor
    angle = float(rng.uniform(0.0, 2.0 * math.pi)) + float(rng.normal(0.0, 0.1)) * steps_t
    steps = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
    steps += 0.15 * float(speed.mean()) * rng.standard_normal(steps.shape)
    path = float(np.sum(np.linalg.norm(steps, axis=1)))
    if path > 0:
        steps *= total_path_px / path
    shifts = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)], axis=0)
    return np.ascontiguousarray(shifts, dtype=np.float64)


def fourier_shift_image(
    image_ft: npt.NDArray[np.complex128], shape_px: tuple[int, int], shift_yx_px: FloatArray
) -> FloatArray:
    """Shift an image given by its rfft2 by (dy, dx) pixels: out(r) = in(r − shift), sub-pixel, periodic."""
    ky = np.fft.fftfreq(shape_px[0])[:, None]
    kx = np.fft.rfftfreq(shape_px[1])[None, :]
    ramp = np.exp(-2j * np.pi * (ky * float(shift_yx_px[0]) + kx * float(shift_yx_px[1])))
    return np.asarray(scipy.fft.irfft2(image_ft * ramp, s=shape_px), dtype=np.float64)


def simulate_movie(
    config: SimulationConfig,
    name: str,
    seed: int | Sequence[int],
    structures: Sequence[Structure3D] | None = None,
) -> SimulatedMovie:
    """Simulate one dose-fractionated movie of ``config.n_frames`` electron-counted frames.

    The expected image of the whole exposure is formed as for a micrograph, split evenly over the frames
    (dose/n_frames each), shifted per frame along ``drift_trajectory_px`` by a Fourier (sub-pixel) shift
    on the padded grid, cropped, and Poisson-sampled.  Drift within a frame is not modelled.  Hot pixels
    sit at fixed detector positions in every frame.  Parameters as for ``simulate_micrograph``.
    """
    _check_name(name)
    generators = _streams(seed)
    library = _resolve_structures(config, structures)
    total_path = float(generators[5].uniform(*config.drift_total_px_range))
    shifts = drift_trajectory_px(generators[5], config.n_frames, total_path)
    max_drift = float(np.max(np.abs(shifts)))
    image = _expected_image(config, library, generators, max_drift, 0.0)
    ny, nx = config.shape_px
    crop = (
        slice(image.pad_yx_px[0], image.pad_yx_px[0] + ny),
        slice(image.pad_yx_px[1], image.pad_yx_px[1] + nx),
    )
    padded_shape = (int(image.expected.shape[0]), int(image.expected.shape[1]))
    expected_ft = np.asarray(scipy.fft.rfft2(image.expected / config.n_frames), dtype=np.complex128)
    hot = _hot_pixels(generators[7], config.shape_px, config.hot_pixel_fraction)
    frames = np.empty((config.n_frames, ny, nx), dtype=np.float32)
    noise_sum = np.zeros((ny, nx), dtype=np.float64)
    noise_rng = generators[6]
    for f in range(config.n_frames):
        frame_expected = np.maximum(fourier_shift_image(expected_ft, padded_shape, shifts[f])[crop], 0.0)
        frame = noise_rng.poisson(frame_expected).astype(np.float64)
        noise_sum += frame - frame_expected
        if hot.shape[0]:
            rate = HOT_PIXEL_RATE_FACTOR * config.dose_per_pixel_e / config.n_frames
            extra = np.asarray(generators[7].poisson(rate, hot.shape[0]), dtype=np.float64)
            frame[hot[:, 0], hot[:, 1]] += extra
            noise_sum[hot[:, 0], hot[:, 1]] += extra
        frames[f] = frame
    particle = image.particle[crop]
    noise_variance = float(np.var(noise_sum))
    snr = float(np.var(particle)) / noise_variance if noise_variance > 0 else math.inf
    return SimulatedMovie(
        name=name,
        frames=frames,
        clean_image=image.expected[crop].astype(np.float32),
        particle_image=particle.astype(np.float32),
        potential_image=image.potential[crop].astype(np.float32),
        truth=_truth(config, image, snr, shifts, hot),
    )


def simulate_session(
    config: SimulationConfig, session_name: str, n_micrographs: int, n_movies: int, seed: int
) -> SimulatedSession:
    """Simulate a session: ``n_micrographs`` micrographs and ``n_movies`` movies of the same structures.

    Exposure i of each kind uses the seed sequence (seed, 0, i) for micrographs and (seed, 1, i) for
    movies, so adding exposures never changes the existing ones.  Names are
    f"{session_name}_mic_{i:04d}" and f"{session_name}_mov_{i:04d}".
    """
    _check_name(session_name)
    if n_micrographs < 0 or n_movies < 0 or seed < 0:
        raise ValueError("n_micrographs, n_movies and seed must be >= 0")
    structures = make_structures(config.n_structures, config.particle_diameter_angstrom, config.structure_seed)
    micrographs = tuple(
        simulate_micrograph(config, f"{session_name}_mic_{i:04d}", (seed, 0, i), structures)
        for i in range(n_micrographs)
    )
    movies = tuple(
        simulate_movie(config, f"{session_name}_mov_{i:04d}", (seed, 1, i), structures) for i in range(n_movies)
    )
    return SimulatedSession(
        session_name=session_name,
        config=config,
        microscope=config.microscope,
        seed=seed,
        structures=structures,
        micrographs=micrographs,
        movies=movies,
    )
