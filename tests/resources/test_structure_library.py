"""StructureLibrary on a temporary LanceDB folder: add, nearest, idempotent re-add, filters, calibration."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cryodecon_resources.structure_library import REFERENCE_BATCH_KEY, StructureLibrary

DIMENSION = 16


def unit_vectors(n: int, seed: int) -> npt.NDArray[np.float32]:
    vectors = np.random.default_rng(seed).normal(size=(n, DIMENSION))
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture
def library(tmp_path: Path) -> StructureLibrary:
    return StructureLibrary(uri=str(tmp_path / "library"))


def add(library: StructureLibrary, batch: str, vectors: npt.NDArray[np.float32], registered_s: float) -> int:
    n = len(vectors)
    return library.add_embeddings(
        vectors,
        structure_ids=[f"{batch}-particle-{i}" for i in range(n)],
        batch_key=batch,
        session="session_01",
        paper_ids=[f"paper-{batch}" if i % 2 == 0 else None for i in range(n)],
        registered_before_s=registered_s,
    )


def test_empty_library(library: StructureLibrary) -> None:
    assert library.count() == 0
    distances, rows = library.nearest(unit_vectors(2, 0), k=3)
    assert distances.shape == (2, 3) and np.all(np.isinf(distances))
    assert rows == [(), ()]
    assert library.library_nn_distances().size == 0
    assert library.build_index() is False


def test_add_and_nearest(library: StructureLibrary) -> None:
    b1, b2 = unit_vectors(5, 1), unit_vectors(3, 2)
    assert add(library, "b1", b1, 100.0) == 5
    add(library, "b2", b2, 200.0)
    assert library.count() == 8
    distances, rows = library.nearest(b1[[2]], k=2)
    assert rows[0][0].entry_id == "b1/2"
    assert rows[0][0].structure_id == "b1-particle-2" and rows[0][0].paper_id == "paper-b1"
    assert rows[0][1].paper_id is None or rows[0][1].entry_id != "b1/2"
    assert distances[0, 0] == pytest.approx(0.0, abs=1e-5)
    # Cosine distance: 1 − cos, checked against numpy for the second neighbour.
    everything = np.concatenate([b1, b2]).astype(np.float64)
    expected = np.sort(1.0 - everything @ b1[2].astype(np.float64))[:2]
    np.testing.assert_allclose(distances[0], expected, atol=1e-5)
    assert distances[0, 0] <= distances[0, 1]


def test_re_adding_a_batch_is_idempotent(library: StructureLibrary) -> None:
    add(library, "b1", unit_vectors(5, 1), 100.0)
    add(library, "b2", unit_vectors(3, 2), 200.0)
    add(library, "b1", unit_vectors(5, 1), 100.0)
    assert library.count() == 8
    add(library, "b1", unit_vectors(2, 7), 100.0)  # a shorter rerun leaves no stale rows
    assert library.count() == 5
    _, rows = library.nearest(unit_vectors(2, 7), k=1)
    assert [r[0].entry_id for r in rows] == ["b1/0", "b1/1"]
    library.add_embeddings(np.zeros((0, DIMENSION)), [], "b1", "session_01", [], 100.0)
    assert library.count() == 3


def test_before_s_and_exclude_batch_filters(library: StructureLibrary) -> None:
    b1, b2 = unit_vectors(5, 1), unit_vectors(3, 2)
    add(library, "b1", b1, 100.0)
    add(library, "b2", b2, 200.0)
    _, rows = library.nearest(b2, k=8, before_s=150.0)
    assert all(hit.batch_key == "b1" for hits in rows for hit in hits)
    assert all(len(hits) == 5 for hits in rows)
    distances, rows = library.nearest(b2, k=8, exclude_batch="b2")
    assert all(hit.batch_key == "b1" for hits in rows for hit in hits)
    assert np.all(np.isinf(distances[:, 5:]))  # fewer than k qualify
    _, rows = library.nearest(b2, k=8, before_s=200.0)  # strictly before
    assert all(hit.batch_key == "b1" for hits in rows for hit in hits)
    distances, rows = library.nearest(b1, k=1, before_s=100.0)
    assert rows == [()] * 5 and np.all(np.isinf(distances))


def test_reference_structures_and_calibration(library: StructureLibrary) -> None:
    references = unit_vectors(4, 3)
    library.seed_reference_structures(references, [f"EMD-{i}" for i in range(4)], ["p0", "p1", "p2", "p3"])
    _, rows = library.nearest(references[[1]], k=1, before_s=1.0)
    assert rows[0][0].batch_key == REFERENCE_BATCH_KEY and rows[0][0].structure_id == "EMD-1"
    # References only: each one's distance to its nearest *other* reference.
    gram = 1.0 - references.astype(np.float64) @ references.T.astype(np.float64)
    np.fill_diagonal(gram, np.inf)
    np.testing.assert_allclose(np.sort(library.library_nn_distances()), np.sort(gram.min(axis=1)), atol=1e-5)
    # A batch with two near-identical particles: their distance to each other does not count.
    base = unit_vectors(1, 9)[0]
    twin = base + 1e-3 * unit_vectors(1, 10)[0]
    add(library, "b1", np.stack([base, twin / np.linalg.norm(twin)]), 100.0)
    calibration = library.library_nn_distances()
    assert calibration.size == 6
    assert calibration.min() > 1e-3
    sampled = library.library_nn_distances(sample=3, seed=1)
    assert sampled.size == 3


def test_invalid_input(library: StructureLibrary) -> None:
    add(library, "b1", unit_vectors(2, 1), 100.0)
    with pytest.raises(ValueError, match="16-d"):
        library.add_embeddings(np.ones((1, 8), np.float32), ["x"], "b2", "s", [None], 0.0)
    with pytest.raises(ValueError, match="batch_key"):
        add(library, "b1'; DROP", unit_vectors(1, 1), 0.0)
    with pytest.raises(ValueError):
        library.nearest(unit_vectors(1, 1), exclude_batch="x' OR '1'='1")
    with pytest.raises(ValueError):
        library.add_embeddings(unit_vectors(2, 1), ["only one"], "b3", "s", [None, None], 0.0)


def test_concurrent_writers_do_not_lose_or_duplicate_rows(library: StructureLibrary) -> None:
    def write(i: int) -> int:
        writer = StructureLibrary(uri=library.uri)  # its own connection, as a separate process would have
        return add(writer, f"batch_{i % 4}", unit_vectors(3, i % 4), float(i))

    add(library, "seed_batch", unit_vectors(1, 99), 0.0)  # create the table first
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(write, range(8))) == [3] * 8  # every batch written twice
    assert library.count() == 1 + 4 * 3


def test_retry_only_on_commit_conflicts(library: StructureLibrary) -> None:
    calls = []

    def conflicting() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Commit conflict for version 8: there was a concurrent commit")
        return "done"

    assert library._retrying(conflicting) == "done" and len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("disk full")

    calls.clear()
    with pytest.raises(RuntimeError, match="disk full"):
        library._retrying(broken)
    assert len(calls) == 1


# --- ANN index and maintenance -------------------------------------------------------------------------------


def clustered_vectors(n: int, n_clusters: int, seed: int) -> npt.NDArray[np.float32]:
    """Unit vectors around ``n_clusters`` random centres (cosine distance to the centre ≈ 0.02)."""
    rng = np.random.default_rng(seed)
    centres = unit_vectors(n_clusters, seed + 1000)
    vectors = centres[rng.integers(0, n_clusters, n)] + 0.05 * rng.normal(size=(n, DIMENSION))
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture
def indexed_library(tmp_path: Path) -> tuple[StructureLibrary, dict[str, npt.NDArray[np.float32]]]:
    """3000 clustered rows in three batches (registered at 100, 200, 300 s) with an IVF-PQ index (6 partitions)."""
    library = StructureLibrary(uri=str(tmp_path / "library"), index_partition_rows=500, nprobes=3)
    batches = {f"b{i}": clustered_vectors(1000, 40, seed=i) for i in range(3)}
    for i, (batch, vectors) in enumerate(batches.items()):
        add(library, batch, vectors, 100.0 * (i + 1))
    assert library.index_info() == {"indexed": False, "rows": 3000}
    assert library.build_index(min_rows=5000) is False
    assert library.build_index(min_rows=1000) is True
    return library, batches


def test_index_is_built_and_reported(
    indexed_library: tuple[StructureLibrary, dict[str, npt.NDArray[np.float32]]],
) -> None:
    library, _ = indexed_library
    info = library.index_info()
    assert info["indexed"] is True and info["index_type"] == "IVF_PQ" and info["distance_type"] == "cosine"
    assert info["rows"] == info["indexed_rows"] == 3000 and info["unindexed_rows"] == 0
    assert info["num_sub_vectors"] == DIMENSION // 4 and info["nprobes"] == 3
    assert library.index_parameters(3000, DIMENSION)["num_partitions"] == 6
    defaults = StructureLibrary(uri=library.uri)  # 4096 rows per partition, d/4 codes, 20 probes, refine ×10
    assert defaults.index_parameters(10**6, 64) == {
        "num_partitions": 245,
        "num_sub_vectors": 16,
        "nprobes": 20,
        "refine_factor": 10,
    }
    assert defaults.index_parameters(10**6, 12)["num_sub_vectors"] == 3


def test_indexed_search_finds_duplicates_and_keeps_filters(
    indexed_library: tuple[StructureLibrary, dict[str, npt.NDArray[np.float32]]],
) -> None:
    library, batches = indexed_library
    queries = batches["b1"][:20]
    distances, rows = library.nearest(queries, k=5)
    assert [hits[0].entry_id for hits in rows] == [f"b1/{i}" for i in range(20)]
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-5)  # refine: exact distances
    assert np.all(np.diff(distances, axis=1) >= -1e-7)
    # Recall against exact search over all rows.
    everything = np.concatenate(list(batches.values())).astype(np.float64)
    exact = np.sort(1.0 - queries.astype(np.float64) @ everything.T, axis=1)[:, :5]
    assert np.mean(np.abs(distances - exact) < 1e-5) >= 0.95
    _, rows = library.nearest(queries, k=5, exclude_batch="b1")
    assert all(hit.batch_key != "b1" for hits in rows for hit in hits) and all(len(h) == 5 for h in rows)
    _, rows = library.nearest(queries, k=5, before_s=150.0)
    assert all(hit.batch_key == "b0" for hits in rows for hit in hits) and all(len(h) == 5 for h in rows)
    assert library.library_nn_distances(sample=200).size == 200


@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\)")
def test_rows_added_after_the_index_are_found_and_compact_indexes_them(
    indexed_library: tuple[StructureLibrary, dict[str, npt.NDArray[np.float32]]],
) -> None:
    library, batches = indexed_library
    fresh = clustered_vectors(50, 5, seed=77)
    library.bulk_append(fresh, [f"new-{i}" for i in range(50)], "b_new", "session_02", [None] * 50, 400.0)
    with pytest.raises(ValueError, match="already has rows"):
        library.bulk_append(fresh, [f"new-{i}" for i in range(50)], "b_new", "session_02", [None] * 50, 400.0)
    assert library.index_info()["unindexed_rows"] == 50
    probe = np.concatenate([fresh[:5], batches["b2"][:5]])
    before_distances, before_rows = library.nearest(probe, k=3)
    assert [hits[0].entry_id for hits in before_rows[:5]] == [f"b_new/{i}" for i in range(5)]
    stats = library.compact(cleanup_older_than_s=0.0)
    assert stats["rows"] == 3050 == library.count()
    assert stats["fragments_after"] < stats["fragments_before"]
    assert stats["versions_pruned"] > 0 and stats["unindexed_rows"] == 0
    assert library.index_info()["indexed_rows"] == 3050
    after_distances, after_rows = library.nearest(probe, k=3)
    # Each probe still finds itself first, at the same exact (refined) distance.
    assert [hits[0].entry_id for hits in after_rows] == [hits[0].entry_id for hits in before_rows]
    np.testing.assert_allclose(after_distances[:, 0], before_distances[:, 0], atol=1e-6)
    # The rest is approximate (IVF-PQ now covers the new rows, which were searched flat before): recall
    # against exact search over all 3050 rows, as for the first index, not identity of every neighbour.
    everything = np.concatenate([*batches.values(), fresh]).astype(np.float64)
    exact = np.sort(1.0 - probe.astype(np.float64) @ everything.T, axis=1)[:, :3]
    assert np.mean(np.abs(after_distances - exact) < 1e-5) >= 0.9


def test_compact_without_table_and_without_index(library: StructureLibrary) -> None:
    assert library.compact()["rows"] == 0
    add(library, "b1", unit_vectors(5, 1), 100.0)
    add(library, "b1", unit_vectors(5, 2), 100.0)
    stats = library.compact()
    assert stats["rows"] == 5 and stats["unindexed_rows"] == 0 and stats["versions_pruned"] == 0
    assert library.index_info() == {"indexed": False, "rows": 5}


def test_a_rerun_is_calibrated_on_the_library_its_first_run_saw(library: StructureLibrary) -> None:
    """Novelty of a rerun must not move because batches were registered since (or rows were rewritten)."""
    add(library, "b1", unit_vectors(30, 1), 100.0)
    add(library, "b2", unit_vectors(30, 2), 200.0)
    first = library.library_nn_distances(sample=20, before_s=300.0)
    add(library, "b3", unit_vectors(30, 3), 400.0)  # cut after the batch being rerun
    add(library, "b1", unit_vectors(30, 1), 100.0)  # an earlier batch rerun: same rows, new physical order
    library.compact()
    again = library.library_nn_distances(sample=20, before_s=300.0)
    np.testing.assert_array_equal(np.sort(first), np.sort(again))
    assert first.size == 20
    assert library.library_nn_distances(sample=20).size == 20  # without a time: the whole library
