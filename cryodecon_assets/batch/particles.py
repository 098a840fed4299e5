"""``particle_picks`` and ``particles``: picks per micrograph with the reason each is kept or set aside, and
the extracted particles with RELION's coordinate files and ``particles.star`` per batch and per session."""

import dataclasses
import fcntl
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import networkx as nx

from cryodecon_assets.batch.common import GROUP, run_per_micrograph, selected, selection
from cryodecon_assets.batch.figures import PREVIEW_LIMIT, picks_picture, picture_data_uri
from cryodecon_assets.execution import GPU_POOL, GPU_STEP_TAGS
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import OutputStore, PickingSettings, ScoreWarehouse, TorchDevice
from cryodecon_resources.tables import tables_metadata
from cryodecon_science.exposure import Exposure
from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.io.particles import (
    ParticleRow,
    ParticleStack,
    autopick_star_name,
    merge_particles_stars,
    write_autopick_star,
    write_particles_star,
)
from cryodecon_science.io.picker_weights import load_pretrained_picker
from cryodecon_science.picking import box_inside, extract_particles
from cryodecon_science.picking.adaptation import AdaptationReport, MicrographToPick, pick_batch_adapted
from cryodecon_science.picking.micrograph import MicrographPicks
from cryodecon_science.picking.region_graph import (
    MicrographPlacement,
    build_region_graph,
    graph_tables,
    micrograph_subgraph,
)
from cryodecon_science.records import CtfFit

PARTICLES_STAR = "particles.star"


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"torch", "star"},
    description="Particle picks per micrograph: the learned picker's candidates on the raw micrograph, each kept "
    "or set aside (carbon, contamination, thick ice, aggregate) with its reason; rows in the warehouse "
    "table `picks`, a RELION `<micrograph>_autopick.star` of the kept ones.",
)
def particle_picks(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
    device: TorchDevice,
    picking: PickingSettings,
) -> dg.Output[dict[str, MicrographPicks]]:
    batch = context.partition_key
    model, torch_device = load_pretrained_picker(), device.torch_device()
    adaptation: dict[str, AdaptationReport] = {}

    def batch_step(items: Mapping[str, Exposure]) -> Mapping[str, MicrographPicks | ValueError]:
        to_pick = {
            name: MicrographToPick(e.data, e.pixel_size_angstrom, picking.diameter_angstrom(e))
            for name, e in items.items()
        }
        outcomes, reports = pick_batch_adapted(to_pick, model, picking.adaptation(), device=torch_device)
        adaptation.update(reports)
        return outcomes

    picks = run_per_micrograph(
        context, warehouse, "particle_picks", selected(context, raw_micrographs), batch_step=batch_step
    )
    for name, picked in picks.items():
        path = outputs.asset_path("particle_picks", batch, autopick_star_name(name))
        write_autopick_star(path, picked.coords_yx_px[picked.kept], picked.figure_of_merit[picked.kept])
    rows = pick_rows(batch, raw_micrographs, picks)
    held = {"picks": warehouse.write_rows("picks", batch, rows, replace_micrographs=selection(context))}
    metadata = {**picks_metadata(raw_micrographs, picks), **tables_metadata(held)}
    if adaptation:
        metadata["adaptation"] = dg.MetadataValue.json({k: dataclasses.asdict(r) for k, r in adaptation.items()})
    return dg.Output(picks, metadata=metadata)


def pick_rows(batch: str, raw: Mapping[str, Exposure], picks: Mapping[str, MicrographPicks]) -> list[dict[str, Any]]:
    """The ``picks`` table: one row per candidate, kept or set aside."""
    return [
        {
            "micrograph": name,
            "batch": batch,
            "session": raw[name].session,
            "pick": i,
            "x_px": float(x),
            "y_px": float(y),
            "figure_of_merit": float(merit),
            "reason": str(reason),
            "particle_diameter_angstrom": picked.particle_diameter_angstrom,
        }
        for name, picked in picks.items()
        for i, ((y, x), merit, reason) in enumerate(
            zip(picked.coords_yx_px, picked.figure_of_merit, picked.reasons, strict=True)
        )
    ]


