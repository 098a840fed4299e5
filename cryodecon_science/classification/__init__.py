"""Streaming reference-free 2D classification of particle boxes, CTF-aware, with automatic class selection.

Modules, in the order the data flows:

* ``ctf``: the per-particle transfer function H = −CTF = sin χ of contrast-inverted boxes (:class:`ParticleCtfs`).
* ``geometry``: masks, in-plane rotations and shifts, Fourier rings (the conventions of the classification).
* ``streaming``: :func:`update_classes`, mini-batch EM (best pose per class, posterior over classes, Wiener class
  averages from per-half CTF-weighted sums, forgetting factor), and :func:`class_averages`.
* ``resolution``: per-class half-set FRC and the resolution at 0.143 and 0.5.
* ``selection``: class features (resolution, particle share, centring, mask fit, contrast) and
  :func:`select_classes`, with the rules each rejected class failed; :func:`select_particles`, the particles of
  the selected classes that their class explains better than background.
* ``embedding``: rotation-invariant embeddings of class averages and their novelty against known structures.
"""

from cryodecon_science.classification.ctf import ParticleCtfs, particle_transfer_functions
from cryodecon_science.classification.embedding import (
    CLASS_EMBEDDING_RESOLUTION_ANGSTROM,
    ClassNovelty,
    class_novelty,
    embed_class_averages,
    embed_class_images,
    half_set_distances,
)
from cryodecon_science.classification.geometry import in_plane_angles_deg, rotate_images, soft_circular_mask
from cryodecon_science.classification.resolution import (
    FRC_CONSERVATIVE_THRESHOLD,
    FRC_HALF_SET_THRESHOLD,
    ClassResolution,
    frc_resolution,
    resolution_at_threshold_angstrom,
)
from cryodecon_science.classification.selection import (
    MIN_LOG_EVIDENCE_RATIO,
    RULES,
    ClassSelection,
    SelectionCriteria,
    centre_offset_px,
    contrast,
    mask_fit_fraction,
    select_classes,
    select_particles,
)
from cryodecon_science.classification.streaming import (
    ClassAssignments,
    Classification2DConfig,
    ClassificationState,
    assign_particles,
    class_averages,
    class_resolution,
    half_set_averages,
    update_classes,
)

__all__ = [
    "CLASS_EMBEDDING_RESOLUTION_ANGSTROM",
    "FRC_CONSERVATIVE_THRESHOLD",
    "FRC_HALF_SET_THRESHOLD",
    "MIN_LOG_EVIDENCE_RATIO",
    "RULES",
    "ClassAssignments",
    "ClassNovelty",
    "ClassResolution",
    "ClassSelection",
    "Classification2DConfig",
    "ClassificationState",
    "ParticleCtfs",
    "SelectionCriteria",
    "assign_particles",
    "centre_offset_px",
    "class_averages",
    "class_novelty",
    "class_resolution",
    "contrast",
    "embed_class_averages",
    "embed_class_images",
    "frc_resolution",
    "half_set_averages",
    "half_set_distances",
    "in_plane_angles_deg",
    "mask_fit_fraction",
    "particle_transfer_functions",
    "resolution_at_threshold_angstrom",
    "rotate_images",
    "select_classes",
    "select_particles",
    "soft_circular_mask",
    "update_classes",
]
