"""Gain references and detector defects: reading, orienting, applying.

A gain reference is an image the size of one frame; its orientation often differs from the movie's
(K2/K3 references written by SerialEM or DigitalMicrograph are rotated or flipped relative to EPU's TIFF
movies).  ``read_gain_reference`` applies the usual corrections in the order and convention of MotionCor2's
``-RotGain`` (rotate counter-clockwise by 90° × n) followed by ``-FlipGain`` (1 = flip upside down, i.e.
reverse rows; 2 = flip left-right, i.e. reverse columns) (Zheng et al. 2017, Nat. Methods 14:331, and the
MotionCor2 user manual).  Gain references are multiplicative (corrected = raw × gain) as K2/K3/Falcon
``.mrc``/``.tiff``/``.gain`` references are; ``convention="divide"`` covers references stored as
detector response (corrected = raw / gain, as RELION does for EER ``.gain`` files).  ``load_gain_reference``
caches a reference per (file, mtime, orientation) so a session's movies share one read; which reference a
movie needs, and where it is, is ``io.gain_discovery``'s.

Defects: pixels that are dead or hot in every frame.  A defect list (``x y`` per line, 0-based, or a
boolean mask image) or automatic detection on the frame sum: a pixel is hot when its summed counts exceed
the median of its neighbourhood by more than ``k`` robust standard deviations (1.4826 × median absolute
deviation of the residual image; Rousseeuw & Croux 1993).  Defective pixels are replaced by the mean of
the non-defective pixels in their 5 × 5 neighbourhood, frame by frame.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cryodecon_science.io.checksum import sha256_of_file
from cryodecon_science.io.mrc import CorruptHeaderError, InputFileError, InvalidPixelDataError, read_mrc_frames
from cryodecon_science.io.tiff import read_tiff_movie

GainFlip = Literal["none", "upside_down", "left_right"]
GainConvention = Literal["multiply", "divide"]
GAIN_SUFFIXES = (".mrc", ".tif", ".tiff", ".gain")
"""Suffixes of gain references this module reads (a DigitalMicrograph ``.dm4`` must be converted first)."""
_GAIN_NAME = re.compile(
    r"^(?:countref|superref)|(?:^|[^a-z])gain[^a-z]*ref|(?:^|[^a-z])gain[^a-z]*$", re.IGNORECASE
)  # CountRef_*, SuperRef_*, *gain_ref*, *gainreference*, *_gain, gain, *_gain_<date>: not gain_on_mic_0001


def is_gain_reference_name(path: str | os.PathLike[str]) -> bool:
    """Whether a file's name marks it as a gain reference (EPU: a stem ending in ``gain`` or holding ``gain`` then
    ``ref``, e.g. ``gain.mrc``, ``K3_gain.tiff``, ``Gain_Ref.mrc``; SerialEM/DigitalMicrograph ``CountRef_*``,
    ``SuperRef_*``): such files are never exposures.  A name that merely contains ``gain`` (a session called
    ``gain_test``) is not one."""
    name = Path(path).name
    return not name.startswith(".") and bool(_GAIN_NAME.search(name.split(".")[0]))


@dataclass(frozen=True, eq=False)
class GainReference:
    """A gain reference oriented to the movie frames.

    Attributes
    ----------
    gain : ndarray, shape (ny, nx), float32
        Multiplicative gain (corrected = raw × gain); 0 where the reference marks a pixel as unusable.
    source_path : str
    defect_mask : ndarray, shape (ny, nx), bool
        Pixels the reference marks as unusable (zero, negative or non-finite values).
    rotate_quarter_turns_ccw : int
        MotionCor2 ``-RotGain`` applied on reading (0–3).
    flip : {"none", "upside_down", "left_right"}
        MotionCor2 ``-FlipGain`` applied after the rotation.
    convention : {"multiply", "divide"}
        How the file's values acted on raw counts ("divide" references were inverted on reading).
    sha256 : str
        SHA-256 of the file's bytes ("" where not computed): which reference, exactly, was in use.
    """

    gain: npt.NDArray[np.float32]
    source_path: str
    defect_mask: npt.NDArray[np.bool_]
    rotate_quarter_turns_ccw: int = 0
    flip: GainFlip = "none"
    convention: GainConvention = "multiply"
    sha256: str = ""

    @property
    def defect_count(self) -> int:
        """Pixels the reference marks as unusable."""
        return int(np.count_nonzero(self.defect_mask))


def orient_image(
    image: npt.NDArray[np.float32], rotate_quarter_turns_ccw: int = 0, flip: GainFlip = "none"
) -> npt.NDArray[np.float32]:
    """Rotate counter-clockwise by 90° × ``rotate_quarter_turns_ccw``, then flip (MotionCor2 order).

    "Counter-clockwise" as the image is displayed with row 0 at the top (``numpy.rot90`` on [y, x]).
    """
    out = np.rot90(image, k=int(rotate_quarter_turns_ccw) % 4)
    if flip == "upside_down":
        out = out[::-1, :]
    elif flip == "left_right":
        out = out[:, ::-1]
    elif flip != "none":
        raise ValueError(f"flip must be 'none', 'upside_down' or 'left_right', got {flip!r}")
    return np.ascontiguousarray(out, dtype=np.float32)


def unorient_image(
    image: npt.NDArray[np.float32], rotate_quarter_turns_ccw: int = 0, flip: GainFlip = "none"
) -> npt.NDArray[np.float32]:
    """The inverse of ``orient_image``: undo the flip, then rotate clockwise by 90° × ``rotate_quarter_turns_ccw``.

    ``orient_image(unorient_image(g, k, f), k, f) == g``: a reference stored as ``unorient_image(g, k, f)``
    needs MotionCor2's ``-RotGain k -FlipGain f`` to match frames whose gain is ``g``.
    """
    out = np.asarray(image)
    if flip == "upside_down":
        out = out[::-1, :]
    elif flip == "left_right":
        out = out[:, ::-1]
    elif flip != "none":
        raise ValueError(f"flip must be 'none', 'upside_down' or 'left_right', got {flip!r}")
    return np.ascontiguousarray(np.rot90(out, k=-(int(rotate_quarter_turns_ccw) % 4)), dtype=np.float32)


def read_gain_reference(
    path: str | os.PathLike[str],
    *,
    rotate_quarter_turns_ccw: int = 0,
    flip: GainFlip = "none",
    convention: GainConvention = "multiply",
) -> GainReference:
    """Read a gain reference (MRC, or TIFF including EER ``.gain``) and orient it.

    Parameters
    ----------
    path : path-like
        ``.mrc``/``.dm4``-converted MRC, or ``.tif``/``.tiff``/``.gain`` (single page).
    rotate_quarter_turns_ccw : int
        MotionCor2 ``-RotGain``.
    flip : {"none", "upside_down", "left_right"}
        MotionCor2 ``-FlipGain`` 0, 1, 2.
    convention : {"multiply", "divide"}
        How the stored values act on raw counts; "divide" references are inverted on reading.

    Raises
    ------
    InputFileError (or subclass)
        Unreadable file, more than one section/page, or no positive finite gain value.
    """
    if convention not in ("multiply", "divide"):
        raise ValueError(f"convention must be 'multiply' or 'divide', got {convention!r}")
    suffix = Path(path).suffix.lower()
    if suffix in (".tif", ".tiff", ".gain"):
        frames = read_tiff_movie(path).frames
    else:
        frames, _ = read_mrc_frames(path)
    if frames.shape[0] != 1:
        raise CorruptHeaderError(path, f"a gain reference is one image, found {frames.shape[0]}")
    raw = orient_image(frames[0], rotate_quarter_turns_ccw, flip)
    usable = np.isfinite(raw) & (raw > 0)
    if not usable.any():
        raise InvalidPixelDataError(path, "no positive finite gain value")
    gain = np.zeros_like(raw)
    gain[usable] = raw[usable] if convention == "multiply" else 1.0 / raw[usable]
    return GainReference(
        gain, str(path), ~usable, int(rotate_quarter_turns_ccw) % 4, flip, convention, _sha256_of(Path(path))
    )


def _sha256_of(path: Path) -> str:
    try:
        return sha256_of_file(path)
    except OSError as exc:
        raise InputFileError(path, f"cannot open ({exc.strerror or exc})") from exc


@functools.lru_cache(maxsize=4)
def _cached_gain_reference(
    path: str, mtime_ns: int, size_bytes: int, rotate_quarter_turns_ccw: int, flip: GainFlip, convention: GainConvention
) -> GainReference:
    del mtime_ns, size_bytes  # part of the cache key only: a rewritten file is read again
    return read_gain_reference(
        path, rotate_quarter_turns_ccw=rotate_quarter_turns_ccw, flip=flip, convention=convention
    )


def load_gain_reference(
    path: str | os.PathLike[str],
    *,
    rotate_quarter_turns_ccw: int = 0,
    flip: GainFlip = "none",
    convention: GainConvention = "multiply",
) -> GainReference:
    """``read_gain_reference``, cached per process by (path, mtime, size, orientation, convention).

    A session's movies share one reference: it is read, oriented and hashed once per run, and read again
    only when the file changes.  At most four references are kept (a 4096² reference is 64 MiB).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputFileError(path, f"cannot open ({exc.strerror or exc})") from exc
    return _cached_gain_reference(
        str(Path(path).resolve()), info.st_mtime_ns, info.st_size, int(rotate_quarter_turns_ccw) % 4, flip, convention
    )


