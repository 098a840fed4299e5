"""IO manager for per-batch assets: one file per micrograph, MRC for images.

Every partitioned asset of the pipeline returns ``dict[micrograph name, value]``.  Images
(:class:`~cryodecon_science.io.mrc.Micrograph`) are written as float32 MRC with the pixel size in the
header, so RELION, cryoSPARC or any viewer can open them; an
:class:`~cryodecon_science.exposure.Exposure` is its micrograph's MRC plus ``<micrograph>.exposure.pkl``
(optics, dose, record: everything but the pixels) and, for a dose-weighted movie, ``<micrograph>.dose_weighted.mrc``,
read back as one value; other values (CTF fits,
priors, score records) are pickled.  Layout: ``<root>/<asset key path>/<partition>/<micrograph>.mrc|.pkl``.

An input declared with the metadata ``{RECORDS_ONLY: True}`` (``dg.AssetIn(metadata=...)``) on an asset of
``Exposure`` values loads only each exposure's ``.exposure.pkl`` (a ``dict`` of every ``Exposure`` field but
the images): a step that needs the optics, session and drift of a batch, not its pixels, stays cheap.

Writes merge: storing a dict writes only its keys, so reprocessing one micrograph of a batch leaves the
others in place.  A full run of a partition removes files of micrographs that are no longer in its
output (e.g. an exposure quarantined on rerun).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import dagster as dg

from cryodecon_science.exposure import Exposure
from cryodecon_science.io.atomic import atomic_target
from cryodecon_science.io.mrc import InputFileError, Micrograph, read_micrograph, write_mrc

SELECTION_TAG = "cryodecon/micrographs"
EXPOSURE_SUFFIX = ".exposure.pkl"
DOSE_WEIGHTED_SUFFIX = ".dose_weighted.mrc"
RECORDS_ONLY = "cryodecon/records_only"


class BatchIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[str, Exposure | Micrograph | object]`` outputs one file per key (module docstring)."""

    root: str

    def _dir(self, context: dg.OutputContext | dg.InputContext) -> Path:
        key_path = context.asset_key.path
        partition = context.asset_partition_key if context.has_asset_partitions else "__all__"
        return Path(self.root).joinpath(*key_path) / partition

    def handle_output(self, context: dg.OutputContext, obj: dict[str, Any]) -> None:
        if not isinstance(obj, dict):
            raise TypeError(f"BatchIOManager stores dict[name, value], got {type(obj).__name__}")
        directory = self._dir(context)
        directory.mkdir(parents=True, exist_ok=True)
        written = set()
        for name, value in obj.items():
            image = value.micrograph if isinstance(value, Exposure) else value
            if isinstance(image, Micrograph):
                path = directory / f"{name}.mrc"
                write_mrc(path, image.data, image.pixel_size_angstrom)
                (directory / f"{name}.pkl").unlink(missing_ok=True)
                written.add(path.name)
            if isinstance(value, Exposure):
                images = ("micrograph", "dose_weighted")
                rest = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name not in images}
                _pickle(directory / f"{name}{EXPOSURE_SUFFIX}", rest)
                written.add(f"{name}{EXPOSURE_SUFFIX}")
                if value.dose_weighted is not None:
                    weighted = value.dose_weighted
                    write_mrc(directory / f"{name}{DOSE_WEIGHTED_SUFFIX}", weighted.data, weighted.pixel_size_angstrom)
                    written.add(f"{name}{DOSE_WEIGHTED_SUFFIX}")
            elif not isinstance(value, Micrograph):
                _pickle(directory / f"{name}.pkl", value)
                written.add(f"{name}.pkl")
        selective = bool(context.step_context.run_tags.get(SELECTION_TAG)) if context.has_asset_key else False
        if not selective:
            for stale in directory.iterdir():
                if stale.suffix in {".mrc", ".pkl"} and stale.name not in written:
                    stale.unlink()
        context.add_output_metadata({"path": dg.MetadataValue.path(str(directory)), "files": len(written)})

    def load_input(self, context: dg.InputContext) -> dict[str, Any]:
        directory = self._dir(context)
        result: dict[str, Any] = {}
        if not directory.is_dir():
            return result
        if context.definition_metadata.get(RECORDS_ONLY):
            return self._load_records(context, directory)
        for path in sorted(directory.iterdir()):
            if (
                path.name.startswith(".")
                or path.suffix not in {".mrc", ".pkl"}
                or path.name.endswith((EXPOSURE_SUFFIX, DOSE_WEIGHTED_SUFFIX))
            ):
                continue  # an Exposure's record and dose-weighted sum are read with its image
            try:
                if path.suffix == ".mrc":
                    image = read_micrograph(path)
                    rest = path.with_name(f"{path.stem}{EXPOSURE_SUFFIX}")
                    if rest.is_file():
                        weighted_path = path.with_name(f"{path.stem}{DOSE_WEIGHTED_SUFFIX}")
                        weighted = read_micrograph(weighted_path) if weighted_path.is_file() else None
                        if weighted is not None:
                            weighted = Micrograph(path.stem, weighted.data, weighted.pixel_size_angstrom)
                        with open(rest, "rb") as handle:
                            result[path.stem] = Exposure(
                                micrograph=image, dose_weighted=weighted, **pickle.load(handle)
                            )
                    else:
                        result[path.stem] = image
                else:
                    with open(path, "rb") as handle:
                        result[path.stem] = pickle.load(handle)
            except (InputFileError, OSError, pickle.UnpicklingError, EOFError) as exc:
                raise _unreadable(context, path, exc) from exc
        return result

    def _load_records(self, context: dg.InputContext, directory: Path) -> dict[str, Any]:
        """Each exposure's record without its images: ``{name: {field: value}}`` (module docstring)."""
        records: dict[str, Any] = {}
        for path in sorted(directory.glob(f"*{EXPOSURE_SUFFIX}")):
            try:
                with open(path, "rb") as handle:
                    records[path.name.removesuffix(EXPOSURE_SUFFIX)] = pickle.load(handle)
            except (OSError, pickle.UnpicklingError, EOFError) as exc:
                raise _unreadable(context, path, exc) from exc
        return records


def _unreadable(context: dg.InputContext, path: Path, exc: Exception) -> StoredOutputError:
    """The error of a stored output that cannot be read back, naming the step to rerun."""
    producer = "/".join(context.asset_key.path)
    return StoredOutputError(
        f"{producer} (partition {context.asset_partition_key if context.has_asset_partitions else '-'}) "
        f"stored {path.name}, which cannot be read back: {exc}. The step {producer} wrote it; rerun "
        "that step for the batch (the file was damaged or written by another version)"
    )


def _pickle(path: Path, value: Any) -> None:
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)


class StoredOutputError(RuntimeError):
    """A file the pipeline itself wrote cannot be read back (damaged storage, or another version's file)."""


class OutputStore(dg.ConfigurableResource):
    """Where the pipeline's files go (MRC outputs of ``BatchIOManager``, STAR files): ``root``."""

    root: str

    def asset_path(self, asset: str, batch: str, filename: str = "") -> Path:
        base = Path(self.root) / asset / batch
        return base / filename if filename else base

    def star_path(self, batch: str, filename: str) -> Path:
        return Path(self.root) / "star" / batch / filename

    def session_path(self, session: str, filename: str) -> Path:
        """``<root>/sessions/<session>/<filename>`` (folder created): files that span a session's batches."""
        folder = Path(self.root) / "sessions" / session
        folder.mkdir(parents=True, exist_ok=True)
        return folder / filename
