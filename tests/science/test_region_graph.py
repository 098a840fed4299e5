"""The decomposition graph on hand-made picks: hierarchy, regions, and each relation where it must hold."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from cryodecon_science.picking.micrograph import MicrographPicks
from cryodecon_science.picking.region_graph import (
    MicrographPlacement,
    build_region_graph,
    graph_tables,
    micrograph_subgraph,
    packing_facts,
    particle_node,
)

DIAMETER_ANGSTROM = 100.0  # 50 px at 2 Å/px


def picks(
    coords: list[tuple[float, float]], reasons: list[str], to_carbon: list[float], carbon: float
) -> MicrographPicks:
    return MicrographPicks(
        coords_yx_px=np.asarray(coords, dtype=np.float64),
        figure_of_merit=np.linspace(0.9, 0.5, len(coords)),
        reasons=np.asarray(reasons),
        distance_to_carbon_px=np.asarray(to_carbon, dtype=np.float64),
        particle_diameter_angstrom=DIAMETER_ANGSTROM,
        box_px=76,
        carbon_fraction=carbon,
        contamination_fraction=0.0,
        thick_ice_fraction=0.0,
    )


def placements() -> list[MicrographPlacement]:
    # a: two kept picks 30 px apart (closer than a diameter), one kept 40 px from carbon, one on carbon.
    a = picks(
        [(100.0, 100.0), (100.0, 130.0), (300.0, 300.0), (500.0, 60.0)],
        ["ok", "ok", "ok", "carbon"],
        [400.0, 380.0, 40.0, 0.0],
        carbon=0.2,
    )
    # b: in another hole of the same square, no carbon; two kept picks far apart, one aggregate.
    b = picks([(100.0, 100.0), (400.0, 400.0), (410.0, 420.0)], ["ok", "ok", "aggregate"], [np.inf] * 3, carbon=0.0)
    c = picks([], [], [], carbon=0.0)
    return [
        MicrographPlacement("a", "s", "7", "70", (1024, 1024), 2.0, a),
        MicrographPlacement("b", "s", "7", "71", (1024, 1024), 2.0, b),
        MicrographPlacement("c", "s", None, None, (1024, 1024), 2.0, c),
    ]


def test_the_hierarchy_runs_from_the_session_to_every_particle() -> None:
    graph = build_region_graph(placements())
    kinds = nx.get_node_attributes(graph, "kind")
    assert sum(k == "particle" for k in kinds.values()) == 7
    assert {n for n, k in kinds.items() if k == "foil_hole"} == {
        "foil_hole:s/7/70",
        "foil_hole:s/7/71",
        "foil_hole:s/unassigned/unassigned",
    }
    for particle in (n for n, k in kinds.items() if k == "particle"):
        path = nx.shortest_path(graph, "session:s", particle)
        assert [kinds[n] for n in path] == ["session", "grid_square", "foil_hole", "micrograph", "particle"]
    assert graph.nodes["micrograph:a"]["area_um2"] == (1024 * 2.0e-4) ** 2


def test_each_relation_holds_exactly_where_the_geometry_says() -> None:
    graph = build_region_graph(placements())
    relation = {(s, t): r for s, t, r in graph.edges(data="relation")}
    too_close = {(s, t) for (s, t), r in relation.items() if r == "too_close"}
    assert too_close == {(particle_node("a", 0), particle_node("a", 1))}  # the aggregate in b is not kept
    assert graph.edges[particle_node("a", 0), particle_node("a", 1)]["distance_px"] == 30.0
    assert relation[(particle_node("a", 3), "region:a/carbon")] == "overlaps"
    assert relation[(particle_node("a", 2), "region:a/carbon")] == "near"
    assert (particle_node("a", 0), "region:a/carbon") not in relation  # 400 px away: not near
    assert not any(t.startswith("region:b") for _, t in relation)  # no carbon in b: no region node


def test_tables_carry_the_lineage_labels_and_the_subgraph_keeps_one_micrograph() -> None:
    graph = build_region_graph(placements())
    nodes, edges = graph_tables(graph)
    particle_rows = [r for r in nodes if r["kind"] == "particle"]
    assert {(r["grid_square"], r["foil_hole"], r["micrograph"]) for r in particle_rows} == {
        ("7", "70", "a"),
        ("7", "71", "b"),
    }
    assert {r["relation"] for r in edges} == {"contains", "overlaps", "near", "too_close"}
    sub = micrograph_subgraph(graph, "b")
    assert "micrograph:a" not in sub and "session:s" in sub and particle_node("b", 2) in sub


def test_packing_facts_count_from_the_graph() -> None:
    """Micrograph a: 4 candidates, 3 kept, a touching pair, one kept near carbon; holes 70 and 71 hold 3 and 2
    kept particles over one micrograph each; c (no hole) counts as its own unit."""
    graph = build_region_graph(placements())
    area_um2 = (1024 * 2.0e-4) ** 2
    a = packing_facts(graph, "a")
    assert (a.candidates, a.kept, a.crowded, a.aggregates, a.near_carbon) == (4, 3, 2, 0, 1)
    assert a.hole_density_per_um2 == pytest.approx(3 / area_um2)
    assert a.batch_hole_densities_per_um2 == pytest.approx((0.0, 2 / area_um2, 3 / area_um2))
    b = packing_facts(graph, "b")
    assert (b.candidates, b.kept, b.crowded, b.aggregates, b.near_carbon) == (3, 2, 0, 1, 0)
