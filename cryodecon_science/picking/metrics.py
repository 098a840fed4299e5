"""Picking accuracy against known particle centres: one-to-one matching, precision, recall, F1.

A pick and a true centre may be paired when they lie within ``max_distance_px`` of each other (the usual
criterion is half a particle diameter, as in the picker comparisons of Wagner et al. 2019, crYOLO,
Commun. Biol. 2:218, and Bepler et al. 2019, Topaz, Nat. Methods 16:1153).  Each pick and each true
centre is used at most once: the pairing is a minimum-cost bipartite assignment (Hungarian algorithm,
Kuhn 1955; ``scipy.optimize.linear_sum_assignment``) in which pairs farther apart than the limit cost
more than all admissible pairs together, so it first maximises the number of matched pairs and, among
those pairings, minimises the summed centre distance.  Counts then give

    precision = TP / n_picked,   recall = TP / n_true,   F1 = 2 TP / (n_picked + n_true),

the last being the harmonic mean of the first two.  With nothing picked precision is 1 (no false pick);
with no true particle recall is 1; with neither, F1 is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class PickMatch:
    """One-to-one pairing of picks with true centres (module docstring).

    Attributes
    ----------
    n_picked, n_true : int
        Number of picks and of true centres.
    matched_pairs : ndarray, shape (n_matched, 2), int64
        [pick index, true-centre index] of each matched pair, sorted by pick index.
    centre_errors_px : ndarray, shape (n_matched,), float64
        Distance of each matched pair, pixels, in the order of ``matched_pairs``.
    precision, recall, f1 : float
        TP / n_picked, TP / n_true and 2 TP / (n_picked + n_true), TP = n_matched.
    median_centre_error_px : float
        Median of ``centre_errors_px``; NaN when nothing matched.
    """

    n_picked: int
    n_true: int
    matched_pairs: IntArray
    centre_errors_px: FloatArray
    precision: float
    recall: float
    f1: float
    median_centre_error_px: float

    @property
    def n_matched(self) -> int:
        """True positives TP."""
        return int(self.matched_pairs.shape[0])


def _as_points(points: npt.ArrayLike, label: str) -> FloatArray:
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{label} must have shape (n, 2) [y, x], got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{label} contains NaN or Inf")
    return array


def match_picks(picked_yx_px: npt.ArrayLike, true_yx_px: npt.ArrayLike, max_distance_px: float) -> PickMatch:
    """Pair picks with true centres one-to-one within ``max_distance_px`` (module docstring).

    Parameters
    ----------
    picked_yx_px : array_like, shape (n_picked, 2)
        Picked centres [y, x], pixels.
    true_yx_px : array_like, shape (n_true, 2)
        True centres [y, x], pixels, same frame as the picks.
    max_distance_px : float
        Largest admissible pick–centre distance, pixels (usually half the particle diameter).

    Returns
    -------
    PickMatch

    Raises
    ------
    ValueError
        For arrays not of shape (n, 2), non-finite coordinates, or a distance limit that is not positive.
    """
    picked = _as_points(picked_yx_px, "picked_yx_px")
    true = _as_points(true_yx_px, "true_yx_px")
    if not max_distance_px > 0 or not np.isfinite(max_distance_px):
        raise ValueError(f"max_distance_px must be positive and finite, got {max_distance_px}")
    n_picked, n_true = picked.shape[0], true.shape[0]
    pairs = np.zeros((0, 2), dtype=np.int64)
    errors = np.zeros(0, dtype=np.float64)
    if n_picked and n_true:
        distance = cdist(picked, true)
        admissible = distance <= max_distance_px
        # An inadmissible pair costs more than any set of admissible pairs, so the assignment maximises
        # the number of admissible pairs first.
        forbidden = max_distance_px * (min(n_picked, n_true) + 1.0) + 1.0
        rows, cols = linear_sum_assignment(np.where(admissible, distance, forbidden))
        keep = admissible[rows, cols]
        pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
        errors = distance[rows[keep], cols[keep]].astype(np.float64)
    tp = pairs.shape[0]
    precision = tp / n_picked if n_picked else 1.0
    recall = tp / n_true if n_true else 1.0
    f1 = 2.0 * tp / (n_picked + n_true) if n_picked + n_true else 1.0
    median = float(np.median(errors)) if tp else float("nan")
    return PickMatch(
        n_picked=n_picked,
        n_true=n_true,
        matched_pairs=pairs,
        centre_errors_px=errors,
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        median_centre_error_px=median,
    )
