"""Microscope storage: where exposures land, and how to tell a finished file from one being written."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from cryodecon_science.io.checksum import sha256_of_file as sha256_of_file  # the manifests' checksum
from cryodecon_science.io.gain import is_gain_reference_name


@dataclass(frozen=True)
class FileObservation:
    """One file seen on storage at one scan: path relative to the root, size, mtime and ctime.

    ``ctime_s`` changes with the inode (``chmod``, ``chown``, a rename onto the path), not only with the
    content, so a file set aside as unreadable is examined again once its permissions are fixed.
    """

    relative_path: str
    session: str
    size_bytes: int
    mtime_s: float
    ctime_s: float = 0.0


@dataclass(frozen=True)
class UnreadableFolder:
    """A folder under the storage root that cannot be listed: its exposures are invisible until fixed."""

    relative_path: str
    session: str
    detail: str


@dataclass(frozen=True)
class StorageScan:
    """Everything one scan saw: the matching files and the folders it could not list."""

    files: tuple[FileObservation, ...]
    unreadable_folders: tuple[UnreadableFolder, ...]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A glob pattern relative to a session folder as a regex on '/'-separated relative paths.

    ``**`` matches zero or more folders, ``*`` and ``?`` never cross a '/', ``[...]`` is a class (the
    semantics of ``pathlib.Path.glob``).
    """
    parts = []
    for segment in pattern.split("/"):
        if segment == "**":
            parts.append("(?:[^/]+/)*")
            continue
        regex, i = "", 0
        while i < len(segment):
            char = segment[i]
            closing = segment.find("]", i + 2) if char == "[" else -1
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif closing > 0:
                body = segment[i + 1 : closing]
                regex += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = closing
            else:
                regex += re.escape(char)
            i += 1
        parts.append(regex + "/")
    return re.compile("".join(parts).removesuffix("/") + r"\Z")


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
    checksum_seconds_per_tick : float
        A planning pass checks and hashes new ready files for about this long at most (the file under way
        is finished); the rest wait, still ready, for the next passes, so a backlog of multi-GB movies
        never runs a sensor tick past Dagster's 60 s limit.  A file is hashed once per (path, size,
        mtime): the checksum is kept in the warehouse until the file is in a manifest, which carries it.
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
    checksum_seconds_per_tick: float = 20.0

    def session_dirs(self) -> list[Path]:
        root = Path(self.root)
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def scan(self, skip: Set[str] = frozenset()) -> StorageScan:
        """Every file matching the patterns but those in ``skip``, and every folder that could not be listed.

        One walk per session folder (``os.scandir``: one listing per folder, one ``stat`` per matching
        file, none for the others nor for a relative path in ``skip``, e.g. files already in a manifest:
        their size and mtime are not needed); hidden names (``.x.part``, ``.snapshot``) and gain references
        (``io.gain.is_gain_reference_name``: ``*gain``, ``*gain*ref*``, ``CountRef*``, ``SuperRef*``) are
        skipped, symbolic links to folders are followed once (a link loop is cut).  A folder that cannot be
        listed (permissions, a stale mount) is reported, never skipped in silence: the exposures in it are not
        pending, they are unseen.  Files come folder by folder, depth first, names sorted.
        """
        root = Path(self.root)
        matches = re.compile("|".join(f"(?:{_pattern_regex(p).pattern})" for p in self.patterns)).match
        files: list[FileObservation] = []
        unreadable: list[UnreadableFolder] = []
        for session_dir in self.session_dirs():
            session = session_dir.name
            visited: set[tuple[int, int]] = set()
            folders = [(str(session_dir), "")]  # (path, its path relative to the session folder + "/")
            while folders:
                folder, prefix = folders.pop()
                try:
                    with os.scandir(folder) as listing:
                        entries = list(listing)
                except OSError as error:
                    where = Path(error.filename or folder)
                    unreadable.append(UnreadableFolder(str(where.relative_to(root)), session, str(error)))
                    continue
                try:
                    folder_info = os.stat(folder)
                except OSError:  # vanished while walking: seen again next tick if it returns
                    continue
                if (folder_info.st_dev, folder_info.st_ino) in visited:
                    continue
                visited.add((folder_info.st_dev, folder_info.st_ino))
                subfolders: list[str] = []
                names: dict[str, os.DirEntry[str]] = {}
                for entry in entries:
                    try:
                        is_folder = entry.is_dir()  # follows a link, like os.walk(followlinks=True)
                    except OSError:
                        is_folder = False
                    if is_folder:
                        subfolders.append(entry.name)
                    else:
                        names[entry.name] = entry
                for name in sorted(names):
                    relative = prefix + name
                    if (
                        name.startswith(".")
                        or not matches(relative)
                        or is_gain_reference_name(name)  # a gain reference beside the data is not an exposure
                        or f"{session}/{relative}" in skip
                    ):
                        continue
                    try:
                        info = names[name].stat()  # follows a link to the file
                    except OSError:
                        continue  # vanished between listing and stat: seen again next tick if it returns
                    if stat.S_ISREG(info.st_mode):
                        files.append(
                            FileObservation(
                                f"{session}/{relative}", session, info.st_size, info.st_mtime, info.st_ctime
                            )
                        )
                folders.extend(
                    (os.path.join(folder, d), f"{prefix}{d}/")
                    for d in sorted((d for d in subfolders if not d.startswith(".")), reverse=True)
                )
        return StorageScan(tuple(files), tuple(unreadable))

    def absolute(self, relative_path: str) -> Path:
        return Path(self.root) / relative_path
