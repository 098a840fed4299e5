"""Writing a simulated session to storage and reading its metadata back (cryodecon_science.io.session)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cryodecon_science.io.mrc import read_micrograph, read_movie
from cryodecon_science.io.session import (
    SessionMetadataError,
    exposure_name,
    read_session_metadata,
)
from cryodecon_science.simulate import SimulatedSession, SimulationConfig, simulate_session, write_simulated_session

CONFIG = SimulationConfig(
    shape_px=(128, 96),
    pixel_size_angstrom=1.3,
    particle_diameter_angstrom=40.0,
    particles_per_micrograph=4,
    n_frames=4,
    drift_total_px_range=(2.0, 6.0),
)


@pytest.fixture(scope="module")
def session() -> SimulatedSession:
    return simulate_session(CONFIG, "demo_sess", n_micrographs=2, n_movies=1, seed=3)


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in paths}


def test_layout_and_order(tmp_path: Path, session: SimulatedSession) -> None:
    paths = write_simulated_session(session, tmp_path)
    root = tmp_path / "demo_sess"
    assert paths[0] == root / "session.json"
    assert paths[-1] == root / "ground_truth.json"
    assert paths[1:-1] == [
        root / "micrographs" / "demo_sess_mic_0000.mrc",
        root / "micrographs" / "demo_sess_mic_0001.mrc",
        root / "movies" / "demo_sess_mov_0000_fractions.mrc",
    ]
    assert all(path.is_file() for path in paths)
    assert not (root / "truth").exists()
    # No temporary files left behind.
    assert sorted(p.name for p in root.rglob(".*")) == []


def test_round_trip_through_the_mrc_readers(tmp_path: Path, session: SimulatedSession) -> None:
    write_simulated_session(session, tmp_path)
    root = tmp_path / "demo_sess"
    for simulated in session.micrographs:
        micrograph = read_micrograph(root / "micrographs" / f"{simulated.name}.mrc")
        assert micrograph.name == simulated.name
        assert micrograph.pixel_size_angstrom == pytest.approx(1.3, rel=1e-6)
        assert np.array_equal(micrograph.data, simulated.counts)
    movie = read_movie(root / "movies" / "demo_sess_mov_0000_fractions.mrc")
    assert movie.frames.shape == (4, 128, 96)
    assert movie.pixel_size_angstrom == pytest.approx(1.3, rel=1e-6)
    assert np.array_equal(movie.frames, session.movies[0].frames)


def test_session_metadata_round_trip(tmp_path: Path, session: SimulatedSession) -> None:
    write_simulated_session(session, tmp_path)
    metadata = read_session_metadata(tmp_path / "demo_sess")
    assert metadata.microscope == CONFIG.microscope
    assert metadata.dose_e_per_angstrom2 == CONFIG.dose_e_per_angstrom2
    expected = {m.name: m.truth.nominal_defocus_angstrom for m in (*session.micrographs, *session.movies)}
    assert metadata.nominal_defocus_angstrom == expected


def test_exposure_names_key_the_metadata(tmp_path: Path, session: SimulatedSession) -> None:
    paths = write_simulated_session(session, tmp_path)
    metadata = read_session_metadata(tmp_path / "demo_sess")
    assert [exposure_name(path) for path in paths[1:-1]] == list(metadata.nominal_defocus_angstrom)
    assert exposure_name("movies/a_b.c_fractions.mrc") == "a_b"
    assert exposure_name("micrographs/x_fractions_y.mrc") == "x_fractions_y"


def test_ground_truth_json_holds_the_truth(tmp_path: Path, session: SimulatedSession) -> None:
    write_simulated_session(session, tmp_path)
    document = json.loads((tmp_path / "demo_sess" / "ground_truth.json").read_text())
    micrograph = session.micrographs[0]
    entry = document["exposures"][micrograph.name]
    assert entry["defocus_u_angstrom"] == micrograph.truth.ctf.defocus_u_angstrom
    assert entry["n_particles"] == micrograph.truth.structure_ids.size
    positions = [p["position_yx_px"] for p in entry["particles"]]
    assert np.array_equal(np.asarray(positions), micrograph.truth.particle_positions_px)
    movie_entry = document["exposures"][session.movies[0].name]
    assert np.array_equal(np.asarray(movie_entry["drift_shifts_dy_dx_px"]), session.movies[0].truth.drift_shifts_px)
    assert document["config"]["structure_seed"] == CONFIG.structure_seed
    assert document["seed"] == 3


def test_rewrite_is_idempotent_and_changes_are_written(tmp_path: Path, session: SimulatedSession) -> None:
    paths = write_simulated_session(session, tmp_path, write_truth_images=True)
    before = mtimes(paths)
    contents = {path: path.read_bytes() for path in paths}
    again = write_simulated_session(session, tmp_path, write_truth_images=True)
    assert again == paths
    assert mtimes(again) == before
    assert {path: path.read_bytes() for path in again} == contents

    # Different exposures under the same name: the data files and the truth are rewritten.
    other = simulate_session(CONFIG, "demo_sess", n_micrographs=2, n_movies=1, seed=4)
    write_simulated_session(other, tmp_path, write_truth_images=True)
    first = tmp_path / "demo_sess" / "micrographs" / "demo_sess_mic_0000.mrc"
    assert np.array_equal(read_micrograph(first).data, other.micrographs[0].counts)
    assert (tmp_path / "demo_sess" / "ground_truth.json").read_bytes() != contents[paths[-1]]


def test_truth_images(tmp_path: Path, session: SimulatedSession) -> None:
    paths = write_simulated_session(session, tmp_path, write_truth_images=True)
    truth_dir = tmp_path / "demo_sess" / "truth"
    assert truth_dir / "demo_sess_mic_0001_potential.mrc" in paths
    assert paths[-1].name == "ground_truth.json"
    clean = read_micrograph(truth_dir / "demo_sess_mov_0000_clean.mrc")
    assert np.array_equal(clean.data, session.movies[0].clean_image)
    assert len(list(truth_dir.iterdir())) == 2 * 3


def test_movie_counts_must_fit_uint16(tmp_path: Path, session: SimulatedSession) -> None:
    movie = session.movies[0]
    broken = replace(session, movies=(replace(movie, frames=movie.frames + 0.5),))
    with pytest.raises(ValueError, match="integer"):
        write_simulated_session(broken, tmp_path)


def valid_document() -> dict[str, Any]:
    return {
        "microscope": {
            "voltage_kv": 300,
            "spherical_aberration_mm": 2.7,
            "amplitude_contrast_fraction": 0.07,
            "pixel_size_angstrom": 1.0,
        },
        "dose_e_per_angstrom2": 40,
        "exposures": {"a": {"kind": "movie", "nominal_defocus_angstrom": 15000.0}},
    }


def test_valid_minimal_document(tmp_path: Path) -> None:
    (tmp_path / "session.json").write_text(json.dumps(valid_document()))
    metadata = read_session_metadata(tmp_path)
    assert metadata.nominal_defocus_angstrom == {"a": 15000.0}
    assert metadata.particle_diameter_angstrom is None and metadata.positions == {}


def test_optional_diameter_and_positions_are_read(tmp_path: Path) -> None:
    document = valid_document() | {"particle_diameter_angstrom": 220.0}
    document["exposures"]["a"] |= {"grid_square_id": "12", "foil_hole_id": 345}
    (tmp_path / "session.json").write_text(json.dumps(document))
    metadata = read_session_metadata(tmp_path)
    assert metadata.particle_diameter_angstrom == 220.0 and metadata.positions == {"a": ("12", "345")}


_DELETE = object()


def malformed(section: str, key: str, value: Any) -> str:
    document = valid_document()
    target = document if section == "" else document[section]
    if value is _DELETE:
        del target[key]
    else:
        target[key] = value
    return json.dumps(document)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (malformed("", "microscope", _DELETE), "microscope"),
        (malformed("microscope", "pixel_size_angstrom", -1.0), "pixel_size_angstrom"),
        (malformed("microscope", "voltage_kv", "300"), "voltage_kv"),
        (malformed("microscope", "amplitude_contrast_fraction", 1.5), "amplitude_contrast_fraction"),
        (malformed("", "dose_e_per_angstrom2", None), "dose_e_per_angstrom2"),
        (malformed("exposures", "a", {"kind": "movie"}), "nominal_defocus_angstrom"),
        (malformed("", "exposures", ["a"]), "exposures"),
        (malformed("", "particle_diameter_angstrom", -150.0), "particle_diameter_angstrom"),
        (malformed("", "particle_diameter_angstrom", "150 A"), "particle_diameter_angstrom"),
        (malformed("exposures", "a", {"nominal_defocus_angstrom": 1.0, "foil_hole_id": "7"}), "grid_square_id"),
        (
            malformed("exposures", "a", {"nominal_defocus_angstrom": 1.0, "grid_square_id": "3", "foil_hole_id": [7]}),
            "foil_hole_id",
        ),
        (
            malformed("exposures", "a", {"nominal_defocus_angstrom": 1.0, "grid_square_id": "../x", "foil_hole_id": 7}),
            "grid_square_id",
        ),
    ],
)
def test_malformed_session_json_raises(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "session.json").write_text(content)
    with pytest.raises(SessionMetadataError, match=message) as info:
        read_session_metadata(tmp_path)
    assert isinstance(info.value, ValueError)
