"""``cryodecon tick | reprocess | library``: sensor ticks, reruns and the structure library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports Dagster and torch only for the commands that need them
    from cryodecon_resources import Settings

from cryodecon_assets.cli.instance import prepare_instance_home
from cryodecon_assets.cli.science import resolve_device
from cryodecon_assets.cli.warehouse import cli_resources, cli_warehouse


def instance_and_definitions(settings: Settings | None = None):  # type: ignore[no-untyped-def]
    import dagster as dg

    from cryodecon_assets.definitions import build_definitions
    from cryodecon_resources import Settings

    settings = settings or Settings.from_environment()
    home = prepare_instance_home(settings.home)
    return dg.DagsterInstance.from_config(str(home)), build_definitions(settings)


def cmd_tick(args: argparse.Namespace) -> int:
    from cryodecon_assets.cli.driver import drive
    from cryodecon_resources import Settings

    settings = Settings.from_environment()
    instance, defs = instance_and_definitions(settings)
    report = drive(instance, defs, settle_seconds=settings.settle_seconds, max_ticks=args.max_ticks)
    print(f"ticks={report.ticks} batches={report.partitions_added} runs={report.runs}")
    return 0 if all(report.runs.values()) else 1


def cmd_reprocess(args: argparse.Namespace) -> int:
    from cryodecon_assets.cli.driver import execute_batch
    from cryodecon_assets.intake.batching import MANIFESTS, BatchManifest
    from cryodecon_assets.intake.sensors import PROCESS_JOB
    from cryodecon_assets.partitions import acquisition_batches
    from cryodecon_resources.io_manager import SELECTION_TAG

    warehouse = cli_warehouse()
    known = warehouse.list_documents(MANIFESTS)
    if args.batch not in known:
        print(f"cryodecon reprocess: no batch {args.batch!r} (known: {_some(known)})", file=sys.stderr)
        return 2
    manifest = BatchManifest.from_document(warehouse.read_document(MANIFESTS, args.batch))
    unknown = sorted(set(args.micrograph) - {f.name for f in manifest.files})
    if unknown:
        print(f"cryodecon reprocess: batch {args.batch} has no micrograph {', '.join(unknown)}", file=sys.stderr)
        return 2
    instance, defs = instance_and_definitions()
    if not instance.has_dynamic_partition(acquisition_batches.name, args.batch):
        instance.add_dynamic_partitions(acquisition_batches.name, [args.batch])  # a cut the sensor never registered
    tags = {"cryodecon/source": "reprocess"}
    if args.micrograph:
        tags[SELECTION_TAG] = ",".join(args.micrograph)
    success = execute_batch(instance, defs.resolve_job_def(PROCESS_JOB), args.batch, tags)
    print(f"batch {args.batch}: {'success' if success else 'failure'}")
    return 0 if success else 1


def _some(names: Sequence[str], shown: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[-shown:]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def cmd_library(args: argparse.Namespace) -> int:
    resources = cli_resources()
    library = resources.structure_library
    if args.library_command == "status":
        print(f"rows: {library.count()}")  # type: ignore[attr-defined]
        index_info = getattr(library, "index_info", None)
        if callable(index_info):
            print(f"index: {index_info()}")
        return 0
    return _library_seed(args, library, resources.class_library, resources.picking.particle_diameter_angstrom)


def _library_seed(args: argparse.Namespace, library, class_library, default_diameter_angstrom: float) -> int:  # type: ignore[no-untyped-def]
    from cryodecon_assets.facility.references import REFERENCE_RESOLUTION_ANGSTROM, seed_library_from_maps
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
    device = resolve_device(args.device)
    try:
        added = seed_library_from_maps(
            library,
            maps,
            structure_ids,
            paper_ids,
            pixel,
            diameter,
            args.projections,
            args.seed,
            device=device,
            class_library=class_library,
        )
    except (InputFileError, ValueError, OSError) as exc:
        print(f"cryodecon library seed: {exc}", file=sys.stderr)
        return 2
    print(f"seeded {added} rows from {len(maps)} maps; library holds {library.count()} rows")
    return 0
