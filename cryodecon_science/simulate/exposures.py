"""Exposures with detector noise (model step 4 of ``formation``): micrographs, drifting movies, sessions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.fft

from cryodecon_science.simulate.config import SimulationConfig
from cryodecon_science.simulate.formation import ExpectedImage, expected_image, random_streams
from cryodecon_science.simulate.results import MicrographTruth, SimulatedMicrograph, SimulatedMovie, SimulatedSession
from cryodecon_science.simulate.structures import Structure3D, make_structures

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

HOT_PIXEL_RATE_FACTOR = 25.0


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
        return make_structures(
            config.n_structures, config.particle_diameter_angstrom, config.structure_seed, config.structure_aspect_ratio
        )
    if len(structures) == 0:
        raise ValueError("structures must not be empty")
    return tuple(structures)


def _truth(
    config: SimulationConfig,
    image: ExpectedImage,
    snr: float,
    drift_shifts_px: FloatArray | None,
    hot_pixels: IntArray,
) -> MicrographTruth:
    drift_total = 0.0
    if drift_shifts_px is not None:
        drift_total = float(np.sum(np.linalg.norm(np.diff(drift_shifts_px, axis=0), axis=1)))
    regions = image.regions
    draws = None if regions is None else regions.draws
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
        carbon_mask=None if regions is None else regions.carbon_mask,
        hole_centre_yx_px=None if draws is None else draws.hole_centre_yx_px,
        hole_radius_px=None if draws is None else draws.hole_radius_px,
        contamination_mask=None if regions is None else regions.contamination_mask,
        contamination_blobs=() if draws is None else draws.contamination,
        continuous_film_thickness_nm=config.continuous_film_thickness_nm,
        particle_on_carbon=None if regions is None else regions.particle_on_carbon,
        particle_under_contamination=None if regions is None else regions.particle_under_contamination,
        particle_aggregate_ids=None if regions is None else regions.particle_aggregate_ids,
    )


def simulate_micrograph(
    config: SimulationConfig,
    name: str,
    seed: int | Sequence[int],
    structures: Sequence[Structure3D] | None = None,
) -> SimulatedMicrograph:
    """Simulate one integrated micrograph (model: ``formation`` docstring).

    Parameters
    ----------
    config : SimulationConfig
    name : str
        Exposure name (ASCII letters, digits, '_' and '-').
    seed : int or sequence of int
        Entropy of ``numpy.random.SeedSequence``; the same seed gives bit-identical output.
    structures : sequence of Structure3D, optional
        Defaults to ``make_structures(config.n_structures, config.particle_diameter_angstrom,
        config.structure_seed, config.structure_aspect_ratio)``.
    """
    _check_name(name)
    generators = random_streams(seed)
    library = _resolve_structures(config, structures)
    read_variance = config.read_noise_std_counts**2
    image = expected_image(config, library, generators, 0.0, read_variance)
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
    generators = random_streams(seed)
    library = _resolve_structures(config, structures)
    total_path = float(generators[5].uniform(*config.drift_total_px_range))
    shifts = drift_trajectory_px(generators[5], config.n_frames, total_path)
    max_drift = float(np.max(np.abs(shifts)))
    image = expected_image(config, library, generators, max_drift, 0.0)
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
    structures = _resolve_structures(config, None)
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