def apply_gain(frames: npt.NDArray[np.float32], gain: GainReference) -> npt.NDArray[np.float32]:
    """Gain-corrected frames (a new array): frames × gain; raises ValueError on a size mismatch."""
    if frames.shape[-2:] != gain.gain.shape:
        raise ValueError(
            f"gain reference {gain.gain.shape} does not match frames {frames.shape[-2:]}; "
            "check rotate_quarter_turns_ccw / flip, or super-resolution"
        )
    return (frames * gain.gain).astype(np.float32)


def read_defect_list(path: str | os.PathLike[str], shape_yx: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """A defect mask from a text file of ``x y`` pixel coordinates (0-based, one pair per line).

    Blank lines and lines starting with ``#`` are skipped.  Raises ``CorruptHeaderError`` for lines that
    are not two integers or coordinates outside ``shape_yx``.
    """
    mask = np.zeros(shape_yx, dtype=bool)
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputFileError(path, f"cannot open ({exc.strerror or exc})") from exc
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.replace(",", " ").split()
        try:
            x, y = int(parts[0]), int(parts[1])
        except (ValueError, IndexError) as exc:
            raise CorruptHeaderError(path, f"line {number}: expected 'x y', got {text!r}") from exc
        if not (0 <= x < shape_yx[1] and 0 <= y < shape_yx[0]):
            raise CorruptHeaderError(path, f"line {number}: pixel ({x}, {y}) outside {shape_yx[1]} x {shape_yx[0]}")
        mask[y, x] = True
    return mask


def detect_hot_pixels(
    summed_counts: npt.NDArray[np.floating], k_sigma: float = 8.0, window_px: int = 5
) -> npt.NDArray[np.bool_]:
    """Pixels whose summed counts exceed their neighbourhood median by more than ``k_sigma`` robust σ.

    Parameters
    ----------
    summed_counts : ndarray (ny, nx)
        Sum over frames (or over many movies) of raw counts.
    k_sigma : float
        Threshold in robust standard deviations (1.4826 × MAD of the residual).
    window_px : int
        Side of the median-filter neighbourhood.

    Returns
    -------
    ndarray (ny, nx) bool
    """
    image = np.asarray(summed_counts, dtype=np.float64)
    residual = image - ndimage.median_filter(image, size=window_px, mode="reflect")
    mad = float(np.median(np.abs(residual - np.median(residual))))
    # Sparse counts give MAD 0: fall back to the Poisson σ of the local level (at least one count).
    sigma = 1.4826 * mad if mad > 0 else float(np.sqrt(max(float(np.median(image)), 1.0)))
    mask: npt.NDArray[np.bool_] = residual > k_sigma * sigma
    return mask


def correct_defects(frames: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Replace masked pixels in every frame by the mean of unmasked pixels in their 5 × 5 neighbourhood."""
    if mask.shape != frames.shape[-2:]:
        raise ValueError(f"defect mask {mask.shape} does not match frames {frames.shape[-2:]}")
    out = np.array(frames, dtype=np.float32, copy=True)
    if not mask.any():
        return out
    good = (~mask).astype(np.float64)
    weight = ndimage.uniform_filter(good, size=5, mode="reflect")
    for index in range(out.shape[0]):
        local = ndimage.uniform_filter(out[index] * good, size=5, mode="reflect")
        fill = np.divide(local, weight, out=np.zeros_like(local), where=weight > 0)
        out[index][mask] = fill[mask].astype(np.float32)
    return out
