"""Per-particle transfer functions of contrast-inverted particle boxes.

Sign.  A micrograph records CTF ⊛ p for a projection p, with CTF(k) = −sin χ(k) (:mod:`cryodecon_science.optics`),
so particles are dark at underfocus.  Extraction with ``invert_contrast`` (``picking.extract_particles``, RELION's
"invert contrast") negates the box, so a white particle box is

    x = h ⊛ p + n,   H(k) = −CTF(k) = sin χ(k),

which is +w (the amplitude-contrast fraction) at k = 0.  Everything in :mod:`cryodecon_science.classification`
works with this H: class references are positive (white) density, the model of a particle is H · reference, and
the CTF-weighted sums of the M-step are Σ H·X and Σ H².

Rotation.  A reference rotated by r (counter-clockwise in the (x, y) index plane) and then filtered by a
particle's H equals, back in the reference frame, the reference filtered by H evaluated at R_r k.  Since χ
depends on the azimuth θ only through cos 2(θ − θ_ast), that is the same CTF with astigmatism angle θ_ast − r;
:func:`particle_transfer_functions` takes r and evaluates it exactly instead of interpolating a rotated grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.io.particles import ParticleRow
from cryodecon_science.optics import (
    CtfParams,
    MicroscopeSettings,
    amplitude_contrast_phase_rad,
    frequency_grid_per_angstrom,
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class ParticleCtfs:
    """CTF parameters of n particles that share one optics group (conventions of :mod:`cryodecon_science.optics`).

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom : ndarray, shape (n,), float64
        Defocus along U and V at each particle, Å, positive = underfocus.
    astigmatism_angle_deg : ndarray, shape (n,), float64
        Angle from x to U, counter-clockwise, degrees.
    phase_shift_rad : ndarray, shape (n,), float64
        Phase-plate shift φ_pp, radians.
    microscope : MicroscopeSettings
        Voltage, C_s, amplitude contrast and the pixel size of the particle boxes (Å/px).
    """

    defocus_u_angstrom: FloatArray
    defocus_v_angstrom: FloatArray
    astigmatism_angle_deg: FloatArray
    phase_shift_rad: FloatArray
    microscope: MicroscopeSettings

    def __post_init__(self) -> None:
        arrays = (self.defocus_u_angstrom, self.defocus_v_angstrom, self.astigmatism_angle_deg, self.phase_shift_rad)
        n = self.defocus_u_angstrom.shape
        if any(a.ndim != 1 or a.shape != n for a in arrays):
            raise ValueError(f"CTF parameter arrays must be 1-D of one length, got {[a.shape for a in arrays]}")
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise ValueError("CTF parameters contain NaN or Inf")

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    def subset(self, index: npt.ArrayLike) -> ParticleCtfs:
        """The CTFs of the particles ``index`` (integers or a boolean mask), e.g. one batch of a stream."""
        rows = np.asarray(index)
        return ParticleCtfs(
            self.defocus_u_angstrom[rows],
            self.defocus_v_angstrom[rows],
            self.astigmatism_angle_deg[rows],
            self.phase_shift_rad[rows],
            self.microscope,
        )

    @classmethod
    def from_params(cls, params: Sequence[CtfParams], microscope: MicroscopeSettings) -> ParticleCtfs:
        """Stack one :class:`CtfParams` per particle under one microscope."""
        return cls(
            np.array([p.defocus_u_angstrom for p in params], dtype=np.float64),
            np.array([p.defocus_v_angstrom for p in params], dtype=np.float64),
            np.array([p.astigmatism_angle_deg for p in params], dtype=np.float64),
            np.array([p.phase_shift_rad for p in params], dtype=np.float64),
            microscope,
        )

    @classmethod
    def from_particle_rows(cls, rows: Sequence[ParticleRow], pixel_size_angstrom: float | None = None) -> ParticleCtfs:
        """The CTFs of ``particles.star`` rows of one optics group.

        ``pixel_size_angstrom`` is the sampling of the boxes when they were binned after extraction; by default
        the rows' (micrograph) pixel size.  Rows whose voltage, C_s or amplitude contrast differ raise ValueError.
        """
        if not rows:
            raise ValueError("no particle rows")
        first = rows[0].microscope
        for row in rows:
            m = row.microscope
            if (m.voltage_kv, m.spherical_aberration_mm, m.amplitude_contrast_fraction) != (
                first.voltage_kv,
                first.spherical_aberration_mm,
                first.amplitude_contrast_fraction,
            ):
                raise ValueError("particle rows span several optics groups; classify one group per call")
        microscope = MicroscopeSettings(
            first.voltage_kv,
            first.spherical_aberration_mm,
            first.amplitude_contrast_fraction,
            pixel_size_angstrom=first.pixel_size_angstrom if pixel_size_angstrom is None else pixel_size_angstrom,
        )
        return cls.from_params([row.ctf for row in rows], microscope)


class CtfTensors:
    """The parameters of :class:`ParticleCtfs` as tensors on one device, and H = sin χ on a box's rfft grid.

    χ is evaluated in float32: its largest value, π λ Δf k² at Nyquist, is a few hundred radians at most, where
    float32 keeps the phase to ~10⁻⁵ rad.
    """

    def __init__(self, ctfs: ParticleCtfs, box_px: int, device: torch.device) -> None:
        microscope = ctfs.microscope
        ky, kx = frequency_grid_per_angstrom((box_px, box_px), microscope.pixel_size_angstrom, rfft=True)
        k2 = ky**2 + kx**2
        lam = microscope.wavelength_angstrom
        cs_term = 0.5 * math.pi * microscope.spherical_aberration_mm * 1e7 * lam**3

        def tensor(values: FloatArray) -> torch.Tensor:
            return torch.as_tensor(values, device=device, dtype=torch.float32)

        self._defocus_k2 = tensor(math.pi * lam * k2)  # χ per Å of defocus
        self._aberration = tensor(-cs_term * k2**2)
        self._theta = tensor(np.arctan2(ky, kx))
        self._mean = tensor(0.5 * (ctfs.defocus_u_angstrom + ctfs.defocus_v_angstrom))
        self._half_difference = tensor(0.5 * (ctfs.defocus_u_angstrom - ctfs.defocus_v_angstrom))
        self._angle_rad = tensor(np.radians(ctfs.astigmatism_angle_deg))
        self._phase = tensor(
            ctfs.phase_shift_rad + amplitude_contrast_phase_rad(microscope.amplitude_contrast_fraction)
        )

    def transfer(self, index: torch.Tensor, rotation_deg: torch.Tensor | None = None) -> torch.Tensor:
        """H = sin χ of particles ``index`` (m,), in the frame of references turned by ``rotation_deg``; float32."""
        angle = self._angle_rad[index]
        if rotation_deg is not None:
            angle = angle - torch.deg2rad(rotation_deg.to(torch.float32))
        defocus = self._mean[index, None, None] + self._half_difference[index, None, None] * torch.cos(
            2.0 * (self._theta - angle[:, None, None])
        )
        return torch.sin(defocus * self._defocus_k2 + self._aberration + self._phase[index, None, None])


def particle_transfer_functions(
    ctfs: ParticleCtfs,
    box_px: int,
    rotation_deg: npt.ArrayLike | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """H_i(k) = −CTF_i(k) = sin χ_i(k) of contrast-inverted boxes on the rfft grid (module docstring).

    Parameters
    ----------
    ctfs : ParticleCtfs
        n particles' CTF parameters and microscope (its pixel size is the boxes').
    box_px : int
        Box edge B, pixels.
    rotation_deg : array-like, shape (n,), optional
        r_i, degrees: return H_i in the frame of a reference that was rotated by r_i (astigmatism angle θ_ast − r_i).
    device : torch.device or str
        Where to compute.

    Returns
    -------
    Tensor of float32, shape (n, B, B//2+1)
        Matches ``-optics.ctf_2d(...)`` of each particle (``torch.fft.rfft2`` layout).
    """
    if box_px < 2:
        raise ValueError(f"box_px must be >= 2, got {box_px}")
    torch_device = torch.device(device)
    tensors = CtfTensors(ctfs, box_px, torch_device)
    index = torch.arange(len(ctfs), device=torch_device)
    rotation = None
    if rotation_deg is not None:
        rotation = torch.as_tensor(np.asarray(rotation_deg, dtype=np.float64), device=torch_device).reshape(-1)
        if rotation.shape[0] != len(ctfs):
            raise ValueError(f"rotation_deg has {rotation.shape[0]} values for {len(ctfs)} particles")
    return tensors.transfer(index, rotation)
