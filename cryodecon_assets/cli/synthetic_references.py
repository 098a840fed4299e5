"""Synthetic reference data for the demo, the tests and the benchmarks: a generated citation graph and
a structure library seeded with projections of the simulator's structures.

The synthetic citation graph (``simulate.generate_citation_graph``) is labelled synthetic in every table it
reaches.  The library holds projections of every simulated structure but the last, so a simulated session
holds known structures and one unseen structure.  A facility instead points ``CRYODECON_CITATION_GRAPH`` at
a real export and seeds the library from its own maps (``cryodecon library seed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np

from cryodecon_assets.facility.references import EDGES, NODES, reference_embeddings, seed_class_views
from cryodecon_resources import StructureLibrary
from cryodecon_science.io.citations import write_citation_graph
from cryodecon_science.picking import particle_box_px
from cryodecon_science.projection import random_euler_angles_deg
from cryodecon_science.simulate import SimulationConfig, generate_citation_graph, make_structures, project_structure

# The demo graph spans 1985–2025: the ImpactFore model skips a generated graph's first ten years (its
# start-up transient, ``impact.DEFAULT_BURN_IN_YEARS``) and needs complete 5-year windows to train on.
CITATION_GRAPH_START_YEAR = 1985


def ensure_citation_graph(folder: Path, seed: int = 0, n_papers: int = 5000) -> Path:
    """Write the synthetic citation graph into ``folder`` unless one is already there."""
    if not (folder / EDGES).exists() or not (folder / NODES).exists():
        graph = generate_citation_graph(n_papers=n_papers, start_year=CITATION_GRAPH_START_YEAR, seed=seed)
        write_citation_graph(graph, folder)
    return folder


def established_papers(graph: nx.DiGraph, min_age_years: int = 5, max_age_years: int = 15) -> list[str]:
    """Papers published 5–15 years before the graph's last year: established work with complete windows.

    The synthetic demo ties each known reference structure to one of these, as a real library ties a PDB
    entry to its primary citation.
    """
    last = max(int(year) for _, year in graph.nodes(data="year"))
    return sorted(str(p) for p, year in graph.nodes(data="year") if min_age_years <= last - int(year) <= max_age_years)


def ensure_reference_library(
    library: StructureLibrary,
    config: SimulationConfig,
    seed: int = 0,
    projections_per_structure: int = 12,
    papers: Sequence[str] | None = None,
    class_library: StructureLibrary | None = None,
) -> int:
    """Seed the library with projections of every simulated structure but the last (the unseen one).

    Each reference structure is tied to one paper drawn from ``papers`` (e.g. :func:`established_papers`
    of the citation graph); without them, to one of the synthetic graph's first 200 papers (ids
    ``synthetic-<k>`` in ``generate_citation_graph``'s numbering).  Returns the number of
    entries added (0 when the library already holds references).  The projections are rendered from the
    pseudo-atoms directly (``project_structure``), not through a map; ``seed_library_from_maps`` is the
    route for real reference maps.  With ``class_library`` (seeded when empty), the same projections are
    registered there as known class views (``seed_class_views``), for the novelty of 2D classes.
    """
    seed_particles = library.count() == 0
    seed_classes = class_library is not None and class_library.count() == 0
    if not (seed_particles or seed_classes):
        return 0
    structures = make_structures(config.n_structures, config.particle_diameter_angstrom, config.structure_seed)
    rng = np.random.default_rng(seed)
    diameter_px = config.particle_diameter_angstrom / config.pixel_size_angstrom
    box = particle_box_px(diameter_px)
    projections, structure_ids, paper_ids = [], [], []
    for structure in structures[:-1]:
        paper = (
            str(papers[int(rng.integers(0, len(papers)))]) if papers else f"synthetic-{int(rng.integers(0, 200)):05d}"
        )
        for angles in random_euler_angles_deg(rng, projections_per_structure):
            projections.append(project_structure(structure, angles, box, config.pixel_size_angstrom))
            structure_ids.append(f"structure-{structure.structure_id}")
            paper_ids.append(paper)
    if not projections:
        return 0
    if seed_classes:
        assert class_library is not None
        seed_class_views(
            class_library, np.stack(projections), config.pixel_size_angstrom, box, structure_ids, paper_ids
        )
    if not seed_particles:
        return 0
    embeddings = reference_embeddings(np.stack(projections), config.pixel_size_angstrom, box)
    return library.seed_reference_structures(embeddings, structure_ids, paper_ids)
