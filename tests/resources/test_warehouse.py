"""Warehouse: per-partition Parquet files, atomic replacement, concurrent writers, DuckDB views."""

from __future__ import annotations

import multiprocessing as mp
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cryodecon_resources.warehouse import ScoreWarehouse


def _rows(batch: str, n: int, tag: int = 0) -> list[dict[str, object]]:
    return [{"micrograph": f"{batch}_m{i:03d}", "batch": batch, "value": float(i + tag)} for i in range(n)]


def _writer(root: str, batches: list[str], n: int, repeats: int) -> None:
    warehouse = ScoreWarehouse(root=root)
    for repeat in range(repeats):
        for batch in batches:
            warehouse.write_rows("trial", batch, _rows(batch, n, tag=repeat))


def test_rerun_replaces_rows_instead_of_duplicating(tmp_path: Path) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    warehouse.write_rows("trial", "s-00001", _rows("s-00001", 5))
    warehouse.write_rows("trial", "s-00001", _rows("s-00001", 5, tag=10))
    frame = warehouse.query("SELECT count(*) AS n, min(value) AS lo FROM trial")
    assert int(frame["n"][0]) == 5
    assert float(frame["lo"][0]) == 10.0


def test_selective_replace_keeps_other_micrographs(tmp_path: Path) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    warehouse.write_rows("trial", "b-00001", _rows("b-00001", 4))
    updated = [{"micrograph": "b-00001_m002", "batch": "b-00001", "value": 99.0}]
    assert warehouse.write_rows("trial", "b-00001", updated, replace_micrographs={"b-00001_m002"}) == 4
    frame = warehouse.read_rows("trial", "b-00001").set_index("micrograph")
    assert frame.loc["b-00001_m002", "value"] == 99.0
    assert frame.loc["b-00001_m001", "value"] == 1.0


def test_concurrent_runs_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """Six processes write 24 partitions, two of them racing on the same partitions three times each."""
    root = str(tmp_path)
    ctx = mp.get_context("spawn")
    plan = [[f"b-{i:05d}" for i in range(k * 4, k * 4 + 4)] for k in range(6)]
    plan.append(plan[0])  # a second writer racing on the first worker's partitions (a rerun in parallel)
    workers = [ctx.Process(target=_writer, args=(root, batches, 7, 3)) for batches in plan]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    warehouse = ScoreWarehouse(root=root)
    frame = warehouse.query(
        "SELECT count(*) AS n, count(DISTINCT micrograph) AS d, count(DISTINCT batch) AS b FROM trial"
    )
    assert (int(frame["n"][0]), int(frame["d"][0]), int(frame["b"][0])) == (24 * 7, 24 * 7, 24)
    assert not list((tmp_path / "tables" / "trial").glob(".*part")), "temporary files left behind"


def _claim(root: str, key: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    queue.put(ScoreWarehouse(root=root).write_document_once("manifests", key, {"owner": mp.current_process().name}))


def test_manifest_is_created_exactly_once_under_a_race(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_claim, args=(str(tmp_path), "s-00001", queue)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    outcomes = [queue.get(timeout=5) for _ in workers]
    assert sorted(outcomes) == [False, False, False, True]


def test_exported_views_file_is_readable_while_another_process_holds_it(tmp_path: Path) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    warehouse.write_rows("trial", "a-00001", _rows("a-00001", 3))
    path = warehouse.export_views()
    with (
        duckdb.connect(str(path), read_only=True) as first,
        duckdb.connect(str(path), read_only=True) as second,
    ):
        assert first.execute("SELECT count(*) FROM trial").fetchone() == (3,)
        assert second.execute("SELECT count(*) FROM trial").fetchone() == (3,)


def test_names_are_checked(tmp_path: Path) -> None:
    warehouse = ScoreWarehouse(root=str(tmp_path))
    with pytest.raises(ValueError, match="partition"):
        warehouse.write_rows("trial", "../escape", _rows("x", 1))
    with pytest.raises(ValueError, match="table"):
        warehouse.write_rows("trial; DROP", "a", _rows("x", 1))


@pytest.mark.parametrize("stray", ["hyperscores.bak", "tmp copy"])
def test_stray_folders_under_tables_do_not_break_queries_or_exports(tmp_path: Path, stray: str) -> None:
    """A backup copy (``hyperscores.bak``) or a desktop copy (``tmp copy``) of a table folder is ignored."""
    warehouse = ScoreWarehouse(root=str(tmp_path / "warehouse"))
    warehouse.write_rows("trial", "a-00001", _rows("a-00001", 3))
    warehouse.write_rows("trial", "a-00002", _rows("a-00002", 4))
    tables = tmp_path / "warehouse" / "tables"
    (tables / stray).mkdir()
    shutil.copy(tables / "trial" / "a-00001.parquet", tables / stray / "a-00001.parquet")

    assert warehouse.tables() == ["trial"]
    assert "trial" in warehouse.views() and stray not in warehouse.views()
    assert int(warehouse.query("SELECT count(*) AS n FROM trial")["n"][0]) == 7
    exported = {p.name: p for p in warehouse.export_parquet(tmp_path / "export")}
    assert stray + ".parquet" not in exported
    assert len(pd.read_parquet(exported["trial.parquet"])) == 7
    with duckdb.connect(str(warehouse.export_views()), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM trial").fetchone() == (7,)


def test_view_names_are_quoted_in_the_generated_sql(tmp_path: Path) -> None:
    """Table names that are SQL keywords still make working views (identifiers are double-quoted)."""
    warehouse = ScoreWarehouse(root=str(tmp_path))
    warehouse.write_rows("select", "a-00001", _rows("a-00001", 2))
    warehouse.write_rows("order", "a-00001", _rows("a-00001", 5))
    assert {"order", "select"} <= set(warehouse.views())
    assert int(warehouse.query('SELECT count(*) AS n FROM "order"')["n"][0]) == 5
    assert int(warehouse.query('SELECT count(*) AS n FROM "select"')["n"][0]) == 2
    assert {"order.parquet", "select.parquet"} <= {p.name for p in warehouse.export_parquet(tmp_path / "export")}


def test_a_declared_table_keeps_its_types_and_answers_before_its_first_row(tmp_path: Path) -> None:
    """A column that is null in one batch is still a string, and a quarantine query on a fresh warehouse
    returns no rows instead of failing."""
    from cryodecon_resources.tables import TABLES
    from cryodecon_resources.warehouse import UndeclaredColumnError

    warehouse = ScoreWarehouse(root=str(tmp_path))
    assert warehouse.query("SELECT count(*) AS n FROM quarantine")["n"][0] == 0
    assert warehouse.query("SELECT * FROM micrograph_scores").empty
    row = {"micrograph": "m", "batch": "b-00001", "kind": "micrograph", "grid_square_id": None}
    warehouse.write_rows("micrographs", "b-00001", [row])
    schema = pq.read_schema(tmp_path / "tables" / "micrographs" / "b-00001.parquet")
    assert schema.names == [c.name for c in TABLES["micrographs"].columns]
    assert str(schema.field("grid_square_id").type) == "string" and str(schema.field("drift_total_px").type) == "double"
    with pytest.raises(UndeclaredColumnError, match="'defocus'"):
        warehouse.write_rows("micrographs", "b-00001", [{**row, "defocus": 1.0}])
