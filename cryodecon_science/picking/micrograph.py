"""One micrograph's picks: the learned picker's candidates, each kept or set aside with its reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from cryodecon_science.picking.extraction import particle_box_px
from cryodecon_science.picking.junk import REASON_OK, classify_picks, detect_regions
from cryodecon_science.picking.learned import PickerUNet, pick_particles_learned

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class MicrographPicks:
    """Every candidate pick of one micrograph with the reason it is kept ("ok") or set aside.

    Attributes
    ----------
    coords_yx_px : ndarray, shape (n, 2), float64
        Candidate centres [y, x] in pixels of the micrograph (0-based row and column), strongest first.
    figure_of_merit : ndarray, shape (n,), float64
        The picker's heatmap peak p ∈ (0, 1) of each candidate.
    reasons : ndarray, shape (n,), str
        "ok", or why the candidate is set aside (``junk.REASONS``: carbon, contamination, thick_ice,
        aggregate).  A kept pick whose extraction box leaves the micrograph is kept here and left out by
        the extraction (``extraction.box_inside``), as RELION's extraction leaves it out.
    distance_to_carbon_px : ndarray, shape (n,), float64
        Distance from each centre to the nearest carbon pixel, pixels (0 on carbon, inf without carbon).
    particle_diameter_angstrom : float
        Diameter the micrograph was picked for, Å.
    box_px : int
        Extraction box edge, pixels (``particle_box_px``).
    carbon_fraction, contamination_fraction, thick_ice_fraction : float
        Share of the micrograph in each junk region.
    """

    coords_yx_px: FloatArray
    figure_of_merit: FloatArray
    reasons: npt.NDArray[np.str_]
    distance_to_carbon_px: FloatArray
    particle_diameter_angstrom: float
    box_px: int
    carbon_fraction: float
    contamination_fraction: float
    thick_ice_fraction: float

    @property
    def kept(self) -> npt.NDArray[np.bool_]:
        """Which candidates are particles to extract."""
        return np.asarray(self.reasons == REASON_OK, dtype=np.bool_)

    @property
    def n_particles(self) -> int:
        return int(self.kept.sum())

    def rejected_counts(self) -> dict[str, int]:
        """Candidates set aside, per reason."""
        return dict(sorted(Counter(str(r) for r in self.reasons[~self.kept]).items()))


def pick_micrograph(
    image: npt.NDArray[np.floating],
    pixel_size_angstrom: float,
    particle_diameter_angstrom: float,
    model: PickerUNet,
    *,
    device: torch.device | str = "cpu",
) -> MicrographPicks:
    """Pick a raw micrograph and set aside the picks in junk regions.

    The learned picker (``learned.pick_particles_learned``) proposes centres at its shipped threshold; the
    region detector (``junk.detect_regions``) finds support carbon, contamination and thick ice from the
    inelastic loss of the counts; ``junk.classify_picks`` gives each candidate its reason.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Raw micrograph in counts (particles dark at underfocus), [y, x].
    pixel_size_angstrom : float
        Å per pixel.
    particle_diameter_angstrom : float
        Expected particle diameter d, Å.
    model : PickerUNet
        The picker (``io.picker_weights.load_pretrained_picker``).
    device : torch.device or str
        Where the picker runs.
    """
    data = np.asarray(image, dtype=np.float64)
    picks = pick_particles_learned(data, pixel_size_angstrom, particle_diameter_angstrom, model, device=device)
    masks = detect_regions(data, pixel_size_angstrom, particle_diameter_angstrom)
    reasons = classify_picks(picks.coords_yx_px, masks, particle_diameter_angstrom, pixel_size_angstrom)
    if masks.carbon.any():
        distance = ndimage.distance_transform_edt(~masks.carbon)
        rows, columns = (
            np.clip(np.rint(picks.coords_yx_px[:, k]).astype(np.int64), 0, data.shape[k] - 1) for k in (0, 1)
        )
        to_carbon = np.asarray(distance[rows, columns], dtype=np.float64)
    else:
        to_carbon = np.full(picks.coords_yx_px.shape[0], np.inf)
    return MicrographPicks(
        coords_yx_px=picks.coords_yx_px,
        figure_of_merit=picks.figure_of_merit,
        reasons=reasons,
        distance_to_carbon_px=to_carbon,
        particle_diameter_angstrom=float(particle_diameter_angstrom),
        box_px=particle_box_px(particle_diameter_angstrom / pixel_size_angstrom),
        carbon_fraction=masks.carbon_fraction,
        contamination_fraction=masks.contamination_fraction,
        thick_ice_fraction=masks.thick_ice_fraction,
    )
