"""Output files follow the process umask (0o666 & ~umask), so staff and RELION/cryoSPARC running as other
users can read them; every atomic writer of the pipeline is checked under two umasks."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import networkx as nx
import numpy as np
import pytest
import torch

from cryodecon_resources.io_manager import BatchIOManager
from cryodecon_resources.warehouse import ScoreWarehouse
from cryodecon_science.io.atomic import atomic_target, create_once
from cryodecon_science.io.citations import write_citation_graph
from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.io.star import MicrographCtfRow, write_micrographs_ctf_star
from cryodecon_science.io.torch_files import save_payload
from cryodecon_science.optics import CtfParams, MicroscopeSettings
from cryodecon_science.records import CtfFit, SpectralModel
from cryodecon_science.simulate import SimulationConfig, simulate_session, write_simulated_session

# (umask, mode every output file must have under it)
UMASKS = [
    pytest.param((0o022, 0o644), id="umask-022"),
    pytest.param((0o027, 0o640), id="umask-027"),
]


@pytest.fixture(params=UMASKS)
def expected_mode(request: pytest.FixtureRequest) -> Iterator[int]:
    """Sets the process umask for the test (restored afterwards) and yields the mode files must get."""
    umask, mode = request.param
    previous = os.umask(umask)
    try:
        yield int(mode)
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _no_temporaries_left(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.name.endswith(".part")]


def _rows(batch: str, n: int) -> list[dict[str, object]]:
    return [{"micrograph": f"{batch}_m{i:03d}", "batch": batch, "value": float(i)} for i in range(n)]


# ---- the helper itself --------------------------------------------------------------------------------


def test_atomic_target_creates_the_file_with_the_umask_and_leaves_no_temporary(
    tmp_path: Path, expected_mode: int
) -> None:
    target = tmp_path / "out" / "table.bin"
    with atomic_target(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".table.bin.") and tmp.name.endswith(".part")
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert _mode(target) == expected_mode
    assert _no_temporaries_left(tmp_path)


def test_atomic_target_restores_the_umask_mode_when_the_writer_recreates_the_file(
    tmp_path: Path, expected_mode: int
) -> None:
    target = tmp_path / "recreated.bin"
    with atomic_target(target) as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # a library that creates its file private
        os.write(fd, b"xyz")
        os.close(fd)
    assert target.read_bytes() == b"xyz"
    assert _mode(target) == expected_mode


def test_atomic_target_keeps_the_old_file_and_removes_the_temporary_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "kept.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_target(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert _no_temporaries_left(tmp_path)


def test_create_once_creates_with_the_umask_and_refuses_an_existing_file(tmp_path: Path, expected_mode: int) -> None:
    target = tmp_path / "manifest.json"
    assert create_once(target, b"first") is True
    assert create_once(target, b"second") is False
    assert target.read_bytes() == b"first"
    assert _mode(target) == expected_mode
    assert _no_temporaries_left(tmp_path)


# ---- every writer of the pipeline ---------------------------------------------------------------------


def test_outputs_are_readable_by_the_group_and_others_under_the_usual_umask(tmp_path: Path) -> None:
    """The facility default (umask 022): tables, images and models come out 0644."""
    previous = os.umask(0o022)
    try:
        warehouse = ScoreWarehouse(root=str(tmp_path / "warehouse"))
        warehouse.write_rows("trial", "b-00001", _rows("b-00001", 3))
        written = [
            warehouse.table_dir("trial") / "b-00001.parquet",
            warehouse.write_document("graphs", "g1", {"a": 1}),
        ]
        path = tmp_path / "images" / "m.mrc"
        write_mrc(path, np.arange(64, dtype=np.float32).reshape(8, 8), 1.0)
        written.append(path)
    finally:
        os.umask(previous)
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(0o644) for p in written}


def test_warehouse_tables_and_their_exports_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path / "warehouse"))
    assert warehouse.write_rows("trial", "b-00001", _rows("b-00001", 3)) == 3
    table = warehouse.table_dir("trial") / "b-00001.parquet"
    exported = warehouse.export_parquet(tmp_path / "export")
    views = warehouse.export_views()
    modes = {str(p.relative_to(tmp_path)): _mode(p) for p in [table, *exported, views]}
    assert {"warehouse/tables/trial/b-00001.parquet", "export/trial.parquet", "warehouse/warehouse.duckdb"} <= set(
        modes
    )
    assert set(modes.values()) == {expected_mode}
    assert _no_temporaries_left(tmp_path)


def test_warehouse_documents_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    path = warehouse.write_document("graphs", "g1", {"edges": [[1, 2]]})
    assert _mode(path) == expected_mode
    assert warehouse.read_document("graphs", "g1") == {"edges": [[1, 2]]}


def test_frozen_manifests_follow_the_umask_and_are_created_once(tmp_path: Path, expected_mode: int) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    assert warehouse.write_document_once("manifests", "s-00001", {"owner": "a"}) is True
    assert warehouse.write_document_once("manifests", "s-00001", {"owner": "b"}) is False
    path = warehouse.document_path("manifests", "s-00001")
    assert _mode(path) == expected_mode
    assert warehouse.read_document("manifests", "s-00001") == {"owner": "a"}
    assert _no_temporaries_left(tmp_path)


def test_io_manager_pickles_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["b-00001"]))
    def fits() -> dict[str, object]:
        return {"m1": {"defocus_angstrom": 15000.0}}

    result = dg.materialize(
        [fits], partition_key="b-00001", resources={"io_manager": BatchIOManager(root=str(tmp_path))}
    )
    assert result.success
    path = tmp_path / "fits" / "b-00001" / "m1.pkl"
    assert _mode(path) == expected_mode
    assert _no_temporaries_left(tmp_path)


def test_mrc_images_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    path = tmp_path / "m.mrc"
    write_mrc(path, np.arange(64, dtype=np.float32).reshape(8, 8), 1.0)
    assert _mode(path) == expected_mode
    assert _no_temporaries_left(tmp_path)


def test_star_tables_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    microscope = MicroscopeSettings(
        voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast_fraction=0.07, pixel_size_angstrom=0.83
    )
    model = SpectralModel(np.linspace(0.0, 0.5, 5), np.ones(5), np.full(5, 30.0), 30.0, 1, 4)
    fit = CtfFit(CtfParams(15000.0, 14500.0, 30.0, 0.0), 3.9, 0.6, 12.0, model)
    path = tmp_path / "micrographs_ctf.star"
    write_micrographs_ctf_star(path, [MicrographCtfRow("mic_0001.mrc", fit, microscope)])
    assert _mode(path) == expected_mode
    assert _no_temporaries_left(tmp_path)


def test_torch_payloads_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    path = tmp_path / "model.pt"
    save_payload({"format": "t", "version": 1, "state_dict": {"w": torch.zeros(2)}}, path)
    assert _mode(path) == expected_mode
    assert _no_temporaries_left(tmp_path)


def test_citation_tables_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    graph = nx.DiGraph()
    graph.add_node("p1", year=2020)
    graph.add_node("p2", year=2021)
    graph.add_edge("p2", "p1")
    write_citation_graph(graph, tmp_path / "graph")
    modes = {p.name: _mode(p) for p in (tmp_path / "graph").iterdir()}
    assert modes == {"edges.parquet": expected_mode, "nodes.parquet": expected_mode}


def test_simulated_session_files_follow_the_umask(tmp_path: Path, expected_mode: int) -> None:
    config = SimulationConfig(shape_px=(32, 32), pixel_size_angstrom=2.0, particle_diameter_angstrom=20.0)
    session = simulate_session(config, "perm_sess", n_micrographs=1, n_movies=0, seed=1)
    paths = write_simulated_session(session, tmp_path)
    assert [p.name for p in paths] == ["session.json", "perm_sess_mic_0000.mrc", "ground_truth.json"]
    assert {p.name: _mode(p) for p in paths} == {p.name: expected_mode for p in paths}
    assert _no_temporaries_left(tmp_path)
