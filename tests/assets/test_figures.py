"""UI pictures: valid PNG data URIs, and a CTF diagnostic whose model half matches the fitted rings."""

import base64
import io

import numpy as np
from PIL import Image

from cryodecon_assets.figures import ctf_diagnostic, png_data_uri
from cryodecon_science.ctf_estimate import estimate_ctf
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