def picks_metadata(raw: Mapping[str, Exposure], picks: Mapping[str, MicrographPicks]) -> dict[str, Any]:
    """Particles per micrograph, what was set aside and why, and the picks drawn on the first micrographs."""
    set_aside: dict[str, int] = {}
    for picked in picks.values():
        for reason, n in picked.rejected_counts().items():
            set_aside[reason] = set_aside.get(reason, 0) + n
    lines = ["| micrograph | picks | particles | carbon (%) | contamination (%) |", "|---|---|---|---|---|"]
    lines += [
        f"| {name} | {len(p.reasons)} | {p.n_particles} | {100 * p.carbon_fraction:.1f} | "
        f"{100 * p.contamination_fraction:.1f} |"
        for name, p in picks.items()
    ]
    pictures = []
    for name, p in list(picks.items())[:PREVIEW_LIMIT]:
        diameter_px = p.particle_diameter_angstrom / raw[name].pixel_size_angstrom
        pictures.append(
            f"![{name}]({picture_data_uri(picks_picture(raw[name].data, p.coords_yx_px, p.kept, diameter_px))})"
        )
    return {
        "particles": sum(p.n_particles for p in picks.values()),
        "set_aside": dg.MetadataValue.json(set_aside),
        "per_micrograph": dg.MetadataValue.md("\n".join(lines)),
        "picks": dg.MetadataValue.md(" ".join(pictures) + "\n\ngreen: kept; red: set aside"),
    }


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    kinds={"mrc", "star"},
    description="Particles per micrograph: boxes of the kept picks cut from the dose-weighted sum (the "
    "picks whose box leaves the micrograph counted in `box_outside`, not extracted; the "
    "micrograph itself where there is no movie), normalised as RELION does (background mean 0, std 1, ramp "
    "removed, particles white), as `.mrcs` stacks; a RELION 3.1 `particles.star` per batch and per session "
    "(defocus from the micrograph's CTF fit).",
)
def particles(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    ctf_estimates: dict[str, CtfFit],
    particle_picks: dict[str, MicrographPicks],
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
) -> dg.Output[dict[str, ParticleStack]]:
    batch = context.partition_key
    items = {k: v for k, v in selected(context, raw_micrographs).items() if k in ctf_estimates and k in particle_picks}

    def step(name: str, exposure: Exposure) -> ParticleStack:
        picked, fit = particle_picks[name], ctf_estimates[name]
        source = exposure.extraction_source
        inside = box_inside(picked.coords_yx_px, picked.box_px, source.data.shape)
        keep, outside = picked.kept & inside, int((picked.kept & ~inside).sum())
        coords, merit = picked.coords_yx_px[keep], picked.figure_of_merit[keep]
        stack = outputs.asset_path("particles", batch, f"{name}.mrcs")
        if coords.shape[0] == 0:  # nothing to extract: no stack, and none left from an earlier run
            stack.unlink(missing_ok=True)
            Path(extract_star_path(str(stack))).unlink(missing_ok=True)
            return ParticleStack(str(stack), picked.box_px, (), outside)
        write_mrc(stack, extract_particles(source.data, coords, picked.box_px), source.pixel_size_angstrom)
        micrograph_path = str(outputs.asset_path("raw_micrographs", batch, f"{name}.mrc"))
        rows = tuple(
            ParticleRow(
                str(stack),
                i + 1,
                micrograph_path,
                (float(y), float(x)),
                fit.ctf,
                exposure.microscope,
                fit.fit_resolution_angstrom,
                float(m),
            )
            for i, ((y, x), m) in enumerate(zip(coords, merit, strict=True))
        )
        write_particles_star(extract_star_path(str(stack)), list(rows), picked.box_px)
        return ParticleStack(str(stack), picked.box_px, rows, outside)

    stacks = run_per_micrograph(context, warehouse, "particles", items, step)
    rows = [
        {
            "micrograph": n,
            "batch": batch,
            "session": raw_micrographs[n].session,
            "particles": s.n_particles,
            "box_outside": s.n_box_outside,
            "box_px": s.box_px,
            "stack_path": s.stack_path,
            "star_path": extract_star_path(s.stack_path),
        }
        for n, s in stacks.items()
    ]
    held = {
        "particle_stacks": warehouse.write_rows("particle_stacks", batch, rows, replace_micrographs=selection(context))
    }
    stars = write_particle_stars(warehouse, outputs, batch, raw_micrographs)
    return dg.Output(stacks, metadata={**particles_metadata(stacks, stars), **tables_metadata(held)})


