"""The decomposition of a batch into a graph: session → grid square → foil hole → micrograph → regions and
particles, with the relations between them.

Nodes (attribute ``kind``):

* ``session``, ``grid_square``, ``foil_hole``: the acquisition hierarchy (EPU's ``GridSquare_<id>`` folder and
  ``FoilHole_<id>_Data_…`` name; ``unassigned`` where the exposure's metadata gives none);
* ``micrograph``: with its area in µm²;
* ``region``: a junk region of a micrograph (``region_kind`` carbon, contamination or thick_ice) with its
  share of the micrograph's area;
* ``particle``: every candidate pick, with its centre (pixels), figure of merit and ``reason`` (ok, or why it
  was set aside).

Edges (attribute ``relation``): ``contains`` (parent → child, down the hierarchy and from a micrograph to its
regions and particles); ``overlaps`` (particle → region its centre lies in); ``near`` (kept particle → the
micrograph's carbon region, when the centre lies within one particle diameter of the carbon, a pick at the
hole's edge where the ice thins and the carbon's scattering reaches the box); ``too_close`` (particle →
particle, kept picks whose centres are closer than one diameter, i.e. whose projections overlap).

The graph is a ``networkx.DiGraph``; ``graph_tables`` flattens it into node and edge rows for the warehouse,
where DuckDB answers the questions a facility asks of it (particles per foil hole, share of picks on carbon
per grid square).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
from scipy import spatial

from cryodecon_science.picking.junk import (
    REASON_AGGREGATE,
    REASON_CARBON,
    REASON_CONTAMINATION,
    REASON_OK,
    REASON_THICK_ICE,
)
from cryodecon_science.picking.micrograph import MicrographPicks

UNASSIGNED = "unassigned"
REGION_KINDS = (REASON_CARBON, REASON_CONTAMINATION, REASON_THICK_ICE)
RELATIONS = ("contains", "overlaps", "near", "too_close")


@dataclass(frozen=True)
class MicrographPlacement:
    """Where one micrograph sits in the acquisition, and its picks.

    Attributes
    ----------
    name : str
        Exposure name.
    session : str
        Acquisition session.
    grid_square_id, foil_hole_id : str or None
        EPU grid square and foil hole (None where the metadata gives none).
    shape_yx_px : tuple of int
        Micrograph size, pixels.
    pixel_size_angstrom : float
        Å per pixel.
    picks : MicrographPicks
        Its candidate picks and region fractions.
    """

    name: str
    session: str
    grid_square_id: str | None
    foil_hole_id: str | None
    shape_yx_px: tuple[int, int]
    pixel_size_angstrom: float
    picks: MicrographPicks


def particle_node(micrograph: str, index: int) -> str:
    return f"particle:{micrograph}/{index}"


def build_region_graph(placements: Sequence[MicrographPlacement]) -> nx.DiGraph:
    """The decomposition graph of a set of micrographs (module docstring)."""
    graph = nx.DiGraph()
    for placement in placements:
        session = f"session:{placement.session}"
        square_id = placement.grid_square_id or UNASSIGNED
        square = f"grid_square:{placement.session}/{square_id}"
        hole = f"foil_hole:{placement.session}/{square_id}/{placement.foil_hole_id or UNASSIGNED}"
        micrograph = f"micrograph:{placement.name}"
        area_um2 = placement.shape_yx_px[0] * placement.shape_yx_px[1] * (placement.pixel_size_angstrom * 1e-4) ** 2
        graph.add_node(session, kind="session", label=placement.session)
        graph.add_node(square, kind="grid_square", label=square_id)
        graph.add_node(hole, kind="foil_hole", label=placement.foil_hole_id or UNASSIGNED)
        graph.add_node(micrograph, kind="micrograph", label=placement.name, area_um2=area_um2)
        for parent, child in ((session, square), (square, hole), (hole, micrograph)):
            graph.add_edge(parent, child, relation="contains")
        _add_micrograph(graph, micrograph, placement)
    return graph


def _add_micrograph(graph: nx.DiGraph, micrograph: str, placement: MicrographPlacement) -> None:
    picks = placement.picks
    fractions = {
        REASON_CARBON: picks.carbon_fraction,
        REASON_CONTAMINATION: picks.contamination_fraction,
        REASON_THICK_ICE: picks.thick_ice_fraction,
    }
    regions = {}
    for kind, fraction in fractions.items():
        if fraction > 0:
            regions[kind] = f"region:{placement.name}/{kind}"
            graph.add_node(regions[kind], kind="region", label=kind, region_kind=kind, area_fraction=float(fraction))
            graph.add_edge(micrograph, regions[kind], relation="contains")
    diameter_px = picks.particle_diameter_angstrom / placement.pixel_size_angstrom
    for i, ((y, x), merit, reason) in enumerate(
        zip(picks.coords_yx_px, picks.figure_of_merit, picks.reasons, strict=True)
    ):
        node = particle_node(placement.name, i)
        graph.add_node(
            node, kind="particle", x_px=float(x), y_px=float(y), figure_of_merit=float(merit), reason=str(reason)
        )
        graph.add_edge(micrograph, node, relation="contains")
        if str(reason) in regions:
            graph.add_edge(node, regions[str(reason)], relation="overlaps")
        near = picks.distance_to_carbon_px[i]
        if str(reason) == REASON_OK and REASON_CARBON in regions and near <= diameter_px:
            graph.add_edge(node, regions[REASON_CARBON], relation="near", distance_px=float(near))
    kept = np.flatnonzero(picks.kept)
    if kept.size > 1:
        pairs = spatial.cKDTree(picks.coords_yx_px[kept]).query_pairs(diameter_px, output_type="ndarray")
        for a, b in pairs:
            i, j = int(kept[a]), int(kept[b])
            distance = float(np.linalg.norm(picks.coords_yx_px[i] - picks.coords_yx_px[j]))
            graph.add_edge(
                particle_node(placement.name, i),
                particle_node(placement.name, j),
                relation="too_close",
                distance_px=distance,
            )


def graph_tables(graph: nx.DiGraph) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Node rows (node, kind, session, grid square, foil hole, micrograph and the node's attributes) and edge
    rows (source, target, relation, distance_px) of a decomposition graph."""
    nodes = []
    for node, attributes in graph.nodes(data=True):
        row = {"node": node, **attributes, **_lineage(graph, node)}
        nodes.append(row)
    edges = [
        {"source": s, "target": t, "relation": a["relation"], "distance_px": a.get("distance_px")}
        for s, t, a in graph.edges(data=True)
    ]
    return nodes, edges


