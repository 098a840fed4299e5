"""Which executor ``process_batch`` gets, and where its steps are sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryodecon_assets.execution import (
    CELERY_QUEUE_TAG,
    GPU_POOL,
    GPU_QUEUE,
    ExecutorConfigError,
    batch_executor,
    celery_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_in_process_by_default_and_celery_or_k8s_on_request() -> None:
    assert batch_executor({}).name == "in_process"
    celery = batch_executor(
        {"CRYODECON_EXECUTOR": "celery", "CRYODECON_CELERY_CONFIG": str(REPO / "deploy/celery/celery.yaml")}
    )
    assert celery.name == "celery_executor"
    assert batch_executor({"CRYODECON_EXECUTOR": "k8s"}).name == "k8s"  # dagster-k8s unconfigured


def test_the_deployed_celery_config_acknowledges_a_step_only_when_it_has_finished() -> None:
    config = celery_config(REPO / "deploy" / "celery" / "celery.yaml")
    assert config["config_source"]["task_acks_late"] is True
    assert config["config_source"]["task_reject_on_worker_lost"] is True
    assert config["backend"] == {"env": "CRYODECON_CELERY_BACKEND"}  # not rpc://, lost with a broker restart
    assert config["config_source"]["task_publish_retry_policy"]["max_retries"] >= 30  # waits out a restart


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CRYODECON_EXECUTOR": "multiprocess"}, "expected one of in_process, celery, k8s"),
        ({"CRYODECON_EXECUTOR": "celery"}, "needs CRYODECON_CELERY_CONFIG"),
        ({"CRYODECON_EXECUTOR": "celery", "CRYODECON_CELERY_CONFIG": "/nonexistent.yaml"}, "cannot read it"),
        ({"CRYODECON_EXECUTOR": "k8s", "CRYODECON_K8S_EXECUTOR_CONFIG": "{max_concurrent"}, "not JSON"),
    ],
)
def test_a_wrong_executor_setting_names_what_is_wrong(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ExecutorConfigError, match=message):
        batch_executor(environ)


def test_a_celery_file_that_is_not_yaml_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "celery.yaml"
    path.write_text("execution: {config: [broker\n  - !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ExecutorConfigError, match=f"{path}: not YAML"):
        celery_config(path)


def test_a_celery_file_without_the_execution_block_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "celery.yaml"
    path.write_text("broker: pyamqp://localhost//\n")
    with pytest.raises(ExecutorConfigError, match="expected execution: config:"):
        celery_config(path)


def test_every_gpu_pool_step_goes_to_the_gpu_queue_and_no_other_does() -> None:
    from cryodecon_assets.definitions import process_batch_job

    nodes = process_batch_job().nodes
    assert {n.name for n in nodes if n.definition.pool == GPU_POOL} == {
        n.name for n in nodes if n.definition.tags.get(CELERY_QUEUE_TAG) == GPU_QUEUE
    }
    assert all(CELERY_QUEUE_TAG not in n.definition.tags for n in nodes if n.definition.pool != GPU_POOL)
