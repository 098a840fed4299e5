"""Image formation of the simulator: the expected (noise-free) image of an exposure on a padded grid.

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

   With a foil-hole edge, a continuous film or contamination in view (``regions``), λ is multiplied by
   the support wave's image I_s(x) (strong objects, imaged as a full wave; ``regions`` docstring).

4. **Detector** (``exposures``).  Counts = Poisson(λ) + Normal(0, read_noise²) for an integrated
   micrograph; a movie frame is electron-counted, Poisson(λ_f) with no read noise (counting detectors
   threshold it away), with λ_f the dose-split, drift-shifted λ.  Optional hot pixels add Poisson counts
   at ``HOT_PIXEL_RATE_FACTOR`` times the mean rate at fixed detector positions.

Simulation runs on a grid padded by the CTF delocalisation (capped at a quarter of the image) and the
largest drift, then cropped, so the image has no wrap-around of delocalised signal or of drift.

Coordinates: pixel (iy, ix) has its centre at (iy, ix); particle positions are continuous (y, x) pixel
coordinates of the structure's centre of mass in the returned image.

Determinism: every random draw comes from ``numpy.random.default_rng`` streams spawned from
``numpy.random.SeedSequence(seed)``; the same seed gives bit-identical arrays.  The regions draw from a
stream of their own, and only when a region feature is on, so switching them off leaves every other draw
and every output as it was.  Structures come from
their own ``structure_seed`` so a reference library can regenerate them without any micrograph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
import torch

from cryodecon_science.optics import (
    CtfParams,
    amorphous_ice_spectrum_shape,
    ctf_2d,
    electron_wavelength_angstrom,
    frequency_grid_per_angstrom,
)
from cryodecon_science.projection import random_euler_angles_deg, rotation_matrix_from_euler_deg
from cryodecon_science.simulate.config import SimulationConfig
from cryodecon_science.simulate.regions import (
    RegionDraws,
    RegionTruth,
    carbon_fraction_map,
    draw_regions,
    mask_at_positions,
    place_aggregates,
    support_image,
)
from cryodecon_science.simulate.structures import Structure3D, render_projection

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Rest energy of the electron, keV (CODATA 2018).
_ELECTRON_REST_ENERGY_KEV = 510.99895
# Amorphous-ice projected-potential power per nm of ice thickness, (V·Å)²·Å² (i.e. PSD units) at the
# peak of the smooth component.  Calibrated so that 40 nm of ice at 1 Å/pixel has a projected phase of
# ≈0.055 rad standard deviation at 300 kV and its Thon rings show in empty areas at normal dose.
ICE_POWER_PER_NM = 200.0
# Inelastic background: relative modulation a and correlation length of g(x).
_INELASTIC_MODULATION = 0.1
_INELASTIC_CORRELATION_ANGSTROM = 300.0
# Amplitude below which the B-factor envelope no longer carries visible delocalised signal.
_ENVELOPE_FLOOR = 0.01


def interaction_constant_rad_per_volt_angstrom(voltage_kv: float) -> float:
    """Relativistic interaction constant σ_e = (2π / (λ U)) · (E₀ + eU) / (2E₀ + eU), rad/(V·Å).

    Phase shift per unit projected potential (Kirkland, *Advanced Computing in Electron Microscopy*,
    2nd ed., eq. 5.6).  300 kV -> 6.526e-4, 200 kV -> 7.288e-4 rad/(V·Å).
    """
    lam = electron_wavelength_angstrom(voltage_kv)
    e0 = _ELECTRON_REST_ENERGY_KEV
    return 2.0 * math.pi / (lam * voltage_kv * 1e3) * (e0 + voltage_kv) / (2.0 * e0 + voltage_kv)


def place_particles(
    rng: np.random.Generator,
    shape_px: tuple[int, int],
    diameter_px: float,
    n_particles: int,
    occupied_px: FloatArray | None = None,
) -> FloatArray:
    """Random non-overlapping centres [y, x] (pixels) by random sequential addition.

    Centres are >= ``diameter_px`` apart, from each other and from the centres in ``occupied_px`` (shape
    (k, 2), not returned), and >= diameter_px/2 from the image edges.  Up to 200 candidates per requested
    particle are tried; the result holds at most ``n_particles`` rows, fewer when the field is full.
    Returns an array of shape (m, 2), float64.
    """
    radius = 0.5 * diameter_px
    ny, nx = shape_px
    if n_particles <= 0 or ny - 1 < 2 * radius or nx - 1 < 2 * radius:
        return np.zeros((0, 2), dtype=np.float64)
    occupied = np.zeros((0, 2), dtype=np.float64) if occupied_px is None else np.asarray(occupied_px).reshape(-1, 2)
    accepted: list[FloatArray] = []
    accepted_array = occupied
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
            accepted_array = np.concatenate([occupied, np.asarray(accepted, dtype=np.float64)])
            if len(accepted) == n_particles:
                return accepted_array[occupied.shape[0] :]
    return accepted_array[occupied.shape[0] :]


def ice_power_spectrum(k_per_angstrom: FloatArray, ice_thickness_nm: float) -> FloatArray:
    """Power spectral density of the amorphous-ice projected potential, (V·Å)²·Å².

    S(k) = t · ICE_POWER_PER_NM · shape(k), with ``optics.amorphous_ice_spectrum_shape`` (a smooth
    falloff plus the water ring at 1/3.7 Å⁻¹; McMullan et al. 2015).  Linear in thickness t (nm).
    """
    shape = amorphous_ice_spectrum_shape(k_per_angstrom)
    return np.asarray(ice_thickness_nm * ICE_POWER_PER_NM * shape, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class _ExposureDraws:
    ctf: CtfParams
    bfactor_angstrom2: float
    ice_thickness_nm: float
    nominal_defocus_angstrom: float


@dataclass(frozen=True, eq=False)
class ExpectedImage:
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
    regions: RegionTruth | None = None


def random_streams(seed: int | Sequence[int]) -> list[np.random.Generator]:
    """Independent generators: 0 optics, 1 positions, 2 orientations, 3 ice, 4 inelastic, 5 drift,
    6 noise, 7 hot pixels, 8 regions (drawn from only when a region feature is on).

    ``SeedSequence.spawn`` derives child i from (seed, i) alone, so stream 8 leaves streams 0–7 as they
    were with eight streams."""
    sequence = np.random.SeedSequence(seed)
    return [np.random.default_rng(child) for child in sequence.spawn(9)]


def _place_with_regions(
    config: SimulationConfig,
    generators: list[np.random.Generator],
    region_draws: RegionDraws | None,
    diameter_px: float,
) -> tuple[FloatArray, IntArray | None, BoolArray | None]:
    """Particle centres, their aggregate ids (None without aggregates) and the carbon mask of the image.

    Aggregates (stream 8) are placed first, single particles (stream 1) around them; with a hole, a
    particle whose centre pixel lies on carbon is kept with probability
    ``carbon_particle_density_ratio`` (stream 8).  Without regions this is ``place_particles`` alone.
    """
    n_requested = config.particles_per_micrograph
    if not config.regions_enabled:
        return place_particles(generators[1], config.shape_px, diameter_px, n_requested), None, None
    region_rng = generators[8]
    aggregate_ids: IntArray | None = None
    if config.aggregate_fraction > 0:
        n_clustered = round(config.aggregate_fraction * n_requested)
        clustered, cluster_ids = place_aggregates(region_rng, config.shape_px, diameter_px, n_clustered)
        singles = place_particles(
            generators[1], config.shape_px, diameter_px, n_requested - clustered.shape[0], occupied_px=clustered
        )
        positions = np.concatenate([clustered, singles])
        aggregate_ids = np.concatenate([cluster_ids, np.full(singles.shape[0], -1, dtype=np.int64)])
    else:
        positions = place_particles(generators[1], config.shape_px, diameter_px, n_requested)
    carbon: BoolArray | None = None
    if region_draws is not None and region_draws.hole_centre_yx_px is not None:
        carbon = carbon_fraction_map(region_draws, config.shape_px, (0.0, 0.0), 0.0) > 0.5
        keep = ~mask_at_positions(carbon, positions) | (
            region_rng.random(positions.shape[0]) < config.carbon_particle_density_ratio
        )
        positions = positions[keep]
        aggregate_ids = None if aggregate_ids is None else aggregate_ids[keep]
    return positions, aggregate_ids, carbon


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


def expected_image(
    config: SimulationConfig,
    structures: Sequence[Structure3D],
    generators: list[np.random.Generator],
    max_drift_px: float,
    noise_floor_variance: float,
) -> ExpectedImage:
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

    # 1. Specimen: particles (and the regions' geometry, stream 8, only when they are on).
    diameter_px = config.particle_diameter_angstrom / px
    region_draws = draw_regions(config, generators[8]) if config.support_enabled else None
    positions, aggregate_ids, carbon_image_mask = _place_with_regions(config, generators, region_draws, diameter_px)
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
        particle_potential[y0:y1, x0:x1] += render_projection(
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
    expected = base + scale * elastic * specimen_contrast
    particle = scale * elastic * particle_contrast
    regions: RegionTruth | None = None
    if config.regions_enabled:
        contamination_mask: BoolArray | None = None
        if region_draws is not None:
            support = support_image(
                config, region_draws, draws.ctf, draws.bfactor_angstrom2, padded, pad_yx, sigma_e, generators[8]
            )
            expected = expected * support.intensity
            particle = particle * support.intensity
            if config.hole_diameter_angstrom is not None:
                carbon_image_mask = support.carbon_mask[crop]
            if config.contamination_per_micrograph > 0:
                contamination_mask = support.contamination_mask[crop]
        regions = RegionTruth(
            draws=region_draws,
            carbon_mask=carbon_image_mask,
            contamination_mask=contamination_mask,
            particle_on_carbon=None if carbon_image_mask is None else mask_at_positions(carbon_image_mask, positions),
            particle_under_contamination=None
            if contamination_mask is None
            else mask_at_positions(contamination_mask, positions),
            particle_aggregate_ids=aggregate_ids,
        )
    expected = np.maximum(expected, 0.0)
    return ExpectedImage(
        expected=expected,
        particle=particle,
        potential=scale * elastic * 2.0 * sigma_e * particle_potential,
        pad_yx_px=pad_yx,
        draws=draws,
        positions_px=positions,
        structure_ids=structure_ids,
        euler_angles_deg=euler,
        inelastic_fraction=inelastic_fraction,
        contrast_scale=scale,
        regions=regions,
    )
