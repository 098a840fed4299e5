"""Batches on real Celery workers: the local RabbitMQ as broker, Redis as result backend, PostgreSQL as instance.

Two workers (``cryodecon workers``' commands: ``dagster-celery worker start`` on ``deploy/celery/celery.yaml``)
take the steps of ``process_batch`` runs that ``cryodecon tick`` orchestrates with ``CRYODECON_EXECUTOR=celery``,
as a run worker launched by the daemon would.  Turned on by ``CRYODECON_TEST_POSTGRES_URL`` (``.ci/run``) and
skipped with the reason when RabbitMQ or Redis does not answer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from cryodecon_assets.cli.instance import prepare_instance_home
from cryodecon_assets.cli.workers import WorkerSpec, purge_queues, start_worker, stop_worker, wait_until_ready
from cryodecon_assets.execution import CPU_QUEUE, GPU_QUEUE
from cryodecon_resources import resources_from_environment
from tests.assets.test_pipeline import seed_session
from tests.conftest import POSTGRES_ADMIN_URL, pipeline_environment

REPO = Path(__file__).resolve().parents[2]
CELERY_CONFIG = REPO / "deploy" / "celery" / "celery.yaml"
BROKER = os.environ.get("CRYODECON_TEST_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("CRYODECON_TEST_CELERY_BACKEND", "redis://127.0.0.1:6379/5")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(
        not POSTGRES_ADMIN_URL, reason="set CRYODECON_TEST_POSTGRES_URL to run against a real PostgreSQL"
    ),
    pytest.mark.skipif(not _answers(5672), reason="no RabbitMQ on 127.0.0.1:5672 (the Celery broker)"),
    pytest.mark.skipif(not _answers(6379), reason="no Redis on 127.0.0.1:6379 (the Celery result backend)"),
]


@dataclass
class Cluster:
    instance: dg.DagsterInstance
    home: Path
    workers: dict[str, subprocess.Popen[bytes]]
    environ: dict[str, str]

    def tick(self) -> subprocess.Popen[bytes]:
        """``cryodecon tick`` in its own process: the sensor's batches, each run orchestrated over Celery."""
        log = open(self.home / "tick.log", "ab")
        return subprocess.Popen(
            [sys.executable, "-m", "cryodecon_assets.cli.main", "tick", "--max-ticks", "3"],
            env=self.environ,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return (self.home / "tick.log").read_text(errors="replace")


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    pipeline_environment(tmp_path, monkeypatch, max_batch_size=2)
    monkeypatch.setenv("CRYODECON_POSTGRES_URL", postgres_url)
    home = prepare_instance_home(tmp_path)
    seed_session(n_micrographs=4, n_movies=0, seed=5)  # two batches of two
    for name, value in {
        "CRYODECON_EXECUTOR": "celery",
        "CRYODECON_CELERY_CONFIG": str(CELERY_CONFIG),
        "CRYODECON_CELERY_BROKER": BROKER,
        "CRYODECON_CELERY_BACKEND": BACKEND,
        "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    purge_queues(BROKER)  # steps an interrupted earlier run left on the broker
    environ = dict(os.environ)
    instance = dg.DagsterInstance.from_config(str(home))
    instance.event_log_storage.set_concurrency_slots("gpu", 2)  # one slot per GPU worker
    names = ("w1", "w2")
    workers = {
        name: start_worker(
            WorkerSpec(name, (CPU_QUEUE, GPU_QUEUE), 1, ""), CELERY_CONFIG, environ, tmp_path / f"{name}.log"
        )
        for name in names
    }
    try:
        wait_until_ready(CELERY_CONFIG, names, timeout_seconds=120, processes=workers)
        yield Cluster(instance, tmp_path, workers, environ)
    finally:
        for process in workers.values():
            stop_worker(process)
        instance.dispose()


def _step_executions(instance: dg.DagsterInstance) -> list[tuple[str, str, str]]:
    """(run id, step, worker name) of every 'Executing steps ... in celery worker' event."""
    executions = []
    for run in instance.get_runs(filters=dg.RunsFilter(job_name="process_batch")):
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            event = record.dagster_event
            if event is None or "Executing steps" not in (event.message or ""):
                continue
            metadata = event.engine_event_data.metadata
            worker = metadata["Celery worker"].value
            executions.append((run.run_id, str(event.step_key), str(worker).split("@")[0]))
    return executions


def _scored_micrographs() -> Counter[str]:
    warehouse = resources_from_environment()["warehouse"]
    table = warehouse.query("SELECT micrograph FROM hyperscores")  # type: ignore[attr-defined]
    return Counter(table["micrograph"])


def test_batches_run_on_two_celery_workers_and_every_exposure_is_scored_once(cluster: Cluster) -> None:
    tick = cluster.tick()
    assert tick.wait(timeout=480) == 0, cluster.log()
    assert "runs={'grid-00001': True, 'grid-00002': True}" in cluster.log()
    scored = _scored_micrographs()
    assert sorted(scored) == [f"grid_mic_{i:04d}" for i in range(4)]
    assert set(scored.values()) == {1}
    executions = _step_executions(cluster.instance)
    # Every step of both runs ran on a worker, once, and both workers took steps.
    per_step = Counter((run, step) for run, step, _ in executions)
    assert len(per_step) == 2 * 16 and set(per_step.values()) == {1}
    assert {worker for _, _, worker in executions} == {"w1", "w2"}
    for run in cluster.instance.get_runs(filters=dg.RunsFilter(job_name="process_batch")):
        assert run.status == dg.DagsterRunStatus.SUCCESS


def test_a_worker_killed_in_the_middle_of_a_step_hands_it_to_the_other(cluster: Cluster) -> None:
    """SIGKILL to the whole worker (Celery's main process and its pool child) while it runs a step: the
    step's message was not acknowledged (``task_acks_late``), RabbitMQ gives it to the other worker, the run
    completes and the warehouse holds each exposure once."""
    target = "evaluation_scores"  # the longest step of a small batch: the kill lands inside it
    killed: dict[str, str] = {}

    def kill_when_target_starts() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            for run_id, step, worker in _step_executions(cluster.instance):
                if step == target:
                    stop_worker(cluster.workers[worker], signal.SIGKILL, grace_seconds=5)
                    killed.update(run=run_id, worker=worker)
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_target_starts, daemon=True)
    watcher.start()
    tick = cluster.tick()
    assert tick.wait(timeout=480) == 0, cluster.log()
    watcher.join(timeout=5)
    assert killed, "the target step never started"
    survivor = ({"w1", "w2"} - {killed["worker"]}).pop()
    executions = _step_executions(cluster.instance)
    attempts = [worker for run, step, worker in executions if run == killed["run"] and step == target]
    assert attempts == [killed["worker"], survivor]  # started on the killed worker, run again on the other
    # The killed attempt did not finish: the step succeeded once.
    successes = [
        r
        for r in cluster.instance.all_logs(killed["run"], of_type=dg.DagsterEventType.STEP_SUCCESS)
        if r.dagster_event and r.dagster_event.step_key == target
    ]
    assert len(successes) == 1
    scored = _scored_micrographs()
    assert sorted(scored) == [f"grid_mic_{i:04d}" for i in range(4)] and set(scored.values()) == {1}
