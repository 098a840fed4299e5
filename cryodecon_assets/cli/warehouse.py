"""``cryodecon scores | label | export | sql``: the warehouse from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports Dagster and torch only for the commands that need them
    from cryodecon_resources import Resources, ScoreWarehouse, Settings


SCORE_COLUMNS = [
    "micrograph",
    "batch",
    "session",
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "fit_resolution_angstrom",
    "logic",
    "novelty",
    "impact",
    "repro",
    "meta",
    "v",
    "hyperscore",
]


def cli_resources(settings: Settings | None = None) -> Resources:
    from cryodecon_resources import Settings, build_resources

    return build_resources(settings or Settings.from_environment())


def cli_warehouse() -> ScoreWarehouse:
    return cli_resources().warehouse


def score_rows(session: str | None, warehouse: ScoreWarehouse | None = None):  # type: ignore[no-untyped-def]
    warehouse = warehouse or cli_warehouse()
    if "hyperscores" not in warehouse.tables():
        import pandas as pd

        return pd.DataFrame(columns=SCORE_COLUMNS)
    where = "WHERE session = ?" if session else ""
    return warehouse.query(
        f"SELECT {', '.join(SCORE_COLUMNS)} FROM micrograph_scores {where} ORDER BY batch, micrograph",
        [session] if session else [],
    )


def print_scores(frame, fmt: str) -> None:  # type: ignore[no-untyped-def]
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", indent=1) + "\n")
    else:
        with_format = frame.copy()
        for column in with_format.columns:
            if with_format[column].dtype.kind == "f":
                digits = (
                    0
                    if "angstrom" in column and "resolution" not in column
                    else (2 if column == "hyperscore" or "resolution" in column else 3)
                )
                with_format[column] = with_format[column].map(lambda x, d=digits: f"{x:.{d}f}")
        print(with_format.to_string(index=False))


def cmd_scores(args: argparse.Namespace) -> int:
    if not (args.summary or args.rules or args.weights):
        print_scores(score_rows(args.session), args.format)
        return 0
    import pandas as pd

    warehouse = cli_warehouse()
    views = set(warehouse.views())
    where, parameters = ("WHERE session = ?", [args.session]) if args.session else ("", [])
    if args.summary:
        frame = (
            warehouse.query(f"SELECT * FROM session_summary {where} ORDER BY session", parameters)
            if "session_summary" in views
            else pd.DataFrame()
        )
    elif args.rules:
        frame = (
            warehouse.query("SELECT * FROM rule_summary ORDER BY failed DESC, rule")
            if "rule_summary" in views
            else pd.DataFrame()
        )
    else:
        from cryodecon_resources.scoring import WEIGHTS_TABLE, shipped_weights, shipped_weights_row

        learned = warehouse.read_rows(WEIGHTS_TABLE)
        records = learned.to_dict("records") if not learned.empty else []
        in_use, _ = cli_resources().scoring.resolve_weights(records)
        if not any(r["version"] == shipped_weights().version for r in records):
            records.append(shipped_weights_row())
        frame = pd.DataFrame(records).drop(columns=["details"], errors="ignore")
        frame["in_use"] = frame["version"] == in_use.version
    print_scores(frame, args.format)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from cryodecon_assets.facility.maintenance import CURATION_TABLE, curation_row

    warehouse = cli_warehouse()
    known = warehouse.read_rows("scores", args.batch)
    names = set(known["micrograph"]) if not known.empty else set()
    unknown = [m for m in args.micrographs if m not in names]
    if unknown:
        print(f"cryodecon label: not scored in batch {args.batch!r}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    for micrograph in args.micrographs:
        row = curation_row(args.batch, micrograph, accepted=args.accept, labelled_by=args.by)
        warehouse.write_rows(CURATION_TABLE, f"{args.batch}.{micrograph}", [row])
    verdict = "accepted" if args.accept else "rejected"
    print(f"labelled {len(args.micrographs)} micrographs of {args.batch} as {verdict}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    written = cli_warehouse().export_parquet(args.directory)
    print(f"wrote {len(written)} Parquet files to {args.directory}: {', '.join(p.stem for p in written)}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    try:
        frame = cli_warehouse().query(args.query)
    except duckdb.Error as exc:
        print(f"cryodecon sql: {exc}", file=sys.stderr)
        return 2
    print(frame.to_string(index=False))
    return 0
