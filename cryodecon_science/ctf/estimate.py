"""CTF estimation of one micrograph: the steps of :mod:`cryodecon_science.ctf` in order (:func:`estimate_ctf`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.ctf.envelopes import fit_envelopes, smooth_level, spectral_model
from cryodecon_science.ctf.fit_resolution import equiphase_average, fit_resolution_per_angstrom
from cryodecon_science.ctf.layout import (
    TILE_OVERLAP_FRACTION,
    CtfEstimationError,
    FloatArray,
    Optics,
    Spectrum,
    flatten_spectrum,
    ring_average,
    tile_size_for,
    validated_image,
)
from cryodecon_science.ctf.refine_2d import (
    band_pixels,
    ctf_params_from_components,
    grid_and_refine,
    parameter_bounds,
    pixel_model,
    refine,
)
from cryodecon_science.ctf.search_1d import search_mean_defocus
from cryodecon_science.ctf.uncertainty import defocus_sigma_angstrom
from cryodecon_science.optics import MicroscopeSettings
from cryodecon_science.records import CtfFit
from cryodecon_science.spectrum import half_set_power_spectra


def estimate_ctf(
    image: npt.NDArray[np.float32],
    microscope: MicroscopeSettings,
    nominal_defocus_angstrom: float | None = None,
    defocus_search_range_angstrom: tuple[float, float] = (2000.0, 60000.0),
    low_resolution_limit_angstrom: float = 30.0,
    high_resolution_limit_angstrom: float | None = None,
    tile_size_px: int = 512,
    device: str | torch.device = "cpu",
) -> CtfFit:
    """Estimate defocus, astigmatism and fit quality of one micrograph (:mod:`cryodecon_science.ctf`).

    Parameters
    ----------
    image : ndarray, shape (ny, nx), float32
        Micrograph indexed [y, x] (counts or any linear intensity unit), both sides ≥ 128 px.
    microscope : MicroscopeSettings
        Voltage, C_s, amplitude contrast w and pixel size.
    nominal_defocus_angstrom : float, optional
        Defocus the microscope was set to (Å, positive = underfocus); a tie-breaker only.
    defocus_search_range_angstrom : (float, float)
        Range of mean defocus searched, Å.
    low_resolution_limit_angstrom : float
        Lowest resolution (largest period, Å) used in the fit; 30 Å excludes the ice/inelastic hump.
    high_resolution_limit_angstrom : float, optional
        Highest resolution (Å) used in the fit; default 2.2 × pixel size, just inside Nyquist.
    tile_size_px : int
        Edge L of the periodogram tiles (pixels); a larger L resolves the closer rings of high defocus.
    device : str or torch.device
        Where the spectra and fits are computed.

    Returns
    -------
    CtfFit
        Defocus U ≥ V and angle in [0, 180) (RELION/CTFFIND convention, ``canonical_ctf_params``); fit
        resolution (:mod:`~cryodecon_science.ctf.fit_resolution`); ``cross_correlation`` = the weighted
        NCC of :mod:`~cryodecon_science.ctf.refine_2d` over the fit band [low, high limit] at the final
        parameters; defocus sigma (:mod:`~cryodecon_science.ctf.uncertainty`); and the ``SpectralModel``
        (:func:`~cryodecon_science.ctf.envelopes.spectral_model`: a(k), b(k) on rings 0 … Nyquist, valid
        from the low limit to Nyquist).

    Raises
    ------
    CtfEstimationError
        For a non-2-D, non-finite or constant image, or one smaller than 128 px.
    ValueError
        For inconsistent resolution limits or search range.

    Notes
    -----
    After the FFTs the work is on ~10⁵-element tensors, where intra-op threads gain little: on a CPU
    shared with other jobs, run with ``torch.set_num_threads(1)`` (set by the caller; this function
    leaves process-wide settings alone).
    """
    frame = validated_image(image, device)
    pixel = microscope.pixel_size_angstrom
    high_limit, search_range = _checked_limits(
        pixel, low_resolution_limit_angstrom, high_resolution_limit_angstrom, defocus_search_range_angstrom
    )
    tile = tile_size_for(tuple(frame.shape), tile_size_px)
    halves = half_set_power_spectra(frame, tile, TILE_OVERLAP_FRACTION, device=device)
    spectrum = flatten_spectrum(halves.mean_power, pixel)
    optics = Optics.of(microscope)
    k_lo, k_hi, k_nyquist = _fit_band(spectrum, low_resolution_limit_angstrom, high_limit, tile)
    frequency, rotational, counts = _rotational_average(spectrum)
    level = smooth_level(frequency, rotational, (k_lo, k_nyquist))

    # 1. Exhaustive 1-D search on the rotational average.
    mean_defocus = search_mean_defocus(
        frequency, rotational, counts, level, (k_lo, k_hi), optics, search_range, nominal_defocus_angstrom
    )
    bounds = parameter_bounds(search_range, mean_defocus)

    # 2. 2-D grid search and band-widening refinement, the envelopes refitted in 2-D.
    params, ncc, signal, background = _astigmatic_fit(
        spectrum, level, (k_lo, k_hi, k_nyquist), optics, bounds, mean_defocus
    )

    # 3. Fit resolution on the equiphase average of the final fit.
    equiphase = equiphase_average(spectrum, spectrum.power, params, optics)
    fit_k = fit_resolution_per_angstrom(frequency, equiphase, signal, background, params, optics, k_lo)

    # 4. Jackknife over disjoint tile groups for the defocus uncertainty.
    sigma = defocus_sigma_angstrom(halves, spectrum, signal, background, (k_lo, k_hi), optics, params, bounds)

    d, hx, hy = (float(v) for v in params)
    model = spectral_model(frequency, rotational, signal, background, optics, d, k_lo)
    return CtfFit(
        ctf=ctf_params_from_components(d, hx, hy),
        fit_resolution_angstrom=1.0 / fit_k,
        cross_correlation=ncc,
        defocus_sigma_angstrom=sigma,
        spectral_model=model,
    )


def _checked_limits(
    pixel_size_angstrom: float,
    low_resolution_limit_angstrom: float,
    high_resolution_limit_angstrom: float | None,
    defocus_search_range_angstrom: tuple[float, float],
) -> tuple[float, tuple[float, float]]:
    """The high resolution limit (Å; default 2.2 pixels) and the defocus search range, checked."""
    pixel = pixel_size_angstrom
    high_limit = 2.2 * pixel if high_resolution_limit_angstrom is None else high_resolution_limit_angstrom
    if high_limit < 2.0 * pixel:
        raise ValueError(f"high_resolution_limit_angstrom {high_limit} is beyond Nyquist ({2.0 * pixel} Å)")
    if low_resolution_limit_angstrom <= high_limit:
        raise ValueError(
            f"low_resolution_limit_angstrom ({low_resolution_limit_angstrom}) must exceed the high limit ({high_limit})"
        )
    lo_defocus, hi_defocus = defocus_search_range_angstrom
    if not 0.0 < lo_defocus < hi_defocus:
        raise ValueError(
            f"defocus_search_range_angstrom must be increasing and positive, got {defocus_search_range_angstrom}"
        )
    return high_limit, (lo_defocus, hi_defocus)


def _fit_band(
    spectrum: Spectrum, low_resolution_limit_angstrom: float, high_limit_angstrom: float, tile_px: int
) -> tuple[float, float, float]:
    """(k_lo, k_hi, k_Nyquist) in 1/Å: the fit band, the high limit capped at the spectrum's Nyquist."""
    k_nyquist = spectrum.bin_width_per_angstrom * (spectrum.n_bins - 1)
    k_lo = 1.0 / low_resolution_limit_angstrom
    k_hi = min(1.0 / high_limit_angstrom, k_nyquist)
    if k_lo >= k_hi - 4 * spectrum.bin_width_per_angstrom:
        raise CtfEstimationError(
            f"fit band {low_resolution_limit_angstrom}–{high_limit_angstrom} Å spans < 4 pixels of a {tile_px}-px"
            " spectrum"
        )
    return k_lo, k_hi, k_nyquist


