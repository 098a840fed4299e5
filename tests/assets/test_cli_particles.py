"""The pick and extract CLI contracts: RELION coordinate files, stacks and particles.star, bad input per file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.io.particles import read_particles_star
from cryodecon_science.picking.metrics import match_picks
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

CLI = str(Path(sys.executable).parent / "cryodecon")
DIAMETER_ANGSTROM = 150.0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[np.ndarray]]:
    """Two simulated 768² micrographs at SNR 0.1 with their true particle centres."""
    folder = tmp_path_factory.mktemp("pick_inputs")
    config = SimulationConfig(shape_px=(768, 768), target_snr=0.1, particle_diameter_angstrom=DIAMETER_ANGSTROM)
    paths, truths = [], []
    for i in range(2):
        simulated = simulate_micrograph(config, f"mic_{i}", (7, i))
        path = folder / f"mic_{i}.mrc"
        write_mrc(path, simulated.counts, config.pixel_size_angstrom)
        paths.append(path)
        truths.append(simulated.truth.particle_positions_px)
    return paths, truths


def test_pick_writes_one_relion_coordinate_file_per_micrograph_on_the_particles(
    session: tuple[list[Path], list[np.ndarray]], tmp_path: Path
) -> None:
    paths, truths = session
    completed = _run(
        "pick",
        *map(str, paths),
        "--particle-diameter-angstrom",
        "150",
        "--output-dir",
        str(tmp_path),
        "--device",
        "cpu",
    )
    assert completed.returncode == 0, completed.stderr
    for path, truth in zip(paths, truths, strict=True):
        table = starfile.read(tmp_path / f"{path.stem}_autopick.star")
        assert list(table.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
        picked_yx = table[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy()
        match = match_picks(picked_yx, truth, 0.5 * DIAMETER_ANGSTROM)
        # SNR 0.1, clean ice: the shipped picker finds most particles, and x is the column, y the row.
        assert match.recall >= 0.7 and match.precision >= 0.7, (match.precision, match.recall)
        assert match.median_centre_error_px <= 0.05 * DIAMETER_ANGSTROM  # 7.5 px at 1 Å/px


def test_extract_cuts_stacks_and_a_particles_star_and_reports_bad_files(
    session: tuple[list[Path], list[np.ndarray]], tmp_path: Path
) -> None:
    paths, truths = session
    coordinates = tmp_path / "coordinates"
    coordinates.mkdir()
    for path, truth in zip(paths, truths, strict=True):
        table = pd.DataFrame({"rlnCoordinateX": truth[:, 1], "rlnCoordinateY": truth[:, 0]})
        starfile.write(table, coordinates / f"{path.stem}_autopick.star")  # manual picks: no figure of merit
    broken = paths[0].with_name("broken.mrc")
    write_mrc(broken, np.random.default_rng(0).poisson(40.0, (256, 256)).astype(np.float32), 1.0)
    (coordinates / "broken_autopick.star").write_text("data_\n\nloop_\n_rlnCoordinateX #1\n10.0\n")
    out = tmp_path / "extracted"
    completed = _run(
        "extract",
        *map(str, paths),
        str(broken),
        "--coordinates",
        str(coordinates),
        "--box-size-px",
        "128",
        "--output-dir",
        str(out),
        "--device",
        "cpu",
    )
    assert completed.returncode == 1  # one input failed, the others completed
    assert "broken_autopick.star" in completed.stderr and "rlnCoordinateY" in completed.stderr
    optics, particles = read_particles_star(out / "particles.star")
    inside = [((t >= 64) & (t <= 768 - 64)).all(axis=1) for t in truths]
    assert len(particles) == sum(int(i.sum()) for i in inside)
    assert list(optics["rlnImageSize"]) == [128]
    for path in paths:
        with mrcfile.open(out / f"{path.stem}.mrcs") as mrc:
            assert mrc.data.shape[1:] == (128, 128) and float(mrc.voxel_size.x) == 1.0
    assert set(particles["rlnMicrographName"]) == {str(p) for p in paths}


def test_pick_without_a_diameter_estimates_it_and_prints_it(
    session: tuple[list[Path], list[np.ndarray]], tmp_path: Path
) -> None:
    paths, truths = session
    completed = _run("pick", *map(str, paths), "--output-dir", str(tmp_path), "--device", "cpu")
    assert completed.returncode == 0, completed.stderr
    line = next(x for x in completed.stdout.splitlines() if x.startswith("estimated particle diameter:"))
    estimate = float(line.split(":")[1].split("Å")[0])
    assert abs(estimate / DIAMETER_ANGSTROM - 1.0) <= 0.25, line  # the simulator's 150 Å bounding sphere
    assert "from 2 micrograph(s)" in line
    for path, truth in zip(paths, truths, strict=True):
        table = starfile.read(tmp_path / f"{path.stem}_autopick.star")
        picked_yx = table[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy()
        assert match_picks(picked_yx, truth, 0.5 * DIAMETER_ANGSTROM).f1 >= 0.7
