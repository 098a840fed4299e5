"""The CLI contracts other tools rely on: ctf JSON keys and convention, restore outputs, scores columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

CLI = str(Path(sys.executable).parent / "cryodecon")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600, env=env or dict(os.environ))


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[float]]:
    folder = tmp_path_factory.mktemp("inputs")
    config = SimulationConfig(shape_px=(512, 512), particles_per_micrograph=6)
    paths, defoci = [], []
    for i in range(2):
        simulated = simulate_micrograph(config, f"cli_{i}", (42, 0, i))
        path = folder / f"cli_{i}.mrc"
        write_mrc(path, simulated.counts, config.pixel_size_angstrom)
        paths.append(path)
        defoci.append(simulated.truth.ctf.mean_defocus_angstrom)
    return paths, defoci


def test_ctf_json_contract(micrographs: tuple[list[Path], list[float]], tmp_path: Path) -> None:
    paths, defoci = micrographs
    out, star = tmp_path / "ctf.json", tmp_path / "micrographs_ctf.star"
    completed = _run("ctf", *map(str, paths), "--output", str(out), "--star", str(star), "--device", "cpu")
    assert completed.returncode == 0, completed.stderr
    rows = json.loads(out.read_text())
    assert [r["micrograph"] for r in rows] == [str(p) for p in paths]
    for row, truth in zip(rows, defoci, strict=True):
        assert {
            "micrograph",
            "defocus_u_angstrom",
            "defocus_v_angstrom",
            "astigmatism_angle_degrees",
            "fit_resolution_angstrom",
        } <= set(row)
        assert row["defocus_u_angstrom"] >= row["defocus_v_angstrom"]
        assert 0.0 <= row["astigmatism_angle_degrees"] < 180.0
        # 3 % of the true mean defocus: the estimator's 95th-percentile goal on simulated data.
        mean = 0.5 * (row["defocus_u_angstrom"] + row["defocus_v_angstrom"])
        assert abs(mean - truth) / truth < 0.03
    assert star.exists() and "data_optics" in star.read_text()


def test_restore_writes_same_names_float32_with_pixel_size(
    micrographs: tuple[list[Path], list[float]], tmp_path: Path
) -> None:
    paths, _ = micrographs
    for target in ("denoised", "deconvolved", "fused"):
        out = tmp_path / target
        completed = _run("restore", *map(str, paths), "--output-dir", str(out), "--target", target, "--device", "cpu")
        assert completed.returncode == 0, completed.stderr
        for path in paths:
            with mrcfile.open(out / path.name) as mrc:
                assert mrc.data.dtype == np.float32 and mrc.data.shape == (512, 512)
                assert float(mrc.voxel_size.x) == pytest.approx(1.0)
                assert np.isfinite(mrc.data).all()


def test_bad_input_is_reported_and_the_rest_is_processed(
    micrographs: tuple[list[Path], list[float]], tmp_path: Path
) -> None:
    paths, _ = micrographs
    broken = tmp_path / "broken.mrc"
    broken.write_bytes(paths[0].read_bytes()[:5000])  # truncated copy
    out = tmp_path / "ctf.json"
    completed = _run("ctf", str(broken), str(paths[1]), "--output", str(out), "--device", "cpu")
    assert completed.returncode == 1
    assert "incomplete" in completed.stderr and "broken.mrc" in completed.stderr
    assert [r["micrograph"] for r in json.loads(out.read_text())] == [str(paths[1])]


def test_scores_formats_on_an_empty_warehouse(tmp_path: Path) -> None:
    env = {**os.environ, "CRYODECON_HOME": str(tmp_path)}
    completed = _run("scores", "--format", "json", env=env)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == []
    completed = _run("scores", "--format", "csv", env=env)
    header = completed.stdout.splitlines()[0].split(",")
    assert {"micrograph", "batch", "defocus_u_angstrom", "fit_resolution_angstrom", "v", "hyperscore"} <= set(header)