def _lineage(graph: nx.DiGraph, node: str) -> dict[str, str | None]:
    """Labels of the session, grid square, foil hole and micrograph a node lies in (itself included)."""
    found: dict[str, str | None] = {"session": None, "grid_square": None, "foil_hole": None, "micrograph": None}
    current: str | None = node
    while current is not None:
        kind = graph.nodes[current]["kind"]
        if kind in found:
            found[kind] = graph.nodes[current]["label"]
        parents = [p for p in graph.predecessors(current) if graph.edges[p, current]["relation"] == "contains"]
        current = parents[0] if parents else None
    return found


def micrograph_subgraph(graph: nx.DiGraph, micrograph: str) -> nx.DiGraph:
    """One micrograph's part of the graph: its ancestors (hole, square, session), regions and particles."""
    node = f"micrograph:{micrograph}"
    return graph.subgraph({node} | nx.ancestors(graph, node) | nx.descendants(graph, node)).copy()


@dataclass(frozen=True)
class PackingFacts:
    """What the decomposition graph says about one micrograph's particles, for LogicScore's packing rules.

    Attributes
    ----------
    candidates : int
        Every candidate pick.
    kept : int
        Picks kept as particles (reason ok).
    crowded : int
        Kept particles with a ``too_close`` neighbour (centres closer than one diameter).
    aggregates : int
        Candidates set aside as members of an aggregate.
    near_carbon : int
        Kept particles ``near`` the carbon (centre within one diameter of it).
    hole_density_per_um2 : float
        Kept particles per µm² imaged in this micrograph's foil hole (its own micrograph where the hole is
        unknown).
    batch_hole_densities_per_um2 : tuple of float
        The same for every foil hole of the batch (this one included).
    """

    candidates: int
    kept: int
    crowded: int
    aggregates: int
    near_carbon: int
    hole_density_per_um2: float
    batch_hole_densities_per_um2: tuple[float, ...]


def _density_unit(graph: nx.DiGraph, micrograph_node: str) -> str:
    """The foil hole a micrograph is counted in, or the micrograph itself where the hole is unknown."""
    holes = [p for p in graph.predecessors(micrograph_node) if graph.nodes[p]["kind"] == "foil_hole"]
    known = [h for h in holes if graph.nodes[h]["label"] != UNASSIGNED]
    return known[0] if known else micrograph_node


def _kept_particles(graph: nx.DiGraph, micrograph_node: str) -> list[str]:
    return [
        n
        for n in graph.successors(micrograph_node)
        if graph.nodes[n]["kind"] == "particle" and graph.nodes[n]["reason"] == REASON_OK
    ]


def packing_facts(graph: nx.DiGraph, micrograph: str) -> PackingFacts:
    """The packing facts of ``micrograph`` in a batch's decomposition graph (``build_region_graph``)."""
    node = f"micrograph:{micrograph}"
    particles = [n for n in graph.successors(node) if graph.nodes[n]["kind"] == "particle"]
    kept = _kept_particles(graph, node)
    relations = {n: {graph.edges[e]["relation"] for e in (*graph.out_edges(n), *graph.in_edges(n))} for n in kept}
    units: dict[str, list[float]] = {}
    for m in (n for n, kind in graph.nodes(data="kind") if kind == "micrograph"):
        count_area = units.setdefault(_density_unit(graph, m), [0.0, 0.0])
        count_area[0] += len(_kept_particles(graph, m))
        count_area[1] += graph.nodes[m]["area_um2"]
    densities = {unit: count / area for unit, (count, area) in units.items()}
    return PackingFacts(
        candidates=len(particles),
        kept=len(kept),
        crowded=sum("too_close" in relations[n] for n in kept),
        aggregates=sum(graph.nodes[n]["reason"] == REASON_AGGREGATE for n in particles),
        near_carbon=sum("near" in relations[n] for n in kept),
        hole_density_per_um2=densities[_density_unit(graph, node)],
        batch_hole_densities_per_um2=tuple(sorted(densities.values())),
    )
