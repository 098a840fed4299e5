"""Particle picking, junk regions, extraction and the decomposition graph.

Modules:

* ``learned``: the learned centre-heatmap picker (shipped weights, ``io.picker_weights``).
* ``adaptation``: self-training of the picker on a batch's own confident picks.
* ``dog``: the difference-of-Gaussians blob picker (the cold-start baseline).
* ``junk``: support carbon, contamination and thick ice found from the inelastic loss; a reason per pick.
* ``regions``: the excluded-area mask the artifact step and the restoration use.
* ``micrograph``: one micrograph's picks, each kept or set aside with its reason.
* ``region_graph``: session → grid square → foil hole → micrograph → regions and particles, and their relations.
* ``extraction``: box size, RELION-normalised particle boxes.
* ``metrics``: one-to-one matching of picks with true centres (precision, recall, F1).
"""

from cryodecon_science.picking.dog import pick_particles
from cryodecon_science.picking.extraction import box_inside, extract_boxes, extract_particles, particle_box_px
from cryodecon_science.picking.junk import RegionMasks, classify_picks, detect_regions
from cryodecon_science.picking.micrograph import MicrographPicks, pick_micrograph
from cryodecon_science.picking.regions import EXCLUSION_RELATIVE_DROP, EXCLUSION_SMOOTHING_ANGSTROM, excluded_area_mask
from cryodecon_science.picking.templates import TemplatePickingConfig, TemplateStack, pick_particles_template

__all__ = [
    "EXCLUSION_RELATIVE_DROP",
    "EXCLUSION_SMOOTHING_ANGSTROM",
    "MicrographPicks",
    "RegionMasks",
    "TemplatePickingConfig",
    "TemplateStack",
    "box_inside",
    "classify_picks",
    "detect_regions",
    "excluded_area_mask",
    "extract_boxes",
    "extract_particles",
    "particle_box_px",
    "pick_micrograph",
    "pick_particles",
    "pick_particles_template",
]
