"""The declared warehouse tables and the architecture page agree: every table, and who writes it."""

from __future__ import annotations

import re
from pathlib import Path

from cryodecon_resources.tables import TABLES

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_architecture_page_names_every_declared_table_and_its_writer() -> None:
    section = ARCHITECTURE.read_text().split("## Which asset writes which warehouse table", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        tables_cell, _, writers_cell = row.strip("|").split("|")[:3]
        for name in re.findall(r"`([a-z0-9_]+)`", tables_cell):
            documented.setdefault(name, []).append(writers_cell)
    assert set(documented) == set(TABLES)
    several = {"every batch asset", "the storage sensor and every batch asset", "cryodecon label"}
    for name, table in TABLES.items():
        if table.written_by not in several:  # one writer: the page names that asset for the table
            assert any(f"`{table.written_by}`" in cell for cell in documented[name]), name


def test_every_declared_column_has_a_type_a_meaning_and_a_unique_name() -> None:
    for table in TABLES.values():
        names = [c.name for c in table.columns]
        assert len(names) == len(set(names)), table.name
        assert all(c.doc for c in table.columns), table.name
