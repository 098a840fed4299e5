"""The score warehouse: Parquet files per (table, partition), read through DuckDB views.

DuckDB allows one writing process per database file, and every Dagster run is its own process.  So no
run ever opens a DuckDB database for writing: each run writes its rows as one Parquet file per table and
partition, ``<root>/tables/<table>/<partition>.parquet``, by writing a temporary file and renaming it over
the old one (``os.replace`` is atomic on POSIX).  A rerun of a partition replaces its file, so rows are
never duplicated; runs of different partitions touch different files, so none are lost.  Each write or
delete of a partition holds an exclusive ``flock`` on ``<table>/.<partition>.lock`` (a hidden file the views'
``*.parquet`` glob skips), so two runs updating different micrographs of one partition
(``replace_micrographs``: read, merge, replace) cannot lose each other's rows.  Readers open an
in-memory DuckDB whose views glob the Parquet files (``connect``), or a views-only database file that
``export_views`` writes (and also replaces atomically) for people who prefer ``duckdb warehouse.duckdb``.

Documents (batch manifests, causal-graph JSON) live beside the tables as JSON files, written the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cryodecon_resources.locks import exclusive_lock
from cryodecon_resources.tables import TABLES
from cryodecon_science.io.atomic import atomic_target, create_once

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# A table folder is a table only when its name is a plain SQL identifier; anything else under
# ``tables/`` (``hyperscores.bak``, ``tmp copy``) is someone's copy and gets no view.
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Views over the base tables (all declared, so they exist even empty) that answer the common questions.
_DERIVED_VIEWS: dict[str, str] = {
    "micrograph_scores": """
        SELECT h.micrograph, h.batch, h.session, c.defocus_u_angstrom, c.defocus_v_angstrom,
               c.astigmatism_angle_degrees, c.fit_resolution_angstrom, s.logic, s.novelty, s.impact,
               s.repro, s.meta, h.v, h.hyperscore, h.weights_version
        FROM hyperscores h
        LEFT JOIN ctf c USING (micrograph, batch)
        LEFT JOIN scores s USING (micrograph, batch)
        """,
    "session_summary": """
        SELECT h.session, count(*) AS micrographs, avg(h.v) AS mean_v, avg(h.hyperscore) AS mean_hyperscore,
               median(c.fit_resolution_angstrom) AS median_fit_resolution_angstrom,
               min(h.hyperscore) AS min_hyperscore, max(h.hyperscore) AS max_hyperscore
        FROM hyperscores h LEFT JOIN ctf c USING (micrograph, batch)
        GROUP BY h.session
        """,
    "rule_summary": """
        SELECT rule, count(*) FILTER (WHERE status = 'pass') AS passed,
               count(*) FILTER (WHERE status = 'fail') AS failed,
               count(*) FILTER (WHERE status = 'not_applicable') AS not_applicable
        FROM rules GROUP BY rule
        """,
}


_DUCKDB_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "int64": "BIGINT", "bool": "BOOLEAN"}


class UndeclaredColumnError(ValueError):
    """A row carries a column its table does not declare (``tables.TABLES``)."""


def _as_declared(table: str, frame: pd.DataFrame) -> pa.Table:
    """``frame`` as Arrow: with the declared schema for a declared table (missing columns null, declared
    ones first), as inferred otherwise."""
    declared = TABLES.get(table)
    if declared is None:
        return pa.Table.from_pandas(frame, preserve_index=False)
    names = [c.name for c in declared.columns]
    extra = [c for c in frame.columns if c not in names]
    if extra and not declared.open_columns:
        raise UndeclaredColumnError(f"table {table!r} declares no column {', '.join(map(repr, extra))}")
    for name in names:
        if name not in frame.columns:
            frame[name] = None
    fixed = pa.Table.from_pandas(frame[names], schema=declared.schema, preserve_index=False)
    if not extra:
        return fixed
    rest = pa.Table.from_pandas(frame[extra], preserve_index=False)
    return pa.Table.from_arrays([*fixed.columns, *rest.columns], names=[*names, *extra])


def _check_name(kind: str, value: str) -> str:
    if not _SAFE_NAME.match(value):
        raise ValueError(f"{kind} {value!r} must use only letters, digits, '_', '.', '-'")
    return value


def _quoted(identifier: str) -> str:
    """``identifier`` as a double-quoted SQL identifier (keywords such as ``order`` stay usable)."""
    return '"' + identifier.replace('"', '""') + '"'


def _view_names(connection: duckdb.DuckDBPyConnection) -> list[str]:
    """The user-defined views of an open connection, sorted."""
    return sorted(
        r[0] for r in connection.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    )


def _atomic_write_bytes(target: Path, write: Callable[[str], object]) -> None:
    """Call ``write(temporary path)`` and move the result onto ``target`` (``atomic_target``: umask modes)."""
    with atomic_target(target) as tmp:
        write(str(tmp))


class ScoreWarehouse(dg.ConfigurableResource):
    """Per-partition Parquet tables plus DuckDB views; see the module docstring for the write rule."""

    root: str

    # ---- tables -------------------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return Path(self.root) / "tables" / _check_name("table", table)

    def _partition_path(self, table: str, partition_key: str) -> Path:
        return self.table_dir(table) / f"{_check_name('partition', partition_key)}.parquet"

    def write_rows(
        self,
        table: str,
        partition_key: str,
        rows: Sequence[Mapping[str, Any]],
        replace_micrographs: Iterable[str] | None = None,
    ) -> int:
        """Replace the partition's rows of ``table`` with ``rows`` (idempotent).

        With ``replace_micrographs``, only rows of those micrographs are replaced and the partition's
        other rows are kept: that is how reprocessing one micrograph of a batch updates the warehouse.
        Returns the number of rows the partition holds afterwards.  A table declared in ``tables.TABLES``
        is written with its declared schema.

        Raises
        ------
        UndeclaredColumnError
            A row of a declared table has a column the table does not declare.
        """
        target = self._partition_path(table, partition_key)
        frame = pd.DataFrame(list(rows))
        with self._partition_lock(target):  # the read-merge-write of replace_micrographs is one step
            if replace_micrographs is not None and target.exists():
                keep = set(replace_micrographs)
                old = pd.read_parquet(target)
                if "micrograph" in old.columns:
                    old = old[~old["micrograph"].isin(keep)]
                frame = pd.concat([old, frame], ignore_index=True) if len(frame) else old
            if frame.empty and not target.exists():
                return 0
            arrow = _as_declared(table, frame)
            _atomic_write_bytes(target, lambda tmp: pq.write_table(arrow, tmp))
        return len(frame)

    def delete_rows(self, table: str, partition_key: str) -> bool:
        """Remove the partition's rows of ``table``; False if it held none."""
        target = self._partition_path(table, partition_key)
        with self._partition_lock(target):
            try:
                target.unlink()
                return True
            except FileNotFoundError:
                return False

    @staticmethod
    def _partition_lock(target: Path) -> contextlib.AbstractContextManager[None]:
        """The exclusive lock of one partition file: ``flock`` on ``.<partition>.lock`` beside it."""
        return exclusive_lock(target.with_name(f".{target.stem}.lock"))

    @contextlib.contextmanager
    def lock(self, collection: str) -> Iterator[None]:
        """An exclusive lock over a document collection, across processes (``flock`` on its ``.lock``).

        Held by whoever reads a collection's ledger and writes to it in one step (the sensor and the sweep
        cutting batches), so two of them never plan from the same ledger.
        """
        directory = Path(self.root) / "documents" / _check_name("collection", collection)
        with exclusive_lock(directory / ".lock"):
            yield

    def read_rows(self, table: str, partition_key: str | None = None) -> pd.DataFrame:
        if partition_key is not None:
            path = self._partition_path(table, partition_key)
            return pd.read_parquet(path) if path.exists() else pd.DataFrame()
        files = sorted(self.table_dir(table).glob("*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def tables(self) -> list[str]:
        """Tables holding data: folders under ``tables/`` named as plain SQL identifiers, with Parquet files.

        Other folders (``hyperscores.bak``, ``tmp copy``) are ignored.
        """
        base = Path(self.root) / "tables"
        if not base.is_dir():
            return []
        return sorted(
            p.name for p in base.iterdir() if _TABLE_NAME.match(p.name) and p.is_dir() and any(p.glob("*.parquet"))
        )

    # ---- documents ----------------------------------------------------------------------------------
    def document_path(self, collection: str, key: str) -> Path:
        return Path(self.root) / "documents" / _check_name("collection", collection) / f"{_check_name('key', key)}.json"

    def write_document(self, collection: str, key: str, document: Mapping[str, Any]) -> Path:
        target = self.document_path(collection, key)
        text = json.dumps(document, indent=1, sort_keys=True, default=float)
        _atomic_write_bytes(target, lambda tmp: Path(tmp).write_text(text))
        return target

    def write_document_once(self, collection: str, key: str, document: Mapping[str, Any]) -> bool:
        """Create the document only if it does not exist yet (``O_EXCL``); False if it already did.

        Used for frozen records such as batch manifests: two sensor ticks racing on the same key cannot
        both create it.
        """
        text = json.dumps(document, indent=1, sort_keys=True, default=float)
        return create_once(self.document_path(collection, key), text.encode())

    def read_document(self, collection: str, key: str) -> dict[str, Any]:
        path = self.document_path(collection, key)
        if not path.exists():
            raise FileNotFoundError(f"no {collection} document {key!r} in the warehouse at {self.root}")
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def list_documents(self, collection: str) -> list[str]:
        directory = Path(self.root) / "documents" / _check_name("collection", collection)
        if not directory.is_dir():
            return []
        return sorted(p.stem for p in directory.glob("*.json"))

    # ---- reading through DuckDB ---------------------------------------------------------------------
    def _view_statements(self) -> list[str]:
        """One view per table holding data, an empty view of the declared columns for every other declared
        table (a query on a fresh warehouse answers with no rows, not an error), and the derived views."""
        statements = []
        present = set(self.tables())
        for table in sorted(present):
            glob = str(self.table_dir(table) / "*.parquet").replace("'", "''")
            statements.append(
                f"CREATE OR REPLACE VIEW {_quoted(table)} AS SELECT * FROM read_parquet('{glob}', union_by_name=true)"
            )
        for name in sorted(set(TABLES) - present):
            columns = ", ".join(
                f"CAST(NULL AS {_DUCKDB_TYPES[str(c.type)]}) AS {_quoted(c.name)}" for c in TABLES[name].columns
            )
            statements.append(f"CREATE OR REPLACE VIEW {_quoted(name)} AS SELECT {columns} WHERE false")
        for name, sql in _DERIVED_VIEWS.items():
            statements.append(f"CREATE OR REPLACE VIEW {_quoted(name)} AS {sql}")
        return statements

    def views(self) -> list[str]:
        """Names of the views a connection holds now: one per base table, plus the derived views."""
        with self.connect() as connection:
            return _view_names(connection)

    def export_parquet(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write every view (base tables and derived views) as one Parquet file ``<directory>/<view>.parquet``.

        Each file is written to a temporary name and renamed, so a reader never sees half a file.
        """
        target_dir = Path(directory)
        written = []
        with self.connect() as connection:
            for view in _view_names(connection):
                target = target_dir / f"{view}.parquet"

                def write(tmp: str, view: str = view) -> None:
                    escaped = tmp.replace("'", "''")
                    connection.execute(f"COPY (SELECT * FROM {_quoted(view)}) TO '{escaped}' (FORMAT parquet)")

                _atomic_write_bytes(target, write)
                written.append(target)
        return written

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per table (never locks any file)."""
        connection = duckdb.connect(":memory:")
        for statement in self._view_statements():
            connection.execute(statement)
        return connection

    def query(self, sql: str, parameters: Sequence[Any] | None = None) -> pd.DataFrame:
        with self.connect() as connection:
            return connection.execute(sql, parameters or []).df()

    def export_views(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write a DuckDB file holding only the views (no data), replacing any previous one atomically."""
        target = Path(path) if path is not None else Path(self.root) / "warehouse.duckdb"

        def write(tmp: str) -> None:
            os.unlink(tmp)  # duckdb wants to create the file itself
            with duckdb.connect(tmp) as connection:
                for statement in self._view_statements():
                    connection.execute(statement)

        _atomic_write_bytes(target, write)
        return target
