"""Beam-induced motion correction and dose weighting of dose-fractionated movies.

Modules:

* ``correction``: ``align_movie`` and its result ``MotionCorrection`` (the whole pipeline).
* ``global_alignment``: iterative, Fourier-binned whole-frame alignment with the movie's matched filter.
* ``patches``: local (patch) motion and MotionCor2's deformation polynomial (``PatchMotion``).
* ``dose``: critical exposure and dose weights (Grant & Grigorieff 2015).
* ``trajectory``: accumulated (total / early / late) motion of a trajectory, polynomial smoothing.
* ``hot_pixels``: detector defects found from the frame sum.
"""

from cryodecon_science.motion.correction import MotionCorrection, align_movie
from cryodecon_science.motion.dose import critical_exposure_e_per_angstrom2, dose_weights
from cryodecon_science.motion.patches import PatchMotion
from cryodecon_science.motion.trajectory import (
    EARLY_MOTION_EXPOSURE_E_PER_ANGSTROM2,
    AccumulatedMotion,
    accumulated_motion,
)

__all__ = [
    "EARLY_MOTION_EXPOSURE_E_PER_ANGSTROM2",
    "AccumulatedMotion",
    "MotionCorrection",
    "PatchMotion",
    "accumulated_motion",
    "align_movie",
    "critical_exposure_e_per_angstrom2",
    "dose_weights",
]
