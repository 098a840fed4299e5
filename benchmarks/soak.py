"""Soak of the live path: a fake EPU session lands on storage while ``dagster dev`` runs on PostgreSQL.

Run from the repository root (PostgreSQL reachable, trust or password in the URL)::

    .venv/bin/python benchmarks/soak.py                       # 64 exposures over 240 s, 512², session 'Krios1.grid 2'
    .venv/bin/python benchmarks/soak.py --exposures 12 --land-seconds 60 --size 256 --session Krios1-grid2
    .venv/bin/python benchmarks/soak.py --report benchmarks/results/soak.md --keep

What it does, as a new user would: a fresh working folder (``--workdir``, default a temporary one) with a
``DAGSTER_HOME`` whose ``dagster.yaml`` is the repository's plus the ``storage: postgres:`` block, a
fresh database ``cryodecon_soak_<timestamp>`` on the server (dropped at the end unless ``--keep``), the
citation graph and reference library seeded as ``cryodecon demo`` seeds them, then
``dagster dev -w workspace.yaml`` in its own process group.  A writer thread lands an EPU session
(``<session>/Images-Disc1/GridSquare_<id>/Data/FoilHole_<id>_Data_<id>_<id>_<date>_<time>.mrc``) the way
transfer tools do (hidden ``.name.part`` then rename, or slow in-place chunks), mixing in truncated,
zero-byte, corrupt-header, NaN, preallocated (valid header, zero data) files and byte-identical
duplicates; every file's landing time goes to ``<workdir>/landed.jsonl``.  While batches run, one run
worker (the process the event log names in "Started process for run (pid: N)") is killed with SIGKILL
while it holds the ``gpu`` pool slot.  Then the soak waits, without touching anything, until every good
exposure has a HyperScore (bounded by ``--timeout-seconds``).

What it measures (Markdown on stdout and in ``--report``, raw numbers in the JSON beside it): good
exposures scored exactly once / double counted / lost; the quarantine reason of every bad file; how each
duplicate was recorded; the killed run's final status, when it was marked failed, how long the ``gpu``
slot stayed held (kill -> the next ``gpu``-pool step of another run finishing), the retry run (tags
``dagster/parent_run_id``) and its wall time; latency from landing to HyperScore (median, p95) split into
landed -> batch cut -> run start -> HyperScore materialised, and the median time of each step.

Exit status: 0 when every good exposure is scored exactly once, every bad file is accounted for and the
killed run was recovered with no manual step; 1 when a check fails (each failure is printed); 2 when the
harness itself could not run (no database, ``dagster dev`` did not come up).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

PROCESS_JOB = "process_batch"
HYPERSCORES = "hyperscores"
# Steps of process_batch in the `gpu` pool (read from the asset definitions when they import).
DEFAULT_GPU_STEPS = (
    "ctf_estimates",
    "restored_micrographs",
    "deconvolved_micrographs",
    "session_denoiser",
    "learned_denoised_micrographs",
    "fused_denoised_micrographs",
)
GOOD = "good"
PID_MESSAGE = re.compile(r"Started process for run \(pid: (\d+)\)")


def log(message: str) -> None:
    """Progress on stderr (stdout carries the report)."""
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[soak {stamp}] {message}", file=sys.stderr, flush=True)


class HarnessError(RuntimeError):
    """The soak could not be set up or observed (exit status 2), as opposed to a failed check."""


# ---- arguments ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="working folder (default: a new temporary folder)")
    parser.add_argument("--report", default=None, help="Markdown report path (default <workdir>/soak.md)")
    parser.add_argument("--json", default=None, help="raw numbers (default: the report path with .json)")
    parser.add_argument("--session", default="Krios1.grid 2", help="session folder name (EPU allows dots, spaces)")
    parser.add_argument("--exposures", type=int, default=64, help="good exposures")
    parser.add_argument("--land-seconds", type=float, default=240.0, help="landing spread over this long")
    parser.add_argument("--size", type=int, default=512, help="micrograph edge, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer-seconds", type=float, default=4.0, help="time one file takes to copy")
    parser.add_argument("--truncated", type=int, default=2, help="copies that stop halfway")
    parser.add_argument("--zero-byte", type=int, default=1)
    parser.add_argument("--corrupt", type=int, default=2, help="random bytes instead of a header")
    parser.add_argument("--nan", type=int, default=1, help="valid header, NaN pixels")
    parser.add_argument("--duplicates", type=int, default=2, help="byte-identical copies under new names")
    parser.add_argument("--preallocated", type=int, default=1, help="full size, valid header, zero data")
    parser.add_argument("--settle-seconds", type=float, default=30.0, help="CRYODECON_SETTLE_SECONDS")
    parser.add_argument("--batch-window-seconds", type=float, default=60.0, help="CRYODECON_BATCH_WINDOW_SECONDS")
    parser.add_argument("--max-batch-size", type=int, default=10, help="CRYODECON_MAX_BATCH_SIZE")
    parser.add_argument("--timeout-seconds", type=float, default=1800.0, help="bound on the whole soak")
    parser.add_argument("--startup-seconds", type=float, default=300.0, help="bound on dagster dev coming up")
    parser.add_argument("--grace-seconds", type=float, default=45.0, help="watch this long after completion")
    parser.add_argument("--stop-grace-seconds", type=float, default=20.0, help="SIGTERM -> SIGKILL of dagster dev")
    parser.add_argument("--no-kill", action="store_true", help="do not kill a run worker")
    parser.add_argument(
        "--kill-at-step",
        default="ctf_estimates",
        help="kill the run worker while this step runs (if it was missed: while any gpu-pool step runs)",
    )
    parser.add_argument("--kill-after-runs", type=int, default=0, help="let this many runs start unharmed first")
    parser.add_argument("--kill-delay-seconds", type=float, default=0.5, help="into the step before the kill")
    parser.add_argument(
        "--accept-scored-duplicates",
        action="store_true",
        help="count a duplicate scored as its own exposure as accounted for (default: it must be quarantined)",
    )
    parser.add_argument(
        "--postgres-server",
        default=os.environ.get("CRYODECON_SOAK_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="server URL without database; a fresh database is created on it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database (the workdir is always kept)")
    parser.add_argument(
        "--celery-workers",
        type=int,
        default=0,
        help="run the steps on this many Celery workers (CRYODECON_EXECUTOR=celery; 0: in the run worker)",
    )
    parser.add_argument("--celery-broker", default="pyamqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--celery-backend", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--max-concurrent-runs", type=int, default=None, help="default: dagster.yaml's")
    parser.add_argument(
        "--fault",
        choices=("run-worker", "celery-worker", "rabbitmq", "postgres", "none"),
        default="run-worker",
        help="what fails while --kill-at-step runs: SIGKILL to the run worker or to the Celery worker executing "
        "the step, a RabbitMQ stop/start, or PostgreSQL stopped for --fault-seconds (none = --no-kill)",
    )
    parser.add_argument(
        "--accept-step-quarantine",
        action="store_true",
        help="a good exposure a batch step quarantined with its reason counts as accounted, not lost (reported "
        "apart; for throughput runs on micrographs small enough that a step may find nothing to work on)",
    )
    parser.add_argument("--fault-seconds", type=float, default=30.0, help="how long RabbitMQ/PostgreSQL stay down")
    parser.add_argument(
        "--worker-restart-seconds", type=float, default=15.0, help="a killed Celery worker is replaced after this"
    )
    return parser


# ---- PostgreSQL -----------------------------------------------------------------------------------------
def _pg_connect(server_url: str, database: str) -> Any:
    import psycopg2

    parsed = urllib.parse.urlparse(server_url)
    connection = psycopg2.connect(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        user=urllib.parse.unquote(parsed.username or "postgres"),
        password=urllib.parse.unquote(parsed.password) if parsed.password else None,
        dbname=database,
        connect_timeout=10,
    )
    connection.autocommit = True
    return connection


def create_database(server_url: str, name: str) -> str:
    """Create database ``name``; return its URL."""
    connection = _pg_connect(server_url, "postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return f"{server_url.rstrip('/')}/{name}"


def drop_database(server_url: str, name: str) -> None:
    """Drop ``name`` after closing the connections our processes left open to it."""
    connection = _pg_connect(server_url, "postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        connection.close()


# ---- setup ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    workdir: Path
    dagster_home: Path
    home: Path
    storage: Path
    warehouse: Path
    outputs: Path
    library: Path
    citations: Path
    staging: Path
    landed: Path
    dagster_log: Path

    @classmethod
    def under(cls, workdir: Path) -> Layout:
        home = workdir / "home"
        return cls(
            workdir=workdir,
            dagster_home=workdir / "dagster_home",
            home=home,
            storage=workdir / "storage",
            warehouse=home / "warehouse",
            outputs=home / "outputs",
            library=home / "library",
            citations=home / "citations",
            staging=workdir / "staging",
            landed=workdir / "landed.jsonl",
            dagster_log=workdir / "dagster-dev.log",
        )

    def create(self) -> None:
        for folder in (self.dagster_home, self.home, self.storage, self.warehouse, self.outputs, self.staging):
            folder.mkdir(parents=True, exist_ok=True)


def write_instance_yaml(dagster_home: Path, max_concurrent_runs: int | None = None) -> Path:
    """``$DAGSTER_HOME/dagster.yaml`` = the repository's file + the PostgreSQL storage block."""
    text = (REPO / "dagster.yaml").read_text()
    if max_concurrent_runs is not None:
        text, n = re.subn(r"max_concurrent_runs: \d+", f"max_concurrent_runs: {max_concurrent_runs}", text)
        if n != 1:
            raise HarnessError("dagster.yaml has no single max_concurrent_runs to override")
    text = text.rstrip("\n") + "\n\nstorage:\n  postgres:\n    postgres_url:\n      env: CRYODECON_POSTGRES_URL\n"
    target = dagster_home / "dagster.yaml"
    target.write_text(text)
    return target


