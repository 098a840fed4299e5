"""Records shared between the CTF estimator, the causal priors and the restoration.

Power-spectrum units: a periodogram normalised per pixel, P(k) = |FFT(w·x)|² / Σw² for a tile x with
window w, so that the mean of P over all frequencies equals the tile's variance (counts² per pixel).  The
full-image periodogram |FFT(x)|² / N has the same units, so radial profiles fitted on tiles apply to the
whole micrograph's Fourier transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cryodecon_science.optics import CtfParams

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SpectralModel:
    """Rotationally averaged decomposition of a micrograph's power spectrum.

    PS(k) = signal(k) · CTF²(k) + background(k)

    where ``signal`` is the specimen power before the CTF (including the coherence/B-factor envelope and
    the detector MTF, which the spectrum alone cannot separate), and ``background`` is everything the CTF
    does not modulate: detector noise (flat floor for counting detectors), inelastic/ice low-frequency
    background.  All profiles are sampled at ``frequency_per_angstrom`` and are in periodogram units
    (module docstring); ``valid_from_index``/``valid_to_index`` bound the range the fit used.
    """

    frequency_per_angstrom: FloatArray
    signal_power: FloatArray
    background_power: FloatArray
    noise_floor_power: float
    valid_from_index: int
    valid_to_index: int

    def interpolate(self, k_per_angstrom: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(signal, background) at arbitrary frequencies, held constant beyond the sampled range."""
        k = np.asarray(k_per_angstrom, dtype=np.float64)
        signal = np.interp(k, self.frequency_per_angstrom, self.signal_power)
        background = np.interp(k, self.frequency_per_angstrom, self.background_power)
        return signal, background


@dataclass(frozen=True)
class CtfFit:
    """Result of CTF estimation for one micrograph.

    Attributes
    ----------
    ctf : CtfParams
        Fitted defocus U/V (Å), astigmatism angle (deg) and phase shift (rad), U >= V.
    fit_resolution_angstrom : float
        Resolution (Å) beyond which the model stops matching the Thon rings.
    cross_correlation : float
        Goodness of fit: correlation between background-subtracted spectrum and CTF² in the fit band.
    defocus_sigma_angstrom : float
        One-sigma uncertainty of the mean defocus, from fits to independent halves of the tiles.
    spectral_model : SpectralModel
        Signal/background decomposition of the rotational average.
    """

    ctf: CtfParams
    fit_resolution_angstrom: float
    cross_correlation: float
    defocus_sigma_angstrom: float
    spectral_model: SpectralModel
