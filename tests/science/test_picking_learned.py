"""Learned picker: one-to-one matching, coordinates in input pixels, the shipped model on a simulated
micrograph, bad input, the training pieces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryodecon_science.io.picker_weights import load_pretrained_picker
from cryodecon_science.optics import CtfParams, MicroscopeSettings, ctf_2d
from cryodecon_science.picking.learned import (
    PickerConfig,
    PickerExample,
    PickerTrainingConfig,
    PickerUNet,
    Picks,
    bin_for_picking,
    centre_focal_loss,
    heatmap_target,
    pick_particles_learned,
    train_picker,
)
from cryodecon_science.picking.metrics import match_picks
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shipped() -> PickerUNet:
    return load_pretrained_picker()


def dark_discs(
    shape_px: tuple[int, int], centres_yx_px: np.ndarray, radius_px: float, noise: float, seed: int
) -> np.ndarray:
    """Counts-like image: 40 per pixel, minus 4 inside each disc (dark particles), plus Gaussian noise."""
    yy, xx = np.mgrid[0 : shape_px[0], 0 : shape_px[1]]
    image = np.full(shape_px, 40.0)
    for cy, cx in centres_yx_px:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2] -= 4.0
    return image + np.random.default_rng(seed).normal(0.0, noise, shape_px)


# --------------------------------------------------------------------------------------------- metrics
def test_match_maximises_pairs_where_greedy_nearest_would_not() -> None:
    # Nearest-first pairing takes P0–T0 (distance 1) and leaves P1 with only T1 at 6 > 3: one pair.  The
    # assignment pairs P0–T1 and P1–T0 (both 2.5): two pairs.
    picks = np.array([[0.0, 1.0], [0.0, -2.5]])
    true = np.array([[0.0, 0.0], [0.0, 3.5]])
    match = match_picks(picks, true, 3.0)
    assert match.n_matched == 2
    assert match.precision == match.recall == match.f1 == 1.0
    assert match.median_centre_error_px == pytest.approx(2.5)
    assert sorted(map(tuple, match.matched_pairs.tolist())) == [(0, 1), (1, 0)]


def test_match_counts_give_precision_recall_f1() -> None:
    true = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0], [130.0, 130.0]])
    picks = np.array([[11.0, 10.0], [50.0, 53.0], [300.0, 300.0]])  # two within 5 px, one false
    match = match_picks(picks, true, 5.0)
    assert (match.n_matched, match.n_picked, match.n_true) == (2, 3, 4)
    assert match.precision == pytest.approx(2 / 3)
    assert match.recall == pytest.approx(1 / 2)
    assert match.f1 == pytest.approx(2 * 2 / (3 + 4))  # = harmonic mean of 2/3 and 1/2
    assert match.median_centre_error_px == pytest.approx(2.0)  # errors 1 and 3
    # One pick cannot serve two centres: two centres 2 px apart and one pick between them.
    assert match_picks([[0.0, 1.0]], [[0.0, 0.0], [0.0, 2.0]], 5.0).n_matched == 1


def test_match_empty_and_bad_input() -> None:
    none_picked = match_picks(np.zeros((0, 2)), [[1.0, 1.0]], 5.0)
    assert (none_picked.precision, none_picked.recall, none_picked.f1) == (1.0, 0.0, 0.0)
    assert math.isnan(none_picked.median_centre_error_px)
    nothing = match_picks([], [], 5.0)
    assert nothing.f1 == 1.0 and nothing.n_matched == 0
    with pytest.raises(ValueError, match="shape"):
        match_picks(np.zeros((3, 3)), [[1.0, 1.0]], 5.0)
    with pytest.raises(ValueError, match="NaN"):
        match_picks([[np.nan, 1.0]], [[1.0, 1.0]], 5.0)
    with pytest.raises(ValueError, match="positive"):
        match_picks([[1.0, 1.0]], [[1.0, 1.0]], 0.0)


# ------------------------------------------------------------------------------------------ coordinates
class _MatchedFilter(PickerUNet):
    """A fixed 'network': logit = −(Gaussian blur, σ = 3 binned px, of the normalised image) − 2, which
    peaks at the centre of a dark disc of the particle radius (6 binned px)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(-9, 10, dtype=x.dtype)
        kernel = torch.exp(-(offsets**2) / 18.0)
        kernel = kernel / kernel.sum()
        blurred = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1), padding=(9, 0))
        blurred = torch.nn.functional.conv2d(blurred, kernel.view(1, 1, 1, -1), padding=(0, 9))
        return -blurred - 2.0


