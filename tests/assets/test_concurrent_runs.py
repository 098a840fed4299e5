"""Concurrent Dagster runs (separate processes) write the warehouse: no row lost, none duplicated.

Three runs start at once against one instance and one warehouse: batch 1, batch 2 and a second run of
batch 1 racing the first.  Batch 2 also holds a file with NaN pixels, which passes the sensor's
completeness check (its size is right) and must be quarantined by the run while the rest completes.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from cryodecon_assets.cli.instance import prepare_instance_home
from cryodecon_assets.intake.batching import PlanState
from cryodecon_assets.intake.sensors import cut_batches
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import resources_from_environment
from cryodecon_science.io.mrc import write_mrc
from tests.assets.test_pipeline import seed_session
from tests.conftest import pipeline_environment


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Data array contains NaN values")  # the deliberately broken file
def test_concurrent_runs_lose_and_duplicate_no_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline_environment(tmp_path, monkeypatch, max_batch_size=3)
    monkeypatch.setenv("CRYODECON_MAX_BATCH_SIZE", "2")
    seed_session(n_micrographs=3, n_movies=0, seed=21)
    resources = resources_from_environment()
    storage = resources["microscope_storage"]
    nan_image = np.random.default_rng(0).poisson(30.0, (512, 512)).astype(np.float32)
    nan_image[10:20, 10:20] = np.nan
    write_mrc(Path(storage.root) / "grid" / "micrographs" / "grid_mic_9999.mrc", nan_image, 1.0)  # type: ignore[attr-defined]
    # Cut the batches exactly as the sensor does (two passes: seen, then stable).
    state = cut_batches(storage, resources["warehouse"], PlanState(), time.time(), 0.0).plan.state  # type: ignore[arg-type]
    created = cut_batches(storage, resources["warehouse"], state, time.time(), 0.0).created  # type: ignore[arg-type]
    assert [m.batch_key for m in created] == ["grid-00001", "grid-00002"]
    home = prepare_instance_home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(acquisition_batches.name, [m.batch_key for m in created])
    cli = str(Path(sys.executable).parent / "cryodecon")
    env = dict(os.environ)
    runs = [
        subprocess.Popen(
            [cli, "reprocess", batch], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for batch in ("grid-00001", "grid-00002", "grid-00001")
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    warehouse = resources["warehouse"]
    counts = warehouse.query(  # type: ignore[attr-defined]
        "SELECT count(*) AS n, count(DISTINCT micrograph) AS d FROM hyperscores"
    )
    assert (int(counts["n"][0]), int(counts["d"][0])) == (3, 3)
    for table in ("micrographs", "ctf", "scores", "quality"):
        frame = warehouse.read_rows(table)  # type: ignore[attr-defined]
        assert sorted(frame["micrograph"]) == ["grid_mic_0000", "grid_mic_0001", "grid_mic_0002"], table
    quarantine = warehouse.read_rows("quarantine", "grid-00002.raw_micrographs")  # type: ignore[attr-defined]
    assert list(quarantine["micrograph"]) == ["grid_mic_9999"]
    assert list(quarantine["reason"]) == ["invalid_pixels"]
