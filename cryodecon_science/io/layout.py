"""Session layouts on microscope storage, and reading one exposure with its metadata record.

EPU (Thermo Fisher Scientific)::

    <session>/Images-Disc1/GridSquare_<gs>/Data/FoilHole_<fh>_Data_<a>_<b>_<date>_<time>.mrc   micrograph
    <session>/Images-Disc1/GridSquare_<gs>/Data/FoilHole_<fh>_Data_<a>_<b>_<date>_<time>.xml   its sidecar
    ...Data/FoilHole_<...>_fractions.tiff | _fractions.mrc | _EER.eer                           the movie

Movies may sit in a separate folder tree (EPU's "movies folder") with the same ``GridSquare_<gs>/Data``
structure; a movie finds its XML by the shared stem anywhere under the root.  Only ``FoilHole_*_Data_*``
files under a ``Data`` folder are exposures (``GridSquare_*.mrc`` atlas tiles and ``FoilHoles/`` previews,
and anything else inside a ``GridSquare_<id>`` folder, are not).

SerialEM: ``<name>.mrc``/``<name>.tif``/``<name>.eer`` with ``<name>.<ext>.mdoc`` (or ``<name>.mdoc``) beside
it.  ``.tif``/``.tiff``/``.eer`` files and MRC stacks whose mdoc is a ``[FrameSet]`` or that hold more
than one section are movies; single-section MRC files are micrographs.

``discover_session`` lists exposures without reading pixels; ``read_exposure`` reads one (pixels, gain and
defect correction, metadata from header and sidecar merged into an ``ExposureMetadata``) and checks the
movie's frame count against what the sidecar announces.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import tifffile

from cryodecon_science.io.eer import MAX_EER_FRAMES, read_eer
from cryodecon_science.io.epu import read_epu_xml
from cryodecon_science.io.errors import GainReferenceMismatchError
from cryodecon_science.io.gain import (
    GainReference,
    apply_gain,
    correct_defects,
    detect_hot_pixels,
    is_gain_reference_name,
    read_defect_list,
)
from cryodecon_science.io.mrc import (
    MAX_DIMENSION_PX,
    MAX_FRAMES,
    PREALLOCATED_DETAIL,
    CorruptHeaderError,
    IncompleteFileError,
    ZeroFilledError,
    check_complete,
    check_not_zero_filled,
    read_fei_extended_header,
    read_geometry,
    read_mrc_frames,
    zero_tail_detail,
)
from cryodecon_science.io.serialem import read_mdoc
from cryodecon_science.io.tiff import MAX_EXPANSION, check_page_chain, read_tiff_movie
from cryodecon_science.metadata import ExposureKind, ExposureMetadata, FieldValue, merge_metadata

ImageFormat = Literal["mrc", "tiff", "eer"]
SidecarKind = Literal["epu_xml", "mdoc"]
LayoutKind = Literal["epu", "serialem", "plain"]

_FOIL_HOLE = re.compile(r"^FoilHole_(?P<fh>\d+)_Data_(?P<rest>.+)$")
_GRID_SQUARE = re.compile(r"^GridSquare_(?P<gs>\d+)$")
_MOVIE_SUFFIXES = ("_fractions", "_Fractions", "_EER", "_eer")
_FORMATS: dict[str, ImageFormat] = {".mrc": "mrc", ".mrcs": "mrc", ".tif": "tiff", ".tiff": "tiff", ".eer": "eer"}


@dataclass(frozen=True)
class ExposureFile:
    """One exposure found on disk.

    Attributes
    ----------
    exposure_name : str
        File stem without ``_fractions``/``_EER`` (EPU's micrograph and movie share it).
    path : Path
        The image file.
    kind : {"micrograph", "movie"}
    image_format : {"mrc", "tiff", "eer"}
    sidecar_path : Path or None
        The EPU XML or SerialEM mdoc describing it.
    sidecar_kind : {"epu_xml", "mdoc"} or None
    grid_square_id, foil_hole_id : str or None
        From the EPU path (``GridSquare_<id>`` folder, ``FoilHole_<id>_Data_`` name).
    layout : {"epu", "serialem", "plain"}
    """

    exposure_name: str
    path: Path
    kind: ExposureKind
    image_format: ImageFormat
    sidecar_path: Path | None = None
    sidecar_kind: SidecarKind | None = None
    grid_square_id: str | None = None
    foil_hole_id: str | None = None
    layout: LayoutKind = "plain"


@dataclass(frozen=True)
class RawExposure:
    """One exposure as read from disk: frames, sampling and record (``cryodecon_science.exposure.Exposure``
    is what the pipeline makes of it).

    Attributes
    ----------
    file : ExposureFile
    frames : ndarray, shape (n_frames, ny, nx)
        Counts per frame (n_frames = 1 for a micrograph) in the stored sample type (uint8/uint16 counts
        stay integers: half the memory of float32), or float32 once gain- or defect-corrected.
    pixel_size_angstrom : float
        Å per pixel of ``frames`` (0.0 when no source gives one).
    metadata : ExposureMetadata
    defect_mask : ndarray (ny, nx) bool or None
        Pixels replaced by ``correct_defects``.
    """

    file: ExposureFile
    frames: npt.NDArray[np.generic]
    pixel_size_angstrom: float
    metadata: ExposureMetadata
    defect_mask: npt.NDArray[np.bool_] | None = None

    @property
    def micrograph(self) -> npt.NDArray[np.float32]:
        """The frame sum (ny, nx) float32."""
        return np.ascontiguousarray(self.frames.sum(axis=0, dtype=np.float32))


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".mdoc", *_FORMATS, ".xml"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    for suffix in (".mrc", ".tif", ".tiff", ".eer"):  # SerialEM: name.tif.mdoc
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _exposure_name(path: Path) -> tuple[str, bool]:
    """(stem without movie suffix, whether a movie suffix was present)."""
    stem = _stem(path)
    for suffix in _MOVIE_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)], True
    return stem, False


def _grid_square(path: Path) -> str | None:
    for part in reversed(path.parts):
        match = _GRID_SQUARE.match(part)
        if match:
            return match.group("gs")
    return None


def discover_session(root: str | os.PathLike[str]) -> list[ExposureFile]:
    """List the exposures under ``root`` (EPU or SerialEM layout), sorted by path; reads no pixels.

    Hidden files, partial copies (``.*``, ``*.part``) and gain references (``io.gain.is_gain_reference_name``:
    ``*gain``, ``*gain*ref*``, ``CountRef*``, ``SuperRef*``) are skipped.  MRC files are classified by
    their header (``read_geometry``); one whose header cannot be read is still listed, as a
    micrograph, so that ``read_exposure`` reports its typed error instead of the file going unseen.
    """
    root_path = Path(root)
    files = sorted(
        p
        for p in root_path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".part") and not is_gain_reference_name(p)
    )
    xml_by_stem: dict[str, Path] = {}
    mdoc_by_image: dict[str, Path] = {}
    for path in files:
        lower = path.name.lower()
        if lower.endswith(".xml") and _FOIL_HOLE.match(path.stem):
            xml_by_stem.setdefault(path.stem, path)
        elif lower.endswith(".mdoc"):
            mdoc_by_image[str(path.parent / _stem(path))] = path
    exposures: list[ExposureFile] = []
    for path in files:
        image_format = _FORMATS.get(path.suffix.lower())
        if image_format is None:
            continue
        name, movie_suffix = _exposure_name(path)
        foil = _FOIL_HOLE.match(name)
        if foil is not None:
            if "Data" not in path.parts:
                continue
            sidecar = path.with_name(name + ".xml")
            sidecar_path = sidecar if sidecar.is_file() else xml_by_stem.get(name)
            kind: ExposureKind = "movie" if movie_suffix or image_format != "mrc" else "micrograph"
            sidecar_kind: SidecarKind | None = "epu_xml" if sidecar_path else None
            exposures.append(
                ExposureFile(
                    name,
                    path,
                    kind,
                    image_format,
                    sidecar_path,
                    sidecar_kind,
                    _grid_square(path),
                    foil.group("fh"),
                    "epu",
                )
            )
            continue
        if _grid_square(path) is not None:
            continue  # EPU atlas tiles and foil-hole previews inside GridSquare_<id> are not exposures
        mdoc = mdoc_by_image.get(str(path.parent / _stem(path)))
        kind = "movie" if movie_suffix or image_format != "mrc" else _mrc_kind(path, mdoc)
        layout: LayoutKind = "serialem" if mdoc else "plain"
        exposures.append(
            ExposureFile(name, path, kind, image_format, mdoc, "mdoc" if mdoc else None, None, None, layout)
        )
    return exposures


def _mrc_kind(path: Path, mdoc: Path | None) -> ExposureKind:
    if mdoc is not None:
        try:
            with open(mdoc, encoding="utf-8", errors="replace") as handle:
                if "[FrameSet" in handle.read(1 << 20):
                    return "movie"
        except OSError:
            pass
    try:
        return "movie" if read_geometry(path).shape_zyx[0] > 1 else "micrograph"
    except Exception:  # classification only: read_exposure raises the typed error later
        return "micrograph"


def expected_frame_count(sidecar: str | os.PathLike[str]) -> int | None:
    """Frames the sidecar announces (EPU ``NumberOffractions``, SerialEM ``NumSubFrames``), or None.

    Raises the sidecar readers' typed errors for a malformed sidecar.
    """
    path = Path(sidecar)
    if path.name.lower().endswith(".mdoc"):
        return read_mdoc(path).announced_frame_count
    return read_epu_xml(path).announced_frame_count


def read_exposure(
    exposure: ExposureFile | str | os.PathLike[str],
    *,
    gain: GainReference | None = None,
    defect_mask: npt.NDArray[np.bool_] | None = None,
    detect_hot_pixels_k_sigma: float | None = None,
    eer_frames_per_group: int | None = None,
    eer_super_resolution: int = 0,
    pixel_size_angstrom: float | None = None,
    check_frame_count: bool = True,
    tolerances: dict[str, tuple[float, float]] | None = None,
    defect_list_path: str | os.PathLike[str] | None = None,
    priority_sources: Sequence[tuple[str, str, Mapping[str, FieldValue]]] = (),
) -> RawExposure:
    """Read one exposure (micrograph or movie) with its merged metadata record.

    Parameters
    ----------
    exposure : ExposureFile or path
        A path is classified as ``discover_session`` would (sidecar looked up beside it).
    gain : GainReference, optional
        Applied to movie frames (frames × gain); its zero pixels join the defect mask.
    defect_mask : ndarray (ny, nx) bool, optional
        Known defects (``read_defect_list``).
    detect_hot_pixels_k_sigma : float, optional
        Also flag pixels of the frame sum above their neighbourhood by this many robust σ.
    eer_frames_per_group, eer_super_resolution : int
        EER rendering (``read_eer``); the intensity-scale check always runs and raises ``EerScaleError``.
    pixel_size_angstrom : float, optional
        Overrides every source (recorded as the source "user").
    check_frame_count : bool
        Raise ``IncompleteFileError`` when a movie has fewer frames than the sidecar announces
        (``CorruptHeaderError`` when it has more).
    tolerances : dict, optional
        Per-field disagreement tolerances (``merge_metadata``).
    defect_list_path : path, optional
        A defect list (``read_defect_list``: ``x y`` per line) read for the frames' size and joined to the mask.
    priority_sources : sequence of (source, path, fields), optional
        Metadata sources ranked above every file's (a session's settings overriding the optics).

    The gain reference (path, SHA-256, orientation, convention), the defect list and the number of pixels
    replaced as defects are recorded in the ``detector`` section (source ``"detector_corrections"``).

    Returns
    -------
    RawExposure

    Raises
    ------
    InputFileError (and subclasses)
        Any unreadable image, sidecar or defect list, frame-count mismatch, EER scale mismatch;
        ``GainReferenceMismatchError`` when the gain reference's size differs from the frames'.
    """
    file = exposure if isinstance(exposure, ExposureFile) else _classify(Path(exposure))
    sources: list[tuple[str, str, dict[str, FieldValue]]] = [(s, p, dict(f)) for s, p, f in priority_sources]
    if pixel_size_angstrom is not None:
        sources.append(("user", "", {"optics.pixel_size_angstrom": float(pixel_size_angstrom)}))
    if file.image_format == "mrc":
        frames, geometry = read_mrc_frames(file.path)
        header: dict[str, FieldValue] = {
            "detector.image_width_px": geometry.shape_zyx[2],
            "detector.image_height_px": geometry.shape_zyx[1],
            "detector.n_frames": geometry.shape_zyx[0],
        }
        fei = read_fei_extended_header(file.path)
        if fei is not None:
            sources.append(("fei_extended_header", str(file.path), dict(fei.to_fields())))
        if geometry.pixel_size_angstrom > 0:
            header["optics.pixel_size_angstrom"] = geometry.pixel_size_angstrom
        sources.append(("mrc_header", str(file.path), header))
        stored = frames.shape[0]
    elif file.image_format == "tiff":
        movie = read_tiff_movie(file.path)
        frames = movie.frames
        sources.append(("tiff", str(file.path), dict(movie.to_fields())))
        stored = frames.shape[0]
    else:
        eer = read_eer(file.path, frames_per_group=eer_frames_per_group, super_resolution=eer_super_resolution)
        frames = eer.frames
        sources.append(("eer_header", str(file.path), dict(eer.to_fields())))
        stored = eer.n_raw_frames  # the sidecar announces raw EER frames, not rendered groups
    announced: int | None = None
    if file.sidecar_path is not None:
        if file.sidecar_kind == "mdoc":
            mdoc = read_mdoc(file.sidecar_path)
            sidecar_fields, announced = dict(mdoc.fields), mdoc.announced_frame_count
        else:
            epu = read_epu_xml(file.sidecar_path)
            sidecar_fields, announced = dict(epu.fields), epu.announced_frame_count
        sources.append((str(file.sidecar_kind), str(file.sidecar_path), sidecar_fields))
    if file.kind == "movie" and check_frame_count and announced is not None:
        if stored < announced:
            raise IncompleteFileError(file.path, f"{stored} frames on disk, the sidecar announces {announced}")
        if stored > announced:
            raise CorruptHeaderError(file.path, f"{stored} frames on disk, the sidecar announces only {announced}")
    layout_fields: dict[str, FieldValue] = {}
    if file.grid_square_id is not None:
        layout_fields["acquisition.grid_square_id"] = file.grid_square_id
    if file.foil_hole_id is not None:
        layout_fields["acquisition.foil_hole_id"] = file.foil_hole_id
    if layout_fields:
        sources.append(("layout", str(file.path.parent), layout_fields))

    mask = None if defect_mask is None else np.asarray(defect_mask, dtype=bool)
    corrections: dict[str, FieldValue] = {}
    if defect_list_path is not None:
        listed = read_defect_list(defect_list_path, (int(frames.shape[-2]), int(frames.shape[-1])))
        mask = listed if mask is None else (mask | listed)
        corrections["detector.defect_list_path"] = str(defect_list_path)
    if gain is not None:
        try:
            frames = apply_gain(frames, gain)
        except ValueError as exc:
            raise GainReferenceMismatchError(file.path, f"{gain.source_path}: {exc}") from exc
        mask = gain.defect_mask if mask is None else (mask | gain.defect_mask)
        corrections.update(
            {
                "detector.gain_reference_path": gain.source_path,
                "detector.gain_rotate_quarter_turns_ccw": gain.rotate_quarter_turns_ccw,
                "detector.gain_flip": gain.flip,
                "detector.gain_convention": gain.convention,
            }
        )
        if gain.sha256:
            corrections["detector.gain_reference_sha256"] = gain.sha256
    if detect_hot_pixels_k_sigma is not None:
        hot = detect_hot_pixels(frames.sum(axis=0), k_sigma=detect_hot_pixels_k_sigma)
        mask = hot if mask is None else (mask | hot)
    if mask is not None:
        frames = correct_defects(frames, mask)
        corrections["detector.defect_pixels"] = int(np.count_nonzero(mask))
    if corrections:
        sources.append(("detector_corrections", gain.source_path if gain is not None else "", corrections))
    record = merge_metadata(file.exposure_name, file.kind, str(file.path), sources, tolerances)
    pixel = record.optics.pixel_size_angstrom or 0.0
    return RawExposure(file, frames, float(pixel), record, mask)


def classify_exposure(path: str | os.PathLike[str]) -> ExposureFile:
    """An ``ExposureFile`` for one path, as ``discover_session`` would list it (sidecar looked up beside it).

    Raises ``CorruptHeaderError`` for a suffix that is not an exposure format.
    """
    return _classify(Path(path))


def _classify(path: Path) -> ExposureFile:
    """An ExposureFile for one path, with its sidecar looked up beside it."""
    image_format = _FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise CorruptHeaderError(path, f"unknown image format {path.suffix!r} (expected .mrc, .tif(f), .eer)")
    name, movie_suffix = _exposure_name(path)
    foil = _FOIL_HOLE.match(name)
    if foil is not None:
        xml = path.with_name(name + ".xml")
        kind: ExposureKind = "movie" if movie_suffix or image_format != "mrc" else "micrograph"
        sidecar = xml if xml.is_file() else None
        sidecar_kind: SidecarKind | None = "epu_xml" if sidecar else None
        return ExposureFile(
            name, path, kind, image_format, sidecar, sidecar_kind, _grid_square(path), foil.group("fh"), "epu"
        )
    mdoc = next((m for m in (Path(f"{path}.mdoc"), path.with_suffix(".mdoc")) if m.is_file()), None)
    kind = "movie" if movie_suffix or image_format != "mrc" else _mrc_kind(path, mdoc)
    return ExposureFile(
        name, path, kind, image_format, mdoc, "mdoc" if mdoc else None, None, None, "serialem" if mdoc else "plain"
    )


def exposure_kind(path: str | os.PathLike[str]) -> ExposureKind:
    """Micrograph or movie, by the rules of ``discover_session`` (name suffix, format, MRC sections)."""
    target = Path(path)
    image_format = _FORMATS.get(target.suffix.lower())
    if image_format is None:
        raise CorruptHeaderError(target, f"not an exposure format: {target.suffix!r}")
    _, movie_suffix = _exposure_name(target)
    if movie_suffix or image_format != "mrc":
        return "movie"
    return _mrc_kind(target, _sidecar_mdoc(target))


def _sidecar_mdoc(path: Path) -> Path | None:
    for candidate in (path.with_name(path.name + ".mdoc"), path.with_name(_stem(path) + ".mdoc")):
        if candidate.is_file():
            return candidate
    return None


def _sidecar(path: Path) -> Path | None:
    """The EPU XML (same stem, movie suffix removed) or SerialEM mdoc beside ``path``, if present."""
    name, _ = _exposure_name(path)
    xml = path.with_name(name + ".xml")
    return xml if xml.is_file() else _sidecar_mdoc(path)


def check_exposure_complete(path: str | os.PathLike[str]) -> int:
    """Whether an exposure file is completely written, reading at most its last frame; returns its frame count.

    * MRC: the size on disk equals the size the header declares (``mrc.check_complete``), and the last
      section's final rows are not all zero (``mrc.check_not_zero_filled``);
    * TIFF and EER: every image directory and strip lies inside the file and the directory chain ends
      (``tiff.check_ifd_chain_ends``: a copy in progress otherwise reads as a shorter movie);
    * TIFF: the last image directory is not zeros, and the last page, decoded, does not end in rows of
      zeros (its stored bytes are not zeros when they do not decode);
    * and, where an EPU XML or SerialEM mdoc sidecar beside the file announces a frame count, the file
      holds exactly that many frames.

    A sidecar's frame count is a better completeness test than a settle timer: a copy that paused for a
    minute still has fewer frames than announced.

    Zero-filled (preallocated) files: some transfer tools create the file at its full size and fill it
    afterwards, so its size and header say complete while its data is zeros.  The last
    ``mrc.filled_tail_rows`` rows of the last section/frame are read: the last 1/16 of the rows and at
    least 4096 pixels.  A real frame at a dose of λ e⁻/px has all of those n pixels empty with
    probability exp(−λ·n): for a 4096² frame at 0.5 e⁻/px, n = 1,048,576 and exp(−524,288) ≈ 10^−227,695;
    for the smallest region (4096 px) at 0.5 e⁻/px, exp(−2048) ≈ 10^−889; even at 0.01 e⁻/px (far below
    any counting movie's fraction) exp(−41) ≈ 10^−18.  So real data never trips it.  Not detected:

    * zeros in the middle (earlier sections/frames or rows still zero, later ones already written);
    * a file filled in non-sequential order (its tail written before the rest);
    * a partly written last frame whose zeros cover fewer than its last ``filled_tail_rows`` rows;
    * EER: no zero-fill check (a raw EER frame is a run-length code of events, and zeros decode to events,
      not to an empty frame), beyond the directory chain and a sidecar's frame count.

    And wrongly reported as incomplete (then quarantined as truncated after ``truncated_after_seconds``): a
    real exposure whose last rows are zero over that whole region, e.g. a dead readout section at the
    bottom of the detector, or an aligned sum zero-padded by at least 1/16 of its height.

    Raises
    ------
    IncompleteFileError
        Shorter than declared, fewer frames than announced (may still be copying), or the data's tail
        still zeros ("last section all zeros: the file may be preallocated and still being filled").
    CorruptHeaderError, InputFileError
        A header or sidecar that cannot be valid, or more frames than announced.
    """
    target = Path(path)
    image_format = _FORMATS.get(target.suffix.lower())
    if image_format == "mrc":
        frames = int(check_not_zero_filled(target, check_complete(target)).shape_zyx[0])
    elif image_format in ("tiff", "eer"):
        size = target.stat().st_size
        if size == 0:
            raise IncompleteFileError(target, "zero bytes")
        limit = MAX_EER_FRAMES if image_format == "eer" else MAX_FRAMES
        try:
            with tifffile.TiffFile(target) as tif:
                frames = check_page_chain(tif, target, size, limit)
                if image_format == "tiff":
                    _check_last_page_written(tif, target, size)
        except (tifffile.TiffFileError, struct.error, ValueError, IndexError) as exc:
            if isinstance(exc, CorruptHeaderError | IncompleteFileError):
                raise
            raise CorruptHeaderError(target, f"not a readable TIFF: {exc}") from exc
    else:
        raise CorruptHeaderError(target, f"not an exposure format: {target.suffix!r}")
    sidecar = _sidecar(target)
    # An EER file holds raw detector frames; sidecars announce the fractions it will be grouped into.
    if sidecar is not None and image_format != "eer" and exposure_kind(target) == "movie":
        announced = expected_frame_count(sidecar)
        if announced is not None and frames < announced:
            raise IncompleteFileError(target, f"{frames} frames on disk, {sidecar.name} announces {announced}")
        if announced is not None and frames > announced:
            raise CorruptHeaderError(target, f"{frames} frames on disk, {sidecar.name} announces only {announced}")
    return frames


def _check_last_page_written(tif: tifffile.TiffFile, path: Path, size: int) -> None:
    """Raise ``IncompleteFileError`` when the last page of a TIFF movie looks preallocated (zeros).

    An image directory of zeros (no tags) is one not yet written.  The page is decoded with ``tifffile``
    and checked like an MRC section (``mrc.zero_tail_detail``); compressed data that does not decode is
    unwritten when its stored bytes end in zeros, corrupt otherwise.  Pages that ``read_tiff_movie`` would
    reject for their shape or sizes are left to it.
    """
    page = tif.pages[-1]
    if not isinstance(page, tifffile.TiffPage):
        page = page.aspage()
    if len(page.tags) == 0:
        raise ZeroFilledError(path, f"image directory at byte {page.offset} all zeros: {PREALLOCATED_DETAIL}")
    shape = tuple(int(v) for v in page.shape)
    offsets, counts = [int(o) for o in page.dataoffsets], [int(c) for c in page.databytecounts]
    if len(shape) != 2 or page.dtype is None or not offsets or len(offsets) != len(counts):
        return
    ny, nx = shape
    decoded = ny * nx * np.dtype(page.dtype).itemsize
    stored = sum(counts)
    if not (0 < ny <= MAX_DIMENSION_PX and 0 < nx <= MAX_DIMENSION_PX) or not 0 < stored <= decoded * 2:
        return
    if decoded > MAX_EXPANSION * stored or min(offsets) <= 0:
        return
    end = max(o + c for o, c in zip(offsets, counts, strict=True))
    if end > size:
        raise IncompleteFileError(path, f"last frame's data ends at byte {end}, file has {size}")
    try:
        data = page.asarray()
    except Exception as exc:  # tifffile/imagecodecs raise many types on undecodable data
        raw = b"".join(_read_at(tif, o, c) for o, c in zip(offsets, counts, strict=True))
        if not any(raw[-max(len(raw) // 16, min(len(raw), 64)) :]):
            raise ZeroFilledError(path, f"last frame's stored data ends in zeros: {PREALLOCATED_DETAIL}") from exc
        raise CorruptHeaderError(path, f"last frame not decodable ({type(exc).__name__}: {exc})") from exc
    detail = zero_tail_detail(np.asarray(data).reshape(ny, nx))
    if detail is not None:
        raise ZeroFilledError(path, detail)


def _read_at(tif: tifffile.TiffFile, offset: int, count: int) -> bytes:
    tif.filehandle.seek(offset)
    data: bytes = tif.filehandle.read(count)
    return data
