"""Electron optics: microscope settings, the contrast transfer function and spatial-frequency grids.

Conventions, written once here and used everywhere in cryodecon:

* Images are arrays indexed ``[y, x]`` (row, column).  Fourier grids follow ``numpy.fft``/``torch.fft``
  ordering; ``k_y`` runs along axis 0 and ``k_x`` along axis 1, in 1/Å.
* Defocus is in Å and **positive defocus is underfocus** (RELION, CTFFIND).
* Astigmatism: ``defocus_u_angstrom >= defocus_v_angstrom``; ``astigmatism_angle_deg`` is the angle from
  the x axis to the U (major, larger-defocus) axis, counter-clockwise in the (x, y) index plane, in
  [0, 180).  The defocus along azimuth θ = atan2(k_y, k_x) is
  Δf(θ) = ½[(U + V) + (U − V)·cos 2(θ − θ_ast)]  (Mindell & Grigorieff 2003, CTFFIND3, eq. 3).
* The CTF is  CTF(k) = −sin χ(k),  χ(k) = π λ Δf(θ) k² − ½ π C_s λ³ k⁴ + φ_ac + φ_pp, with
  φ_ac = arctan(w / √(1 − w²)) for amplitude-contrast fraction w and φ_pp an additional phase-plate
  shift (Rohou & Grigorieff 2015, CTFFIND4, eqs. 1–4).  At k = 0 the CTF is −w: weak-phase contrast
  is negative (dark particles on a bright background), as in real micrographs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]

# Physical constants (CODATA 2018).
_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
_SPEED_OF_LIGHT_M_PER_S = 299792458.0


@dataclass(frozen=True)
class MicroscopeSettings:
    """Fixed optical settings of one acquisition.

    Attributes
    ----------
    voltage_kv : float
        Acceleration voltage U_a in kV.
    spherical_aberration_mm : float
        Spherical aberration coefficient C_s in mm.
    amplitude_contrast_fraction : float
        Fraction w of amplitude contrast (0.07 for vitreous ice is the RELION/cryoSPARC default).
    pixel_size_angstrom : float
        Sampling of the image on the specimen, Å per pixel.
    """

    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast_fraction: float = 0.07
    pixel_size_angstrom: float = field(kw_only=True)  # no default: the sampling is the image's, never assumed

    def __post_init__(self) -> None:
        if not self.voltage_kv > 0:
            raise ValueError(f"voltage_kv must be positive, got {self.voltage_kv}")
        if not 0.0 <= self.amplitude_contrast_fraction < 1.0:
            raise ValueError(f"amplitude_contrast_fraction must lie in [0, 1), got {self.amplitude_contrast_fraction}")
        if not self.pixel_size_angstrom > 0:
            raise ValueError(f"pixel_size_angstrom must be positive, got {self.pixel_size_angstrom}")

    @property
    def wavelength_angstrom(self) -> float:
        return electron_wavelength_angstrom(self.voltage_kv)

    @property
    def nyquist_per_angstrom(self) -> float:
        return 0.5 / self.pixel_size_angstrom


@dataclass(frozen=True)
class CtfParams:
    """Defocus and astigmatism of one micrograph (conventions in the module docstring).

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom : float
        Defocus along the major (U) and minor (V) axes in Å, positive = underfocus, U >= V.
    astigmatism_angle_deg : float
        Angle from the x axis to U, counter-clockwise, degrees in [0, 180).
    phase_shift_rad : float
        Additional phase shift φ_pp of a phase plate, radians (0 without one).
    """

    defocus_u_angstrom: float
    defocus_v_angstrom: float
    astigmatism_angle_deg: float
    phase_shift_rad: float = 0.0

    @property
    def mean_defocus_angstrom(self) -> float:
        return 0.5 * (self.defocus_u_angstrom + self.defocus_v_angstrom)

    @property
    def astigmatism_angstrom(self) -> float:
        return self.defocus_u_angstrom - self.defocus_v_angstrom


def canonical_ctf_params(
    defocus_1_angstrom: float, defocus_2_angstrom: float, angle_1_deg: float, phase_shift_rad: float = 0.0
) -> CtfParams:
    """Return parameters in the U >= V, angle in [0, 180) convention.

    ``defocus_1_angstrom`` lies along ``angle_1_deg``; if it is the smaller of the two, the axes swap and
    the angle turns by 90°.
    """
    if defocus_1_angstrom >= defocus_2_angstrom:
        u, v, angle = defocus_1_angstrom, defocus_2_angstrom, angle_1_deg
    else:
        u, v, angle = defocus_2_angstrom, defocus_1_angstrom, angle_1_deg + 90.0
    return CtfParams(float(u), float(v), float(angle % 180.0), float(phase_shift_rad))


def electron_wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength λ = h / √(2 m e U (1 + e U / (2 m c²))), in Å.

    300 kV -> 0.019687 Å, 200 kV -> 0.025079 Å (Williams & Carter, Transmission Electron Microscopy,
    table 1.1).
    """
    volts = voltage_kv * 1e3
    momentum = math.sqrt(
        2.0
        * _ELECTRON_MASS_KG
        * _ELEMENTARY_CHARGE_C
        * volts
        * (1.0 + _ELEMENTARY_CHARGE_C * volts / (2.0 * _ELECTRON_MASS_KG * _SPEED_OF_LIGHT_M_PER_S**2))
    )
    return _PLANCK_J_S / momentum * 1e10


