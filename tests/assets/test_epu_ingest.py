"""An EPU session on storage (FEI-header MRC, LZW TIFF movies, XML sidecars) through sensor -> run -> warehouse."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import tifffile

from cryodecon_assets.cli.driver import drive
from cryodecon_assets.cli.instance import prepare_instance_home
from cryodecon_resources import resources_from_environment
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph, simulate_movie
from tests.conftest import pipeline_environment
from tests.science.test_io_formats import epu_xml, write_fei_mrc

SIZE = 384
GRID_SQUARE = "8999138"
DOSE = 4.0e21  # e⁻/m² = 40 e⁻/Å², the simulator's dose (1 m² = 10²⁰ Å²)


def _environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline_environment(home, monkeypatch, max_batch_size=10)


def write_epu_session(session: Path) -> dict[str, str]:
    """Two micrographs (one whose XML disagrees on the pixel size), one complete and one half-copied movie."""
    config = SimulationConfig(shape_px=(SIZE, SIZE), particles_per_micrograph=4, n_frames=6)
    data = session / "Images-Disc1" / f"GridSquare_{GRID_SQUARE}" / "Data"
    data.mkdir(parents=True)
    names = {}
    for i, (hole, xml_pixel_m) in enumerate((("9015883", 1.0e-10), ("9015884", 0.83e-10))):
        stem = f"FoilHole_{hole}_Data_9017347_{i}_20251123_120000"
        counts = simulate_micrograph(config, stem, (5, 0, i)).counts
        write_fei_mrc(data / f"{stem}.mrc", counts.astype(np.float32), pixel_size_m=1.0e-10, dose_e_per_m2=DOSE)
        (data / f"{stem}.xml").write_text(epu_xml(pixel_m=xml_pixel_m, dose_e_per_m2=DOSE))
        names[f"micrograph_{i}"] = stem
    movie = simulate_movie(config, "movie", (5, 1, 0))
    frames = np.clip(np.rint(movie.frames), 0, 65535).astype(np.uint16)
    for label, hole, n_written in (("movie", "9015890", config.n_frames), ("partial", "9015891", 3)):
        stem = f"FoilHole_{hole}_Data_9017347_9_20251123_120500"
        tifffile.imwrite(
            data / f"{stem}_fractions.tiff", frames[:n_written], compression="lzw", photometric="minisblack"
        )
        (data / f"{stem}.xml").write_text(epu_xml(n_fractions=config.n_frames, pixel_m=1.0e-10, dose_e_per_m2=DOSE))
        names[label] = stem
    return names


@pytest.mark.slow
def test_epu_session_is_ingested_with_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(tmp_path, monkeypatch)
    from cryodecon_assets.definitions import build_definitions

    resources = resources_from_environment()
    names = write_epu_session(Path(resources["microscope_storage"].root) / "epu_session")  # type: ignore[attr-defined]
    instance = dg.DagsterInstance.from_config(str(prepare_instance_home(tmp_path)))
    runs = drive(instance, build_definitions(), settle_seconds=0.0, max_ticks=3).runs
    assert runs == {"epu_session-00001": True}
    warehouse = resources["warehouse"]
    rows = warehouse.read_rows("micrographs", "epu_session-00001")  # type: ignore[attr-defined]
    # The half-copied movie (3 of 6 announced frames) is not batched: it waits, it is not processed short.
    assert sorted(rows["micrograph"]) == sorted([names["micrograph_0"], names["micrograph_1"], names["movie"]])
    by_name = rows.set_index("micrograph")
    assert set(by_name["grid_square_id"]) == {GRID_SQUARE}
    assert by_name.loc[names["movie"], "kind"] == "movie" and by_name.loc[names["movie"], "n_frames"] == 6
    assert by_name.loc[names["movie"], "drift_total_px"] > 1.0  # motion-corrected
    trajectory = warehouse.read_rows("motion_trajectories", "epu_session-00001")  # type: ignore[attr-defined]
    assert list(trajectory["frame"]) == list(range(6)) and set(trajectory["micrograph"]) == {names["movie"]}
    assert trajectory["shift_y_px"][0] == 0.0 and trajectory["shift_x_px"][0] == 0.0  # relative to frame 0
    assert by_name.loc[names["micrograph_0"], "dose_e_per_angstrom2"] == pytest.approx(40.0)  # from the XML
    metadata = warehouse.read_rows("exposure_metadata", "epu_session-00001").set_index("micrograph")  # type: ignore[attr-defined]
    assert metadata.loc[names["micrograph_0"], "n_disagreements"] == 0
    assert metadata.loc[names["micrograph_1"], "n_disagreements"] == 1  # header 1.0 Å vs XML 0.83 Å per pixel
    assert "optics.pixel_size_angstrom" in metadata.loc[names["micrograph_1"], "disagreements_json"]
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("raw_micrographs"), "metadata_sources_agree")]
    )
    evaluation = next(iter(check.values())).event.dagster_event.event_specific_data  # type: ignore[union-attr]
    assert evaluation.passed is False
    # Every exposure was scored.
    scores = warehouse.read_rows("hyperscores", "epu_session-00001")  # type: ignore[attr-defined]
    assert len(scores) == 3 and scores["hyperscore"].between(100.0, 200.0).all()
