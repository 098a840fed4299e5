"""Movies recorded through a detector whose pixels differ in sensitivity, with the gain reference that undoes it.

Model.  Pixel p of a counting detector registers each electron that lands on it with probability
s(p) ∈ [0, 1] (its sensitivity; 0 for a dead pixel).  Registering is independent per electron, so the
raw count of a pixel that receives Poisson(λ) electrons is Binomial thinning of the true count,
Poisson(λ·s): ``record_through_gain`` thins the simulated counts frame by frame.  The gain reference is
g = 1/s (0 where the pixel is dead, which marks it unusable, ``io.gain.read_gain_reference``), so the
corrected frame raw × g has expectation λ — the truth (``clean_image`` summed over frames) — and variance
λ·g: the noise of a detector that misses a fraction 1 − s of the electrons.

The gain field (``simulate_gain_reference``) is 1 + a smooth structured variation of peak ±``variation``
(Gaussian-filtered white noise, σ = 1/8 of the frame) + column-to-column variation of ±variation/4
(read-out channels), scaled so that its smallest live value is 1 (s ≤ 1), with ``n_dead_pixels`` dead
pixels at random positions.  The reference is stored in another orientation than the frames
(``stored_rotate_quarter_turns_ccw``, ``stored_flip``: what MotionCor2's ``-RotGain``/``-FlipGain`` must
undo), as K2/K3 references written by DigitalMicrograph are relative to EPU's or SerialEM's frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cryodecon_science.io.gain import GainFlip, unorient_image
from cryodecon_science.simulate.results import SimulatedSession

Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class SimulatedGain:
    """A detector's gain, in the orientation of the movie frames, and how its reference is stored.

    Attributes
    ----------
    gain : ndarray (ny, nx) float32
        Multiplicative gain g = 1/s (corrected = raw × gain); 0 at dead pixels; min over live pixels 1.
    dead_pixels_yx : ndarray (n, 2) int64
        [y, x] of the dead pixels.
    variation : float
        Peak relative amplitude of the structured variation.
    seed : int
        Seed of the field and of the thinning.
    stored_rotate_quarter_turns_ccw : int
        MotionCor2 ``-RotGain`` that brings the stored reference onto the frames.
    stored_flip : {"none", "upside_down", "left_right"}
        MotionCor2 ``-FlipGain`` applied after it.
    """

    gain: Float32Array
    dead_pixels_yx: IntArray
    variation: float
    seed: int
    stored_rotate_quarter_turns_ccw: int = 0
    stored_flip: GainFlip = "none"

    @property
    def stored_reference(self) -> Float32Array:
        """The reference as written to disk (``io.gain.unorient_image`` of ``gain``)."""
        return unorient_image(self.gain, self.stored_rotate_quarter_turns_ccw, self.stored_flip)

    @property
    def sensitivity(self) -> npt.NDArray[np.float64]:
        """s = 1/g, 0 at dead pixels."""
        gain = self.gain.astype(np.float64)
        return np.divide(1.0, gain, out=np.zeros_like(gain), where=gain > 0)


def simulate_gain_reference(
    shape_px: tuple[int, int],
    variation: float = 0.15,
    n_dead_pixels: int = 4,
    seed: int = 0,
    stored_rotate_quarter_turns_ccw: int = 0,
    stored_flip: GainFlip = "none",
) -> SimulatedGain:
    """A gain field (module docstring) for frames of ``shape_px``; the same seed gives the same field."""
    ny, nx = (int(v) for v in shape_px)
    if not 0.0 <= variation < 0.9:
        raise ValueError(f"variation must lie in [0, 0.9), got {variation}")
    if not 0 <= n_dead_pixels < ny * nx:
        raise ValueError(f"n_dead_pixels must lie in [0, {ny * nx}), got {n_dead_pixels}")
    if not 0 <= stored_rotate_quarter_turns_ccw <= 3:
        raise ValueError(f"stored_rotate_quarter_turns_ccw must be 0-3, got {stored_rotate_quarter_turns_ccw}")
    rng = np.random.default_rng([seed, 71])
    smooth = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma=max(ny, nx) / 8.0, mode="wrap")
    smooth /= max(float(np.abs(smooth).max()), 1e-12)
    columns = rng.uniform(-1.0, 1.0, nx)[None, :]
    field = 1.0 + variation * smooth + 0.25 * variation * columns
    field /= float(field.min())
    flat = np.sort(rng.choice(ny * nx, size=n_dead_pixels, replace=False)) if n_dead_pixels else np.zeros(0, int)
    dead = np.ascontiguousarray(np.stack(np.unravel_index(flat, (ny, nx)), axis=1), dtype=np.int64)
    gain = field.astype(np.float32)
    gain[dead[:, 0], dead[:, 1]] = 0.0
    return SimulatedGain(gain, dead, float(variation), int(seed), int(stored_rotate_quarter_turns_ccw), stored_flip)


def record_frames_through_gain(
    frames: npt.NDArray[np.floating], gain: SimulatedGain, seed: int | list[int]
) -> Float32Array:
    """Raw counts of true counts ``frames`` (n, ny, nx) on a detector of this gain: Binomial(count, 1/g)."""
    counts = np.asarray(frames)
    if counts.shape[-2:] != gain.gain.shape:
        raise ValueError(f"frames {counts.shape[-2:]} do not match the gain {gain.gain.shape}")
    if counts.size and (float(counts.min()) < 0 or not np.array_equal(counts, np.round(counts))):
        raise ValueError("frames must be non-negative integer counts")
    rng = np.random.default_rng(seed)
    raw = rng.binomial(counts.astype(np.int64), np.broadcast_to(gain.sensitivity, counts.shape))
    return raw.astype(np.float32)


def record_through_gain(session: SimulatedSession, gain: SimulatedGain) -> SimulatedSession:
    """The session with every movie's frames recorded through ``gain`` (micrographs, written normalised by
    the acquisition software, unchanged); the truth images stay the truth of the corrected movies."""
    movies = tuple(
        dataclasses.replace(movie, frames=record_frames_through_gain(movie.frames, gain, [gain.seed, 1, index]))
        for index, movie in enumerate(session.movies)
    )
    return dataclasses.replace(session, movies=movies, detector_gain=gain)
