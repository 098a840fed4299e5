"""Movies that need a gain reference, through sensor -> ``raw_micrographs`` -> warehouse.

Two simulated sessions of one detector (a micrograph and two movies recorded through a known gain, written
as SerialEM saves unnormalised frames: a ``.mdoc`` naming ``CountRef_<session>.mrc``, the reference stored
in another orientation that ``session.json`` gives): one with its gain file, one without.

With the gain, each movie's motion-corrected sum (``_EVN`` + ``_ODD``) is compared with the simulator's
noise-free truth (``clean_image``, the expected counts of the whole exposure in frame-0 coordinates): the
corrected movie's expected sum *is* that truth (``simulate.detector_gain``), so the residual is noise whose
variance is known (λ·g per pixel), and over 8 × 8 blocks it must be standard normal within a tolerance
for the alignment's interpolation.  Comparing with the truth rather than with a flat copy's sum keeps one
noise realisation out of the comparison.  Without the gain file, the two movies are quarantined with the
reason ``gain_reference_missing`` and the micrograph is processed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import dagster as dg
import mrcfile
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from cryodecon_assets.definitions import build_definitions
from cryodecon_assets.intake.sensors import PROCESS_JOB, microscope_storage_sensor
from cryodecon_resources import ScoreWarehouse, Settings, build_resources
from cryodecon_science.simulate import (
    SimulatedSession,
    SimulationConfig,
    record_through_gain,
    simulate_gain_reference,
    simulate_session,
    write_simulated_session,
)

REPO = Path(__file__).resolve().parents[2]
SHAPE = (256, 256)
CONFIG = SimulationConfig(shape_px=SHAPE, particles_per_micrograph=6, n_frames=8, drift_total_px_range=(4.0, 10.0))
N_DEAD = 5


def _session(name: str, seed: int) -> SimulatedSession:
    """One micrograph and two movies through the same detector (another seed: the sensor sets aside copies)."""
    gain = simulate_gain_reference(
        SHAPE, 0.15, N_DEAD, seed=11, stored_rotate_quarter_turns_ccw=1, stored_flip="left_right"
    )
    return record_through_gain(simulate_session(CONFIG, name, 1, 2, seed=seed), gain)


def _block_sums(image: npt.NDArray[np.floating], margin: int) -> npt.NDArray[np.float64]:
    inner = np.asarray(image, dtype=np.float64)[margin:-margin, margin:-margin]
    ny, nx = (s // 8 * 8 for s in inner.shape)
    return inner[:ny, :nx].reshape(ny // 8, 8, nx // 8, 8).sum(axis=(1, 3))


@pytest.mark.slow
def test_movies_are_processed_with_their_gain_and_quarantined_without_it(tmp_path: Path) -> None:
    settings = Settings.from_environment({"CRYODECON_HOME": str(tmp_path), "CRYODECON_DEVICE": "cpu"}).replace(
        settle_seconds=0.0, batch_window_seconds=0.0, max_batch_size=10
    )
    resources = build_resources(settings)
    storage = Path(resources.microscope_storage.root)
    with_gain, without_gain = _session("gain_on", 4), _session("gain_off", 5)
    write_simulated_session(with_gain, storage)
    write_simulated_session(without_gain, storage)
    (storage / "gain_off" / "movies" / "CountRef_gain_off.mrc").unlink()

    instance = dg.DagsterInstance.ephemeral()
    cursor = None
    requests: list[dg.RunRequest] = []
    for _ in range(4):  # seen, settled and hashed, cut (a tick that cuts nothing requests nothing)
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources.as_dict()) as context:
            result = microscope_storage_sensor(context)
        assert isinstance(result, dg.SensorResult)
        cursor = result.cursor
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys or []))  # type: ignore[union-attr]
        requests.extend(result.run_requests or [])
    assert sorted(str(r.partition_key) for r in requests) == ["gain_off-00001", "gain_on-00001"]
    job = build_definitions(settings).resolve_job_def(PROCESS_JOB)
    for request in requests:
        outcome = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            asset_selection=[dg.AssetKey("raw_micrographs")],
            raise_on_error=False,
        )
        assert outcome.success, request.partition_key
    warehouse: ScoreWarehouse = resources.warehouse

    # With its gain: every exposure read; the gain in use is in the metadata table.
    rows = warehouse.read_rows("micrographs", "gain_on-00001").set_index("micrograph")
    movies = [m.name for m in with_gain.movies]
    assert sorted(rows.index) == sorted([with_gain.micrographs[0].name, *movies])
    assert len(warehouse.read_rows("quarantine", "gain_on-00001.raw_micrographs")) == 0
    reference = storage / "gain_on" / "movies" / "CountRef_gain_on.mrc"
    metadata = warehouse.read_rows("exposure_metadata", "gain_on-00001").set_index("micrograph")
    for name in movies:
        row = metadata.loc[name]
        assert row["detector_gain_reference_path"] == str(reference.resolve())
        assert row["detector_gain_reference_sha256"] == hashlib.sha256(reference.read_bytes()).hexdigest()
        assert row["detector_gain_reference_origin"] == "mdoc"
        assert (row["detector_gain_rotate_quarter_turns_ccw"], row["detector_gain_flip"]) == (1, "left_right")
        assert row["detector_defect_pixels"] == N_DEAD
        assert "detector_corrections" in row["sources_json"]
    assert pd.isna(metadata.loc[with_gain.micrographs[0].name, "detector_gain_reference_path"])  # no gain: a micrograph

    # The settings the batch was read with, versioned beside it.
    versions = warehouse.read_rows("session_settings", "gain_on-00001")
    assert len(versions) == 1 and set(rows["session_settings_sha256"]) == {versions["sha256"].iloc[0]}
    version = versions.iloc[0]
    assert (version["gain_rotate_quarter_turns_ccw"], version["gain_flip"]) == (1, "left_right")
    used = {str(reference.resolve()): metadata.loc[movies[0], "detector_gain_reference_sha256"]}
    assert json.loads(version["gain_references_json"]) == used
    assert json.loads(version["settings_json"])["particle_diameter_angstrom"] == CONFIG.particle_diameter_angstrom

    # The query of docs/warehouse.md: the gain and settings version each movie was read with.
    query = (REPO / "docs" / "warehouse.md").read_text().split("-- The gain reference and settings version")[1]
    answered = warehouse.query(query.split("\n", 1)[1].split(";")[0])
    assert sorted(answered["micrograph"]) == sorted(movies)
    assert set(answered["settings_version"]) == set(versions["sha256"])

    # The motion-corrected sums match the truth within the simulator's noise.
    sums = Path(resources.outputs.asset_path("motion_corrected", "gain_on-00001"))
    gain = with_gain.detector_gain
    assert gain is not None
    live_gain = np.where(gain.gain > 0, gain.gain, 1.0)
    for movie in with_gain.movies:
        aligned = sum(np.asarray(mrcfile.read(sums / f"{movie.name}{s}.mrc"), np.float64) for s in ("_EVN", "_ODD"))
        assert movie.truth.drift_shifts_px is not None
        margin = math.ceil(float(np.abs(movie.truth.drift_shifts_px).max())) + 4  # frames shifted in from outside
        truth = movie.clean_image.astype(np.float64)
        noise_variance = _block_sums(truth * live_gain, margin)  # Σ λ·g: corrected counts' variance
        z = (_block_sums(aligned, margin) - _block_sums(truth, margin)) / np.sqrt(noise_variance)
        assert float(np.sqrt(np.mean(z**2))) < 1.5, movie.name
        level = float(_block_sums(aligned, margin).sum() / _block_sums(truth, margin).sum())
        assert abs(level - 1.0) < 0.01, movie.name
        # Without the gain the level would be off by the electrons the detector missed (about 1/mean(g)).
        assert float(np.mean(1.0 / live_gain)) < 0.95

    # Without its gain file: the movies are quarantined with the reason, the micrograph is processed.
    kept = warehouse.read_rows("micrographs", "gain_off-00001")
    assert list(kept["micrograph"]) == [without_gain.micrographs[0].name]
    set_aside = warehouse.read_rows("quarantine", "gain_off-00001.raw_micrographs").set_index("micrograph")
    assert sorted(set_aside.index) == sorted(m.name for m in without_gain.movies)
    assert set(set_aside["reason"]) == {"gain_reference_missing"}
    assert all("GainReference 'CountRef_gain_off.mrc'" in detail for detail in set_aside["detail"])


def test_a_rerun_of_some_micrographs_adds_its_settings_version_and_a_full_run_replaces_them(tmp_path: Path) -> None:
    from cryodecon_assets.batch.session_inputs import SessionInputs
    from cryodecon_science.io.session_settings import GainSettings, SessionSettings

    warehouse = ScoreWarehouse(root=str(tmp_path / "warehouse"))
    first = SessionInputs(tmp_path / "s", SessionSettings())
    second = SessionInputs(tmp_path / "s", SessionSettings(gain=GainSettings(rotate_quarter_turns_ccw=2)))
    assert first.record(warehouse, "s-00001", "s", 3, "run-1", whole_batch=True) == 1
    assert second.record(warehouse, "s-00001", "s", 1, "run-2", whole_batch=False) == 2
    assert second.record(warehouse, "s-00001", "s", 1, "run-3", whole_batch=False) == 2  # same version: replaced
    rows = warehouse.read_rows("session_settings", "s-00001").set_index("sha256")
    assert rows.loc[second.settings.sha256, "run_id"] == "run-3" and rows.loc[first.settings.sha256, "exposures"] == 3
    assert second.record(warehouse, "s-00001", "s", 3, "run-4", whole_batch=True) == 1
