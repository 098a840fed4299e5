"""Figures of the session dashboard: pure functions of a per-exposure frame, drawn with matplotlib (Agg).

The frame (``session_dashboard.session_frame``) has one row per exposure, in acquisition order, with the
columns of ``COLUMNS``; any of the measured columns may be all-null (a step that did not run), and the
figures leave such a panel empty with a note instead of failing.  Each figure comes back as a PNG
``data:`` URI, for Markdown metadata and for the self-contained HTML report alike.
"""

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: runs render in worker processes

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# (column, label) of each per-exposure trend, in the order the panels are drawn.
TRENDS: tuple[tuple[str, str], ...] = (
    ("defocus_angstrom", "defocus (U+V)/2, Å"),
    ("fit_resolution_angstrom", "CTF fit resolution, Å"),
    ("ice_thickness_index", "ice thickness index"),
    ("total_motion_angstrom", "total motion, Å"),
    ("particles", "particles / micrograph"),
    ("hyperscore", "HyperScore"),
)
COLUMNS = (
    "micrograph",
    "batch",
    "batch_sequence",
    "acquired_at_s",  # acquisition time, Unix s (null where the metadata has none)
    *(name for name, _ in TRENDS),
    "accepted",
    "grid_square",
    "foil_hole",
    "stage_x_um",
    "stage_y_um",
)
_ACCEPTED, _REJECTED, _UNDECIDED = "#2a9d4b", "#d62828", "#888888"


def figure_data_uri(figure: Figure, dpi: int = 90) -> str:
    """The figure as a PNG ``data:`` URI (closed afterwards)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def time_axis(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Minutes since the first exposure where every exposure has an acquisition time, else exposure order."""
    times = pd.to_numeric(frame["acquired_at_s"], errors="coerce").to_numpy(dtype=float)
    if len(times) and np.isfinite(times).all():
        return (times - times.min()) / 60.0, "acquisition time, minutes from the first exposure"
    return np.arange(len(frame), dtype=float), "exposure, in acquisition order"


def _colours(frame: pd.DataFrame) -> list[str]:
    return [
        _UNDECIDED if a is None or (isinstance(a, float) and np.isnan(a)) else (_ACCEPTED if bool(a) else _REJECTED)
        for a in frame["accepted"].tolist()
    ]


def _batch_edges(frame: pd.DataFrame, x: np.ndarray) -> list[tuple[float, str]]:
    """(x where a batch starts, its key) for every batch after the first."""
    edges = []
    batches = frame["batch"].tolist()
    for i in range(1, len(batches)):
        if batches[i] != batches[i - 1]:
            edges.append(((x[i - 1] + x[i]) / 2.0, str(batches[i])))
    return edges


