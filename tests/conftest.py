"""Shared fixtures: RNG state saved/restored around each test, no Dagster instance state carried over, small MRC
helpers."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import numpy as np
import pytest
import torch

POSTGRES_ADMIN_URL = os.environ.get("CRYODECON_TEST_POSTGRES_URL")


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


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the server of ``CRYODECON_TEST_POSTGRES_URL``, dropped afterwards."""
    import psycopg2

    assert POSTGRES_ADMIN_URL
    name = f"cryodecon_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    parsed = urlparse(POSTGRES_ADMIN_URL)
    try:
        yield urlunparse(parsed._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
