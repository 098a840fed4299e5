"""Each batch asset materialises alone, from its stored inputs, and gives what the whole run gave."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mrcfile
import numpy as np
import pytest

from cryodecon_assets.batch import BATCH_ASSETS
from cryodecon_assets.cli.driver import drive
from cryodecon_assets.cli.instance import prepare_instance_home
from cryodecon_assets.cli.synthetic_references import (
    ensure_citation_graph,
    ensure_reference_library,
    established_papers,
)
from cryodecon_assets.definitions import build_definitions
from cryodecon_assets.intake.sensors import PROCESS_JOB
from cryodecon_resources import Resources, Settings, build_resources
from cryodecon_science.io.citations import read_citation_graph
from cryodecon_science.simulate import SimulationConfig, simulate_session, write_simulated_session

BATCH = "grid-00001"
ASSETS = sorted({key.path[-1] for asset in BATCH_ASSETS for key in asset.keys})


@dataclass(frozen=True)
class Processed:
    instance: dg.DagsterInstance
    definitions: dg.Definitions
    resources: Resources


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Processed:
    """One simulated batch (two micrographs and a movie) through the whole run, as the sensor starts it."""
    home = tmp_path_factory.mktemp("alone")
    settings = Settings.from_environment({"CRYODECON_HOME": str(home), "CRYODECON_DEVICE": "cpu"}).replace(
        settle_seconds=0.0, batch_window_seconds=0.0, max_batch_size=3
    )
    resources = build_resources(settings)
    config = SimulationConfig(shape_px=(512, 512), particles_per_micrograph=8, n_frames=8)
    write_simulated_session(simulate_session(config, "grid", 2, 1, 5), Path(resources.microscope_storage.root))
    graph = ensure_citation_graph(Path(resources.scoring.citation_graph_path), seed=0, n_papers=1500)
    papers = established_papers(read_citation_graph(graph))
    ensure_reference_library(
        resources.structure_library,
        config,
        seed=5,
        projections_per_structure=4,
        papers=papers,
        class_library=resources.class_library,
    )
    instance = dg.DagsterInstance.from_config(str(prepare_instance_home(home)))
    definitions = build_definitions(settings)
    assert drive(instance, definitions, settle_seconds=0.0, max_ticks=4).runs == {BATCH: True}
    return Processed(instance, definitions, resources)


def _stored_images(outputs: Path, asset: str) -> dict[str, np.ndarray]:
    folder = outputs / asset / BATCH
    images = {}
    for path in sorted(folder.glob("*.mrc")):
        with mrcfile.open(path) as mrc:
            images[path.stem] = np.array(mrc.data)
    return images


@pytest.mark.slow
@pytest.mark.parametrize("asset", ASSETS)
def test_each_batch_asset_materialises_alone(processed: Processed, asset: str) -> None:
    outputs = Path(processed.resources.outputs.root)
    files_before = sorted(p.name for p in (outputs / asset / BATCH).iterdir())
    images_before = _stored_images(outputs, asset)
    before = len(processed.instance.fetch_materializations(dg.AssetKey(asset), limit=100).records)
    result = processed.definitions.resolve_job_def(PROCESS_JOB).execute_in_process(
        instance=processed.instance, partition_key=BATCH, asset_selection=[dg.AssetKey(asset)]
    )
    assert result.success
    materialised = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert materialised == {asset}
    assert len(processed.instance.fetch_materializations(dg.AssetKey(asset), limit=100).records) == before + 1
    assert sorted(p.name for p in (outputs / asset / BATCH).iterdir()) == files_before
    for name, image in _stored_images(outputs, asset).items():
        # The same inputs give the same image; CPU least squares in the CTF fit vary in the last digits.
        np.testing.assert_allclose(image, images_before[name], rtol=1e-4, atol=1e-4 * float(np.abs(image).max()))