def _rotational_average(spectrum: Spectrum) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ring frequencies (1/Å), the spectrum's rotational average and the weight of each ring."""
    frequency = torch.arange(spectrum.n_bins, dtype=torch.float64, device=spectrum.power.device)
    frequency = frequency * spectrum.bin_width_per_angstrom
    rotational, counts = ring_average(spectrum, spectrum.bins, spectrum.power)
    return frequency, rotational, counts


def _astigmatic_fit(
    spectrum: Spectrum,
    level: torch.Tensor,
    band: tuple[float, float, float],
    optics: Optics,
    bounds: tuple[tuple[float, float], float],
    mean_defocus_angstrom: float,
) -> tuple[FloatArray, float, torch.Tensor, torch.Tensor]:
    """(D, h_x, h_y), their NCC over [k_lo, k_hi], and the envelopes a(k), b(k) fitted up to Nyquist.

    The envelopes are fitted at the 1-D search's defocus (no astigmatism) over [k_lo, k_hi], the 2-D grid
    search and band-widening refinement start from them, the envelopes are refitted with the astigmatic
    CTF² over [k_lo, k_Nyquist], and the 2-D fit is refined once more with those.
    """
    k_lo, k_hi, k_nyquist = band
    params = np.array([mean_defocus_angstrom, 0.0, 0.0])
    signal, background = fit_envelopes(spectrum, spectrum.power, params, level, (k_lo, k_hi), optics)
    params = grid_and_refine(spectrum, signal, background, (k_lo, k_hi), optics, bounds, mean_defocus_angstrom)
    signal, background = fit_envelopes(spectrum, spectrum.power, params, level, (k_lo, k_nyquist), optics)
    full_band = band_pixels(pixel_model(spectrum, spectrum.power, signal, background, (k_lo, k_hi), optics), k_hi)
    refined, ncc = refine(full_band, params[None, :], bounds)
    return refined[0], float(ncc[0]), signal, background
