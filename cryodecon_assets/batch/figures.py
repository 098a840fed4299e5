"""Small pictures for the Dagster UI: thumbnails, drift trajectories, CTF diagnostics and the weighted
causal graph.

Asset metadata is Markdown, and Markdown can carry PNG images as ``data:`` URIs, so a materialisation shows
what happened to its micrographs without leaving the UI.  Pictures are kept small (≤ 160 px, 8-bit gray)
and only the first few micrographs of a batch get one, so the event log stays light; every micrograph's
full-size outputs are MRC files anyway.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from scipy import ndimage

from cryodecon_science.causal import CausalPriors
from cryodecon_science.optics import MicroscopeSettings, ctf_2d
from cryodecon_science.records import CtfFit
from cryodecon_science.spectrum import tile_power_spectra

PREVIEW_PX = 160
PREVIEW_LIMIT = 4


def _to_uint8(image: npt.NDArray[np.floating], low_pct: float = 1.0, high_pct: float = 99.0) -> npt.NDArray[np.uint8]:
    lo, hi = np.percentile(image, [low_pct, high_pct])
    scaled = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return (255.0 * scaled).astype(np.uint8)


def _downsample(image: npt.NDArray[np.floating], size_px: int) -> npt.NDArray[np.float64]:
    factor = max(1, int(np.ceil(max(image.shape) / size_px)))
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))


def picture_data_uri(picture: Image.Image) -> str:
    """A PIL picture as a PNG ``data:`` URI (Markdown in asset metadata can show it inline)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_uri(image: npt.NDArray[np.floating], size_px: int = PREVIEW_PX) -> str:
    """Gray PNG (1–99 % percentile stretch, block-averaged to ≤ ``size_px``) as a ``data:`` URI."""
    return picture_data_uri(Image.fromarray(_to_uint8(_downsample(np.asarray(image, dtype=np.float64), size_px))))


def before_after_markdown(
    before: Mapping[str, npt.NDArray[np.floating]], after: Mapping[str, npt.NDArray[np.floating]], label: str
) -> str:
    """A Markdown table: micrograph | raw | ``label`` thumbnails, for the first few micrographs."""
    lines = [f"| micrograph | raw | {label} |", "|---|---|---|"]
    for name in list(after)[:PREVIEW_LIMIT]:
        if name in before:
            lines.append(f"| {name} | ![raw]({png_data_uri(before[name])}) | ![{label}]({png_data_uri(after[name])}) |")
    return "\n".join(lines)


def ctf_diagnostic(
    image: npt.NDArray[np.floating], fit: CtfFit, microscope: MicroscopeSettings, tile_size_px: int = 512
) -> npt.NDArray[np.float64]:
    """CTFFIND-style diagnostic: left half the background-subtracted, amplitude-normalised tile-averaged
    spectrum (PS − b)/a, right half the fitted CTF² — matching rings mean a good fit.  Centred, [y, x]."""
    power = tile_power_spectra(np.asarray(image, dtype=np.float32), tile_size_px=tile_size_px).mean(dim=0).numpy()
    tile = power.shape[0]
    ky = np.fft.fftfreq(tile, d=microscope.pixel_size_angstrom)[:, None]
    kx = np.fft.rfftfreq(tile, d=microscope.pixel_size_angstrom)[None, :]
    k = np.hypot(ky, kx)
    signal, background = fit.spectral_model.interpolate(k)
    normalised = (power - background) / np.maximum(signal, 1e-12)
    model = ctf_2d(fit.ctf, microscope, (tile, tile), rfft=True).double().numpy() ** 2
    k_max = 1.0 / max(fit.fit_resolution_angstrom, 2 * microscope.pixel_size_angstrom)
    band = (k >= 1.0 / 30.0) & (k <= k_max)
    normalised = np.where(band, np.clip(normalised, -0.5, 1.5), np.nan)
    model = np.where(band, model, np.nan)
    half = tile // 2
    # The k_x < 0 half is the point reflection of the stored k_x > 0 half (Hermitian symmetry).
    data_side = np.flip(np.fft.fftshift(normalised, axes=0)[:, 1:], axis=(0, 1))
    model_side = np.fft.fftshift(model, axes=0)[:, :-1]
    # Light 3×3 smoothing of the data and a separate contrast stretch per half, so faint rings show.
    data_side = ndimage.uniform_filter(np.nan_to_num(data_side, nan=0.0), size=3) * np.isfinite(data_side)
    halves = []
    for side in (data_side[:, :half], np.nan_to_num(model_side[:, :half], nan=0.0)):
        lo, hi = np.percentile(side[side != 0], [2, 98]) if np.any(side != 0) else (0.0, 1.0)
        halves.append(np.where(side != 0, np.clip((side - lo) / (hi - lo if hi > lo else 1.0), 0, 1), 0.5))
    picture = np.concatenate(halves, axis=1)
    radius = min(half, int(np.ceil(k_max * tile * microscope.pixel_size_angstrom)) + 2)  # zoom to the fit band
    return picture[half - radius : half + radius, half - radius : half + radius]


