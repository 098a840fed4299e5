"""Citation graphs as two Parquet tables (edges and nodes), read and written with pyarrow.

A graph lives in a folder as ``edges.parquet`` and ``nodes.parquet`` (:func:`write_citation_graph`,
:func:`read_citation_graph`); the single-table functions are for other layouts.

Edges: ``citing`` (string), ``cited`` (string), ``year`` (int32, publication year of the citing paper).
Nodes: ``paper_id`` (string), ``year`` (int32), ``topic`` (string), ``field`` (string), ``title``
(string), ``synthetic`` (bool).  Graph-level attributes (``synthetic``, ``generator``, ``seed``) travel
as JSON in the node table's schema metadata under ``cryodecon.graph``.  Graph conventions are those of
``cryodecon_science.citations``.  Writes go to a temporary file in the target folder, then an atomic
rename, so a reader never sees half a table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import networkx as nx
import pyarrow as pa
import pyarrow.parquet as pq

from cryodecon_science.io.atomic import atomic_target

EDGE_SCHEMA = pa.schema([("citing", pa.string()), ("cited", pa.string()), ("year", pa.int32())])
NODE_SCHEMA = pa.schema(
    [
        ("paper_id", pa.string()),
        ("year", pa.int32()),
        ("topic", pa.string()),
        ("field", pa.string()),
        ("title", pa.string()),
        ("synthetic", pa.bool_()),
    ]
)
_GRAPH_METADATA_KEY = b"cryodecon.graph"
EDGES_FILENAME = "edges.parquet"
NODES_FILENAME = "nodes.parquet"


class CitationTableError(ValueError):
    """A citation table that cannot be used: missing columns, unknown papers or inconsistent years."""

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{path}: {detail}")


def _write_atomic(table: pa.Table, path: str | os.PathLike[str]) -> None:
    with atomic_target(path) as tmp:
        pq.write_table(table, tmp)


def write_citation_edges(graph: nx.DiGraph, path: str | os.PathLike[str]) -> None:
    """Write the edges (citing, cited, year of the citing paper) of ``graph`` to a Parquet file."""
    citing, cited, years = [], [], []
    for source, target in graph.edges:
        citing.append(str(source))
        cited.append(str(target))
        years.append(int(graph.nodes[source]["year"]))
    table = pa.table({"citing": citing, "cited": cited, "year": years}, schema=EDGE_SCHEMA)
    _write_atomic(table, path)


def write_citation_nodes(graph: nx.DiGraph, path: str | os.PathLike[str]) -> None:
    """Write the node table of ``graph`` (columns in the module docstring) and its graph attributes."""
    columns: dict[str, list[Any]] = {name: [] for name in NODE_SCHEMA.names}
    for paper, attrs in graph.nodes(data=True):
        columns["paper_id"].append(str(paper))
        columns["year"].append(int(attrs["year"]))
        columns["topic"].append(str(attrs.get("topic", "")))
        columns["field"].append(str(attrs.get("field", "")))
        columns["title"].append(str(attrs.get("title", "")))
        columns["synthetic"].append(bool(attrs.get("synthetic", False)))
    metadata = {_GRAPH_METADATA_KEY: json.dumps(dict(graph.graph), default=str).encode()}
    table = pa.table(columns, schema=NODE_SCHEMA.with_metadata(metadata))
    _write_atomic(table, path)


def _read_checked(path: str | os.PathLike[str], schema: pa.Schema) -> pa.Table:
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise CitationTableError(path, f"missing column(s) {missing}; expected {schema.names}")
    try:
        return table.select(schema.names).cast(schema.with_metadata(table.schema.metadata))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CitationTableError(path, f"columns do not convert to {schema}: {exc}") from exc


def write_citation_graph(graph: nx.DiGraph, folder: str | os.PathLike[str]) -> None:
    """Write ``graph`` as ``folder/edges.parquet`` and ``folder/nodes.parquet`` (nodes last, so a reader
    that finds the node table finds the matching edges)."""
    write_citation_edges(graph, Path(folder) / EDGES_FILENAME)
    write_citation_nodes(graph, Path(folder) / NODES_FILENAME)


def read_citation_graph(folder: str | os.PathLike[str]) -> nx.DiGraph:
    """Read the graph :func:`write_citation_graph` wrote to ``folder`` (see :func:`read_citation_tables`)."""
    return read_citation_tables(Path(folder) / EDGES_FILENAME, Path(folder) / NODES_FILENAME)


def read_citation_tables(edges_path: str | os.PathLike[str], nodes_path: str | os.PathLike[str]) -> nx.DiGraph:
    """Read a citation graph written by :func:`write_citation_edges` and :func:`write_citation_nodes`.

    Raises
    ------
    CitationTableError
        On a missing or unconvertible column, an edge naming a paper absent from the node table, or an
        edge whose ``year`` differs from its citing paper's year.
    """
    nodes = _read_checked(nodes_path, NODE_SCHEMA)
    edges = _read_checked(edges_path, EDGE_SCHEMA)
    metadata = nodes.schema.metadata or {}
    graph_attrs = json.loads(metadata[_GRAPH_METADATA_KEY]) if _GRAPH_METADATA_KEY in metadata else {}
    graph = nx.DiGraph(**graph_attrs)
    for row in nodes.to_pylist():
        paper = row.pop("paper_id")
        graph.add_node(paper, **row)
    for row in edges.to_pylist():
        citing, cited, year = row["citing"], row["cited"], row["year"]
        for paper in (citing, cited):
            if paper not in graph:
                raise CitationTableError(edges_path, f"edge {citing} -> {cited} names unknown paper {paper!r}")
        if graph.nodes[citing]["year"] != year:
            raise CitationTableError(
                edges_path,
                f"edge {citing} -> {cited} has year {year}, citing paper has {graph.nodes[citing]['year']}",
            )
        graph.add_edge(citing, cited)
    return graph
