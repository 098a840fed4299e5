"""The pipeline on a PostgreSQL-backed Dagster instance, over a real connection, in its own database.

Turned on by ``CRYODECON_TEST_POSTGRES_URL`` (``.ci/run`` sets it to the local server); skipped otherwise.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from cryodecon_assets.cli.instance import prepare_instance_home
from tests.assets.test_pipeline import run_pipeline, seed_session
from tests.conftest import POSTGRES_ADMIN_URL, pipeline_environment

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(
        not POSTGRES_ADMIN_URL, reason="set CRYODECON_TEST_POSTGRES_URL to run against a real PostgreSQL"
    ),
]


def test_pipeline_runs_on_a_postgres_instance(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    pipeline_environment(tmp_path, monkeypatch, max_batch_size=3)
    monkeypatch.setenv("CRYODECON_POSTGRES_URL", postgres_url)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = prepare_instance_home(tmp_path)
    assert "postgres" in (home / "dagster.yaml").read_text()
    seed_session(n_micrographs=2, n_movies=0, seed=11)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert run_pipeline(instance) == {"grid-00001": True}
        assert instance.get_materialized_partitions(dg.AssetKey("hyperscores")) == {"grid-00001"}
    # The runs and their events are rows in this database, seen over a fresh connection.
    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pipeline_name, count(*) FROM runs WHERE status = 'SUCCESS' GROUP BY 1 ORDER BY 1")
        assert cursor.fetchall() == [("process_batch", 1), ("session_dashboard_job", 1)]  # the batch, then its session
        cursor.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        (materializations,) = cursor.fetchone()
        assert materializations >= 8
