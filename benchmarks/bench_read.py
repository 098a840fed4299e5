"""Read throughput of cryodecon's readers against a plain sequential read of the same file.

Issue goal: reading a 4096×4096 uint16 MRC micrograph and a 40-frame TIFF movie should run at ≥ 0.8 of
the throughput of ``open(path, 'rb').read()`` on the same disk.  Before every timed read the file's pages
are evicted from the page cache (``fsync`` + ``posix_fadvise(POSIX_FADV_DONTNEED)``, no root needed), so
both the plain read and the reader read from the disk, as a pipeline does with a file that just landed;
``--repeats`` reads each way, interleaved, median reported.  The warm-cache figures (file already in
memory) are reported beside them: there the reader's conversion to float32 and its checks are the whole
cost.  Throughput is file bytes / seconds for both, so the ratio is t_plain / t_reader.  The readers
return float32 counts and run every completeness and validity check (declared size, frame sizes,
NaN/Inf), which is part of what is measured.

    .venv/bin/python benchmarks/bench_read.py              # 4096² uint16 MRC; 40 × 4096² TIFF, raw and LZW
    .venv/bin/python benchmarks/bench_read.py --size 2048  # quicker

Writes ``benchmarks/results/read_throughput.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write_results  # noqa: E402

GOAL_RATIO = 0.8


def plain_read(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


def read_into_new_array(path: Path) -> None:
    """The whole file into one freshly allocated array: what any reader that returns the data must at least
    do (the kernel zeroes every new page, so this is slower than ``plain_read``'s reused buffer)."""
    np.fromfile(path, dtype=np.uint8)


def timed(function: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (after flushing them), so the next read hits the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(path: Path, reader: Callable[[Path], object], repeats: int) -> dict[str, float]:
    size = path.stat().st_size
    out: dict[str, float] = {"file_bytes": size}
    for cache in ("cold", "warm"):
        plain_read(path)
        reader(path)
        plain_times, reader_times = [], []
        for _ in range(repeats):  # interleaved, so drift in machine load affects both alike
            if cache == "cold":
                evict(path)
            plain_times += timed(lambda: plain_read(path), 1)
            if cache == "cold":
                evict(path)
            reader_times += timed(lambda: reader(path), 1)
        array_times = []
        for _ in range(repeats):
            if cache == "cold":
                evict(path)
            array_times += timed(lambda: read_into_new_array(path), 1)
        out[f"{cache}_array_ratio"] = statistics.median(array_times) / statistics.median(reader_times)
        t_plain, t_reader = statistics.median(plain_times), statistics.median(reader_times)
        out |= {
            f"{cache}_plain_seconds": t_plain,
            f"{cache}_reader_seconds": t_reader,
            f"{cache}_plain_mb_per_s": size / t_plain / 1e6,
            f"{cache}_reader_mb_per_s": size / t_reader / 1e6,
            f"{cache}_ratio": t_plain / t_reader,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dose-per-frame", type=float, default=1.0, help="mean counts per pixel per frame")
    args = parser.parse_args()

    import tifffile

    from cryodecon_science.io.mrc import read_micrograph, write_mrc
    from cryodecon_science.io.tiff import read_tiff_movie

    rng = np.random.default_rng(0)
    cases: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_read_") as tmp:
        folder = Path(tmp)
        micrograph = rng.poisson(40.0, (args.size, args.size)).astype(np.uint16)
        mrc_path = folder / "micrograph.mrc"
        write_mrc(mrc_path, micrograph, 1.0)
        cases[f"MRC uint16 {args.size}²"] = measure(mrc_path, read_micrograph, args.repeats)
        del micrograph
        frames = rng.poisson(args.dose_per_frame, (args.frames, args.size, args.size)).astype(np.uint16)
        for label, compression in (("uncompressed", None), ("LZW", "lzw")):
            path = folder / f"movie_{label}.tiff"
            tifffile.imwrite(path, frames, compression=compression, photometric="minisblack")
            key = f"TIFF {args.frames} × {args.size}² uint16, {label}"
            cases[key] = measure(path, read_tiff_movie, args.repeats)
            print(key, cases[key], flush=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "cache": "cold: pages evicted with posix_fadvise before every read; warm: file in the page cache",
        "goal": f"reader throughput >= {GOAL_RATIO} x plain sequential read",
        "cases": cases,
    }
    lines = [
        "# Read throughput vs plain sequential read (CPU)",
        "",
        f"`{result['command']}` on {platform.machine()}, {os.cpu_count()} cores. Cold: file pages evicted "
        "before every read (disk); warm: file in the page cache (memory).  Plain read: `read()` into a reused "
        "16 MB buffer (the disk's streaming rate, the issue's baseline).  The last column compares with reading "
        "the file into one new array (`np.fromfile`), the least any reader that returns the data must do: the "
        "kernel zeroes each new page of the result.  MRC micrographs are returned as float32 (twice the "
        "bytes of uint16); movies keep their stored sample type.",
        "",
        "| file | size MB | cold plain MB/s | cold reader MB/s | cold ratio | goal ≥ 0.8 | warm ratio "
        "| cold ratio to a read into a new array |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for key, case in cases.items():
        verdict = "met" if case["cold_ratio"] >= GOAL_RATIO else "missed"
        lines.append(
            f"| {key} | {case['file_bytes'] / 1e6:.0f} | {case['cold_plain_mb_per_s']:.0f} | "
            f"{case['cold_reader_mb_per_s']:.0f} | {case['cold_ratio']:.2f} | {verdict} | {case['warm_ratio']:.2f} "
            f"| {case['cold_array_ratio']:.2f} |"
        )
    write_results("read_throughput", result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
