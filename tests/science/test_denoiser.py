"""Learned denoiser: shipped weights, quality on a small simulated micrograph, tiling, devices, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryodecon_science.io.denoiser_weights import (
    DenoiserWeightsError,
    load_denoiser,
    load_pretrained_denoiser,
    save_denoiser,
)
from cryodecon_science.restoration.denoiser import (
    DenoiserConfig,
    DenoiserUNet,
    TrainingConfig,
    denoise_learned,
    denoise_learned_many,
    halves_from_frames,
    sample_pair_batch,
    shot_noise_normalise,
)
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> DenoiserUNet:
    return load_pretrained_denoiser()


@pytest.fixture(scope="module")
def micrograph() -> tuple[np.ndarray, np.ndarray]:
    sim = simulate_micrograph(SimulationConfig(shape_px=(256, 256), target_snr=0.03), "denoise", 11)
    return sim.counts, sim.clean_image


def _ls_psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    x = estimate.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, clean.astype(np.float64).ravel(), rcond=None)
    mse = float(np.mean((design @ coef - clean.ravel()) ** 2))
    return 10 * math.log10(float(clean.max() - clean.min()) ** 2 / mse)


def test_shipped_weights_load_offline_and_are_small(model: DenoiserUNet) -> None:
    assert isinstance(model, DenoiserUNet)
    assert not model.training
    assert model.n_parameters() <= 2_000_000
    path = Path(__file__).resolve().parents[2] / "cryodecon_science" / "data" / "denoiser_v1.pt"
    assert path.stat().st_size <= 5_000_000


def test_learned_denoiser_beats_raw(model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]) -> None:
    counts, clean = micrograph
    out = denoise_learned(counts, model)
    assert out.shape == counts.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert _ls_psnr(out, clean) > _ls_psnr(counts, clean) + 1.0
    # Units are kept: the mean of the output is the mean of the counts to within a fraction of a count.
    assert abs(float(out.mean()) - float(counts.mean())) < 0.5


def test_tiled_equals_untiled(model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]) -> None:
    counts = micrograph[0][:250, :232]  # sides not multiples of the pooling factor
    whole = denoise_learned(counts, model, tile_px=1024)
    tiled = denoise_learned(counts, model, tile_px=96, batch_size=3)
    scale = float(np.std(whole))
    difference = tiled - whole
    # Seams: the receptive field exceeds the 128-px margin, but distant pixels weigh little.
    assert float(np.sqrt(np.mean(difference**2))) < 0.03 * scale
    assert float(np.max(np.abs(difference))) < 0.6 * scale


def test_tensor_input_and_batch_size_agree(model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]) -> None:
    counts = micrograph[0][:128, :128]
    a = denoise_learned(torch.from_numpy(counts), model, tile_px=64, batch_size=1)
    b = denoise_learned(counts, model, tile_px=64, batch_size=4)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_test_time_augmentation_is_equivariant_and_close(
    model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]
) -> None:
    counts = micrograph[0][:128, :160]  # non-square: the rotations swap the sides
    plain = denoise_learned(counts, model)
    averaged = denoise_learned(counts, model, augment=True)
    assert averaged.shape == counts.shape and averaged.dtype == np.float32
    # The average over the 8 rotations/flips commutes with them (up to float rounding).
    rotated = denoise_learned(np.ascontiguousarray(np.rot90(counts)), model, augment=True)
    np.testing.assert_allclose(np.rot90(averaged), rotated, rtol=0, atol=1e-3 * float(np.std(averaged)) + 1e-4)
    flipped = denoise_learned(np.ascontiguousarray(counts[:, ::-1]), model, augment=True)
    np.testing.assert_allclose(averaged[:, ::-1], flipped, rtol=0, atol=1e-3 * float(np.std(averaged)) + 1e-4)
    # Same estimator, averaged: close to the single pass, mean (units) kept.
    assert float(np.sqrt(np.mean((averaged - plain) ** 2))) < 0.5 * float(np.std(plain))
    assert abs(float(averaged.mean()) - float(counts.mean())) < 0.5


@pytest.mark.gpu
def test_cuda_matches_cpu(model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    counts = micrograph[0]
    cpu = denoise_learned(counts, model, device="cpu")
    gpu = denoise_learned(counts, load_pretrained_denoiser(), device="cuda")
    assert gpu.dtype == np.float32
    # bfloat16 autocast: ~3 significant digits on the network output (shot-noise units × √μ).
    assert np.max(np.abs(gpu - cpu)) < 0.05 * float(np.std(cpu)) + 0.05


def test_many_matches_one_by_one_and_isolates_a_bad_frame(
    model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]
) -> None:
    counts = micrograph[0][:128, :160]
    bad = counts.copy()
    bad[3, 5] = np.nan
    outcomes = denoise_learned_many([counts, bad, counts[:96, :96].astype(np.float64)], model, tile_px=64)
    assert isinstance(outcomes[1], ValueError) and "NaN" in str(outcomes[1])
    np.testing.assert_array_equal(outcomes[0], denoise_learned(counts, model, tile_px=64))
    np.testing.assert_array_equal(outcomes[2], denoise_learned(counts[:96, :96], model, tile_px=64))


@pytest.mark.gpu
def test_cuda_pipeline_matches_single_frames(model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu_model = load_pretrained_denoiser()
    counts = micrograph[0]
    frames = [counts, counts[::-1].copy(), np.zeros_like(counts), counts[:, ::-1].copy(), counts[:200, :176].copy()]
    outcomes = denoise_learned_many(frames, gpu_model, device="cuda", tile_px=128)
    assert isinstance(outcomes[2], ValueError)  # mean 0: not counts; its neighbours still come back
    for frame, out in zip(frames, outcomes, strict=True):
        if frame is frames[2]:
            continue
        single = denoise_learned(frame, gpu_model, device="cuda", tile_px=128)
        assert isinstance(out, np.ndarray) and out.shape == frame.shape
        assert np.max(np.abs(out - single)) <= 1e-3 * float(np.std(single))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64), dtype=np.float32),  # not counts (mean 0)
        np.full((64, 64), -3.0, dtype=np.float32),
        np.full((8, 64), 40.0, dtype=np.float32),  # too small
        np.full((4, 64, 64), 40.0, dtype=np.float32),  # not 2-D
        np.array([[np.nan] * 32] * 32, dtype=np.float32),
    ],
)
def test_bad_input_raises(model: DenoiserUNet, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        denoise_learned(bad, model)


def test_bad_tiling_arguments(model: DenoiserUNet) -> None:
    image = np.full((64, 64), 40.0, dtype=np.float32)
    with pytest.raises(ValueError):
        denoise_learned(image, model, tile_px=8)
    with pytest.raises(ValueError):
        denoise_learned(image, model, batch_size=0)


def test_weights_round_trip_and_errors(tmp_path: Path) -> None:
    small = DenoiserUNet(DenoiserConfig(base_channels=4, max_channels=8, depth=2, space_to_depth=2))
    path = tmp_path / "w.pt"
    save_denoiser(small, path, meta={"note": "test"})
    again = load_denoiser(path)
    assert again.config == small.config
    for key, value in small.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    with pytest.raises(DenoiserWeightsError, match="no such file"):
        load_denoiser(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(DenoiserWeightsError):
        load_denoiser(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(DenoiserWeightsError, match=r"not a cryodecon\.denoiser"):
        load_denoiser(other)


def test_normalisation_and_halves() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(30.0, (64, 64)).astype(np.float32)
    z, mean, scale = shot_noise_normalise(counts)
    assert abs(float(z.std()) - 1.0) < 0.05 and scale == pytest.approx(math.sqrt(mean))
    frames = rng.poisson(2.0, (5, 16, 16)).astype(np.float32)
    even, odd = halves_from_frames(frames)
    np.testing.assert_allclose(even + odd, frames.sum(axis=0))
    with pytest.raises(ValueError):
        halves_from_frames(frames[:1])
    source, target = sample_pair_batch([counts], 2, 32, np.random.default_rng(1))
    assert source.shape == (2, 1, 32, 32) and target.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError):
        TrainingConfig(steps=0)
    with pytest.raises(ValueError):
        DenoiserConfig(space_to_depth=3)


def test_finetuning_starts_from_the_initial_weights_and_the_loss_ranks_models(
    model: DenoiserUNet, micrograph: tuple[np.ndarray, np.ndarray]
) -> None:
    from cryodecon_science.restoration.denoiser import TrainingConfig, noise2noise_loss, train_noise2noise

    counts = [micrograph[0].astype(np.float32)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # One step at a negligible rate: the copy still holds the shipped weights; the original is untouched.
    tiny = TrainingConfig(steps=1, batch_size=2, patch_px=64, learning_rate=1e-12, seed=3)
    tuned, _ = train_noise2noise(counts, model.config, tiny, initial=model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
        assert torch.allclose(tuned.state_dict()[name], value, atol=1e-6)
    # The held-out Noise2Noise loss ranks models by their error against the clean image: the trained
    # model beats a freshly initialised one on the same split pairs.
    fresh = DenoiserUNet(model.config).eval()
    assert noise2noise_loss(model, counts, 32, 64, 7) < noise2noise_loss(fresh, counts, 32, 64, 7)
    with pytest.raises(ValueError):
        train_noise2noise(counts, DenoiserConfig(base_channels=8), tiny, initial=model)
    with pytest.raises(ValueError):
        noise2noise_loss(model, counts, 0, 64, 7)