def extract_star_path(stack_path: str) -> str:
    """The micrograph's ``_extract.star`` beside its stack (RELION's Extract layout)."""
    return str(Path(stack_path).with_name(Path(stack_path).stem + "_extract.star"))


def write_particle_stars(
    warehouse: ScoreWarehouse, outputs: OutputStore, batch: str, raw: Mapping[str, Exposure]
) -> dict[str, tuple[Path, int]]:
    """The batch's and the session's ``particles.star``, merged from the micrographs' ``_extract.star`` files
    the warehouse lists (a selective rerun replaced only its own); the session's under a lock, so batches of
    one session finishing together never drop each other's particles."""
    stars: dict[str, tuple[Path, int]] = {}
    listed = warehouse.read_rows("particle_stacks", batch)
    sources = [Path(p) for p, n in zip(listed.get("star_path", []), listed.get("particles", []), strict=True) if n > 0]
    if sources:
        path = outputs.star_path(batch, PARTICLES_STAR)
        stars["batch"] = (path, merge_particles_stars(sources, path))
    session = next(iter(raw.values())).session if raw else None
    if session is not None:
        path = outputs.session_path(session, PARTICLES_STAR)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            table = warehouse.query(
                "SELECT star_path FROM particle_stacks WHERE session = ? AND particles > 0 ORDER BY batch, micrograph",
                [session],
            )
            if len(table):
                stars["session"] = (path, merge_particles_stars([Path(p) for p in table["star_path"]], path))
    return stars


def particles_metadata(stacks: Mapping[str, ParticleStack], stars: Mapping[str, tuple[Path, int]]) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "particles": sum(s.n_particles for s in stacks.values()),
        "not_extracted_box_outside": sum(s.n_box_outside for s in stacks.values()),
    }
    for scope, (path, count) in stars.items():
        metadata[f"{scope}_star"] = dg.MetadataValue.path(str(path))
        metadata[f"{scope}_particles"] = count
    return metadata


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    kinds={"networkx"},
    description="The batch decomposed as a graph: session → grid square → foil hole → micrograph → junk regions "
    "and particles, with overlaps (pick in a region), near (kept pick within a diameter of carbon) and "
    "too_close (kept picks closer than a diameter); node and edge rows in the warehouse tables "
    "`region_nodes` and `region_edges`.",
)
def region_graph(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    particle_picks: dict[str, MicrographPicks],
    warehouse: ScoreWarehouse,
) -> dg.Output[dict[str, nx.DiGraph]]:
    batch = context.partition_key
    placements = [placement(raw_micrographs[name], picked) for name, picked in sorted(particle_picks.items())]
    graph = build_region_graph(placements)
    nodes, edges = graph_tables(graph)
    held = {
        "region_nodes": warehouse.write_rows("region_nodes", batch, [{"batch": batch, **row} for row in nodes]),
        "region_edges": warehouse.write_rows("region_edges", batch, [{"batch": batch, **row} for row in edges]),
    }
    per_micrograph = {p.name: micrograph_subgraph(graph, p.name) for p in placements}
    kinds = Counter(kind for _, kind in graph.nodes(data="kind"))
    relations = Counter(relation for _, _, relation in graph.edges(data="relation"))
    return dg.Output(
        per_micrograph,
        metadata={
            "nodes": dg.MetadataValue.json(dict(kinds)),
            "edges": dg.MetadataValue.json(dict(relations)),
            **tables_metadata(held),
        },
    )


def placement(exposure: Exposure, picked: MicrographPicks) -> MicrographPlacement:
    acquisition = exposure.metadata.acquisition
    return MicrographPlacement(
        exposure.name,
        exposure.session,
        acquisition.grid_square_id,
        acquisition.foil_hole_id,
        (int(exposure.data.shape[0]), int(exposure.data.shape[1])),
        exposure.pixel_size_angstrom,
        picked,
    )