def amplitude_contrast_phase_rad(amplitude_contrast_fraction: float) -> float:
    """φ_ac = arctan(w / √(1 − w²)): the amplitude-contrast term written as a phase (CTFFIND4, eq. 2)."""
    w = amplitude_contrast_fraction
    return math.atan2(w, math.sqrt(1.0 - w * w))


def frequency_grid_per_angstrom(
    shape_px: tuple[int, int], pixel_size_angstrom: float, rfft: bool = True
) -> tuple[FloatArray, FloatArray]:
    """Spatial-frequency grids (k_y, k_x) in 1/Å for an image of ``shape_px`` = (ny, nx).

    With ``rfft`` the grids have shape (ny, nx // 2 + 1) and match ``numpy.fft.rfft2``; otherwise
    (ny, nx) matching ``fft2``.
    """
    ny, nx = shape_px
    ky = np.fft.fftfreq(ny, d=pixel_size_angstrom)
    kx = np.fft.rfftfreq(nx, d=pixel_size_angstrom) if rfft else np.fft.fftfreq(nx, d=pixel_size_angstrom)
    ky_grid, kx_grid = np.meshgrid(ky, kx, indexing="ij")
    return ky_grid, kx_grid


def ctf_phase_rad(
    k_y_per_angstrom: torch.Tensor,
    k_x_per_angstrom: torch.Tensor,
    ctf: CtfParams,
    microscope: MicroscopeSettings,
) -> torch.Tensor:
    """Phase aberration χ(k) in radians (module docstring; CTFFIND4 eq. 1), on any tensor grid."""
    lam = microscope.wavelength_angstrom
    cs_angstrom = microscope.spherical_aberration_mm * 1e7
    k2 = k_y_per_angstrom**2 + k_x_per_angstrom**2
    theta = torch.atan2(k_y_per_angstrom, k_x_per_angstrom)
    angle = math.radians(ctf.astigmatism_angle_deg)
    defocus = 0.5 * (
        (ctf.defocus_u_angstrom + ctf.defocus_v_angstrom)
        + (ctf.defocus_u_angstrom - ctf.defocus_v_angstrom) * torch.cos(2.0 * (theta - angle))
    )
    return (
        math.pi * lam * defocus * k2
        - 0.5 * math.pi * cs_angstrom * lam**3 * k2**2
        + amplitude_contrast_phase_rad(microscope.amplitude_contrast_fraction)
        + ctf.phase_shift_rad
    )


