"""Projections of 3D density maps, for seeding the structure library from reference maps.

Convention.  Orientations are RELION/Xmipp ZYZ Euler angles (rot, tilt, psi) in degrees, with exactly
the rotation matrix of ``rotation_matrix_from_euler_deg`` (Heymann, Chagoyen & Belnap 2005,
"Common conventions for interchange and archiving of three-dimensional electron microscopy
information in structural biology", J. Struct. Biol. 151:196–207): the density at r = [x, y, z] moves to
A·r, and the projection is the integral of the rotated density along z, the beam,

    P(x', y') = ∫ V(Aᵀ [x', y', z']) dz'.

This is what the simulator's ``project_structure`` renders for a pseudo-atom structure, so a map
rendered from one (``simulate.render_structure_volume``) projects to the same image, up to sampling.

Grid.  A volume is indexed [z, y, x] with voxel centres at integer indices and the origin of rotation at
voxel (n//2, n//2, n//2) — the FFT-centre convention of RELION, the same centre ``project_structure``
uses for its box.  Projections are n × n images [y, x] with the same centre.

Method.  Real-space ray sum: each output voxel r' of the rotated cube samples the map at Aᵀ r' by
trilinear interpolation (``torch.nn.functional.grid_sample``), and the samples are summed along z' in
steps of one voxel; points outside the map read zero.  It is the discrete form of the line integral
above (the projection-slice theorem's Fourier route, a central slice of the 3D transform, is the faster
alternative for many projections of large maps, but needs oversampling and gridding correction to
match this accuracy).  Trilinear interpolation slightly smooths (a mild attenuation near Nyquist), which
is irrelevant for references low-passed to a few pixels.  Work is done in float32, in chunks of at most
``_CHUNK_SAMPLES`` sample points, so memory stays bounded for any map size.

Units.  ``project_volume`` returns sums over voxels (density × voxels); multiply by the voxel size in Å
for the line integral (e.g. V → V·Å, the units of ``project_structure``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as functional

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

# Sample points per grid_sample call (≈ 4M points: 48 MB of grid and 16 MB of samples in float32).
_CHUNK_SAMPLES = 1 << 22


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


def random_euler_angles_deg(rng: np.random.Generator, n: int) -> FloatArray:
    """n orientations uniform on SO(3) as RELION (rot, tilt, psi) in degrees.

    rot and psi uniform in [0, 360), cos(tilt) uniform in [−1, 1] (the Haar measure in ZYZ angles).
    """
    rot = rng.uniform(0.0, 360.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(0.0, 360.0, n)
    return np.ascontiguousarray(np.stack([rot, tilt, psi], axis=1), dtype=np.float64)


def _checked_volume(volume: npt.ArrayLike) -> npt.NDArray[np.floating]:
    data = np.asarray(volume)
    if data.ndim != 3 or not data.shape[0] == data.shape[1] == data.shape[2]:
        raise ValueError(f"volume must be a cubic (n, n, n) array, got shape {data.shape}")
    if data.shape[0] < 2:
        raise ValueError(f"volume must be at least 2 voxels wide, got {data.shape}")
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"volume must be numeric, got dtype {data.dtype}")
    if not np.all(np.isfinite(data)):
        raise ValueError("volume contains NaN or Inf")
    return data


def project_volume(
    volume: npt.ArrayLike, euler_angles_deg: npt.ArrayLike, device: torch.device | str = "cpu"
) -> Float32Array:
    """Projections of a cubic map along the beam after rotating it by each ZYZ Euler triple.

    P_i(x', y') = Σ_z' V(A_iᵀ [x', y', z']) (one-voxel steps, trilinear sampling; module docstring), with
    A_i = ``rotation_matrix_from_euler_deg(rot_i, tilt_i, psi_i)``.  For the identity (0, 0, 0) this is
    the sum of the map along z.

    Parameters
    ----------
    volume : array, shape (n, n, n)
        Density indexed [z, y, x], origin at voxel (n//2, n//2, n//2); finite values, n ≥ 2.
    euler_angles_deg : array, shape (m, 3) or (3,)
        (rot, tilt, psi) in degrees, RELION convention; a single triple gives m = 1.
    device : torch.device or str
        Where to compute.

    Returns
    -------
    ndarray of float32, shape (m, n, n)
        Projections indexed [orientation, y, x], centre at (n//2, n//2), in density × voxels.

    Raises
    ------
    ValueError
        For a non-cubic or non-finite volume, or angles that are not finite (m, 3).
    """
    data = _checked_volume(volume)
    angles = np.asarray(euler_angles_deg, dtype=np.float64)
    if angles.ndim == 1:
        angles = angles[None, :]
    if angles.ndim != 2 or angles.shape[1] != 3:
        raise ValueError(f"euler_angles_deg must have shape (m, 3), got {np.asarray(euler_angles_deg).shape}")
    if not np.all(np.isfinite(angles)):
        raise ValueError("euler_angles_deg contains NaN or Inf")
    n = data.shape[0]
    m = angles.shape[0]
    if m == 0:
        return np.zeros((0, n, n), dtype=np.float32)
    torch_device = torch.device(device)
    source = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32), device=torch_device)[None, None]
    # Rows of the stacked matrices: p (row vector, xyz) ↦ p · A = (Aᵀ p)ᵀ, the source point of p.
    rotations = torch.as_tensor(
        np.stack([rotation_matrix_from_euler_deg(*map(float, a)) for a in angles]),
        dtype=torch.float32,
        device=torch_device,
    )
    offsets = torch.arange(n, dtype=torch.float32, device=torch_device) - float(n // 2)
    scale = 2.0 / (n - 1)  # align_corners=True: index 0 → −1, index n−1 → +1
    centre_normalised = scale * (n // 2) - 1.0
    slab = max(1, min(n, _CHUNK_SAMPLES // (n * n)))  # z' planes per chunk
    zz, yy, xx = torch.meshgrid(offsets[:slab], offsets, offsets, indexing="ij")
    out = torch.zeros((m, n, n), dtype=torch.float32, device=torch_device)
    for i in range(m):
        for z_start in range(0, n, slab):
            planes = min(slab, n - z_start)
            z_shift = float(z_start)
            points = torch.stack(
                (xx[:planes], yy[:planes], zz[:planes] + z_shift), dim=-1
            )  # (planes, n, n, 3) offsets [x', y', z'] from the centre
            src = points @ rotations[i]  # (planes, n, n, 3) = Aᵀ r', [x, y, z]
            grid = src * scale + centre_normalised  # grid_sample wants (x, y, z) = (W, H, D) normalised
            sampled = functional.grid_sample(
                source, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True
            )  # (1, 1, planes, n, n); "bilinear" on a 5-D input is trilinear
            out[i] += sampled[0, 0].sum(dim=0)
    return np.asarray(out.cpu().numpy(), dtype=np.float32)


def resample_volume(
    volume: npt.ArrayLike, voxel_size_angstrom: float, target_pixel_size_angstrom: float
) -> Float32Array:
    """Resample a cubic map to another voxel size, keeping its physical extent and centre.

    The output edge is n' = round(n · voxel / target) (at least 2) with voxels of exactly
    ``target_pixel_size_angstrom``; output voxel i' (offset (i' − n'//2) · target Å from the centre)
    reads the input at index n//2 + (i' − n'//2) · target / voxel, by trilinear interpolation.  When
    coarsening (target > voxel) the map is first low-passed in Fourier space to the new Nyquist frequency
    1 / (2 · target) (a raised-cosine edge over the last 10 % below it), so nothing aliases; refining
    needs no filter.  Density values are preserved (not their sum: multiply by (target / voxel)³ to keep
    the integral).

    Parameters
    ----------
    volume : array, shape (n, n, n)
        Density [z, y, x], origin at voxel n//2.
    voxel_size_angstrom : float
        Input voxel edge, Å.
    target_pixel_size_angstrom : float
        Output voxel edge, Å.

    Returns
    -------
    ndarray of float32, shape (n', n', n')
    """
    data = _checked_volume(volume).astype(np.float64)
    for name, value in (("voxel_size_angstrom", voxel_size_angstrom), ("target", target_pixel_size_angstrom)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")
    n = data.shape[0]
    ratio = target_pixel_size_angstrom / voxel_size_angstrom  # input voxels per output voxel
    if math.isclose(ratio, 1.0, rel_tol=1e-9):
        return np.asarray(data, dtype=np.float32)
    n_out = max(2, round(n / ratio))
    if ratio > 1.0:
        k = np.fft.fftfreq(n)  # cycles per input voxel
        kr = np.fft.rfftfreq(n)
        radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2)
        cutoff = 0.5 / ratio
        t = np.clip((radius - 0.9 * cutoff) / (0.1 * cutoff), 0.0, 1.0)
        transfer = 0.5 * (1.0 + np.cos(np.pi * t))
        data = np.fft.irfftn(np.fft.rfftn(data) * transfer, s=data.shape, axes=(0, 1, 2))
    offsets = (np.arange(n_out, dtype=np.float64) - n_out // 2) * ratio + n // 2  # input indices
    coords = 2.0 * offsets / (n - 1) - 1.0
    zz, yy, xx = np.meshgrid(coords, coords, coords, indexing="ij")
    grid = torch.as_tensor(np.stack((xx, yy, zz), axis=-1)[None], dtype=torch.float32)
    source = torch.as_tensor(data, dtype=torch.float32)[None, None]
    sampled = functional.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return np.asarray(sampled[0, 0].numpy(), dtype=np.float32)


def soft_spherical_mask(volume: npt.ArrayLike, radius_px: float, edge_px: float = 3.0) -> Float32Array:
    """Subtract the background outside a sphere and taper the map to zero with a raised-cosine edge.

    The background is the mean of the voxels beyond ``radius_px + edge_px`` from the centre voxel
    (n//2, n//2, n//2) (0 if there are none); the result is (V − background) · w(r) with w = 1 inside
    ``radius_px`` and falling as a raised cosine to 0 at ``radius_px + edge_px``.  Without it a map's
    solvent offset and the cube's corners, which turn with the map, leave the outline of a rotated cube
    in every projection.

    Parameters
    ----------
    volume : array, shape (n, n, n)
    radius_px : float
        Radius of the unmasked sphere, voxels (> 0).
    edge_px : float
        Width of the soft edge, voxels (≥ 0).

    Returns
    -------
    ndarray of float32, shape (n, n, n)
    """
    data = _checked_volume(volume).astype(np.float64)
    if not radius_px > 0 or not edge_px >= 0:
        raise ValueError(f"radius_px > 0 and edge_px >= 0 required, got {radius_px}, {edge_px}")
    n = data.shape[0]
    offsets = np.arange(n, dtype=np.float64) - n // 2
    radius = np.sqrt(offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2)
    outside = radius > radius_px + edge_px
    background = float(data[outside].mean()) if np.any(outside) else 0.0
    t = np.clip((radius - radius_px) / edge_px, 0.0, 1.0) if edge_px > 0 else (radius > radius_px).astype(float)
    weight = 0.5 * (1.0 + np.cos(np.pi * t))
    return np.asarray((data - background) * weight, dtype=np.float32)
