"""One micrograph failing anywhere in the graph is quarantined with its reason; the batch completes."""

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from cryodecon_assets.batch.common import run_per_micrograph
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import ScoreWarehouse
from cryodecon_resources.io_manager import BatchIOManager
from cryodecon_science.io.mrc import Micrograph

BATCH = "grid-00001"
NAMES = ("mic_a", "mic_b", "mic_c")


def _image(name: str, constant: bool = False) -> Micrograph:
    data = np.full((32, 32), 3.0, np.float32) if constant else np.random.default_rng(len(name)).random((32, 32))
    return Micrograph(name, data.astype(np.float32), 1.0)


def _materialize(tmp_path: Path, step: object) -> tuple[dg.ExecuteInProcessResult, ScoreWarehouse, list[str]]:
    warehouse = ScoreWarehouse(root=str(tmp_path / "warehouse"))
    scored: list[str] = []

    @dg.asset(partitions_def=acquisition_batches)
    def restored(context: dg.AssetExecutionContext, warehouse: ScoreWarehouse) -> dict[str, Micrograph]:
        return run_per_micrograph(context, warehouse, "restored", {n: _image(n) for n in NAMES}, step)  # type: ignore[arg-type]

    @dg.asset(partitions_def=acquisition_batches)
    def scores(restored: dict[str, Micrograph]) -> dict[str, float]:
        scored.extend(sorted(restored))
        return {n: float(m.data.std()) for n, m in restored.items()}

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(acquisition_batches.name, [BATCH])
    result = dg.materialize(
        [restored, scores],
        partition_key=BATCH,
        instance=instance,
        resources={"warehouse": warehouse, "io_manager": BatchIOManager(root=str(tmp_path / "outputs"))},
        raise_on_error=False,
    )
    return result, warehouse, scored


def test_a_constant_output_is_quarantined_at_the_step_that_made_it_and_the_batch_completes(tmp_path: Path) -> None:
    def restore(name: str, raw: Micrograph) -> Micrograph:
        return _image(name, constant=name == "mic_b")  # e.g. a deconvolution that came out flat

    result, warehouse, scored = _materialize(tmp_path, restore)
    assert result.success
    assert scored == ["mic_a", "mic_c"]
    row = warehouse.read_rows("quarantine").set_index("micrograph").loc["mic_b"]
    assert row["stage"] == "restored" and row["reason"] == "InvalidOutputError"
    assert "restored produced a constant image" in row["detail"]


def test_an_unexpected_error_of_one_micrograph_quarantines_it_only(tmp_path: Path) -> None:
    def restore(name: str, raw: Micrograph) -> Micrograph:
        if name == "mic_c":
            raise RuntimeError("cuFFT plan failed")
        return raw

    result, warehouse, scored = _materialize(tmp_path, restore)
    assert result.success and scored == ["mic_a", "mic_b"]
    row = warehouse.read_rows("quarantine").set_index("micrograph").loc["mic_c"]
    assert row["reason"] == "RuntimeError" and "cuFFT plan failed" in row["detail"]


def test_an_error_that_strikes_every_micrograph_fails_the_run_instead_of_quarantining_the_batch(
    tmp_path: Path,
) -> None:
    def restore(name: str, raw: Micrograph) -> Micrograph:
        raise RuntimeError("CUDA error: device lost")

    result, warehouse, scored = _materialize(tmp_path, restore)
    assert not result.success and scored == []
    assert warehouse.read_rows("quarantine").empty


def test_a_stored_output_that_cannot_be_read_back_names_the_step_that_wrote_it(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "restored" / BATCH
    folder.mkdir(parents=True)
    (folder / "mic_a.mrc").write_bytes(b"\0" * 100)

    @dg.asset(partitions_def=acquisition_batches)
    def restored() -> dict[str, Micrograph]:
        raise AssertionError("not run: only its stored output is loaded")

    @dg.asset(partitions_def=acquisition_batches)
    def scores(restored: dict[str, Micrograph]) -> dict[str, float]:
        return {}

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(acquisition_batches.name, [BATCH])
    with pytest.raises(Exception, match=r"restored \(partition grid-00001\) stored mic_a.mrc"):
        dg.materialize(
            [restored.to_source_asset(), scores],  # type: ignore[attr-defined]
            partition_key=BATCH,
            instance=instance,
            resources={"io_manager": BatchIOManager(root=str(tmp_path / "outputs"))},
            selection=[scores],
        )
