"""What every batch asset shares: the manifest, the micrograph selection, quarantine and per-micrograph steps."""

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import dagster as dg
import numpy as np

from cryodecon_assets.intake.batching import MANIFESTS, BatchManifest
from cryodecon_resources import ScoreWarehouse
from cryodecon_resources.io_manager import SELECTION_TAG
from cryodecon_science.io.errors import InputFileError

GROUP = "batch_pipeline"
T = TypeVar("T")


class ChangedSinceCutError(InputFileError):
    """The file's checksum no longer matches the batch manifest: it changed after the batch was cut."""

    reason = "changed_since_cut"


# ---- helpers shared by the assets -------------------------------------------------------------------
def load_manifest(warehouse: ScoreWarehouse, batch: str) -> BatchManifest:
    return BatchManifest.from_document(warehouse.read_document(MANIFESTS, batch))


def selection(context: dg.AssetExecutionContext) -> set[str] | None:
    """Micrographs selected by the run tag ``cryodecon/micrographs`` (None = the whole batch)."""
    raw = context.run.tags.get(SELECTION_TAG, "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    return names or None


def selected(context: dg.AssetExecutionContext, items: Mapping[str, T]) -> dict[str, T]:
    chosen = selection(context)
    return {k: v for k, v in sorted(items.items()) if chosen is None or k in chosen}


def quarantine(
    warehouse: ScoreWarehouse, batch: str, stage: str, rows: list[dict[str, Any]], chosen: set[str] | None
) -> None:
    """Replace this batch's quarantine rows for ``stage`` (file ``quarantine/<batch>.<stage>.parquet``)."""
    warehouse.write_rows("quarantine", f"{batch}.{stage}", rows, replace_micrographs=chosen)


SCIENCE_ERRORS = (ValueError, InputFileError, FloatingPointError, np.linalg.LinAlgError)
"""What a micrograph's own data can make a science step raise: the micrograph is quarantined, not the batch."""


class InvalidOutputError(ValueError):
    """A step produced an image no later step can use (NaN/Inf, or constant): quarantined at that step."""


def check_output(stage: str, name: str, result: Any) -> None:
    """Refuse an image result that is not finite or has no variation, naming the step that produced it."""
    data = getattr(result, "data", None)
    if not isinstance(data, np.ndarray) or data.size == 0:
        return
    if not np.all(np.isfinite(data)):
        raise InvalidOutputError(f"{stage} produced {int(data.size - np.isfinite(data).sum())} NaN/Inf pixels")
    if data.max() == data.min():
        raise InvalidOutputError(f"{stage} produced a constant image ({float(data.flat[0]):g} everywhere)")


def run_per_micrograph(
    context: dg.AssetExecutionContext,
    warehouse: ScoreWarehouse,
    stage: str,
    items: Mapping[str, Any],
    step: Callable[[str, Any], T] | None = None,
    batch_step: Callable[[Mapping[str, Any]], Mapping[str, T | Exception]] | None = None,
    outcomes: Mapping[str, T | Exception] | None = None,
    seconds: Mapping[str, float] | None = None,
) -> dict[str, T]:
    """Apply ``step`` to each micrograph; a failure of one micrograph quarantines it, not the batch.

    A science error (``SCIENCE_ERRORS``) or an unusable image result (``check_output``) quarantines the
    micrograph with its reason.  Any other exception of one micrograph is quarantined too (reason: its
    type, logged with the traceback), unless it struck every micrograph of a batch of several: then it is
    not the data but the step or the node (a lost GPU, a bug), and it is raised so the run fails and is
    retried or looked at, instead of quarantining a whole batch of good exposures.

    ``batch_step`` instead takes the whole selection at once and returns, per micrograph, its result or
    the science error it met (a GPU pipeline that overlaps one frame's copies with another's compute,
    ``denoiser.denoise_learned_many``); then each micrograph's time is the batch's wall time over the
    number of micrographs.  ``outcomes`` instead are the results already computed by a step over the batch
    that must see the micrographs in sequence (``causal.fit_session``), with each one's wall time in
    ``seconds``.  Each successful step's wall time goes to the warehouse table ``step_times`` (partition
    ``<batch>.<stage>``): staff see where time goes, and the cost model of ΔRepro calibrates on it.
    """
    if sum(given is not None for given in (step, batch_step, outcomes)) != 1:
        raise TypeError("give exactly one of step, batch_step and outcomes")
    batch = context.partition_key
    results: dict[str, T] = {}
    failures: list[dict[str, Any]] = []
    unexpected: list[Exception] = []
    times: list[dict[str, Any]] = []
    own_seconds: Mapping[str, float] = seconds or {}
    shared_seconds = 0.0
    if batch_step is not None and items:
        started = time.perf_counter()
        outcomes = batch_step(items)
        shared_seconds = (time.perf_counter() - started) / len(items)
    computed: Mapping[str, T | Exception] = outcomes or {}
    for name, item in items.items():
        started = time.perf_counter()
        try:
            if step is not None:
                result = step(name, item)
            else:
                outcome = computed[name]
                if isinstance(outcome, Exception):
                    raise outcome
                result = outcome
            check_output(stage, name, result)
            results[name] = result
        except SCIENCE_ERRORS as exc:
            context.log.warning(f"{stage}: {name} quarantined: {exc}")
            failures.append(quarantine_row(name, batch, stage, type(exc).__name__, str(exc)))
            continue
        except Exception as exc:
            context.log.exception(f"{stage}: {name} quarantined after an unexpected {type(exc).__name__}")
            failures.append(quarantine_row(name, batch, stage, type(exc).__name__, f"{exc!r} (unexpected)"))
            unexpected.append(exc)
            continue
        data = getattr(item, "data", None)
        times.append(
            {
                "micrograph": name,
                "batch": batch,
                "stage": stage,
                "seconds": time.perf_counter() - started if step is not None else own_seconds.get(name, shared_seconds),
                "n_pixels": int(data.size) if data is not None else None,
                "run_id": context.run.run_id,
            }
        )
    if len(items) > 1 and len(unexpected) == len(items):
        raise unexpected[0]
    quarantine(warehouse, batch, stage, failures, selection(context))
    warehouse.write_rows("step_times", f"{batch}.{stage}", times, replace_micrographs=selection(context))
    return results


def quarantine_row(
    micrograph: str, batch: str, stage: str, reason: str, detail: str, relative_path: str = ""
) -> dict[str, Any]:
    return {
        "micrograph": micrograph,
        "batch": batch,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "relative_path": relative_path,
        "recorded_at": time.time(),
    }


def warning_check(check_name: str, passed: bool, **metadata: Any) -> dg.AssetCheckResult:
    """An asset check result of severity WARN: a failure is shown, downstream assets still run."""
    return dg.AssetCheckResult(
        check_name=check_name, passed=passed, severity=dg.AssetCheckSeverity.WARN, metadata=metadata
    )
