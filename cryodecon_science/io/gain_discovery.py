"""Which gain reference a movie needs, where it is, and reading it once per session.

Counting cameras store movies without gain normalisation in three cases this module recognises; such a
movie *needs* a gain reference (``gain_needed_because``):

* an EER movie (Falcon 4/4i): events are raw detector counts, always stored unnormalised;
* a movie whose SerialEM ``.mdoc`` names a ``GainReference``: SerialEM writes that key exactly when it saves
  frames without normalisation (K2/K3 counting frames, Falcon 4 EER; SerialEM manual, "Frame File Options");
* any movie of a session whose settings name a gain file (``gain.path``) or say ``gain.required: true``.

``gain.required: false`` turns the first two off (the movies are processed as stored).  Other MRC and TIFF
movies carry nothing that says whether they were normalised: they are processed as stored unless a gain is
found for them.  A movie that needs a gain and has none is refused with ``GainReferenceMissingError``
(reason ``gain_reference_missing``), which the pipeline records in ``quarantine``: never processed as flat.

Where the reference is (``find_gain_reference``), first found wins:

1. **settings**: ``gain.path`` of the session settings (relative to the session folder, or absolute);
2. **mdoc**: the file the movie's ``.mdoc`` names, looked for in the mdoc's folder, then the session folder;
   a DigitalMicrograph ``.dm4`` reference is not readable here, so the same name with ``.mrc``, ``.tif``,
   ``.tiff`` or ``.gain`` is taken instead (IMOD's ``dm2mrc`` converts it);
3. **beside_data** (EPU's convention): a file whose name holds ``gain``, ``CountRef`` or ``SuperRef`` with
   suffix ``.mrc``, ``.tif``, ``.tiff`` or ``.gain`` in the movie's folder or the nearest folder above it, up
   to the session folder (the newest, where a folder holds several).

The session's orientation and convention (``GainSettings``: MotionCor2's ``-RotGain`` then ``-FlipGain``)
apply to whichever reference is used.  References are read with ``io.gain.load_gain_reference``: once per
process per (file, mtime, orientation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryodecon_science.io.errors import GainReferenceMissingError, InputFileError
from cryodecon_science.io.gain import GAIN_SUFFIXES, GainReference, is_gain_reference_name, load_gain_reference
from cryodecon_science.io.layout import ExposureFile
from cryodecon_science.io.serialem import read_mdoc
from cryodecon_science.io.session_settings import GainSettings

GainOrigin = Literal["settings", "mdoc", "beside_data"]


@dataclass(frozen=True, eq=False)
class GainChoice:
    """The gain correction of one movie.

    Attributes
    ----------
    reference : GainReference or None
        None: no gain applies (the movie needs none and none was found).
    origin : {"settings", "mdoc", "beside_data"} or None
    needed_because : str or None
        Why the movie needs a gain (``gain_needed_because``), None where it does not.
    defect_list_path : Path or None
        The session's defect list (``read_exposure(defect_list_path=...)``), where its settings name one.
    """

    reference: GainReference | None
    origin: GainOrigin | None
    needed_because: str | None
    defect_list_path: Path | None = None


def gain_needed_because(exposure: ExposureFile, mdoc_gain_reference: str | None, settings: GainSettings) -> str | None:
    """Why ``exposure`` needs a gain reference (module docstring), or None where it does not."""
    if exposure.kind != "movie" or settings.required is False:
        return None
    if settings.required:
        return "the session settings require a gain reference (gain.required)"
    if settings.path is not None:
        return f"the session settings name the gain reference {settings.path!r} (gain.path)"
    if mdoc_gain_reference is not None:
        return f"its SerialEM mdoc names GainReference {mdoc_gain_reference!r} (frames saved unnormalised)"
    if exposure.image_format == "eer":
        return "EER movies are stored without gain normalisation"
    return None


def _within(folder: Path, root: Path) -> bool:
    try:
        folder.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


class SessionGains:
    """Gain references of one session, found and read once (``find_gain_reference`` per movie).

    Folder listings are kept for the life of the object (one batch); references are cached per process
    by ``load_gain_reference``.
    """

    def __init__(self, session_dir: str | os.PathLike[str], settings: GainSettings) -> None:
        self.session_dir = Path(session_dir)
        self.settings = settings
        self._beside: dict[Path, Path | None] = {}

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.session_dir / path

    def _gain_in(self, folder: Path) -> Path | None:
        if folder not in self._beside:
            try:
                candidates = [
                    p
                    for p in folder.iterdir()
                    if p.suffix.lower() in GAIN_SUFFIXES and is_gain_reference_name(p) and p.is_file()
                ]
            except OSError:
                candidates = []
            self._beside[folder] = max(candidates, key=lambda p: (p.stat().st_mtime, p.name)) if candidates else None
        return self._beside[folder]

    def beside_data(self, movie: Path) -> Path | None:
        """EPU's convention: a gain file in the movie's folder or the nearest one above, up to the session folder."""
        folder = movie.parent
        while True:
            found = self._gain_in(folder)
            if found is not None:
                return found
            if folder == self.session_dir or folder.parent == folder or not _within(folder.parent, self.session_dir):
                return None
            folder = folder.parent

    def named_by_mdoc(self, name: str, mdoc: Path) -> tuple[Path | None, list[Path]]:
        """The file an mdoc's ``GainReference`` names (or a readable conversion of it), and every path tried."""
        base = Path(name.replace("\\", "/")).name  # SerialEM runs on Windows: a full path may be written
        tried: list[Path] = []
        for folder in dict.fromkeys((mdoc.parent, self.session_dir)):
            exact = folder / base
            names = [exact] if exact.suffix.lower() in GAIN_SUFFIXES else []
            names += [exact.with_suffix(suffix) for suffix in GAIN_SUFFIXES if suffix != exact.suffix.lower()]
            for candidate in names:
                tried.append(candidate)
                if candidate.is_file():
                    return candidate, tried
        return None, tried

    def find_gain_reference(self, exposure: ExposureFile) -> GainChoice:
        """The gain correction of one exposure (module docstring: which movies need one, where it is).

        Parameters
        ----------
        exposure : ExposureFile
            ``layout.classify_exposure`` of the file.

        Raises
        ------
        GainReferenceMissingError
            The movie needs a gain and none is found (the detail says why it needs one and where it looked),
            or the one found cannot be read.
        InputFileError
            Its mdoc cannot be read.
        """
        if exposure.kind != "movie":
            return GainChoice(None, None, None)
        settings = self.settings
        defects = None if settings.defect_list_path is None else self._resolve(settings.defect_list_path)
        mdoc_name = None
        if exposure.sidecar_kind == "mdoc" and exposure.sidecar_path is not None:
            mdoc_name = read_mdoc(exposure.sidecar_path).gain_reference
        needed = gain_needed_because(exposure, mdoc_name, settings)
        why = needed or "a gain reference was asked for"
        path: Path | None = None
        origin: GainOrigin | None = None
        if settings.path is not None:
            path, origin = self._resolve(settings.path), "settings"
            if not path.is_file():
                raise GainReferenceMissingError(exposure.path, f"{why}, and {path} does not exist")
        elif mdoc_name is not None and exposure.sidecar_path is not None:
            path, tried = self.named_by_mdoc(mdoc_name, exposure.sidecar_path)
            origin = "mdoc"
            if path is None and needed is not None:
                names = ", ".join(dict.fromkeys(p.name for p in tried))
                folders = " or ".join(dict.fromkeys(str(p.parent) for p in tried))
                raise GainReferenceMissingError(exposure.path, f"{needed}, and none of {names} is in {folders}")
        if path is None:
            path = self.beside_data(exposure.path)
            origin = "beside_data" if path is not None else None
        if path is None:
            if needed is not None:
                raise GainReferenceMissingError(
                    exposure.path,
                    f"{needed}, and no gain file (*gain, *gain*ref*, CountRef*, SuperRef*: "
                    f"{', '.join(GAIN_SUFFIXES)}) lies "
                    f"beside it or above it in {self.session_dir}; name one in the session settings (gain.path)",
                )
            return GainChoice(None, None, None, defects)
        try:
            reference = load_gain_reference(
                path,
                rotate_quarter_turns_ccw=settings.rotate_quarter_turns_ccw,
                flip=settings.flip,
                convention=settings.convention,
            )
        except InputFileError as exc:
            raise GainReferenceMissingError(exposure.path, f"gain reference {path} unusable ({exc})") from exc
        return GainChoice(reference, origin, needed, defects)
