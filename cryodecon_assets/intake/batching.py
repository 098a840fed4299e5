"""Acquisition batches: which files are complete, and when a batch is cut.

Partitioning arithmetic (docs/operations.md, "Partitions"): a facility records 5,000–15,000 exposures a day; Dagster
recommends at most ~100,000 partitions per asset, which one-partition-per-exposure would reach in 7–20
days.  A partition here is an *acquisition batch*: up to ``max_batch_size`` exposures of one session
(default 50), or whatever arrived within ``batch_window_seconds`` (default 300 s).  At 15,000 exposures a
day that is ≥ 300 partitions a day, ~110,000 a year at the worst; the 100k guideline lasts about a year at
peak rate and 3 years at 5,000/day.  ``max_batch_size`` is the knob.

A batch's manifest (relative paths, sizes, SHA-256 checksums) is frozen when it is cut and stored in the
warehouse; a rerun reprocesses exactly the files of the manifest.  The set of manifests is the ledger of
what has been assigned: a restarted sensor rebuilds it from the warehouse, never from memory, so it can
neither assign a file twice nor forget one.

The sensor cursor only carries the files still *pending* (seen, not yet stable), and the per-session
sequence numbers.  A file is *ready* when
1. its size and mtime have not changed for ``settle_seconds`` across ticks, and
2. its size on disk equals the size its MRC header declares (a copy in progress is shorter),
and it is *quarantined* when its header is corrupt, when it stays incomplete for ``truncated_after_seconds``
(reason ``empty``: zero bytes, a copy that never started; ``preallocated``: full size but the data's tail
still zeros; ``truncated``: shorter than declared, a copy that died), or when it cannot be read (reason
``unreadable``; examined again once its permissions change, which changes its ctime).

Each ready file is hashed (SHA-256) once per (relative path, size, mtime): the checksum is kept in
``Checksums`` (the warehouse document ``checksums/unassigned``) until the file is in a manifest, which then
carries it with the size and mtime it was hashed at, so neither later ticks, a restarted daemon, the sweep
nor the run hash it again.  A file whose size or mtime changes is a new file to the sensor: it settles again
and is hashed again.  A pass hashes for at most ``checksum_seconds_per_tick``; files left over stay ready
for the next pass, and their session cuts no partial batch meanwhile.

A *duplicate* is a file whose SHA-256 equals that of a file already in a manifest (or of another file ready
in the same tick): the exposure is recorded once, under the path that landed first, and the second landing
is noted in ``quarantine`` with reason ``duplicate`` and the path it repeats.  It is never processed twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from cryodecon_resources.storage import FileObservation
from cryodecon_science.io.errors import IncompleteFileError, InputFileError, ZeroFilledError
from cryodecon_science.io.layout import check_exposure_complete, exposure_kind
from cryodecon_science.io.session import exposure_name

MANIFESTS = "manifests"
CHECKSUMS = "checksums"  # warehouse collection of ``Checksums``; document ``unassigned``


@dataclass(frozen=True)
class ManifestFile:
    relative_path: str
    size_bytes: int
    sha256: str
    kind: str  # "micrograph" or "movie"
    mtime_s: float | None = None  # mtime when hashed (None in manifests cut before it was recorded)

    @property
    def name(self) -> str:
        """The exposure's name: file stem without the movie suffix (``x_mov_0001_fractions`` -> ``x_mov_0001``)."""
        return exposure_name(self.relative_path)


