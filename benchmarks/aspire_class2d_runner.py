"""Run ASPIRE's 2D classification and class averaging on particle boxes (bench_classification.py's other side).

Runs under the benchmark-only ASPIRE virtual environment (``benchmarks/setup_aspire.sh``), never under
cryodecon's, and imports nothing from cryodecon:

    benchmarks/.venv-aspire/bin/python benchmarks/aspire_class2d_runner.py IN.npz OUT.npz --n-classes 50

``IN.npz`` holds ``boxes`` (n, L, L) float32, contrast-inverted (white particles) and RELION-normalised, as
cryodecon classifies them; per-particle ``defocus_u_angstrom``, ``defocus_v_angstrom`` and
``astigmatism_angle_deg`` (cryodecon's convention: angle from x, axis 1 of the array, to U, counter-clockwise);
and the scalars ``pixel_size_angstrom``, ``voltage_kv``, ``cs_mm``, ``amplitude_contrast`` and
``reference_ctf`` (cryodecon's CTF of particle 0 on the centred L × L grid, for the convention check).

What runs (ASPIRE 0.14.3; the components of its ``DefaultClassAvgSource``, ``ClassAvgSourcev140``, called
one by one so that each stage is timed and the class membership table is returned):

1. ``ArrayImageSource`` of the *un-inverted* boxes (−boxes: dark particles, x = CTF ⊛ p + n, the image model
   of ASPIRE's ``CTFFilter``) with one ``CTFFilter`` per particle (defocus in Å, ``defocus_ang`` in radians:
   ASPIRE's ``evaluate_grid`` with angle θ equals cryodecon's ``ctf_2d`` at θ, sign included; the run checks
   this on particle 0, ``ctf_check``), then ``phase_flip()``, as ASPIRE's class-averaging tutorial does:
   the phase-flipped particles are white.
2. ``RIRClass2D`` (Zhao, Shkolnisky & Singer 2014, rotationally invariant bispectrum features): the
   settings of ``ClassAvgSourcev140`` (400 FSPCA components, 300 bispectrum components, legacy PCA and
   bispectrum, sklearn nearest neighbours), ``n_nbor`` neighbours per image (its default 50).  Every image
   is the reference of its own class: row i of the table is image i and its ``n_nbor`` nearest neighbours in
   feature space, each with a reflection flag (the features are reflection invariant).
3. A class selector picks ``--n-classes`` of these n overlapping classes: ``global-variance`` (ASPIRE's
   default, ``GlobalVarianceClassSelector``: averages *every* class and keeps the highest-variance averages)
   or ``distance`` (``DistanceClassSelector``: the smallest mean neighbour distance, no averaging needed).
4. ``BFTAverager2D`` (ASPIRE's default averager: brute-force translations, polar-Fourier rotational
   alignment) on the basis of the FSPCA, averaging the selected classes.

Output ``OUT.npz``: ``averages`` (K, L, L) float32, ``selection`` (K,) reference image of each class,
``classes`` (n, n_nbor + 1) int, ``reflections`` (n, n_nbor + 1) bool, ``distances``, and a JSON string
``meta`` with the version, settings, the seconds of each stage and the convention check.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_npz", type=Path)
    parser.add_argument("output_npz", type=Path)
    parser.add_argument("--n-classes", type=int, required=True, help="class averages to select and compute")
    parser.add_argument("--n-nbor", type=int, default=50, help="neighbours per class (ClassAvgSourcev140: 50)")
    parser.add_argument("--selector", choices=("global-variance", "distance"), default="global-variance")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import aspire
    import numpy as np
    from aspire.classification import (
        BFTAverager2D,
        DistanceClassSelector,
        GlobalVarianceClassSelector,
        RIRClass2D,
    )
    from aspire.operators import CTFFilter
    from aspire.source import ArrayImageSource

    data = np.load(args.input_npz)
    boxes = np.asarray(data["boxes"], dtype=np.float64)
    n, size = boxes.shape[0], boxes.shape[1]
    pixel = float(data["pixel_size_angstrom"])
    timings: dict[str, float] = {}

    start = time.perf_counter()
    filters = [
        CTFFilter(
            voltage=float(data["voltage_kv"]),
            defocus_u=float(u),
            defocus_v=float(v),
            defocus_ang=math.radians(float(a)),
            Cs=float(data["cs_mm"]),
            alpha=float(data["amplitude_contrast"]),
            B=0,
        )
        for u, v, a in zip(
            data["defocus_u_angstrom"], data["defocus_v_angstrom"], data["astigmatism_angle_deg"], strict=True
        )
    ]
    aspire_ctf = np.asarray(filters[0].evaluate_grid(size, pixel_size=pixel), dtype=np.float64)
    reference = np.asarray(data["reference_ctf"], dtype=np.float64)
    ctf_check = {
        "correlation_with_cryodecon_ctf": float(np.corrcoef(aspire_ctf.ravel(), reference.ravel())[0, 1]),
        "max_abs_difference": float(np.abs(aspire_ctf - reference).max()),
    }
    src = ArrayImageSource(-boxes, pixel_size=pixel)  # un-invert: ASPIRE's model is x = CTF ⊛ p + n
    src.unique_filters = filters
    src.filter_indices = np.arange(n)
    src = src.phase_flip()
    src = src.cache()
    timings["source_and_phase_flip"] = time.perf_counter() - start

    start = time.perf_counter()
    classifier = RIRClass2D(
        src,
        fspca_components=400,
        bispectrum_components=300,
        n_nbor=args.n_nbor,
        large_pca_implementation="legacy",
        nn_implementation="sklearn",
        bispectrum_implementation="legacy",
        seed=args.seed,
    )
    classes, reflections, distances = classifier.classify()
    timings["classify"] = time.perf_counter() - start

    averager = BFTAverager2D(composite_basis=classifier.pca_basis.basis, src=src)
    start = time.perf_counter()
    selector = (
        GlobalVarianceClassSelector(averager=averager)
        if args.selector == "global-variance"
        else DistanceClassSelector()
    )
    order = np.asarray(selector.select(classes, reflections, distances))
    selection = order[: args.n_classes]
    timings["select"] = time.perf_counter() - start

    start = time.perf_counter()
    averages = averager.average(classes[selection], reflections[selection]).asnumpy()
    timings["average"] = time.perf_counter() - start

    meta = {
        "aspire_version": aspire.__version__,
        "python": sys.version.split()[0],
        "n_particles": n,
        "settings": {
            "classifier": "RIRClass2D(fspca_components=400, bispectrum_components=300, legacy PCA and bispectrum, "
            "sklearn nearest neighbours)",
            "n_nbor": args.n_nbor,
            "selector": type(selector).__name__,
            "averager": "BFTAverager2D (defaults: 360 angles, brute-force translations)",
            "preprocessing": "−boxes (un-inverted), one CTFFilter per particle, phase_flip()",
            "seed": args.seed,
        },
        "seconds": timings,
        "ctf_check": ctf_check,
    }
    np.savez(
        args.output_npz,
        averages=np.asarray(averages, dtype=np.float32),
        selection=selection.astype(np.int64),
        classes=np.asarray(classes, dtype=np.int64),
        reflections=np.asarray(reflections, dtype=bool),
        distances=np.asarray(distances, dtype=np.float64),
        meta=json.dumps(meta),
    )


if __name__ == "__main__":
    main()
