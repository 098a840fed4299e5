"""Projections of 3D maps match the simulator's projections; reading cubic MRC maps (``read_volume``)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryodecon_science.io.mrc import CorruptHeaderError, InvalidPixelDataError, read_volume, write_mrc
from cryodecon_science.projection import project_volume, random_euler_angles_deg, resample_volume, soft_spherical_mask
from cryodecon_science.simulate import (
    make_structures,
    project_structure,
    render_structure_volume,
)

torch.set_num_threads(1)

PIXEL_ANGSTROM = 3.0
BOX_PX = 64  # 192 Å: the 150 Å structures fit with room to rotate


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("structure_id", [0, 2, 4])
def test_projection_of_a_rendered_map_matches_the_simulator(structure_id: int) -> None:
    structure = make_structures(5, 150.0, 0)[structure_id]
    volume = render_structure_volume(structure, BOX_PX, PIXEL_ANGSTROM)
    angles = np.concatenate(
        [
            [[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [0.0, 90.0, 0.0], [30.0, 60.0, 120.0]],
            random_euler_angles_deg(np.random.default_rng(structure_id), 4),
        ]
    )
    projections = project_volume(volume, angles) * PIXEL_ANGSTROM  # density · voxels → V·Å
    assert projections.shape == (len(angles), BOX_PX, BOX_PX) and projections.dtype == np.float32
    for angle, image in zip(angles, projections, strict=True):
        expected = project_structure(structure, angle, BOX_PX, PIXEL_ANGSTROM)
        # Measured 0.9988–0.9995: trilinear sampling smooths a little (atoms are 0.8–1.7 px wide).
        assert _correlation(image, expected) > 0.995, angle
        # Same projected mass (within the sampling error), so the units agree too.
        assert float(image.sum()) == pytest.approx(float(expected.sum()), rel=0.02)


def test_identity_orientation_is_the_sum_along_z() -> None:
    volume = np.random.default_rng(1).random((12, 12, 12))
    projection = project_volume(volume, (0.0, 0.0, 0.0))
    assert projection.shape == (1, 12, 12)
    np.testing.assert_allclose(projection[0], volume.sum(axis=0), rtol=1e-5, atol=1e-5)
    # A full turn is the identity as well.
    np.testing.assert_allclose(project_volume(volume, [[360.0, 0.0, 0.0]])[0], volume.sum(axis=0), atol=1e-4)


def test_rotation_about_z_rotates_the_image() -> None:
    volume = np.random.default_rng(2).random((17, 17, 17))  # odd: rot90 is exact about voxel n//2
    flat = project_volume(volume, (0.0, 0.0, 0.0))[0]
    # RELION's A = R_z(90°) moves [x, y] to [y, −x]: the image turns by +90° (np.rot90, counter-clockwise
    # in [y, x] index order).  With tilt 0 a rot or a psi of 90° both do it.
    for angles in ((90.0, 0.0, 0.0), (0.0, 0.0, 90.0)):
        np.testing.assert_allclose(project_volume(volume, angles)[0], np.rot90(flat, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(project_volume(volume, (180.0, 0.0, 0.0))[0], np.rot90(flat, 2), atol=1e-4)


def test_tilt_of_90_degrees_projects_along_x() -> None:
    volume = np.random.default_rng(3).random((15, 15, 15))
    # R_y(90°): [x, y, z] → [−z, y, x]; the image at (x', y') sums V over x with z = −x'.
    projection = project_volume(volume, (0.0, 90.0, 0.0))[0]
    np.testing.assert_allclose(projection, volume.sum(axis=2).T[:, ::-1], rtol=1e-4, atol=1e-4)


def test_bad_input_is_rejected() -> None:
    good = np.zeros((8, 8, 8))
    with pytest.raises(ValueError, match="cubic"):
        project_volume(np.zeros((8, 8, 9)), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="cubic"):
        project_volume(np.zeros((8, 8)), (0.0, 0.0, 0.0))
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        project_volume(nan, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        project_volume(good, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        project_volume(good, (0.0, np.inf, 0.0))
    assert project_volume(good, np.zeros((0, 3))).shape == (0, 8, 8)
    with pytest.raises(ValueError):
        resample_volume(good, 0.0, 1.0)
    with pytest.raises(ValueError):
        render_structure_volume(make_structures(1, 150.0, 0)[0], 1, 1.0)


def test_resampling_keeps_extent_and_centre() -> None:
    structure = make_structures(3, 150.0, 0)[2]
    fine = render_structure_volume(structure, 128, 1.5)
    coarse = resample_volume(fine, 1.5, 3.0)
    direct = render_structure_volume(structure, 64, 3.0)
    assert coarse.shape == (64, 64, 64) and coarse.dtype == np.float32
    assert _correlation(coarse, direct) > 0.995  # measured 0.9994
    # Densities are kept, so the integral scales with the voxel volume.
    assert float(coarse.sum()) * 8.0 == pytest.approx(float(fine.sum()), rel=0.01)
    finer = resample_volume(direct, 3.0, 2.0)
    assert finer.shape == (96, 96, 96)
    assert _correlation(finer, render_structure_volume(structure, 96, 2.0)) > 0.99
    np.testing.assert_array_equal(resample_volume(direct, 3.0, 3.0), direct.astype(np.float32))


def test_soft_spherical_mask_removes_the_background() -> None:
    volume = np.full((20, 20, 20), 5.0)
    volume[10, 10, 10] = 6.0
    masked = soft_spherical_mask(volume, radius_px=5.0, edge_px=2.0)
    assert masked[10, 10, 10] == pytest.approx(1.0)
    assert masked[0, 0, 0] == 0.0 and np.abs(masked).max() == pytest.approx(1.0)
    # A round blob on a solvent level: masked, its projection no longer shows the outline of the turned
    # cube, so it is the same in every orientation.
    offsets = np.arange(21) - 10
    r2 = offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    blob = 3.0 + np.exp(-r2 / 8.0)
    orientations = [[0.0, 0.0, 0.0], [20.0, 37.0, 0.0]]
    raw = project_volume(blob, orientations)
    a, b = project_volume(soft_spherical_mask(blob, 8.0, 2.0), orientations)
    # Measured: 62.9 unmasked (the cube's corners) against 0.17 masked (trilinear sampling of a σ = 2 px
    # blob, 3.5 % of its peak of 5.0).
    assert np.abs(raw[0] - raw[1]).max() > 100.0 * np.abs(a - b).max()
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


# --- read_volume ----------------------------------------------------------------------------------------


def test_read_volume_round_trip(tmp_path: Path) -> None:
    data = np.random.default_rng(4).normal(size=(10, 10, 10)).astype(np.float32)
    write_mrc(tmp_path / "map.mrc", data, 1.25)
    volume = read_volume(tmp_path / "map.mrc")
    np.testing.assert_array_equal(volume.data_density, data)
    assert volume.data_density.dtype == np.float32
    assert volume.voxel_size_angstrom == pytest.approx(1.25)
    assert read_volume(tmp_path / "map.mrc", voxel_size_angstrom=2.0).voxel_size_angstrom == 2.0
    with pytest.raises(ValueError):
        read_volume(tmp_path / "map.mrc", voxel_size_angstrom=-1.0)


def test_read_volume_reorders_permuted_axes(tmp_path: Path) -> None:
    data = np.random.default_rng(5).normal(size=(6, 6, 6)).astype(np.float32)
    path = tmp_path / "permuted.mrc"
    with mrcfile.new(path) as mrc:
        # Sections along x, rows along y, columns along z: the stored array is [x, y, z].
        mrc.set_data(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
        mrc.voxel_size = 1.0
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
    np.testing.assert_array_equal(read_volume(path).data_density, data)


def test_read_volume_typed_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    write_mrc(tmp_path / "image.mrc", rng.normal(size=(8, 8)).astype(np.float32), 1.0)
    with pytest.raises(CorruptHeaderError, match="2D"):
        read_volume(tmp_path / "image.mrc")
    write_mrc(tmp_path / "slab.mrc", rng.normal(size=(4, 8, 8)).astype(np.float32), 1.0)
    with pytest.raises(CorruptHeaderError, match="cubic"):
        read_volume(tmp_path / "slab.mrc")
    bad = rng.normal(size=(8, 8, 8)).astype(np.float32)
    bad[3, 3, 3] = np.nan
    write_mrc(tmp_path / "nan.mrc", bad, 1.0)
    with pytest.raises(InvalidPixelDataError):
        read_volume(tmp_path / "nan.mrc")
    write_mrc(tmp_path / "no_size.mrc", rng.normal(size=(8, 8, 8)).astype(np.float32), 0.0)
    with pytest.raises(CorruptHeaderError, match="voxel size"):
        read_volume(tmp_path / "no_size.mrc")
    assert read_volume(tmp_path / "no_size.mrc", voxel_size_angstrom=1.5).voxel_size_angstrom == 1.5
