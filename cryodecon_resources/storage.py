"""Microscope storage: where exposures land, and how to tell a finished file from one being written."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg


@dataclass(frozen=True)
class FileObservation:
    """One file seen on storage at one scan: path relative to the root, size and mtime."""

    relative_path: str
    session: str
    size_bytes: int
    mtime_s: float


class MicroscopeStorage(dg.ConfigurableResource):
    """The folder the microscope (EPU, SerialEM) writes into: ``<root>/<session>/...``.

    Attributes
    ----------
    root : str
        Storage root; each first-level folder is one acquisition session.
    patterns : list[str]
        Glob patterns, relative to a session folder, of exposures to process: by default the simulator's
        layout, EPU's (``Images-Disc*/GridSquare_*/Data/FoilHole_*_Data_*`` micrographs and movies in MRC,
        TIFF or EER) and SerialEM's (stacks at the top level with ``.mdoc`` sidecars).
    settle_seconds : float
        A file counts as stable once its size and mtime are unchanged for this long across sensor ticks
        (together with the file's own completeness: the MRC header's declared size, a TIFF/EER directory
        chain that ends inside the file, and the frame count an EPU XML / SerialEM mdoc announces).
    truncated_after_seconds : float
        A file whose size is stable but shorter than its header declares for this long is quarantined
        as truncated (a copy that died) instead of waiting for ever.
    max_batch_size : int
        Exposures per acquisition batch (one Dagster partition).
    batch_window_seconds : float
        A partial batch is cut once its oldest ready exposure has waited this long.
    """

    root: str
    patterns: list[str] = [
        # cryodecon's simulator (and any plain layout)
        "micrographs/*.mrc",
        "movies/*_fractions.mrc",
        # EPU: <session>/Images-Disc<n>/GridSquare_<id>/Data/FoilHole_<id>_Data_<...>, movies possibly
        # in a separate tree with the same GridSquare_<id>/Data structure
        "**/Data/FoilHole_*_Data_*.mrc",
        "**/Data/FoilHole_*_Data_*.tif",
        "**/Data/FoilHole_*_Data_*.tiff",
        "**/Data/FoilHole_*_Data_*.eer",
        # SerialEM: stacks (with .mdoc sidecars) at the session's top level
        "*.mrc",
        "*.tif",
        "*.tiff",
        "*.eer",
    ]
    settle_seconds: float = 30.0
    truncated_after_seconds: float = 600.0
    max_batch_size: int = 50
    batch_window_seconds: float = 300.0

    def session_dirs(self) -> list[Path]:
        root = Path(self.root)
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def scan(self) -> Iterator[FileObservation]:
        """Every file matching the patterns, skipping hidden/partial names (``.x.part``)."""
        root = Path(self.root)
        for session_dir in self.session_dirs():
            seen: set[Path] = set()  # a file matching several patterns is observed once
            for pattern in self.patterns:
                for path in sorted(session_dir.glob(pattern)):
                    if path in seen or path.name.startswith(".") or not path.is_file():
                        continue
                    seen.add(path)
                    try:
                        stat = path.stat()
                    except OSError:
                        continue  # vanished between listing and stat: seen again next tick if it returns
                    yield FileObservation(str(path.relative_to(root)), session_dir.name, stat.st_size, stat.st_mtime)

    def absolute(self, relative_path: str) -> Path:
        return Path(self.root) / relative_path


def sha256_of_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
