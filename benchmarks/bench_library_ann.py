"""Structure-library ANN search at 10⁶ vectors: latency, recall@10, build time, disk and memory (→ 10⁷).

    .venv/bin/python benchmarks/bench_library_ann.py [--rows 1000000] [--queries 1000] [--seed 2026]

(``--rows 100000`` for a quick check.)  Writes ``benchmarks/results/library_ann.json`` and ``.md`` (for other
``--rows``: ``library_ann_<rows>.json`` / ``.md``) and prints the Markdown table.  No network; deterministic
seeds; about 12 min at 10⁶ rows on 2 cores.

Library.  Built through the real ``StructureLibrary`` resource in a temporary folder: ``bulk_append`` of
batches of ``--batch-rows`` (10 000) rows (a plain append; ``add_embeddings``' ``merge_insert`` joins every
batch against the whole table, so seeding 10⁶ rows that way is needlessly slow), then ``compact()`` (the
scheduled maintenance job: fragments merged), then ``build_index(min_rows=0)`` with the resource's default
parameters (IVF-PQ, cosine, ``ceil(rows / 4096)`` partitions, d/4 = 16 PQ codes) timed as the build time.

Data (64-d unit vectors, the ``embed_particles`` default).

* ``embedding_like`` (the realistic case): calibrated on real embeddings.  16 simulated structures
  (``make_structures``) × 40 random views (``project_structure``, 2 Å/px, 112-px box) are embedded with
  ``embed_particles``; their mean m and covariance Σ define the generator: structure centre
  c = m + √0.7 Σ^½ z, view e = normalise(c + √0.3 Σ^½ z′), ``rows / 200`` structures with ~200 views each.
  Real embeddings sit in a narrow cone (all pairwise cosine distances ≲ 0.05): the split 0.7 / 0.3 makes
  the within-structure / between-structure distance ratio match the real one (≈ 0.3); the JSON
  compares real and synthetic distance statistics.
* ``sphere_clusters``: ``rows / 200`` centres uniform on the unit sphere, views with per-dimension
  Gaussian noise σ = 0.0088 (member-to-centre cosine distance ≈ 0.0025, as real views of one structure).
* ``uniform``: uniform on the sphere, no structure at all: the worst case for any partition-based
  index (every point's neighbours are spread over many partitions); reported even though it misses the goal.

Queries: ``--queries`` held-out vectors from the same generator (same structures, new views; not library
members), one vector per ``StructureLibrary.nearest(q, k=10)`` call, so latency includes opening the
table and returning the metadata columns, on 2 cores (LanceDB's own thread pool; torch 1 thread).  Median
and 95th percentile over all queries after 20 warm-up queries.  Recall@10 = |ANN top-10 ∩ exact top-10| / 10
against exact brute force (float32 matmul over all rows in chunks + top-k), mean over queries.  A small
sweep of (nprobes, refine_factor) over ``--sweep-queries`` queries shows the trade-off.

Sizes.  Disk: bytes of every file under the table folder after compaction, split into data files, index
files and the rest; per row = total / rows.  Memory: process RSS (``/proc/self/status``) before the
library is opened and after the queries; LanceDB keeps the opened index in its cache, the refine step
reads refine_factor · k full rows per query from the data files (page cache).  10⁷ figures: per-row bytes
× 10⁷ (the arithmetic is written into the results).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import numpy.typing as npt
import torch
from _common import write_results

from cryodecon_resources.structure_library import StructureLibrary
from cryodecon_science.embedding import embed_particles
from cryodecon_science.projection import random_euler_angles_deg
from cryodecon_science.simulate import make_structures, project_structure

DIMENSION = 64
K = 10
VIEWS_PER_STRUCTURE = 200
GOAL_MEDIAN_MS = 10.0
GOAL_RECALL = 0.95
TARGET_ROWS = 10**7
SWEEP = ((10, 10), (20, 5), (20, 10), (20, 20), (40, 10), (40, 20), (80, 20), (160, 20))
DISTRIBUTIONS = ("embedding_like", "sphere_clusters", "uniform")

FloatArray = npt.NDArray[np.float32]


# --- data ---------------------------------------------------------------------------------------------------
def normalise(x: npt.NDArray[np.floating]) -> FloatArray:
    """Rows scaled to unit length, float32."""
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def real_embeddings(seed: int, n_structures: int = 16, views: int = 40) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """``embed_particles`` of noiseless projections of simulated structures: (embeddings (n, 64), structure labels)."""
    rng = np.random.default_rng(seed)
    boxes, labels = [], []
    for structure in make_structures(n_structures, 150.0, seed):
        for angles in random_euler_angles_deg(rng, views):
            boxes.append(project_structure(structure, tuple(float(a) for a in angles), 112, 2.0))
            labels.append(structure.structure_id)
    return embed_particles(np.asarray(boxes, dtype=np.float32), n_features=DIMENSION), np.asarray(labels)


def distance_stats(vectors: FloatArray, labels: npt.NDArray[np.int64]) -> dict[str, float]:
    """Median cosine distances within / between labels and to the nearest other vector."""
    v = vectors.astype(np.float64)
    d = 1.0 - v @ v.T
    np.fill_diagonal(d, np.inf)
    same = labels[:, None] == labels[None, :]
    finite = np.isfinite(d)
    return {
        "within_structure_median": float(np.median(d[same & finite])),
        "between_structure_median": float(np.median(d[~same])),
        "nearest_neighbour_median": float(np.median(d.min(axis=1))),
        "n_vectors": len(v),
    }


def generator(kind: str, seed: int, real: FloatArray | None) -> Callable[[int], tuple[FloatArray, npt.NDArray]]:
    """A function n → (vectors, structure labels) for distribution ``kind`` (module docstring)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return lambda n: (normalise(rng.standard_normal((n, DIMENSION))), np.arange(n))
    if kind == "sphere_clusters":
        sigma = 0.0088

        def sphere(n: int) -> tuple[FloatArray, npt.NDArray]:
            centres = normalise(np.random.default_rng(seed + 1).standard_normal((max(1, n // VIEWS_PER_STRUCTURE), 64)))
            labels = rng.integers(0, len(centres), n)
            return normalise(centres[labels] + sigma * rng.standard_normal((n, DIMENSION))), labels

        return sphere
    assert kind == "embedding_like" and real is not None
    mean = real.astype(np.float64).mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(real.astype(np.float64).T))
    root = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))  # Σ^½ (any square root: z is isotropic)

    def embedding_like(n: int) -> tuple[FloatArray, npt.NDArray]:
        g = np.random.default_rng(seed + 1)
        centres = mean + math.sqrt(0.7) * g.standard_normal((max(1, n // VIEWS_PER_STRUCTURE), DIMENSION)) @ root.T
        labels = rng.integers(0, len(centres), n)
        out = np.empty((n, DIMENSION), np.float32)
        for s in range(0, n, 200_000):
            noise = rng.standard_normal((min(200_000, n - s), DIMENSION)) @ root.T
            out[s : s + len(noise)] = normalise(centres[labels[s : s + len(noise)]] + math.sqrt(0.3) * noise)
        return out, labels

    return embedding_like


def exact_top_k(library: FloatArray, queries: FloatArray, k: int = K) -> tuple[npt.NDArray, npt.NDArray]:
    """Exact cosine top-k (indices, distances) by float32 matmul over chunks of 100 queries (torch, 1 thread)."""
    lib = torch.from_numpy(library)
    indices, distances = [], []
    for s in range(0, len(queries), 100):
        similarity = torch.from_numpy(queries[s : s + 100]) @ lib.T
        top = torch.topk(similarity, k, dim=1)
        indices.append(top.indices.numpy())
        distances.append(1.0 - top.values.numpy())
    return np.concatenate(indices), np.concatenate(distances)


# --- measurements --------------------------------------------------------------------------------------------
def rss_bytes() -> dict[str, int]:
    """Current and peak resident set size of this process (bytes)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out["rss" if line.startswith("VmRSS") else "peak_rss"] = int(line.split()[1]) * 1024
    return out


def folder_bytes(folder: Path) -> dict[str, int]:
    """Bytes under a Lance table folder: data files, index files, everything else, total."""
    sizes = {"data": 0, "index": 0, "other": 0}
    for path in folder.rglob("*"):
        if path.is_file():
            top = path.relative_to(folder).parts[0]
            sizes["data" if top == "data" else "index" if top == "_indices" else "other"] += path.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


def global_index(entry_id: str, batch_rows: int) -> int:
    """Row number in the generated matrix of an entry ``"b{batch:05d}/{i}"``."""
    batch, i = entry_id.split("/")
    return int(batch[1:]) * batch_rows + int(i)


def run_queries(
    library: StructureLibrary, queries: FloatArray, truth: npt.NDArray, batch_rows: int, warmup: int = 20
) -> dict[str, Any]:
    """Single-vector ``nearest(k=10)`` per query: latency median / p95 (ms) and mean recall@10."""
    for q in queries[:warmup]:
        library.nearest(q[None], k=K)
    latencies, recalls = [], []
    for q, true in zip(queries, truth, strict=True):
        started = time.perf_counter()
        _, rows = library.nearest(q[None], k=K)
        latencies.append(1e3 * (time.perf_counter() - started))
        found = {global_index(hit.entry_id, batch_rows) for hit in rows[0]}
        recalls.append(len(found & set(true.tolist())) / K)
    return {
        "queries": len(queries),
        "median_ms": statistics.median(latencies),
        "p95_ms": float(np.percentile(latencies, 95)),
        "mean_ms": statistics.fmean(latencies),
        "recall_at_10": statistics.fmean(recalls),
        "min_recall_at_10": min(recalls),
    }


def run_distribution(kind: str, args: argparse.Namespace, real: FloatArray, scratch: Path) -> dict[str, Any]:
    """Build the library for one distribution, index it, and measure; the folder is deleted afterwards."""
    t0 = time.perf_counter()
    vectors, labels = generator(kind, args.seed, real)(args.rows + args.queries)
    library_vectors, queries = vectors[: args.rows], vectors[args.rows :]
    sample = np.random.default_rng(args.seed).choice(args.rows, size=min(2000, args.rows), replace=False)
    record: dict[str, Any] = {
        "distribution": kind,
        "rows": args.rows,
        "generate_s": time.perf_counter() - t0,
        "distance_stats_sample": distance_stats(library_vectors[sample], labels[sample]),
    }
    started = time.perf_counter()
    truth, truth_distances = exact_top_k(library_vectors, queries)
    record["exact_search_s"] = time.perf_counter() - started
    record["exact_nn_distance_median"] = float(np.median(truth_distances[:, 0]))
    record["exact_10th_distance_median"] = float(np.median(truth_distances[:, -1]))

    folder = scratch / kind
    library = StructureLibrary(uri=str(folder))
    rss_before = rss_bytes()
    started = time.perf_counter()
    for b, s in enumerate(range(0, args.rows, args.batch_rows)):
        chunk = library_vectors[s : s + args.batch_rows]
        library.bulk_append(
            chunk,
            [f"structure-{int(label)}" for label in labels[s : s + len(chunk)]],
            f"b{b:05d}",
            f"session_{b // 10:04d}",
            [None] * len(chunk),
            float(b),
        )
    record["bulk_append_s"] = time.perf_counter() - started
    record["compact_before_index"] = library.compact(cleanup_older_than_s=0.0)
    started = time.perf_counter()
    assert library.build_index(min_rows=0)
    record["index_build_s"] = time.perf_counter() - started
    record["index_parameters"] = library.index_parameters(args.rows, DIMENSION)
    record["compact_after_index"] = library.compact(cleanup_older_than_s=0.0)
    record["index_info"] = library.index_info()
    table_folder = folder / f"{library.table_name}.lance"
    record["disk_bytes"] = folder_bytes(table_folder)
    record["table_stats_total_bytes"] = int(
        lancedb.connect(str(folder)).open_table(library.table_name).stats()["total_bytes"]
    )

    record["chosen"] = run_queries(library, queries, truth, args.batch_rows)
    record["rss_before_library_bytes"] = rss_before["rss"]
    record["rss_after_queries_bytes"] = rss_bytes()["rss"]
    sweep = []
    for nprobes, refine in SWEEP:
        variant = StructureLibrary(uri=str(folder), nprobes=nprobes, refine_factor=refine)
        m = args.sweep_queries
        sweep.append(
            {
                "nprobes": nprobes,
                "refine_factor": refine,
                **run_queries(variant, queries[:m], truth[:m], args.batch_rows),
            }
        )
    record["sweep"] = sweep
    record["rss_after_sweep_bytes"] = rss_bytes()

    if kind == DISTRIBUTIONS[0]:
        record["incremental"] = incremental_check(library, kind, args, real)
    del library_vectors, vectors
    shutil.rmtree(folder, ignore_errors=True)
    record["seconds"] = time.perf_counter() - t0
    return record


def incremental_check(
    library: StructureLibrary, kind: str, args: argparse.Namespace, real: FloatArray
) -> dict[str, Any]:
    """A new 1000-row batch via ``add_embeddings`` (merge_insert) on the indexed table, found before and
    after ``compact()``, which adds it to the index."""
    fresh, _ = generator(kind, args.seed + 7, real)(1000)
    started = time.perf_counter()
    library.add_embeddings(fresh, ["new"] * 1000, "new_batch", "session_new", [None] * 1000, 1e9)
    add_s = time.perf_counter() - started
    unindexed = library.index_info()["unindexed_rows"]
    _, rows = library.nearest(fresh[:50], k=1)
    found_before = sum(r[0].entry_id == f"new_batch/{i}" for i, r in enumerate(rows))
    stats = library.compact(cleanup_older_than_s=0.0)
    _, rows = library.nearest(fresh[:50], k=1)
    found_after = sum(r[0].entry_id == f"new_batch/{i}" for i, r in enumerate(rows))
    return {
        "add_embeddings_1000_rows_s": add_s,
        "unindexed_rows_after_add": unindexed,
        "self_found_before_compact_of_50": found_before,
        "compact": stats,
        "self_found_after_compact_of_50": found_after,
        "index_info_after": library.index_info(),
    }


def projections_to_target(record: dict[str, Any]) -> dict[str, Any]:
    """Per-row bytes at the measured size and the 10⁷-row disk / memory figures, with their arithmetic.

    Disk scales with rows (vectors, metadata and PQ codes are per row; the IVF centroids are negligible).
    Memory: LanceDB keeps the opened index (PQ codes + row ids + centroids, the index files) in its cache:
    index bytes/row × 10⁷ is what a query process holds resident; the refine step reads refine_factor · k
    full rows per query from the data files (page cache, not required resident).  The RSS growth of this
    benchmark process (seeding + build + queries, Arrow / allocator memory not returned to the OS
    included) is given as an upper bound.
    """
    rows = record["rows"]
    disk = record["disk_bytes"]
    per_row = {k: disk[k] / rows for k in ("data", "index", "total")}
    rss_delta = max(0, record["rss_after_queries_bytes"] - record["rss_before_library_bytes"])
    return {
        "per_row_bytes": per_row,
        "rss_growth_per_row_bytes": rss_delta / rows,
        "disk_bytes_1e7": per_row["total"] * TARGET_ROWS,
        "memory_bytes_1e7": per_row["index"] * TARGET_ROWS,
        "memory_upper_bound_bytes_1e7": rss_delta / rows * TARGET_ROWS,
        "arithmetic": (
            f"disk: {per_row['total']:.0f} B/row ({per_row['data']:.0f} data incl. the 256 B float32 vector + "
            f"metadata, {per_row['index']:.0f} index) × 10⁷ = {per_row['total'] * TARGET_ROWS / 1e9:.2f} GB; "
            f"memory (index resident in LanceDB's cache): {per_row['index']:.0f} B/row × 10⁷ = "
            f"{per_row['index'] * TARGET_ROWS / 1e9:.2f} GB, plus page cache for the refine reads "
            f"(refine_factor·k rows per query); upper bound from this process's RSS growth over seeding, build "
            f"and queries: {rss_delta / rows:.0f} B/row × 10⁷ = {rss_delta / rows * TARGET_ROWS / 1e9:.2f} GB"
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = [
        f"# Structure-library ANN search, {result['rows']:,} rows × {DIMENSION}-d ({result['machine']})",
        "",
        f"Command: `{result['command']}`; lancedb {result['lancedb']}; goal: median ≤ {GOAL_MEDIAN_MS:g} ms and "
        f"recall@10 ≥ {GOAL_RECALL} (default parameters, {result['queries']} single-vector `nearest(k=10)` queries).",
        "",
        "| distribution | index | build s | median ms | p95 ms | recall@10 | disk MB | B/row | 10⁷ disk GB "
        "| 10⁷ index memory GB | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["distributions"]:
        c, p, ip = r["chosen"], r["projection_1e7"], r["index_parameters"]
        met = c["median_ms"] <= GOAL_MEDIAN_MS and c["recall_at_10"] >= GOAL_RECALL
        lines.append(
            f"| {r['distribution']} | IVF-PQ {ip['num_partitions']} part., {ip['num_sub_vectors']} codes, "
            f"nprobes {ip['nprobes']}, refine {ip['refine_factor']} | {r['index_build_s']:.1f} | {c['median_ms']:.2f} "
            f"| {c['p95_ms']:.2f} | {c['recall_at_10']:.4f} | {r['disk_bytes']['total'] / 1e6:.0f} "
            f"| {p['per_row_bytes']['total']:.0f} | {p['disk_bytes_1e7'] / 1e9:.2f} "
            f"| {p['memory_bytes_1e7'] / 1e9:.2f} "
            f"| {'met' if met else 'missed'} |"
        )
    lines += ["", f"Sweep ({result['sweep_queries']} queries each): median ms / p95 ms / recall@10", ""]
    header = "| nprobes | refine | " + " | ".join(r["distribution"] for r in result["distributions"]) + " |"
    lines += [header, "|---:|---:|" + "---|" * len(result["distributions"])]
    for j, (nprobes, refine) in enumerate(SWEEP):
        cells = [
            f"{r['sweep'][j]['median_ms']:.2f} / {r['sweep'][j]['p95_ms']:.2f} / {r['sweep'][j]['recall_at_10']:.3f}"
            for r in result["distributions"]
        ]
        lines.append(f"| {nprobes} | {refine} | " + " | ".join(cells) + " |")
    lines += ["", "10⁷ arithmetic:", ""]
    lines += [f"* {r['distribution']}: {r['projection_1e7']['arithmetic']}" for r in result["distributions"]]
    inc = next((r.get("incremental") for r in result["distributions"] if r.get("incremental")), None)
    if inc:
        lines += [
            "",
            f"Incremental: `add_embeddings` of 1000 rows into the indexed table "
            f"{inc['add_embeddings_1000_rows_s']:.2f} s; "
            f"self-match found {inc['self_found_before_compact_of_50']}/50 before and "
            f"{inc['self_found_after_compact_of_50']}/50 after `compact()` "
            f"({inc['compact']['seconds']:.1f} s, unindexed rows {inc['unindexed_rows_after_add']} → "
            f"{inc['compact']['unindexed_rows']}).",
        ]
    lines += ["", f"Real vs synthetic cosine-distance statistics: {json.dumps(result['real_embedding_stats'])}"]
    for r in result["distributions"]:
        lines.append(f"* {r['distribution']}: {json.dumps(r['distance_stats_sample'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="library vectors (default 10⁶)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out single-vector queries (≥ 1000)")
    parser.add_argument("--sweep-queries", type=int, default=300, help="queries per sweep setting")
    parser.add_argument("--batch-rows", type=int, default=10_000, help="rows per bulk_append batch")
    parser.add_argument("--distributions", nargs="+", default=list(DISTRIBUTIONS), choices=DISTRIBUTIONS)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the temporary tables")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    real, real_labels = real_embeddings(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="library_ann_", dir=args.scratch))
    records = []
    try:
        for kind in args.distributions:
            print(f"{kind}: {args.rows:,} rows …", flush=True)
            record = run_distribution(kind, args, real, scratch)
            record["projection_1e7"] = projections_to_target(record)
            records.append(record)
            c = record["chosen"]
            print(
                f"  build {record['index_build_s']:.1f} s, median {c['median_ms']:.2f} ms, p95 {c['p95_ms']:.2f} ms, "
                f"recall@10 {c['recall_at_10']:.4f}",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": args.rows,
        "queries": args.queries,
        "sweep_queries": args.sweep_queries,
        "k": K,
        "dimension": DIMENSION,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lancedb": lancedb.__version__,
        "torch_threads": torch.get_num_threads(),
        "goals": {"median_ms": GOAL_MEDIAN_MS, "recall_at_10": GOAL_RECALL},
        "real_embedding_stats": distance_stats(real, real_labels),
        "distributions": records,
    }
    result["runtime_seconds"] = time.perf_counter() - started
    name = "library_ann" if args.rows == 1_000_000 else f"library_ann_{args.rows}"
    table = markdown(result)
    out = write_results(name, result, table)
    print(table)
    print(f"wrote {out}; runtime {result['runtime_seconds']:.0f} s")


if __name__ == "__main__":
    main()
