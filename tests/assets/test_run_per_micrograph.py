"""run_per_micrograph: per-micrograph and batched steps quarantine a bad micrograph and keep the rest."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cryodecon_assets.batch.common import run_per_micrograph
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser
from cryodecon_science.restoration.denoiser import denoise_learned, denoise_learned_many
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph


class RecordingWarehouse:
    """Stands in for ScoreWarehouse: keeps what would be written, by table."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Mapping[str, Any]]] = {}

    def write_rows(
        self, table: str, partition_key: str, rows: Sequence[Mapping[str, Any]], replace_micrographs: Any = None
    ) -> None:
        self.rows.setdefault(table, []).extend(rows)


def _context() -> Any:
    return SimpleNamespace(
        partition_key="grid-00001",
        run=SimpleNamespace(run_id="run-1", tags={}),
        log=logging.getLogger("test_run_per_micrograph"),
    )


def test_batched_denoising_quarantines_the_bad_frame_and_times_the_rest() -> None:
    model = load_pretrained_denoiser()
    counts = simulate_micrograph(SimulationConfig(shape_px=(256, 256), target_snr=0.05), "m", 3).counts
    bad = counts.copy()
    bad[0, 0] = np.inf
    items = {"a": SimpleNamespace(data=counts), "b": SimpleNamespace(data=bad), "c": SimpleNamespace(data=counts)}
    warehouse = RecordingWarehouse()

    def batch_step(selection: Mapping[str, Any]) -> dict[str, Any]:
        outcomes = denoise_learned_many([m.data for m in selection.values()], model)
        return dict(zip(selection, outcomes, strict=True))

    results = run_per_micrograph(_context(), warehouse, "learned", items, batch_step=batch_step)  # type: ignore[arg-type]

    assert sorted(results) == ["a", "c"]
    np.testing.assert_array_equal(results["a"], denoise_learned(counts, model))
    [row] = warehouse.rows["quarantine"]
    assert row["micrograph"] == "b" and row["stage"] == "learned" and row["reason"] == "ValueError"
    assert "NaN or Inf" in row["detail"]
    times = warehouse.rows["step_times"]
    assert [t["micrograph"] for t in times] == ["a", "c"]
    assert times[0]["seconds"] == times[1]["seconds"] > 0  # the batch's wall time shared out
    assert times[0]["n_pixels"] == 256 * 256


def test_exactly_one_kind_of_step() -> None:
    with pytest.raises(TypeError):
        run_per_micrograph(_context(), RecordingWarehouse(), "x", {}, None, None)  # type: ignore[arg-type]
