"""Synthetic cryo-EM exposures with known truth: micrographs, dose-fractionated movies and sessions.

Modules:

* ``config``: ``SimulationConfig``, the acquisition and the ranges of per-exposure draws.
* ``structures``: synthetic pseudo-atom structures, orientations, exact projections.
* ``formation``: the image-formation model (specimen, optics, inelastic background) on a padded grid.
* ``exposures``: detector noise, micrographs, drifting movies and sessions.
* ``results``: the returned exposures, their truth and sessions.
"""

from cryodecon_science.simulate.config import SimulationConfig
from cryodecon_science.simulate.exposures import (
    HOT_PIXEL_RATE_FACTOR,
    drift_trajectory_px,
    fourier_shift_image,
    simulate_micrograph,
    simulate_movie,
    simulate_session,
)
from cryodecon_science.simulate.formation import (
    ICE_POWER_PER_NM,
    ice_power_spectrum,
    interaction_constant_rad_per_volt_angstrom,
    place_particles,
)
from cryodecon_science.simulate.results import MicrographTruth, SimulatedMicrograph, SimulatedMovie, SimulatedSession
from cryodecon_science.simulate.structures import (
    PROTEIN_CONTRAST_POTENTIAL_VOLT,
    Structure3D,
    make_structures,
    project_structure,
    random_euler_angles_deg,
    rotation_matrix_from_euler_deg,
)

__all__ = [
    "HOT_PIXEL_RATE_FACTOR",
    "ICE_POWER_PER_NM",
    "PROTEIN_CONTRAST_POTENTIAL_VOLT",
    "MicrographTruth",
    "SimulatedMicrograph",
    "SimulatedMovie",
    "SimulatedSession",
    "SimulationConfig",
    "Structure3D",
    "drift_trajectory_px",
    "fourier_shift_image",
    "ice_power_spectrum",
    "interaction_constant_rad_per_volt_angstrom",
    "make_structures",
    "place_particles",
    "project_structure",
    "random_euler_angles_deg",
    "rotation_matrix_from_euler_deg",
    "simulate_micrograph",
    "simulate_movie",
    "simulate_session",
]
