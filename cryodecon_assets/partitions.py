"""Partitions: one dynamic partition per acquisition batch (see ``batching`` for the arithmetic)."""

from __future__ import annotations

import dagster as dg

acquisition_batches = dg.DynamicPartitionsDefinition(name="acquisition_batches")

# The daily summary is partitioned by calendar day (UTC), independent of the batches.  end_offset=1 makes
# today a partition too, so staff can summarise the day so far; the schedule summarises yesterday.
summary_days = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)

# The session dashboard is partitioned by session (``safe_session`` names, the prefix of its batch keys);
# the storage sensor registers a session when it cuts the session's batches.
SESSIONS = "acquisition_sessions"
acquisition_sessions = dg.DynamicPartitionsDefinition(name=SESSIONS)
