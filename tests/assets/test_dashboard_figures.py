"""The dashboard's figures from known rows: stage positions when recorded, acquisition time when known, accept
rates per batch, and a page that names nothing outside itself."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cryodecon_assets.facility.dashboard_figures import (
    accept_rate_per_batch,
    check_self_contained,
    grid_map_figure,
    grid_positions,
    time_axis,
)


def rows(**columns: list[object]) -> pd.DataFrame:
    base: dict[str, list[object]] = {
        "batch": ["s-00001", "s-00001", "s-00002"],
        "accepted": [True, False, None],
        "hyperscore": [120.0, 90.0, 130.0],
        "grid_square": ["1", "1", "2"],
        "foil_hole": ["10", "11", "20"],
        "stage_x_um": [None, None, None],
        "stage_y_um": [None, None, None],
        "acquired_at_s": [None, None, None],
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_the_grid_map_uses_stage_positions_when_every_exposure_has_one() -> None:
    measured = rows(stage_x_um=[-120.5, 35.0, 410.25], stage_y_um=[88.0, -12.5, 300.0])
    x, y, is_measured = grid_positions(measured)
    assert is_measured
    np.testing.assert_allclose(x, [-120.5, 35.0, 410.25])
    np.testing.assert_allclose(y, [88.0, -12.5, 300.0])
    assert "stage x" in grid_map_figure(measured).axes[0].get_xlabel()
    x, y, is_measured = grid_positions(rows(stage_x_um=[1.0, None, 2.0], stage_y_um=[1.0, 2.0, 3.0]))
    assert not is_measured  # one missing: the schematic from the EPU ids, never a partial map
    assert x[0] != x[2]  # two grid squares apart


def test_trends_run_on_acquisition_time_when_known() -> None:
    x, label = time_axis(rows(acquired_at_s=[1000.0, 1060.0, 1300.0]))
    np.testing.assert_allclose(x, [0.0, 1.0, 5.0])
    assert "minutes" in label
    x, label = time_axis(rows())
    np.testing.assert_allclose(x, [0.0, 1.0, 2.0])
    assert "order" in label


def test_accept_rate_counts_decided_exposures_per_batch() -> None:
    table = accept_rate_per_batch(rows())
    assert table["batch"].tolist() == ["s-00001", "s-00002"]
    assert table["accepted"].tolist() == [1, 0] and table["decided"].tolist() == [2, 0]
    assert table["accept_rate"].iloc[0] == 0.5 and np.isnan(table["accept_rate"].iloc[1])


def test_a_page_that_reaches_outside_itself_is_caught() -> None:
    assert check_self_contained('<img src="data:image/png;base64,AAAA"><a href="#trends">') == []
    assert check_self_contained('<img src="https://x/y.png"><div style="background: url(a.png)">') == [
        "https://x/y.png",
        "a.png",
    ]
