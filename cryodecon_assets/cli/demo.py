"""``cryodecon simulate`` and ``cryodecon demo``: a simulated session through the real sensor -> run path."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryodecon_assets.cli.runs import instance_and_definitions
from cryodecon_assets.cli.warehouse import cli_resources, print_scores, score_rows

if TYPE_CHECKING:  # the CLI imports Dagster only for the commands that need it
    from cryodecon_resources import ScoreWarehouse

DEMO_SESSION = "demo"


def cmd_simulate(args: argparse.Namespace) -> int:
    from cryodecon_science.simulate import SimulationConfig, simulate_session, write_simulated_session

    config = SimulationConfig(shape_px=(args.size, args.size))
    session = simulate_session(config, args.session, args.micrographs, args.movies, args.seed)
    written = write_simulated_session(session, Path(args.root), write_truth_images=args.truth_images)
    print(f"wrote {len(written)} files under {Path(args.root) / args.session}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from cryodecon_assets.cli.driver import drive, refresh_dashboard
    from cryodecon_assets.cli.synthetic_references import (
        ensure_citation_graph,
        ensure_reference_library,
        established_papers,
    )
    from cryodecon_resources import Settings
    from cryodecon_science.io.citations import read_citation_graph
    from cryodecon_science.simulate import SimulationConfig, simulate_session, write_simulated_session

    # The demo's files are complete when written (atomic renames), so a short settle window suffices and
    # batches are cut as soon as they are ready; variables set in the environment still win.
    demo_defaults = {
        "CRYODECON_SETTLE_SECONDS": "1",
        "CRYODECON_BATCH_WINDOW_SECONDS": "0",
        "CRYODECON_MAX_BATCH_SIZE": str(args.batch_size),
    }
    settings = Settings.from_environment(
        demo_defaults | dict(os.environ) | ({"CRYODECON_HOME": args.home} if args.home else {})
    )
    started = time.time()
    resources = cli_resources(settings)
    storage_root = Path(resources.microscope_storage.root)
    config = SimulationConfig(shape_px=(args.size, args.size))
    session = simulate_session(config, DEMO_SESSION, args.micrographs, args.movies, args.seed)
    written = write_simulated_session(session, storage_root)
    print(
        f"[demo] simulated session '{DEMO_SESSION}': {args.micrographs} micrographs + {args.movies} movies "
        f"({args.size}×{args.size}) in {storage_root / DEMO_SESSION} "
        f"({len(written)} files; unchanged ones are not rewritten)"
    )
    graph_folder = ensure_citation_graph(Path(resources.scoring.citation_graph_path), seed=args.seed)
    papers = established_papers(read_citation_graph(graph_folder))
    added = ensure_reference_library(
        resources.structure_library, config, seed=args.seed, papers=papers, class_library=resources.class_library
    )
    if added:
        print(f"[demo] seeded the structure library with {added} reference projections")
    instance, defs = instance_and_definitions(settings)
    print(f"[demo] Dagster instance: {instance.root_directory}")
    report = drive(instance, defs, settle_seconds=settings.settle_seconds, log_level=args.log_level)
    if report.runs:
        ok = sum(report.runs.values())
        print(
            f"[demo] sensor cut {len(report.partitions_added)} batches; runs: {ok} succeeded, "
            f"{len(report.runs) - ok} failed"
        )
    else:
        print("[demo] nothing new on storage: every exposure is already in a processed batch")
    if DEMO_SESSION not in report.dashboards:  # nothing ran this time: draw it from the warehouse anyway
        refresh_dashboard(instance, defs, DEMO_SESSION, report, log_level=args.log_level)
    dashboard = Path(resources.outputs.root) / "sessions" / DEMO_SESSION / "dashboard.html"
    print(
        f"[demo] session dashboard ({'drawn' if report.dashboards.get(DEMO_SESSION) else 'FAILED'}; asset "
        f"session_dashboard, partition {DEMO_SESSION}): {dashboard}"
    )
    views = resources.warehouse.export_views()
    frame = score_rows(DEMO_SESSION, resources.warehouse)
    print(f"[demo] DuckDB views over the warehouse: {views}")
    print_particles(resources.warehouse, Path(resources.outputs.root))
    print(f"[demo] HyperScores ({len(frame)} micrographs, from DuckDB over the warehouse):")
    print_scores(frame, "table")
    print(
        f"[demo] done in {time.time() - started:.0f} s.  UI: DAGSTER_HOME={instance.root_directory} "
        f".venv/bin/dagster dev -w workspace.yaml"
    )
    return 0 if all(report.runs.values()) and all(report.dashboards.values()) and len(frame) else 1


def print_particles(warehouse: ScoreWarehouse, outputs_root: Path) -> None:
    """Particles per batch of the demo session, with the picks set aside and why, from the warehouse."""
    table = warehouse.query(
        "SELECT batch, count(DISTINCT micrograph) AS micrographs, count(*) FILTER (WHERE reason = 'ok') AS kept, "
        "string_agg(DISTINCT reason, ',') FILTER (WHERE reason <> 'ok') AS set_aside FROM picks "
        "WHERE session = ? GROUP BY batch ORDER BY batch",
        [DEMO_SESSION],
    )
    stacks = warehouse.query(
        "SELECT batch, sum(particles) AS particles FROM particle_stacks WHERE session = ? GROUP BY batch",
        [DEMO_SESSION],
    )
    extracted = dict(zip(stacks["batch"], stacks["particles"], strict=True))
    print("[demo] particles per batch (picked on the raw micrographs, extracted from the dose-weighted sums):")
    for row in table.itertuples():
        print(
            f"  {row.batch}: {row.micrographs} micrographs, {int(extracted.get(row.batch, 0))} particles "
            f"(kept picks {row.kept}; set aside: {row.set_aside or 'none'})"
        )
    print(f"[demo] RELION particles.star of the session: {outputs_root / 'sessions' / DEMO_SESSION / 'particles.star'}")
    classes = warehouse.query(
        "SELECT batch, count(*) AS classes, count(*) FILTER (WHERE selected) AS selected, sum(particles) AS particles, "
        "sum(particles) FILTER (WHERE selected) AS kept, median(resolution_angstrom) FILTER (WHERE selected) AS res, "
        "sum(novelty * particles) FILTER (WHERE selected) / sum(particles) FILTER (WHERE selected) AS novelty "
        "FROM classes_2d WHERE session = ? GROUP BY batch ORDER BY batch",
        [DEMO_SESSION],
    )
    kept = warehouse.query(
        "SELECT batch, count(*) AS particles, count(*) FILTER (WHERE kept) AS kept FROM particle_classes GROUP BY batch"
    ).set_index("batch")
    print("[demo] streaming 2D classes after each batch (the gallery is in the UI: asset classes_2d):")
    for row in classes.itertuples():
        resolution = "–" if row.res is None or row.res != row.res else f"{row.res:.0f} Å"
        batch_kept = (
            f"{int(kept.at[row.batch, 'kept'])} of its {int(kept.at[row.batch, 'particles'])}"
            if row.batch in kept.index
            else "–"
        )
        print(
            f"  {row.batch}: {row.classes} classes of {int(row.particles)} particles; {row.selected} selected "
            f"({int(row.kept or 0)} particles, median resolution {resolution}, class novelty "
            f"{'–' if row.novelty is None or row.novelty != row.novelty else f'{row.novelty:.2f}'}); "
            f"the batch's particles kept (selected class, ln B ≥ 3 against background): {batch_kept}"
        )
    curation = warehouse.query(
        "SELECT batch, count(*) FILTER (WHERE accepted) AS accepted, count(*) FILTER (WHERE NOT accepted) AS rejected, "
        "string_agg(DISTINCT NULLIF(failed_thresholds, ''), '; ') AS failed "
        "FROM curation_decisions WHERE session = ? GROUP BY batch ORDER BY batch",
        [DEMO_SESSION],
    )
    print("[demo] curation with the session's thresholds (RELION: star/<batch>/micrographs_ctf_accepted.star):")
    for row in curation.itertuples():
        print(
            f"  {row.batch}: {row.accepted} accepted, {row.rejected} rejected ({row.failed or 'no threshold failed'})"
        )