def soak_environment(layout: Layout, args: argparse.Namespace, postgres_url: str) -> dict[str, str]:
    """The variables ``cryodecon_resources.resources_from_environment`` and the instance read."""
    return {
        "DAGSTER_HOME": str(layout.dagster_home),
        "CRYODECON_POSTGRES_URL": postgres_url,
        "CRYODECON_HOME": str(layout.home),
        "CRYODECON_STORAGE_ROOT": str(layout.storage),
        "CRYODECON_WAREHOUSE_ROOT": str(layout.warehouse),
        "CRYODECON_OUTPUT_ROOT": str(layout.outputs),
        "CRYODECON_LIBRARY_URI": str(layout.library),
        "CRYODECON_CITATION_GRAPH": str(layout.citations),
        "CRYODECON_SETTLE_SECONDS": f"{args.settle_seconds:g}",
        "CRYODECON_BATCH_WINDOW_SECONDS": f"{args.batch_window_seconds:g}",
        "CRYODECON_MAX_BATCH_SIZE": str(args.max_batch_size),
    }


def seed_reference_data(size: int, seed: int) -> None:
    """The citation graph and reference library, as ``cryodecon demo`` seeds them (paths from the env)."""
    from cryodecon_assets.cli.synthetic_references import (
        ensure_citation_graph,
        ensure_reference_library,
        established_papers,
    )
    from cryodecon_resources import resources_from_environment
    from cryodecon_science.io.citations import read_citation_graph
    from cryodecon_science.simulate import SimulationConfig

    resources = resources_from_environment()
    config = SimulationConfig(shape_px=(size, size))
    graph_folder = ensure_citation_graph(Path(resources["scoring"].citation_graph_path), seed=seed)  # type: ignore[attr-defined]
    papers = established_papers(read_citation_graph(graph_folder))
    added = ensure_reference_library(
        resources["structure_library"],  # type: ignore[arg-type]
        config,
        seed=seed,
        papers=papers,
        class_library=resources["class_library"],  # type: ignore[arg-type]
    )
    log(f"citation graph in {graph_folder}; reference library seeded with {added} projections")


def gpu_pool_steps() -> tuple[str, ...]:
    """Step keys of process_batch whose op is in the ``gpu`` pool."""
    try:
        from cryodecon_assets.batch import BATCH_ASSETS
        from cryodecon_assets.execution import GPU_POOL

        steps = tuple(a.op.name for a in BATCH_ASSETS if a.op.pool == GPU_POOL)
        return steps or DEFAULT_GPU_STEPS
    except Exception as exc:  # the soak still runs on the known list
        log(f"could not read pools from the asset definitions ({exc}); using {DEFAULT_GPU_STEPS}")
        return DEFAULT_GPU_STEPS


# ---- the landing plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedFile:
    """One file the fake EPU writer lands: where, what, when (seconds after landing starts) and how."""

    index: int
    kind: str
    relative_path: str  # relative to the storage root, session folder first
    at_s: float
    mode: str  # part_rename | inplace_chunks | truncate_halfway | empty
    source: str  # staged bytes ("" for an empty file)
    duplicate_of: str = ""  # exposure name of the original

    @property
    def name(self) -> str:
        from cryodecon_science.io.session import exposure_name

        return exposure_name(self.relative_path)


def epu_relative_path(session: str, index: int, stamp: dt.datetime) -> str:
    grid_square = 1000 + index // 12
    foil_hole = 4_000_000 + 37 * index
    data = 5_000_000 + 11 * index
    name = f"FoilHole_{foil_hole}_Data_{data}_{data + 3}_{stamp:%Y%m%d_%H%M%S}.mrc"
    return f"{session}/Images-Disc1/GridSquare_{grid_square}/Data/{name}"


