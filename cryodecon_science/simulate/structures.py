"""Synthetic structures (Gaussian pseudo-atom clouds), their orientations and exact pixel-integrated projections."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.special

from cryodecon_science.projection import rotation_matrix_from_euler_deg

FloatArray = npt.NDArray[np.float64]

# Potential of protein relative to the surrounding vitreous ice, V.  Protein (≈1.35 g/cm³) scatters more
# than ice (≈0.93 g/cm³); the mean-inner-potential difference is a few volts.  A model choice: with
# ``target_snr`` the contrast is rescaled anyway.
PROTEIN_CONTRAST_POTENTIAL_VOLT = 2.0


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


def _elongate(structure: Structure3D, aspect_ratio: float) -> Structure3D:
    """Compress a structure across its longest principal axis by ``aspect_ratio`` (a rod).

    The potential-weighted principal axis u of the atom centres stays; r → (r·u)·s·u + (r − (r·u)u)/a,
    with s chosen so that the farthest atom is again at the old bounding radius, so the rod is as long as
    the particle diameter and a times thinner.  Each atom's potential scales with the volume, s/a².
    """
    positions = structure.atom_positions_angstrom
    weights = structure.atom_potential_volt_angstrom3
    covariance = (positions * weights[:, None]).T @ positions / weights.sum()
    axis = np.linalg.eigh(covariance)[1][:, -1]
    along = positions @ axis
    across = positions - along[:, None] * axis[None, :]
    extent = float(np.max(np.linalg.norm(positions, axis=1)))
    squeezed = across / aspect_ratio
    # Stretch along u until the farthest atom is back at ``extent``: solve max_i |s·along_i u + squeezed_i| = extent.
    low, high = 0.0, extent / max(float(np.max(np.abs(along))), 1e-12)
    for _ in range(60):
        middle = 0.5 * (low + high)
        reach = float(np.max(np.hypot(middle * along, np.linalg.norm(squeezed, axis=1))))
        low, high = (middle, high) if reach < extent else (low, middle)
    stretch = low
    new_positions = stretch * along[:, None] * axis[None, :] + squeezed
    new_positions = new_positions - (weights[:, None] * new_positions).sum(axis=0) / weights.sum()
    return Structure3D(
        structure_id=structure.structure_id,
        atom_positions_angstrom=np.ascontiguousarray(new_positions, dtype=np.float64),
        atom_sigma_angstrom=structure.atom_sigma_angstrom,
        atom_potential_volt_angstrom3=np.asarray(weights * stretch / aspect_ratio**2, dtype=np.float64),
        n_lobes=structure.n_lobes,
        diameter_angstrom=structure.diameter_angstrom,
    )


def make_structures(
    n_structures: int, diameter_angstrom: float, seed: int, aspect_ratio: float = 1.0
) -> tuple[Structure3D, ...]:
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
    aspect_ratio : float
        >= 1.  Above 1 each structure is compressed across its longest principal axis into a rod of
        length ≈ ``diameter_angstrom`` and width diameter/aspect_ratio (``SimulationConfig.
        structure_aspect_ratio``); 1 returns the round structures unchanged.
    """
    if n_structures < 0 or seed < 0 or not diameter_angstrom > 0 or not 1.0 <= aspect_ratio < math.inf:
        raise ValueError("n_structures >= 0, seed >= 0, diameter_angstrom > 0 and aspect_ratio >= 1 required")
    structures = tuple(_make_structure(k, diameter_angstrom, seed) for k in range(n_structures))
    if aspect_ratio == 1.0:
        return structures
    return tuple(_elongate(structure, aspect_ratio) for structure in structures)


def _pixel_fractions(centre_px: FloatArray, sigma_px: FloatArray, start: int, n_px: int) -> FloatArray:
    """Fraction of each 1D Gaussian's mass inside pixels start … start+n_px−1 (pixel i spans i ± ½)."""
    edges = np.arange(start, start + n_px + 1, dtype=np.float64) - 0.5
    z = (edges[None, :] - centre_px[:, None]) / (sigma_px[:, None] * math.sqrt(2.0))
    cdf = 0.5 * np.asarray(scipy.special.erf(z), dtype=np.float64)
    return np.asarray(np.diff(cdf, axis=1), dtype=np.float64)


def render_projection(
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
    return render_projection(
        structure, _as_rotation(orientation), (centre, centre), pixel_size_angstrom, (0, 0), (box_px, box_px)
    )


def render_structure_volume(structure: Structure3D, box_px: int, pixel_size_angstrom: float) -> FloatArray:
    """Voxel-averaged potential (V) of a ``Structure3D`` on an (n, n, n) grid [z, y, x].

    Each Gaussian pseudo-atom is integrated exactly over the cubic voxels (separable erf differences),
    the same way ``project_structure`` integrates it over square pixels, with the centre of mass at voxel
    (n//2, n//2, n//2).  Hence Σ_z volume · pixel_size equals ``project_structure(structure, (0, 0, 0),
    n, pixel_size)`` for atoms inside the box.

    Parameters
    ----------
    structure : Structure3D
    box_px : int
        Edge n of the cube, voxels (≥ 2).
    pixel_size_angstrom : float
        Voxel edge, Å.

    Returns
    -------
    ndarray of float64, shape (n, n, n)
    """
    if box_px < 2 or not pixel_size_angstrom > 0:
        raise ValueError("box_px >= 2 and pixel_size_angstrom > 0 required")
    centre = float(box_px // 2)
    positions_px = structure.atom_positions_angstrom / pixel_size_angstrom + centre  # [x, y, z]
    sigma_px = structure.atom_sigma_angstrom / pixel_size_angstrom
    fx = _pixel_fractions(positions_px[:, 0], sigma_px, 0, box_px)
    fy = _pixel_fractions(positions_px[:, 1], sigma_px, 0, box_px)
    fz = _pixel_fractions(positions_px[:, 2], sigma_px, 0, box_px) * structure.atom_potential_volt_angstrom3[:, None]
    volume = np.einsum("az,ay,ax->zyx", fz, fy, fx, optimize=True)
    return np.asarray(volume / pixel_size_angstrom**3, dtype=np.float64)
