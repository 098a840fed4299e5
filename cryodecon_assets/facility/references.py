"""Reference data the evaluation needs: the citation graph and the structure library's known structures.

A facility points ``CRYODECON_CITATION_GRAPH`` at a real export (``edges.parquet`` + ``nodes.parquet``) and
seeds the library from its own reference maps (``seed_library_from_maps``, the ``cryodecon library
seed`` command): each map is resampled, projected at random orientations and embedded like a particle.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from cryodecon_resources import OutputStore, ScoringSettings, StructureLibrary
from cryodecon_resources.structure_library import REFERENCE_BATCH_KEY
from cryodecon_science.classification.embedding import embed_class_images
from cryodecon_science.embedding import embed_particles, gaussian_low_pass
from cryodecon_science.impact import ImpactGraph, ImpactModel, train_impact_model
from cryodecon_science.io.citations import read_citation_graph
from cryodecon_science.io.impact_model import load_impact_model, save_impact_model
from cryodecon_science.io.mrc import CorruptHeaderError, check_complete, read_volume
from cryodecon_science.picking import particle_box_px
from cryodecon_science.projection import project_volume, random_euler_angles_deg, resample_volume, soft_spherical_mask

EDGES = "edges.parquet"
NODES = "nodes.parquet"
# Resolution the reference projections are low-passed to, matching what CTF-corrected particle boxes of
# a typical micrograph hold (fit resolutions of 4–8 Å at 1 Å/px).
REFERENCE_RESOLUTION_ANGSTROM = 8.0
# Reference maps are masked to the disc the embedding sees (``embedding``'s soft mask: 1 inside 0.40 of the
# box, raised-cosine edge to 0.48), as a sphere, so solvent and the corners of the map's cube stay out.
_MASK_INNER_FRACTION = 0.40
_MASK_EDGE_FRACTION = 0.08
# Library batch keys are used in filters (``StructureLibrary``'s rule).
_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")


IMPACT_MODEL_FILENAME = "impact_model.pt"


def impact_model_path(outputs: OutputStore) -> Path:
    """Where the trained ImpactFore model lives (``<outputs>/impact_model/latest/impact_model.pt``)."""
    return outputs.asset_path("impact_model", "latest") / IMPACT_MODEL_FILENAME


def train_and_store_impact_model(outputs: OutputStore, prepared: ImpactGraph) -> ImpactModel:
    """Train the ImpactFore GNN on every paper whose 5-year window the graph completes, and store it.

    ``prepared`` is the citation graph after ``impact.prepare_impact_graph`` (callers prepare it once
    and reuse it).  Deterministic (seed 0), so the asset and the evaluation's first-use path store the
    same model.
    """
    model = train_impact_model(prepared, train_cutoff_year=prepared.last_year, seed=0)
    save_impact_model(model, impact_model_path(outputs))
    return model


def load_or_train_impact_model(outputs: OutputStore, prepared: ImpactGraph) -> ImpactModel:
    """The stored ImpactFore model; trained and stored first if the ``impact_model`` asset has not run yet."""
    path = impact_model_path(outputs)
    if path.exists():
        return load_impact_model(path)
    return train_and_store_impact_model(outputs, prepared)


def load_citation_graph(scoring: ScoringSettings) -> nx.DiGraph | None:
    folder = Path(scoring.citation_graph_path) if scoring.citation_graph_path else None
    if folder is None or not (folder / EDGES).exists():
        return None
    return read_citation_graph(folder)


def _centred_boxes(images: np.ndarray, box_px: int) -> np.ndarray:
    """Crop or zero-pad images (m, n, n) about their centre pixel n//2 to (m, box_px, box_px), centre box_px//2."""
    n = images.shape[-1]
    out = np.zeros((images.shape[0], box_px, box_px), dtype=np.float64)
    # Source rows/columns n//2 − box//2 … kept where both grids overlap.
    offset = n // 2 - box_px // 2
    src_lo, src_hi = max(0, offset), min(n, offset + box_px)
    out[:, src_lo - offset : src_hi - offset, src_lo - offset : src_hi - offset] = images[
        :, src_lo:src_hi, src_lo:src_hi
    ]
    return out


