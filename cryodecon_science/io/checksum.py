"""SHA-256 of a file, read in blocks: the one file checksum of the project (manifests, gain references, the
simulator's write-if-changed)."""

from __future__ import annotations

import hashlib
import os


def sha256_of_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of the file's bytes, read ``chunk_bytes`` at a time; ``OSError`` propagates."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
