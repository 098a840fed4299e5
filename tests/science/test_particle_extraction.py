"""Particle extraction (RELION normalisation, box grid) and the particle STAR files, on known images."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.io.particles import (
    PARTICLE_COLUMNS,
    ParticleFileError,
    ParticleRow,
    PickedCoordinates,
    autopick_star_name,
    read_autopick_star,
    read_particles_star,
    write_autopick_star,
    write_particles_star,
)
from cryodecon_science.optics import CtfParams
from cryodecon_science.picking import box_inside, extract_particles
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

BOX_PX = 48


def disc_image(centres_yx: list[tuple[float, float]], shape: tuple[int, int] = (128, 160)) -> np.ndarray:
    """Counts on a tilted plane (a ramp RELION removes) with dark Gaussian particles of σ = 4 px."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    image = 100.0 + 0.2 * xx - 0.1 * yy
    for cy, cx in centres_yx:
        image -= 30.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    return image


def test_a_dark_particle_comes_out_white_on_a_flat_normalised_background() -> None:
    centres = [(40.0, 50.0), (80.3, 100.7)]
    boxes = extract_particles(disc_image(centres), np.asarray(centres), BOX_PX)
    assert boxes.shape == (2, BOX_PX, BOX_PX) and boxes.dtype == np.float32
    yy, xx = np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2
    background = yy**2 + xx**2 > (0.75 * BOX_PX / 2) ** 2
    for box, (cy, cx) in zip(boxes, centres, strict=True):
        peak = np.unravel_index(np.argmax(box), box.shape)
        # The maximum sits where the particle's centre falls in the box: index B/2 + (centre − round(centre)).
        assert peak == (BOX_PX // 2 + round(cy - round(cy)), BOX_PX // 2 + round(cx - round(cx)))
        assert float(box[background].mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(box[background].std()) == pytest.approx(1.0, rel=1e-5)
        # The ramp is gone: the background correlates with neither axis.
        for axis in (xx, yy):
            assert abs(float(np.corrcoef(box[background], axis[background])[0, 1])) < 0.05


def test_without_inversion_the_particle_stays_dark() -> None:
    boxes = extract_particles(disc_image([(60.0, 60.0)]), np.array([[60.0, 60.0]]), BOX_PX, invert_contrast=False)
    assert np.unravel_index(np.argmin(boxes[0]), boxes[0].shape) == (BOX_PX // 2, BOX_PX // 2)


def test_a_box_that_leaves_the_micrograph_is_refused_and_box_inside_says_so() -> None:
    coords = np.array([[10.0, 80.0], [64.0, 80.0], [64.0, 140.0]])
    assert box_inside(coords, BOX_PX, (128, 160)).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="particle 0"):
        extract_particles(disc_image([]), coords, BOX_PX)


def test_autopick_file_round_trip_keeps_x_as_column_and_y_as_row(tmp_path: Path) -> None:
    picks = PickedCoordinates(np.array([[10.0, 20.5], [30.25, 40.0]]), np.array([0.9, 0.5]))
    path = tmp_path / autopick_star_name("/data/mic_0001.mrc")
    assert path.name == "mic_0001_autopick.star"
    write_autopick_star(path, picks.coords_yx_px, picks.figure_of_merit)
    table = starfile.read(path)
    assert list(table["rlnCoordinateX"]) == [20.5, 40.0] and list(table["rlnCoordinateY"]) == [10.0, 30.25]
    back = read_autopick_star(path, shape_yx_px=(64, 64))
    np.testing.assert_array_equal(back.coords_yx_px, picks.coords_yx_px)
    np.testing.assert_array_equal(back.figure_of_merit, picks.figure_of_merit)
    assert path.read_text().count("# version 30001") == 1


def test_bad_coordinate_files_name_the_file_and_the_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing_autopick.star"
    missing.write_text("data_\n\nloop_\n_rlnCoordinateX #1\n1.0\n2.0\n")
    with pytest.raises(ParticleFileError, match=r"missing_autopick.star.*lacks the columns \['rlnCoordinateY'\]"):
        read_autopick_star(missing)
    bad_value = tmp_path / "bad_autopick.star"
    bad_value.write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1.0 2.0\nnan 3.0\n")
    with pytest.raises(ParticleFileError, match=r"bad_autopick\.star: line 7"):
        read_autopick_star(bad_value)
    outside = tmp_path / "out_autopick.star"
    outside.write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1.0 2.0\n3.0 70.0\n")
    with pytest.raises(ParticleFileError, match=r"line 7: .* outside the \(64, 64\) micrograph"):
        read_autopick_star(outside, shape_yx_px=(64, 64))
    with pytest.raises(ParticleFileError, match="no such file"):
        read_autopick_star(tmp_path / "absent.star")


def test_simulated_particles_round_trip_through_stack_and_particles_star(tmp_path: Path) -> None:
    """Boxes cut at the simulator's true centres, written as RELION files, read back: the particle's
    centre of mass lands on the box centre, and every coordinate and defocus comes back."""
    config = SimulationConfig(
        shape_px=(384, 384), particle_diameter_angstrom=60.0, particles_per_micrograph=20, target_snr=5.0
    )
    simulated = simulate_micrograph(config, "rt", seed=4)
    truth = simulated.truth
    box = 64
    coords = truth.particle_positions_px[box_inside(truth.particle_positions_px, box, config.shape_px)]
    assert len(coords) >= 8
    boxes = extract_particles(simulated.counts, coords, box)
    # Particles are white after inversion: the mean box's bright mass is centred on index B/2.
    mean = boxes.mean(axis=0).astype(np.float64)
    weight = np.clip(mean - np.median(mean), 0.0, None)
    yy, xx = np.mgrid[0:box, 0:box]
    centroid = np.array([(weight * yy).sum(), (weight * xx).sum()]) / weight.sum()
    assert np.abs(centroid - box // 2).max() < 0.6  # one pixel off the grid convention gives 1.0–1.2
    stack = tmp_path / "rt.mrcs"
    write_mrc(stack, boxes, config.pixel_size_angstrom)
    ctf = truth.ctf
    rows = [
        ParticleRow(str(stack), i + 1, "rt.mrc", (float(y), float(x)), ctf, config.microscope, 5.5, 0.8)
        for i, (y, x) in enumerate(coords)
    ]
    write_particles_star(tmp_path / "particles.star", rows, box)
    optics, particles = read_particles_star(tmp_path / "particles.star")
    assert set(PARTICLE_COLUMNS) <= set(particles.columns)
    assert list(optics["rlnImageSize"]) == [box] and list(optics["rlnImageDimensionality"]) == [2]
    assert float(optics["rlnImagePixelSize"][0]) == config.pixel_size_angstrom
    np.testing.assert_allclose(particles[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy(), coords, atol=1e-6)
    np.testing.assert_allclose(particles["rlnDefocusU"], ctf.defocus_u_angstrom, rtol=1e-6)
    assert particles["rlnImageName"][0] == f"000001@{stack}"
    with mrcfile.open(stack) as mrc:
        assert mrc.data.shape == (len(coords), box, box) and float(mrc.voxel_size.x) == config.pixel_size_angstrom


def test_particles_star_refuses_partial_classes_and_undefined_optics(tmp_path: Path) -> None:
    ctf = CtfParams(15000.0, 14000.0, 30.0)
    microscope = SimulationConfig().microscope
    row = ParticleRow("s.mrcs", 1, "m.mrc", (10.0, 12.0), ctf, microscope, 6.0, 0.5)
    with pytest.raises(ValueError, match="every particle or for none"):
        write_particles_star(tmp_path / "p.star", [row, ParticleRow(**{**row.__dict__, "class_number": 2})], 32)
    write_particles_star(tmp_path / "p.star", [row], 32)
    text = (tmp_path / "p.star").read_text().replace("\t1\n", "\t7\n")
    (tmp_path / "bad.star").write_text(text)
    with pytest.raises(ParticleFileError, match="optics group 7 undefined"):
        read_particles_star(tmp_path / "bad.star")
