"""Shared fixtures: RNG state saved/restored around each test, no Dagster instance state carried over, small MRC
helpers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_rng_state() -> Iterator[None]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    torch_state = torch.random.get_rng_state()
    yield
    np.random.set_state(np_state)
    random.setstate(py_state)
    torch.random.set_rng_state(torch_state)


@pytest.fixture(autouse=True)
def _no_instance_state_left_behind() -> Iterator[None]:
    """Dagster keeps the defs-state storage of the instance entered last in a context variable, and
    ``dg.instance_for_test`` leaves it set once its folder is gone: the next definitions load in this
    process then fails with "unable to open database file".  Each test starts without it."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pipeline_environment(home: Path, monkeypatch: pytest.MonkeyPatch, max_batch_size: int) -> None:
    """Point every resource at ``home``, with no settle delay and batches cut at once (tests drive ticks)."""
    monkeypatch.setenv("CRYODECON_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    monkeypatch.setenv("CRYODECON_SETTLE_SECONDS", "0")
    monkeypatch.setenv("CRYODECON_BATCH_WINDOW_SECONDS", "0")
    monkeypatch.setenv("CRYODECON_MAX_BATCH_SIZE", str(max_batch_size))
    monkeypatch.setenv("CRYODECON_DEVICE", "cpu")
    monkeypatch.setenv("CRYODECON_2D_CLASSES", "4")  # sessions of a few dozen particles
