"""Where ``process_batch`` runs its steps: in the run's own process, on Celery workers, or as Kubernetes jobs.

``CRYODECON_EXECUTOR`` picks the executor when the code location loads (the daemon's run workers and the
Celery workers load the same code with the same environment):

* ``in_process`` (default): one batch, one process, as ``cryodecon demo`` runs it;
* ``celery``: each step of the run is a Celery task (``dagster-celery``) on the broker named in the YAML file
  ``CRYODECON_CELERY_CONFIG`` (the executor's config block: ``broker``, ``backend``, ``config_source``; the
  workers start from the same file, ``deploy/celery/celery.yaml``).  Steps in the ``gpu`` pool go to the
  ``gpu`` queue, the rest to ``dagster``, Celery's default queue for dagster-celery;
* ``k8s``: each step a Kubernetes job (``dagster-k8s``'s ``k8s_job_executor``, configured by the JSON in
  ``CRYODECON_K8S_EXECUTOR_CONFIG``; the Helm values in ``deploy/helm/``); a ``gpu`` step asks for one
  ``nvidia.com/gpu`` on a GPU node.

A step is one asset for the whole batch (every micrograph of it), so a worker that has imported torch once
spends the seconds of that import on dozens of exposures, not on each.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

EXECUTOR_ENV = "CRYODECON_EXECUTOR"
CELERY_CONFIG_ENV = "CRYODECON_CELERY_CONFIG"
K8S_EXECUTOR_CONFIG_ENV = "CRYODECON_K8S_EXECUTOR_CONFIG"
EXECUTORS = ("in_process", "celery", "k8s")

GPU_POOL = "gpu"
GPU_QUEUE = "gpu"
CPU_QUEUE = "dagster"  # dagster-celery's task_default_queue

CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"

# Op tags of every asset in the ``gpu`` pool: its Celery queue and, as a Kubernetes job, one GPU.
GPU_STEP_TAGS: Mapping[str, Any] = {
    CELERY_QUEUE_TAG: GPU_QUEUE,
    K8S_CONFIG_TAG: {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
        # GPU nodes carry NVIDIA's feature-discovery label and are usually tainted for GPU work only.
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
}


class ExecutorConfigError(ValueError):
    """``CRYODECON_EXECUTOR`` or the Celery config file it needs is wrong; the message names which."""


def celery_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The Celery executor config block, ``execution: config:`` of a YAML file (the shape and the file that
    ``dagster-celery worker start -y`` reads)."""
    file = Path(path)
    try:
        config = yaml.safe_load(file.read_text())
    except OSError as error:
        raise ExecutorConfigError(f"{CELERY_CONFIG_ENV}={file}: cannot read it ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise ExecutorConfigError(f"{CELERY_CONFIG_ENV}={file}: not YAML ({error})") from error
    block = config.get("execution", {}).get("config") if isinstance(config, dict) else None
    if not isinstance(block, dict):
        raise ExecutorConfigError(
            f"{CELERY_CONFIG_ENV}={file}: expected execution: config: (broker, backend, config_source)"
        )
    return block


def batch_executor(environ: Mapping[str, str] = os.environ) -> dg.ExecutorDefinition:
    """The executor of ``process_batch`` for this environment."""
    kind = environ.get(EXECUTOR_ENV, "in_process").strip() or "in_process"
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor

        path = environ.get(CELERY_CONFIG_ENV)
        if not path:
            raise ExecutorConfigError(
                f"{EXECUTOR_ENV}=celery needs {CELERY_CONFIG_ENV} (e.g. deploy/celery/celery.yaml)"
            )
        return celery_executor.configured(celery_config(path), name="celery_executor")
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as error:
            raise ExecutorConfigError(f"{EXECUTOR_ENV}=k8s needs dagster-k8s: pip install 'cryodecon[k8s]'") from error
        raw = environ.get(K8S_EXECUTOR_CONFIG_ENV, "").strip()
        if not raw:
            return k8s_job_executor
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ExecutorConfigError(f"{K8S_EXECUTOR_CONFIG_ENV}: not JSON ({error})") from error
        return k8s_job_executor.configured(config, name="k8s_job_executor")
    raise ExecutorConfigError(f"{EXECUTOR_ENV}={kind!r}: expected one of {', '.join(EXECUTORS)}")
