"""Storage sensor tick time over 10,000 and 100,000 files, and how many files each tick hashes (issue #20, item 3).

The tree: tiny MRC exposures (8 × 8 float32, 1,280 bytes, each with its own random data so that none is a
duplicate) in EPU's layout, ``<session>/Images-Disc1/GridSquare_<g>/Data/FoilHole_<h>_Data_<g>_<h>.mrc``, 250
per GridSquare folder, 3 sessions, in a fresh temporary folder (``--tmp``, default the system's) on this
machine's disk, removed afterwards.  Tiny files, so that what is measured is the listing, the ledger, the
manifests and the cursor, not the disk's read rate: hashing a real multi-GB movie takes seconds whatever the
sensor does, which is why a file is hashed once and a pass hashes for at most ``checksum_seconds_per_tick``.

The sensor runs as the daemon runs it: ``microscope_storage_sensor`` evaluated with a sensor context (ephemeral
instance), its cursor carried from tick to tick, with settle_seconds 0 (a file is settled on the tick after it
was first seen), max_batch_size 50 and batch_window_seconds 300 (each session's remainder, < 50 files, waits
for the window through the whole run).  The ticks:

1. ``first sight``: every file is new: listed, nothing hashed;
2. ``first hashing``: every file settled: checked, hashed and cut into full batches (manifests written),
   as many as ``checksum_seconds_per_tick`` (20 s) allows; ``hashing, tick n``: the next ticks hash the
   rest of that backlog;
3. ``steady`` × 3: nothing new (the table gives the median, the JSON each tick);
4. ``arrivals seen`` / ``arrivals hashed``: 60 files land (20 per session); one tick sees them, the next hashes
   them and cuts a batch;
5. ``restart`` / ``restart settled``: the daemon lost its cursor: the unassigned files are seen again, then
   settle again.

Checksum computations are counted by wrapping ``sensors.sha256_of_file``.  The storage listing alone
(``MicroscopeStorage.scan``) and the ledger alone (``sensors.ledger``) are timed beside the ticks.  The files
were just written, so their metadata is in the page cache, as on a storage server listed every 15 s.

With ``--before DIR`` each size is also run on another copy of the code (``DIR`` holding the packages, e.g.
the commit before this change) in a child process, for the "before" columns:

    mkdir -p /tmp/cryodecon_before && git archive HEAD cryodecon_assets cryodecon_resources cryodecon_science \\
        | tar -x -C /tmp/cryodecon_before
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sensor_tick.py --before /tmp/cryodecon_before

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sensor_tick.py --files 10000   # quicker, this code only

Writes ``benchmarks/results/sensor_tick.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SESSIONS = 3
PER_FOLDER = 250
ARRIVALS = 60
SETTINGS = {"settle_seconds": 0.0, "max_batch_size": 50, "batch_window_seconds": 300.0}


def write_tree(root: Path, n_files: int, seed: int = 0, start: int = 0) -> float:
    """``n_files`` tiny unique MRC exposures under ``root`` (EPU layout, sessions round-robin); seconds taken."""
    from cryodecon_science.io.mrc import write_mrc

    began = time.perf_counter()
    template = root.parent / "template.mrc"
    write_mrc(template, np.ones((8, 8), np.float32), 1.0)
    header = template.read_bytes()[:-256]
    template.unlink()
    rng = np.random.default_rng(seed + start)
    payload = (rng.random((n_files, 64), dtype=np.float32) + 1.0).tobytes()
    for i in range(start, start + n_files):
        session, index = i % SESSIONS, i // SESSIONS
        square = index // PER_FOLDER
        folder = root / f"session_{session}" / "Images-Disc1" / f"GridSquare_{square}" / "Data"
        if index % PER_FOLDER == 0 or i == start:
            folder.mkdir(parents=True, exist_ok=True)
        k = i - start
        (folder / f"FoilHole_{index}_Data_{square}_{index}.mrc").write_bytes(header + payload[k * 256 : (k + 1) * 256])
    return time.perf_counter() - began


def run_one(n_files: int, tmp: str | None) -> dict[str, Any]:
    """One full sequence of ticks on a fresh tree, with the code importable in this process."""
    import dagster as dg

    from cryodecon_assets.intake import sensors
    from cryodecon_resources import MicroscopeStorage, ScoreWarehouse
    from cryodecon_resources.storage import sha256_of_file

    hashed = [0]

    def counting(path: Any, *args: Any, **kwargs: Any) -> str:
        hashed[0] += 1
        return sha256_of_file(path, *args, **kwargs)

    sensors.sha256_of_file = counting  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(dir=tmp, prefix="bench_sensor_tick_") as folder:
        storage_root, warehouse_root = Path(folder) / "storage", Path(folder) / "warehouse"
        storage_root.mkdir()
        write_s = write_tree(storage_root, n_files)
        storage = MicroscopeStorage(root=str(storage_root), **SETTINGS)  # type: ignore[arg-type]
        warehouse = ScoreWarehouse(root=str(warehouse_root))
        resources = {"microscope_storage": storage, "warehouse": warehouse}
        instance = dg.DagsterInstance.ephemeral()
        ticks: list[dict[str, Any]] = []
        cursor: str | None = None

        def tick(name: str, start_cursor: str | None) -> None:
            nonlocal cursor
            before = hashed[0]
            context = dg.build_sensor_context(instance=instance, cursor=start_cursor, resources=resources)
            began = time.perf_counter()
            result = sensors.microscope_storage_sensor(context)
            seconds = time.perf_counter() - began
            assert isinstance(result, dg.SensorResult)
            cursor = result.cursor
            ticks.append(
                {
                    "tick": name,
                    "seconds": seconds,
                    "hashes": hashed[0] - before,
                    "batches_cut": len(result.run_requests or []),
                    "pending": len(json.loads(cursor or "{}").get("pending", {})),
                    "cursor_bytes": len(cursor or ""),
                }
            )
            print(f"  {n_files} files, {name}: {seconds:.2f} s, {ticks[-1]['hashes']} hashed", file=sys.stderr)

        tick("first sight", None)
        tick("first hashing", cursor)
        while ticks[-1]["batches_cut"] and len(ticks) < 12:  # a backlog beyond checksum_seconds_per_tick
            tick(f"hashing, tick {len(ticks) + 1}", cursor)
        if not ticks[-1]["batches_cut"] and ticks[-1]["tick"] != "first hashing":
            ticks[-1]["tick"] = "steady"
        while sum(t["tick"] == "steady" for t in ticks) < 3:
            tick("steady", cursor)
        write_tree(storage_root, ARRIVALS, start=n_files)
        tick("arrivals seen", cursor)
        tick("arrivals hashed", cursor)
        tick("restart", None)
        tick("restart settled", cursor)
        scan_s, ledger_s = [], []
        for _ in range(3):
            began = time.perf_counter()
            listed = len(storage.scan().files)
            scan_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            n_manifests = len(sensors.ledger(warehouse).manifests)
            ledger_s.append(time.perf_counter() - began)
        checksums = warehouse_root / "documents" / "checksums" / "unassigned.json"
        return {
            "files": n_files,
            "files_listed": listed,
            "manifests": n_manifests,
            "tree_write_s": write_s,
            "ticks": ticks,
            "scan_s": statistics.median(scan_s),
            "ledger_s": statistics.median(ledger_s),
            "checksum_document_bytes": checksums.stat().st_size if checksums.exists() else None,
            "hashes_total": hashed[0],
            "distinct_files": n_files + ARRIVALS,
        }


def run_child(code: Path, n_files: int, tmp: str | None) -> dict[str, Any]:
    """``run_one`` in a child process whose ``cryodecon_*`` packages come from ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(n_files)] + (["--tmp", tmp] if tmp else [])
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=code)
    sys.stderr.write(completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"child run on {code} failed")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def summary_rows(run: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """(seconds, hashes) by tick name; the steady ticks as their median time and their total hashes."""
    rows: dict[str, tuple[float, int]] = {}
    steady = [t for t in run["ticks"] if t["tick"] == "steady"]
    for t in run["ticks"]:
        if t["tick"] != "steady":
            rows[t["tick"]] = (t["seconds"], t["hashes"])
        elif "steady" not in rows:
            rows["steady"] = (statistics.median(s["seconds"] for s in steady), max(s["hashes"] for s in steady))
    return rows


def markdown(result: dict[str, Any]) -> str:
    after = {r["files"]: r for r in result["after"]}
    before = {r["files"]: r for r in result.get("before", [])}
    lines = [
        "# Storage sensor tick time (issue #20, item 3)",
        "",
        f"`{result['command']}`, {result['date']}, {result['machine']}.",
        "",
        f"Tiny MRC files (1,280 bytes, EPU layout, {SESSIONS} sessions, {PER_FOLDER} per folder) in a temporary "
        f"folder on {result['filesystem']}; sensor settings {SETTINGS}: a file settles on the tick after it is "
        "first seen, each session's remainder (< 50 files) waits for the 300 s window throughout.  "
        "Seconds are wall time of one `microscope_storage_sensor` evaluation (steady: median of 3); "
        "hashes are SHA-256 computations in that tick (steady: the most in one of the 3).  "
        "Dagster's default sensor time limit is 60 s.  The module docstring describes each tick.  "
        f"The CPUs are shared (1-minute load average {result['load_average_1min'][0]:.1f} at the start, "
        f"{result['load_average_1min'][1]:.1f} at the end; {result['elapsed_s'] / 60:.0f} min in all): "
        "seconds vary between runs, hash counts do not.",
        "",
    ]
    header = "| files | tick | seconds | hashes |"
    rule = "| ---: | --- | ---: | ---: |"
    if before:
        header += " seconds before | hashes before |"
        rule += " ---: | ---: |"
    lines += [header, rule]
    for n, run in sorted(after.items()):
        old = summary_rows(before[n]) if n in before else {}
        for name, (seconds, hashes) in summary_rows(run).items():
            row = f"| {n:,} | {name} | {seconds:.2f} | {hashes:,} |"
            if before:
                previous = old.get(name)
                row += f" {previous[0]:.2f} | {previous[1]:,} |" if previous else " – | – |"
            lines.append(row)
    lines += [
        "",
        "| code | files | `scan()` stat-ing every file (s) | ledger alone (s) | manifests | "
        "cursor bytes: first sight, steady "
        "| checksum document bytes | hashes in all / distinct files |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for code, runs in (("after", after), ("before", before)):
        for n, run in sorted(runs.items()):
            first, steady = run["ticks"][0], next(t for t in run["ticks"] if t["tick"] == "steady")
            document = run.get("checksum_document_bytes")
            lines.append(
                f"| {code} | {n:,} | {run['scan_s']:.2f} | {run['ledger_s']:.2f} | {run['manifests']:,} | "
                f"{first['cursor_bytes']:,}, {steady['cursor_bytes']:,} | "
                f"{'–' if document is None else f'{document:,}'} | "
                f"{run['hashes_total']:,} / {run['distinct_files']:,} |"
            )
    lines += [
        "",
        "A tick lists every file but stats only those in no manifest (`scan(skip=...)`), so a steady tick costs "
        "less than the full `scan()`; the ledger is the manifests of the sessions on storage, parsed once per "
        "process while unchanged.",
    ]
    if before:
        lines += ["", f"Before: the code in `{result['before_code']}` (the commit before this change)."]
    return "\n".join(lines)


def filesystem_of(path: str) -> str:
    try:
        found = subprocess.run(["df", "-T", path], capture_output=True, text=True, check=True).stdout.splitlines()
        return found[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--tmp", default=None, help="where the temporary tree goes (default: the system's)")
    parser.add_argument("--before", type=Path, default=None, help="a copy of the code to compare with")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.tmp)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import write_results

    began = time.perf_counter()
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sensor_tick.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
        "filesystem": filesystem_of(args.tmp or tempfile.gettempdir()),
        "settings": SETTINGS,
        "after": [run_child(ROOT, n, args.tmp) for n in args.files],
    }
    if args.before is not None:
        result["before_code"] = str(args.before)
        result["before"] = [run_child(args.before.resolve(), n, args.tmp) for n in args.files]
    result["load_average_1min"] = [load_before[0], os.getloadavg()[0]]
    result["elapsed_s"] = time.perf_counter() - began
    write_results("sensor_tick", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
