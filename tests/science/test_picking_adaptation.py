"""Self-training of the picker on a session's own confident picks: what it learns from, that it leaves the
shipped model alone, and that it does not unlearn the particles it was confident about."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryodecon_science.io.picker_weights import load_pretrained_picker
from cryodecon_science.picking.adaptation import (
    AdaptationConfig,
    MicrographToPick,
    adapt_picker,
    confident_picks,
    pick_batch_adapted,
)
from cryodecon_science.picking.junk import REASON_CARBON, REASON_OK
from cryodecon_science.picking.learned import PickerUNet, pick_particles_learned
from cryodecon_science.picking.metrics import match_picks
from cryodecon_science.picking.micrograph import MicrographPicks, pick_micrograph
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

torch.set_num_threads(1)
DIAMETER = 150.0


@pytest.fixture(scope="module")
def session() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two simulated 512² micrographs at SNR 0.05 with their true centres."""
    config = SimulationConfig(
        shape_px=(512, 512), particle_diameter_angstrom=DIAMETER, particles_per_micrograph=12, target_snr=0.05
    )
    sims = [simulate_micrograph(config, f"adapt{i}", (77, i)) for i in range(2)]
    return [s.counts for s in sims], [np.asarray(s.truth.particle_positions_px) for s in sims]


def test_confident_picks_are_the_kept_candidates_above_the_level() -> None:
    coords = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    merit = np.array([0.9, 0.9, 0.3, 0.6])
    reasons = np.array([REASON_OK, REASON_CARBON, REASON_OK, REASON_OK])
    np.testing.assert_array_equal(confident_picks(coords, merit, reasons, 0.5), [[1.0, 1.0], [4.0, 4.0]])


def test_too_few_confident_picks_learn_nothing(session: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    images, _ = session
    model = load_pretrained_picker()
    same, report = adapt_picker(
        model, images, 1.0, DIAMETER, [np.zeros((0, 2)), np.array([[100.0, 100.0]])], AdaptationConfig(steps=5)
    )
    assert same is model
    assert not report.adapted and report.n_positives == 1 and report.n_micrographs == 2
    assert np.isnan(report.loss_start)


def test_adaptation_fine_tunes_a_copy_and_keeps_the_confident_particles(
    session: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    images, truths = session
    model = load_pretrained_picker()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    picks = [pick_particles_learned(image, 1.0, DIAMETER, model) for image in images]
    confident = [p.coords_yx_px[p.figure_of_merit >= 0.5] for p in picks]
    config = AdaptationConfig(steps=30, batch_size=4, min_positives=5)
    tuned, report = adapt_picker(model, images, 1.0, DIAMETER, confident, config)
    assert isinstance(tuned, PickerUNet) and tuned is not model
    assert report.adapted and report.n_positives == sum(c.shape[0] for c in confident) >= 5
    assert report.loss_end < report.loss_start  # it fits its own labels
    for key, value in model.state_dict().items():  # the shipped model is untouched
        torch.testing.assert_close(value, before[key])
    assert float(tuned.detection_threshold) == float(model.detection_threshold)
    after = [pick_particles_learned(image, 1.0, DIAMETER, tuned) for image in images]
    for c, p in zip(confident, after, strict=True):  # every confident particle is still picked
        assert match_picks(p.coords_yx_px, c, 0.25 * DIAMETER).recall == 1.0
    f1_before = np.mean([match_picks(p.coords_yx_px, t, DIAMETER / 2).f1 for p, t in zip(picks, truths, strict=True)])
    f1_after = np.mean([match_picks(p.coords_yx_px, t, DIAMETER / 2).f1 for p, t in zip(after, truths, strict=True)])
    assert f1_after >= f1_before - 0.05


def test_bad_input_is_refused() -> None:
    model = load_pretrained_picker()
    with pytest.raises(ValueError, match="images but"):
        adapt_picker(model, [np.zeros((64, 64))], 1.0, DIAMETER, [])
    with pytest.raises(ValueError, match="floor_p"):
        AdaptationConfig(floor_p=0.6, confident_p=0.5)
    with pytest.raises(ValueError, match="multiple"):
        adapt_picker(model, [], 1.0, DIAMETER, [], AdaptationConfig(patch_binned_px=60))


def test_a_batch_is_picked_adapted_and_picked_again_and_a_bad_micrograph_gets_its_error(
    session: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    images, _ = session
    model = load_pretrained_picker()
    batch = {
        "a": MicrographToPick(images[0], 1.0, DIAMETER),
        "b": MicrographToPick(images[1], 1.0, DIAMETER),
        "broken": MicrographToPick(np.zeros((4, 4, 4)), 1.0, DIAMETER),
    }
    plain, none = pick_batch_adapted(batch, model, AdaptationConfig(steps=0))
    assert none == {} and isinstance(plain["broken"], ValueError)
    for name in ("a", "b"):
        expected = pick_micrograph(batch[name].image, 1.0, DIAMETER, model)
        got = plain[name]
        assert isinstance(got, MicrographPicks)
        np.testing.assert_array_equal(got.coords_yx_px, expected.coords_yx_px)
    config = AdaptationConfig(steps=10, batch_size=2, min_positives=5)
    adapted, reports = pick_batch_adapted(batch, model, config)
    assert list(reports) == ["1 Å/px, d 150 Å"]
    report = reports["1 Å/px, d 150 Å"]
    assert report.adapted and report.n_micrographs == 2  # the broken one takes no part
    assert isinstance(adapted["broken"], ValueError)
    assert all(isinstance(adapted[n], MicrographPicks) for n in ("a", "b"))
