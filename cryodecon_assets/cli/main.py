"""``cryodecon`` command line.

Stable contracts (other tools call them):

* ``cryodecon demo`` — simulate a session into the embedded storage, drive it through the real sensor ->
  run path on a persistent instance, print the HyperScore table from DuckDB.
* ``cryodecon restore INPUT... --output-dir DIR [--target denoised|deconvolved|fused] [--device auto|cpu|cuda]``
  — writes ``DIR/<input file name>``, float32 MRC, pixel size in the header.
* ``cryodecon ctf INPUT... --output FILE.json [--star FILE.star]`` — a JSON list of objects with keys
  micrograph, defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_degrees, fit_resolution_angstrom
  (RELION/CTFFIND convention: U ≥ V, angle from the x axis to U, counter-clockwise).
* ``cryodecon pick MICROGRAPH... --particle-diameter-angstrom D --output-dir DIR [--device auto|cpu|cuda]``
  — writes ``DIR/<micrograph stem>_autopick.star`` per input: rlnCoordinateX/Y in pixels of the input, the
  0-based column and row of the particle centre in the array as mrcfile reads it (``data[y, x]``), and
  rlnAutopickFigureOfMerit; picks on carbon, contamination or aggregates are left out.  Without
  ``--particle-diameter-angstrom`` the diameter is estimated from the first micrographs (up to
  ``ESTIMATE_FROM`` of the first one's pixel size, ``picking.diameter``) and printed.
* ``cryodecon extract MICROGRAPH... --coordinates DIR --box-size-px N --output-dir DIR`` — writes
  ``DIR/<micrograph stem>.mrcs`` (boxes normalised as RELION does, particles white) and ``DIR/particles.star``
  (RELION ≥ 3.1, optics block; the defocus of each micrograph fitted on the way).
* ``cryodecon classify2d PARTICLES.star --classes K --output-dir DIR [--particle-diameter-angstrom D]
  [--box-size-px N] [--iterations N] [--seed S] [--device auto|cpu|cuda]`` — reference-free 2D classification
  (``cli.classify``; image paths of rlnImageName resolved against the current folder): ``DIR/class_averages.mrcs``
  (K sections, float32, pixel size in the header), ``DIR/particles.star`` (the input with rlnClassNumber from 1,
  rlnAnglePsi, rlnOriginXAngst/YAngst in RELION's convention and rlnMaxValueProbDistribution) and
  ``DIR/classes.csv`` (class_number, particles, resolution_angstrom at FRC 0.143, selected, reasons ';'-joined).
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
import os
import sys
from collections.abc import Sequence

from cryodecon_assets.cli.classify import DEFAULT_DIAMETER_BOX_FRACTION, STREAM_ABOVE, STREAM_CHUNK, cmd_classify2d
from cryodecon_assets.cli.demo import DEMO_SESSION, cmd_demo, cmd_simulate
from cryodecon_assets.cli.instance import InstanceFileError
from cryodecon_assets.cli.particles import cmd_extract, cmd_pick
from cryodecon_assets.cli.runs import cmd_library, cmd_reprocess, cmd_tick
from cryodecon_assets.cli.science import cmd_ctf, cmd_restore
from cryodecon_assets.cli.warehouse import cmd_export, cmd_label, cmd_scores, cmd_sql
from cryodecon_assets.cli.workers import cmd_workers


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

    workers = sub.add_parser(
        "workers", help="start this node's Celery workers (CRYODECON_EXECUTOR=celery): one per GPU, plus CPU workers"
    )
    workers.add_argument("--gpus", default="", help="GPU ids, one worker each, e.g. 0,1,2,3")
    workers.add_argument("--gpu-workers", type=int, default=0, help="device-less workers on the gpu queue (no --gpus)")
    workers.add_argument("--cpu-workers", type=int, default=1, help="workers on the dagster (CPU) queue")
    workers.add_argument("--cpu-concurrency", type=int, default=2, help="processes per CPU worker")
    workers.add_argument("--startup-seconds", type=float, default=120.0)

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

    pick = sub.add_parser("pick", help="pick particles; writes DIR/<micrograph stem>_autopick.star per input")
    pick.add_argument("inputs", nargs="+")
    pick.add_argument(
        "--particle-diameter-angstrom",
        type=float,
        default=None,
        help="expected diameter, Å; estimated from the first micrographs when not given",
    )
    pick.add_argument("--output-dir", required=True)
    pick.add_argument("--pixel-size-angstrom", type=float, default=None, help="override the MRC header")
    pick.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")

    extract = sub.add_parser("extract", help="extract particle boxes; writes DIR/<stem>.mrcs and DIR/particles.star")
    extract.add_argument("inputs", nargs="+")
    extract.add_argument("--coordinates", required=True, help="folder of <micrograph stem>_autopick.star files")
    extract.add_argument("--box-size-px", type=int, required=True)
    extract.add_argument("--output-dir", required=True)
    extract.add_argument("--device", default="auto", help="where the CTF of each micrograph is fitted")
    _microscope_arguments(extract)

    classify2d = sub.add_parser(
        "classify2d",
        help="reference-free 2D classification of a particles.star; writes class averages, classes and labels",
        description=f"Up to {STREAM_ABOVE:,} particles are classified in one call of update_classes (--iterations "
        f"EM iterations); more are streamed in file order in chunks of at most {STREAM_CHUNK:,} through "
        "update_classes and then assigned once more to the final classes.  Boxes larger than --box-size-px are "
        "Fourier-cropped to it.",
    )
    classify2d.add_argument("particles", help="RELION >= 3.1 particles.star (data_optics + data_particles)")
    classify2d.add_argument("--classes", type=int, required=True, help="number of classes K")
    classify2d.add_argument("--output-dir", required=True)
    classify2d.add_argument(
        "--particle-diameter-angstrom",
        type=float,
        default=None,
        help=f"mask diameter, Å (default {DEFAULT_DIAMETER_BOX_FRACTION} x the box edge x the pixel size)",
    )
    classify2d.add_argument("--box-size-px", type=int, default=64, help="classification box, px (even, >= 16)")
    classify2d.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="EM iterations on the first (or only) batch (default: Classification2DConfig.initial_iterations)",
    )
    classify2d.add_argument("--seed", type=int, default=0, help="seed of the random start")
    classify2d.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")

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


COMMANDS = {
    "ctf": cmd_ctf,
    "restore": cmd_restore,
    "pick": cmd_pick,
    "extract": cmd_extract,
    "classify2d": cmd_classify2d,
    "scores": cmd_scores,
    "sql": cmd_sql,
    "tick": cmd_tick,
    "workers": cmd_workers,
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
