"""``cryodecon`` command line.

Stable contracts (other tools call them):

* ``cryodecon demo`` — simulate a session into the embedded storage, drive it through the real sensor ->
  run path on a persistent instance, print the HyperScore table from DuckDB.
* ``cryodecon restore INPUT... --output-dir DIR [--target denoised|deconvolved|fused] [--device auto|cpu|cuda]``
  — writes ``DIR/<input file name>``, float32 MRC, pixel size in the header.
* ``cryodecon ctf INPUT... --output FILE.json [--star FILE.star]`` — a JSON list of objects with keys
  micrograph, defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_degrees, fit_resolution_angstrom
  (RELION/CTFFIND convention: U ≥ V, angle from the x axis to U, counter-clockwise).
* ``cryodecon scores [--session S] [--format table|csv|json]`` — per-micrograph rows from the warehouse
  with at least micrograph, batch, defocus_u_angstrom, fit_resolution_angstrom, v, hyperscore;
  ``--summary`` one row per session (count, mean V and HyperScore, median fit resolution), ``--rules``
  one row per consistency rule (passed, failed, not applicable), ``--weights`` every weights version of V
  and which one new scores use.
* ``cryodecon label BATCH MICROGRAPH... (--accept | --reject) [--by NAME]`` — records curation labels
  (warehouse table ``curation``; relabelling replaces), from which ``score_weights`` learns the weights of V.
* ``cryodecon export DIR`` — every warehouse view as ``DIR/<view>.parquet``.
* ``cryodecon library seed --map A.mrc [--map B.mrc ...] [--structure-id ID ...] [--paper-id P ...]
  [--projections N] [--pixel-size-angstrom X] [--particle-diameter-angstrom D] [--seed S] [--device D]`` —
  registers reference maps in the structure library (``$CRYODECON_LIBRARY_URI``, default
  ``$CRYODECON_HOME/library``) as embeddings of N projections each, in batch ``reference-<ID>`` (re-seeding
  a map replaces its rows).  IDs default to the map file stems; paper ids, when given, one per map.
  Prints ``seeded <rows> rows from <maps> maps; library holds <count> rows``.
* ``cryodecon library status`` — prints ``rows: <count>`` (and ``index: <info>`` where the library reports
  index information).

Exit codes: 0 success, 1 a processing failure (e.g. a run failed), 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports Dagster and torch only for the commands that need them
    from cryodecon_resources import Resources, ScoreWarehouse, Settings

DEMO_SESSION = "demo"
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


def _microscope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voltage-kv", type=float, default=300.0)
    parser.add_argument("--spherical-aberration-mm", type=float, default=2.7)
    parser.add_argument("--amplitude-contrast", type=float, default=0.07)
    parser.add_argument("--pixel-size-angstrom", type=float, default=None, help="override the MRC header")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryodecon", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulate a session and run it through sensor -> runs -> HyperScores")
    demo.add_argument("--home", default=None, help="embedded setup folder (default $CRYODECON_HOME or ./.cryodecon)")
    demo.add_argument("--micrographs", type=int, default=8)
    demo.add_argument("--movies", type=int, default=2)
    demo.add_argument("--size", type=int, default=1024, help="micrograph edge in pixels (4096 for full size)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=int, default=5)
    demo.add_argument(
        "--log-level", default="WARNING", help="Dagster console log level of the runs (DEBUG shows every event)"
    )

    tick = sub.add_parser("tick", help="evaluate the storage sensor and run what it requests (no daemon)")
    tick.add_argument("--max-ticks", type=int, default=3)

    simulate = sub.add_parser("simulate", help="write a simulated session into a storage root")
    simulate.add_argument("--root", required=True)
    simulate.add_argument("--session", default=DEMO_SESSION)
    simulate.add_argument("--micrographs", type=int, default=8)
    simulate.add_argument("--movies", type=int, default=2)
    simulate.add_argument("--size", type=int, default=1024)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--truth-images", action="store_true", help="also write clean/potential truth MRCs")

    restore = sub.add_parser("restore", help="restore micrographs (CTF fit + causal priors + Wiener)")
    restore.add_argument("inputs", nargs="+")
    restore.add_argument("--output-dir", required=True)
    restore.add_argument(
        "--target",
        choices=["denoised", "deconvolved", "fused"],
        default="denoised",
        help="denoised: Wiener, CTF kept; deconvolved: CTF-corrected Wiener; fused: the shipped U-Net and the "
        "denoised Wiener fused per Fourier ring (what the pipeline's fused_denoised_micrographs writes)",
    )
    restore.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _microscope_arguments(restore)

    ctf = sub.add_parser("ctf", help="estimate the CTF of micrographs")
    ctf.add_argument("inputs", nargs="+")
    ctf.add_argument("--output", required=True, help="JSON file")
    ctf.add_argument("--star", default=None, help="also write a RELION micrographs_ctf.star")
    ctf.add_argument("--device", default="auto")
    _microscope_arguments(ctf)

    scores = sub.add_parser("scores", help="per-micrograph scores from the warehouse")
    scores.add_argument("--session", default=None)
    scores.add_argument("--format", choices=["table", "csv", "json"], default="table")
    question = scores.add_mutually_exclusive_group()
    question.add_argument("--summary", action="store_true", help="one row per session")
    question.add_argument("--rules", action="store_true", help="pass/fail counts per consistency rule")
    question.add_argument("--weights", action="store_true", help="weights versions of V, and the one in use")

    label = sub.add_parser("label", help="record curation labels (accepted/rejected exposures)")
    label.add_argument("batch")
    label.add_argument("micrographs", nargs="+")
    verdict = label.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--accept", action="store_true")
    verdict.add_argument("--reject", action="store_true")
    label.add_argument("--by", default=os.environ.get("USER", "staff"), help="who labelled (default $USER)")

    export = sub.add_parser("export", help="write every warehouse view as a Parquet file")
    export.add_argument("directory")

    sql = sub.add_parser("sql", help="run a DuckDB query over the warehouse views")
    sql.add_argument("query")

    reprocess = sub.add_parser("reprocess", help="rerun one batch, or selected micrographs of it")
    reprocess.add_argument("batch")
    reprocess.add_argument("--micrograph", action="append", default=[])

    library = sub.add_parser("library", help="the structure library of known structures (novelty, impact)")
    library_sub = library.add_subparsers(dest="library_command", required=True)
    seed = library_sub.add_parser("seed", help="register reference maps (MRC volumes) as projection embeddings")
    seed.add_argument("--map", dest="maps", action="append", required=True, help="cubic MRC map (repeatable)")
    seed.add_argument("--structure-id", dest="structure_ids", action="append", default=[], help="one per map")
    seed.add_argument("--paper-id", dest="paper_ids", action="append", default=[], help="one per map")
    seed.add_argument("--projections", type=int, default=50, help="projections per map")
    seed.add_argument(
        "--pixel-size-angstrom",
        type=float,
        default=None,
        help="projection sampling (default: the embedding's working sampling, 1.5 x diameter / 64, at most 4 Å)",
    )
    seed.add_argument(
        "--particle-diameter-angstrom", type=float, default=None, help="default: the scoring settings' diameter"
    )
    seed.add_argument("--seed", type=int, default=0, help="seed of the projection orientations")
    seed.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    library_sub.add_parser("status", help="row count (and index information) of the structure library")
    return parser


# ---- environment --------------------------------------------------------------------------------------
class InstanceFileError(ValueError):
    """``$DAGSTER_HOME/dagster.yaml`` disagrees with the environment in a way that would lose runs."""


POSTGRES_STORAGE_BLOCK = "\nstorage:\n  postgres:\n    postgres_url:\n      env: CRYODECON_POSTGRES_URL\n"


def prepare_instance_home(home: Path) -> Path:
    """``$DAGSTER_HOME`` (default ``<home>/dagster_home``), with the repo's ``dagster.yaml`` where it has none.

    An existing ``dagster.yaml`` is the operator's and is never rewritten.  It is checked against the
    environment: with ``CRYODECON_POSTGRES_URL`` set, a file whose storage is not PostgreSQL is refused (the
    runs would go to another database than the operator meant), as is a file that reads its storage URL
    from an unset variable; a file without ``run_monitoring`` gets a warning (a killed run worker would
    hold its ``gpu`` slot for ever).  A new file is the template, plus the PostgreSQL storage block when
    ``CRYODECON_POSTGRES_URL`` is set.

    Raises
    ------
    InstanceFileError
        On a mismatch between the existing file and the environment, naming both.
    """
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster_home").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    postgres_url = os.environ.get("CRYODECON_POSTGRES_URL")
    if not target.exists():
        template = Path(__file__).resolve().parent.parent / "dagster.yaml"
        text = template.read_text() if template.exists() else "telemetry:\n  enabled: false\n"
        target.write_text(text + (POSTGRES_STORAGE_BLOCK if postgres_url else ""))
    else:
        _check_instance_file(target, postgres_url)
    return dagster_home


def _check_instance_file(path: Path, postgres_url: str | None) -> None:
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InstanceFileError(f"{path}: not valid YAML: {exc}") from exc
    storage = config.get("storage") or {}
    kind = next(iter(storage), "sqlite (default)") if isinstance(storage, dict) else str(storage)
    if postgres_url and kind != "postgres":
        raise InstanceFileError(
            f"CRYODECON_POSTGRES_URL is set but {path} stores runs in {kind}: add a `storage: postgres:` "
            "block to that file (docs/operations.md, Instance) or unset the variable; the file is the "
            "operator's and is not rewritten"
        )
    if kind == "postgres":
        url = (storage.get("postgres") or {}).get("postgres_url")
        variable = url.get("env") if isinstance(url, dict) else None
        if variable and not os.environ.get(variable):
            raise InstanceFileError(f"{path} reads its PostgreSQL URL from ${variable}, which is not set")
    if not (config.get("run_monitoring") or {}).get("enabled"):
        print(
            f"cryodecon: warning: {path} has no `run_monitoring: enabled: true`: a run worker that is killed "
            "keeps its gpu slot until someone frees it (see the repo's dagster.yaml)",
            file=sys.stderr,
        )


def _resolve_device(name: str) -> str:
    import torch

    torch.set_num_threads(int(os.environ.get("CRYODECON_CPU_THREADS", "1")))  # see TorchDevice.cpu_threads
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"cryodecon: device {name!r} requested but no CUDA device is visible")
    return name


def _microscope(args: argparse.Namespace, pixel_size_angstrom: float):  # type: ignore[no-untyped-def]
    from cryodecon_science.optics import MicroscopeSettings

    return MicroscopeSettings(
        voltage_kv=args.voltage_kv,
        spherical_aberration_mm=args.spherical_aberration_mm,
        amplitude_contrast_fraction=args.amplitude_contrast,
        pixel_size_angstrom=args.pixel_size_angstrom or pixel_size_angstrom,
    )


# ---- commands -----------------------------------------------------------------------------------------
def cmd_ctf(args: argparse.Namespace) -> int:
    from cryodecon_science.ctf import estimate_ctf
    from cryodecon_science.io.mrc import InputFileError, read_micrograph
    from cryodecon_science.io.star import MicrographCtfRow, write_micrographs_ctf_star

    device = _resolve_device(args.device)
    results, star_rows, failed = [], [], 0
    for path in args.inputs:
        try:
            micrograph = read_micrograph(path)
            microscope = _microscope(args, micrograph.pixel_size_angstrom)
            fit = estimate_ctf(micrograph.data, microscope, device=device)
        except (InputFileError, ValueError, OSError) as exc:
            print(f"cryodecon ctf: skipped {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        results.append(
            {
                "micrograph": str(path),
                "defocus_u_angstrom": fit.ctf.defocus_u_angstrom,
                "defocus_v_angstrom": fit.ctf.defocus_v_angstrom,
                "astigmatism_angle_degrees": fit.ctf.astigmatism_angle_deg,
                "fit_resolution_angstrom": fit.fit_resolution_angstrom,
                "cross_correlation": fit.cross_correlation,
            }
        )
        star_rows.append(MicrographCtfRow(str(path), fit, microscope))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1))
    if args.star and star_rows:
        write_micrographs_ctf_star(args.star, star_rows)
    return 2 if failed and not results else (1 if failed else 0)


def cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np

    from cryodecon_science import causal
    from cryodecon_science.ctf import estimate_ctf
    from cryodecon_science.io.mrc import InputFileError, read_micrograph, write_mrc
    from cryodecon_science.restore import wiener_deconvolve, wiener_denoise

    device = _resolve_device(args.device)
    restore = wiener_deconvolve if args.target == "deconvolved" else wiener_denoise
    model = None
    if args.target == "fused":
        from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser

        model = load_pretrained_denoiser()
    output_dir = Path(args.output_dir)
    failed = 0
    for path in args.inputs:
        try:
            micrograph = read_micrograph(path)
            microscope = _microscope(args, micrograph.pixel_size_angstrom)
            fit = estimate_ctf(micrograph.data, microscope, device=device)
            priors = causal.fit_priors(micrograph.data, fit, microscope, device=device)
            refined = causal.refined_ctf_fit(fit, priors)
            if model is not None:
                from cryodecon_science.fusion import fuse_learned_and_wiener

                data, _ = fuse_learned_and_wiener(micrograph.data, model, refined, microscope, device=device)
            else:
                data = restore(micrograph.data, refined, microscope, device=device)
        except (InputFileError, ValueError, OSError) as exc:
            print(f"cryodecon restore: skipped {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        write_mrc(output_dir / Path(path).name, np.asarray(data, dtype=np.float32), microscope.pixel_size_angstrom)
    return 2 if failed == len(args.inputs) else (1 if failed else 0)


def _resources(settings: Settings | None = None) -> Resources:
    from cryodecon_resources import Settings, build_resources

    return build_resources(settings or Settings.from_environment())


def _warehouse() -> ScoreWarehouse:
    return _resources().warehouse


def score_rows(session: str | None, warehouse: ScoreWarehouse | None = None):  # type: ignore[no-untyped-def]
    warehouse = warehouse or _warehouse()
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

    warehouse = _warehouse()
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
        in_use, _ = _resources().scoring.resolve_weights(records)
        if not any(r["version"] == shipped_weights().version for r in records):
            records.append(shipped_weights_row())
        frame = pd.DataFrame(records).drop(columns=["details"], errors="ignore")
        frame["in_use"] = frame["version"] == in_use.version
    print_scores(frame, args.format)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from cryodecon_assets.maintenance import CURATION_TABLE, curation_row

    warehouse = _warehouse()
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
    written = _warehouse().export_parquet(args.directory)
    print(f"wrote {len(written)} Parquet files to {args.directory}: {', '.join(p.stem for p in written)}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    try:
        frame = _warehouse().query(args.query)
    except duckdb.Error as exc:
        print(f"cryodecon sql: {exc}", file=sys.stderr)
        return 2
    print(frame.to_string(index=False))
    return 0


def _instance_and_defs(settings: Settings | None = None):  # type: ignore[no-untyped-def]
    import dagster as dg

    from cryodecon_assets.definitions import build_definitions
    from cryodecon_resources import Settings

    settings = settings or Settings.from_environment()
    home = prepare_instance_home(settings.home)
    return dg.DagsterInstance.from_config(str(home)), build_definitions(settings)


def cmd_tick(args: argparse.Namespace) -> int:
    from cryodecon_assets.driver import drive
    from cryodecon_resources import Settings

    settings = Settings.from_environment()
    instance, defs = _instance_and_defs(settings)
    report = drive(instance, defs, settle_seconds=settings.settle_seconds, max_ticks=args.max_ticks)
    print(f"ticks={report.ticks} batches={report.partitions_added} runs={report.runs}")
    return 0 if all(report.runs.values()) else 1


def cmd_reprocess(args: argparse.Namespace) -> int:
    from cryodecon_assets.batching import MANIFESTS, BatchManifest
    from cryodecon_assets.partitions import acquisition_batches
    from cryodecon_assets.sensors import PROCESS_JOB
    from cryodecon_resources.io_manager import SELECTION_TAG

    warehouse = _warehouse()
    known = warehouse.list_documents(MANIFESTS)
    if args.batch not in known:
        print(f"cryodecon reprocess: no batch {args.batch!r} (known: {_some(known)})", file=sys.stderr)
        return 2
    manifest = BatchManifest.from_document(warehouse.read_document(MANIFESTS, args.batch))
    unknown = sorted(set(args.micrograph) - {f.name for f in manifest.files})
    if unknown:
        print(f"cryodecon reprocess: batch {args.batch} has no micrograph {', '.join(unknown)}", file=sys.stderr)
        return 2
    instance, defs = _instance_and_defs()
    if not instance.has_dynamic_partition(acquisition_batches.name, args.batch):
        instance.add_dynamic_partitions(acquisition_batches.name, [args.batch])  # a cut the sensor never registered
    tags = {"cryodecon/source": "reprocess"}
    if args.micrograph:
        tags[SELECTION_TAG] = ",".join(args.micrograph)
    result = defs.resolve_job_def(PROCESS_JOB).execute_in_process(
        instance=instance, partition_key=args.batch, tags=tags, raise_on_error=False
    )
    print(f"run {result.run_id}: {'success' if result.success else 'failure'}")
    return 0 if result.success else 1


def _some(names: Sequence[str], shown: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[-shown:]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def cmd_library(args: argparse.Namespace) -> int:
    resources = _resources()
    library = resources.structure_library
    if args.library_command == "status":
        print(f"rows: {library.count()}")  # type: ignore[attr-defined]
        index_info = getattr(library, "index_info", None)
        if callable(index_info):
            print(f"index: {index_info()}")
        return 0
    return _library_seed(args, library, resources.scoring.particle_diameter_angstrom)


def _library_seed(args: argparse.Namespace, library, default_diameter_angstrom: float) -> int:  # type: ignore[no-untyped-def]
    from cryodecon_assets.references import REFERENCE_RESOLUTION_ANGSTROM, seed_library_from_maps
    from cryodecon_science.embedding import WORK_BOX_PX
    from cryodecon_science.io.mrc import InputFileError

    maps = [Path(m) for m in args.maps]
    structure_ids = args.structure_ids or [m.name.split(".")[0] for m in maps]
    paper_ids = args.paper_ids or [None] * len(maps)
    if len(structure_ids) != len(maps) or len(paper_ids) != len(maps):
        print(
            f"cryodecon library seed: {len(maps)} maps need as many --structure-id and --paper-id "
            f"(got {len(args.structure_ids)} and {len(args.paper_ids)})",
            file=sys.stderr,
        )
        return 2
    diameter = (
        args.particle_diameter_angstrom if args.particle_diameter_angstrom is not None else default_diameter_angstrom
    )
    # The embedding resamples every box to WORK_BOX_PX pixels, so a finer sampling gives the same
    # embeddings, only slower; 4 Å keeps the 8 Å references' content.
    pixel = args.pixel_size_angstrom
    if pixel is None:
        pixel = min(1.5 * diameter / WORK_BOX_PX, 0.5 * REFERENCE_RESOLUTION_ANGSTROM)
    device = _resolve_device(args.device)
    try:
        added = seed_library_from_maps(
            library, maps, structure_ids, paper_ids, pixel, diameter, args.projections, args.seed, device=device
        )
    except (InputFileError, ValueError, OSError) as exc:
        print(f"cryodecon library seed: {exc}", file=sys.stderr)
        return 2
    print(f"seeded {added} rows from {len(maps)} maps; library holds {library.count()} rows")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from cryodecon_science.io.session import write_simulated_session
    from cryodecon_science.simulate import SimulationConfig, simulate_session

    config = SimulationConfig(shape_px=(args.size, args.size))
    session = simulate_session(config, args.session, args.micrographs, args.movies, args.seed)
    written = write_simulated_session(session, Path(args.root), write_truth_images=args.truth_images)
    print(f"wrote {len(written)} files under {Path(args.root) / args.session}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from cryodecon_assets.driver import drive
    from cryodecon_assets.references import ensure_citation_graph, ensure_reference_library, established_papers
    from cryodecon_resources import Settings
    from cryodecon_science.io.citations import read_citation_graph
    from cryodecon_science.io.session import write_simulated_session
    from cryodecon_science.simulate import SimulationConfig, simulate_session

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
    resources = _resources(settings)
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
    added = ensure_reference_library(resources.structure_library, config, seed=args.seed, papers=papers)
    if added:
        print(f"[demo] seeded the structure library with {added} reference projections")
    instance, defs = _instance_and_defs(settings)
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
    views = resources.warehouse.export_views()
    frame = score_rows(DEMO_SESSION, resources.warehouse)
    print(f"[demo] DuckDB views over the warehouse: {views}")
    print(f"[demo] HyperScores ({len(frame)} micrographs, from DuckDB over the warehouse):")
    print_scores(frame, "table")
    print(
        f"[demo] done in {time.time() - started:.0f} s.  UI: DAGSTER_HOME={instance.root_directory} "
        f".venv/bin/dagster dev -w workspace.yaml"
    )
    return 0 if all(report.runs.values()) and len(frame) else 1


COMMANDS = {
    "ctf": cmd_ctf,
    "restore": cmd_restore,
    "scores": cmd_scores,
    "sql": cmd_sql,
    "tick": cmd_tick,
    "reprocess": cmd_reprocess,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
    "library": cmd_library,
    "label": cmd_label,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except InstanceFileError as exc:
        print(f"cryodecon: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
