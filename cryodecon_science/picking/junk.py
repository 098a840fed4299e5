"""Junk regions of a micrograph (support carbon, contamination, thick ice) and the reason each pick is rejected.

Physics.  Electrons that pass more material are scattered out of the image (by the objective aperture,
or by the energy filter when inelastic): the counts fall as I = I_hole·exp(−Δt/λ) (Beer–Lambert; the
log-ratio thickness relation of Malis, Cheng & Egerton 1988, J. Electron Microsc. Tech. 8:193, used for
cryo-EM ice by Rice et al. 2018, J. Struct. Biol. 204:38).  The map τ(x) = ln(I_hole / I(x)) = Δt/λ is
the extra thickness in mean free paths.  On a low-passed micrograph:

* **Carbon** of the holey support (10–20 nm, λ_C ≈ 190 nm: τ ≈ 0.05–0.1) is a large area one step
  darker than the hole, bounded by the hole's edge: an arc of radius 0.6–1 µm, i.e. a straight line or a
  circle with the carbon on its *outside*, touching the image border.
* **Contamination** (ice crystals, frost, ethane; 50–500 nm: τ ≳ 0.15) is compact and very dark, a blob
  with the dark side *inside* its outline.
* **Thick ice**: a large area one step darker whose outline is neither (no support edge).
* A **continuous thin film** (thin carbon, graphene oxide) darkens the whole field uniformly: no step,
  nothing flagged, its particles picked.

Maps.  The counts are block-averaged (bins of σ_f/4) and low-passed by Gaussians of σ_f = d/4 (keeps
blobs of a few hundred Å and sharp outlines) and σ_c = d/2 (averages out the particles' own contrast); d
is the particle diameter.  Steps:

1. Very dark seeds: L_f < ln(I_bright) − ``contamination_min_step`` with I_bright the 90th percentile of
   the coarse map (the hole when there is any).  Large seeds on the border with a support edge and a
   median step ≤ ``CARBON_MAX_STEP`` are thick carbon; the others are contamination.
2. Carbon: the coarse map is recomputed without the seeds and their rims (a normalised convolution), so
   that blobs do not darken their surroundings, and split in two by Otsu's threshold.  A split counts
   only when the class medians differ by ≥ ``carbon_min_step`` and by ≥ 4 robust within-class standard
   deviations (a unimodal Gaussian map split by Otsu differs by 2.3 of them).  Each dark component that
   touches the border and whose outline is a support edge (a line or an outward circle fitting 60 % of
   the outline, ``_support_side``) is carbon, continued by the fitted edge where contamination hides it;
   other large dark components are thick ice.  The edge lies at the half-height of the blurred step,
   midway between the class medians.
3. Contamination: within 2σ_f of a seed, counts below half-way between the local level (hole or
   carbon) and the darkest counts within σ_f: the half-height of each blob's blurred outline.

Boundaries are refined to pixels on the bilinearly upsampled maps; ``classify_picks`` gives each pick
one reason.  A field wholly on carbon has no step and is not flagged: compare its ``hole_level_counts``
with the session's other exposures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage, spatial
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

# Smallest carbon step, τ = Δt/λ: 0.03 ⇔ 6 nm of carbon at λ_C ≈ 190 nm (300 kV), below the thinnest
# holey-carbon film (10 nm, τ ≈ 0.05) and 2–3 times the smooth inelastic/thickness modulation of the ice.
CARBON_MIN_STEP = 0.03
# Seed step of contamination: 0.15 ⇔ ≈ 50 nm of ice at λ_in ≈ 350 nm, thicker than any vitreous layer
# worth imaging above the hole's own ice and darker than 20 nm carbon (0.1).
CONTAMINATION_MIN_STEP = 0.15
# Largest carbon step: 0.25 ⇔ 47 nm of carbon, beyond any holey-carbon support (10–20 nm, thick C-flat
# ≈ 40 nm); a darker seed is contamination (50–500 nm of ice: 0.15–1.4) whatever its outline.
CARBON_MAX_STEP = 0.25
# A dark area smaller than this many particle areas is not carbon or thick ice (particle clusters, noise).
MIN_AREA_PARTICLES = 4.0
# Picks closer than this many diameters overlap in projection; groups of ≥ 3 such picks are aggregates.
AGGREGATE_DISTANCE_DIAMETERS = 0.9
# A support edge is straight or gently curved: ≥ 60 % of its outline lies within 0.3 σ_c of one line or
# circle (particles, aggregates and the bright halo of contamination bend the rest locally).
_EDGE_FIT_TOLERANCE_SIGMAS = 0.3
_EDGE_FIT_KEPT_FRACTION = 0.6
_MAD_TO_SIGMA = 1.4826
_BIMODAL_RATIO = 4.0

REASON_OK = "ok"
REASON_CONTAMINATION = "contamination"
REASON_CARBON = "carbon"
REASON_THICK_ICE = "thick_ice"
REASON_AGGREGATE = "aggregate"
# In order of precedence after "ok": what a pick lies on says more than that its box leaves the image.
REASONS = (REASON_OK, REASON_CONTAMINATION, REASON_CARBON, REASON_THICK_ICE, REASON_AGGREGATE)


@dataclass(frozen=True, eq=False)
class RegionMasks:
    """Junk regions of one micrograph, bool [y, x] in its pixels.

    Attributes
    ----------
    carbon, contamination, thick_ice : ndarray (ny, nx) bool
        Support carbon (hole edge), contamination blobs, thick ice without a support edge.  Contamination
        on carbon is in both ``carbon`` and ``contamination``.
    carbon_fraction, contamination_fraction, thick_ice_fraction : float
        Fraction of the image in each mask.
    hole_level_counts : float
        Low-passed counts per pixel of the bright (hole) class, the reference I_hole of τ.
    carbon_step : float
        τ of the carbon relative to the hole, ln(I_hole/I_carbon); 0 when no carbon was found.
    """

    carbon: BoolArray
    contamination: BoolArray
    thick_ice: BoolArray
    carbon_fraction: float
    contamination_fraction: float
    thick_ice_fraction: float
    hole_level_counts: float
    carbon_step: float


def _binned(data: FloatArray, block: int) -> FloatArray:
    ny, nx = data.shape
    padded = np.pad(data, ((0, (-ny) % block), (0, (-nx) % block)), mode="edge")
    shape = (padded.shape[0] // block, block, padded.shape[1] // block, block)
    return np.asarray(padded.reshape(shape).mean(axis=(1, 3)), dtype=np.float64)


def _upsampled(binned: FloatArray, block: int, shape: tuple[int, int]) -> FloatArray:
    """Bilinear upsampling of a block-mean map to pixel resolution (block centres at (i + ½)·b − ½)."""
    coords = [(np.arange(n, dtype=np.float64) + 0.5) / block - 0.5 for n in shape]
    grid = np.meshgrid(*coords, indexing="ij")
    return np.asarray(ndimage.map_coordinates(binned, grid, order=1, mode="nearest"), dtype=np.float64)


def _expand(mask: BoolArray, block: int, shape: tuple[int, int]) -> BoolArray:
    return np.asarray(np.repeat(np.repeat(mask, block, axis=0), block, axis=1)[: shape[0], : shape[1]], dtype=bool)


def _otsu_threshold(values: FloatArray) -> float:
    """Threshold maximising the between-class variance of a 256-bin histogram (Otsu 1979, IEEE SMC-9:62)."""
    histogram, edges = np.histogram(values, bins=256)
    centres = 0.5 * (edges[1:] + edges[:-1])
    weight = np.cumsum(histogram).astype(np.float64)
    total = weight[-1]
    mean_cum = np.cumsum(histogram * centres)
    w0, w1 = weight[:-1], total - weight[:-1]
    valid = (w0 > 0) & (w1 > 0)
    between = np.zeros_like(w0)
    mu0 = mean_cum[:-1][valid] / w0[valid]
    mu1 = (mean_cum[-1] - mean_cum[:-1][valid]) / w1[valid]
    between[valid] = w0[valid] * w1[valid] * (mu0 - mu1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def _outline_points(component: BoolArray, ignore: BoolArray) -> FloatArray:
    """[y, x] of component pixels with a 4-neighbour outside it, off the image border and off ``ignore``."""
    inner = component & ~ndimage.binary_erosion(component, border_value=1) & ~ignore
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
    return np.argwhere(inner).astype(np.float64)


def _line_fit(points: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Total-least-squares line through ``points``: a point on it and its unit normal."""
    mean = points.mean(axis=0)
    centred = points - mean
    return mean, np.linalg.eigh(centred.T @ centred)[1][:, 0]


