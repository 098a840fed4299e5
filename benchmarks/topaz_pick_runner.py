"""Pick particles with Topaz's pretrained general picker and write every candidate as JSON (benchmark peer).

Runs under the benchmark-only Topaz virtual environment (``benchmarks/setup_topaz.sh``), never under
cryodecon's, and imports nothing from cryodecon; it needs no network and no GPU:

    benchmarks/.venv-topaz/bin/python benchmarks/topaz_pick_runner.py --input-json IN.json --output-json OUT.json

Topaz: Bepler et al. 2019, "Positive-unlabeled convolutional neural networks for particle picking in
cryo-electron micrographs", Nat. Methods 16:1153; topaz-em 0.3.20 with its bundled pretrained detectors
(``topaz/pretrained/detector/resnet16_u64.sav`` etc.).

IN.json
-------
``micrographs``: absolute paths of MRC files holding one float 2-D image each.
``pixel_size_angstrom``: Å/px of those files.  ``particle_diameter_angstrom``: particle diameter, Å.
Optional: ``model`` (default ``"resnet16_u64"``, the general pretrained picker; also ``resnet16`` (the
same weights, `topaz extract`'s default name), ``resnet16_u32``, ``resnet8``/``resnet8_u64``,
``resnet8_u32``); ``downsample_to_angstrom`` (target pixel size; see "Downsampling" below);
``extract_threshold`` (default -6, `topaz extract`'s default); ``num_threads`` (torch threads, default 0 =
torch's default, as `topaz extract -j 0`); ``seed`` (default 0, see step 3 below).

OUT.json
--------
``topaz_version``, ``model``, ``downsample_factor`` (integer, as `topaz preprocess -s`), and
``picks``: {path: [[x_px, y_px, score], ...]} with **every** candidate that `topaz extract` would write at
``extract_threshold`` (default -6, i.e. all picks with score > -6; the benchmark chooses its own, higher,
threshold), sorted by decreasing score.  x is the column and y the row of the image *as mrcfile reads
it* (``data[y, x]``), 0-based pixel centres, in the pixels of the ORIGINAL micrograph (floats: the
downsampled pick times the exact size ratio, see below).  ``score`` is Topaz's raw model output at the
pick: the logit log(p / (1 - p)) of "a particle is centred here" (score -6 is p = 0.0025, 0 is p = 0.5).
Also written: ``extract_radius_px`` (in downsampled pixels), ``extract_threshold``,
``downsampled_pixel_size_angstrom``, ``receptive_field_px``, ``shapes`` {path: [ny, nx, ny_small,
nx_small]}, ``seconds`` {path: wall time of that micrograph: downsample + normalise + score + extract},
``model_load_seconds``, ``torch_version`` and ``num_threads``.

What a Topaz user does, and what this runs
------------------------------------------
The user's pipeline with a pretrained model is ``topaz preprocess -s S`` (downsample + normalise, writing
MRCs) followed by ``topaz extract -m resnet16 -r R [-x S]`` (tutorial/01_quick_start_guide.ipynb of
github.com/tbepler/topaz).  The ``topaz`` command line cannot start in this venv: topaz/main.py imports
every sub-command, and ``topaz train`` imports topaz.training -> topaz.utils.data.sampler /
memory_mapped_data -> torchvision (training-time rotations/flips only), which is not installed here
(see setup_topaz.sh).  The picking path itself (topaz.utils.image, topaz.stats, topaz.model.factory,
topaz.algorithms, topaz.extract) imports no torchvision, so this runner calls the very functions those two
commands call, with their default arguments, on in-memory arrays:

1. Read the MRC with Topaz's reader (``topaz.utils.data.loader.load_mrc``; it returns data[z][y][x] in
   file order, the same array mrcfile returns), as float32 (``Normalize.__call__`` in topaz/stats.py).
2. Downsample by the integer factor S with ``topaz.utils.image.downsample`` (Fourier cropping to
   int(ny/S) x int(nx/S)), as ``topaz preprocess -s S`` does.
3. Normalise with ``topaz.stats.normalize(..., method='gmm')`` and `topaz preprocess`'s defaults
   (alpha 900, beta 1, 100 EM iterations, --sample 10): the 2-component Gaussian-mixture fit whose
   dominant component's mean/std standardise the image.  With --sample 10 Topaz fits on a random tenth of
   the pixels drawn with ``np.random.choice`` and never seeds it; this runner seeds numpy's global RNG
   with ``seed`` before each micrograph so that runs are reproducible (the result is one of the draws
   Topaz itself could make).  `topaz preprocess` writes the float32 result to an MRC that `topaz extract`
   reads back: a lossless round trip, skipped here.
4. Score with the pretrained model exactly as ``topaz.extract.score_images`` does: ``load_model(name)``,
   ``.eval()``, ``.fill()``, then ``model(image[None, None])[0, 0]`` on the whole image (no patching, the
   `extract` default), under ``torch.no_grad()`` (saves memory; the numbers are the same).
5. Extract with ``topaz.algorithms.non_maximum_suppression(score, R, threshold)``, what
   `topaz extract -r R -t T` runs (greedy non-maximum suppression: take the highest remaining score,
   suppress the disc of radius R around it, stop at scores <= T).  R is the particle radius in downsampled
   pixels, rounded to an integer as `extract`'s ``--radius`` is (the tutorial: "particle radius is ~74 Å
   (14 pixels after downsampling 8x)").
6. Map back to the original pixels.  Fourier cropping keeps the sampling grid's origin: downsampled pixel
   j sits at original pixel j * n / n_small on each axis (exactly S when S divides n).  `topaz extract -x S`
   writes round(j * S); this runner writes the unrounded j * n / n_small.  NMS coordinates are (x, y) =
   (column, row) of the score array (topaz/algorithms.py), kept in that order.

Downsampling
------------
With ``downsample_to_angstrom`` given, S = max(1, round(downsample_to_angstrom / pixel_size)).  Without it,
the runner follows Topaz's quick-start guide (tutorial/01_quick_start_guide.ipynb, "A note on
downsampling" and "Pretrained models"): "When using the pretrained models, they assume that micrographs
are downsampled to the 4-8 Å per pixel range. Generally speaking, ~4 Å/pix is better for small to medium
sized particles, but ~8 Å/pix is better for large particles (>= 300 Å particle diameter). Very large
particles may require additional downsampling", and "We recommend downsampling your data enough that the
diameter of your particle fits within the receptive field of the CNN architecture": target 4 Å/px for
diameters below 300 Å and 8 Å/px from 300 Å on, S = max(1, round(target / pixel_size)), then S is raised
until the diameter in downsampled pixels is at most the model's receptive field (``model.width``: 91 px
for resnet16, 71 px for resnet8).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PRETRAINED = ("resnet16_u64", "resnet16", "resnet16_u32", "resnet8_u64", "resnet8", "resnet8_u32")
DEFAULT_MODEL = "resnet16_u64"
DEFAULT_THRESHOLD = -6.0  # topaz extract's default (-t/--threshold): "-6 is p>=0.0025"
# `topaz preprocess` / `topaz normalize` defaults (topaz/commands/normalize.py).
GMM_ALPHA = 900.0
GMM_BETA = 1.0
GMM_ITERS = 100
GMM_SAMPLE = 10
# Topaz's quick-start guide: pretrained models want 4-8 Å/px; ~8 Å/px for particles >= 300 Å.
SMALL_PARTICLE_TARGET_ANGSTROM = 4.0
LARGE_PARTICLE_TARGET_ANGSTROM = 8.0
LARGE_PARTICLE_DIAMETER_ANGSTROM = 300.0


def choose_downsample_factor(
    pixel_size: float, diameter: float, receptive_field_px: int, downsample_to: float | None
) -> int:
    """Integer factor S of `topaz preprocess -s S` (module docstring, "Downsampling")."""
    if downsample_to is not None:
        return max(1, round(downsample_to / pixel_size))
    target = (
        LARGE_PARTICLE_TARGET_ANGSTROM
        if diameter >= LARGE_PARTICLE_DIAMETER_ANGSTROM
        else SMALL_PARTICLE_TARGET_ANGSTROM
    )
    factor = max(1, round(target / pixel_size))
    while diameter / (pixel_size * factor) > receptive_field_px:
        factor += 1
    return factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-json", type=Path, required=True)
    parser.add_argument("--output-json", type=Path, required=True)
    args = parser.parse_args()

    spec = json.loads(args.input_json.read_text())
    paths = [str(p) for p in spec["micrographs"]]
    pixel_size = float(spec["pixel_size_angstrom"])
    diameter = float(spec["particle_diameter_angstrom"])
    model_name = str(spec.get("model") or DEFAULT_MODEL)
    downsample_to = spec.get("downsample_to_angstrom")
    downsample_to = None if downsample_to is None else float(downsample_to)
    threshold = float(spec.get("extract_threshold", DEFAULT_THRESHOLD))
    num_threads = int(spec.get("num_threads", 0))
    seed = int(spec.get("seed", 0))
    if model_name not in PRETRAINED:
        raise SystemExit(f"model must be one of Topaz's pretrained pickers {PRETRAINED}, not {model_name!r}")
    if not (pixel_size > 0 and diameter > 0):
        raise SystemExit("pixel_size_angstrom and particle_diameter_angstrom must be positive")
    if downsample_to is not None and not downsample_to > 0:
        raise SystemExit("downsample_to_angstrom must be positive")

    import numpy as np
    import topaz
    import torch
    from topaz.algorithms import non_maximum_suppression
    from topaz.model.factory import load_model
    from topaz.stats import normalize
    from topaz.torch import set_num_threads
    from topaz.utils.data.loader import load_mrc
    from topaz.utils.image import downsample

    set_num_threads(num_threads)  # what `topaz extract -j N` does (0: torch's default)

    t0 = time.perf_counter()
    model = load_model(model_name)  # bundled weights, read from the installed package (offline)
    model.eval()
    model.fill()
    load_seconds = time.perf_counter() - t0
    receptive_field = int(model.width)

    factor = choose_downsample_factor(pixel_size, diameter, receptive_field, downsample_to)
    small_pixel = pixel_size * factor
    radius = max(1, round(diameter / 2.0 / small_pixel))  # `topaz extract -r` is an int

    picks: dict[str, list[list[float]]] = {}
    shapes: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    for path in paths:
        start = time.perf_counter()
        loaded = load_mrc(path)
        image = loaded[0] if isinstance(loaded, tuple) else loaded
        x = np.asarray(image).astype(np.float32)
        if x.ndim != 2:
            raise SystemExit(f"{path}: expected a 2-D micrograph, got shape {x.shape}")
        ny, nx = x.shape
        if factor > 1:
            x = downsample(x, factor)
        np.random.seed(seed)
        x, _ = normalize(
            x, alpha=GMM_ALPHA, beta=GMM_BETA, num_iters=GMM_ITERS, sample=GMM_SAMPLE, method="gmm", use_cuda=False
        )
        sy, sx = x.shape
        with torch.no_grad():
            tensor = torch.from_numpy(x.copy()).float().unsqueeze(0).unsqueeze(0)
            score = model(tensor).data[0, 0].cpu().numpy()
        if score.shape != (sy, sx):
            raise SystemExit(f"{path}: score map {score.shape} != image {(sy, sx)}")
        scores, coords = non_maximum_suppression(score, radius, threshold=threshold)
        scale_x, scale_y = nx / sx, ny / sy
        picks[path] = [
            [float(c[0]) * scale_x, float(c[1]) * scale_y, float(s)] for c, s in zip(coords, scores, strict=True)
        ]
        shapes[path] = [ny, nx, sy, sx]
        seconds[path] = time.perf_counter() - start
        print(
            f"# {path}: {ny}x{nx} -> {sy}x{sx}, {len(scores)} picks > {threshold:g}, {seconds[path]:.2f} s",
            file=sys.stderr,
        )

    out = {
        "topaz_version": topaz.__version__,
        "torch_version": torch.__version__,
        "model": model_name,
        "downsample_factor": factor,
        "downsampled_pixel_size_angstrom": small_pixel,
        "receptive_field_px": receptive_field,
        "extract_radius_px": radius,
        "extract_threshold": threshold,
        "num_threads": torch.get_num_threads(),
        "seed": seed,
        "model_load_seconds": load_seconds,
        "shapes": shapes,
        "seconds": seconds,
        "picks": picks,
    }
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output_json.with_name(args.output_json.name + ".tmp")
    tmp.write_text(json.dumps(out, allow_nan=False))
    tmp.replace(args.output_json)


if __name__ == "__main__":
    main()
