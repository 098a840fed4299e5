"""Synthetic cryo-EM exposures with known truth: micrographs, dose-fractionated movies and sessions.

Modules:

* ``citations``: a synthetic citation graph.
* ``config``: ``SimulationConfig``, the acquisition and the ranges of per-exposure draws.
* ``structures``: synthetic pseudo-atom structures, orientations, exact projections.
* ``formation``: the image-formation model (specimen, optics, inelastic background) on a padded grid.
* ``exposures``: detector noise, micrographs, drifting movies and sessions.
* ``regions``: foil-hole carbon, continuous film, contamination and aggregates, with their truth masks.
* ``results``: the returned exposures, their truth and sessions.
* ``storage``: a simulated session written in the storage layout of ``io.session``, with its truth.
* ``detector_gain``: movies recorded through a detector gain, and the gain reference that undoes it.
"""

from cryodecon_science.simulate.citations import generate_citation_graph
from cryodecon_science.simulate.config import SimulationConfig
from cryodecon_science.simulate.detector_gain import (
    SimulatedGain,
    record_frames_through_gain,
    record_through_gain,
    simulate_gain_reference,
)
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
from cryodecon_science.simulate.regions import ContaminationBlob, mask_from_rle, mask_to_rle
from cryodecon_science.simulate.results import MicrographTruth, SimulatedMicrograph, SimulatedMovie, SimulatedSession
from cryodecon_science.simulate.storage import GROUND_TRUTH_FILENAME, write_simulated_session
from cryodecon_science.simulate.structures import (
    PROTEIN_CONTRAST_POTENTIAL_VOLT,
    Structure3D,
    make_structures,
    project_structure,
    render_structure_volume,
)

__all__ = [
    "GROUND_TRUTH_FILENAME",
    "HOT_PIXEL_RATE_FACTOR",
    "ICE_POWER_PER_NM",
    "PROTEIN_CONTRAST_POTENTIAL_VOLT",
    "ContaminationBlob",
    "MicrographTruth",
    "SimulatedGain",
    "SimulatedMicrograph",
    "SimulatedMovie",
    "SimulatedSession",
    "SimulationConfig",
    "Structure3D",
    "drift_trajectory_px",
    "fourier_shift_image",
    "generate_citation_graph",
    "ice_power_spectrum",
    "interaction_constant_rad_per_volt_angstrom",
    "make_structures",
    "mask_from_rle",
    "mask_to_rle",
    "place_particles",
    "project_structure",
    "record_frames_through_gain",
    "record_through_gain",
    "render_structure_volume",
    "simulate_gain_reference",
    "simulate_micrograph",
    "simulate_movie",
    "simulate_session",
    "write_simulated_session",
]
