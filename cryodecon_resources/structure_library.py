"""The structure library: particle/structure embeddings in a LanceDB table, for novelty and impact.

One row per embedding:

=============== =============================== ==================================================
column          type                            meaning
=============== =============================== ==================================================
entry_id        string                          ``"{batch_key}/{index}"``, unique
batch_key       string                          the batch (partition key) that registered the row;
                                                ``"reference"`` for seeded known structures
session         string                          acquisition session of the batch
structure_id    string                          what the embedding represents (particle, class, PDB)
paper_id        string (nullable)               paper describing the structure, for ImpactFore
registered_s    float64                         Unix time (s) from which the entry counts as known
vector          fixed_size_list<float32>[d]     L2-normalised embedding (``embed_particles``)
=============== =============================== ==================================================

Distance: **cosine distance** 1 − cos(e, e′) (LanceDB ``distance_type("cosine")``), in [0, 2]; for the
unit vectors ``embed_particles`` returns it equals ½‖e − e′‖², so ranking matches L2.

Writes replace a batch atomically with one ``merge_insert`` (match on ``entry_id``, insert new rows,
delete the batch's rows that are no longer present): rerunning a batch never duplicates rows, and a
reader sees either the old or the new batch, never neither.  LanceDB commits optimistically.  Two
processes writing the *same* batch at once would both insert its new keys (a documented limitation of
merge_insert without a key declaration, lance-format/lance#4585); ``entry_id`` is therefore declared
as the table's unenforced primary key, which makes Lance detect that race and re-run the losing merge,
so it updates instead of duplicating.  A conflict that exhausts Lance's internal retries raises; each
write is then retried here with exponential backoff (LanceDB's advice, lancedb/lancedb#1597).

ANN index (for the 10⁷-entry library).  Below ``ANN_INDEX_MIN_ROWS`` (100 000) rows every search is an
exact flat scan.  :meth:`StructureLibrary.build_index` creates an **IVF-PQ** index (cosine) with exact
re-ranking: ``num_partitions = ceil(rows / index_partition_rows)`` (4096 rows per partition by default,
so the work per probe stays constant as the library grows), ``num_sub_vectors = d / 4`` (16 one-byte
codes for the 64-d embedding), and at query time ``nprobes = 20`` partitions are scanned and the best
``refine_factor · k`` (10 · k) candidates are re-ranked with the stored float32 vectors, so the returned
distances are exact.  ``benchmarks/bench_library_ann.py`` chose these: at 10⁶ embedding-like vectors on 2 cores a top-10
``nearest`` takes ≈ 9 ms (median) with recall@10 ≈ 0.999 against exact search, the index builds in ≈ 1 min
(figures in ``benchmarks/results/library_ann.md``).  Tight clusters of ≥ 100 near-identical vectors
need ``refine_factor = 20`` (recall 0.70 → 0.99, +2 ms); uniform random vectors, the worst case, miss
the goal at any setting below ≈ 15 ms.  IVF_HNSW_SQ took ≈ 2.5× longer to build in a 2·10⁵-row trial.
Rows added after the index was built are still searched exactly (LanceDB scans unindexed rows
and merges them), so results stay correct between maintenance runs.

Maintenance.  :meth:`StructureLibrary.compact` (a scheduled job) runs LanceDB's ``optimize``: it merges
the small fragments every batch commit leaves, adds unindexed rows to the ANN index, and deletes table
versions older than ``cleanup_older_than_s`` (default 7 days, long enough that no running reader still
uses them).  :meth:`StructureLibrary.build_index` retrains the index from scratch (after the library has
grown several-fold); :meth:`StructureLibrary.index_info` reports the index state.  For seeding a large
library (references, benchmarks), :meth:`StructureLibrary.bulk_append` appends a *new* batch without the
merge.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import lancedb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from lancedb.background_loop import LOOP
from lancedb.index import IvfPq
from pydantic import Field

from cryodecon_resources.locks import exclusive_lock

REFERENCE_BATCH_KEY = "reference"


def is_reference_batch(batch_key: str) -> bool:
    """Whether rows of this batch are known, published structures (``reference`` or ``reference-<id>``)."""
    return batch_key == REFERENCE_BATCH_KEY or batch_key.startswith(f"{REFERENCE_BATCH_KEY}-")


# Below this many rows an exhaustive (flat) search is exact and fast enough.
ANN_INDEX_MIN_ROWS = 100_000
# One LanceDB session (index and metadata caches) for every connection this process opens: each call opens
# the table afresh (it sees the latest version) but finds the ANN index already in memory.  A connection
# of its own would reload the index partitions on every query (≈ +3 ms per query at 10⁶ rows).
_SESSION = lancedb.Session()
_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")
_CONFLICT = re.compile(r"conflict|contention|concurrent", re.IGNORECASE)
_PRIMARY_KEY_METADATA = "lance-schema:unenforced-primary-key"
_RESULT_COLUMNS = [
    "entry_id",
    "batch_key",
    "session",
    "structure_id",
    "paper_id",
    "registered_s",
    "_distance",
]

T = TypeVar("T")


@dataclass(frozen=True)
class LibraryHit:
    """One neighbour returned by :meth:`StructureLibrary.nearest`; ``distance`` is the cosine distance."""

    entry_id: str
    batch_key: str
    session: str
    structure_id: str
    paper_id: str | None
    registered_s: float
    distance: float


def _schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            # Declared (unenforced) primary key: Lance's merge_insert then records the keys it inserts and
            # turns two concurrent inserts of the same key into a retryable conflict instead of
            # duplicate rows (lance-format/lance#4585, #5633).
            pa.field("entry_id", pa.string(), nullable=False, metadata={_PRIMARY_KEY_METADATA: "true"}),
            ("batch_key", pa.string()),
            ("session", pa.string()),
            ("structure_id", pa.string()),
            ("paper_id", pa.string()),
            ("registered_s", pa.float64()),
            ("vector", pa.list_(pa.float32(), dimension)),
        ]
    )


def _checked_key(name: str, value: str) -> str:
    if not _SIMPLE_KEY.match(value):
        raise ValueError(f"{name} must match {_SIMPLE_KEY.pattern} (it is used in filters), got {value!r}")
    return value


def _as_matrix(embeddings: npt.ArrayLike) -> npt.NDArray[np.float32]:
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"embeddings must have shape (n, d) with d > 0, got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("embeddings contain NaN or Inf")
    return matrix


class StructureLibrary(dg.ConfigurableResource):
    """Known structures' embeddings in a LanceDB folder (module docstring for schema and distance).

    Attributes
    ----------
    uri : str
        LanceDB folder (local path or object-store URI), e.g. ``dg.EnvVar("CRYODECON_LIBRARY_URI")``.
    table_name : str
        Table inside the folder.
    write_retries : int
        Attempts of a write that meets a concurrent commit before the error propagates.
    index_partition_rows : int
        IVF partition size the index aims at, rows: ``num_partitions = ceil(rows / index_partition_rows)``.
    index_num_sub_vectors : int
        PQ codes (one byte each) per vector; 0 derives ``d / 4`` (16 for 64-d; the largest divisor of d
        not above d / 4 otherwise).
    nprobes : int
        IVF partitions scanned per query when an index exists.
    refine_factor : int
        With an index, ``refine_factor · k`` PQ candidates are re-ranked with the exact float32 vectors.
    cleanup_older_than_s : float
        :meth:`compact` deletes table versions older than this many seconds (default 7 days).
    """

    uri: str = Field(description="LanceDB folder holding the library table.")
    table_name: str = Field(default="structures", description="Name of the LanceDB table.")
    write_retries: int = Field(default=8, description="Attempts of a write that meets a commit conflict.")
    index_partition_rows: int = Field(
        default=4096, ge=1, description="Target rows per IVF partition: num_partitions = ceil(rows / this)."
    )
    index_num_sub_vectors: int = Field(
        default=0, ge=0, description="PQ sub-vectors (1 byte each) per vector; 0 = d/4 (16 for 64-d)."
    )
    nprobes: int = Field(default=20, ge=1, description="IVF partitions scanned per query when indexed.")
    refine_factor: int = Field(
        default=10, ge=1, description="Indexed queries re-rank refine_factor*k candidates with exact vectors."
    )
    cleanup_older_than_s: float = Field(
        default=7 * 24 * 3600.0, ge=0.0, description="compact() deletes table versions older than this (s)."
    )

    # --- plumbing ------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        return lancedb.connect(self.uri, session=_SESSION)

    def _open(self) -> Any | None:
        try:
            return self._connect().open_table(self.table_name)
        except ValueError:  # LanceDB: "Table '...' was not found"
            return None

    def _retrying(self, write: Callable[[], T]) -> T:
        """Run ``write``; on a commit conflict wait 50 ms · 2^attempt (± jitter) and run it again."""
        for attempt in range(self.write_retries):
            try:
                return write()
            except Exception as exc:
                if not _CONFLICT.search(str(exc)) or attempt == self.write_retries - 1:
                    raise
                time.sleep(0.05 * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _open_or_create(self, dimension: int) -> Any:
        """The table, created (empty) if missing.  Two processes creating it at once would both commit: Lance
        rebases the later creation onto the earlier table as an Overwrite, which empties it and fails every
        write begun on the first.  On a local library the creation is therefore serialised by a lock file
        beside the tables and checked again under the lock."""

        def create() -> Any:
            return self._connect().create_table(self.table_name, schema=_schema(dimension), exist_ok=True)

        table = self._open()
        if table is None and "://" not in self.uri:
            with exclusive_lock(Path(self.uri) / f".{self.table_name}.create.lock"):
                table = self._open()  # a table is falsy when empty (len): test for None
                if table is None:
                    table = self._retrying(create)
        elif table is None:
            table = self._retrying(create)
        stored = table.schema.field("vector").type.list_size
        if stored != dimension:
            raise ValueError(f"library {self.uri}/{self.table_name} holds {stored}-d vectors, got {dimension}-d")
        return table

    # --- writes ----------------------------------------------------------------------------------------
    def add_embeddings(
        self,
        embeddings: npt.ArrayLike,
        structure_ids: Sequence[str],
        batch_key: str,
        session: str,
        paper_ids: Sequence[str | None],
        registered_before_s: float,
    ) -> int:
        """Register a batch's embeddings, replacing whatever that batch registered before.

        Idempotent per ``batch_key``: the batch's rows become exactly these n rows, in one atomic commit
        (``merge_insert`` on ``entry_id`` with deletion of the batch's rows not in the new set), so a
        rerun never duplicates and a shorter rerun leaves no stale rows.  An empty ``embeddings`` removes
        the batch.

        Parameters
        ----------
        embeddings : array, shape (n, d)
            L2-normalised embeddings (float32 stored).
        structure_ids : sequence of str, length n
            What each row represents.
        batch_key : str
            The batch's partition key; simple characters ``[A-Za-z0-9_.:-]``.
        session : str
            Acquisition session.
        paper_ids : sequence of (str or None), length n
            Paper describing each structure, None when unpublished.
        registered_before_s : float
            Unix time (s) from which these rows count as known: ``nearest(before_s=t)`` sees them only
            when ``registered_before_s < t``.

        Returns
        -------
        int
            Number of rows the batch now holds.
        """
        _checked_key("batch_key", batch_key)
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.size == 0:
            existing = self._open()
            if existing is not None:
                self._retrying(functools.partial(existing.delete, f"batch_key = '{batch_key}'"))
            return 0
        matrix = _as_matrix(matrix)
        n, dimension = matrix.shape
        data = self._batch_table(matrix, structure_ids, batch_key, session, paper_ids, registered_before_s)
        table = self._open_or_create(dimension)

        def replace_batch() -> None:
            (
                table.merge_insert("entry_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(f"batch_key = '{batch_key}'")
                .execute(data)
            )

        self._retrying(replace_batch)
        return int(n)

    def seed_reference_structures(
        self,
        embeddings: npt.ArrayLike,
        structure_ids: Sequence[str],
        paper_ids: Sequence[str | None],
        registered_before_s: float = 0.0,
    ) -> int:
        """Register known (published) structures under ``batch_key = session = "reference"``.

        ``registered_before_s`` defaults to 0 (the Unix epoch): references count as known at any time.
        Idempotent like :meth:`add_embeddings`.
        """
        return self.add_embeddings(
            embeddings,
            structure_ids,
            REFERENCE_BATCH_KEY,
            REFERENCE_BATCH_KEY,
            paper_ids,
            registered_before_s,
        )

    def bulk_append(
        self,
        embeddings: npt.ArrayLike,
        structure_ids: Sequence[str],
        batch_key: str,
        session: str,
        paper_ids: Sequence[str | None],
        registered_before_s: float,
    ) -> int:
        """Append a *new* batch with a plain append instead of ``merge_insert`` (seeding, benchmarks).

        Same rows as :meth:`add_embeddings`, but no join against the existing table, so seeding 10⁶ rows
        costs seconds (``merge_insert`` scans the whole table per batch).  Not idempotent: it refuses a
        ``batch_key`` that already has rows (ValueError), and two processes appending the same new batch
        at once would both succeed, so use it only from a single seeding process.  Each call adds one
        fragment; :meth:`compact` merges them.

        Parameters and return value as :meth:`add_embeddings` (an empty ``embeddings`` adds nothing).
        """
        _checked_key("batch_key", batch_key)
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.size == 0:
            return 0
        data = self._batch_table(_as_matrix(matrix), structure_ids, batch_key, session, paper_ids, registered_before_s)
        table = self._open_or_create(matrix.shape[1])
        if table.count_rows(f"batch_key = '{batch_key}'") > 0:
            raise ValueError(f"batch {batch_key!r} already has rows; bulk_append only adds new batches")
        self._retrying(functools.partial(table.add, data))
        return int(data.num_rows)

    def index_parameters(self, rows: int, dimension: int) -> dict[str, int]:
        """IVF-PQ parameters :meth:`build_index` uses for ``rows`` vectors of ``dimension`` (rule in the attributes).

        Returns
        -------
        dict
            ``num_partitions`` (≥ 1, at most rows / 256 so each partition can train), ``num_sub_vectors``
            (a divisor of ``dimension``), ``nprobes`` and ``refine_factor`` (query time).
        """
        partitions = max(1, min(math.ceil(rows / self.index_partition_rows), rows // 256))
        sub_vectors = self.index_num_sub_vectors or max(1, dimension // 4)
        if dimension % sub_vectors != 0:
            if self.index_num_sub_vectors:
                raise ValueError(f"index_num_sub_vectors={sub_vectors} does not divide the dimension {dimension}")
            sub_vectors = max(s for s in range(1, sub_vectors + 1) if dimension % s == 0)
        return {
            "num_partitions": partitions,
            "num_sub_vectors": sub_vectors,
            "nprobes": self.nprobes,
            "refine_factor": self.refine_factor,
        }

    def build_index(self, min_rows: int = ANN_INDEX_MIN_ROWS) -> bool:
        """Create (or retrain) the IVF-PQ cosine index once the table holds more than ``min_rows`` rows.

        Below that an exhaustive search is exact and fast (a 64-d flat scan of 100k rows is a few ms), so
        this is a no-op returning False.  Above it an IVF-PQ index with :meth:`index_parameters` is built
        over all rows (replacing an older one), and :meth:`nearest` scans ``nprobes`` partitions and
        re-ranks ``refine_factor · k`` candidates exactly.  Call it from a scheduled job after the library
        has grown several-fold (new rows in between are searched exactly and added to the index by
        :meth:`compact`).  At 10⁶ 64-d rows it takes 40–70 s on 2 cores.  Returns whether an index was built.
        """
        table = self._open()
        if table is None:
            return False
        rows = int(table.count_rows())
        if rows <= min_rows:
            return False
        dimension = table.schema.field("vector").type.list_size
        parameters = self.index_parameters(rows, dimension)
        config = IvfPq(
            distance_type="cosine",
            num_partitions=parameters["num_partitions"],
            num_sub_vectors=parameters["num_sub_vectors"],
        )
        self._retrying(lambda: table.create_index("vector", config=config, replace=True))
        return True

    def compact(self, cleanup_older_than_s: float | None = None) -> dict[str, int | float]:
        """Table maintenance for a scheduled job: LanceDB ``optimize`` (compact, index new rows, prune).

        Merges the small fragments each batch commit leaves into larger files, adds rows written since
        the index was built to the ANN index (no retraining), and deletes table versions older than
        ``cleanup_older_than_s`` (default: the resource's, 7 days; the latest version is always kept).
        Rows and query results are unchanged.  Retried like a write on commit conflicts.

        Parameters
        ----------
        cleanup_older_than_s : float or None
            Age in seconds beyond which old versions are removed; 0 keeps only the latest version (safe
            only when no other process is reading an older version).

        Returns
        -------
        dict
            ``rows``; ``fragments_before`` / ``fragments_after``; ``fragments_removed`` /
            ``fragments_added`` (compaction); ``versions_pruned`` and ``bytes_pruned`` (bytes); ``seconds``
            (wall time, s); ``unindexed_rows`` after the run (0 when every row is indexed or there is no
            index).  All zero when the table does not exist.
        """
        age_s = self.cleanup_older_than_s if cleanup_older_than_s is None else float(cleanup_older_than_s)
        if not age_s >= 0.0:
            raise ValueError(f"cleanup_older_than_s must be >= 0, got {age_s}")
        keys = ("rows", "fragments_before", "fragments_after", "fragments_removed", "fragments_added")
        keys += ("versions_pruned", "bytes_pruned", "unindexed_rows")
        table = self._open()
        if table is None:
            return {**dict.fromkeys(keys, 0), "seconds": 0.0}
        fragments_before = int(table.stats()["fragment_stats"]["num_fragments"])

        async def optimize() -> Any:
            connection = await lancedb.connect_async(self.uri)
            async_table = await connection.open_table(self.table_name)
            return await async_table.optimize(cleanup_older_than=timedelta(seconds=age_s))

        started = time.perf_counter()
        # The synchronous Table.optimize discards LanceDB's statistics; the async one returns them.
        stats = self._retrying(lambda: LOOP.run(optimize()))
        seconds = time.perf_counter() - started
        table = self._open()
        info = self.index_info()
        return {
            "rows": int(table.count_rows()),
            "fragments_before": fragments_before,
            "fragments_after": int(table.stats()["fragment_stats"]["num_fragments"]),
            "fragments_removed": int(stats.compaction.fragments_removed),
            "fragments_added": int(stats.compaction.fragments_added),
            "versions_pruned": int(stats.prune.old_versions_removed),
            "bytes_pruned": int(stats.prune.bytes_removed),
            "unindexed_rows": int(info.get("unindexed_rows", 0)),
            "seconds": seconds,
        }

    def _batch_table(
        self,
        matrix: npt.NDArray[np.float32],
        structure_ids: Sequence[str],
        batch_key: str,
        session: str,
        paper_ids: Sequence[str | None],
        registered_before_s: float,
    ) -> pa.Table:
        """The Arrow rows of one batch (checked lengths and time), in the table's schema."""
        n, dimension = matrix.shape
        if len(structure_ids) != n or len(paper_ids) != n:
            raise ValueError(f"{n} embeddings but {len(structure_ids)} structure_ids and {len(paper_ids)} paper_ids")
        if not math.isfinite(registered_before_s):
            raise ValueError(f"registered_before_s must be finite, got {registered_before_s}")
        return pa.table(
            {
                "entry_id": [f"{batch_key}/{i}" for i in range(n)],
                "batch_key": [batch_key] * n,
                "session": [session] * n,
                "structure_id": [str(s) for s in structure_ids],
                "paper_id": [None if p is None else str(p) for p in paper_ids],
                "registered_s": [float(registered_before_s)] * n,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dimension),
            },
            schema=_schema(dimension),
        )

    # --- reads -------------------------------------------------------------------------------------------
    def count(self) -> int:
        """Number of rows in the library (0 when the table does not exist yet)."""
        table = self._open()
        return 0 if table is None else int(table.count_rows())

    def index_info(self) -> dict[str, Any]:
        """The ANN index's state, for UI metadata.

        Returns
        -------
        dict
            ``indexed`` (bool) and ``rows``; with an index also ``index_type`` (e.g. ``"IVF_PQ"``),
            ``distance_type``, ``indexed_rows``, ``unindexed_rows`` (added since, searched exactly until
            :meth:`compact`), ``index_bytes`` (bytes) and the index parameters LanceDB records
            (``num_sub_vectors``), plus the query-time ``nprobes`` and ``refine_factor``.
        """
        table = self._open()
        if table is None:
            return {"indexed": False, "rows": 0}
        rows = int(table.count_rows())
        configs = [c for c in table.list_indices() if list(c.columns) == ["vector"]]
        if not configs:
            return {"indexed": False, "rows": rows}
        config = configs[0]
        stats = table.index_stats(config.name)
        info: dict[str, Any] = {
            "indexed": True,
            "rows": rows,
            "index_name": config.name,
            "index_type": stats.index_type if stats is not None else str(config.index_type),
            "distance_type": stats.distance_type if stats is not None else None,
            "indexed_rows": int(stats.num_indexed_rows) if stats is not None else None,
            "unindexed_rows": int(stats.num_unindexed_rows) if stats is not None else None,
            "index_bytes": getattr(config, "size_bytes", None),
            "nprobes": self.nprobes,
            "refine_factor": self.refine_factor,
        }
        compression = (getattr(config, "index_details", None) or {}).get("compression") or {}
        if "num_sub_vectors" in compression:
            info["num_sub_vectors"] = int(compression["num_sub_vectors"])
        return info

    def nearest(
        self,
        embeddings: npt.ArrayLike,
        k: int = 1,
        before_s: float | None = None,
        exclude_batch: str | None = None,
    ) -> tuple[npt.NDArray[np.float64], list[tuple[LibraryHit, ...]]]:
        """The k nearest library entries of each query embedding, by cosine distance.

        Parameters
        ----------
        embeddings : array, shape (n, d)
            Query embeddings.
        k : int
            Neighbours per query, ≥ 1.
        before_s : float or None
            Only entries with ``registered_s < before_s`` (what was known at that time), e.g. the
            acquisition time of the batch, so a rerun today scores the batch as it was then.
        exclude_batch : str or None
            Leave out this batch's own rows (a batch must not find itself).

        Returns
        -------
        distances : ndarray of float64, shape (n, k)
            Cosine distances in increasing order; ``inf`` where fewer than k entries qualify.
        rows : list of tuple of LibraryHit
            For each query, its hits (at most k), nearest first.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = _as_matrix(embeddings)
        n = queries.shape[0]
        distances = np.full((n, k), np.inf)
        hits: list[list[LibraryHit]] = [[] for _ in range(n)]
        table = self._open()
        if table is None or n == 0:
            return distances, [tuple(h) for h in hits]
        filters = []
        if before_s is not None:
            if math.isnan(before_s):
                raise ValueError("before_s must not be NaN")
            filters.append(f"registered_s < {float(before_s)!r}")
        if exclude_batch is not None:
            filters.append(f"batch_key != '{_checked_key('exclude_batch', exclude_batch)}'")
        where = " AND ".join(filters) if filters else None
        result = self._search(table, queries, where, k)
        for row in result:
            i = row["query_index"]
            hit = LibraryHit(
                entry_id=row["entry_id"],
                batch_key=row["batch_key"],
                session=row["session"],
                structure_id=row["structure_id"],
                paper_id=row["paper_id"],
                registered_s=float(row["registered_s"]),
                distance=float(row["_distance"]),
            )
            distances[i, len(hits[i])] = hit.distance
            hits[i].append(hit)
        return distances, [tuple(h) for h in hits]

    def _search(self, table: Any, queries: npt.NDArray[np.float32], where: str | None, k: int) -> list[dict[str, Any]]:
        """Rows of a (multi-vector) search, each with ``query_index``, sorted by query then distance.

        Exact flat search without an index; with one, ``nprobes`` partitions and exact re-ranking of
        ``refine_factor · k`` candidates (rows not yet indexed are scanned exactly by LanceDB).
        """
        vectors = [q for q in queries]
        query = table.search(vectors if len(vectors) > 1 else vectors[0], vector_column_name="vector")
        query = query.distance_type("cosine").limit(k).select(_RESULT_COLUMNS)
        if any(list(c.columns) == ["vector"] for c in table.list_indices()):
            query = query.nprobes(self.nprobes).refine_factor(self.refine_factor)
        if where is not None:
            query = query.where(where, prefilter=True)
        rows: list[dict[str, Any]] = query.to_arrow().to_pylist()
        for row in rows:
            row.setdefault("query_index", 0)
        rows.sort(key=lambda r: (r["query_index"], r["_distance"]))
        return rows

    def library_nn_distances(
        self, sample: int = 2000, seed: int = 0, before_s: float | None = None
    ) -> npt.NDArray[np.float64]:
        """Each sampled entry's cosine distance to its nearest entry from *another batch*.

        The calibration sample for ``embedding.novelty_score``.  It mirrors how a batch is queried
        (``nearest(..., exclude_batch=batch_key)``): a batch's particles are many views of one sample and
        each other's near-duplicates, so neighbours inside the entry's own batch are left out, as the
        query leaves out its own batch.  Reference entries (batch ``"reference"``) are independent
        published structures: for them only the entry itself is left out.  Entries with no qualifying
        neighbour (a library holding a single batch) contribute nothing.

        With ``before_s`` only entries registered before it count, as samples and as neighbours: the
        library as it was known at that time, so a rerun of a batch is calibrated on what its first run
        saw, not on the batches registered since.  The sample is drawn by a seeded hash of the entry ids,
        not by row position, so compaction or a batch's re-registration does not change it.

        Parameters
        ----------
        sample : int
            At most this many entries (all when fewer qualify).
        seed : int
            Seed of the sample, for reproducible calibration.
        before_s : float or None
            Only entries with ``registered_s < before_s``.

        Returns
        -------
        ndarray of float64, shape (m,)
            m ≤ min(sample, qualifying entries); empty when fewer than two entries qualify.
        """
        table = self._open()
        if table is None or int(table.count_rows()) < 2:
            return np.zeros(0)
        known = None if before_s is None else f"registered_s < {float(before_s)!r}"
        query = table.search()
        if known is not None:
            query = query.where(known)
        ids = query.select(["entry_id"]).limit(None).to_arrow().column("entry_id").to_pylist()
        if len(ids) < 2:
            return np.zeros(0)
        if len(ids) > sample:
            rank = {e: hashlib.sha256(f"{seed}:{e}".encode()).digest() for e in ids}
            ids = sorted(ids, key=rank.__getitem__)[:sample]
        chosen = ", ".join("'" + e.replace("'", "''") + "'" for e in sorted(ids))
        picked = (
            table.search()
            .where(f"entry_id IN ({chosen})")
            .select(["entry_id", "batch_key", "vector"])
            .limit(None)
            .to_arrow()
            .sort_by("entry_id")
        )
        entry_ids = picked.column("entry_id").to_pylist()
        batches = picked.column("batch_key").to_pylist()
        vectors = np.asarray(picked.column("vector").to_pylist(), dtype=np.float32)
        out: list[float] = []
        # All reference batches ("reference", "reference-<id>" per seeded map) form one group: published
        # structures are independent of each other, so each is compared with every other entry.
        groups = sorted({REFERENCE_BATCH_KEY if is_reference_batch(b) else b for b in batches})
        for batch in groups:
            members = [
                i for i, b in enumerate(batches) if (REFERENCE_BATCH_KEY if is_reference_batch(b) else b) == batch
            ]
            if batch == REFERENCE_BATCH_KEY:
                rows = self._search(table, vectors[members], known, 2)
                for local, i in enumerate(members):
                    others = [r for r in rows if r["query_index"] == local and r["entry_id"] != entry_ids[i]]
                    if others:
                        out.append(float(others[0]["_distance"]))
            else:
                other = f"batch_key != '{_checked_key('batch_key', batch)}'"
                rows = self._search(table, vectors[members], other if known is None else f"{other} AND {known}", 1)
                out.extend(float(r["_distance"]) for r in rows)
        return np.asarray(out, dtype=np.float64)
