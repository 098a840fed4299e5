"""Wiener denoising / deconvolution and phase flipping on synthetic micrographs with known truth.

The synthetic micrograph (``synthesize_micrograph``, also used by ``test_causal``) follows the model the
restoration assumes: a white Gaussian specimen contrast x (SD ``contrast_sd``), blurred by the amplitude
envelope exp(−B k²/4) and optionally a linear drift, multiplied by the CTF, on a mean of ``dose_px``
counts, plus a smooth low-frequency 'ice' field, then Poisson counting noise.  Its true spectral model
is known in closed form: signal S(k) = dose² · SD² · exp(−B k²/2) · ⟨sinc²⟩ and background
B(k) = dose (Poisson) + ice · exp(−(k/k_ice)²), in periodogram units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch

from cryodecon_science.causal import ring_average_sinc2
from cryodecon_science.optics import (
    CtfParams,
    MicroscopeSettings,
    amorphous_ice_spectrum_shape,
    ctf_2d,
    frequency_grid_per_angstrom,
)
from cryodecon_science.records import CtfFit, SpectralModel
from cryodecon_science.restoration.restore import (
    phase_flip,
    trust_band_rolloff,
    wiener_deconvolution_filter,
    wiener_deconvolve,
    wiener_denoise,
    wiener_denoise_filter,
)

MICROSCOPE = MicroscopeSettings(voltage_kv=300.0, spherical_aberration_mm=2.7, pixel_size_angstrom=1.5)
CTF = CtfParams(defocus_u_angstrom=15000.0, defocus_v_angstrom=14000.0, astigmatism_angle_deg=30.0)


@dataclass(frozen=True)
class Synthetic:
    image: npt.NDArray[np.float32]  # counts, with noise and ice
    clean_ctf: npt.NDArray[np.float64]  # dose · (1 + CTF ⊛ x_env): what denoising should recover
    truth: npt.NDArray[np.float64]  # dose · (1 + x_env): the un-CTF'd contrast deconvolution should recover
    ctf_fit: CtfFit  # the true CTF and the true spectral model
    microscope: MicroscopeSettings


def synthesize_micrograph(
    shape_px: tuple[int, int] = (256, 256),
    bfactor_angstrom2: float = 50.0,
    dose_px: float = 40.0,
    contrast_sd: float = 0.2,
    ice_power: float = 0.0,
    ice_k_per_angstrom: float = 0.02,
    drift_px: float = 0.0,
    fit_resolution_angstrom: float = 3.2,
    seed: int = 0,
    microscope: MicroscopeSettings = MICROSCOPE,
    ctf: CtfParams = CTF,
    ice_shaped_specimen: bool = False,
) -> Synthetic:
    """A micrograph [y, x] in counts with known CTF, envelope, drift (along x), ice and Poisson noise.

    The specimen is white noise, or with ``ice_shaped_specimen`` noise with the power spectrum of
    vitreous ice (``optics.amorphous_ice_spectrum_shape``), the specimen the causal B estimate assumes.
    """
    rng = np.random.default_rng(seed)
    px = microscope.pixel_size_angstrom
    ky, kx = frequency_grid_per_angstrom(shape_px, px)
    k = np.hypot(ky, kx)
    transfer = np.exp(-bfactor_angstrom2 * k**2 / 4.0) * np.sinc(kx * px * drift_px)
    if ice_shaped_specimen:
        transfer = transfer * np.sqrt(amorphous_ice_spectrum_shape(k))
    ctf_grid = ctf_2d(ctf, microscope, shape_px, dtype=torch.float64).numpy()
    specimen = np.fft.rfft2(rng.standard_normal(shape_px) * contrast_sd) * transfer
    x_env = np.fft.irfft2(specimen, s=shape_px)
    modulated = np.fft.irfft2(specimen * ctf_grid, s=shape_px)
    ice_spectrum = ice_power * np.exp(-((k / ice_k_per_angstrom) ** 2))
    ice = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape_px)) * np.sqrt(ice_spectrum), s=shape_px)
    expected_counts = dose_px * (1.0 + modulated) + ice
    image = rng.poisson(np.clip(expected_counts, 0.0, None)).astype(np.float32)

    k_model = np.linspace(0.0, np.sqrt(2.0) * microscope.nyquist_per_angstrom, 400)
    signal = dose_px**2 * contrast_sd**2 * np.exp(-bfactor_angstrom2 * k_model**2 / 2.0)
    if ice_shaped_specimen:
        signal = signal * amorphous_ice_spectrum_shape(k_model)
    if drift_px:
        signal = signal * ring_average_sinc2(k_model, drift_px, px)
    background = dose_px + ice_power * np.exp(-((k_model / ice_k_per_angstrom) ** 2))
    model = SpectralModel(
        frequency_per_angstrom=k_model,
        signal_power=signal,
        background_power=background,
        noise_floor_power=float(dose_px),
        valid_from_index=5,
        valid_to_index=399,
    )
    fit = CtfFit(ctf, fit_resolution_angstrom, 0.9, 20.0, model)
    return Synthetic(image, dose_px * (1.0 + modulated), dose_px * (1.0 + x_env), fit, microscope)


def _mse(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.mean((np.asarray(a, dtype=np.float64) - b) ** 2))


def test_wiener_denoise_beats_raw(device: str) -> None:
    syn = synthesize_micrograph()
    denoised = wiener_denoise(syn.image, syn.ctf_fit, syn.microscope, device=device)
    assert denoised.dtype == np.float32 and denoised.shape == syn.image.shape
    # The Wiener filter is the MMSE linear estimate; at this SNR (per-pixel signal/noise ≈ 0.3) it removes
    # most of the noise: half the raw error is a loose bound (measured ≈ 0.05).
    assert _mse(denoised, syn.clean_ctf) < 0.5 * _mse(syn.image, syn.clean_ctf)
    assert abs(float(denoised.mean()) - float(syn.image.mean())) < 1e-3 * float(syn.image.mean())
    from_tensor = wiener_denoise(torch.from_numpy(syn.image), syn.ctf_fit, syn.microscope, device=device)
    np.testing.assert_array_equal(from_tensor, denoised)


def test_wiener_deconvolve_beats_phase_flip_and_raw(device: str) -> None:
    syn = synthesize_micrograph()
    deconvolved = wiener_deconvolve(syn.image, syn.ctf_fit, syn.microscope, device=device)
    flipped = phase_flip(syn.image, syn.ctf_fit, syn.microscope, device=device)
    mse_dec = _mse(deconvolved, syn.truth)
    assert mse_dec < _mse(flipped, syn.truth)
    assert mse_dec < _mse(syn.image, syn.truth)
    # Phase flipping restores the sign, so it must beat the raw image too (sanity of the truth).
    assert _mse(flipped, syn.truth) < _mse(syn.image, syn.truth)


def test_deconvolution_puts_no_power_beyond_fit_resolution(device: str) -> None:
    syn = synthesize_micrograph(fit_resolution_angstrom=6.0)
    out = wiener_deconvolve(syn.image, syn.ctf_fit, syn.microscope, device=device).astype(np.float64)
    ky, kx = frequency_grid_per_angstrom(out.shape, syn.microscope.pixel_size_angstrom)
    power = np.abs(np.fft.rfft2(out - out.mean())) ** 2
    beyond = np.hypot(ky, kx) >= 1.0 / 6.0
    # Exactly zero in exact arithmetic; float32 round-off of the FFTs leaves ~1e-14 of the power.
    assert power[beyond].sum() < 1e-9 * power.sum()
    filt = wiener_deconvolution_filter(out.shape, syn.ctf_fit, syn.microscope, device=device).cpu().numpy()
    assert np.all(filt[beyond] == 0.0)


def test_wiener_deconvolution_tends_to_inverse_filter(device: str) -> None:
    syn = synthesize_micrograph()
    shape = syn.image.shape
    ctf = ctf_2d(syn.ctf_fit.ctf, syn.microscope, shape).numpy()
    rolloff = trust_band_rolloff(shape, syn.microscope, syn.ctf_fit.fit_resolution_angstrom).numpy()
    inside = (rolloff == 1.0) & (np.abs(ctf) > 0.05)
    inside[0, 0] = False
    errors = []
    for scale in (1e-4, 1e-6, 1e-8):
        h = wiener_deconvolution_filter(shape, syn.ctf_fit, syn.microscope, scale, device).cpu().numpy()
        errors.append(float(np.max(np.abs(h[inside] * ctf[inside] - 1.0))))
    # 1 − H·CTF = s·B/(CTF²·S + s·B) ≈ s·B/(CTF²·S): the error falls in proportion to s (factor 100 per
    # step; 0.02 leaves room for the saturation of the first step), and is small at s = 1e-8.
    assert errors[1] < 0.02 * errors[0] and errors[2] < 0.02 * errors[1]
    assert errors[2] < 1e-3

    # On a noiseless image (s = 0) the deconvolution returns the un-CTF'd contrast where |CTF| is large.
    noiseless = syn.clean_ctf.astype(np.float32)
    out = wiener_deconvolve(noiseless, syn.ctf_fit, syn.microscope, noise_power_scale=0.0, device=device)
    mask = inside & (np.abs(ctf) > 0.2)
    got = np.fft.rfft2(out.astype(np.float64))[mask]
    want = np.fft.rfft2(syn.truth)[mask]
    assert np.linalg.norm(got - want) < 1e-4 * np.linalg.norm(want)


def test_denoise_filter_is_a_bounded_attenuation(device: str) -> None:
    syn = synthesize_micrograph()
    h = wiener_denoise_filter(syn.image.shape, syn.ctf_fit, syn.microscope, device=device).cpu().numpy()
    assert h[0, 0] == 1.0
    assert np.all(h >= 0.0) and np.all(h <= 1.0)


def test_phase_flip_keeps_modulus_and_mean(device: str) -> None:
    syn = synthesize_micrograph()
    flipped = phase_flip(syn.image, syn.ctf_fit, syn.microscope, device=device).astype(np.float64)
    ctf = ctf_2d(syn.ctf_fit.ctf, syn.microscope, syn.image.shape).numpy()
    a = np.fft.rfft2(flipped)
    b = np.fft.rfft2(syn.image.astype(np.float64))
    nonzero = ctf != 0
    nonzero[:, -1] = False  # the k_x = Nyquist column is averaged with its conjugate partner
    # float32 FFT round trip: absolute error ~1e-6 of the largest coefficient (the mean).
    assert np.allclose(np.abs(a[nonzero]), np.abs(b[nonzero]), rtol=0.0, atol=1e-5 * np.abs(b[0, 0]))
    assert abs(a[0, 0].real - b[0, 0].real) < 1e-5 * abs(b[0, 0])


def test_rejects_bad_arguments() -> None:
    syn = synthesize_micrograph(shape_px=(64, 64))
    with pytest.raises(ValueError, match="noise_power_scale"):
        wiener_denoise(syn.image, syn.ctf_fit, syn.microscope, noise_power_scale=-1.0)
    with pytest.raises(ValueError, match="2-D"):
        wiener_deconvolve(syn.image[None], syn.ctf_fit, syn.microscope)
