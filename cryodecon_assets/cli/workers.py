"""``cryodecon workers``: start a node's Celery workers for ``CRYODECON_EXECUTOR=celery``.

One worker per GPU, each seeing only its device (``CUDA_VISIBLE_DEVICES=<id>``) and taking one step at a time
from the ``gpu`` queue, so a node with four GPUs runs four GPU steps at once and never two on one device; CPU
workers take the ``dagster`` queue (ingestion, scores, warehouse writes).  Every worker is
``dagster-celery worker start`` on the same config file as the code location (``CRYODECON_CELERY_CONFIG``),
each in its own process group so that it can be stopped (or killed) whole.  On a CPU-only node,
``--gpu-workers N`` starts N workers on the ``gpu`` queue without a device.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryodecon_assets.execution import CELERY_CONFIG_ENV, CPU_QUEUE, GPU_QUEUE, celery_config


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    queues: tuple[str, ...]
    concurrency: int
    cuda_visible_devices: str | None  # None: the node's own setting; "" hides every GPU


def node_workers(gpus: Sequence[str], gpu_workers: int, cpu_workers: int, cpu_concurrency: int) -> list[WorkerSpec]:
    """One worker per listed GPU id (or ``gpu_workers`` device-less ones), then ``cpu_workers`` CPU workers."""
    host = socket.gethostname().split(".")[0]
    specs = [WorkerSpec(f"gpu{gpu}-{host}", (GPU_QUEUE,), 1, gpu) for gpu in gpus]
    specs += [WorkerSpec(f"gpu{i}-{host}", (GPU_QUEUE,), 1, "") for i in range(gpu_workers if not gpus else 0)]
    specs += [WorkerSpec(f"cpu{i}-{host}", (CPU_QUEUE,), cpu_concurrency, "") for i in range(cpu_workers)]
    return specs


def worker_command(spec: WorkerSpec, config_path: str | os.PathLike[str]) -> list[str]:
    executable = Path(sys.executable).with_name("dagster-celery")
    command = [str(executable) if executable.exists() else (shutil.which("dagster-celery") or "dagster-celery")]
    command += ["worker", "start", "-A", "dagster_celery.app", "-y", str(config_path), "-n", spec.name]
    # One -q with the queues comma-separated: Celery 5's worker keeps only the last of several -Q.
    command += ["-q", ",".join(spec.queues)]
    return [*command, "--", f"--concurrency={spec.concurrency}", "--without-gossip", "--without-mingle"]


def start_worker(
    spec: WorkerSpec, config_path: str | os.PathLike[str], environ: Mapping[str, str], log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start one worker in its own process group (stop it with ``stop_worker``)."""
    env = dict(environ)
    if spec.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.cuda_visible_devices
    env.setdefault("OMP_NUM_THREADS", "1")
    # dagster-celery execs `celery` by name: the one beside this interpreter (a venv not on PATH).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    out = open(log_path, "ab") if log_path else None  # None: the worker writes to this terminal
    return subprocess.Popen(
        worker_command(spec, config_path), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_worker(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_seconds: float = 20.0) -> None:
    """Signal the worker's process group (the CLI, Celery's main process and its pool children)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:  # the group outlives the CLI until Celery's processes are gone
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)


def purge_queues(broker_url: str, queues: Sequence[str] = (CPU_QUEUE, GPU_QUEUE)) -> None:
    """Drop the steps waiting on the queues (left by an interrupted run: they would run on the next workers)."""
    from kombu import Connection

    with Connection(broker_url) as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except Exception:
                pass
            finally:
                if channel.is_open:
                    channel.close()


def wait_until_ready(
    config_path: str | os.PathLike[str],
    names: Sequence[str],
    timeout_seconds: float,
    processes: Mapping[str, subprocess.Popen[bytes]] | None = None,
) -> set[str]:
    """Ping until every named worker answers; returns the answering names (``name@host``).  Fails at once when
    one of ``processes`` (the workers' CLIs, by name) has exited."""
    from celery import Celery
    from dagster._config import post_process_config
    from dagster_celery import celery_executor

    config_type = celery_executor.config_schema.config_type
    assert config_type is not None
    config = post_process_config(config_type, celery_config(config_path)).value or {}
    app = Celery("cryodecon-ping", broker=config["broker"], backend=config.get("backend"))
    wanted = set(names)
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        exited = [name for name, p in (processes or {}).items() if p.poll() is not None]
        if exited:
            raise RuntimeError(f"Celery workers exited before answering: {exited} (see their logs)")
        for reply in app.control.ping(timeout=1.0) or []:
            seen.update(name for name in reply if name.split("@")[0] in wanted)
        if {name.split("@")[0] for name in seen} >= wanted:
            return seen
    raise TimeoutError(f"Celery workers not answering after {timeout_seconds:.0f} s: {sorted(wanted - seen)}")


def cmd_workers(args: argparse.Namespace) -> int:
    config_path = os.environ.get(CELERY_CONFIG_ENV)
    if not config_path:
        print(f"cryodecon workers: set {CELERY_CONFIG_ENV} (e.g. deploy/celery/celery.yaml)", file=sys.stderr)
        return 2
    import dagster as dg

    # Each worker's CLI opens the instance: create its storage once here, not from several processes at once.
    with dg.DagsterInstance.get():
        pass
    gpus = [g for g in (args.gpus or "").split(",") if g]
    specs = node_workers(gpus, args.gpu_workers, args.cpu_workers, args.cpu_concurrency)
    processes = {spec.name: start_worker(spec, config_path, os.environ) for spec in specs}
    ready = wait_until_ready(config_path, list(processes), args.startup_seconds, processes)
    print(f"workers ready: {', '.join(sorted(ready))}", flush=True)
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stopping and all(p.poll() is None for p in processes.values()):
        time.sleep(1.0)
    for process in processes.values():
        stop_worker(process)
    return 0 if stopping else 1
