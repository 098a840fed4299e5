"""Operating faults a soak found: a killed run's GPU slot, the operator's instance file, bad CLI usage."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.monitoring import concurrency

from cryodecon_assets.cli.instance import InstanceFileError, prepare_instance_home

CLI = str(Path(sys.executable).parent / "cryodecon")


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("CRYODECON_POSTGRES_URL", raising=False)
    return tmp_path


def test_a_killed_run_frees_its_gpu_slot_and_is_retried(fresh_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run worker killed mid-step never releases its ``gpu`` slot itself; the instance must free it once
    the run is marked failed, or every later run waits at its first GPU step for ever."""
    home = prepare_instance_home(fresh_home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries >= 1
        assert not instance.run_retries_retry_on_asset_or_op_failure
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        killed = create_run_for_test(instance, job_name="process_batch")
        storage.claim_concurrency_slot("gpu", killed.run_id, "ctf_estimates")
        # The code server notices the dead worker and marks the run failed; the slot is still held.
        instance.report_run_failed(killed)
        waiting = create_run_for_test(instance, job_name="process_batch")
        assert not storage.claim_concurrency_slot("gpu", waiting.run_id, "ctf_estimates").is_claimed
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
        monkeypatch.setattr(concurrency, "get_current_datetime", lambda: later)
        list(concurrency.execute_concurrency_slots_iteration(SimpleNamespace(instance=instance), logging.getLogger()))
        assert storage.claim_concurrency_slot("gpu", waiting.run_id, "ctf_estimates").is_claimed


def test_an_existing_instance_file_is_the_operators_and_is_never_rewritten(fresh_home: Path) -> None:
    home = fresh_home / "dagster_home"
    home.mkdir()
    operator_file = "storage:\n  sqlite:\n    base_dir: /data/dagster\nrun_monitoring:\n  enabled: true\n"
    (home / "dagster.yaml").write_text(operator_file)
    prepare_instance_home(fresh_home)
    assert (home / "dagster.yaml").read_text() == operator_file


def test_a_postgres_url_with_an_instance_file_on_sqlite_is_refused(
    fresh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fresh_home / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("run_monitoring:\n  enabled: true\n")
    monkeypatch.setenv("CRYODECON_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(InstanceFileError, match="CRYODECON_POSTGRES_URL is set"):
        prepare_instance_home(fresh_home)
    assert (home / "dagster.yaml").read_text() == "run_monitoring:\n  enabled: true\n"


def test_a_new_instance_file_gets_the_postgres_block_when_asked(
    fresh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYODECON_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")
    text = (prepare_instance_home(fresh_home) / "dagster.yaml").read_text()
    assert "postgres_url:\n      env: CRYODECON_POSTGRES_URL" in text and "free_slots_after_run_end_seconds" in text
    prepare_instance_home(fresh_home)  # the file it wrote now passes its own check


def test_reprocess_of_an_unknown_batch_is_bad_usage_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DAGSTER_HOME", "CRYODECON_POSTGRES_URL"}}
    env["CRYODECON_HOME"] = str(tmp_path)
    completed = subprocess.run([CLI, "reprocess", "nosuch-00001"], capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 2, completed.stderr
    assert "no batch 'nosuch-00001'" in completed.stderr and "Traceback" not in completed.stderr
