"""Particle diameter estimated from the picker's count of picks across scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryodecon_science.io.picker_weights import load_pretrained_picker
from cryodecon_science.picking.diameter import UPPER_EDGE_FACTOR, _longest_plateau, estimate_particle_diameter
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

torch.set_num_threads(1)


def test_the_plateau_is_the_longest_flat_run_and_the_later_one_on_ties() -> None:
    counts = np.array([50.0, 31.0, 20.0, 20.0, 19.0, 20.0, 12.0, 7.0])
    assert _longest_plateau(counts) == (2, 5)
    assert _longest_plateau(np.array([9.0, 10.0, 30.0, 31.0, 5.0])) == (2, 3)


@pytest.mark.parametrize(("diameter_angstrom", "pixel_size_angstrom"), [(110.0, 1.0), (240.0, 1.6)])
def test_the_estimate_is_within_a_fifth_of_the_simulated_diameter(
    diameter_angstrom: float, pixel_size_angstrom: float
) -> None:
    config = SimulationConfig(
        shape_px=(1024, 1024),
        pixel_size_angstrom=pixel_size_angstrom,
        particle_diameter_angstrom=diameter_angstrom,
        target_snr=0.05,
        particles_per_micrograph=25,
    )
    images = [simulate_micrograph(config, f"diameter{i}", (31, i)).counts for i in range(2)]
    estimate = estimate_particle_diameter(images, pixel_size_angstrom, load_pretrained_picker())
    assert abs(estimate.diameter_angstrom / diameter_angstrom - 1.0) <= 0.2
    _, stop = estimate.plateau
    assert estimate.diameter_angstrom == pytest.approx(estimate.trial_diameters_angstrom[stop] / UPPER_EDGE_FACTOR)
    assert np.all(np.diff(np.log(estimate.trial_diameters_angstrom)) == pytest.approx(np.log(1.2)))


def test_bad_input_is_refused() -> None:
    model = load_pretrained_picker()
    with pytest.raises(ValueError, match="no micrographs"):
        estimate_particle_diameter([], 1.0, model)
    with pytest.raises(ValueError, match="too small"):
        estimate_particle_diameter([np.zeros((64, 64))], 1.0, model)
    with pytest.raises(ValueError, match="no particles found"):
        estimate_particle_diameter([np.full((512, 512), 40.0)], 1.0, model)
