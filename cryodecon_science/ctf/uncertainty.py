"""Defocus uncertainty by a delete-one-group jackknife over disjoint tile groups.

Efron & Stein 1981, Ann. Stat. 9:586–596; Shao & Wu 1989, Ann. Stat. 17:1176–1197, for groups.  The
non-overlapping tiles are dealt into ``spectrum.N_GROUPS`` = 4 disjoint groups
(:class:`~cryodecon_science.spectrum.HalfSetSpectra`: no pixel shared between groups, so their noise is
independent); the 2-D refinement is repeated, from the full fit, on the mean periodogram of all groups
but one, once per group (all as one :func:`~cryodecon_science.ctf.refine_2d.refine` problem), and
σ² = (G − 1)/G · Σ_g (D_(g) − D̄)², floored at ``_DEFOCUS_SIGMA_FLOOR_ANGSTROM``.  σ describes a
non-overlapping-tile estimate from the whole image, in theory up to ≈ 1.5× the error of the 50 %-overlap
spectrum actually fitted (Welch 1967).  With G − 1 = 3 degrees of freedom σ is itself uncertain by about
±41 %.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryodecon_science.ctf.layout import FloatArray, Optics, Spectrum
from cryodecon_science.ctf.refine_2d import band_pixels, pixel_model, refine
from cryodecon_science.spectrum import HalfSetSpectra

# Below 1 Å a defocus difference has no physical meaning (ice thickness and specimen height vary more
# across any micrograph), so the jackknife estimate is floored there.
_DEFOCUS_SIGMA_FLOOR_ANGSTROM = 1.0


def defocus_sigma_angstrom(
    halves: HalfSetSpectra,
    spectrum: Spectrum,
    signal: torch.Tensor,
    background: torch.Tensor,
    band: tuple[float, float],
    optics: Optics,
    params: FloatArray,
    bounds: tuple[tuple[float, float], float],
) -> float:
    """σ of the mean defocus by a delete-one-group jackknife over the disjoint tile groups (module
    docstring); all refits run as one (``refine`` with a row per left-out group)."""
    n_group = np.asarray(halves.n_group_tiles, dtype=np.float64)
    used = np.flatnonzero(n_group > 0)
    if used.size < 2:
        return _DEFOCUS_SIGMA_FLOOR_ANGSTROM
    groups = halves.group_power.reshape(halves.group_power.shape[0], -1).double()[:, spectrum.index]
    counts = torch.as_tensor(n_group, dtype=torch.float64, device=groups.device)
    total = (counts[:, None] * groups).sum(dim=0)
    index = torch.as_tensor(used, device=groups.device)
    left_out = (total[None, :] - counts[index, None] * groups[index]) / (counts.sum() - counts[index])[:, None]
    pixels = band_pixels(pixel_model(spectrum, left_out, signal, background, band, optics), band[1])
    refined, _ = refine(pixels, np.repeat(params[None, :], used.size, axis=0), bounds)
    defocus = refined[:, 0]
    variance = (used.size - 1) / used.size * float(np.sum((defocus - defocus.mean()) ** 2))
    return max(_DEFOCUS_SIGMA_FLOOR_ANGSTROM, math.sqrt(variance))
