"""The typed errors of unusable input files: each carries the file's path, a detail and a short ``reason``
code, the one the sensor or the run records in the warehouse table ``quarantine``."""

from __future__ import annotations

import os


class InputFileError(Exception):
    """A microscope file that cannot be used; ``reason`` is a short machine-readable code."""

    reason = "unreadable"

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.reason}: {path}: {detail}")


class IncompleteFileError(InputFileError):
    """Shorter than its header declares: still being written, or truncated."""

    reason = "incomplete"


class ZeroFilledError(IncompleteFileError):
    """Full size and a valid header, but the data's tail still zeros: preallocated and not yet filled."""

    reason = "preallocated"


class CorruptHeaderError(InputFileError):
    """The header is not a valid MRC header, or declares impossible dimensions or mode."""

    reason = "corrupt_header"


class InvalidPixelDataError(InputFileError):
    """The pixel values are unusable: NaN or Inf, or no variation at all."""

    reason = "invalid_pixels"


class EerScaleError(InvalidPixelDataError):
    """The EER counts do not match the dose the metadata announces (wrong sampling or gain scale)."""

    reason = "eer_scale_mismatch"


class GainReferenceMissingError(InputFileError):
    """A movie that needs a gain reference (``io.gain_discovery``: EER, a SerialEM mdoc naming one, or the
    session's settings) has none that can be found or read: processing it as if flat would be wrong."""

    reason = "gain_reference_missing"


class GainReferenceMismatchError(InputFileError):
    """The gain reference does not fit the movie's frames (size, after the session's rotation and flip)."""

    reason = "gain_reference_mismatch"
