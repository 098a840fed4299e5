"""Several OS processes writing the warehouse and the structure library at once.

Dagster steps run in separate processes (Celery workers, possibly on several machines over one shared
filesystem), so both stores must survive writers racing on the same table, and on the same partition or
batch.  The processes here are started with the ``spawn`` context, as separate interpreters: no state is
shared except the files.  One pool of ``_WORKERS`` processes serves both tests (starting an interpreter
that imports dagster, torch and lancedb costs ≈ 5 s of CPU, most of this file's run time); each scenario
hands one task to every worker and starts them together with a file barrier.

Warehouse: four writers replace 2 tables × 10 partitions each (their own partitions, plus partitions two
of them race on with full replacements, plus partitions two of them update micrograph by micrograph with
``replace_micrographs``), while a reader queries the DuckDB views in a loop and checks every partition it
sees is whole (one generation, no duplicate micrographs).  LanceDB: four writers register batches into a
table that does not exist yet (so they also race on creating it), all four on three shared batch keys,
while a fifth re-registers one session's classes with a changing count (the rows it replaces) in a second
table, and the test process itself reads both tables throughout (a batch once seen must keep exactly its
rows).  The final state is checked exactly in both stores.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import pytest

from cryodecon_resources.structure_library import StructureLibrary
from cryodecon_resources.warehouse import ScoreWarehouse

pytestmark = pytest.mark.slow

T = TypeVar("T")

_WORKERS = 5
_START_TIMEOUT_S = 120.0
_TASK_TIMEOUT_S = 120.0

# ---- warehouse plan -------------------------------------------------------------------------------------
_TABLES = ("trial_ctf", "trial_scores")
_OWN_PARTITIONS = 6  # per writer, written only by that writer
_OWN_ROWS = 5
_RACED_PARTITIONS = 4  # full replacements by writers 0 and 1
_RACED_ROWS = 6
_SPLIT_PARTITIONS = 4  # writers 2 and 3 each replace half of the micrographs (replace_micrographs)
_SPLIT_ROWS = 8
_ROUNDS = 10

# ---- library plan ---------------------------------------------------------------------------------------
_DIMENSION = 8
_BATCHES_PER_WRITER = 6
_BATCH_ROWS = 4
_SHARED_BATCHES = ("shared-0", "shared-1", "shared-2")  # registered by all four writers at once
_SHARED_ROWS = 5
_CLASS_COUNTS = (3, 7, 1, 5, 2, 6)  # the session's selected classes, registration after registration


# ---- worker side ----------------------------------------------------------------------------------------
def _ready() -> None:
    """Pool initializer: nothing to do; importing this module (dagster, lancedb) is the warm-up."""


def _wait_for_start(barrier: Path, name: str) -> None:
    """Announce ``name`` as ready and block until the test creates ``go``."""
    (barrier / f"ready-{name}").touch()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: no start signal after {_START_TIMEOUT_S} s")
        time.sleep(0.005)


def _task(barrier: str, name: str, work: Callable[[], Any]) -> Any:
    """Run ``work`` after the barrier; an exception comes back as its traceback text (easy to read in pytest)."""
    _wait_for_start(Path(barrier), name)
    try:
        return work()
    except Exception:
        return {"error": f"{name}: {traceback.format_exc()}"}


def _rows(partition: str, micrographs: range | list[int], tag: int) -> list[dict[str, object]]:
    return [
        {"micrograph": f"{partition}_m{i:03d}", "batch": partition, "tag": tag, "value": float(i)} for i in micrographs
    ]


def _own(k: int) -> list[str]:
    return [f"w{k}-{j:03d}" for j in range(_OWN_PARTITIONS)]


def _raced() -> list[str]:
    return [f"raced-{j:03d}" for j in range(_RACED_PARTITIONS)]


def _split() -> list[str]:
    return [f"split-{j:03d}" for j in range(_SPLIT_PARTITIONS)]


def _warehouse_writer(root: str, barrier: str, k: int) -> dict[str, int]:
    """Writer ``k`` (0–3): its own partitions, plus raced (k = 0, 1) or split (k = 2, 3) partitions."""
    warehouse = ScoreWarehouse(root=root)
    writes = 0
    for round_ in range(_ROUNDS):
        tag = 100 * k + round_
        for table in _TABLES:
            for partition in _own(k):
                warehouse.write_rows(table, partition, _rows(partition, range(_OWN_ROWS), tag))
                writes += 1
            if k in (0, 1):
                for partition in _raced():
                    warehouse.write_rows(table, partition, _rows(partition, range(_RACED_ROWS), tag))
                    writes += 1
            else:
                mine = [i for i in range(_SPLIT_ROWS) if i % 2 == k - 2]
                for partition in _split():
                    chosen = {f"{partition}_m{i:03d}" for i in mine}
                    warehouse.write_rows(table, partition, _rows(partition, mine, tag), replace_micrographs=chosen)
                    writes += 1
    (Path(barrier) / f"done-{k}").touch()  # the reader stops once all four are done
    return {"writes": writes}


def _warehouse_reader(root: str, barrier: str) -> dict[str, Any]:
    """Query the views until the four writers are done; every partition seen must be whole, of one generation."""
    warehouse = ScoreWarehouse(root=root)
    expected = {"w": _OWN_ROWS, "raced": _RACED_ROWS, "split": _SPLIT_ROWS}
    sql = """
        SELECT batch, count(*) AS n, count(DISTINCT micrograph) AS d, count(DISTINCT tag) AS tags
        FROM {table} GROUP BY batch
    """
    queries = 0
    problems: list[str] = []
    kept = None  # a long-lived connection too, as a dashboard keeps one (DuckDB caches file data per instance)
    while len(list(Path(barrier).glob("done-*"))) < 4 or queries == 0:
        connection = warehouse.connect()
        if kept is None and set(warehouse.tables()) == set(_TABLES):
            kept = warehouse.connect()
        for current in (connection, kept):
            if current is None:
                continue
            for table in warehouse.tables():
                for batch, n, d, tags in current.execute(sql.format(table=table)).fetchall():
                    want = expected[batch.split("-")[0].rstrip("0123456789")]
                    # A split partition mixes both writers' generations by design; all others hold one.
                    whole = n == d == want and (tags == 1 or batch.startswith("split"))
                    if not whole:
                        problems.append(f"{table}/{batch}: {n} rows, {d} micrographs, {tags} generations")
            queries += 1
        connection.close()
        if len(problems) > 20:
            break
    return {"queries": queries, "problems": problems}


class _CountingLibrary(StructureLibrary):
    """The library, counting the failed write attempts its retry loop absorbs (commit conflicts)."""

    def _retrying(self, write: Callable[[], T]) -> T:
        def counted() -> T:
            try:
                return write()
            except Exception:
                _FAILED_ATTEMPTS[0] += 1
                raise

        return super()._retrying(counted)


_FAILED_ATTEMPTS = [0]  # per worker process; reset by each task


def _library_writer(uri: str, k: int) -> dict[str, int]:
    """Register the shared batches (all writers race on those), this writer's own, then rerun half of its own."""
    _FAILED_ATTEMPTS[0] = 0
    library = _CountingLibrary(uri=uri)
    rng = np.random.default_rng(k)
    batches = [f"w{k}-b{j}" for j in range(_BATCHES_PER_WRITER)]
    # All four start together on the shared batches, each registered three times in a row, so their
    # writes of one batch key overlap; then their own batches, then reruns of half of those.
    plan = [b for b in _SHARED_BATCHES for _ in range(3)] + batches + batches[::2]
    for batch in plan:
        n = _SHARED_ROWS if batch in _SHARED_BATCHES else _BATCH_ROWS
        vectors = _unit_vectors(rng, n)
        library.add_embeddings(vectors, [f"{batch}:{i}" for i in range(n)], batch, f"session-{k}", [None] * n, 10.0 * k)
    return {"registrations": len(plan), "failed_attempts": _FAILED_ATTEMPTS[0]}