def ctf_markdown(
    images: Mapping[str, npt.NDArray[np.floating]],
    fits: Mapping[str, CtfFit],
    microscopes: Mapping[str, MicroscopeSettings],
) -> str:
    lines = ["| micrograph | spectrum (left) vs fit (right) | ΔfU / ΔfV (Å) | fit res (Å) |", "|---|---|---|---|"]
    for name in list(fits)[:PREVIEW_LIMIT]:
        fit = fits[name]
        picture = ctf_diagnostic(images[name], fit, microscopes[name])
        lines.append(
            f"| {name} | ![ctf]({png_data_uri(picture, size_px=256)}) | "
            f"{fit.ctf.defocus_u_angstrom:.0f} / {fit.ctf.defocus_v_angstrom:.0f} | {fit.fit_resolution_angstrom:.2f} |"
        )
    return "\n".join(lines)


def causal_graph_picture(node_link: Mapping[str, object], width_px: int = 560, height_px: int = 300) -> Image.Image:
    """The weighted causal DAG as a small picture: nodes in columns by topological generation (causes left,
    observed spectrum and image quality right), each cause a disc whose area is its degradation weight
    (a ring when the weight is 0), edges as lines, node names below the discs."""
    import networkx as nx

    graph = nx.node_link_graph(dict(node_link), edges="links")
    picture = Image.new("L", (width_px, height_px), 255)
    draw = ImageDraw.Draw(picture)
    generations = list(nx.topological_generations(graph))
    positions: dict[str, tuple[float, float]] = {}
    for column, nodes in enumerate(generations):
        x = 60 + column * (width_px - 120) / max(1, len(generations) - 1)
        for row, node in enumerate(sorted(nodes)):
            positions[node] = (x, (row + 1) * height_px / (len(nodes) + 1))
    for source, target in graph.edges:
        draw.line((*positions[source], *positions[target]), fill=190, width=1)
    for node, (x, y) in positions.items():
        weight = graph.nodes[node].get("weight")
        if weight is None:  # an effect (spectrum, image quality): a square
            draw.rectangle((x - 6, y - 6, x + 6, y + 6), outline=0, fill=230)
        else:
            radius = 3.0 + 14.0 * float(np.sqrt(max(float(weight), 0.0)))
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=0, fill=60 if weight else 255)
        label = str(node).replace("_", " ")
        length = draw.textlength(label)
        draw.text((min(max(2.0, x - length / 2), width_px - length - 2), y + 9), label, fill=0)
    return picture


def causal_graph_markdown(priors: CausalPriors, title: str) -> str:
    """The weighted DAG as a picture (``causal_graph_picture``) and as text: each cause with its estimate
    ± σ and a bar for its degradation weight, then the edges with their mechanisms."""
    uri = picture_data_uri(causal_graph_picture(priors.graph_node_link))
    lines = [
        f"**{title}** — {'converged' if priors.converged else 'NOT converged'} after {priors.n_iterations} iterations",
        "",
        f"![weighted causal graph]({uri})",
        "",
        "| cause | estimate ± σ | weight |",
        "|---|---|---|",
    ]
    for estimate in sorted(priors.estimates, key=lambda e: -e.weight):
        bar = "█" * round(20 * estimate.weight)
        value = f"{estimate.value:.4g} ± {estimate.sigma:.2g} {estimate.unit}"
        lines.append(f"| {estimate.node} | {value} | {bar} {estimate.weight:.2f} |")
    links = priors.graph_node_link.get("links", [])
    lines += ["", "| cause → effect | mechanism |", "|---|---|"]
    lines += [f"| {link['source']} → {link['target']} | {link.get('mechanism', '')} |" for link in links]
    return "\n".join(lines)


def thumbnails_markdown(images: Mapping[str, npt.NDArray[np.floating]]) -> str:
    """A Markdown table: micrograph | thumbnail | size | mean | std, for the first few micrographs."""
    lines = ["| micrograph | image | size (px) | mean | std |", "|---|---|---|---|---|"]
    for name, data in list(images.items())[:PREVIEW_LIMIT]:
        lines.append(
            f"| {name} | ![{name}]({png_data_uri(data)}) | {data.shape[1]}×{data.shape[0]} | "
            f"{float(data.mean()):.3g} | {float(data.std()):.3g} |"
        )
    return "\n".join(lines)