def test_bin_for_picking_scale_and_coordinate_maps() -> None:
    binned = bin_for_picking(np.random.default_rng(0).normal(size=(600, 900)), 1.5, 180.0)  # r = 60 px
    assert binned.image.dtype == np.float32
    assert binned.image.shape == (60, 90)  # radius 6 binned px: 10 input px per binned px
    assert binned.scale_yx == (10.0, 10.0)
    # Robust normalisation: median 0 (torch's lower median of an even count: one sample is exactly 0) and
    # median |x| = MAD = 1/1.4826.
    assert np.min(np.abs(binned.image)) == 0.0
    assert float(np.median(np.abs(binned.image))) == pytest.approx(1 / 1.4826, rel=1e-3)
    points = np.array([[0.0, 0.0], [123.4, 567.8]])
    assert np.allclose(binned.to_input_px(binned.to_binned_px(points)), points)
    assert np.allclose(binned.to_binned_px([[4.5, 4.5]]), [[0.0, 0.0]])  # binned pixel 0 covers input 0..9


def test_picks_are_in_input_pixels() -> None:
    # Non-square image, pixel size 1.7 Å, d = 110 Å (64.7 px): 5.39 input px per binned pixel, dark discs
    # of radius 30 px at known, off-grid centres.
    centres = np.array([[70.0, 80.0], [70.3, 301.6], [205.5, 150.2], [240.0, 420.0], [130.0, 520.7]])
    image = dark_discs((320, 600), centres, 30.0, 3.0, seed=1)
    picks = pick_particles_learned(image, 1.7, 110.0, _MatchedFilter(PickerConfig()), threshold=0.5)
    match = match_picks(picks.coords_yx_px, centres, 32.0)
    assert match.n_matched == len(centres) == picks.n_picks
    # The matched-filter peak is symmetric about each disc centre; its sub-pixel vertex is good to a small
    # fraction of a binned pixel (5.39 px), so an error of 2 px would mean a wrong coordinate map.
    assert match.median_centre_error_px < 2.0
    assert np.all(np.diff(picks.figure_of_merit) <= 0)


