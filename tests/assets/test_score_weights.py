"""Weights of V: shipped, learned from curation labels by the `score_weights` asset, versioned, resolved."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import optuna
import pytest

from cryodecon_assets.facility.maintenance import CURATION_TABLE, curation_row, score_weights
from cryodecon_resources import ScoreWarehouse, ScoringSettings
from cryodecon_resources.scoring import SHIPPED_WEIGHTS_FILE, WEIGHTS_TABLE, shipped_weights
from cryodecon_science.scoring import COMPONENT_NAMES

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_shipped_weights_are_learned_and_documented() -> None:
    document = json.loads(SHIPPED_WEIGHTS_FILE.read_text())
    weights = shipped_weights()
    assert weights.version == document["version"]
    assert sum(getattr(weights, n) for n in COMPONENT_NAMES) == pytest.approx(1.0)
    # Learned, not equal: the benchmark that produced them is named with its held-out agreement.
    assert len({round(getattr(weights, n), 6) for n in COMPONENT_NAMES}) > 1
    assert "bench_quality_v.py" in document["command"]
    assert -1.0 <= document["spearman_held_out"] <= 1.0


def _scored_batch(warehouse: ScoreWarehouse, n: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        components = dict(zip(COMPONENT_NAMES, rng.uniform(0.0, 1.0, 5), strict=True))
        rows.append({"micrograph": f"m{i:03d}", "batch": "b-00001", "session": "s", **components})
    warehouse.write_rows("scores", "b-00001", rows)
    return rows


def test_too_few_labels_keep_the_shipped_weights(tmp_path: Path) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    rows = _scored_batch(warehouse, 5, seed=0)
    for row in rows:
        warehouse.write_rows(
            CURATION_TABLE, f"b-00001.{row['micrograph']}", [curation_row("b-00001", str(row["micrograph"]), True, "t")]
        )
    result = dg.materialize([score_weights], resources={"warehouse": warehouse})
    assert result.success
    table = warehouse.read_rows(WEIGHTS_TABLE)
    assert list(table["source"]) == ["simulated"]
    learned = table.to_dict("records")
    weights, source = ScoringSettings().resolve_weights(learned)
    assert source == "simulated" and weights == shipped_weights()


def test_curation_labels_teach_new_weights_that_v_then_uses(tmp_path: Path) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    rows = _scored_batch(warehouse, 40, seed=1)
    for row in rows:  # staff accepted exactly the micrographs whose restoration reproduced well
        accepted = float(row["repro"]) > 0.5  # type: ignore[arg-type]
        name = str(row["micrograph"])
        warehouse.write_rows(CURATION_TABLE, f"b-00001.{name}", [curation_row("b-00001", name, accepted, "staff")])
    result = dg.materialize([score_weights], resources={"warehouse": warehouse})
    assert result.success
    table = warehouse.read_rows(WEIGHTS_TABLE)
    curated = table[table["source"] == "curation"].to_dict("records")
    assert len(curated) == 1
    row = curated[0]
    assert row["version"].startswith("curation-")
    assert max(COMPONENT_NAMES, key=lambda n: row[f"w_{n}"]) == "repro"
    assert json.loads(row["details"])["n_samples"] == 40
    weights, source = ScoringSettings().resolve_weights(table.to_dict("records"))
    assert source == "curation" and weights.version == row["version"]
    # Same labels, same version: rerunning does not add a second version.
    dg.materialize([score_weights], resources={"warehouse": warehouse})
    assert (warehouse.read_rows(WEIGHTS_TABLE)["source"] == "curation").sum() == 1
    # Configured weights win over learned ones.
    configured, source = ScoringSettings(weights=[1, 0, 0, 0, 0], weights_version="pinned").resolve_weights(
        table.to_dict("records")
    )
    assert source == "configured" and configured.logic == 1.0 and configured.version == "pinned"


def test_hyperscore_shape_follows_the_weights_in_force() -> None:
    document = json.loads(SHIPPED_WEIGHTS_FILE.read_text())
    shipped = shipped_weights().version
    beta, gamma, kappa = ScoringSettings().resolve_shape([], shipped)
    assert (beta, gamma) == (document["hyperscore"]["beta"], document["hyperscore"]["gamma"]) and kappa == 2.0
    # The shipped calibration puts the median simulated V at the logistic's midpoint, inside (0, 1).
    assert 0.0 < math.exp(-gamma / beta) < 1.0
    learned = [{"version": "curation-x", "beta": 7.0, "gamma": 3.0}]
    assert ScoringSettings().resolve_shape(learned, "curation-x")[:2] == (7.0, 3.0)
    assert ScoringSettings(beta=5.0).resolve_shape(learned, "curation-x")[:2] == (5.0, 3.0)  # configured wins
    assert ScoringSettings().resolve_shape([], "unknown")[:2] == (5.0, pytest.approx(-math.log(2.0)))