def trajectory_picture(shifts_px: npt.NDArray[np.floating], size_px: int = PREVIEW_PX) -> Image.Image:
    """The drift trajectory [dy, dx] per frame (relative to frame 0) as MotionCor2/cryoSPARC Live draw it:
    a polyline through the frames on equal x/y scales, frame 0 as a hollow circle, later frames as dots,
    with a 1-pixel scale bar in the corner when the path spans less than 20 px."""
    shifts = np.asarray(shifts_px, dtype=np.float64)
    picture = Image.new("L", (size_px, size_px), 255)
    draw = ImageDraw.Draw(picture)
    margin = 12
    span = max(float(np.ptp(shifts[:, 0])), float(np.ptp(shifts[:, 1])), 1.0)
    scale = (size_px - 2 * margin) / span
    centre = 0.5 * (shifts.max(axis=0) + shifts.min(axis=0))
    points = [(size_px / 2 + (x - centre[1]) * scale, size_px / 2 + (y - centre[0]) * scale) for y, x in shifts]
    draw.line(points, fill=90, width=1)
    for x, y in points[1:]:
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=0)
    x0, y0 = points[0]
    draw.ellipse((x0 - 4, y0 - 4, x0 + 4, y0 + 4), outline=0)
    if span < 20:
        draw.line((4, size_px - 4, 4 + scale, size_px - 4), fill=0, width=2)
    return picture


def trajectories_markdown(
    trajectories: Mapping[str, npt.NDArray[np.floating]], motion: Mapping[str, Mapping[str, object]]
) -> str:
    """A Markdown table: movie | drift trajectory | total / early / late motion (Å) | dose-weighted."""
    lines = ["| movie | drift (frame 0 ○) | motion total / early / late (Å) | dose-weighted |", "|---|---|---|---|"]
    for name, shifts in list(trajectories.items())[:PREVIEW_LIMIT]:
        uri = picture_data_uri(trajectory_picture(shifts))
        row = motion.get(name, {})

        def angstrom(key: str, row: Mapping[str, object] = row) -> str:
            value = row.get(key)
            return f"{float(value):.1f}" if isinstance(value, int | float) and value == value else "–"

        weighted = "yes" if row.get("dose_weighted") else "no (dose unknown)"
        lines.append(
            f"| {name} | ![drift]({uri}) | {angstrom('motion_total_angstrom')} / "
            f"{angstrom('motion_early_angstrom')} / {angstrom('motion_late_angstrom')} | {weighted} |"
        )
    return "\n".join(lines)


def picks_picture(
    image: npt.NDArray[np.floating],
    coords_yx_px: npt.NDArray[np.floating],
    kept: npt.NDArray[np.bool_],
    diameter_px: float,
    size_px: int = 320,
) -> Image.Image:
    """The micrograph (block-averaged, percentile-stretched) with a circle of one particle diameter at each
    pick: green where the particle is kept, red where it was set aside (carbon, contamination, aggregate)."""
    data = np.asarray(image, dtype=np.float64)
    factor = max(1, int(np.ceil(max(data.shape) / size_px)))
    picture = Image.fromarray(_to_uint8(_downsample(data, size_px))).convert("RGB")
    draw = ImageDraw.Draw(picture)
    radius = 0.5 * diameter_px / factor
    for (y, x), ok in zip(np.asarray(coords_yx_px, dtype=np.float64), kept, strict=True):
        cx, cy = (x + 0.5) / factor - 0.5, (y + 0.5) / factor - 0.5
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), outline=(40, 200, 60) if ok else (220, 40, 40)
        )
    return picture


def class_gallery(
    averages: npt.NDArray[np.floating],
    selected: npt.NDArray[np.bool_],
    particle_count: npt.NDArray[np.integer],
    tile_px: int = 64,
) -> Image.Image:
    """2D class averages (K, B, B) in a grid of up to 10 columns, each framed green (selected) or red, with its
    class number and particle count underneath."""
    k = averages.shape[0]
    columns = min(k, 10)
    rows = -(-k // columns)
    picture = Image.new("RGB", (columns * (tile_px + 4), rows * (tile_px + 16)), (0, 0, 0))
    draw = ImageDraw.Draw(picture)
    for i in range(k):
        tile = Image.fromarray(_to_uint8(np.asarray(averages[i], dtype=np.float64))).resize((tile_px, tile_px))
        x, y = (i % columns) * (tile_px + 4) + 2, (i // columns) * (tile_px + 16) + 2
        picture.paste(tile.convert("RGB"), (x, y))
        colour = (40, 200, 60) if selected[i] else (220, 40, 40)
        draw.rectangle((x - 1, y - 1, x + tile_px, y + tile_px), outline=colour)
        draw.text((x, y + tile_px + 1), f"{i + 1}: {int(particle_count[i])}", fill=(230, 230, 230))
    return picture