def test_shipped_model_finds_phase_contrast_spheres_at_their_centres(shipped: PickerUNet) -> None:
    # Particles are weak phase objects: I = I₀ (1 + 2 CTF ⊛ φ) with CTF = −sin χ (optics.ctf_2d), here φ
    # the projection of uniform spheres (∝ √(R² − ρ²)) at 1.5 µm underfocus.  The simulator's particles,
    # whose stated diameter is that of their bounding sphere, have a projected radius of gyration ≈ 0.49 r
    # (measured on its structures at d = 200 Å), that of a sphere of radius ≈ 0.6 r.  A uniformly dark disc
    # without the CTF is absorption contrast, what contamination gives, and the picker leaves it.
    centres = np.array([[100.0, 100.0], [100.0, 330.0], [300.0, 160.0], [320.0, 420.0]])
    shape = (448, 560)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    phase = np.zeros(shape)
    for cy, cx in centres:
        phase += np.sqrt(np.clip(1.0 - ((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0**2, 0.0, None))
    ctf = ctf_2d(CtfParams(15000.0, 15000.0, 0.0), MicroscopeSettings(pixel_size_angstrom=1.0), shape).numpy()
    image = 40.0 * (1.0 + 0.1 * np.fft.irfft2(np.fft.rfft2(phase) * ctf, s=shape))
    image += np.random.default_rng(2).normal(0.0, 3.0, shape)  # 1 Å/px, d = 100 Å
    picks = pick_particles_learned(image, 1.0, 100.0, shipped)
    match = match_picks(picks.coords_yx_px, centres, 50.0)
    assert match.n_matched == 4 == picks.n_picks
    assert match.median_centre_error_px < 100.0 / 12.0  # within one binned pixel (r / 6)
    absorption = dark_discs(shape, centres, 30.0, 3.0, seed=2)  # 10 % darker discs, no CTF
    assert match_picks(pick_particles_learned(absorption, 1.0, 100.0, shipped).coords_yx_px, centres, 50.0).recall < 0.5


def test_shipped_model_on_simulated_micrograph(shipped: PickerUNet) -> None:
    config = SimulationConfig(shape_px=(768, 768), target_snr=0.1, particle_diameter_angstrom=150.0)
    sim = simulate_micrograph(config, "pickertest", 77)
    truth = sim.truth.particle_positions_px
    picks = pick_particles_learned(sim.counts, 1.0, 150.0, shipped)
    match = match_picks(picks.coords_yx_px, truth, 75.0)
    # picker_v1.json: test F1 1.000 at SNR 0.1, pooled over 481 particles on 20 micrographs; with ~16
    # particles here, F1 >= 0.85 still allows two errors.
    assert truth.shape[0] >= 12
    assert match.f1 >= 0.85
    assert match.median_centre_error_px < 150.0 / 12.0  # within one binned pixel (r / 6)


def test_threshold_filtering_equals_picking_at_the_threshold(shipped: PickerUNet) -> None:
    config = SimulationConfig(shape_px=(512, 512), target_snr=0.03, particle_diameter_angstrom=120.0)
    counts = simulate_micrograph(config, "pickerthreshold", 5).counts
    low = pick_particles_learned(counts, 1.0, 120.0, shipped, threshold=0.05)
    high = pick_particles_learned(counts, 1.0, 120.0, shipped, threshold=0.4)
    filtered = low.above(0.4)
    assert np.array_equal(filtered.coords_yx_px, high.coords_yx_px)
    assert np.array_equal(filtered.figure_of_merit, high.figure_of_merit)
    assert high.threshold == 0.4
    default = pick_particles_learned(counts, 1.0, 120.0, shipped)
    assert default.threshold == pytest.approx(float(shipped.detection_threshold))
    with pytest.raises(ValueError, match="below"):
        high.above(0.1)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_raises_and_tiny_images_give_no_picks(shipped: PickerUNet) -> None:
    image = np.full((128, 128), 40.0)
    with pytest.raises(ValueError, match="2-D"):
        pick_particles_learned(np.zeros((2, 64, 64)), 1.0, 100.0, shipped)
    with pytest.raises(ValueError, match="NaN"):
        pick_particles_learned(np.where(np.eye(128) > 0, np.nan, image), 1.0, 100.0, shipped)
    with pytest.raises(ValueError, match="pixel_size"):
        pick_particles_learned(image, 0.0, 100.0, shipped)
    with pytest.raises(ValueError, match="diameter"):
        pick_particles_learned(image, 1.0, -5.0, shipped)
    with pytest.raises(ValueError, match="threshold"):
        pick_particles_learned(image, 1.0, 50.0, shipped, threshold=1.0)
    empty = pick_particles_learned(image, 1.0, 200.0, shipped)  # image no larger than one particle
    assert isinstance(empty, Picks)
    assert empty.coords_yx_px.shape == (0, 2) and empty.figure_of_merit.shape == (0,)
    flat = pick_particles_learned(image, 1.0, 40.0, shipped)  # constant image: no contrast, no picks
    assert flat.coords_yx_px.shape == (0, 2) and flat.coords_yx_px.dtype == np.float64


# -------------------------------------------------------------------------------------------- training
def test_heatmap_target_known_values() -> None:
    target = heatmap_target([[5.2, 6.7], [30.0, 30.0]], (20, 24), 2.0)  # second centre outside: ignored
    assert target[5, 7] == 1.0
    assert target[5, 8] == pytest.approx(math.exp(-1.0 / 8.0))
    assert target[7, 9] == pytest.approx(math.exp(-8.0 / 8.0))
    assert target[19, 0] == 0.0
    assert np.count_nonzero(target == 1.0) == 1


def test_focal_loss_prefers_the_right_heatmap_and_training_runs() -> None:
    target = torch.from_numpy(heatmap_target([[8.0, 8.0]], (16, 16), 2.0))[None, None]
    right = centre_focal_loss(torch.where(target >= 1.0, 4.0, -4.0), target)
    wrong = centre_focal_loss(torch.where(target >= 1.0, -4.0, 4.0), target)
    assert float(right) < 0.1 < float(wrong)
    rng = np.random.default_rng(3)
    examples = [PickerExample(rng.normal(size=(40, 48)).astype(np.float32), np.array([[20.0, 20.0]]))]
    config = PickerConfig(base_channels=4, max_channels=8, depth=3)
    model, history = train_picker(examples, config, PickerTrainingConfig(steps=3, batch_size=2, patch_binned_px=32))
    assert isinstance(model, PickerUNet) and not model.training
    assert history == []  # fewer than 100 steps: no block average yet
    with pytest.raises(ValueError, match="multiple"):
        train_picker(examples, config, PickerTrainingConfig(steps=1, patch_binned_px=30))