def _circle_fit(points: FloatArray) -> tuple[FloatArray, float]:
    """Algebraic circle fit (Kåsa 1976, IEEE Trans. Instrum. Meas. 25:8): centre and radius."""
    design = np.column_stack([points, np.ones(points.shape[0])])
    (d, e, f), *_ = np.linalg.lstsq(design, -(points**2).sum(axis=1), rcond=None)
    centre = np.array([-0.5 * d, -0.5 * e], dtype=np.float64)
    return centre, math.sqrt(max(float(centre @ centre - f), 0.0))


def _consensus(points: FloatArray, n_defining: int, tolerance: float) -> BoolArray:
    """Inliers of the best line (2 points) or circle (3 points) by random sample consensus.

    RANSAC (Fischler & Bolles 1981, Commun. ACM 24:381): 200 candidate shapes through random point sets
    (a fixed seed, so the result is deterministic), the one with most points within ``tolerance`` wins.
    """
    rng = np.random.default_rng(0)
    best = np.zeros(points.shape[0], dtype=bool)
    for _ in range(200):
        chosen = points[rng.choice(points.shape[0], n_defining, replace=False)]
        if n_defining == 2:
            direction = chosen[1] - chosen[0]
            length = float(np.hypot(*direction))
            if length == 0:
                continue
            normal = np.array([-direction[1], direction[0]]) / length
            distance = np.abs((points - chosen[0]) @ normal)
        else:
            (a, b, c) = chosen
            determinant = 2.0 * float((a[0] - c[0]) * (b[1] - c[1]) - (b[0] - c[0]) * (a[1] - c[1]))
            if abs(determinant) < 1e-9:
                continue
            sa, sb, sc = (float(v @ v) for v in (a, b, c))
            centre = np.array(
                [
                    ((sa - sc) * (b[1] - c[1]) - (sb - sc) * (a[1] - c[1])) / determinant,
                    ((a[0] - c[0]) * (sb - sc) - (b[0] - c[0]) * (sa - sc)) / determinant,
                ]
            )
            distance = np.abs(np.linalg.norm(points - centre, axis=1) - float(np.linalg.norm(a - centre)))
        inliers = distance <= tolerance
        if inliers.sum() > best.sum():
            best = inliers
    return best


