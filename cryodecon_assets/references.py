"""Reference data the evaluation needs: the citation graph and the structure library's known structures.

For the demo and the tests both are generated: a SYNTHETIC citation graph (``citations.generate_citation_
graph``, labelled synthetic in every table it reaches) and reference projections of the simulator's
structures, all but the last one, so the demo session holds known structures and one unseen structure.
A facility points ``CRYODECON_CITATION_GRAPH`` at a real export (``edges.parquet`` + ``nodes.parquet``) and
seeds the library from its own reference maps instead.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np

from cryodecon_resources import ScoringSettings, StructureLibrary
from cryodecon_science.citations import generate_citation_graph
from cryodecon_science.embedding import embed_particles
from cryodecon_science.io.citations import read_citation_graph, write_citation_graph
from cryodecon_science.simulate import (
    SimulationConfig,
    make_structures,
    project_structure,
    random_euler_angles_deg,
)

EDGES = "edges.parquet"
NODES = "nodes.parquet"
# Resolution the reference projections are low-passed to, matching what CTF-corrected particle boxes of
# a typical micrograph hold (fit resolutions of 4–8 Å at 1 Å/px).
REFERENCE_RESOLUTION_ANGSTROM = 8.0


def particle_box_px(diameter_px: float) -> int:
    """Box edge for a particle of ``diameter_px``: 1.5 diameters, even (RELION's habit)."""
    return int(2 * round(0.75 * diameter_px))


def ensure_citation_graph(folder: Path, seed: int = 0, n_papers: int = 2000) -> Path:
    """Write the synthetic citation graph into ``folder`` unless one is already there."""
    if not (folder / EDGES).exists() or not (folder / NODES).exists():
        write_citation_graph(generate_citation_graph(n_papers=n_papers, seed=seed), folder)
    return folder


def load_citation_graph(scoring: ScoringSettings) -> nx.DiGraph | None:
    folder = Path(scoring.citation_graph_path) if scoring.citation_graph_path else None
    if folder is None or not (folder / EDGES).exists():
        return None
    return read_citation_graph(folder)


def _low_pass(image: np.ndarray, pixel_size_angstrom: float, resolution_angstrom: float) -> np.ndarray:
    ky = np.fft.fftfreq(image.shape[0], d=pixel_size_angstrom)[:, None]
    kx = np.fft.rfftfreq(image.shape[1], d=pixel_size_angstrom)[None, :]
    sigma = 1.0 / resolution_angstrom  # Gaussian roll-off reaching e^-1/2 at the target resolution
    transfer = np.exp(-0.5 * (ky**2 + kx**2) / sigma**2)
    return np.fft.irfft2(np.fft.rfft2(image) * transfer, s=image.shape)


def ensure_reference_library(
    library: StructureLibrary, config: SimulationConfig, seed: int = 0, projections_per_structure: int = 12
) -> int:
    """Seed the library with projections of every simulated structure but the last (the unseen one).

    Each reference structure is tied to one paper of the synthetic citation graph (paper ids
    ``synthetic-<k>`` resolve in ``generate_citation_graph``'s numbering).  Returns the number of
    entries added (0 when the library already holds references).
    """
    if library.count() > 0:
        return 0
    structures = make_structures(config.n_structures, config.particle_diameter_angstrom, config.structure_seed)
    rng = np.random.default_rng(seed)
    diameter_px = config.particle_diameter_angstrom / config.pixel_size_angstrom
    box = particle_box_px(diameter_px)
    boxes, structure_ids, paper_ids = [], [], []
    for structure in structures[:-1]:
        paper = f"synthetic-{int(rng.integers(0, 200)):05d}"  # early papers: their 5-year window is complete
        for angles in random_euler_angles_deg(rng, projections_per_structure):
            projection = project_structure(structure, tuple(float(a) for a in angles), box, config.pixel_size_angstrom)
            boxes.append(_low_pass(projection, config.pixel_size_angstrom, REFERENCE_RESOLUTION_ANGSTROM))
            structure_ids.append(f"structure-{structure.structure_id}")
            paper_ids.append(paper)
    embeddings = embed_particles(np.asarray(boxes, dtype=np.float32))
    return library.seed_reference_structures(embeddings, structure_ids, paper_ids)
