"""End to end: a simulated batch through sensor -> run -> every asset -> warehouse, on a real instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryodecon_assets.cli.driver import drive
from cryodecon_assets.cli.instance import prepare_instance_home
from cryodecon_assets.cli.synthetic_references import (
    ensure_citation_graph,
    ensure_reference_library,
    established_papers,
)
from cryodecon_resources import ScoreWarehouse, resources_from_environment
from cryodecon_resources.scoring import shipped_weights
from cryodecon_science.io.citations import read_citation_graph
from cryodecon_science.io.particles import read_particles_star
from cryodecon_science.simulate import SimulationConfig, simulate_session, write_simulated_session
from tests.conftest import pipeline_environment

REPO = Path(__file__).resolve().parents[2]
SIZE = 512


@dataclass(frozen=True)
class Processed:
    """The simulated session after the sensor and the runs: what every test below reads."""

    home: Path
    instance: dg.DagsterInstance
    runs: dict[str, bool]
    warehouse: ScoreWarehouse
    outputs: Path
    table: pd.DataFrame


def seed_session(n_micrographs: int = 3, n_movies: int = 1, seed: int = 3) -> None:
    resources = resources_from_environment()
    config = SimulationConfig(shape_px=(SIZE, SIZE), particles_per_micrograph=8, n_frames=8)
    session = simulate_session(config, "grid", n_micrographs, n_movies, seed)
    write_simulated_session(session, Path(resources["microscope_storage"].root))  # type: ignore[attr-defined]
    folder = ensure_citation_graph(Path(resources["scoring"].citation_graph_path), seed=0, n_papers=1500)  # type: ignore[attr-defined]
    papers = established_papers(read_citation_graph(folder))
    ensure_reference_library(
        resources["structure_library"],  # type: ignore[arg-type]
        config,
        seed=seed,
        projections_per_structure=4,
        papers=papers,
        class_library=resources["class_library"],  # type: ignore[arg-type]
    )


def run_pipeline(instance: dg.DagsterInstance) -> dict[str, bool]:
    from cryodecon_assets.definitions import build_definitions

    return drive(instance, build_definitions(), settle_seconds=0.0, max_ticks=4).runs


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processed]:
    """Three micrographs and a movie, batches of three: two partitions through every asset, once per module."""
    home = tmp_path_factory.mktemp("cryodecon_home")
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline_environment(home, monkeypatch, max_batch_size=3)
        seed_session()
        instance = dg.DagsterInstance.from_config(str(prepare_instance_home(home)))
        runs = run_pipeline(instance)
        resources = resources_from_environment()
        warehouse = resources["warehouse"]
        table = warehouse.query("SELECT * FROM micrograph_scores ORDER BY micrograph")  # type: ignore[attr-defined]
        yield Processed(home, instance, runs, warehouse, Path(resources["outputs"].root), table)  # type: ignore[arg-type, attr-defined]


BATCHES = {"grid-00001", "grid-00002"}


@pytest.mark.slow
def test_both_batches_run_and_every_asset_is_materialised(processed: Processed) -> None:
    assert processed.runs == {"grid-00001": True, "grid-00002": True}
    for key in (
        "raw_micrographs",
        "ctf_estimates",
        "causal_priors",
        "restored_micrographs",
        "deconvolved_micrographs",
        "session_denoiser",
        "learned_denoised_micrographs",
        "fused_denoised_micrographs",
        "particle_picks",
        "particles",
        "classes_2d",
        "exposure_curation",
        "evaluation_scores",
        "quality_scores",
        "hyperscores",
    ):
        assert processed.instance.get_materialized_partitions(dg.AssetKey(key)) == BATCHES, key


@pytest.mark.slow
def test_every_exposure_is_scored_once_with_scores_in_range(processed: Processed) -> None:
    table = processed.table
    assert list(table["micrograph"]) == ["grid_mic_0000", "grid_mic_0001", "grid_mic_0002", "grid_mov_0000"]
    assert table["hyperscore"].between(100.0, 200.0).all()
    assert table["v"].between(0.0, 1.0).all()
    for column in ("logic", "novelty", "impact", "repro", "meta"):
        assert table[column].between(0.0, 1.0).all(), column


@pytest.mark.slow
def test_lineage_names_the_table_each_asset_fills(processed: Processed) -> None:
    instance = processed.instance
    for key, tables in (
        ("raw_micrographs", "micrographs"),
        ("causal_priors", "priors"),
        ("hyperscores", "hyperscores"),
    ):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        metadata = event.asset_materialization.metadata  # type: ignore[union-attr]
        schema = metadata["dagster/column_schema"].value
        assert tables in metadata["warehouse_tables"].value and schema.columns[0].name == "micrograph", key
    counts = instance.get_latest_materialization_event(dg.AssetKey("hyperscores")).asset_materialization.metadata  # type: ignore[union-attr]
    assert counts["dagster/row_count"].value == len(processed.warehouse.read_rows("hyperscores", "grid-00002"))


@pytest.mark.slow
def test_outputs_relion_and_cryosparc_read(processed: Processed) -> None:
    """MRC with the pixel size in the header, and a CTF STAR file per batch."""
    restored = processed.outputs / "restored_micrographs" / "grid-00001" / "grid_mic_0000.mrc"
    with mrcfile.open(restored) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.data.shape == (SIZE, SIZE)
        assert float(mrc.voxel_size.x) == pytest.approx(1.0)
    assert (processed.outputs / "star" / "grid-00001" / "micrographs_ctf.star").exists()


@pytest.mark.slow
def test_particles_are_picked_extracted_and_listed_for_relion(processed: Processed) -> None:
    """Coordinate files of the kept picks, stacks of RELION-normalised boxes, particles.star per batch and
    one per session holding every batch's particles once."""
    warehouse, outputs = processed.warehouse, processed.outputs
    picks = warehouse.read_rows("picks")
    assert set(picks["reason"]) <= {"ok", "carbon", "contamination", "thick_ice", "aggregate"}
    stacks = warehouse.read_rows("particle_stacks")
    assert sorted(stacks["micrograph"]) == list(processed.table["micrograph"])
    kept = picks[picks["reason"] == "ok"].groupby("micrograph").size()
    for row in stacks.itertuples():
        # every kept pick is extracted or counted as a box that leaves the micrograph
        assert row.particles + row.box_outside == kept.get(row.micrograph, 0)
        coordinates = starfile.read(outputs / "particle_picks" / row.batch / f"{row.micrograph}_autopick.star")
        assert len(coordinates) == kept.get(row.micrograph, 0)
    assert stacks["particles"].sum() > 0
    with_particles = stacks[stacks["particles"] > 0].iloc[0]
    with mrcfile.open(with_particles["stack_path"]) as mrc:
        boxes = np.asarray(mrc.data, dtype=np.float64)
    box = int(with_particles["box_px"])
    assert boxes.shape == (with_particles["particles"], box, box)
    yy, xx = np.mgrid[0:box, 0:box] - box // 2
    background = yy**2 + xx**2 > (0.75 * box / 2) ** 2
    np.testing.assert_allclose(boxes[:, background].mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(boxes[:, background].std(axis=1), 1.0, rtol=1e-4)
    per_batch = {
        batch: len(read_particles_star(outputs / "star" / batch / "particles.star")[1]) for batch in sorted(BATCHES)
    }
    assert per_batch == stacks.groupby("batch")["particles"].sum().to_dict()
    optics, session = read_particles_star(outputs / "sessions" / "grid" / "particles.star")
    assert len(session) == stacks["particles"].sum() and session["rlnImageName"].is_unique
    assert list(optics["rlnImageSize"]) == [box]


@pytest.mark.slow
def test_2d_classes_stream_through_the_session_with_their_selection_and_gallery(processed: Processed) -> None:
    """The second batch's classes hold both batches' particles; every particle has a class; the averages,
    the class state after each batch and the gallery are written."""
    warehouse, outputs = processed.warehouse, processed.outputs
    classes = warehouse.read_rows("classes_2d")
    assigned = warehouse.read_rows("particle_classes")
    extracted = warehouse.read_rows("particle_stacks").groupby("batch")["particles"].sum()
    first, second = sorted(BATCHES)
    for batch in (first, second):
        rows = classes[classes["batch"] == batch].sort_values("class_number")
        assert list(rows["class_number"]) == [1, 2, 3, 4]
        assert (
            int(rows["particles_this_batch"].sum()) == int(extracted[batch]) == int((assigned["batch"] == batch).sum())
        )
        assert set(rows["reasons"][rows["selected"]]) <= {""} and all(rows["reasons"][~rows["selected"]] != "")
        with mrcfile.open(outputs / "classes_2d" / batch / "class_averages.mrcs") as mrc:
            assert mrc.data.shape == (4, 64, 64) and np.isfinite(mrc.data).all()
    event = processed.instance.get_latest_materialization_event(dg.AssetKey("classes_2d"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    retired = int(metadata["particles_retired"].value)  # type: ignore[attr-defined]  # in re-seeded classes
    session_total = int(classes[classes["batch"] == second]["particles"].sum())
    assert session_total + retired == int(extracted.sum())  # streaming: the first batch's particles still count
    assert int(classes[classes["batch"] == first]["particles"].sum()) == int(extracted[first])
    assert assigned["class_number"].between(1, 4).all() and assigned["image_name"].is_unique
    for batch in (first, second):  # RELION reads the classes: particles.star with rlnClassNumber
        _, star = read_particles_star(outputs / "star" / batch / "particles_classified.star")
        mine = assigned[assigned["batch"] == batch]
        assert dict(zip(star["rlnImageName"], star["rlnClassNumber"], strict=True)) == dict(
            zip(mine["image_name"], mine["class_number"], strict=True)
        )
        kept = mine[mine["kept"]]  # the selection handed on: selected classes, ln B >= 3 against background
        assert (mine["kept"] <= mine["selected"]).all() and (kept["log_evidence_ratio"] >= 3.0).all()
        selected_star = outputs / "star" / batch / "particles_selected.star"
        if len(kept):
            _, chosen = read_particles_star(selected_star)
            assert sorted(chosen["rlnImageName"]) == sorted(kept["image_name"])
        else:
            assert not selected_star.exists()
    states = sorted(p.name for p in (outputs / "sessions" / "grid" / "classes_2d").glob("after-*.pt"))
    assert len(states) == 2
    assert "data:image/png;base64," in metadata["gallery"].value  # type: ignore[attr-defined]
    assert metadata["started_from"].value.endswith(states[0])  # type: ignore[attr-defined]


@pytest.mark.slow
def test_class_novelty_against_the_class_library(processed: Processed) -> None:
    """Each class has a novelty from its nearest known view (the seeded references: the session's own classes are
    left out); after the last batch the library holds exactly the session's selected classes beside the references."""
    classes = processed.warehouse.read_rows("classes_2d")
    filled = classes[classes["particles"] > 0]
    assert len(filled) > 0 and filled["novelty"].between(0.0, 1.0).all()
    assert filled["nearest_known"].str.startswith("structure-").all()
    assert (filled["nearest_known_distance"] >= 0).all()
    library = resources_from_environment()["class_library"]
    rows = library._open().to_arrow().to_pylist()  # type: ignore[attr-defined]
    by_batch = {r["batch_key"] for r in rows}
    last = classes[classes["batch"] == max(BATCHES)]
    session_rows = sorted(r["structure_id"] for r in rows if r["batch_key"] == "session-grid")
    assert session_rows == sorted(f"grid:class-{k}" for k in last["class_number"][last["selected"]])
    assert by_batch <= {"reference", "session-grid"}
    event = processed.instance.get_latest_materialization_event(dg.AssetKey("classes_2d"))
    metadata = event.asset_materialization.metadata  # type: ignore[union-attr]
    assert "novelty" in metadata["classes"].value  # type: ignore[attr-defined]


def warehouse_doc_queries() -> dict[str, str]:
    """The SQL blocks of docs/warehouse.md's decomposition-graph section, by their comment line."""
    text = (REPO / "docs" / "warehouse.md").read_text()
    block = text.split("The decomposition graph (`region_graph`", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    queries = {}
    for chunk in block.strip().split("\n\n"):
        title, _, sql = chunk.partition("\n")
        queries[title.removeprefix("-- ")] = sql
    return queries


@pytest.mark.slow
def test_the_documented_region_graph_queries_answer_on_the_warehouse(processed: Processed) -> None:
    queries = warehouse_doc_queries()
    assert set(queries) == {
        "Particles per foil hole",
        "Share of picks set aside as on carbon, per grid square",
        "Kept particles within one diameter of the carbon edge, per micrograph",
    }
    per_hole = processed.warehouse.query(queries["Particles per foil hole"])
    # session.json places four exposures per foil hole: 4 exposures -> one hole holding them all.
    assert list(per_hole["foil_hole"]) == ["1"] and list(per_hole["micrographs"]) == [4]
    picks = processed.warehouse.read_rows("picks")
    assert int(per_hole["particles"].sum()) == int((picks["reason"] == "ok").sum())
    carbon = processed.warehouse.query(queries["Share of picks set aside as on carbon, per grid square"])
    assert list(carbon["picks"]) == [len(picks)]
    assert float(carbon["carbon_share"][0]) == pytest.approx(float((picks["reason"] == "carbon").mean()))
    processed.warehouse.query(queries["Kept particles within one diameter of the carbon edge, per micrograph"])


@pytest.mark.slow
def test_the_movie_is_motion_corrected_and_dose_weighted_with_half_sums(processed: Processed) -> None:
    warehouse, outputs = processed.warehouse, processed.outputs
    movies = warehouse.query("SELECT drift_total_px FROM micrographs WHERE kind = 'movie'")
    assert len(movies) == 1 and movies["drift_total_px"][0] > 1.0
    motion = warehouse.read_rows("motion_corrections")
    assert list(motion["micrograph"]) == ["grid_mov_0000"] and bool(motion["dose_weighted"][0])
    assert float(motion["motion_total_angstrom"][0]) == pytest.approx(float(movies["drift_total_px"][0]), rel=1e-6)
    sums = outputs / "motion_corrected" / "grid-00002"
    for suffix in ("_DW", "_EVN", "_ODD"):
        with mrcfile.open(sums / f"grid_mov_0000{suffix}.mrc") as mrc:
            assert mrc.data.shape == (SIZE, SIZE) and float(mrc.voxel_size.x) == pytest.approx(1.0)
    with mrcfile.open(sums / "grid_mov_0000_EVN.mrc") as even, mrcfile.open(sums / "grid_mov_0000_ODD.mrc") as odd:
        with mrcfile.open(outputs / "raw_micrographs" / "grid-00002" / "grid_mov_0000.mrc") as aligned:
            # The halves add up to the aligned sum before artifact removal: same total counts.
            assert float(even.data.sum() + odd.data.sum()) == pytest.approx(float(aligned.data.sum()), rel=0.02)
    star = starfile.read(outputs / "star" / "grid-00002" / "corrected_micrographs.star", always_dict=True)
    assert list(star["micrographs"]["rlnMicrographName"]) == [str(sums / "grid_mov_0000_DW.mrc")]


@pytest.mark.slow
def test_cryodecon_scores_answers_from_the_same_warehouse(processed: Processed) -> None:
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "cryodecon"), "scores", "--session", "grid", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ) | {"CRYODECON_HOME": str(processed.home)},
        check=True,
    )
    rows = json.loads(completed.stdout)
    assert [r["micrograph"] for r in rows] == list(processed.table["micrograph"])
    assert all(r["hyperscore"] == pytest.approx(h) for r, h in zip(rows, processed.table["hyperscore"], strict=True))


@pytest.mark.slow
def test_the_daily_summary_of_the_day_the_batches_were_cut(processed: Processed) -> None:
    from cryodecon_assets.definitions import build_definitions

    warehouse = processed.warehouse
    cut_at = float(warehouse.read_rows("hyperscores")["cut_at_s"].min())
    day = datetime.fromtimestamp(cut_at, UTC).strftime("%Y-%m-%d")
    job = build_definitions().resolve_job_def("daily_summary_job")
    assert job.execute_in_process(instance=processed.instance, partition_key=day).success
    summary = warehouse.read_rows("daily_summary", day)
    assert list(summary["session"]) == ["grid"] and list(summary["exposures_scored"]) == [4]
    assert summary["median_hyperscore"][0] == pytest.approx(float(processed.table["hyperscore"].median()))


@pytest.mark.slow
def test_the_session_dashboard_is_drawn_after_the_batches(processed: Processed) -> None:
    """The driver (as ``session_dashboard_sensor`` under the daemon) redraws the session's dashboard."""
    from cryodecon_assets.facility.dashboard_figures import check_self_contained

    assert processed.instance.get_materialized_partitions(dg.AssetKey("session_dashboard")) == {"grid"}
    event = processed.instance.get_latest_materialization_event(dg.AssetKey("session_dashboard"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert metadata["exposures"].value == 4 and metadata["batches"].value == 2
    for key in ("trends", "histograms", "grid_map", "class_gallery"):
        assert "](data:image/png;base64," in str(metadata[key].value), key
    page = processed.outputs / "sessions" / "grid" / "dashboard.html"
    assert str(metadata["dashboard_html"].value) == str(page)
    text = page.read_text(encoding="utf-8")
    assert check_self_contained(text) == [] and "<script" not in text
    for section in ("Trends", "Histograms", "Grid map", "2D classes after grid-00002"):
        assert f"<h2>{section}" in text, section
    assert text.count('src="data:image/png;base64,') == 4


@pytest.mark.slow
def test_v_records_the_shipped_weights_without_curation_labels(processed: Processed) -> None:
    assert set(processed.table["weights_version"]) == {shipped_weights().version}


@pytest.mark.slow
def test_repro_perturbations_half_set_frc_and_step_times_are_recorded(processed: Processed) -> None:
    warehouse = processed.warehouse
    details = [json.loads(d) for d in warehouse.read_rows("scores")["details"]]
    for record in details:
        assert {"repro_noise_split", "repro_defocus_subcrops_phase", "repro_restoration_shift"} <= set(record)
        assert 0.0 < record["half_set_correlation"] < 1.0
    assert any("repro_compute_cost" in record for record in details)
    # Quality without ground truth: the half-set FRC of independently restored noise halves.
    frc = warehouse.read_rows("scores")["half_set_frc_0143_angstrom"]
    assert frc.notna().all() and frc.between(2.0, 200.0).all()
    stages = set(warehouse.query("SELECT DISTINCT stage FROM step_times")["stage"])
    assert {"ctf_estimates", "causal_priors", "restored_micrographs", "evaluation_scores"} <= stages


@pytest.mark.slow
def test_the_session_prior_after_each_batch(processed: Processed) -> None:
    """3 then 4 measurements of every node: too few to pool with yet."""
    session_priors = processed.warehouse.query(
        "SELECT batch, n, mean, between_sd, pooling FROM session_priors "
        "WHERE quantity = 'coherence_envelope' ORDER BY batch_sequence"
    )
    assert list(session_priors["batch"]) == ["grid-00001", "grid-00002"] and list(session_priors["n"]) == [3, 4]
    assert not session_priors["pooling"].any() and (session_priors["between_sd"] >= 0.0).all()


@pytest.mark.slow
def test_the_artifact_steps_ran_once_per_exposure_with_their_causal_node(processed: Processed) -> None:
    corrections = processed.warehouse.query("SELECT micrograph, step, causal_node FROM artifact_corrections")
    assert len(corrections) == 3 * 4
    assert set(zip(corrections["step"], corrections["causal_node"], strict=True)) == {
        ("replace_hot_pixels", "detector_noise"),
        ("remove_detector_stripes", "detector_noise"),
        ("normalise_excluded_areas", "ice_thickness"),
    }


@pytest.mark.slow
def test_a_second_pass_reprocesses_nothing(processed: Processed) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline_environment(processed.home, monkeypatch, max_batch_size=3)
        assert run_pipeline(processed.instance) == {}
    assert len(processed.warehouse.query("SELECT * FROM hyperscores")) == 4


@pytest.mark.slow
def test_reprocessing_one_micrograph_and_a_file_changed_after_the_cut(
    processed: Processed, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_environment(processed.home, monkeypatch, max_batch_size=3)
    from cryodecon_assets.definitions import build_definitions
    from cryodecon_resources.io_manager import SELECTION_TAG

    instance = processed.instance
    outputs = Path(resources_from_environment()["outputs"].root)  # type: ignore[attr-defined]
    kept = outputs / "restored_micrographs" / "grid-00001" / "grid_mic_0001.mrc"
    redone = outputs / "restored_micrographs" / "grid-00001" / "grid_mic_0000.mrc"
    kept_mtime, redone_mtime = kept.stat().st_mtime_ns, redone.stat().st_mtime_ns
    job = build_definitions().resolve_job_def("process_batch")
    result = job.execute_in_process(
        instance=instance, partition_key="grid-00001", tags={SELECTION_TAG: "grid_mic_0000"}
    )
    assert result.success
    assert kept.stat().st_mtime_ns == kept_mtime and redone.stat().st_mtime_ns > redone_mtime
    warehouse = resources_from_environment()["warehouse"]
    assert len(warehouse.read_rows("hyperscores", "grid-00001")) == 3  # type: ignore[attr-defined]
    # A file overwritten after its batch was cut is quarantined on rerun; the rest of the batch completes.
    storage = Path(resources_from_environment()["microscope_storage"].root)  # type: ignore[attr-defined]
    changed = storage / "grid" / "micrographs" / "grid_mic_0001.mrc"
    with mrcfile.open(changed, mode="r+") as mrc:
        mrc.data[0, 0] += 1.0
    result = job.execute_in_process(instance=instance, partition_key="grid-00001")
    assert result.success
    quarantine = warehouse.read_rows("quarantine", "grid-00001.raw_micrographs")  # type: ignore[attr-defined]
    assert list(quarantine["reason"]) == ["changed_since_cut"]
    assert sorted(warehouse.read_rows("hyperscores", "grid-00001")["micrograph"]) == [
        "grid_mic_0000",
        "grid_mic_0002",
    ]  # type: ignore[attr-defined]
    checks = result.get_asset_check_evaluations()
    assert any(c.check_name == "no_quarantined_exposures" and not c.passed for c in checks)


def test_definitions_load_and_validate(tmp_path: Path) -> None:
    from cryodecon_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    # No DAGSTER_HOME: `definitions validate` needs no persistent instance (an ephemeral one avoids sharing
    # a SQLite file with anything else).
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"CRYODECON_HOME": str(tmp_path)}
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    job = defs.resolve_job_def("process_batch")
    assert {n.name for n in job.nodes} >= {
        "raw_micrographs",
        "ctf_estimates",
        "causal_priors",
        "restored_micrographs",
        "evaluation_scores",
        "quality_scores",
        "hyperscores",
    }


def test_science_package_does_not_import_dagster() -> None:
    """Every module of the science package imports without pulling in Dagster (the layering rule)."""
    code = (
        "import importlib, pkgutil, sys, cryodecon_science\n"
        "for m in pkgutil.walk_packages(cryodecon_science.__path__, 'cryodecon_science.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(len(sys.modules) > 0 and 'dagster' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "False"


@pytest.mark.slow
def test_curation_labels_and_the_common_questions(processed: Processed, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline_environment(processed.home, monkeypatch, max_batch_size=3)
    cli = str(Path(sys.executable).parent / "cryodecon")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ))

    warehouse = resources_from_environment()["warehouse"]
    scored = warehouse.query("SELECT batch, micrograph FROM scores ORDER BY batch, micrograph")  # type: ignore[attr-defined]
    batch = str(scored["batch"][0])
    names = [str(m) for m in scored[scored["batch"] == batch]["micrograph"]]
    assert len(names) >= 2
    assert run("label", batch, names[0], "--reject", "--by", "test").returncode == 0
    assert run("label", batch, *names[1:], "--accept").returncode == 0
    assert run("label", batch, names[0], "--accept").returncode == 0  # relabelling replaces
    assert run("label", batch, "not_a_micrograph", "--accept").returncode == 2
    labels = warehouse.query("SELECT micrograph, accepted, labelled_by FROM curation ORDER BY micrograph")  # type: ignore[attr-defined]
    assert list(labels["micrograph"]) == names
    assert labels["accepted"].all()
    rules = json.loads(run("scores", "--rules", "--format", "json").stdout)
    assert {r["rule"] for r in rules} >= {"defocus_in_range", "particles_not_crowded", "particle_density_typical"}
    assert all(r["passed"] + r["failed"] + r["not_applicable"] == len(scored) for r in rules)
    summary = json.loads(run("scores", "--summary", "--format", "json").stdout)
    n_scored = len(warehouse.query("SELECT * FROM hyperscores"))  # type: ignore[attr-defined]
    assert [(r["session"], r["micrographs"]) for r in summary] == [("grid", n_scored)]
    weights = json.loads(run("scores", "--weights", "--format", "json").stdout)
    assert [w["in_use"] for w in weights] == [True]
    exported = processed.home / "export"
    assert run("export", str(exported)).returncode == 0
    assert len(pd.read_parquet(exported / "micrograph_scores.parquet")) == n_scored
    assert len(pd.read_parquet(exported / "curation.parquet")) == len(names)


@pytest.mark.slow
def test_changing_a_threshold_and_recurating_moves_exposures_without_image_work(
    processed: Processed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #21: thresholds changed, only ``exposure_curation`` re-materialised: exposures move, the STAR
    files list exactly the accepted ones, and a ``cryodecon label`` shows beside the automatic decision."""
    from cryodecon_assets.batch.curation import MICROGRAPHS_STAR, PARTICLES_STAR
    from cryodecon_assets.cli.main import main
    from cryodecon_assets.definitions import build_definitions
    from cryodecon_assets.intake.sensors import PROCESS_JOB
    from cryodecon_science.curation import THRESHOLD_NAMES
    from cryodecon_science.io.star import read_micrographs_ctf_star

    pipeline_environment(processed.home, monkeypatch, max_batch_size=3)
    batch, warehouse = "grid-00001", processed.warehouse
    first = warehouse.read_rows("curation_decisions", batch)
    # The normal run curated (an exposure quarantined by an earlier test of this module is not curated).
    assert len(first) >= 2 and first["session_settings_sha256"].nunique() == 1
    session_json = Path(resources_from_environment()["microscope_storage"].root) / "grid" / "session.json"  # type: ignore[attr-defined]
    original = session_json.read_text() if session_json.exists() else None
    labels_dir = warehouse.table_dir("curation")
    labels_before = {p: p.read_bytes() for p in labels_dir.glob(f"{batch}.*.parquet")}
    definitions = build_definitions()

    def curate(thresholds: dict[str, object]) -> tuple[list[str], pd.DataFrame]:
        session_json.write_text(json.dumps({**(json.loads(original) if original else {}), "thresholds": thresholds}))
        result = definitions.resolve_job_def(PROCESS_JOB).execute_in_process(
            instance=processed.instance, partition_key=batch, asset_selection=[dg.AssetKey("exposure_curation")]
        )
        assert result.success
        steps = sorted({e.step_key for e in result.all_events if e.step_key})
        materialised = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        assert materialised == {"exposure_curation"}
        return steps, warehouse.read_rows("curation_decisions", batch).set_index("micrograph")

    def exported(name: str) -> set[str]:
        path = processed.outputs / "star" / batch / name
        if not path.exists():
            return set()
        if name == MICROGRAPHS_STAR:
            return {Path(r.micrograph_path).stem for r in read_micrographs_ctf_star(path)}
        return {Path(m).stem for m in read_particles_star(path)[1]["rlnMicrographName"]}

    off: dict[str, object] = dict.fromkeys(THRESHOLD_NAMES)
    try:
        steps, relaxed = curate(off)
        assert relaxed["automatic_accepted"].all() and (relaxed["failed_thresholds"] == "").all()
        best = float(relaxed["ctf_fit_resolution_angstrom"].min())
        steps, strict = curate({**off, "ctf_fit_resolution_max_angstrom": best})
        print("step list of the re-curation run:", steps)
        assert steps == ["exposure_curation"]  # no image asset ran
        moved = strict[~strict["automatic_accepted"]]
        assert 1 <= len(moved) < len(strict)  # the exposures with a worse fit than the best moved
        assert relaxed["session_settings_sha256"].iloc[0] != strict["session_settings_sha256"].iloc[0]
        assert (moved["failed_thresholds"] == "ctf_fit_resolution_max_angstrom").all()
        assert all(r.startswith("ctf_fit_resolution_max_angstrom: ") and f"> {best:.4g}" in r for r in moved["reasons"])
        accepted = set(strict.index[strict["accepted"]])
        assert exported(MICROGRAPHS_STAR) == accepted
        with_particles = {m for m in accepted if (strict.loc[m, "particles"] or 0) > 0}
        assert exported(PARTICLES_STAR) == with_particles
        # The human override: reject an exposure the thresholds accept; both decisions stay visible.
        kept = str(strict.index[strict["automatic_accepted"]][0])
        assert main(["label", batch, kept, "--reject", "--by", "curator"]) == 0
        _, labelled = curate({**off, "ctf_fit_resolution_max_angstrom": best})
        row = labelled.loc[kept]
        assert bool(row["automatic_accepted"]) and not bool(row["human_accepted"]) and not bool(row["accepted"])
        assert row["decided_by"] == "human" and row["labelled_by"] == "curator"
        assert kept not in exported(MICROGRAPHS_STAR)
        assert exported(MICROGRAPHS_STAR) == set(labelled.index[labelled["accepted"]])
    finally:
        if original is None:
            session_json.unlink(missing_ok=True)
        else:
            session_json.write_text(original)
        for path in labels_dir.glob(f"{batch}.*.parquet"):
            if path not in labels_before:
                path.unlink()
        for path, content in labels_before.items():
            path.write_bytes(content)