def _spans_field(points: FloatArray, hidden: BoolArray) -> bool:
    """Whether a line through ``points`` is seen or hidden along at least half of its chord across the image.

    A support edge crosses the whole field, in view or under contamination (``hidden``); the straight
    parts of blobs cut by the border are short.
    """
    mean, normal = _line_fit(points)
    direction = np.array([-normal[1], normal[0]])
    along = (points - mean) @ direction
    low, high = -math.inf, math.inf
    for axis in range(2):
        if abs(direction[axis]) > 1e-12:
            limits = (-mean[axis] / direction[axis], (hidden.shape[axis] - 1 - mean[axis]) / direction[axis])
            low, high = max(low, min(limits)), min(high, max(limits))
    steps = np.arange(low, high + 1.0)
    if steps.size == 0:
        return False
    samples = np.rint(mean[None, :] + steps[:, None] * direction[None, :]).astype(np.int64)
    samples = np.clip(samples, 0, np.array(hidden.shape) - 1)
    seen = (steps >= along.min()) & (steps <= along.max())
    return bool(np.mean(seen | hidden[samples[:, 0], samples[:, 1]]) >= 0.5)


def _support_side(component: BoolArray, ignore: BoolArray, tolerance_px: float) -> BoolArray | None:
    """The side of a support edge that holds the component, or None when its outline is no support edge.

    A support edge is a line, or a circle with the component outside it.  The outline
    (``_outline_points``; the part along ``ignore``, i.e. contamination, left out) is fitted by a line
    and by a circle by consensus (``_consensus``): the shape must pass within ``tolerance_px`` of at least
    ``_EDGE_FIT_KEPT_FRACTION`` of the outline, so that particles, fringes and faint contamination along
    the edge do not spoil it, while the outline of an irregular area fits neither; a line must also span
    half the field (``_spans_field``).  The line wins unless
    the circle holds clearly more of the outline (5 % of it) or a circle of radius above twice the image
    diagonal, i.e. a line.  A circle must have ≥ 80 % of the component outside it (carbon surrounds the
    hole; a blob lies inside its outline).
    """
    points = _outline_points(component, ignore)
    if points.shape[0] < 8:
        return None
    line_inliers = _consensus(points, 2, tolerance_px)
    circle_inliers = _consensus(points, 3, tolerance_px)
    needed = _EDGE_FIT_KEPT_FRACTION * points.shape[0]
    members = np.argwhere(component).astype(np.float64)
    grid_y, grid_x = np.indices(component.shape, dtype=np.float64)
    centre, radius = _circle_fit(points[circle_inliers]) if circle_inliers.sum() >= 3 else (np.zeros(2), 0.0)
    diagonal = math.hypot(*component.shape)
    line_wins = line_inliers.sum() >= circle_inliers.sum() - 0.05 * points.shape[0] or radius > 2.0 * diagonal
    if line_inliers.sum() >= needed and line_wins and _spans_field(points[line_inliers], ignore):
        mean, normal = _line_fit(points[line_inliers])
        sign = 1.0 if float(np.mean((members - mean) @ normal)) >= 0 else -1.0
        side = sign * ((grid_y - mean[0]) * normal[0] + (grid_x - mean[1]) * normal[1]) > 0
        return np.asarray(side, dtype=bool)
    if circle_inliers.sum() < needed or not np.mean(np.linalg.norm(members - centre, axis=1) > radius) > 0.8:
        return None
    return np.asarray(np.hypot(grid_y - centre[0], grid_x - centre[1]) > radius, dtype=bool)