def _class_replacer(uri: str) -> dict[str, int]:
    """Register one session's selected classes again and again, each time replacing the session's rows."""
    _FAILED_ATTEMPTS[0] = 0
    library = _CountingLibrary(uri=uri, table_name="class_averages")
    rng = np.random.default_rng(99)
    for n in _CLASS_COUNTS:
        ids = [f"s1:class-{i + 1}" for i in range(n)]
        assert library.add_embeddings(_unit_vectors(rng, n), ids, "session-s1", "s1", [None] * n, 5.0) == n
    # The same table also gets a second session's rows once, so the replacement must leave them alone.
    library.add_embeddings(_unit_vectors(rng, 2), ["s2:class-1", "s2:class-2"], "session-s2", "s2", [None] * 2, 6.0)
    return {"registrations": len(_CLASS_COUNTS) + 1, "failed_attempts": _FAILED_ATTEMPTS[0]}


def _unit_vectors(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    vectors = rng.normal(size=(n, _DIMENSION))
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


# ---- test side ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(_WORKERS, mp_context=mp.get_context("spawn"), initializer=_ready) as executor:
        yield executor


def _run_together(
    pool: ProcessPoolExecutor,
    barrier: Path,
    tasks: dict[str, Callable[[], Any]],
    watch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Hand one task to each worker, release them together once all are waiting, and collect the results.

    ``watch``, if given, is called in this (the test's own) process again and again until all tasks are done:
    one more concurrent reader.
    """
    assert len(tasks) == _WORKERS, "one task per worker, or a task would wait for a worker that never frees"
    barrier.mkdir()
    futures: dict[str, Future[Any]] = {
        name: pool.submit(_task, str(barrier), name, work) for name, work in tasks.items()
    }
    deadline = time.monotonic() + _START_TIMEOUT_S
    while len(list(barrier.glob("ready-*"))) < len(tasks):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.01)
    started = time.perf_counter()
    (barrier / "go").touch()
    while watch is not None and not all(f.done() for f in futures.values()):
        watch()
    results = {name: f.result(timeout=_TASK_TIMEOUT_S) for name, f in futures.items()}
    results["seconds"] = time.perf_counter() - started
    errors = [r["error"] for r in results.values() if isinstance(r, dict) and "error" in r]
    assert not errors, "\n".join(errors)
    return results


def test_warehouse_partitions_survive_concurrent_writers_and_a_reader(
    pool: ProcessPoolExecutor, tmp_path: Path
) -> None:
    root = str(tmp_path / "warehouse")
    warehouse = ScoreWarehouse(root=root)
    for table in _TABLES:  # the split partitions exist before the race, as after a batch's first run
        for partition in _split():
            warehouse.write_rows(table, partition, _rows(partition, range(_SPLIT_ROWS), tag=-1))
    barrier = str(tmp_path / "barrier")
    tasks: dict[str, Callable[[], Any]] = {
        f"writer-{k}": partial(_warehouse_writer, root, barrier, k) for k in range(4)
    }
    tasks["reader"] = partial(_warehouse_reader, root, barrier)
    results = _run_together(pool, tmp_path / "barrier", tasks)

    reader = results["reader"]
    assert reader["queries"] > 0
    assert not reader["problems"], "the reader saw partial, mixed or duplicated partitions:\n" + "\n".join(
        reader["problems"][:10]
    )
    # Every file is a whole Parquet file, and no temporary file is left behind.
    for table in _TABLES:
        directory = warehouse.table_dir(table)
        assert not list(directory.glob(".*.part")), "temporary files left behind"
        files = sorted(directory.glob("*.parquet"))
        assert len(files) == 4 * _OWN_PARTITIONS + _RACED_PARTITIONS + _SPLIT_PARTITIONS
        for path in files:
            pq.read_table(path)
    # Exact final contents: own partitions hold their writer's last round, raced ones one writer's last
    # round (last writer wins), split ones each half from its own writer's last round (no lost update).
    last = _ROUNDS - 1
    for table in _TABLES:
        rows = warehouse.query(f"SELECT batch, micrograph, tag FROM {table}")
        assert (
            len(rows)
            == 4 * _OWN_PARTITIONS * _OWN_ROWS + _RACED_PARTITIONS * _RACED_ROWS + _SPLIT_PARTITIONS * _SPLIT_ROWS
        )
        assert not rows.duplicated(["batch", "micrograph"]).any()
        tags = rows.groupby("batch")["tag"].agg(lambda t: sorted(set(t)))
        for k in range(4):
            assert all(tags[p] == [100 * k + last] for p in _own(k))
        assert all(tags[p] in ([last], [100 + last]) for p in _raced())
        split = rows[rows["batch"].str.startswith("split")]
        parity = split["micrograph"].str[-3:].astype(int) % 2
        assert (split["tag"] == 100 * (2 + parity) + last).all(), "a replace_micrographs update was lost"
    print(f"warehouse: {results['seconds']:.2f} s, reader {reader['queries']} queries")


class _LibraryReader:
    """Reads both tables while the writers run: a batch once seen stays, with exactly its rows, each id once.

    ``add_embeddings`` promises a reader sees a batch's old or new rows, never neither (one commit).
    """

    def __init__(self, uri: str) -> None:
        self.structures = StructureLibrary(uri=uri)
        self.classes = StructureLibrary(uri=uri, table_name="class_averages")
        self.seen: set[tuple[str, str]] = set()
        self.problems: list[str] = []
        self.reads = 0

    def __call__(self) -> None:
        for name, library in (("structures", self.structures), ("class_averages", self.classes)):
            table = library._open()
            if table is None:
                continue
            ids = table.search().select(["entry_id", "batch_key"]).limit(None).to_arrow()
            entry_ids = ids.column("entry_id").to_pylist()
            counts = Counter(ids.column("batch_key").to_pylist())
            if len(set(entry_ids)) != len(entry_ids):
                self.problems.append(f"{name}: duplicated entry ids")
            for batch, n in counts.items():
                allowed = _allowed_rows(batch)
                if n not in allowed:
                    self.problems.append(f"{name}/{batch}: {n} rows, expected one of {sorted(allowed)}")
            for gone in {b for t, b in self.seen if t == name} - set(counts):
                self.problems.append(f"{name}/{gone}: seen before, now missing")
            self.seen |= {(name, b) for b in counts}
            self.reads += 1


def _allowed_rows(batch: str) -> set[int]:
    if batch in _SHARED_BATCHES:
        return {_SHARED_ROWS}
    if batch == "session-s1":
        return set(_CLASS_COUNTS)
    if batch == "session-s2":
        return {2}
    return {_BATCH_ROWS}


def test_library_tables_survive_concurrent_writers(pool: ProcessPoolExecutor, tmp_path: Path) -> None:
    uri = str(tmp_path / "library")
    tasks: dict[str, Callable[[], Any]] = {f"writer-{k}": partial(_library_writer, uri, k) for k in range(4)}
    tasks["classes"] = partial(_class_replacer, uri)
    reader = _LibraryReader(uri)
    results = _run_together(pool, tmp_path / "barrier", tasks, watch=reader)
    assert reader.reads > 0
    assert not reader.problems, "the reader saw a batch missing, partial or duplicated:\n" + "\n".join(
        reader.problems[:10]
    )

    structures = StructureLibrary(uri=uri)
    table = structures._open()
    assert table is not None
    ids = table.to_arrow().column("entry_id").to_pylist()
    expected = {f"w{k}-b{j}/{i}" for k in range(4) for j in range(_BATCHES_PER_WRITER) for i in range(_BATCH_ROWS)}
    expected |= {f"{b}/{i}" for b in _SHARED_BATCHES for i in range(_SHARED_ROWS)}
    assert len(ids) == len(expected), f"{len(ids)} rows, expected {len(expected)}"
    assert sorted(ids) == sorted(expected)  # every id once: nothing lost, nothing duplicated
    assert structures.count() == len(expected)
    probe = np.asarray(table.search().where("entry_id = 'w2-b1/3'").to_arrow().column("vector").to_pylist(), np.float32)
    distances, hits = structures.nearest(probe, k=3)
    assert hits[0][0].entry_id == "w2-b1/3" and distances[0, 0] == pytest.approx(0.0, abs=1e-5)

    classes = StructureLibrary(uri=uri, table_name="class_averages")
    class_table = classes._open()
    assert class_table is not None
    rows = class_table.to_arrow().to_pylist()
    last = _CLASS_COUNTS[-1]
    assert sorted(r["entry_id"] for r in rows) == sorted(
        [f"session-s1/{i}" for i in range(last)] + ["session-s2/0", "session-s2/1"]
    )
    assert sorted(r["structure_id"] for r in rows if r["session"] == "s1") == sorted(
        f"s1:class-{i + 1}" for i in range(last)
    )
    _, hits = classes.nearest(np.asarray([rows[0]["vector"]], np.float32), k=1)
    assert hits[0][0].entry_id == rows[0]["entry_id"]
    failed = sum(r["failed_attempts"] for r in results.values() if isinstance(r, dict))
    print(f"library: {results['seconds']:.2f} s, {len(ids)} + {len(rows)} rows, {failed} failed attempts retried")


def _first_registration(uri: str, k: int) -> dict[str, int]:
    """One batch of one row into a library that does not exist yet: every worker creates its table at once."""
    _FAILED_ATTEMPTS[0] = 0
    vector = np.zeros((1, _DIMENSION), dtype=np.float32)
    vector[0, k] = 1.0
    _CountingLibrary(uri=uri).add_embeddings(vector, [f"first-{k}"], f"first-{k}", "s", [None], 0.0)
    return {"failed_attempts": _FAILED_ATTEMPTS[0]}


def test_a_library_created_by_several_writers_at_once_keeps_every_row(
    pool: ProcessPoolExecutor, tmp_path: Path
) -> None:
    """Lance rebases a second, concurrent creation of a table as an Overwrite, emptying it; the library serialises
    creation, so five writers racing to create and fill a fresh library leave all five rows."""
    for trial in range(6):
        uri = str(tmp_path / f"library-{trial}")
        tasks: dict[str, Callable[[], Any]] = {
            f"writer-{k}": partial(_first_registration, uri, k) for k in range(_WORKERS)
        }
        _run_together(pool, tmp_path / f"barrier-{trial}", tasks)
        table = StructureLibrary(uri=uri)._open()
        assert table is not None
        assert sorted(table.to_arrow().column("structure_id").to_pylist()) == [f"first-{k}" for k in range(_WORKERS)]
