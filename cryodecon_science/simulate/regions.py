"""Specimen regions beside the particles in the hole's ice: carbon support, thin film, contamination, aggregates.

Geometry (all in image pixels, [y, x], pixel (iy, ix) centred at (iy, ix)):

* **Foil hole.**  Holey-carbon supports (Quantifoil, C-flat) carry round holes of 1.2–2 µm in a 10–20 nm
  amorphous carbon film.  A field of 0.1–0.4 µm sees either ice only or the hole edge, a gently curved
  arc.  Per exposure, with probability ``hole_edge_probability`` the edge crosses the field: the field
  centre lies at R + u from the hole centre, u uniform in ±0.4 field widths, in a uniform direction;
  otherwise the field lies wholly inside the hole.  Carbon is everything farther than R from the centre.
* **Contamination.**  Poisson(``contamination_per_micrograph``) crystalline-ice or ethane blobs on the
  surface: ellipses (axis ratio 0.6–1) of diameter uniform in ``contamination_diameter_range_angstrom``
  with an irregular outline (harmonics 2–4 of 8 % amplitude), thickness t₀ uniform in
  ``contamination_thickness_range_nm``, profile t₀·√(1 − 0.6ρ²) inside, falling to 0 over a rim of
  ``CONTAMINATION_RIM_ANGSTROM`` (ρ the normalised radius).  Centres are uniform over the field grown by
  the largest radius, so blobs also cut the border.
* **Continuous film.**  Thin carbon or graphene oxide (``continuous_film_thickness_nm``) over the whole
  field: a uniform loss and its own amorphous texture, no edge.  Not junk: particles on it are good.
* **Aggregates.**  A fraction ``aggregate_fraction`` of the requested particles forms clusters of 3–6
  touching particles (down to 2 in a crowded field): each new member sits at 0.75–0.95 diameters from a
  random member (spheres touching at different heights overlap in projection), ≥ 0.75 diameters from
  the others and ≥ one diameter from other clusters.

Image (``support_image``).  Carbon, film and contamination are strong objects (a 15 nm carbon film shifts
the phase by σ_e·V_C·t ≈ 0.9 rad, a 200 nm ice crystal by ≈ 6 rad), so they are imaged as a full wave
rather than by the linear weak-phase model of ``formation``:

    ψ_s(x) = exp(−μ(x)/2 + i φ_s(x)),   I_s(x) = |F⁻¹{E(k) · exp(iχ(k)) · F{ψ_s}}|²,

with the loss exponent μ = t_C/λ_C + t_ice/λ_in (Beer–Lambert for the electrons the energy filter or
the objective aperture removes; the log-ratio relation of Malis, Cheng & Egerton 1988, J. Electron
Microsc. Tech. 8:193), the phase φ_s = σ_e·(V_C·t_C + V_ice·t_ice) + texture, the mean inner potentials
V_C = 9.09 V of amorphous carbon (Wanner et al. 2006, Ultramicroscopy 106:341) and V_ice = 4.48 V of
water (Yesibolati et al. 2020, Phys. Rev. Lett. 124:065502), and the texture a Gaussian random field of
power ∝ t_C (as for ice in ``formation``, scaled by (V_C/V_ice)²: same relative density fluctuations).
χ is the aberration phase without the amplitude-contrast term (the loss is explicit here) and E the
B-factor envelope; exp(iχ) makes a weak phase image as 1 + 2F⁻¹{−sin χ·E·F{φ}}, the sign of
``formation``.  A uniform phase has no effect, so a continuous film shows only as a uniform loss and its
texture.  The expected image is the hole's image multiplied by I_s (the weak specimen seen through the
support's transmission; cross terms of the two phases neglected).

Masks and flags are the truth of the picking benchmark: a particle is *on carbon* / *under
contamination* when its centre pixel lies in the mask.  ``mask_to_rle`` / ``mask_from_rle`` store masks
compactly.  ``formation`` places the particles around these regions and multiplies its image by I_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.special
import torch

from cryodecon_science.optics import (
    CtfParams,
    amplitude_contrast_phase_rad,
    ctf_phase_rad,
    frequency_grid_per_angstrom,
)
from cryodecon_science.simulate.config import SimulationConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Outer rim over which a contamination blob thins to zero: sharp (real ice crystals have facets), yet
# wide enough that the phase of a 400 nm blob changes by < 1 rad per pixel at 1 Å/pixel (no aliasing).
CONTAMINATION_RIM_ANGSTROM = 15.0
# Width of the carbon film's edge (the σ of an error-function step), Å: evaporated carbon ends in a
# rough lip a few nm wide.
CARBON_EDGE_WIDTH_ANGSTROM = 10.0
# Mean inner potentials relative to vacuum, V: amorphous carbon (electron holography, Wanner et al.
# 2006, Ultramicroscopy 106:341) and water (Yesibolati et al. 2020, Phys. Rev. Lett. 124:065502).
CARBON_MEAN_INNER_POTENTIAL_VOLT = 9.09
ICE_MEAN_INNER_POTENTIAL_VOLT = 4.48
# Amorphous-carbon projected-potential power per nm, (V·Å)²·Å²: formation.ICE_POWER_PER_NM (200) times
# (V_C/V_ice)², the same relative density fluctuations as ice; smooth falloff of width 0.25 Å⁻¹.
CARBON_POWER_PER_NM = 200.0 * (CARBON_MEAN_INNER_POTENTIAL_VOLT / ICE_MEAN_INNER_POTENTIAL_VOLT) ** 2
_CARBON_TEXTURE_WIDTH_PER_ANGSTROM = 0.25
# Aggregates: cluster sizes and projected contact distances in particle diameters.
_CLUSTER_SIZE_RANGE = (3, 6)
_CONTACT_RANGE_DIAMETERS = (0.75, 0.95)
_EDGE_OFFSET_FIELD_WIDTHS = 0.4


@dataclass(frozen=True)
class ContaminationBlob:
    """One contamination blob.

    Attributes
    ----------
    centre_yx_px : tuple of float
        Centre [y, x], image pixels.
    semi_axes_px : tuple of float
        Semi-axes (a, b) of the ellipse, pixels, a >= b.
    angle_deg : float
        Angle from the x axis towards the y axis to the a axis, degrees.
    thickness_nm : float
        Central thickness t₀, nm.
    harmonics : tuple of (float, float)
        (amplitude, phase rad) of the outline harmonics m = 2, 3, 4: the radius is scaled by
        1 + Σ_m amplitude_m cos(m θ + phase_m).
    """

    centre_yx_px: tuple[float, float]
    semi_axes_px: tuple[float, float]
    angle_deg: float
    thickness_nm: float
    harmonics: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class RegionDraws:
    """The per-exposure geometry of the regions (``None`` / empty where the feature is off).

    Attributes
    ----------
    hole_centre_yx_px : tuple of float or None
        Centre of the foil hole, image pixels (usually far outside the image).
    hole_radius_px : float or None
        Radius R of the hole, pixels.
    contamination : tuple of ContaminationBlob
    """

    hole_centre_yx_px: tuple[float, float] | None
    hole_radius_px: float | None
    contamination: tuple[ContaminationBlob, ...]


def draw_regions(config: SimulationConfig, rng: np.random.Generator) -> RegionDraws:
    """Draw the hole position and the contamination blobs of one exposure (module docstring)."""
    ny, nx = config.shape_px
    px = config.pixel_size_angstrom
    centre_field = (0.5 * (ny - 1), 0.5 * (nx - 1))
    hole_centre: tuple[float, float] | None = None
    hole_radius: float | None = None
    if config.hole_diameter_angstrom is not None:
        hole_radius = 0.5 * config.hole_diameter_angstrom / px
        width = float(max(ny, nx))
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        if rng.random() < config.hole_edge_probability:
            distance = hole_radius + float(rng.uniform(-1.0, 1.0)) * _EDGE_OFFSET_FIELD_WIDTHS * width
        else:
            # Uniform over the disc of centres that keep the whole field (half-diagonal) inside the hole.
            inner = max(hole_radius - 0.5 * math.hypot(ny, nx), 0.0)
            distance = inner * math.sqrt(float(rng.random()))
        distance = max(distance, 0.0)
        hole_centre = (centre_field[0] - distance * math.sin(angle), centre_field[1] - distance * math.cos(angle))
    blobs: list[ContaminationBlob] = []
    n_blobs = int(rng.poisson(config.contamination_per_micrograph)) if config.contamination_per_micrograph > 0 else 0
    max_radius = 0.5 * config.contamination_diameter_range_angstrom[1] / px
    for _ in range(n_blobs):
        diameter = float(rng.uniform(*config.contamination_diameter_range_angstrom)) / px
        ratio = float(rng.uniform(0.6, 1.0))
        a = 0.5 * diameter / math.sqrt(ratio)  # equal-area ellipse of the drawn diameter
        centre = (
            float(rng.uniform(-max_radius, ny - 1 + max_radius)),
            float(rng.uniform(-max_radius, nx - 1 + max_radius)),
        )
        harmonics = tuple((float(rng.uniform(0.0, 0.08)), float(rng.uniform(0.0, 2.0 * math.pi))) for _ in range(3))
        blobs.append(
            ContaminationBlob(
                centre_yx_px=centre,
                semi_axes_px=(a, a * ratio),
                angle_deg=float(rng.uniform(0.0, 180.0)),
                thickness_nm=float(rng.uniform(*config.contamination_thickness_range_nm)),
                harmonics=harmonics,
            )
        )
    return RegionDraws(hole_centre, hole_radius, tuple(blobs))


@dataclass(frozen=True, eq=False)
class SupportImage:
    """The support wave's image and its truth masks on the padded grid.

    Attributes
    ----------
    intensity : ndarray (ny, nx) float64
        I_s(x), 1 where there is neither carbon, film nor contamination.
    carbon_mask, contamination_mask : ndarray (ny, nx) bool
        Carbon (beyond the hole radius) and contamination (inside a blob outline).
    """

    intensity: FloatArray
    carbon_mask: BoolArray
    contamination_mask: BoolArray


@dataclass(frozen=True, eq=False)
class RegionTruth:
    """What the regions put in an exposure, cropped to the image (``None`` for features that are off).

    Attributes
    ----------
    draws : RegionDraws or None
        Hole and contamination geometry (None when only aggregates are on).
    carbon_mask, contamination_mask : ndarray (ny, nx) bool or None
    particle_on_carbon, particle_under_contamination : ndarray (n_particles,) bool or None
    particle_aggregate_ids : ndarray (n_particles,) int64 or None
        Cluster index of each particle, −1 for a single particle.
    """

    draws: RegionDraws | None
    carbon_mask: BoolArray | None
    contamination_mask: BoolArray | None
    particle_on_carbon: BoolArray | None
    particle_under_contamination: BoolArray | None
    particle_aggregate_ids: IntArray | None


def _grid(shape_px: tuple[int, int], origin_yx_px: tuple[float, float]) -> tuple[FloatArray, FloatArray]:
    """Image-pixel coordinates (y, x) of a grid whose pixel [0, 0] sits at ``origin_yx_px``."""
    y = np.arange(shape_px[0], dtype=np.float64)[:, None] + origin_yx_px[0]
    x = np.arange(shape_px[1], dtype=np.float64)[None, :] + origin_yx_px[1]
    return y, x


def carbon_fraction_map(
    draws: RegionDraws, shape_px: tuple[int, int], origin_yx_px: tuple[float, float], edge_width_px: float
) -> FloatArray:
    """Carbon occupancy in [0, 1] on a grid: an error-function step of σ ``edge_width_px`` at radius R.

    Zero everywhere when there is no hole.  The truth mask is occupancy > ½ (distance > R).
    """
    if draws.hole_centre_yx_px is None or draws.hole_radius_px is None:
        return np.zeros(shape_px, dtype=np.float64)
    y, x = _grid(shape_px, origin_yx_px)
    distance = np.hypot(y - draws.hole_centre_yx_px[0], x - draws.hole_centre_yx_px[1]) - draws.hole_radius_px
    return np.asarray(
        0.5 * (1.0 + scipy.special.erf(distance / (math.sqrt(2.0) * max(edge_width_px, 1e-6)))), dtype=np.float64
    )


def _blob_radius(blob: ContaminationBlob, y: FloatArray, x: FloatArray) -> FloatArray:
    """Normalised radius ρ of a blob (1 on its outline) and nothing beyond the bounding window."""
    dy, dx = y - blob.centre_yx_px[0], x - blob.centre_yx_px[1]
    angle = math.radians(blob.angle_deg)
    # Ellipse frame: u along the a axis at ``angle_deg`` from x towards y.
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    a, b = blob.semi_axes_px
    theta = np.arctan2(v / b, u / a)
    outline = np.ones_like(theta)
    for m, (amplitude, phase) in zip((2, 3, 4), blob.harmonics, strict=True):
        outline = outline + amplitude * np.cos(m * theta + phase)
    return np.asarray(np.hypot(u / a, v / b) / outline, dtype=np.float64)


def contamination_thickness_nm(
    draws: RegionDraws, shape_px: tuple[int, int], origin_yx_px: tuple[float, float], rim_px: float
) -> tuple[FloatArray, BoolArray]:
    """Thickness map t(x) in nm of all blobs (overlaps add) and the truth mask ρ < 1 (module docstring).

    The thickness falls linearly to zero over the last ``rim_px`` pixels inside the outline.
    """
    thickness = np.zeros(shape_px, dtype=np.float64)
    mask = np.zeros(shape_px, dtype=bool)
    for blob in draws.contamination:
        reach = 1.2 * blob.semi_axes_px[0] + 2.0
        y0 = max(0, math.floor(blob.centre_yx_px[0] - origin_yx_px[0] - reach))
        y1 = min(shape_px[0], math.ceil(blob.centre_yx_px[0] - origin_yx_px[0] + reach) + 1)
        x0 = max(0, math.floor(blob.centre_yx_px[1] - origin_yx_px[1] - reach))
        x1 = min(shape_px[1], math.ceil(blob.centre_yx_px[1] - origin_yx_px[1] + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        y, x = _grid((y1 - y0, x1 - x0), (origin_yx_px[0] + y0, origin_yx_px[1] + x0))
        rho = _blob_radius(blob, y, x)
        rim = np.clip((1.0 - rho) * blob.semi_axes_px[1] / max(rim_px, 1e-6), 0.0, 1.0)
        dome = np.sqrt(np.clip(1.0 - 0.6 * rho**2, 0.0, None))
        thickness[y0:y1, x0:x1] += blob.thickness_nm * dome * rim
        mask[y0:y1, x0:x1] |= rho < 1.0
    return thickness, mask


def support_image(
    config: SimulationConfig,
    draws: RegionDraws,
    ctf: CtfParams,
    bfactor_angstrom2: float,
    padded_shape_px: tuple[int, int],
    pad_yx_px: tuple[int, int],
    sigma_e_rad_per_volt_angstrom: float,
    rng: np.random.Generator,
) -> SupportImage:
    """I_s(x) of carbon, film and contamination on the padded grid (module docstring).

    ``pad_yx_px`` is where image pixel [0, 0] sits on the padded grid.  Draws the carbon and film
    textures from ``rng`` (carbon first, then film, each only when its thickness is > 0).
    """
    px = config.pixel_size_angstrom
    origin = (-float(pad_yx_px[0]), -float(pad_yx_px[1]))
    occupancy = carbon_fraction_map(draws, padded_shape_px, origin, CARBON_EDGE_WIDTH_ANGSTROM / px)
    max_phase = (
        sigma_e_rad_per_volt_angstrom
        * ICE_MEAN_INNER_POTENTIAL_VOLT
        * 10.0
        * config.contamination_thickness_range_nm[1]
    )
    rim_px = max(CONTAMINATION_RIM_ANGSTROM / px, max_phase)  # <= 1 rad of phase per pixel
    contamination_nm, contamination_mask = contamination_thickness_nm(draws, padded_shape_px, origin, rim_px)
    carbon_nm = config.carbon_thickness_nm * occupancy + config.continuous_film_thickness_nm
    loss = carbon_nm / config.carbon_mean_free_path_nm + contamination_nm / config.inelastic_mean_free_path_nm
    phase = (
        sigma_e_rad_per_volt_angstrom
        * 10.0
        * (CARBON_MEAN_INNER_POTENTIAL_VOLT * carbon_nm + ICE_MEAN_INNER_POTENTIAL_VOLT * contamination_nm)
    )
    ky, kx = frequency_grid_per_angstrom(padded_shape_px, px, rfft=True)
    k2 = ky**2 + kx**2
    texture_amplitude = (
        sigma_e_rad_per_volt_angstrom
        * np.sqrt(CARBON_POWER_PER_NM * np.exp(-k2 / (2.0 * _CARBON_TEXTURE_WIDTH_PER_ANGSTROM**2)))
        / px
    )
    for thickness in (
        config.carbon_thickness_nm * occupancy,
        np.full(padded_shape_px, config.continuous_film_thickness_nm),
    ):
        if not float(thickness.max()) > 0:
            continue
        white = rng.standard_normal(padded_shape_px)
        texture = scipy.fft.irfft2(scipy.fft.rfft2(white) * texture_amplitude, s=padded_shape_px)
        phase = phase + np.sqrt(thickness) * texture
    wave = np.exp(-0.5 * loss + 1j * phase)
    fy, fx = frequency_grid_per_angstrom(padded_shape_px, px, rfft=False)
    chi_t = ctf_phase_rad(torch.as_tensor(fy), torch.as_tensor(fx), ctf, config.microscope)
    chi = chi_t.numpy() - amplitude_contrast_phase_rad(config.amplitude_contrast_fraction)
    chi[0, 0] = 0.0
    transfer = np.exp(1j * chi - bfactor_angstrom2 * (fy**2 + fx**2) / 4.0)
    image = scipy.fft.ifft2(scipy.fft.fft2(wave) * transfer)
    intensity = np.asarray(image.real**2 + image.imag**2, dtype=np.float64)
    return SupportImage(intensity=intensity, carbon_mask=occupancy > 0.5, contamination_mask=contamination_mask)


def place_aggregates(
    rng: np.random.Generator, shape_px: tuple[int, int], diameter_px: float, n_particles: int
) -> tuple[FloatArray, IntArray]:
    """Centres [y, x] (pixels) of clusters of touching particles and each one's cluster id (module docstring).

    Clusters hold 3–6 particles (fewer when the field is crowded); at most ``n_particles`` in all.
    Centres stay >= diameter/2 from the image edges, as in ``formation.place_particles``.
    """
    radius = 0.5 * diameter_px
    ny, nx = shape_px
    placed: list[tuple[float, float]] = []
    ids: list[int] = []
    cluster = 0
    attempts = 0
    while len(placed) < n_particles and attempts < 50 * max(n_particles, 1):
        attempts += 1
        size = min(int(rng.integers(_CLUSTER_SIZE_RANGE[0], _CLUSTER_SIZE_RANGE[1] + 1)), n_particles - len(placed))
        seed = (float(rng.uniform(radius, ny - 1 - radius)), float(rng.uniform(radius, nx - 1 - radius)))
        if any(math.hypot(seed[0] - p[0], seed[1] - p[1]) < 2.0 * diameter_px for p in placed):
            continue
        members = [seed]
        for _ in range(40 * size):
            if len(members) == size:
                break
            anchor = members[int(rng.integers(0, len(members)))]
            distance = float(rng.uniform(*_CONTACT_RANGE_DIAMETERS)) * diameter_px
            angle = float(rng.uniform(0.0, 2.0 * math.pi))
            candidate = (anchor[0] + distance * math.sin(angle), anchor[1] + distance * math.cos(angle))
            if not (radius <= candidate[0] <= ny - 1 - radius and radius <= candidate[1] <= nx - 1 - radius):
                continue
            near_own = min(math.hypot(candidate[0] - m[0], candidate[1] - m[1]) for m in members)
            near_other = min((math.hypot(candidate[0] - p[0], candidate[1] - p[1]) for p in placed), default=math.inf)
            if near_own >= _CONTACT_RANGE_DIAMETERS[0] * diameter_px and near_other >= diameter_px:
                members.append(candidate)
        if len(members) < 2:
            continue
        placed.extend(members)
        ids.extend([cluster] * len(members))
        cluster += 1
    positions = np.asarray(placed, dtype=np.float64).reshape(-1, 2)
    return positions, np.asarray(ids, dtype=np.int64)


def mask_at_positions(mask: BoolArray, positions_px: FloatArray) -> BoolArray:
    """Mask value at each centre [y, x] (nearest pixel, clipped into the image)."""
    if positions_px.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    iy = np.clip(np.rint(positions_px[:, 0]).astype(np.int64), 0, mask.shape[0] - 1)
    ix = np.clip(np.rint(positions_px[:, 1]).astype(np.int64), 0, mask.shape[1] - 1)
    return np.asarray(mask[iy, ix], dtype=bool)


def mask_to_rle(mask: BoolArray) -> list[int]:
    """Run lengths of a boolean mask in row-major order, alternating False/True and starting with False.

    The first run may be 0 (mask[0, 0] True).  ``mask_from_rle(mask_to_rle(m), m.shape)`` equals m.
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).astype(np.int64).tolist()
    return [0, *runs] if flat[0] else runs


def mask_from_rle(runs: list[int], shape_px: tuple[int, int]) -> BoolArray:
    """Inverse of ``mask_to_rle``."""
    if sum(runs) != shape_px[0] * shape_px[1]:
        raise ValueError(f"run lengths sum to {sum(runs)}, not {shape_px[0] * shape_px[1]} pixels")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(shape_px)
