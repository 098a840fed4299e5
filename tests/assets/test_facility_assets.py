"""The facility assets materialise: the ImpactFore model from the citation graph, the library's index upkeep."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np

from cryodecon_assets.cli.synthetic_references import ensure_citation_graph
from cryodecon_assets.facility.maintenance import impact_model, structure_library_index
from cryodecon_assets.facility.references import impact_model_path
from cryodecon_resources import OutputStore, ScoringSettings, StructureLibrary
from cryodecon_science.io.impact_model import load_impact_model


def test_impact_model_is_trained_stored_and_reported(tmp_path: Path) -> None:
    graph_folder = ensure_citation_graph(tmp_path / "citations", seed=0, n_papers=1500)
    outputs = OutputStore(root=str(tmp_path / "outputs"))
    result = dg.materialize(
        [impact_model],
        resources={"scoring": ScoringSettings(citation_graph_path=str(graph_folder)), "outputs": outputs},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("impact_model")[0].metadata
    assert metadata["graph"].value == "SYNTHETIC citation graph"
    assert -1.0 <= metadata["spearman_gnn_heldout"].value <= 1.0
    model = load_impact_model(impact_model_path(outputs))
    assert model.graph_synthetic and model.n_train > 0


def test_missing_citation_graph_fails_clearly(tmp_path: Path) -> None:
    result = dg.materialize(
        [impact_model],
        resources={
            "scoring": ScoringSettings(citation_graph_path=str(tmp_path / "nowhere")),
            "outputs": OutputStore(root=str(tmp_path / "outputs")),
        },
        raise_on_error=False,
    )
    assert not result.success


def test_library_index_upkeep_runs_and_keeps_rows(tmp_path: Path) -> None:
    library = StructureLibrary(uri=str(tmp_path / "library"))
    vectors = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    library.add_embeddings(vectors, [f"s{i}" for i in range(64)], "b-00001", "s", [None] * 64, 0.0)
    result = dg.materialize([structure_library_index], resources={"structure_library": library})
    assert result.success
    metadata = result.asset_materializations_for_node("structure_library_index")[0].metadata
    assert metadata["rows"].value == 64
    assert metadata["index_built_now"].value is False  # 64 rows: exact search, no ANN index needed
    assert library.count() == 64
