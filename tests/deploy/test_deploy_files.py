"""The multi-machine instance file and the Celery config in deploy/ against Dagster's own config schemas."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_deployed_instance_file_is_valid_and_shares_postgres(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert "postgres" in config["storage"]  # SQLite cannot be shared between machines
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]


def test_a_broken_instance_file_is_refused(tmp_path: Path) -> None:
    broken = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    broken["concurrency"]["runs"]["max_concurrent_runs"] = "eight"
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_the_celery_file_is_valid_for_the_executor_and_the_worker_cli() -> None:
    from dagster._config import validate_config
    from dagster_celery import celery_executor
    from dagster_celery.cli import get_config_value_from_yaml

    block = get_config_value_from_yaml(str(DEPLOY / "celery" / "celery.yaml"))  # the workers' reading
    assert block["config_source"]["task_acks_late"] is True
    assert validate_config(celery_executor.config_schema.config_type, block).success


def test_each_gpu_worker_unit_sees_one_device_and_takes_one_step_at_a_time() -> None:
    unit = (DEPLOY / "systemd" / "cryodecon-gpu-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in unit
    assert "-q gpu -- --concurrency=1" in unit
    assert "Restart=always" in unit