def ctf_2d(
    ctf: CtfParams,
    microscope: MicroscopeSettings,
    shape_px: tuple[int, int],
    rfft: bool = True,
    bfactor_angstrom2: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """CTF(k) = −sin χ(k) · exp(−B k² / 4) on the Fourier grid of an image of ``shape_px`` (ny, nx).

    The optional envelope exp(−B k²/4) is the amplitude form of a temperature factor B (Å²); its square,
    exp(−B k²/2), is the usual power-spectrum envelope.  Returns a tensor of shape (ny, nx//2+1) with
    ``rfft`` (matching ``torch.fft.rfft2``) or (ny, nx).
    """
    ky, kx = frequency_grid_per_angstrom(shape_px, microscope.pixel_size_angstrom, rfft=rfft)
    ky_t = torch.as_tensor(ky, device=device, dtype=torch.float64)
    kx_t = torch.as_tensor(kx, device=device, dtype=torch.float64)
    values = -torch.sin(ctf_phase_rad(ky_t, kx_t, ctf, microscope))
    if bfactor_angstrom2:
        values = values * torch.exp(-bfactor_angstrom2 * (ky_t**2 + kx_t**2) / 4.0)
    return values.to(dtype)


def ctf_1d(
    k_per_angstrom: FloatArray,
    defocus_angstrom: float,
    microscope: MicroscopeSettings,
    phase_shift_rad: float = 0.0,
) -> FloatArray:
    """Rotationally symmetric CTF −sin χ(k) at frequencies ``k_per_angstrom`` (1/Å) for one defocus (Å)."""
    lam = microscope.wavelength_angstrom
    cs_angstrom = microscope.spherical_aberration_mm * 1e7
    k2 = np.asarray(k_per_angstrom, dtype=np.float64) ** 2
    chi = (
        math.pi * lam * defocus_angstrom * k2
        - 0.5 * math.pi * cs_angstrom * lam**3 * k2**2
        + amplitude_contrast_phase_rad(microscope.amplitude_contrast_fraction)
        + phase_shift_rad
    )
    return np.asarray(-np.sin(chi), dtype=np.float64)


def ctf_zero_frequencies_per_angstrom(
    defocus_angstrom: float, microscope: MicroscopeSettings, max_frequency_per_angstrom: float
) -> FloatArray:
    """Frequencies (1/Å) of the CTF zeros, χ(k) = nπ, up to ``max_frequency_per_angstrom``.

    Solves the quadratic in u = k²:  ½π C_s λ³ u² − π λ Δf u + nπ − φ = 0 and keeps the root on the
    branch that starts at k = 0 (the smaller positive root), for n = 1, 2, ….
    """
    lam = microscope.wavelength_angstrom
    cs_angstrom = microscope.spherical_aberration_mm * 1e7
    phi = amplitude_contrast_phase_rad(microscope.amplitude_contrast_fraction)
    a = 0.5 * math.pi * cs_angstrom * lam**3
    b = -math.pi * lam * defocus_angstrom
    zeros: list[float] = []
    n = 1
    while True:
        c = n * math.pi - phi
        if a > 0:
            disc = b * b - 4 * a * c
            if disc < 0:
                break
            u = (-b - math.sqrt(disc)) / (2 * a)
        else:
            u = -c / b
        k = math.sqrt(u)
        if k > max_frequency_per_angstrom:
            break
        zeros.append(k)
        n += 1
    return np.asarray(zeros, dtype=np.float64)


# Amorphous (vitreous) ice: the shape of its projected-potential power spectrum.
ICE_WATER_RING_PER_ANGSTROM = 1.0 / 3.7
"""Centre of the water ring of vitreous ice, 1/Å (the O–O nearest-neighbour peak; McMullan et al. 2015)."""
ICE_RING_WIDTH_PER_ANGSTROM = 0.045
"""Gaussian width (1/Å) of the water ring in the model of :func:`amorphous_ice_spectrum_shape`."""
ICE_RING_RELATIVE_HEIGHT = 3.0
"""Height of the water ring relative to the smooth component at k = 0."""
ICE_SMOOTH_WIDTH_PER_ANGSTROM = 0.25
"""Gaussian width (1/Å) of the smooth, form-factor-like component of the ice spectrum."""


def amorphous_ice_spectrum_shape(k_per_angstrom: npt.ArrayLike) -> FloatArray:
    """Relative power spectrum of the projected potential of vitreous ice, 1 at k = 0 (dimensionless).

    shape(k) = exp(−k²/(2 k_s²)) + h · exp(−(k − k_w)²/(2 w²)): a smooth falloff (k_s = 0.25 Å⁻¹, the
    oxygen form factor and short-range disorder) plus the broad water ring at k_w = 1/3.7 Å⁻¹ (w =
    0.045 Å⁻¹, h = 3), after McMullan et al. (2015), "Thon rings from amorphous ice and implications of
    beam-induced Brownian motion in single particle electron cryo-microscopy", Ultramicroscopy
    158:26–32.  Uncorrelated slabs add, so the power of a layer of thickness t is t times a constant
    times this shape; nearly flat out to ≈ 6 Å, it is the specimen spectrum against which an envelope
    B-factor can be read (:mod:`cryodecon_science.causal`).
    """
    k = np.asarray(k_per_angstrom, dtype=np.float64)
    smooth = np.exp(-(k**2) / (2.0 * ICE_SMOOTH_WIDTH_PER_ANGSTROM**2))
    ring = ICE_RING_RELATIVE_HEIGHT * np.exp(
        -((k - ICE_WATER_RING_PER_ANGSTROM) ** 2) / (2.0 * ICE_RING_WIDTH_PER_ANGSTROM**2)
    )
    return np.asarray(smooth + ring, dtype=np.float64)