def reference_embeddings(
    projections: np.ndarray, pixel_size_angstrom: float, box_px: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Embeddings of reference projections as the library stores them.

    Each projection (m, n, n), centred at pixel n//2, is cut or padded to the particle box, low-passed
    to ``REFERENCE_RESOLUTION_ANGSTROM`` (what a CTF-corrected particle box holds) and embedded with
    ``embed_particles``.
    """
    boxes = _centred_boxes(np.asarray(projections, dtype=np.float64), box_px)
    filtered = gaussian_low_pass(boxes, pixel_size_angstrom, REFERENCE_RESOLUTION_ANGSTROM)
    return embed_particles(np.asarray(filtered, dtype=np.float32), device=device)


def reference_batch_key(structure_id: str) -> str:
    """Library batch of one reference map's projections: ``reference-<structure_id>``."""
    key = f"{REFERENCE_BATCH_KEY}-{structure_id}"
    if not _SIMPLE_KEY.match(key):
        raise ValueError(f"structure id {structure_id!r} must use only the characters [A-Za-z0-9_.:-]")
    return key


def seed_library_from_maps(
    library: StructureLibrary,
    maps: Sequence[Path],
    structure_ids: Sequence[str],
    paper_ids: Sequence[str | None],
    pixel_size_angstrom: float,
    particle_diameter_angstrom: float,
    projections_per_map: int = 50,
    seed: int = 0,
    device: torch.device | str = "cpu",
    class_library: StructureLibrary | None = None,
) -> int:
    """Register reference maps (MRC volumes) in the structure library as embeddings of their projections.

    For each map: read it (``read_volume``, voxel size from the header), resample it to
    ``pixel_size_angstrom`` (``resample_volume``), subtract its solvent level and mask it softly to the
    sphere the embedding sees (radius 0.40 of the particle box, raised-cosine edge to 0.48,
    ``soft_spherical_mask``), project it at ``projections_per_map`` orientations drawn uniformly on SO(3)
    (``random_euler_angles_deg``, ``project_volume``), then cut particle boxes of ``particle_box_px``,
    low-pass them to ``REFERENCE_RESOLUTION_ANGSTROM`` and embed them (``reference_embeddings``) — the
    same path as the particles of a micrograph, so a particle of a known structure lands among its map's
    projections.

    Each map is its own library batch, ``reference-<structure_id>`` (session ``"reference"``, registered
    at time 0, i.e. known at any time): re-seeding a map replaces exactly its rows (no duplicates, no
    stale rows), and maps seeded at different times never overwrite each other or the simulated
    references of ``ensure_reference_library`` (batch ``"reference"``).  The orientations depend only on
    (``seed``, structure id), so re-seeding a map reproduces its rows.

    All maps' headers are checked (complete, cubic) before anything is written.

    Parameters
    ----------
    library : StructureLibrary
    maps : sequence of Path
        MRC maps, cubic, voxel size in the header.
    structure_ids : sequence of str
        One id per map (e.g. ``EMD-1234``), unique, characters [A-Za-z0-9_.:-].
    paper_ids : sequence of (str or None)
        Paper describing each map (for ImpactFore), None when unknown.
    pixel_size_angstrom : float
        Sampling of the projections, Å/pixel: the pipeline's pixel size, or coarser down to the
        embedding's working sampling 1.5 · diameter / ``WORK_BOX_PX`` (boxes are resampled to 64 pixels
        before embedding), but at most REFERENCE_RESOLUTION_ANGSTROM / 2.
    particle_diameter_angstrom : float
        Expected particle diameter, Å (sets the box, as for picked particles).
    projections_per_map : int
        Orientations per map, ≥ 1.
    seed : int
        Seed of the orientations.
    device : torch.device or str
        Where projection and embedding run.
    class_library : StructureLibrary or None
        Where the same projections are registered as known class views (``seed_class_views``), for the
        novelty of 2D classes; same batch keys.

    Returns
    -------
    int
        Rows registered over all maps.

    Raises
    ------
    InputFileError
        A map is unreadable, incomplete, not cubic, holds NaN, or has no voxel size.
    ValueError
        Inconsistent argument lengths, duplicate or invalid structure ids, or non-positive sizes.
    """
    paths = [Path(m) for m in maps]
    if not paths:
        raise ValueError("no maps given")
    if len(structure_ids) != len(paths) or len(paper_ids) != len(paths):
        raise ValueError(f"{len(paths)} maps but {len(structure_ids)} structure ids and {len(paper_ids)} paper ids")
    if len(set(structure_ids)) != len(structure_ids):
        raise ValueError(f"structure ids must be unique, got {list(structure_ids)}")
    if projections_per_map < 1:
        raise ValueError(f"projections_per_map must be >= 1, got {projections_per_map}")
    for name, value in (("pixel_size_angstrom", pixel_size_angstrom), ("diameter", particle_diameter_angstrom)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")
    if pixel_size_angstrom > REFERENCE_RESOLUTION_ANGSTROM / 2:
        raise ValueError(
            f"pixel_size_angstrom {pixel_size_angstrom} cannot hold the {REFERENCE_RESOLUTION_ANGSTROM} Å references"
        )
    batch_keys = [reference_batch_key(s) for s in structure_ids]
    for path in paths:  # cheap header checks first: fail before writing anything
        shape = check_complete(path).shape_zyx
        if not shape[0] == shape[1] == shape[2]:
            raise CorruptHeaderError(path, f"not a cubic map: shape (z, y, x) = {shape}")
    box = particle_box_px(particle_diameter_angstrom / pixel_size_angstrom)
    added = 0
    for path, structure_id, paper_id, batch_key in zip(paths, structure_ids, paper_ids, batch_keys, strict=True):
        volume = read_volume(path)
        resampled = resample_volume(volume.data_density, volume.voxel_size_angstrom, pixel_size_angstrom)
        half = resampled.shape[0] // 2 - 1  # largest sphere inside the map, voxels
        edge = min(_MASK_EDGE_FRACTION * box, max(1.0, 0.1 * half))
        masked = soft_spherical_mask(resampled, min(_MASK_INNER_FRACTION * box, half - edge), edge)
        rng = np.random.default_rng([seed, zlib.crc32(structure_id.encode())])
        angles = random_euler_angles_deg(rng, projections_per_map)
        projections = project_volume(masked, angles, device=device) * pixel_size_angstrom
        embeddings = reference_embeddings(projections, pixel_size_angstrom, box, device=device)
        added += library.add_embeddings(
            embeddings,
            [structure_id] * projections_per_map,
            batch_key,
            REFERENCE_BATCH_KEY,
            [paper_id] * projections_per_map,
            registered_before_s=0.0,
        )
        if class_library is not None:
            n = len(projections)
            seed_class_views(
                class_library,
                projections,
                pixel_size_angstrom,
                box,
                [structure_id] * n,
                [paper_id] * n,
                batch_key,
                device,
            )
    return added


def seed_class_views(
    class_library: StructureLibrary,
    projections: np.ndarray,
    pixel_size_angstrom: float,
    box_px: int,
    structure_ids: Sequence[str],
    paper_ids: Sequence[str | None],
    batch_key: str = REFERENCE_BATCH_KEY,
    device: torch.device | str = "cpu",
) -> int:
    """Register known structures' projections (n, m, m) in the class library, embedded as class averages are.

    A clean projection is what a perfect class average of that view looks like: cut to the particle box
    (the class averages' field of view) and embedded with ``embed_class_images`` (common low-pass).  Known
    at any time (``registered_before_s = 0``), session ``"reference"``; idempotent per ``batch_key``.
    """
    boxes = _centred_boxes(np.asarray(projections, dtype=np.float64), box_px)
    embeddings = embed_class_images(boxes, pixel_size_angstrom, device=device)
    return class_library.add_embeddings(
        embeddings, structure_ids, batch_key, REFERENCE_BATCH_KEY, paper_ids, registered_before_s=0.0
    )
