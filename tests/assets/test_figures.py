"""UI pictures: valid PNG data URIs, and a CTF diagnostic whose model half matches the fitted rings."""

import base64
import io

import numpy as np
from PIL import Image

from cryodecon_assets.batch.figures import ctf_diagnostic, png_data_uri
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.simulate import SimulationConfig, simulate_micrograph


def test_png_data_uri_is_a_small_gray_png() -> None:
    image = np.random.default_rng(0).normal(size=(700, 500))
    uri = png_data_uri(image, size_px=160)
    assert uri.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert decoded.mode == "L" and max(decoded.size) <= 160


def test_ctf_diagnostic_halves_agree_for_a_good_fit() -> None:
    config = SimulationConfig(shape_px=(1024, 1024), particles_per_micrograph=10, ice_thickness_range_nm=(55.0, 60.0))
    sim = simulate_micrograph(config, "diag", (8, 0, 0))
    fit = estimate_ctf(sim.counts, config.microscope)
    picture = ctf_diagnostic(sim.counts, fit, config.microscope)
    n = picture.shape[0]
    assert picture.shape == (n, n) and 0.0 <= picture.min() and picture.max() <= 1.0
    # Data (left) and model (right) are mirror images of each other where the rings are: their
    # horizontal profiles through the centre correlate (measured 0.70 for the fit; a model with the defocus
    # 30 % off gives 0.24, so 0.5 separates a right fit from a wrong one).
    centre = n // 2
    rows = slice(centre - n // 8, centre + n // 8)
    data = picture[rows, :centre][:, ::-1].mean(axis=0)[: n // 4]
    model = picture[rows, centre:].mean(axis=0)[: n // 4]
    assert np.corrcoef(data, model)[0, 1] > 0.5


def test_trajectory_picture_draws_the_path_with_equal_scales() -> None:
    from cryodecon_assets.batch.figures import trajectories_markdown, trajectory_picture

    # A straight drift along +x: the path is a horizontal line through the middle row of the picture.
    shifts = np.stack([np.zeros(8), np.linspace(0.0, 14.0, 8)], axis=1)
    picture = np.asarray(trajectory_picture(shifts, size_px=100))
    dark_rows = np.nonzero((picture < 128).any(axis=1))[0]
    dark_columns = np.nonzero((picture < 128).any(axis=0))[0]
    assert dark_columns.max() - dark_columns.min() > 70  # the path spans the width ...
    assert 40 <= np.median(dark_rows) <= 60  # ... at mid height (the scale bar sits in a corner)
    table = trajectories_markdown({"mov": shifts}, {"mov": {"motion_total_angstrom": 14.0, "dose_weighted": True}})
    assert "data:image/png;base64," in table and "| 14.0 / – / – | yes |" in table


def test_causal_graph_picture_draws_each_cause_by_its_weight() -> None:
    import networkx as nx

    from cryodecon_assets.batch.figures import causal_graph_picture
    from cryodecon_science import causal

    def picture(dose_weight: float) -> np.ndarray:
        graph = causal.build_causal_graph()
        for node in causal.CAUSE_NODES:
            graph.nodes[node]["weight"] = dose_weight if node == "dose" else 0.05
        return np.asarray(causal_graph_picture(nx.node_link_data(graph, edges="links")))

    light, heavy = picture(0.05), picture(0.8)
    assert light.shape == heavy.shape == (300, 560)
    # Only the dose disc grows: a heavier weight draws a larger dark disc.
    assert int((heavy < 128).sum()) > int((light < 128).sum()) + 200
