"""1-D exhaustive search for the mean defocus on the rotational average, by variable projection.

The rotational average is modelled as PS(k) ≈ b(k) + a(k)·CTF²(k; Δf), with a(k) and b(k) the
non-negative B-splines of :mod:`cryodecon_science.ctf.envelopes`.  For every defocus candidate Δf on a grid
fine enough that the phase at the high-resolution limit moves by ≤ π/4 per step, the spline coefficients
are the (non-negative, batched) weighted linear least-squares solution and the candidate is scored by the
residual.  Unlike CTFFIND's box-car background subtraction, this needs no tuned box width: it adapts to
defocus 0.5–6 µm and any pixel size.  After Rohou & Grigorieff 2015, J. Struct. Biol. 192:216.

The nominal defocus, when given, only breaks ties between near-equal optima (``_PRIOR_TIE_FRACTION``); it
is never used as a starting value that could bias the result.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryodecon_science.ctf.envelopes import bspline_basis, nonnegative_lstsq
from cryodecon_science.ctf.layout import Optics

# Defocus grid: phase at the 1-D search limit moves by at most π/4 between candidates.
_SEARCH_PHASE_STEP_RAD = math.pi / 4
# Optima of the 1-D search within this fraction of (median − best) score of the best are ties; the
# nominal defocus picks among them.
_PRIOR_TIE_FRACTION = 0.05


def _ctf_squared_1d(k: torch.Tensor, defocus: torch.Tensor, optics: Optics) -> torch.Tensor:
    """sin² χ(k; Δf) for defocus values (C,) and frequencies (n,) → (C, n)."""
    chi = optics.a_angstrom * k**2 * defocus[:, None] - optics.c_angstrom4 * k**4 + optics.phase_rad
    return torch.sin(chi) ** 2


def search_mean_defocus(
    frequency: torch.Tensor,
    profile: torch.Tensor,
    counts: torch.Tensor,
    level: torch.Tensor,
    band: tuple[float, float],
    optics: Optics,
    search_range: tuple[float, float],
    nominal_defocus_angstrom: float | None,
) -> float:
    """Exhaustive variable-projection search for the mean defocus (module docstring)."""
    in_band = (frequency >= band[0]) & (frequency <= band[1])
    k = frequency[in_band]
    basis = bspline_basis(k, band[0], band[1])
    sqrt_w = torch.sqrt(counts[in_band]) / level[in_band]
    target = profile[in_band] * sqrt_w
    k_top = float(k.max())
    step = _SEARCH_PHASE_STEP_RAD / (optics.a_angstrom * k_top**2)
    grid = torch.arange(search_range[0], search_range[1] + step, step, dtype=torch.float64, device=k.device)

    def residuals(defocus: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in torch.split(defocus, 512 if k.device.type == "cpu" else 8192):  # bounds CPU memory
            ctf2 = _ctf_squared_1d(k, chunk, optics)
            design = torch.cat([basis.expand(len(chunk), -1, -1), basis * ctf2[:, :, None]], dim=-1)
            design = design * sqrt_w[None, :, None]
            gram = design.transpose(1, 2) @ design
            rhs = (design.transpose(1, 2) @ target[:, None]).squeeze(-1)
            coefficients = nonnegative_lstsq(gram, rhs)
            fitted = (design @ coefficients.unsqueeze(-1)).squeeze(-1)
            out.append(((target - fitted) ** 2).sum(dim=-1))
        return torch.cat(out)

    score = residuals(grid).cpu().numpy()
    best = int(np.argmin(score))
    if nominal_defocus_angstrom is not None and nominal_defocus_angstrom > 0:
        spread = float(np.median(score) - score[best])
        interior = np.r_[True, score[1:] < score[:-1]] & np.r_[score[:-1] <= score[1:], True]
        ties = np.flatnonzero(interior & (score <= score[best] + _PRIOR_TIE_FRACTION * spread))
        grid_np = grid.cpu().numpy()
        best = int(ties[np.argmin(np.abs(np.log(grid_np[ties] / nominal_defocus_angstrom)))])
    centre = float(grid[best])
    fine = torch.linspace(centre - step, centre + step, 17, dtype=torch.float64, device=k.device)
    fine_score = residuals(fine).cpu().numpy()
    j = int(np.clip(np.argmin(fine_score), 1, len(fine) - 2))
    y0, y1, y2 = fine_score[j - 1 : j + 2]
    curvature = y0 - 2 * y1 + y2
    offset = 0.5 * (y0 - y2) / curvature if curvature > 0 else 0.0
    return float(fine[j]) + float(np.clip(offset, -1.0, 1.0)) * float(fine[1] - fine[0])
