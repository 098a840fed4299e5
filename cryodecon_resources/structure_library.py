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
"""

from __future__ import annotations

import functools
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dagster as dg
import lancedb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from lancedb.index import IvfPq
from pydantic import Field

REFERENCE_BATCH_KEY = "reference"
# Below this many rows an exhaustive (flat) search is exact and fast enough.
ANN_INDEX_MIN_ROWS = 100_000
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
    """

    uri: str = Field(description="LanceDB folder holding the library table.")
    table_name: str = Field(default="structures", description="Name of the LanceDB table.")
    write_retries: int = Field(default=8, description="Attempts of a write that meets a commit conflict.")

    # --- plumbing ------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        return lancedb.connect(self.uri)

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
        def create() -> Any:
            return self._connect().create_table(self.table_name, schema=_schema(dimension), exist_ok=True)

        table = self._open()
        if table is None:
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
        if len(structure_ids) != n or len(paper_ids) != n:
            raise ValueError(f"{n} embeddings but {len(structure_ids)} structure_ids and {len(paper_ids)} paper_ids")
        if not math.isfinite(registered_before_s):
            raise ValueError(f"registered_before_s must be finite, got {registered_before_s}")
        schema = _schema(dimension)
        data = pa.table(
            {
                "entry_id": [f"{batch_key}/{i}" for i in range(n)],
                "batch_key": [batch_key] * n,
                "session": [session] * n,
                "structure_id": [str(s) for s in structure_ids],
                "paper_id": [None if p is None else str(p) for p in paper_ids],
                "registered_s": [float(registered_before_s)] * n,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dimension),
            },
            schema=schema,
        )
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

    def build_index(self, min_rows: int = ANN_INDEX_MIN_ROWS) -> bool:
        """Create LanceDB's recommended ANN index (IVF-PQ, cosine) once the table exceeds ``min_rows``.

        Below that an exhaustive search is exact and fast (a 64-d flat scan of 100k rows is a few ms), so
        this is a no-op returning False.  Above it, IVF-PQ with LanceDB's default partitioning is created
        (replacing an older one; call again after large additions to retrain) and :meth:`nearest` becomes
        approximate.  Returns whether an index was built.
        """
        if self.count() <= min_rows:
            return False
        table = self._open()
        if table is None:
            return False
        self._retrying(lambda: table.create_index("vector", config=IvfPq(distance_type="cosine"), replace=True))
        return True

    # --- reads -------------------------------------------------------------------------------------------
    def count(self) -> int:
        """Number of rows in the library (0 when the table does not exist yet)."""
        table = self._open()
        return 0 if table is None else int(table.count_rows())

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

    @staticmethod
    def _search(table: Any, queries: npt.NDArray[np.float32], where: str | None, k: int) -> list[dict[str, Any]]:
        """Rows of a (multi-vector) search, each with ``query_index``, sorted by query then distance."""
        vectors = [q for q in queries]
        query = table.search(vectors if len(vectors) > 1 else vectors[0], vector_column_name="vector")
        query = query.distance_type("cosine").limit(k).select(_RESULT_COLUMNS)
        if where is not None:
            query = query.where(where, prefilter=True)
        rows: list[dict[str, Any]] = query.to_arrow().to_pylist()
        for row in rows:
            row.setdefault("query_index", 0)
        rows.sort(key=lambda r: (r["query_index"], r["_distance"]))
        return rows

    def library_nn_distances(self, sample: int = 2000, seed: int = 0) -> npt.NDArray[np.float64]:
        """Each sampled entry's cosine distance to its nearest entry from *another batch*.

        The calibration sample for ``embedding.novelty_score``.  It mirrors how a batch is queried
        (``nearest(..., exclude_batch=batch_key)``): a batch's particles are many views of one sample and
        each other's near-duplicates, so neighbours inside the entry's own batch are left out, as the
        query leaves out its own batch.  Reference entries (batch ``"reference"``) are independent
        published structures: for them only the entry itself is left out.  Entries with no qualifying
        neighbour (a library holding a single batch) contribute nothing.

        Parameters
        ----------
        sample : int
            At most this many entries, drawn uniformly without replacement (all when the library is
            smaller).
        seed : int
            Seed of the sample, for reproducible calibration.

        Returns
        -------
        ndarray of float64, shape (m,)
            m ≤ min(sample, count()); empty for a library with fewer than two entries.
        """
        table = self._open()
        total = 0 if table is None else int(table.count_rows())
        if table is None or total < 2:
            return np.zeros(0)
        rng = np.random.default_rng(seed)
        offsets = np.arange(total) if total <= sample else np.sort(rng.choice(total, size=sample, replace=False))
        picked = table.take_offsets([int(o) for o in offsets]).select(["entry_id", "batch_key", "vector"]).to_arrow()
        entry_ids = picked.column("entry_id").to_pylist()
        batches = picked.column("batch_key").to_pylist()
        vectors = np.asarray(picked.column("vector").to_pylist(), dtype=np.float32)
        out: list[float] = []
        for batch in sorted(set(batches)):
            members = [i for i, b in enumerate(batches) if b == batch]
            if batch == REFERENCE_BATCH_KEY:
                rows = self._search(table, vectors[members], None, 2)
                for local, i in enumerate(members):
                    others = [r for r in rows if r["query_index"] == local and r["entry_id"] != entry_ids[i]]
                    if others:
                        out.append(float(others[0]["_distance"]))
            else:
                rows = self._search(table, vectors[members], f"batch_key != '{_checked_key('batch_key', batch)}'", 1)
                out.extend(float(r["_distance"]) for r in rows)
        return np.asarray(out, dtype=np.float64)
