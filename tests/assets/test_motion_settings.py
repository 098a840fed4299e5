"""Movie correction in the assets: global by default, patch (local) correction when configured."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryodecon_assets.batch.raw import motion_row, write_motion_sums
from cryodecon_resources import MotionSettings, parse_patch_grid
from cryodecon_science.ingest import correct_movie
from cryodecon_science.simulate import SimulationConfig, simulate_movie


def test_patch_grid_setting_parses_and_validates() -> None:
    assert MotionSettings().patch_grid == []
    assert parse_patch_grid("5x5") == [5, 5] and parse_patch_grid(" none ") == [] and parse_patch_grid("") == []
    assert MotionSettings(patch_grid=[3, 3]).patch_grid == [3, 3]
    for bad in ([5], [1, 1], [0, 4], [2, 2, 2]):
        with pytest.raises(ValueError):
            MotionSettings(patch_grid=bad)
    with pytest.raises(ValueError, match="5x5"):
        parse_patch_grid("five")


@pytest.mark.parametrize("patch_grid", [(), (3, 3)])
def test_correct_movie_writes_the_sums_and_records_the_motion(tmp_path: Path, patch_grid: tuple[int, ...]) -> None:
    config = SimulationConfig(shape_px=(256, 256), pixel_size_angstrom=2.0, n_frames=8)
    movie = simulate_movie(config, "m", 5)
    motion = correct_movie(movie.frames, 2.0, config.dose_e_per_angstrom2, 300.0, "cpu", patch_grid)
    write_motion_sums(tmp_path, "m", motion, 2.0)
    correction, row = motion.correction, motion_row(motion)
    assert row["dose_weighted"] and row["dose_per_frame_e_per_angstrom2"] == pytest.approx(
        config.dose_e_per_angstrom2 / 8
    )
    # RELION's total motion is the trajectory's path length in Å.
    steps = np.linalg.norm(np.diff(correction.shifts_px, axis=0), axis=1)
    assert row["motion_total_angstrom"] == pytest.approx(2.0 * steps.sum())
    for suffix in ("_DW", "_EVN", "_ODD"):
        with mrcfile.open(tmp_path / f"m{suffix}.mrc") as mrc:
            assert mrc.data.shape == (256, 256)
    if patch_grid:
        assert correction.patch_motion is not None and correction.patch_motion.grid == (3, 3)
        assert row["patch_grid"] == "3x3" and row["local_motion_model"] in ("none", "uniform", "bilinear", "quadratic")
    else:
        assert correction.patch_motion is None and row["patch_grid"] is None and row["local_motion_model"] is None
    # Without a known dose there is nothing to weight by: no _DW file is written.
    unweighted = tmp_path / "unweighted"
    unweighted_motion = correct_movie(movie.frames, 2.0, None, 300.0, "cpu", patch_grid)
    write_motion_sums(unweighted, "m", unweighted_motion, 2.0)
    plain = motion_row(unweighted_motion)
    assert not plain["dose_weighted"] and not (unweighted / "m_DW.mrc").exists()
    assert plain["motion_early_angstrom"] is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CRYODECON_FINETUNE_STEPS", "lots", "CRYODECON_FINETUNE_STEPS must be an integer, got 'lots'"),
        ("CRYODECON_FINETUNE_STEPS", "-3", "denoiser_finetune_steps must be >= 0"),
        ("CRYODECON_MOTION_PATCHES", "5x", "CRYODECON_MOTION_PATCHES must look like 5x5"),
        ("CRYODECON_MOTION_PATCHES", "1x1", "patch_grid must be"),
        ("CRYODECON_SETTLE_SECONDS", "soon", "CRYODECON_SETTLE_SECONDS must be a number, got 'soon'"),
    ],
)
def test_bad_settings_in_the_environment_name_themselves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, message: str
) -> None:
    from cryodecon_resources import resources_from_environment

    monkeypatch.setenv("CRYODECON_HOME", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        resources_from_environment()