@dataclass(frozen=True)
class BatchManifest:
    """The frozen list of files of one acquisition batch (one Dagster partition)."""

    batch_key: str
    session: str
    sequence: int
    cut_at_s: float
    files: tuple[ManifestFile, ...]

    def to_document(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_document(cls, document: Mapping[str, object]) -> BatchManifest:
        files = tuple(ManifestFile(**f) for f in document["files"])  # type: ignore[union-attr, arg-type]
        return cls(
            str(document["batch_key"]),
            str(document["session"]),
            int(document["sequence"]),  # type: ignore[call-overload]
            float(document["cut_at_s"]),  # type: ignore[arg-type]
            files,
        )


@dataclass(frozen=True)
class Quarantined:
    relative_path: str
    session: str
    reason: str
    detail: str
    size_bytes: int
    seen_at_s: float


@dataclass
class PlanState:
    """What the sensor cursor carries between ticks (JSON)."""

    pending: dict[str, dict[str, float]] = field(default_factory=dict)
    quarantined: dict[str, dict[str, float]] = field(default_factory=dict)
    unreadable_folders: dict[str, float] = field(default_factory=dict)  # relative path -> first seen

    def remembers(self, obs: FileObservation) -> bool:
        """Whether ``obs`` was set aside (quarantined, duplicate) as it is now: same size, mtime and ctime."""
        previous = self.quarantined.get(obs.relative_path)
        return previous is not None and previous == _identity(obs)

    def to_cursor(self) -> str:
        document = {
            "pending": self.pending,
            "quarantined": self.quarantined,
            "unreadable_folders": self.unreadable_folders,
        }
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> PlanState:
        if not cursor:
            return cls()
        try:
            data = json.loads(cursor)
            return cls(
                dict(data.get("pending", {})),
                dict(data.get("quarantined", {})),
                dict(data.get("unreadable_folders", {})),
            )
        except (ValueError, AttributeError):
            return cls()  # an unreadable cursor only costs one extra settle period: the ledger is on disk


class Fingerprint(NamedTuple):
    sha256: str
    kind: str  # "micrograph" or "movie"


@dataclass
class Checksums:
    """SHA-256 and kind of files not yet in a manifest, by relative path, each valid for one (size, mtime).

    ``known`` answers only for the file as it was hashed; ``compute`` hashes through ``hash_file`` (which
    returns None when the file changed while it was read), counting in ``computed``; ``may_compute`` says
    whether ``deadline`` (``time.monotonic``) is still ahead.  An entry also means the file was found
    complete at that size and mtime.
    """

    hash_file: Callable[[FileObservation], str | None]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> size, mtime, sha256, kind
    deadline: float = math.inf
    computed: int = 0

    def known(self, obs: FileObservation) -> Fingerprint | None:
        entry = self.entries.get(obs.relative_path)
        if entry is None or entry["size"] != obs.size_bytes or entry["mtime"] != obs.mtime_s:
            return None
        return Fingerprint(str(entry["sha256"]), str(entry["kind"]))

    def may_compute(self) -> bool:
        """Whether there is time left to hash (always for the pass's first file, so every pass progresses)."""
        return self.computed == 0 or time.monotonic() < self.deadline

    def compute(self, obs: FileObservation, kind: str) -> Fingerprint | None:
        """The file's SHA-256 with its ``kind``, remembered; None when it changed while being read."""
        digest = self.hash_file(obs)
        self.computed += 1
        if digest is None:
            return None
        self.entries[obs.relative_path] = {"size": obs.size_bytes, "mtime": obs.mtime_s, "sha256": digest, "kind": kind}
        return Fingerprint(digest, kind)

    def to_document(self) -> dict[str, object]:
        return {"files": self.entries}

    @classmethod
    def from_document(
        cls,
        document: Mapping[str, Any],
        hash_file: Callable[[FileObservation], str | None],
        deadline: float = math.inf,
    ) -> Checksums:
        """The stored entries (a malformed document counts as empty: that only costs hashing again)."""
        files = document.get("files")
        entries = {
            str(path): entry
            for path, entry in (files.items() if isinstance(files, dict) else ())
            if isinstance(entry, dict) and {"size", "mtime", "sha256", "kind"} <= set(entry)
        }
        return cls(hash_file, entries, deadline)


def _identity(obs: FileObservation) -> dict[str, float]:
    return {"size": obs.size_bytes, "mtime": obs.mtime_s, "ctime": obs.ctime_s}


@dataclass(frozen=True)
class Plan:
    new_batches: tuple[BatchManifest, ...]
    quarantined: tuple[Quarantined, ...]
    state: PlanState
    n_pending: int


def file_kind(path: str) -> str:
    """``micrograph`` or ``movie`` (``layout.exposure_kind``: name suffix, format, MRC sections)."""
    return str(exposure_kind(path))


def safe_session(session: str) -> str:
    """Session names become partition keys: keep letters, digits, '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", session).strip("_")
    return cleaned or "session"


def batch_key(session: str, sequence: int) -> str:
    return f"{safe_session(session)}-{sequence:05d}"


def plan_batches(
    observations: Iterable[FileObservation],
    assigned: set[str],
    state: PlanState,
    next_sequence: Mapping[str, int],
    now_s: float,
    absolute: Callable[[str], str],
    checksums: Checksums,
    settle_seconds: float,
    truncated_after_seconds: float,
    max_batch_size: int,
    batch_window_seconds: float,
    known_checksums: Mapping[str, str] | None = None,
) -> Plan:
    """Decide, for one tick, which files are ready, which are set aside and which batches to cut.

    Pure apart from reading file headers (``check_exposure_complete``: declared size, TIFF directory
    chain, frame count announced by a sidecar) and hashing settled files (``checksums``).
    ``assigned`` holds the relative paths already in a manifest; ``next_sequence`` the next batch number
    per ``safe_session`` name; ``known_checksums`` maps the SHA-256 of every assigned file to its path.
    Files already set aside with the same size, mtime and ctime are not re-examined; a file ``checksums``
    knows at its size and mtime is neither checked nor hashed again.  Once ``checksums`` may hash no more,
    settled files it does not know stay pending and their sessions cut full batches only.
    """
    pending: dict[str, dict[str, float]] = {}
    quarantined_state = dict(state.quarantined)
    ready: dict[str, list[tuple[float, FileObservation, Fingerprint]]] = defaultdict(list)
    quarantined: list[Quarantined] = []
    first_landing = dict(known_checksums or {})
    unhashed_sessions: set[str] = set()  # a ready file was left for the next pass: no partial batch

    def set_aside(obs: FileObservation, reason: str, detail: str) -> None:
        quarantined.append(Quarantined(obs.relative_path, obs.session, reason, detail, obs.size_bytes, now_s))
        quarantined_state[obs.relative_path] = _identity(obs)

    for obs in observations:
        if obs.relative_path in assigned or state.remembers(obs):
            continue  # a fixed (rewritten, re-permissioned) file has a new identity and is re-examined
        seen = state.pending.get(obs.relative_path)
        if seen is None or seen["size"] != obs.size_bytes or seen["mtime"] != obs.mtime_s:
            pending[obs.relative_path] = {"size": obs.size_bytes, "mtime": obs.mtime_s, "since": now_s}
            continue
        if now_s - seen["since"] < settle_seconds:
            pending[obs.relative_path] = seen
            continue
        path = absolute(obs.relative_path)
        if not os.access(path, os.R_OK):
            set_aside(obs, "unreadable", f"{path}: permission denied for the user running cryodecon")
            continue
        known = checksums.known(obs)
        if known is None and not checksums.may_compute():
            pending[obs.relative_path] = seen
            unhashed_sessions.add(obs.session)
            continue
        try:
            if known is None:
                check_exposure_complete(path)
                known = checksums.compute(obs, file_kind(path))
        except IncompleteFileError as exc:
            if now_s - seen["since"] >= truncated_after_seconds:
                # A copy that never started, one preallocated and never filled, or one that died.
                reason = (
                    "empty"
                    if obs.size_bytes == 0
                    else "preallocated"
                    if isinstance(exc, ZeroFilledError)
                    else "truncated"
                )
                set_aside(obs, reason, exc.detail)
            else:
                pending[obs.relative_path] = seen
            continue
        except InputFileError as exc:
            set_aside(obs, exc.reason, exc.detail)
            continue
        except OSError as exc:  # vanished file, I/O error of the storage
            set_aside(obs, "unreadable", str(exc))
            continue
        if known is None:  # written to while it was hashed: it settles again
            pending[obs.relative_path] = {"size": obs.size_bytes, "mtime": obs.mtime_s, "since": now_s}
            continue
        digest = known.sha256
        if digest in first_landing:
            set_aside(obs, "duplicate", f"byte-identical to {first_landing[digest]} (SHA-256 {digest[:16]}…)")
            continue
        first_landing[digest] = obs.relative_path
        ready[obs.session].append((seen["since"], obs, known))

    batches: list[BatchManifest] = []
    for session in sorted(ready):
        files = sorted(ready[session], key=lambda item: (item[0], item[1].relative_path))
        sequence = next_sequence.get(safe_session(session), 1)
        while files:
            full = len(files) >= max_batch_size
            oldest_wait = now_s - files[0][0]
            if not full and (oldest_wait < batch_window_seconds or session in unhashed_sessions):
                for since, obs, _ in files:  # keep waiting for more exposures of this session
                    pending[obs.relative_path] = {
                        "size": obs.size_bytes,
                        "mtime": obs.mtime_s,
                        "since": since,
                    }
                break
            chunk, files = files[:max_batch_size], files[max_batch_size:]
            manifest_files = tuple(
                ManifestFile(obs.relative_path, obs.size_bytes, known.sha256, known.kind, obs.mtime_s)
                for _, obs, known in chunk
            )
            batches.append(BatchManifest(batch_key(session, sequence), session, sequence, now_s, manifest_files))
            sequence += 1
    return Plan(
        tuple(batches),
        tuple(quarantined),
        PlanState(pending, quarantined_state, state.unreadable_folders),
        len(pending),
    )