def _fill_small_holes(mask: BoolArray, max_area: float) -> BoolArray:
    """Fill the holes of a mask smaller than ``max_area`` pixels (a hole in the carbon stays a hole)."""
    holes, n_holes = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if n_holes == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    small = sizes < max_area
    small[0] = False
    return np.asarray(mask | small[holes], dtype=bool)


def _touches_border(component: BoolArray) -> bool:
    return bool(component[0, :].any() or component[-1, :].any() or component[:, 0].any() or component[:, -1].any())


def detect_regions(
    counts: npt.NDArray[np.floating],
    pixel_size_angstrom: float,
    particle_diameter_angstrom: float,
    carbon_min_step: float = CARBON_MIN_STEP,
    contamination_min_step: float = CONTAMINATION_MIN_STEP,
) -> RegionMasks:
    """Find support carbon, contamination and thick ice in a raw micrograph (module docstring).

    Parameters
    ----------
    counts : ndarray, shape (ny, nx)
        Raw micrograph (not CTF-corrected or denoised), counts per pixel, gain-normalised, > 0 on average.
    pixel_size_angstrom : float
        Å per pixel.
    particle_diameter_angstrom : float
        Particle diameter d, Å: sets the smoothing (σ_f = d/4, σ_c = d/2) and the smallest area
        (``MIN_AREA_PARTICLES`` particle areas).
    carbon_min_step : float
        Smallest τ between hole and carbon (default ``CARBON_MIN_STEP``).
    contamination_min_step : float
        τ of contamination seeds below the bright level (default ``CONTAMINATION_MIN_STEP``).

    Returns
    -------
    RegionMasks
    """
    data = np.asarray(counts, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"counts must be 2-D [y, x], got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("counts contain NaN or Inf")
    if not (
        pixel_size_angstrom > 0 and particle_diameter_angstrom > 0 and 0 < carbon_min_step < contamination_min_step
    ):
        raise ValueError("pixel size and diameter must be > 0 and 0 < carbon_min_step < contamination_min_step")
    shape = (int(data.shape[0]), int(data.shape[1]))
    diameter_px = particle_diameter_angstrom / pixel_size_angstrom
    sigma_fine_px = max(0.25 * diameter_px, 2.0)
    sigma_coarse_px = 2.0 * sigma_fine_px
    block = max(1, int(sigma_fine_px // 4))
    binned = _binned(data, block)
    if not float(np.median(binned)) > 0:
        raise ValueError("the micrograph has no counts: the thickness map is undefined")
    floor = 1e-3 * float(np.median(binned))
    log_fine = np.log(np.maximum(ndimage.gaussian_filter(binned, sigma_fine_px / block, mode="reflect"), floor))
    log_coarse = np.log(np.maximum(ndimage.gaussian_filter(binned, sigma_coarse_px / block, mode="reflect"), floor))
    min_area_bins = MIN_AREA_PARTICLES * math.pi * (0.5 * diameter_px / block) ** 2
    tolerance_bins = _EDGE_FIT_TOLERANCE_SIGMAS * sigma_coarse_px / block

    # 1. Very dark seeds; those bounded by a support edge are thick carbon, not contamination.
    bright = float(np.percentile(log_coarse, 90.0))
    labels, n_labels = ndimage.label(log_fine < bright - contamination_min_step)
    seeds = np.zeros(labels.shape, dtype=bool)
    nothing = np.zeros(labels.shape, dtype=bool)
    for index in range(1, n_labels + 1):
        component = labels == index
        carbon_like = (
            component.sum() >= min_area_bins
            and bright - float(np.median(log_fine[component])) <= CARBON_MAX_STEP
            and _touches_border(component)
            and _support_side(component, nothing, tolerance_bins) is not None
        )
        if not carbon_like:
            seeds |= component
    # The coarse map without the contamination: a normalised convolution (Knutsson & Westin 1993, Proc.
    # CVPR 515) with zero weight on the seeds grown by 2σ_f (their thin rims), so that blobs neither
    # darken their surroundings nor bend a nearby carbon edge; deep inside large blobs (weight < 0.1) it
    # is undefined.
    seed_zone = ndimage.binary_dilation(seeds, iterations=max(1, round(2.0 * sigma_fine_px / block)))
    weight = (~seed_zone).astype(np.float64)
    weight_sum = ndimage.gaussian_filter(weight, sigma_coarse_px / block, mode="reflect")
    weighted = ndimage.gaussian_filter(binned * weight, sigma_coarse_px / block, mode="reflect")
    log_coarse = np.log(np.maximum(weighted / np.maximum(weight_sum, 1e-6), floor))
    seed_zone |= weight_sum < 0.1
    # Within σ_c of the zone the map leans on one side only: there the carbon edge is not measured but
    # continued from its fit.
    shadow = ndimage.binary_dilation(seed_zone, iterations=max(1, round(sigma_coarse_px / block)))

    # 2. Carbon and thick ice: a two-class split of the coarse map without the contamination.
    carbon_bins = np.zeros(labels.shape, dtype=bool)
    thick_bins = np.zeros(labels.shape, dtype=bool)
    values = log_coarse[~seed_zone]
    hole_level = bright
    carbon_level = bright
    threshold = -math.inf
    midpoint = -math.inf
    if values.size > 16:
        threshold = _otsu_threshold(values)
        light, dark = values[values >= threshold], values[values < threshold]
        hole_level = float(np.median(light)) if light.size else bright
        if light.size and dark.size:
            dark_level = float(np.median(dark))
            deviations = np.concatenate([light - hole_level, dark - dark_level])
            spread = _MAD_TO_SIGMA * float(np.median(np.abs(deviations)))  # pooled robust within-class σ
            step = hole_level - dark_level
            if step >= carbon_min_step and step >= _BIMODAL_RATIO * spread:
                carbon_level = dark_level
                midpoint = 0.5 * (hole_level + dark_level)  # half-height of the blurred step: the edge
                dark_labels, n_dark = ndimage.label((log_coarse < threshold) & ~seed_zone)
                for index in range(1, n_dark + 1):
                    component = _fill_small_holes(dark_labels == index, min_area_bins)
                    if component.sum() < min_area_bins:
                        continue
                    side = _support_side(component, shadow, tolerance_bins) if _touches_border(component) else None
                    if side is None:
                        thick_bins |= component
                    else:
                        # Under and around contamination the carbon continues to the fitted edge.
                        carbon_bins |= component | (shadow & side)
    carbon_bins = _fill_small_holes(carbon_bins, min_area_bins)

    # 3. Contamination: near a seed, counts below half-way between the local level and the darkest counts
    # within σ_f: the half-height of the blurred outline, adapted to each blob's own thickness.  The
    # comparison is made on counts exp(−τ), in which the blur is linear.
    local_level = np.where(carbon_bins, carbon_level, hole_level)
    relative = np.exp(log_fine - local_level)
    reach = max(1, round(2.0 * sigma_fine_px / block))
    darkest = ndimage.minimum_filter(relative, size=2 * max(1, round(sigma_fine_px / block)) + 1)
    near = ndimage.binary_dilation(seeds, iterations=reach)
    # Pixel-level boundaries on the upsampled maps.
    fine_px = _upsampled(log_fine, block, shape)
    coarse_px = _upsampled(log_coarse, block, shape)
    relative_px = np.exp(fine_px - _upsampled(local_level, block, shape))
    darkest_px = _upsampled(darkest, block, shape)
    contamination = (
        _expand(near, block, shape)
        & (darkest_px < math.exp(-contamination_min_step))  # a seed-dark plateau within σ_f
        & (relative_px < 0.5 * (1.0 + darkest_px))
    )
    contamination = ndimage.binary_opening(contamination, iterations=2) if contamination.any() else contamination
    max_hole_px = min_area_bins * block**2
    # In the contamination's shadow the coarse map is one-sided: there the fitted edge decides.
    carbon = _refine(carbon_bins, (coarse_px < midpoint) | _expand(shadow, block, shape), block, shape, max_hole_px)
    thick_ice = _refine(thick_bins, coarse_px < midpoint, block, shape, max_hole_px)
    return RegionMasks(
        carbon=carbon,
        contamination=np.asarray(contamination, dtype=bool),
        thick_ice=thick_ice & ~carbon,
        carbon_fraction=float(carbon.mean()),
        contamination_fraction=float(np.mean(contamination)),
        thick_ice_fraction=float(np.mean(thick_ice & ~carbon)),
        hole_level_counts=float(math.exp(hole_level)),
        carbon_step=float(hole_level - carbon_level) if carbon.any() else 0.0,
    )


def _refine(
    mask_bins: BoolArray, below_px: BoolArray, block: int, shape: tuple[int, int], max_hole_px: float
) -> BoolArray:
    """A binned mask at pixel resolution: its interior, plus pixels of its one-bin rim below the threshold."""
    if not mask_bins.any():
        return np.zeros(shape, dtype=bool)
    core = _expand(ndimage.binary_erosion(mask_bins, border_value=1), block, shape)
    rim = _expand(ndimage.binary_dilation(mask_bins), block, shape) & ~core
    return _fill_small_holes(core | (rim & below_px), max_hole_px)


def classify_picks(
    coords_yx_px: npt.NDArray[np.floating],
    masks: RegionMasks,
    particle_diameter_angstrom: float,
    pixel_size_angstrom: float,
    aggregate_distance_diameters: float = AGGREGATE_DISTANCE_DIAMETERS,
) -> npt.NDArray[np.str_]:
    """One reason per pick, the first that applies in the order of ``REASONS`` after "ok".

    * "contamination", "carbon", "thick_ice": the pick's centre pixel lies in that mask (the simulator's
      truth uses the same rule);
    * "aggregate": the pick belongs to a group of ≥ 3 picks linked by distances below
      ``aggregate_distance_diameters`` × d — every such pick has ≥ 2 close neighbours or is next to one
      that has.  Two particles closer than one diameter overlap in projection: in ice one to two
      particles thick they touch, stacked or fused; 0.9 leaves 10 % for the picks' centring error;
    * "ok" otherwise.

    A particle near the border is a particle: whether its box fits is the extraction's question
    (``extraction.box_inside`` for the box size chosen there), not the picker's.

    Parameters
    ----------
    coords_yx_px : ndarray, shape (n, 2)
        Pick centres [y, x], pixels.
    masks : RegionMasks
        From ``detect_regions`` on the same micrograph.
    particle_diameter_angstrom, pixel_size_angstrom : float
        Particle diameter d (Å) and sampling (Å/pixel).
    aggregate_distance_diameters : float
        Link distance of aggregates in diameters.

    Returns
    -------
    ndarray of str, shape (n,)
        Reason codes from ``REASONS``.
    """
    coords = np.asarray(coords_yx_px, dtype=np.float64).reshape(-1, 2)
    if not (particle_diameter_angstrom > 0 and pixel_size_angstrom > 0 and aggregate_distance_diameters > 0):
        raise ValueError("particle_diameter_angstrom, pixel_size_angstrom and the aggregate distance must be > 0")
    n = coords.shape[0]
    reasons = np.full(n, REASON_OK, dtype="<U13")
    if n == 0:
        return reasons
    ny, nx = masks.carbon.shape
    diameter_px = particle_diameter_angstrom / pixel_size_angstrom
    iy, ix = np.rint(coords[:, 0]).astype(np.int64), np.rint(coords[:, 1]).astype(np.int64)
    cy, cx = np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)
    tree = spatial.cKDTree(coords)
    pairs = tree.query_pairs(aggregate_distance_diameters * diameter_px, output_type="ndarray")
    in_group = np.zeros(n, dtype=bool)
    if pairs.size:
        adjacency = coo_matrix((np.ones(pairs.shape[0]), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, labels = connected_components(adjacency, directed=False)
        sizes = np.bincount(labels)
        in_group = sizes[labels] >= 3
    ordered = (
        (REASON_CONTAMINATION, masks.contamination[cy, cx]),
        (REASON_CARBON, masks.carbon[cy, cx]),
        (REASON_THICK_ICE, masks.thick_ice[cy, cx]),
        (REASON_AGGREGATE, in_group),
    )
    for reason, flagged in reversed(ordered):
        reasons[flagged] = reason
    return reasons