def plan_landing(args: argparse.Namespace, staging: Path) -> list[PlannedFile]:
    """Landing offsets and modes; sources are filled by ``stage_files`` under ``staging``."""
    rng = np.random.default_rng(args.seed + 1)
    land = max(float(args.land_seconds), 1.0)
    n_good = int(args.exposures)
    base = dt.datetime.now().replace(microsecond=0)
    entries: list[tuple[str, float, str, str]] = []  # kind, at, mode, source
    spacing = land / max(n_good, 1)
    good_at = [min(land, i * spacing + float(rng.uniform(0, 0.3 * spacing))) for i in range(n_good)]
    for i, at in enumerate(good_at):
        entries.append((GOOD, at, "part_rename" if i % 2 == 0 else "inplace_chunks", f"good_{i:04d}.mrc"))
    # Files only the sensor's truncated_after_seconds (600 s) can settle land early, so that the soak's
    # length is the landing plus that timeout, not more.
    n_early = args.truncated + args.zero_byte + args.preallocated
    early = iter(float(x) for x in np.linspace(0.02, 0.12, n_early + 2)[1:-1] * land)
    for j in range(args.truncated):
        entries.append(("truncated", next(early), "truncate_halfway", f"truncated_{j:02d}.mrc"))
    for _ in range(args.zero_byte):
        entries.append(("zero_byte", next(early), "empty", ""))
    for _ in range(args.preallocated):
        entries.append(("preallocated", next(early), "part_rename", "preallocated.mrc"))
    for j in range(args.corrupt):
        entries.append(
            ("corrupt_header", float(rng.uniform(0.1, 0.9)) * land, "inplace_chunks", f"corrupt_{j:02d}.mrc")
        )
    for _ in range(args.nan):
        entries.append(("nan", float(rng.uniform(0.1, 0.9)) * land, "part_rename", "nan.mrc"))
    for _ in range(args.duplicates):
        original = int(rng.integers(0, max(1, n_good // 2)))
        at = min(land, good_at[original] + args.transfer_seconds + float(rng.uniform(0.2, 0.4)) * land)
        entries.append(("duplicate", at, "part_rename", f"good_{original:04d}.mrc"))
    entries.sort(key=lambda e: e[1])
    plan: list[PlannedFile] = []
    good_names: dict[str, str] = {}
    for index, (kind, at, mode, source) in enumerate(entries):
        stamp = base + dt.timedelta(seconds=round(at) + index)
        relative = epu_relative_path(args.session, index, stamp)
        item = PlannedFile(index, kind, relative, at, mode, str(staging / source) if source else "")
        if kind == GOOD:
            good_names[source] = item.name
        plan.append(item)
    # Duplicates land after their original (ensured by ``at``); name the original.
    return [
        PlannedFile(p.index, p.kind, p.relative_path, p.at_s, p.mode, p.source, good_names[Path(p.source).name])
        if p.kind == "duplicate"
        else p
        for p in plan
    ]


def stage_files(args: argparse.Namespace, staging: Path) -> None:
    """Write every source file under ``staging`` (simulated micrographs with the project's simulator)."""
    from cryodecon_science.io.mrc import write_mrc
    from cryodecon_science.simulate import SimulationConfig, simulate_session

    config = SimulationConfig(shape_px=(args.size, args.size))
    n_simulated = args.exposures + args.truncated
    chunk = 4  # bounds memory at 4096² (each simulated exposure keeps its clean and potential images)
    pixel = config.pixel_size_angstrom
    written = 0
    for start in range(0, n_simulated, chunk):
        count = min(chunk, n_simulated - start)
        session = simulate_session(config, "soak", count, 0, args.seed * 100_003 + start)
        pixel = session.microscope.pixel_size_angstrom
        for micrograph in session.micrographs:
            index = written
            name = f"good_{index:04d}.mrc" if index < args.exposures else f"truncated_{index - args.exposures:02d}.mrc"
            write_mrc(staging / name, np.ascontiguousarray(micrograph.counts, dtype=np.float32), pixel)
            written += 1
    shape = (args.size, args.size)
    with warnings.catch_warnings():  # mrcfile warns about the NaN values this file is meant to hold
        warnings.simplefilter("ignore", RuntimeWarning)
        write_mrc(staging / "nan.mrc", np.full(shape, np.nan, dtype=np.float32), pixel)
    write_mrc(staging / "preallocated.mrc", np.zeros(shape, dtype=np.float32), pixel)
    size = (staging / "good_0000.mrc").stat().st_size if args.exposures else 1024 + 4 * args.size**2
    rng = np.random.default_rng(args.seed + 2)
    for j in range(args.corrupt):
        (staging / f"corrupt_{j:02d}.mrc").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    log(f"staged {written} simulated micrographs ({args.size}², {pixel} Å/px) and the bad files in {staging}")


# ---- the fake EPU writer --------------------------------------------------------------------------------
class EpuWriter(threading.Thread):
    """Lands the planned files on schedule, each in its own transfer thread; appends to landed.jsonl."""

    def __init__(self, plan: Sequence[PlannedFile], storage: Path, landed: Path, transfer_seconds: float) -> None:
        super().__init__(name="epu-writer", daemon=True)
        self.plan = list(plan)
        self.storage = storage
        self.landed_path = landed
        self.transfer_seconds = transfer_seconds
        self.stop_event = threading.Event()
        self.started_at = 0.0
        self.records: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._transfers: list[threading.Thread] = []

    @property
    def finished(self) -> bool:
        return not self.is_alive() and all(not t.is_alive() for t in self._transfers)

    def run(self) -> None:
        self.started_at = time.time()
        for item in self.plan:
            wait = self.started_at + item.at_s - time.time()
            if wait > 0 and self.stop_event.wait(wait):
                return
            thread = threading.Thread(target=self._transfer_logged, args=(item,), name=f"transfer-{item.index}")
            thread.daemon = True
            thread.start()
            self._transfers.append(thread)
        for thread in self._transfers:
            thread.join()

    def _transfer_logged(self, item: PlannedFile) -> None:
        try:
            record = self._transfer(item)
        except Exception as exc:  # a harness failure: reported, the soak goes on
            self.errors.append(f"{item.relative_path}: {exc!r}")
            return
        with self._lock:
            self.records.append(record)
            with self.landed_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _sleep(self, seconds: float) -> None:
        self.stop_event.wait(max(0.0, seconds))

    def _transfer(self, item: PlannedFile) -> dict[str, Any]:
        target = self.storage / item.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        content = Path(item.source).read_bytes() if item.source else b""
        started = time.time()
        chunks = 8
        if item.mode == "empty":
            target.touch()
            written = b""
        elif item.mode == "part_rename":
            part = target.with_name(f".{target.name}.part")
            with part.open("wb") as handle:
                for piece in _pieces(content, chunks):
                    handle.write(piece)
                    handle.flush()
                    self._sleep(self.transfer_seconds / chunks)
                os.fsync(handle.fileno())
            os.replace(part, target)
            written = content
        else:  # in place, visible while it grows; truncate_halfway stops at half and never completes
            limit = len(content) // 2 if item.mode == "truncate_halfway" else len(content)
            written = content[:limit]
            with target.open("wb") as handle:
                for piece in _pieces(written, chunks if item.mode == "inplace_chunks" else chunks // 2):
                    handle.write(piece)
                    handle.flush()
                    self._sleep(self.transfer_seconds / chunks)
                os.fsync(handle.fileno())
        landed = time.time()
        return {
            "name": item.name,
            "relative_path": item.relative_path,
            "kind": item.kind,
            "mode": item.mode,
            "duplicate_of": item.duplicate_of,
            "planned_at_s": item.at_s,
            "started_s": started,
            "landed_s": landed,
            "bytes": len(written),
            "full_bytes": len(content),
            "sha256": hashlib.sha256(written).hexdigest(),
        }


def _pieces(content: bytes, chunks: int) -> Iterator[bytes]:
    step = max(1, math.ceil(len(content) / max(chunks, 1)))
    for offset in range(0, len(content), step):
        yield content[offset : offset + step]


# ---- dagster dev ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_processes(session_id: int) -> list[int]:
    """Process ids in the given session (the processes ``dagster dev`` started), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == session_id:
            found.append(int(entry.name))
    return found


def process_session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[3]) if len(fields) > 3 else None


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class DagsterDev:
    """``dagster dev`` in its own session and process group, logging to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            str(REPO / ".venv" / "bin" / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        log(f"dagster dev pid {self.process.pid} on http://127.0.0.1:{self.port} (log {self.log_path})")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, instance: Any, deadline: float) -> None:
        """Until the webserver answers and the sensor daemon has a heartbeat (bounded by ``deadline``)."""
        url = f"http://127.0.0.1:{self.port}/server_info"
        web_ok = daemon_ok = False
        while time.time() < deadline:
            if not self.alive():
                raise HarnessError(f"dagster dev exited with status {self.process.returncode if self.process else '?'}")
            if not web_ok:
                with contextlib.suppress(urllib.error.URLError, OSError, TimeoutError):
                    with urllib.request.urlopen(url, timeout=3) as response:
                        web_ok = response.status == 200
            if web_ok and not daemon_ok:
                with contextlib.suppress(Exception):
                    daemon_ok = "SENSOR" in instance.get_daemon_heartbeats()
            if web_ok and daemon_ok:
                return
            time.sleep(2)
        raise HarnessError(f"dagster dev not ready in time (webserver {web_ok}, sensor daemon {daemon_ok})")

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period, then any straggler of the session."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            log("dagster dev ignored SIGTERM; SIGKILL to its process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for pid in session_processes(pgid):  # children that left the process group but not the session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# ---- the instance, read-only ----------------------------------------------------------------------------
def process_runs(instance: Any) -> list[Any]:
    import dagster as dg

    records = instance.get_run_records(filters=dg.RunsFilter(job_name=PROCESS_JOB), ascending=True)
    return list(records)


def run_events(instance: Any, run_id: str, types: set[Any] | None = None) -> list[Any]:
    return list(instance.all_logs(run_id, of_type=types) if types else instance.all_logs(run_id))


def event_type(entry: Any) -> str:
    """The event's ``DagsterEventType`` name (``RUN_FAILURE``; its stored value is ``PIPELINE_FAILURE``)."""
    return entry.dagster_event.event_type.name if entry.dagster_event is not None else ""


def worker_pid(instance: Any, run_id: str, dagster_session: int) -> tuple[int | None, str]:
    """The run worker's pid: from the engine event "Started process for run (pid: N)", else /proc."""
    import dagster as dg

    for entry in run_events(instance, run_id, {dg.DagsterEventType.ENGINE_EVENT}):
        pid: int | None = None
        with contextlib.suppress(Exception):
            value = entry.dagster_event.engine_event_data.metadata.get("pid")
            if value is not None:
                pid = int(getattr(value, "value", getattr(value, "text", value)))
        if pid is None:
            match = PID_MESSAGE.search(entry.message or "")
            pid = int(match.group(1)) if match else None
        if pid is not None and process_session(pid) == dagster_session:
            return pid, "event log (Started process for run)"
    for pid in session_processes(dagster_session):
        if run_id in process_cmdline(pid):
            return pid, "/proc cmdline holds the run id"
    return None, ""


@dataclass
class KillRecord:
    run_id: str
    partition: str
    pid: int
    pid_source: str
    cmdline: str
    killed_at_s: float
    steps_in_flight: list[str]
    gpu_slots_before: list[dict[str, str]]


class RunKiller:
    """Kills one run worker with SIGKILL while it is in ``kill_step`` (or, if missed, any gpu-pool step)."""

    def __init__(
        self, kill_step: str, gpu_steps: Sequence[str], skip_runs: int, delay_s: float, dagster_session: int
    ) -> None:
        self.kill_step = kill_step
        self.gpu_steps = set(gpu_steps)
        self.skip_runs = skip_runs
        self.delay_s = delay_s
        self.dagster_session = dagster_session
        self.seen_started: list[str] = []
        self.record: KillRecord | None = None
        self.problem = ""

    def poll(self, instance: Any) -> None:
        import dagster as dg

        if self.record is not None:
            return
        started = [r for r in process_runs(instance) if r.dagster_run.status == dg.DagsterRunStatus.STARTED]
        for run in started:
            if run.dagster_run.run_id not in self.seen_started:
                self.seen_started.append(run.dagster_run.run_id)
        eligible = set(self.seen_started[self.skip_runs :])
        types = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
        now = time.time()
        for run in started:
            run_id = run.dagster_run.run_id
            if run_id not in eligible:
                continue
            starts: dict[str, float] = {}
            ended: set[str] = set()
            for entry in run_events(instance, run_id, types):
                if event_type(entry) == "STEP_START":
                    starts[entry.step_key] = entry.timestamp
                else:
                    ended.add(entry.step_key)
            in_flight = {k: t for k, t in starts.items() if k not in ended}
            wanted = [k for k in in_flight if k == self.kill_step]
            if not wanted and self.kill_step in ended:
                wanted = [k for k in in_flight if k in self.gpu_steps]
            ripe = [k for k in wanted if now - in_flight[k] >= self.delay_s]
            if ripe:
                self._kill(instance, run, sorted(in_flight))
                return

    def _kill(self, instance: Any, run: Any, in_flight: list[str]) -> None:
        run_id = run.dagster_run.run_id
        pid, source = worker_pid(instance, run_id, self.dagster_session)
        if pid is None:
            self.problem = f"run {run_id}: no run-worker process found"
            return
        cmdline = process_cmdline(pid)
        slots = gpu_slots(instance)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        self.record = KillRecord(
            run_id,
            run.dagster_run.tags.get("dagster/partition", ""),
            pid,
            source,
            cmdline[:300],
            killed_at,
            in_flight,
            slots["claimed"],
        )
        log(f"SIGKILL run worker pid {pid} of run {run_id} ({self.record.partition}) during {', '.join(in_flight)}")


# ---- Celery workers, and the faults beside a run worker's death ----------------------------------------
class CeleryWorkers:
    """N Celery workers (``cryodecon workers``' commands), each on the ``dagster`` and ``gpu`` queues, one step
    at a time; a killed one is replaced after a delay, as a service manager with ``Restart=always`` would."""

    def __init__(self, n: int, env: Mapping[str, str], log_dir: Path) -> None:
        from cryodecon_assets.execution import CPU_QUEUE, GPU_QUEUE

        self.config = REPO / "deploy" / "celery" / "celery.yaml"
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.queues = (CPU_QUEUE, GPU_QUEUE)
        self.names = [f"w{i + 1}" for i in range(n)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str) -> None:
        from cryodecon_assets.cli.workers import WorkerSpec, start_worker

        spec = WorkerSpec(name, self.queues, 1, "")
        self.processes[name] = start_worker(spec, self.config, self.env, self.log_dir / f"celery_{name}.log")

    def start(self, timeout_s: float) -> None:
        from cryodecon_assets.cli.workers import purge_queues, wait_until_ready

        purge_queues(self.env["CRYODECON_CELERY_BROKER"], self.queues)  # steps left by an earlier soak
        for name in self.names:
            self._start(name)
        wait_until_ready(self.config, self.names, timeout_s, self.processes)
        log(f"{len(self.names)} Celery workers ready: {', '.join(self.names)}")

    def kill(self, name: str, restart_after_s: float) -> int:
        from cryodecon_assets.cli.workers import stop_worker

        process = self.processes[name]
        stop_worker(process, signal.SIGKILL, grace_seconds=5)
        timer = threading.Timer(restart_after_s, self._start, args=(name,))
        timer.daemon = True
        timer.start()
        return process.pid

    def stop(self) -> None:
        from cryodecon_assets.cli.workers import stop_worker

        for process in self.processes.values():
            stop_worker(process)


def celery_worker_of_step(instance: Any, run_id: str, step: str) -> str | None:
    """The Celery worker (name before '@') that last reported executing ``step`` for the run."""
    workers = step_executions(instance, run_id).get(step)
    return workers[-1] if workers else None


def step_executions(instance: Any, run_id: str) -> dict[str, list[str]]:
    """Step -> the Celery workers it was executed on, in order (a redelivered step appears twice)."""
    import dagster as dg

    executed: dict[str, list[str]] = defaultdict(list)
    for entry in run_events(instance, run_id, {dg.DagsterEventType.ENGINE_EVENT}):
        event = entry.dagster_event
        if entry.step_key and "Executing steps" in (event.message or ""):
            worker = event.engine_event_data.metadata.get("Celery worker")
            executed[entry.step_key].append(str(worker.value).split("@")[0] if worker is not None else "?")
    return dict(executed)


def _service(command: Sequence[str]) -> dict[str, Any]:
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=120, check=False)
    log(f"{' '.join(command)}: rc {done.returncode}")
    return {"command": " ".join(command), "rc": done.returncode, "at_s": time.time(), "output": done.stdout[-300:]}


def postgres_cluster() -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster (Debian's pg_lsclusters)."""
    line = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    version, name = line.split()[:2]
    return version, name


class FaultInjector(RunKiller):
    """While ``kill_step`` runs: SIGKILL the Celery worker executing it, or take RabbitMQ or PostgreSQL down
    for ``fault_seconds`` (in a thread; the soak goes on watching)."""

    def __init__(
        self, kind: str, workers: CeleryWorkers | None, fault_seconds: float, restart_s: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.workers = workers
        self.fault_seconds = fault_seconds
        self.restart_s = restart_s
        self.fault: dict[str, Any] = {}
        self.thread: threading.Thread | None = None

    def _kill(self, instance: Any, run: Any, in_flight: list[str]) -> None:
        run_id = run.dagster_run.run_id
        step = self.kill_step if self.kill_step in in_flight else in_flight[0]
        self.fault = {
            "kind": self.kind,
            "run_id": run_id,
            "partition": run.dagster_run.tags.get("dagster/partition", ""),
            "step": step,
            "steps_in_flight": in_flight,
            "actions": [],
        }
        pid = 0
        if self.kind == "celery-worker":
            assert self.workers is not None
            name = celery_worker_of_step(instance, run_id, step)
            if name is None or name not in self.workers.processes:
                return  # the task is not on a worker yet: next poll
            pid = self.workers.kill(name, self.restart_s)
            self.fault.update(worker=name, pid=pid, restarted_after_s=self.restart_s)
            self.fault["actions"].append({"command": f"SIGKILL process group {pid} ({name})", "at_s": time.time()})
            log(f"SIGKILL Celery worker {name} (pid {pid}) during {step} of {run_id}")
        else:
            if self.kind == "rabbitmq":
                down, up = ["rabbitmqctl", "stop_app"], ["rabbitmqctl", "start_app"]
            else:
                version, cluster = postgres_cluster()
                down = ["pg_ctlcluster", version, cluster, "stop", "-m", "fast"]
                up = ["pg_ctlcluster", version, cluster, "start"]

            def outage() -> None:
                self.fault["actions"].append(_service(down))
                time.sleep(self.fault_seconds)
                self.fault["actions"].append(_service(up))

            self.thread = threading.Thread(target=outage, daemon=False)
            self.thread.start()
        self.fault["at_s"] = time.time()
        self.record = KillRecord(run_id, self.fault["partition"], pid, self.kind, "", time.time(), in_flight, [])


def gpu_slots(instance: Any, pool: str = "gpu") -> dict[str, Any]:
    try:
        info = instance.event_log_storage.get_concurrency_info(pool)
    except Exception as exc:
        return {"error": repr(exc), "claimed": [], "pending": []}
    return {
        "limit": info.limit,
        "slot_count": info.slot_count,
        "claimed": [{"run_id": s.run_id, "step_key": s.step_key} for s in info.claimed_slots],
        "pending": [
            {"run_id": s.run_id, "step_key": s.step_key, "assigned": s.assigned_timestamp is not None}
            for s in info.pending_steps
        ],
    }


def hyperscore_materializations(instance: Any) -> dict[str, list[tuple[float, str]]]:
    """Partition -> [(timestamp, run id)] of every ``hyperscores`` materialization, oldest first."""
    import dagster as dg

    result: dict[str, list[tuple[float, str]]] = defaultdict(list)
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(HYPERSCORES)), limit=500, cursor=cursor, ascending=True
        )
        for record in page.records:
            if record.partition_key:
                result[record.partition_key].append((record.timestamp, record.run_id))
        if not page.has_more:
            return dict(result)
        cursor = page.cursor


# ---- the warehouse --------------------------------------------------------------------------------------
@dataclass
class WarehouseView:
    scored: dict[str, list[str]]  # exposure name -> batches of its hyperscores rows
    quarantine: list[dict[str, Any]]
    manifests: dict[str, dict[str, Any]]  # batch -> manifest document
    sha256: dict[str, str]  # exposure name -> checksum recorded in `micrographs`


def read_warehouse(root: Path) -> WarehouseView:
    from cryodecon_assets.intake.batching import MANIFESTS
    from cryodecon_resources.warehouse import ScoreWarehouse

    warehouse = ScoreWarehouse(root=str(root))
    scored: dict[str, list[str]] = defaultdict(list)
    rows = warehouse.read_rows(HYPERSCORES)
    if not rows.empty:
        for name, batch in zip(rows["micrograph"], rows["batch"], strict=True):
            scored[str(name)].append(str(batch))
    quarantine = warehouse.read_rows("quarantine")
    q_rows = [] if quarantine.empty else quarantine.to_dict("records")
    manifests = {key: warehouse.read_document(MANIFESTS, key) for key in warehouse.list_documents(MANIFESTS)}
    micrographs = warehouse.read_rows("micrographs")
    sha = {} if micrographs.empty else dict(zip(micrographs["micrograph"], micrographs["sha256"], strict=True))
    return WarehouseView(dict(scored), q_rows, manifests, {str(k): str(v) for k, v in sha.items()})


def quarantine_for(view: WarehouseView, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        q
        for q in view.quarantine
        if (q.get("relative_path") and q.get("relative_path") == record["relative_path"])
        or (not q.get("relative_path") and q.get("micrograph") == record["name"])
    ]


def accounted(view: WarehouseView, record: Mapping[str, Any], accept_scored_duplicates: bool) -> bool:
    if record["kind"] == "duplicate" and accept_scored_duplicates:
        scored_once = len(view.scored.get(record["name"], [])) == 1
        return bool(quarantine_for(view, record)) or scored_once
    return bool(quarantine_for(view, record)) and record["name"] not in view.scored


@dataclass
class Progress:
    good_landed: int = 0
    good_scored: int = 0
    bad_landed: int = 0
    bad_accounted: int = 0
    good_step_quarantined: int = 0

    def complete(self, n_good: int, n_bad: int) -> bool:
        return self.good_scored + self.good_step_quarantined >= n_good and self.bad_accounted >= n_bad


def step_quarantined(view: WarehouseView, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Quarantine rows of a batch step (not the sensor) for an exposure that was never scored."""
    if record["name"] in view.scored:
        return []
    return [q for q in quarantine_for(view, record) if q.get("stage") != "sensor"]


def progress(
    view: WarehouseView,
    records: Sequence[Mapping[str, Any]],
    accept_scored_duplicates: bool,
    accept_step_quarantine: bool = False,
) -> Progress:
    result = Progress()
    for record in records:
        if record["kind"] == GOOD:
            result.good_landed += 1
            result.good_scored += int(len(view.scored.get(record["name"], [])) == 1)
            result.good_step_quarantined += int(accept_step_quarantine and bool(step_quarantined(view, record)))
        else:
            result.bad_landed += 1
            result.bad_accounted += int(accounted(view, record, accept_scored_duplicates))
    return result


# ---- the report -----------------------------------------------------------------------------------------
def quantiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None}
    array = np.asarray(values, dtype=float)
    return {
        "n": int(array.size),
        "median": float(np.median(array)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class SoakResult:
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def run_summary(record: Any) -> dict[str, Any]:
    run = record.dagster_run
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "partition": run.tags.get("dagster/partition", ""),
        "source": run.tags.get("cryodecon/source", ""),
        "parent_run_id": run.tags.get("dagster/parent_run_id", ""),
        "root_run_id": run.tags.get("dagster/root_run_id", ""),
        "created_s": record.create_timestamp.timestamp(),
        "start_s": record.start_time,
        "end_s": record.end_time,
    }


def analyse(
    instance: Any,
    layout: Layout,
    args: argparse.Namespace,
    writer: EpuWriter,
    killer: RunKiller | None,
    gpu_steps: Sequence[str],
    setup: Mapping[str, Any],
    timed_out: bool,
) -> SoakResult:
    import dagster as dg

    result = SoakResult()
    t0 = writer.started_at or time.time()
    view = read_warehouse(layout.warehouse)
    records = list(writer.records)
    good = [r for r in records if r["kind"] == GOOD]
    bad = [r for r in records if r["kind"] != GOOD]
    runs = [run_summary(r) for r in process_runs(instance)]
    runs_by_id = {r["run_id"]: r for r in runs}
    materialized = hyperscore_materializations(instance)
    file_batch = {f["relative_path"]: batch for batch, m in view.manifests.items() for f in m["files"]}

    # exposures
    once = [r["name"] for r in good if len(view.scored.get(r["name"], [])) == 1]
    double = {r["name"]: view.scored[r["name"]] for r in good if len(view.scored.get(r["name"], [])) > 1}
    lost: dict[str, str] = {}
    set_aside: dict[str, str] = {}  # good exposures a batch step quarantined, with --accept-step-quarantine
    for r in good:
        if r["name"] in view.scored:
            continue
        by_step = step_quarantined(view, r)
        if args.accept_step_quarantine and by_step:
            set_aside[r["name"]] = "; ".join(
                f"{x.get('stage')}: {x.get('reason')} ({x.get('detail', '')})" for x in by_step
            )
            continue
        batch = file_batch.get(r["relative_path"])
        q = quarantine_for(view, r)
        if q:
            lost[r["name"]] = "quarantined: " + "; ".join(f"{x.get('stage')}: {x.get('reason')}" for x in q)
        elif batch is None:
            lost[r["name"]] = "never in a batch manifest"
        else:
            statuses = [x["status"] for x in runs if x["partition"] == batch]
            lost[r["name"]] = f"in {batch}, no HyperScore (runs: {', '.join(statuses) or 'none'})"
    known = {r["name"] for r in records}
    unexpected = sorted(n for n in view.scored if n not in known)
    exposures = {
        "good_landed": len(good),
        "scored_exactly_once": len(once),
        "double_counted": double,
        "lost": lost,
        "quarantined_by_a_step": set_aside,
        "unexpected_scored": unexpected,
        "never_batched": sum(1 for r in good if r["relative_path"] not in file_batch),
    }
    result.checks.append(
        Check(
            "every good exposure scored exactly once"
            + (" or quarantined by a step with its reason" if args.accept_step_quarantine else ""),
            len(once) + len(set_aside) == len(good) == args.exposures and not double,
            f"{len(once)}/{args.exposures} (landed {len(good)}, double counted {len(double)}, lost {len(lost)}"
            + (f", quarantined by a step {len(set_aside)}" if args.accept_step_quarantine else "")
            + ")",
        )
    )

    # bad files
    bad_rows = []
    for r in bad:
        q = quarantine_for(view, r)
        scored_in = view.scored.get(r["name"], [])
        ok = accounted(view, r, args.accept_scored_duplicates)
        if q:
            outcome = "; ".join(f"{x.get('stage')}: {x.get('reason')}" for x in q)
        elif scored_in:
            outcome = f"scored in {', '.join(scored_in)} (no quarantine row)"
        elif r["relative_path"] in file_batch:
            outcome = f"in manifest {file_batch[r['relative_path']]}, neither scored nor quarantined"
        else:
            outcome = "not in quarantine, not in any batch"
        if r["kind"] == "duplicate":
            original = r["duplicate_of"]
            outcome += f"; original `{original}` " + ("scored" if original in view.scored else "not scored")
            if scored_in and view.sha256.get(original) == view.sha256.get(r["name"]) is not None:
                outcome += ", same sha256 in `micrographs`"
        bad_rows.append(
            {
                "name": r["name"],
                "relative_path": r["relative_path"],
                "kind": r["kind"],
                "landed_after_s": r["landed_s"] - t0,
                "quarantine": q,
                "scored_in": scored_in,
                "outcome": outcome,
                "accounted": ok,
            }
        )
    planned_bad = sum(1 for p in writer.plan if p.kind != GOOD)
    unaccounted = [b["name"] for b in bad_rows if not b["accounted"]]
    result.checks.append(
        Check(
            "every bad file accounted for",
            not unaccounted and len(bad) == planned_bad,
            f"{len(bad_rows) - len(unaccounted)}/{planned_bad} accounted"
            + (f"; findings: {', '.join(unaccounted)}" if unaccounted else ""),
        )
    )
    if writer.errors:
        result.checks.append(Check("fake EPU writer", False, "; ".join(writer.errors)))

    # latency
    per_exposure = []
    for r in good:
        batches = view.scored.get(r["name"])
        batch = batches[0] if batches else file_batch.get(r["relative_path"])
        manifest = view.manifests.get(batch or "")
        entry: dict[str, Any] = {"name": r["name"], "landed_s": r["landed_s"], "batch": batch}
        if manifest is not None:
            entry["cut_s"] = float(manifest["cut_at_s"])
        starts = [x["start_s"] for x in runs if x["partition"] == batch and x["start_s"] is not None]
        entry["first_run_start_s"] = min(starts) if starts else None
        events = materialized.get(batch or "", [])
        if batches and events:
            scored_at, run_id = events[0]
            run = runs_by_id.get(run_id, {})
            entry.update({"scored_s": scored_at, "scoring_run_id": run_id})
            entry.update({"scoring_run_start_s": run.get("start_s"), "scoring_run_end_s": run.get("end_s")})
        per_exposure.append(entry)

    def span(key_a: str, key_b: str) -> list[float]:
        return [e[key_b] - e[key_a] for e in per_exposure if e.get(key_a) is not None and e.get(key_b) is not None]

    latency = {
        "landed_to_hyperscore_s": quantiles(span("landed_s", "scored_s")),
        "landed_to_cut_s": quantiles(span("landed_s", "cut_s")),
        "cut_to_first_run_start_s": quantiles(span("cut_s", "first_run_start_s")),
        "first_run_start_to_hyperscore_s": quantiles(span("first_run_start_s", "scored_s")),
        "scoring_run_start_to_hyperscore_s": quantiles(span("scoring_run_start_s", "scored_s")),
    }
    step_durations: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run["status"] != "SUCCESS":
            continue
        for stat in instance.get_run_step_stats(run["run_id"]):
            if stat.start_time is not None and stat.end_time is not None:
                step_durations[stat.step_key].append(stat.end_time - stat.start_time)
    steps = {k: quantiles(v) for k, v in step_durations.items()}

    # the killed run
    kill: dict[str, Any] = {"performed": False}
    if killer is not None and killer.record is not None:
        k = killer.record
        kill = {"performed": True, **asdict(k), "killed_after_s": k.killed_at_s - t0}
        killed = runs_by_id.get(k.run_id, {})
        kill["final_status"] = killed.get("status")
        kill["end_s"] = killed.get("end_s")
        killed_events = run_events(instance, k.run_id)
        failure = [e for e in killed_events if event_type(e) in ("RUN_FAILURE", "RUN_CANCELED")]
        kill["failure_event_s"] = failure[0].timestamp if failure else None
        kill["marked_failed_after_kill_s"] = failure[0].timestamp - k.killed_at_s if failure else None
        kill["engine_messages_after_kill"] = [
            {"after_kill_s": e.timestamp - k.killed_at_s, "type": event_type(e), "message": (e.message or "")[:300]}
            for e in killed_events
            if e.timestamp >= k.killed_at_s - 1 and event_type(e) in ("ENGINE_EVENT", "RUN_FAILURE", "RUN_CANCELED")
        ]
        passes = []
        for run in runs:
            if run["run_id"] == k.run_id:
                continue
            for e in run_events(
                instance, run["run_id"], {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
            ):
                if e.step_key in gpu_steps and e.timestamp > k.killed_at_s:
                    passes.append((e.timestamp, run["run_id"], e.step_key))
        first_pass = min(passes) if passes else None
        kill["next_gpu_step_done"] = (
            {"at_s": first_pass[0], "run_id": first_pass[1], "step": first_pass[2]} if first_pass else None
        )
        kill["gpu_slot_stalled_s"] = first_pass[0] - k.killed_at_s if first_pass else None
        retries = [r for r in runs if r["root_run_id"] == k.run_id or r["parent_run_id"] == k.run_id]
        kill["retries"] = [
            {
                **r,
                "wall_s": (r["end_s"] - r["start_s"]) if r["end_s"] and r["start_s"] else None,
                "queued_s": (r["start_s"] - r["created_s"]) if r["start_s"] else None,
                "created_after_kill_s": r["created_s"] - k.killed_at_s,
            }
            for r in retries
        ]
        later = [
            (ts, run_id)
            for ts, run_id in materialized.get(k.partition, [])
            if ts > k.killed_at_s and run_id != k.run_id
        ]
        recovered_by = runs_by_id.get(later[0][1]) if later else None
        kill["recovered_by"] = recovered_by
        if recovered_by is not None:
            mechanism = "Dagster run retry" if recovered_by["parent_run_id"] else (recovered_by["source"] or "other")
            kill["recovery_mechanism"] = mechanism
            kill["recovered_after_kill_s"] = later[0][0] - k.killed_at_s
        kill["gpu_slots_at_end"] = gpu_slots(instance)
        kill["killed_run_still_holds_gpu_slot"] = any(
            s["run_id"] == k.run_id for s in kill["gpu_slots_at_end"]["claimed"]
        )
        result.checks.append(
            Check(
                "killed run recovered without a manual step",
                kill["final_status"] in ("FAILURE", "CANCELED") and recovered_by is not None,
                f"killed run {k.run_id[:8]} ({k.partition}) is {kill['final_status']}; "
                + (
                    f"HyperScores of {k.partition} materialised by run {recovered_by['run_id'][:8]} "
                    f"({kill['recovery_mechanism']}) {fmt(kill['recovered_after_kill_s'])} s after the kill"
                    if recovered_by
                    else f"no later run materialised {k.partition}"
                )
                + ("; the killed run still holds its gpu slot" if kill["killed_run_still_holds_gpu_slot"] else ""),
            )
        )
    elif not args.no_kill:
        problem = killer.problem if killer is not None and killer.problem else "no run reached a gpu-pool step"
        result.checks.append(Check("killed run recovered without a manual step", False, f"no kill: {problem}"))

    in_flight = [r for r in runs if r["status"] not in ("SUCCESS", "FAILURE", "CANCELED")]
    if timed_out:
        result.checks.append(Check("finished within --timeout-seconds", False, f"{len(in_flight)} runs not finished"))

    result.data = {
        "setup": dict(setup),
        "landing_started_s": t0,
        "timed_out": timed_out,
        "exposures": exposures,
        "bad_files": bad_rows,
        "batches": {
            b: {
                "session": m["session"],
                "files": len(m["files"]),
                "cut_s": m["cut_at_s"],
                "runs": [{"run_id": x["run_id"], "status": x["status"]} for x in runs if x["partition"] == b],
                "hyperscores_materializations": len(materialized.get(b, [])),
            }
            for b, m in sorted(view.manifests.items())
        },
        "runs": runs,
        "kill": kill,
        "latency": latency,
        "per_exposure": per_exposure,
        "steps": steps,
        "gpu_slots_at_end": gpu_slots(instance),
        "checks": [asdict(c) for c in result.checks],
        "passed": result.passed,
    }
    result.markdown = render_markdown(result, t0)
    return result


def extend_result(
    result: SoakResult, instance: Any, layout: Layout, args: argparse.Namespace, fault: FaultInjector | None
) -> None:
    """Throughput, where a run's time goes, step executions on Celery workers and the injected fault; the
    report is drawn again with them."""
    import duckdb

    d = result.data
    t0 = d["landing_started_s"]
    scored = [e["scored_s"] for e in d["per_exposure"] if e.get("scored_s") is not None]
    landed = [e["landed_s"] for e in d["per_exposure"]]
    if scored and landed:
        span_s = max(scored) - min(landed)
        d["throughput"] = {
            "scored": len(scored),
            "first_landed_to_last_scored_s": span_s,
            "exposures_per_hour": len(scored) / span_s * 3600 if span_s > 0 else None,
        }
    science: dict[str, float] = {}
    files = sorted((layout.warehouse / "tables" / "step_times").glob("*.parquet"))
    if files:
        rows = duckdb.sql(
            "SELECT run_id, sum(seconds) FROM read_parquet($files) GROUP BY run_id",
            params={"files": [str(f) for f in files]},
        ).fetchall()
        science = {str(run_id): float(total) for run_id, total in rows}
    breakdown = []
    for run in d["runs"]:
        if run["status"] != "SUCCESS" or run.get("start_s") is None or run.get("end_s") is None:
            continue
        stats = instance.get_run_step_stats(run["run_id"])
        in_steps = sum(x.end_time - x.start_time for x in stats if x.start_time and x.end_time)
        breakdown.append(
            {
                "run_id": run["run_id"],
                "wall_s": run["end_s"] - run["start_s"],
                "in_steps_s": in_steps,
                "science_s": science.get(run["run_id"], 0.0),
                "executions": step_executions(instance, run["run_id"]) if args.celery_workers else {},
            }
        )
    d["run_time"] = {
        "runs": len(breakdown),
        "wall_s": quantiles([b["wall_s"] for b in breakdown]),
        "in_steps_s": quantiles([b["in_steps_s"] for b in breakdown]),
        "science_s": quantiles([b["science_s"] for b in breakdown]),
    }
    if args.celery_workers:
        per_worker: dict[str, int] = defaultdict(int)
        repeated = []
        for b in breakdown:
            for step, names in b["executions"].items():
                for name in names:
                    per_worker[name] += 1
                if len(names) > 1:
                    repeated.append(f"{b['run_id'][:8]}/{step} on {' then '.join(names)}")
        d["celery"] = {"steps_per_worker": dict(per_worker), "steps_executed_more_than_once": repeated}
    if fault is not None:
        record = dict(fault.fault) if fault.fault else {"kind": fault.kind, "performed": False}
        if fault.fault:
            partition = record["partition"]
            record["runs_of_partition"] = [
                {"run_id": x["run_id"], "status": x["status"]} for x in d["runs"] if x["partition"] == partition
            ]
            record["hyperscores_materializations"] = d["batches"].get(partition, {}).get("hyperscores_materializations")
        d["fault"] = record
        result.checks.append(
            Check(
                f"fault injected ({fault.kind})",
                bool(fault.fault),
                f"during {record.get('step')} of {record.get('partition')}"
                if fault.fault
                else fault.problem or "never",
            )
        )
        d["checks"] = [asdict(c) for c in result.checks]
        d["passed"] = result.passed
    result.markdown = render_markdown(result, t0)


def render_markdown(result: SoakResult, t0: float) -> str:
    d = result.data
    s = d["setup"]
    lines = [
        f"# cryodecon soak, {dt.datetime.fromtimestamp(t0):%Y-%m-%d %H:%M}",
        "",
        f"**{'PASS' if result.passed else 'FAIL'}**" + ("" if result.passed else " (failed checks below)"),
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in s.items()]
    lines += ["", "## Checks", "", "| check | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.detail} |" for c in result.checks]
    e = d["exposures"]
    lines += [
        "",
        "## Good exposures",
        "",
        f"- landed: {e['good_landed']}; scored exactly once: {e['scored_exactly_once']}; "
        f"double counted: {len(e['double_counted'])}; lost: {len(e['lost'])}; "
        f"never put in a batch: {e['never_batched']}",
    ]
    if e["double_counted"]:
        lines.append("- double counted: " + ", ".join(f"{n} ({', '.join(b)})" for n, b in e["double_counted"].items()))
    if e.get("quarantined_by_a_step"):
        lines.append(
            "- quarantined by a batch step (accounted, not scored): "
            + "; ".join(f"`{n}` {why}" for n, why in e["quarantined_by_a_step"].items())
        )
    if e["lost"]:
        reasons: dict[str, int] = defaultdict(int)
        for reason in e["lost"].values():
            reasons[reason] += 1
        lines.append("- lost, by reason: " + "; ".join(f"{n} × {r}" for r, n in sorted(reasons.items())))
    if e["unexpected_scored"]:
        lines.append(f"- scored names that were never landed: {', '.join(e['unexpected_scored'])}")
    lines += [
        "",
        "## Bad files",
        "",
        "| file | kind | landed (s) | recorded as | accounted |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{b['name']}` | {b['kind']} | {fmt(b['landed_after_s'])} | {b['outcome']} | "
        f"{'yes' if b['accounted'] else '**no**'} |"
        for b in sorted(d["bad_files"], key=lambda x: x["landed_after_s"])
    ]
    lines += [
        "",
        "## Batches",
        "",
        "| batch | files | cut (s) | runs | HyperScore materialisations |",
        "| --- | --- | --- | --- | --- |",
    ]
    for batch, info in d["batches"].items():
        runs = ", ".join(f"{r['run_id'][:8]} {r['status']}" for r in info["runs"]) or "none"
        lines.append(
            f"| {batch} | {info['files']} | {fmt(info['cut_s'] - t0)} | {runs} | "
            f"{info['hyperscores_materializations']} |"
        )
    k = d["kill"]
    lines += ["", "## Killed run worker", ""]
    if k.get("performed"):
        lines += [
            f"- run `{k['run_id']}` ({k['partition']}), worker pid {k['pid']} ({k['pid_source']}), SIGKILL at "
            f"{fmt(k['killed_after_s'])} s during {', '.join(k['steps_in_flight'])}; gpu slot claims before the kill: "
            + (", ".join(f"{c['run_id'][:8]}/{c['step_key']}" for c in k["gpu_slots_before"]) or "none"),
            f"- final status: **{k['final_status']}**; failure event {fmt(k['marked_failed_after_kill_s'])} s after "
            f"the kill",
        ]
        lines += [
            f"  - +{fmt(m['after_kill_s'])} s {m['type']}: {m['message'][:160]}"
            for m in k["engine_messages_after_kill"]
        ]
        nxt = k["next_gpu_step_done"]
        lines.append(
            "- next gpu-pool step of another run done: "
            + (
                f"{nxt['step']} of {nxt['run_id'][:8]}, {fmt(k['gpu_slot_stalled_s'])} s after the kill (slot stall)"
                if nxt
                else "**never** (the slot stayed held)"
            )
        )
        lines.append(
            "- gpu slot claims at the end: "
            + (", ".join(f"{c['run_id'][:8]}/{c['step_key']}" for c in k["gpu_slots_at_end"]["claimed"]) or "none")
            + f"; pending steps: {len(k['gpu_slots_at_end']['pending'])}"
        )
        if k["retries"]:
            for r in k["retries"]:
                lines.append(
                    f"- retry `{r['run_id']}`: {r['status']}, created {fmt(r['created_after_kill_s'])} s "
                    f"after the kill, queued {fmt(r['queued_s'])} s, wall time {fmt(r['wall_s'])} s"
                )
        else:
            lines.append("- retry: **none** (no run tagged dagster/parent_run_id with the killed run)")
        if k.get("recovered_by"):
            lines.append(
                f"- recovered by `{k['recovered_by']['run_id']}` ({k['recovery_mechanism']}), HyperScores "
                f"{fmt(k['recovered_after_kill_s'])} s after the kill"
            )
    else:
        lines.append("- no run worker was killed")
    lines += [
        "",
        "## Latency, landing to HyperScore (s)",
        "",
        "| span | n | median | p95 | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, q in d["latency"].items():
        lines.append(f"| {name} | {q['n']} | {fmt(q['median'])} | {fmt(q['p95'])} | {fmt(q['max'])} |")
    lines += [
        "",
        "Landed: the file's last byte (landed.jsonl); cut: the manifest's `cut_at_s`; first run start: the "
        "batch's first run (a killed batch's recovery counts in first_run_start_to_hyperscore); HyperScore: the "
        "first `hyperscores` materialisation of the batch, by the scoring run.",
    ]
    if "throughput" in d:
        t = d["throughput"]
        lines += [
            "",
            "## Throughput",
            "",
            f"- {t['scored']} exposures scored in {fmt(t['first_landed_to_last_scored_s'])} s from the first landing "
            f"to the last HyperScore: **{fmt(t['exposures_per_hour'], 0)} exposures per hour**",
        ]
    if "run_time" in d:
        r = d["run_time"]
        lines += [
            f"- per successful run (median / p95 s, {r['runs']} runs): wall {fmt(r['wall_s']['median'])} / "
            f"{fmt(r['wall_s']['p95'])}; inside steps {fmt(r['in_steps_s']['median'])} / "
            f"{fmt(r['in_steps_s']['p95'])}; "
            f"science (step_times) {fmt(r['science_s']['median'])} / {fmt(r['science_s']['p95'])}; the rest of the "
            "wall time is orchestration (launch, step hand-over, events)"
        ]
    if "celery" in d:
        c = d["celery"]
        lines.append(
            "- steps per Celery worker: " + ", ".join(f"{k} {v}" for k, v in sorted(c["steps_per_worker"].items()))
        )
        lines.append("- steps executed more than once: " + ("; ".join(c["steps_executed_more_than_once"]) or "none"))
    if "fault" in d:
        f = d["fault"]
        lines += ["", f"## Fault: {f['kind']}", ""]
        if f.get("at_s") is None:
            lines.append("- not injected")
        else:
            lines.append(
                f"- at {fmt(f['at_s'] - t0)} s, during `{f['step']}` of {f['partition']} (run {f['run_id'][:8]}); "
                f"steps in flight: {', '.join(f['steps_in_flight'])}"
            )
            lines += [f"- {a['command']} at {fmt(a['at_s'] - t0)} s" for a in f["actions"]]
            if "worker" in f:
                lines.append(f"- worker {f['worker']} replaced {fmt(f['restarted_after_s'])} s later")
            lines.append(
                "- runs of the batch: "
                + ", ".join(f"{x['run_id'][:8]} {x['status']}" for x in f.get("runs_of_partition", []))
                + f"; HyperScore materialisations: {f.get('hyperscores_materializations')}"
            )
    lines += ["", "## Steps of successful runs (s)", "", "| step | runs | median | p95 |", "| --- | --- | --- | --- |"]
    for step, q in sorted(d["steps"].items(), key=lambda kv: -(kv[1]["median"] or 0)):
        lines.append(f"| {step} | {q['n']} | {fmt(q['median'], 2)} | {fmt(q['p95'], 2)} |")
    statuses: dict[str, int] = defaultdict(int)
    for run in d["runs"]:
        statuses[run["status"]] += 1
    lines += ["", f"Runs of `{PROCESS_JOB}`: " + (", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none")]
    return "\n".join(lines) + "\n"


# ---- main -----------------------------------------------------------------------------------------------
def instance_settings(instance: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in ("run_monitoring_enabled", "run_retries_enabled", "run_retries_max_retries"):
        with contextlib.suppress(Exception):
            settings[name] = getattr(instance, name)
    with contextlib.suppress(Exception):
        settings["free_slots_after_run_end_seconds"] = instance.run_monitoring_settings.get(
            "free_slots_after_run_end_seconds"
        )
    return settings


def soak(args: argparse.Namespace) -> int:
    started = time.time()
    deadline = started + args.timeout_seconds
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cryodecon-soak-")).resolve()
    if args.workdir and workdir.exists() and any(workdir.iterdir()):
        raise HarnessError(f"--workdir {workdir} is not empty; the soak needs a fresh folder")
    layout = Layout.under(workdir)
    layout.create()
    report_path = Path(args.report).resolve() if args.report else workdir / "soak.md"
    json_path = Path(args.json).resolve() if args.json else report_path.with_suffix(".json")
    database = f"cryodecon_soak_{dt.datetime.now():%Y%m%d_%H%M%S}"
    log(f"workdir {workdir}")
    try:
        postgres_url = create_database(args.postgres_server, database)
    except Exception as exc:
        raise HarnessError(f"cannot create database {database} on {args.postgres_server}: {exc}") from exc
    log(f"database {database}")
    env = soak_environment(layout, args, postgres_url)
    if args.celery_workers:
        env.update(
            CRYODECON_EXECUTOR="celery",
            CRYODECON_CELERY_CONFIG=str(REPO / "deploy" / "celery" / "celery.yaml"),
            CRYODECON_CELERY_BROKER=args.celery_broker,
            CRYODECON_CELERY_BACKEND=args.celery_backend,
        )
    if args.fault != "run-worker":
        args.no_kill = True  # the run-worker analysis is off; another fault has its own section
    if args.fault == "celery-worker" and not args.celery_workers:
        raise HarnessError("--fault celery-worker needs --celery-workers")
    os.environ.update(env)
    write_instance_yaml(layout.dagster_home, args.max_concurrent_runs)
    dev: DagsterDev | None = None
    workers: CeleryWorkers | None = None
    killer: RunKiller | None = None
    instance: Any = None
    writer: EpuWriter | None = None
    exit_code = 2
    try:
        import dagster as dg

        instance = dg.DagsterInstance.get()  # creates the schema before dagster dev starts
        settings = instance_settings(instance)
        log(f"instance settings: {settings}")
        seed_reference_data(args.size, args.seed)
        gpu_steps = gpu_pool_steps()
        plan = plan_landing(args, layout.staging)
        stage_files(args, layout.staging)
        if args.celery_workers:
            instance.event_log_storage.set_concurrency_slots("gpu", args.celery_workers)  # one slot per worker
            workers = CeleryWorkers(args.celery_workers, env, workdir)
            workers.start(args.startup_seconds)
        dev = DagsterDev(env, layout.dagster_log)
        dev.start()
        dev.wait_ready(instance, min(deadline, time.time() + args.startup_seconds))
        log("dagster dev is up (webserver and sensor daemon)")
        writer = EpuWriter(plan, layout.storage, layout.landed, args.transfer_seconds)
        writer.start()
        n_bad = sum(1 for p in plan if p.kind != GOOD)
        log(f"landing {args.exposures} good + {n_bad} bad files into '{args.session}' over {args.land_seconds:g} s")
        killer_args = {
            "kill_step": args.kill_at_step,
            "gpu_steps": gpu_steps,
            "skip_runs": args.kill_after_runs,
            "delay_s": args.kill_delay_seconds,
            "dagster_session": dev.pid,
        }
        if args.fault == "run-worker" and not args.no_kill:
            killer = RunKiller(**killer_args)
        elif args.fault not in ("run-worker", "none"):
            killer = FaultInjector(args.fault, workers, args.fault_seconds, args.worker_restart_seconds, **killer_args)
        timed_out = True
        complete_since: float | None = None
        last_check = 0.0
        last_note = ""
        while time.time() < deadline:
            if not dev.alive():
                raise HarnessError("dagster dev exited during the soak (see its log)")
            if killer is not None and killer.record is None:
                try:
                    killer.poll(instance)
                except Exception as exc:  # a transient storage read error: try again next poll
                    log(f"kill poll: {exc!r}")
            if time.time() - last_check >= 5:
                last_check = time.time()
                view = read_warehouse(layout.warehouse)
                p = progress(view, list(writer.records), args.accept_scored_duplicates, args.accept_step_quarantine)
                note = (
                    f"landed {p.good_landed}/{args.exposures} good, {p.bad_landed}/{n_bad} bad; scored once "
                    f"{p.good_scored}; bad accounted {p.bad_accounted}; batches {len(view.manifests)}"
                )
                if note != last_note:
                    log(note)
                    last_note = note
                # Complete implies the killed batch was recovered: its exposures are among the good ones.
                if writer.finished and p.complete(args.exposures, n_bad):
                    complete_since = complete_since or time.time()
                    if time.time() - complete_since >= args.grace_seconds:
                        timed_out = False
                        break
                else:
                    complete_since = None
            time.sleep(0.5 if killer is not None and killer.record is None else 2.0)
        if timed_out:
            log("timeout reached")
        writer.stop_event.set()
        setup = {
            "session": f"`{args.session}`",
            "good exposures": args.exposures,
            "bad files": ", ".join(
                f"{n} {k}"
                for k, n in (
                    ("truncated", args.truncated),
                    ("zero-byte", args.zero_byte),
                    ("corrupt header", args.corrupt),
                    ("NaN", args.nan),
                    ("preallocated", args.preallocated),
                    ("duplicate", args.duplicates),
                )
            ),
            "micrograph size": f"{args.size}²",
            "landing spread": f"{args.land_seconds:g} s (transfer {args.transfer_seconds:g} s per file)",
            "settle / batch window / max batch": (
                f"{args.settle_seconds:g} s / {args.batch_window_seconds:g} s / {args.max_batch_size}"
            ),
            "instance": ", ".join(f"{k}={v}" for k, v in settings.items()),
            "database": database,
            "workdir": str(workdir),
            "soak wall time": f"{time.time() - started:.0f} s (timeout {args.timeout_seconds:g} s)",
        }
        if args.celery_workers:
            setup["executor"] = (
                f"Celery, {args.celery_workers} workers (one step at a time each; gpu pool slots = workers)"
            )
        if args.max_concurrent_runs is not None:
            setup["max concurrent runs"] = args.max_concurrent_runs
        run_killer = killer if not isinstance(killer, FaultInjector) else None
        result = analyse(instance, layout, args, writer, run_killer, gpu_steps, setup, timed_out)
        extend_result(result, instance, layout, args, killer if isinstance(killer, FaultInjector) else None)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(result.markdown)
        json_path.write_text(json.dumps(_json_ready(result.data), indent=1))
        sys.stdout.write(result.markdown)
        for check in result.checks:
            if not check.passed:
                print(f"FAILED: {check.name}: {check.detail}", file=sys.stderr)
        log(f"report {report_path}, raw numbers {json_path}")
        exit_code = 0 if result.passed else 1
    finally:
        if writer is not None:
            writer.stop_event.set()
        if isinstance(killer, FaultInjector) and killer.thread is not None:
            killer.thread.join()  # never leave RabbitMQ or PostgreSQL down
        if workers is not None:
            workers.stop()
        if dev is not None:
            log("stopping dagster dev")
            dev.stop(args.stop_grace_seconds)
        if instance is not None:
            with contextlib.suppress(Exception):
                instance.dispose()
        if args.keep:
            log(f"kept database {database} ({postgres_url})")
        else:
            try:
                drop_database(args.postgres_server, database)
            except Exception as exc:
                log(f"could not drop database {database}: {exc}")
        with contextlib.suppress(OSError):
            shutil.rmtree(layout.staging)
    return exit_code


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.exposures < 1:
        print("soak: --exposures must be at least 1", file=sys.stderr)
        return 2

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return soak(args)
    except HarnessError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