def accept_rate_per_batch(frame: pd.DataFrame) -> pd.DataFrame:
    """Per batch in order: exposures, accepted, decided, accept rate (null where nothing was decided)."""
    rows = []
    for batch, group in frame.groupby("batch", sort=False):
        decided = group["accepted"].dropna()
        n_accepted = int(decided.astype(bool).sum())
        rows.append(
            {
                "batch": batch,
                "exposures": len(group),
                "accepted": n_accepted,
                "decided": len(decided),
                "accept_rate": n_accepted / len(decided) if len(decided) else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["batch", "exposures", "accepted", "decided", "accept_rate"])


def trends_figure(frame: pd.DataFrame) -> Figure:
    """One panel per quantity against acquisition time (points coloured accepted / rejected, running
    median), batch boundaries dotted, and the accept rate per batch in the last panel."""
    x, xlabel = time_axis(frame)
    panels = len(TRENDS) + 1
    figure, axes = plt.subplots(panels, 1, figsize=(9.0, 1.7 * panels), sharex=True, constrained_layout=True)
    colours = _colours(frame)
    edges = _batch_edges(frame, x)
    for ax, (column, label) in zip(axes, TRENDS, strict=False):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(values)
        if finite.any():
            ax.scatter(x[finite], values[finite], c=[c for c, f in zip(colours, finite, strict=True) if f], s=16)
            window = max(1, min(9, int(finite.sum()) // 3))
            running = pd.Series(values[finite]).rolling(window, center=True, min_periods=1).median()
            ax.plot(x[finite], running.to_numpy(), color="#1d3557", linewidth=1.2)
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="#888888")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    rate_ax = axes[-1]
    rates = accept_rate_per_batch(frame)
    for (batch, group), (_, rate) in zip(frame.groupby("batch", sort=False), rates.iterrows(), strict=True):
        positions = x[frame.index.get_indexer(group.index)]
        if np.isfinite(rate["accept_rate"]):
            rate_ax.hlines(100.0 * rate["accept_rate"], positions.min() - 0.4, positions.max() + 0.4, color="#1d3557")
            rate_ax.text(positions.mean(), 100.0 * rate["accept_rate"] + 3, f"{batch}", fontsize=6, ha="center")
    rate_ax.set_ylim(-5, 110)
    rate_ax.set_ylabel("accept rate per batch, %", fontsize=8)
    rate_ax.tick_params(labelsize=7)
    rate_ax.grid(alpha=0.3)
    rate_ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes:
        for edge, _ in edges:
            ax.axvline(edge, color="#999999", linestyle=":", linewidth=0.8)
    axes[0].set_title(
        "Session trends (green: accepted, red: rejected, grey: undecided; dotted: batch boundary)", fontsize=9
    )
    return figure


def histograms_figure(frame: pd.DataFrame) -> Figure:
    """Histogram of each per-exposure quantity, accepted and rejected stacked."""
    figure, axes = plt.subplots(2, 3, figsize=(9.0, 5.0), constrained_layout=True)
    accepted = frame["accepted"].map(lambda a: None if a is None or a != a else bool(a))
    for ax, (column, label) in zip(axes.ravel(), TRENDS, strict=True):
        values = pd.to_numeric(frame[column], errors="coerce")
        finite = values[np.isfinite(values)]
        if finite.empty:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="#888888")
        else:
            groups = [finite[accepted[finite.index] == flag] for flag in (True, False)]
            other = finite[accepted[finite.index].isna()]
            data = [g.to_numpy() for g in (*groups, other)]
            bins = np.histogram_bin_edges(finite.to_numpy(), bins=min(20, max(3, len(finite) // 2)))
            ax.hist(data, bins=bins, stacked=True, color=[_ACCEPTED, _REJECTED, _UNDECIDED])
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    figure.suptitle("Distributions (green: accepted, red: rejected, grey: undecided)", fontsize=9)
    return figure


def grid_positions(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, bool]:
    """(x, y, measured): stage positions in µm where every exposure has them, else a schematic layout from
    the EPU grid-square and foil-hole ids (squares on a grid, holes on a sub-grid, exposures around their
    hole's centre), with ``measured`` False."""
    sx = pd.to_numeric(frame["stage_x_um"], errors="coerce").to_numpy(dtype=float)
    sy = pd.to_numeric(frame["stage_y_um"], errors="coerce").to_numpy(dtype=float)
    if len(frame) and np.isfinite(sx).all() and np.isfinite(sy).all():
        return sx, sy, True
    squares = frame["grid_square"].fillna("unassigned").astype(str)
    holes = frame["foil_hole"].fillna("unassigned").astype(str)
    square_ids = sorted(set(squares), key=_natural)
    per_row = max(1, int(np.ceil(np.sqrt(len(square_ids)))))
    x = np.zeros(len(frame))
    y = np.zeros(len(frame))
    for s, square in enumerate(square_ids):
        ox, oy = (s % per_row) * 10.0, -(s // per_row) * 10.0
        in_square = (squares == square).to_numpy()
        hole_ids = sorted(set(holes[in_square]), key=_natural)
        holes_per_row = max(1, int(np.ceil(np.sqrt(len(hole_ids)))))
        step = 8.0 / holes_per_row
        for h, hole in enumerate(hole_ids):
            cx = ox + 1.0 + step * (h % holes_per_row + 0.5)
            cy = oy - 1.0 - step * (h // holes_per_row + 0.5)
            members = np.flatnonzero(in_square & (holes == hole).to_numpy())
            for k, i in enumerate(members):
                angle = 2.0 * np.pi * k / max(1, len(members))
                radius = 0.0 if len(members) == 1 else 0.3 * step
                x[i], y[i] = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
    return x, y, False


def _natural(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def grid_map_figure(frame: pd.DataFrame) -> Figure:
    """Where the exposures were taken, coloured by HyperScore; rejected exposures crossed out."""
    x, y, measured = grid_positions(frame)
    figure, ax = plt.subplots(figsize=(7.0, 6.0), constrained_layout=True)
    scores = pd.to_numeric(frame["hyperscore"], errors="coerce").to_numpy(dtype=float)
    scatter = ax.scatter(x, y, c=np.where(np.isfinite(scores), scores, np.nan), cmap="viridis", s=60, edgecolors="k")
    if np.isfinite(scores).any():
        figure.colorbar(scatter, ax=ax, label="HyperScore")
    rejected = frame["accepted"].map(lambda a: a is not None and a == a and not bool(a)).to_numpy(dtype=bool)
    if rejected.any():
        ax.scatter(x[rejected], y[rejected], marker="x", color=_REJECTED, s=90, label="rejected")
        ax.legend(loc="upper right", fontsize=7)
    if measured:
        ax.set_xlabel("stage x, µm")
        ax.set_ylabel("stage y, µm")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title("Grid map: stage positions, coloured by HyperScore", fontsize=9)
    else:
        squares = frame["grid_square"].fillna("unassigned").astype(str)
        for square in sorted(set(squares), key=_natural):
            members = (squares == square).to_numpy()
            ox = np.floor(x[members].min() / 10.0) * 10.0
            oy = np.ceil(y[members].max() / 10.0) * 10.0
            ax.add_patch(Rectangle((ox + 0.5, oy - 9.5), 9.0, 9.0, fill=False, edgecolor="#999999"))
            ax.text(ox + 0.7, oy - 0.9, f"square {square}", fontsize=7, color="#555555", va="top")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(
            "Grid map (schematic: no stage positions recorded; grid squares and foil holes from the EPU ids),\n"
            "coloured by HyperScore",
            fontsize=9,
        )
    return figure


def summary_rows(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(quantity, value) lines of the summary table."""
    decided = frame["accepted"].dropna()
    rows = [
        ("exposures", str(len(frame))),
        ("batches", str(frame["batch"].nunique())),
        ("accepted", f"{int(decided.astype(bool).sum())} of {len(decided)} decided"),
    ]
    for column, label in TRENDS:
        values = pd.to_numeric(frame[column], errors="coerce")
        values = values[np.isfinite(values)]
        rows.append(
            (
                f"median {label}",
                f"{values.median():.4g} (range {values.min():.4g}–{values.max():.4g})" if len(values) else "–",
            )
        )
    return rows


def markdown_table(rows: Sequence[tuple[str, str]]) -> str:
    return "| quantity | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def html_report(title: str, summary: Sequence[tuple[str, str]], figures: Mapping[str, str], note: str = "") -> str:
    """A self-contained page: inline CSS, the summary table and every figure as a PNG ``data:`` URI."""
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    sections = "".join(
        f'<section><h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="{uri}"></section>'
        for name, uri in figures.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1.5em;color:#222;background:#fff}"
        "table{border-collapse:collapse;margin-bottom:1em}th,td{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;font-size:13px}section{margin:1em 0}img{max-width:100%;border:1px solid #eee}"
        "h2{font-size:16px;margin:0.4em 0}p.note{color:#555;font-size:13px}"
        f'</style></head><body><h1>{html.escape(title)}</h1><p class="note">{html.escape(note)}</p>'
        f"<table>{table}</table>{sections}</body></html>\n"
    )


def check_self_contained(text: str) -> list[str]:
    """What in the page would reach outside it: external src/href or CSS url()s."""
    problems = re.findall(r"""(?:src|href)\s*=\s*["']((?!data:|#)[^"']+)["']""", text)
    problems += re.findall(r"url\(\s*['\"]?((?!data:)[^)'\"]+)", text)
    return problems
