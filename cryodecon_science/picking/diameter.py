"""Particle diameter from the micrographs, for a session that does not state one.

The learned picker (``learned``) resamples the micrograph so that the *stated* diameter g becomes a fixed
number of binned pixels, and was trained to accept particles whose true diameter d lies between about
0.7 g and 1.7 g (stated diameters 0.6–1.4 d).  Picking the same micrographs for a geometric series of g
therefore gives a count of picks that is flat while g brackets d — each particle found once — and that
rises below it (a large particle split into several "small" ones) and falls above it (particles too
small for the scale, neighbours inside the 0.8 g suppression radius).  This is scale selection by the
detector's own response (Lindeberg 1998, Int. J. Comput. Vis. 30:79) with the count as the response.

The estimate is the upper end of the plateau — the longest run of consecutive g whose counts lie within
``PLATEAU_TOLERANCE`` of the run's median — divided by ``UPPER_EDGE_FACTOR``: on the project's simulated
micrographs (round and elongated particles of 120–280 Å, SNR 0.1 and 0.01) the count falls once g exceeds
1.2 d.  The lower end depends on how a particle splits (its shape, the SNR) and is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.picking.learned import PickerUNet, pick_particles_learned

FloatArray = npt.NDArray[np.float64]

GRID_RATIO = 1.2
"""Ratio of consecutive trial diameters."""
MIN_DIAMETER_ANGSTROM = 60.0
MAX_DIAMETER_ANGSTROM = 600.0
PLATEAU_TOLERANCE = 0.12
"""A count belongs to the plateau when within this fraction of the plateau's median count."""
UPPER_EDGE_FACTOR = 1.2
"""Trial diameter at the plateau's upper end over the true diameter (module docstring)."""


@dataclass(frozen=True, eq=False)
class DiameterEstimate:
    """The estimated diameter and the counts it was read from.

    Attributes
    ----------
    diameter_angstrom : float
        Estimated particle diameter, Å.
    trial_diameters_angstrom : ndarray, shape (m,)
        The geometric series of stated diameters picked for, Å.
    picks_per_micrograph : ndarray, shape (m,)
        Mean number of picks per micrograph at each trial diameter.
    plateau : tuple of int
        First and last index of the plateau in the series.
    """

    diameter_angstrom: float
    trial_diameters_angstrom: FloatArray
    picks_per_micrograph: FloatArray
    plateau: tuple[int, int]


def _longest_plateau(counts: FloatArray) -> tuple[int, int]:
    best = (0, 0)
    for start in range(counts.size):
        for stop in range(start, counts.size):
            run = counts[start : stop + 1]
            level = float(np.median(run))
            if level <= 0 or np.any(np.abs(run - level) > PLATEAU_TOLERANCE * level):
                break
            if (stop - start, stop) > (best[1] - best[0], best[1]):
                best = (start, stop)
    return best


def estimate_particle_diameter(
    images: Sequence[npt.ArrayLike],
    pixel_size_angstrom: float,
    model: PickerUNet,
    *,
    device: torch.device | str = "cpu",
) -> DiameterEstimate:
    """Estimate the particle diameter of a set of micrographs of one sample (module docstring).

    Parameters
    ----------
    images : sequence of array_like, each (ny, nx)
        Raw micrographs (particles dark), [y, x]; a handful is enough.
    pixel_size_angstrom : float
        Sampling, Å per pixel (the same for every image).
    model : PickerUNet
        The picker (``io.picker_weights.load_pretrained_picker``), at its shipped threshold.
    device : torch.device or str

    Raises
    ------
    ValueError
        For no images, a non-positive pixel size, images too small for the smallest trial diameter, or
        counts with no plateau (no particles found at any scale).
    """
    if not images:
        raise ValueError("no micrographs to estimate the particle diameter from")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
    arrays = [np.asarray(image, dtype=np.float64) for image in images]
    smallest_side_angstrom = min(min(a.shape[-2:]) for a in arrays) * pixel_size_angstrom
    low = max(MIN_DIAMETER_ANGSTROM, 8.0 * pixel_size_angstrom)
    high = min(MAX_DIAMETER_ANGSTROM, smallest_side_angstrom / 2.5)
    if high <= low * GRID_RATIO**2:
        raise ValueError(f"micrographs of {smallest_side_angstrom:.0f} Å are too small to estimate a diameter")
    trials = low * GRID_RATIO ** np.arange(int(np.floor(np.log(high / low) / np.log(GRID_RATIO))) + 1)
    counts = np.array(
        [
            np.mean([pick_particles_learned(a, pixel_size_angstrom, g, model, device=device).n_picks for a in arrays])
            for g in trials
        ],
        dtype=np.float64,
    )
    start, stop = _longest_plateau(counts)
    if counts[stop] <= 0 or stop == start:
        raise ValueError("no particles found at any trial diameter: the diameter cannot be estimated")
    return DiameterEstimate(
        float(trials[stop] / UPPER_EDGE_FACTOR), np.asarray(trials, dtype=np.float64), counts, (start, stop)
    )
