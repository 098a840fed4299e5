"""Atomic file writes whose permissions follow the process umask.

A file is written under a hidden temporary name in its target's folder (``.<name>.<random>.part``) and
moved onto the target with ``os.replace`` (atomic on POSIX within one file system), so a reader never sees
half a file.  The temporary file is created by ``os.open(..., 0o666)``, so the kernel applies the umask
as for any ordinary file (0o644 under umask 022, 0o640 under 027) and staff, RELION or cryoSPARC running
as other users can read the outputs.  ``tempfile.mkstemp`` would create it 0o600 whatever the umask.

Writers that delete and recreate the file at the temporary path (some libraries do) may leave other
permission bits; the bits the kernel gave the temporary file at creation are restored before the rename.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_ATTEMPTS = 100


def _create_temporary(target: Path) -> tuple[Path, int]:
    """Create an empty ``.<name>.<random>.part`` beside ``target``; returns it and its permission bits."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_ATTEMPTS):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp, mode
    raise FileExistsError(f"no free temporary name beside {target} after {_ATTEMPTS} attempts")


def _restore_mode(tmp: Path, mode: int) -> None:
    """Give ``tmp`` the permission bits it was created with, if a writer recreated it with others."""
    if stat.S_IMODE(tmp.stat().st_mode) != mode:
        os.chmod(tmp, mode)


@contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, on failure remove it.

    The temporary file exists (empty) when yielded; the caller may write it, or delete it and let a
    library create it.  Permissions follow the umask (module docstring).  The parent folder is created.
    """
    target = Path(path)
    tmp, mode = _create_temporary(target)
    try:
        yield tmp
        _restore_mode(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_once(path: str | os.PathLike[str], content: bytes) -> bool:
    """Create ``path`` holding ``content`` only if it does not exist; False (nothing written) if it does.

    The content is written to a temporary file first and then hard-linked to ``path`` (``os.link`` fails
    if the name exists), so two processes racing on one name cannot both create it, and no reader ever sees
    the file partly written.  Permissions follow the umask (module docstring).
    """
    target = Path(path)
    tmp, _ = _create_temporary(target)
    try:
        with open(tmp, "wb") as handle:
            handle.write(content)
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
