"""2D classification of simulated particles with known views: cryodecon's streaming classes vs ASPIRE's.

    bash benchmarks/setup_aspire.sh        # once: benchmark-only venv benchmarks/.venv-aspire (needs PyPI)
    .venv/bin/python benchmarks/bench_classification.py            # 5,000 particles, batches of 1,000, K = 50
    .venv/bin/python benchmarks/bench_classification.py --classes 100 --aspire-n-nbor match \
        --output-name classification_k100                           # K = 100: about 50 per class, as ASPIRE's
    .venv/bin/python benchmarks/bench_classification.py --quick    # 600 particles, batches of 200, K = 20

Writes ``benchmarks/results/classification.json`` and ``.md`` (``--quick``: ``classification_quick.*``) and prints
the Markdown.  No network at run time; deterministic seeds; one torch thread and one BLAS/OpenMP thread for
ASPIRE (``--threads``).

Data.  Three pseudo-atom structures of the project's simulator (``make_structures(4, 150 Å, seed)[1:]``:
the dumbbell, trimer and tetramer families; the single round body of id 0 has too few distinct views to test
view purity), each particle projected exactly (``render_projection``, the simulator's pixel-integrated
projection, equal to ``project_volume`` of ``render_structure_volume`` up to sampling) at a uniformly random
orientation (``random_euler_angles_deg``) and a random shift, uniform in ±3 px on each axis.  Each particle has
its own CTF (mean defocus uniform 0.8–2.5 µm, U − V uniform 0–1000 Å at a uniform angle, 300 kV, C_s 2.7 mm,
7 % amplitude contrast; ``particle_transfer_functions``, i.e. ``optics.ctf_2d``).  Micrograph model per box:
raw = CTF ⊛ (scale · p) + ice + n with n white, σ = 1; ``scale`` makes the SNR 0.1: var(CTF ⊛ scale·p) inside the
particle circle (diameter 150 Å), averaged over the good particles, over σ² = 1.  Boxes are then normalised as
RELION does (mean 0, standard deviation 1 in the background beyond 0.75 · B/2) and contrast-inverted (white
particles), as ``picking.extract_particles`` cuts them.  64 px boxes at 4 Å/px (Nyquist 8 Å).

Junk (``--junk-fraction``, default 25 %), in three equal kinds: ``noise`` (an empty pick), ``blob`` (a Gaussian
blob of σ 5–8 px carrying a structure's integrated potential, centred 14–24 px off the box centre, through the
CTF: a neighbour or contamination at the box edge) and ``ice`` (a linear gradient of random direction,
peak-to-peak 2–4 σ, plus a smooth random field of 1 σ, added after the CTF like thickness variation).

cryodecon.  ``update_classes`` over the stream in batches (1,000; ``--quick``: 200) with
``Classification2DConfig(n_classes=K, particle_diameter_angstrom=170)`` and its other defaults (class splitting
on), on the CPU, one thread.  After each batch: the class averages, the purity of a fixed held-out set
(``--held-out``, 1,000 particles simulated like the stream with seed + 1) assigned to the classes after that
batch (``assign_particles``), the purity of every particle streamed so far under the class it was given on
arrival, the FRC of each average against the truth, and the seconds of the update.  After the
stream: ``assign_particles`` of every particle against the final classes (timed separately: the "final
membership"), ``select_classes`` with its default criteria, and the metrics below.

ASPIRE.  ``aspire.classification.RIRClass2D`` (rotationally invariant bispectrum features and nearest neighbours)
with ``BFTAverager2D`` and a class selector, i.e. the components of ASPIRE 0.14's ``DefaultClassAvgSource``
(``ClassAvgSourcev140``), on the same boxes, phase-flipped with ASPIRE's own CTF filters, in the venv of
``setup_aspire.sh`` as a subprocess (``aspire_class2d_runner.py``; its docstring lists every setting).  K of its n
overlapping classes (each image with its ``n_nbor`` nearest neighbours, reflections allowed) are selected and
averaged.  Selector (``--aspire-selector``): ``distance`` (the K tightest neighbourhoods) by default; ASPIRE's own
default, ``global-variance``, kept only junk-majority classes on these data (``classification_aspire_default_selector``)
and spends most of its time averaging every class to rank them.  ``--aspire-n-nbor`` (default ``50,match``): one
ASPIRE run per value, its default 50 neighbours (51 per class) and ``match`` = n/K − 1, classes as large as
cryodecon's on average.  It is a batch method: it classifies all particles at once.

Ceiling.  View purity falls as classes grow (a class of m members of one structure spans about m/n_s of the sphere
of views), so purities are read at equal class size against a ceiling: each structure's good particles cut into
classes of the same mean size from their *true* viewing directions (spherical k-means), ``oracle_view_purity``.

Metrics (the same for both; a "class" is a set of members and an average):

* View.  Particle j of structure s seen with rotation A_j (a point r of the structure lands at A_j r, projected
  along z) has the viewing direction d_j = A_jᵀ e_z, the third row of A_j: two projections of one structure are
  the same image up to an in-plane rotation exactly when their d agree, and a mirrored projection is the view
  from −d.  A member's *effective* direction is d_j, or −d_j when the method reflected it (ASPIRE's reflection
  flags; cryodecon does not reflect).  The class's *majority view* (s*, d*) is, over the structures s and the
  effective directions d_c of its members of structure s, the pair with the most members of structure s within
  10° of d_c (a mode, found among the members' own directions).
* Purity.  Members matching the majority view (same structure, effective direction within 10° of d*) over the
  class's members.  A class whose members are more than half junk is a *junk class*, whose matches are its
  junk members (any kind).  Reported over the *good* (non-junk) classes: the member-weighted view purity
  Σ matches / Σ members, the median class purity and the structure purity (members of the class's commonest
  structure over members); apart from it, the count of junk classes, the junk share of the good classes'
  members and of the junk classes' members (how cleanly junk is isolated).  With uniformly random views a
  10° cap holds (1 − cos 10°)/2 = 0.76 % of the sphere, so K classes over 3 structures cannot all be view-pure;
  the structure purity and purity at 20° (``purity_20deg``) show the coarser grain.  Defined for any class set,
  junk-majority or not: the *good particles' view purity* Σ_k (good members of class k matching its majority
  view) / Σ_k (good members of class k), over every populated class.
* FRC against the truth.  The noise-free projection of s* at the orientation of the member whose effective
  direction is d* (reflected where the member was), turned over in-plane angles (1° steps) and shifted (FFT
  cross-correlation, parabolic sub-pixel peak) to its best normalised correlation with the average; then both
  are masked by a soft disc of the 170 Å mask diameter and the FRC is read at 0.5 and 0.143 (Å).  Against a
  noise-free reference 0.5 is the criterion that matches the half-set 0.143 (Rosenthal & Henderson 2003,
  J. Mol. Biol. 333:721).  Junk classes have none.  Reported: the median over good classes, the best class.
* Selection (cryodecon only; ASPIRE has no junk rejection): particles kept = ``select_particles``, the final
  members of selected classes whose class explains them at least 20 times better than background (ln B ≥ 3; the
  class-only figures are reported beside them); recall = good particles kept / good particles, precision = good
  particles kept / particles kept.  Goal: recall ≥ 80 % at precision ≥ 95 %.
* Time per 1,000 particles on the CPU: cryodecon, the summed ``update_classes`` seconds / n · 1,000 (the final
  ``assign_particles`` pass apart); ASPIRE, source + classification + selection + averaging seconds /
  n · 1,000.  ASPIRE's default selector averages the class of every particle (n averages of 51 images) and its
  nearest-neighbour search is all-against-all, so its time per particle does not fall with n.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from _common import write_results

from cryodecon_science.classification import (
    Classification2DConfig,
    ClassificationState,
    ParticleCtfs,
    assign_particles,
    class_averages,
    class_resolution,
    frc_resolution,
    particle_transfer_functions,
    rotate_images,
    select_classes,
    select_particles,
    soft_circular_mask,
    update_classes,
)
from cryodecon_science.optics import CtfParams, MicroscopeSettings, ctf_2d
from cryodecon_science.projection import random_euler_angles_deg, rotation_matrix_from_euler_deg
from cryodecon_science.simulate import Structure3D, make_structures
from cryodecon_science.simulate.structures import render_projection

HERE = Path(__file__).resolve().parent
ASPIRE_PYTHON = HERE / ".venv-aspire" / "bin" / "python"
ASPIRE_RUNNER = HERE / "aspire_class2d_runner.py"

BOX_PX = 64
PIXEL_ANGSTROM = 4.0
STRUCTURE_DIAMETER_ANGSTROM = 150.0
MASK_DIAMETER_ANGSTROM = 170.0
SNR = 0.1
MAX_SHIFT_PX = 3.0
DEFOCUS_RANGE_ANGSTROM = (8_000.0, 25_000.0)
MAX_ASTIGMATISM_ANGSTROM = 1_000.0
BACKGROUND_RADIUS_FRACTION = 0.75  # RELION's normalisation: background beyond 0.75 · B/2
VIEW_TOLERANCE_DEG = 10.0
COARSE_VIEW_TOLERANCE_DEG = 20.0
JUNK_KINDS = ("noise", "blob", "ice")
GOAL_RECALL = 0.80
GOAL_PRECISION = 0.95
MICROSCOPE = MicroscopeSettings(voltage_kv=300.0, spherical_aberration_mm=2.7, pixel_size_angstrom=PIXEL_ANGSTROM)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Particles:
    """Simulated boxes and their truth (module docstring)."""

    boxes: npt.NDArray[np.float32]  # (n, B, B) contrast-inverted, RELION-normalised
    structure: IntArray  # (n,) structure index, −1 for junk
    junk_kind: list[str | None]  # (n,) JUNK_KINDS entry or None
    euler_deg: FloatArray  # (n, 3) RELION (rot, tilt, psi); NaN for junk
    direction: FloatArray  # (n, 3) viewing direction d = A^T e_z; NaN for junk
    ctfs: ParticleCtfs
    clean_scale: float  # factor from projected potential (V·Å) to the noise-σ units of the raw boxes

    @property
    def good(self) -> npt.NDArray[np.bool_]:
        return self.structure >= 0


def disc(radius_px: float) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2
    return np.asarray(np.hypot(yy, xx) <= radius_px)


def simulate_particles(n: int, junk_fraction: float, seed: int, structures: tuple[Structure3D, ...]) -> Particles:
    """n boxes, round(junk_fraction · n) of them junk, shuffled (module docstring)."""
    rng = np.random.default_rng(seed)
    n_junk = round(junk_fraction * n)
    n_good = n - n_junk
    structure = np.concatenate([rng.integers(0, len(structures), n_good), -np.ones(n_junk, dtype=np.int64)])
    kinds: list[str | None] = [None] * n_good + [JUNK_KINDS[i % len(JUNK_KINDS)] for i in range(n_junk)]
    euler = np.full((n, 3), np.nan)
    euler[:n_good] = random_euler_angles_deg(rng, n_good)
    mean_defocus = rng.uniform(*DEFOCUS_RANGE_ANGSTROM, n)
    astigmatism = rng.uniform(0.0, MAX_ASTIGMATISM_ANGSTROM, n)
    params = [
        CtfParams(float(m + a / 2), float(m - a / 2), float(t))
        for m, a, t in zip(mean_defocus, astigmatism, rng.uniform(0.0, 180.0, n), strict=True)
    ]
    ctfs = ParticleCtfs.from_params(params, MICROSCOPE)
    centre = float(BOX_PX // 2)
    mean_mass = float(np.mean([s.atom_potential_volt_angstrom3.sum() for s in structures])) / PIXEL_ANGSTROM**2
    yy, xx = np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2
    potential = np.zeros((n, BOX_PX, BOX_PX))
    for i in range(n):
        if structure[i] >= 0:
            shift = rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX, 2)
            rotation = rotation_matrix_from_euler_deg(*map(float, euler[i]))
            potential[i] = render_projection(
                structures[structure[i]],
                rotation,
                (centre + shift[0], centre + shift[1]),
                PIXEL_ANGSTROM,
                (0, 0),
                (BOX_PX, BOX_PX),
            )
        elif kinds[i] == "blob":
            sigma = rng.uniform(5.0, 8.0)
            radius, phi = rng.uniform(14.0, 24.0), rng.uniform(0.0, 2 * math.pi)
            cy, cx = radius * math.sin(phi), radius * math.cos(phi)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
            potential[i] = blob * mean_mass / blob.sum()
    transfer = -particle_transfer_functions(ctfs, BOX_PX).double().numpy()  # CTF = −H
    signal = np.fft.irfft2(np.fft.rfft2(potential) * transfer, s=(BOX_PX, BOX_PX))
    inside = disc(STRUCTURE_DIAMETER_ANGSTROM / PIXEL_ANGSTROM / 2)
    good = structure >= 0
    scale = math.sqrt(SNR / float(signal[good][:, inside].var(axis=1).mean()))
    raw = scale * signal + rng.standard_normal(signal.shape)
    for i in map(int, np.flatnonzero(np.array([k == "ice" for k in kinds]))):
        phi = rng.uniform(0.0, 2 * math.pi)
        ramp = (math.cos(phi) * xx + math.sin(phi) * yy) / BOX_PX * rng.uniform(2.0, 4.0)
        field = np.fft.irfft2(
            np.fft.rfft2(rng.standard_normal((BOX_PX, BOX_PX)))
            * np.exp(
                -0.5
                * (np.hypot(*np.meshgrid(np.fft.fftfreq(BOX_PX), np.fft.rfftfreq(BOX_PX), indexing="ij")) / 0.03) ** 2
            ),
            s=(BOX_PX, BOX_PX),
        )
        raw[i] += ramp + field / field.std()
    background = ~disc(BACKGROUND_RADIUS_FRACTION * BOX_PX / 2)
    mean = raw[:, background].mean(axis=1)[:, None, None]
    std = raw[:, background].std(axis=1)[:, None, None]
    boxes = -(raw - mean) / std  # RELION normalisation, then contrast inversion (white particles)
    direction = np.full((n, 3), np.nan)
    for i in map(int, np.flatnonzero(good)):
        direction[i] = rotation_matrix_from_euler_deg(*map(float, euler[i]))[2]
    order = rng.permutation(n)
    return Particles(
        boxes=boxes[order].astype(np.float32),
        structure=structure[order],
        junk_kind=[kinds[i] for i in order],
        euler_deg=euler[order],
        direction=direction[order],
        ctfs=ctfs.subset(order),
        clean_scale=scale,
    )


# --- metrics --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassTruth:
    members: int
    junk_members: int
    junk_class: bool
    matches: int  # view matches (or junk members in a junk class)
    good_view_matches: int  # view matches among the good members, whatever the class
    matches_coarse: int  # the same at COARSE_VIEW_TOLERANCE_DEG
    structure_matches: int
    structure: int | None  # s* (None for a junk class or an empty one)
    medoid: int | None  # particle index whose effective direction is d*
    medoid_reflected: bool


def majority_view(
    particles: Particles, members: IntArray, reflected: npt.NDArray[np.bool_], tolerance_deg: float
) -> tuple[int, int | None, bool]:
    """(matches, medoid particle, whether it is reflected) of the class's majority view (module docstring)."""
    best: tuple[int, int | None, bool] = (0, None, False)
    cos_tol = math.cos(math.radians(tolerance_deg))
    for s in np.unique(particles.structure[members]):
        if s < 0:
            continue
        of_s = particles.structure[members] == s
        d = particles.direction[members[of_s]] * np.where(reflected[of_s], -1.0, 1.0)[:, None]
        counts = ((d @ d.T) >= cos_tol).sum(axis=1)
        c = int(np.argmax(counts))
        if counts[c] > best[0]:
            best = (int(counts[c]), int(members[of_s][c]), bool(reflected[of_s][c]))
    return best


def class_truth(particles: Particles, members: IntArray, reflected: npt.NDArray[np.bool_]) -> ClassTruth:
    """Truth of one class: its majority view and matches (module docstring)."""
    n_members = int(members.size)
    junk = int((particles.structure[members] < 0).sum())
    matches, medoid, medoid_reflected = majority_view(particles, members, reflected, VIEW_TOLERANCE_DEG)
    coarse, _, _ = majority_view(particles, members, reflected, COARSE_VIEW_TOLERANCE_DEG)
    structures = particles.structure[members]
    structure_counts = np.bincount(structures[structures >= 0], minlength=1)
    top_structure = int(structure_counts.max()) if structures.size else 0
    junk_class = 2 * junk > n_members
    return ClassTruth(
        members=n_members,
        junk_members=junk,
        junk_class=junk_class,
        matches=junk if junk_class else matches,
        good_view_matches=matches,
        matches_coarse=junk if junk_class else coarse,
        structure_matches=junk if junk_class else top_structure,
        structure=None if junk_class or medoid is None else int(particles.structure[medoid]),
        medoid=None if junk_class else medoid,
        medoid_reflected=medoid_reflected,
    )


def true_projection(structures: tuple[Structure3D, ...], particles: Particles, truth: ClassTruth) -> FloatArray:
    """Noise-free projection (V·Å, centred) of the class's majority view, reflected where its medoid was."""
    assert truth.medoid is not None and truth.structure is not None
    rotation = rotation_matrix_from_euler_deg(*map(float, particles.euler_deg[truth.medoid]))
    if truth.medoid_reflected:
        rotation = np.diag([1.0, -1.0, -1.0]) @ rotation  # the view from −d: the mirror image (y → −y)
    centre = float(BOX_PX // 2)
    return render_projection(
        structures[truth.structure], rotation, (centre, centre), PIXEL_ANGSTROM, (0, 0), (BOX_PX, BOX_PX)
    )


def aligned_frc(average: FloatArray, truth: FloatArray) -> dict[str, Any]:
    """The truth turned and shifted onto the average (best normalised correlation), both masked; FRC resolutions."""
    angles = torch.arange(0.0, 360.0, 1.0, dtype=torch.float64)
    t = torch.as_tensor(truth, dtype=torch.float64)
    turned = rotate_images(t.expand(angles.shape[0], -1, -1).contiguous(), angles, mode="bicubic")
    a = torch.as_tensor(average, dtype=torch.float64)
    a0 = a - a.mean()
    cc = torch.fft.irfft2(torch.fft.rfft2(a0)[None] * torch.fft.rfft2(turned).conj(), s=a.shape)
    norms = turned.sub(turned.mean(dim=(1, 2), keepdim=True)).norm(dim=(1, 2)) * a0.norm()
    peak = cc.amax(dim=(1, 2)) / norms
    best = int(torch.argmax(peak))
    surface = cc[best].numpy()
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)

    def parabolic(m: float, c: float, p: float) -> float:
        denom = m - 2 * c + p
        return 0.0 if denom == 0 else 0.5 * (m - p) / denom

    dy = parabolic(surface[(iy - 1) % BOX_PX, ix], surface[iy, ix], surface[(iy + 1) % BOX_PX, ix])
    dx = parabolic(surface[iy, (ix - 1) % BOX_PX], surface[iy, ix], surface[iy, (ix + 1) % BOX_PX])
    sy = (iy + dy + BOX_PX // 2) % BOX_PX - BOX_PX // 2
    sx = (ix + dx + BOX_PX // 2) % BOX_PX - BOX_PX // 2
    ky = np.fft.fftfreq(BOX_PX)[:, None]
    kx = np.fft.rfftfreq(BOX_PX)[None, :]
    shifted = np.fft.irfft2(
        np.fft.rfft2(turned[best].numpy()) * np.exp(-2j * math.pi * (ky * sy + kx * sx)), s=(BOX_PX, BOX_PX)
    )
    mask = soft_circular_mask(BOX_PX, MASK_DIAMETER_ANGSTROM / PIXEL_ANGSTROM / 2).double().numpy()
    res = frc_resolution(
        torch.as_tensor(np.fft.rfft2(average * mask))[None],
        torch.as_tensor(np.fft.rfft2(shifted * mask))[None],
        PIXEL_ANGSTROM,
    )
    return {
        "correlation": float(peak[best]),
        "angle_deg": float(angles[best]),
        "shift_yx_px": [float(sy), float(sx)],
        "resolution_05_angstrom": float(res.resolution_05_angstrom[0]),
        "resolution_0143_angstrom": float(res.resolution_0143_angstrom[0]),
    }


def evaluate_classes(
    particles: Particles,
    structures: tuple[Structure3D, ...],
    members: list[IntArray],
    reflected: list[npt.NDArray[np.bool_]],
    averages: FloatArray,
    with_frc: bool = True,
) -> dict[str, Any]:
    """Purity and FRC-to-truth of every class, and their summaries (module docstring)."""
    per_class = []
    for k, (m, r) in enumerate(zip(members, reflected, strict=True)):
        truth = class_truth(particles, m, r)
        entry: dict[str, Any] = {
            "class": k,
            "members": truth.members,
            "junk_members": truth.junk_members,
            "junk_class": truth.junk_class,
            "purity": truth.matches / truth.members if truth.members else None,
            "purity_20deg": truth.matches_coarse / truth.members if truth.members else None,
            "structure_purity": truth.structure_matches / truth.members if truth.members else None,
            "good_members": truth.members - truth.junk_members,
            "good_view_matches": truth.good_view_matches,
            "structure": truth.structure,
        }
        if with_frc and truth.medoid is not None and truth.members:
            entry.update(aligned_frc(averages[k].astype(np.float64), true_projection(structures, particles, truth)))
        per_class.append(entry)
    populated = [c for c in per_class if c["members"]]
    good = [c for c in populated if not c["junk_class"]]
    junk = [c for c in populated if c["junk_class"]]
    resolved = [c for c in good if "resolution_05_angstrom" in c]

    def weighted(classes: list[dict[str, Any]], key: str) -> float:
        total = sum(c["members"] for c in classes)
        return sum(c[key] * c["members"] for c in classes) / total if total else math.nan

    def median(values: list[float]) -> float:
        return float(np.median(values)) if values else math.nan

    good_members = sum(c["members"] for c in good)
    junk_members = sum(c["members"] for c in junk)
    return {
        "classes": len(per_class),
        "populated_classes": len(populated),
        "members_per_class_mean": float(np.mean([c["members"] for c in populated])) if populated else math.nan,
        "good_classes": len(good),
        "junk_classes": len(junk),
        "purity": weighted(good, "purity"),
        "purity_20deg": weighted(good, "purity_20deg"),
        "structure_purity": weighted(good, "structure_purity"),
        "class_purity_median": median([c["purity"] for c in good]),
        "good_memberships": sum(c["good_members"] for c in populated),
        "good_particle_purity": (
            sum(c["good_view_matches"] for c in populated) / sum(c["good_members"] for c in populated)
            if sum(c["good_members"] for c in populated)
            else math.nan
        ),
        "junk_share_in_good_classes": (
            sum(c["junk_members"] for c in good) / good_members if good_members else math.nan
        ),
        "junk_share_in_junk_classes": (
            sum(c["junk_members"] for c in junk) / junk_members if junk_members else math.nan
        ),
        "resolution_05_angstrom_median": median([c["resolution_05_angstrom"] for c in resolved]),
        "resolution_0143_angstrom_median": median([c["resolution_0143_angstrom"] for c in resolved]),
        "resolution_05_angstrom_best": min((c["resolution_05_angstrom"] for c in resolved), default=math.nan),
        "truth_correlation_median": median([c["correlation"] for c in resolved]),
        "per_class": per_class,
    }


def oracle_view_purity(particles: Particles, members_per_class: float, seed: int) -> dict[str, Any]:
    """The view purity of classes drawn from the *true* views: each structure's good particles split into
    round(n_s / m) classes of about m members by spherical k-means on their viewing directions (Lloyd's
    iterations from k-means++ seeds), scored like any class set.  No method that sees only images can beat it
    at that class size, so it is the ceiling the measured purities are read against."""
    rng = np.random.default_rng(seed)
    members: list[IntArray] = []
    for s in np.unique(particles.structure[particles.good]):
        index = np.flatnonzero(particles.structure == s)
        d = particles.direction[index]
        k = max(1, round(index.size / members_per_class))
        centres = [d[rng.integers(index.size)]]
        for _ in range(k - 1):  # k-means++: far points are likelier seeds
            distance = 1.0 - np.max(d @ np.asarray(centres).T, axis=1)
            weights = np.maximum(distance, 0.0) ** 2
            centres.append(d[rng.choice(index.size, p=weights / weights.sum())])
        c = np.asarray(centres)
        for _ in range(50):
            label = np.argmax(d @ c.T, axis=1)
            for j in range(k):
                mean = d[label == j].sum(axis=0)
                if np.linalg.norm(mean) > 0:
                    c[j] = mean / np.linalg.norm(mean)
        label = np.argmax(d @ c.T, axis=1)
        members += [index[label == j] for j in range(k) if np.any(label == j)]
    truths = [class_truth(particles, m, np.zeros(m.size, dtype=bool)) for m in members]
    return {
        "members_per_class": members_per_class,
        "classes": len(members),
        "purity": sum(t.matches for t in truths) / sum(t.members for t in truths),
        "purity_20deg": sum(t.matches_coarse for t in truths) / sum(t.members for t in truths),
    }


# --- the two methods ------------------------------------------------------------------------------------------


def run_cryodecon(
    particles: Particles,
    held_out: Particles,
    structures: tuple[Structure3D, ...],
    n_classes: int,
    batch: int,
    seed: int,
) -> dict[str, Any]:
    """Stream the particles through ``update_classes``; per-batch and final metrics (module docstring)."""
    config = Classification2DConfig(n_classes=n_classes, particle_diameter_angstrom=MASK_DIAMETER_ANGSTROM, seed=seed)
    n = particles.boxes.shape[0]
    state: ClassificationState | None = None
    arrival = np.zeros(n, dtype=np.int64)
    batches: list[dict[str, Any]] = []
    update_seconds = 0.0
    for start in range(0, n, batch):
        index = np.arange(start, min(n, start + batch))
        t = time.perf_counter()
        state, assigned = update_classes(state, particles.boxes[index], particles.ctfs.subset(index), config)
        seconds = time.perf_counter() - t
        update_seconds += seconds
        arrival[index] = assigned.class_index
        seen = np.arange(index[-1] + 1)
        members = [seen[arrival[seen] == k] for k in range(n_classes)]
        no_reflection = [np.zeros(m.size, dtype=bool) for m in members]
        metrics = evaluate_classes(
            particles, structures, members, no_reflection, class_averages(state).double().numpy()
        )
        held_class = assign_particles(state, held_out.boxes, held_out.ctfs, config).class_index
        held_members = [np.flatnonzero(held_class == k) for k in range(n_classes)]
        held = evaluate_classes(
            held_out,
            structures,
            held_members,
            [np.zeros(m.size, dtype=bool) for m in held_members],
            class_averages(state).double().numpy(),
            with_frc=False,
        )
        half_set = class_resolution(state)
        populated = state.particle_count > 0
        entry = {
            "batch": len(batches) + 1,
            "particles_seen": int(index[-1] + 1),
            "update_seconds": seconds,
            "seconds_per_1000": 1000.0 * seconds / index.size,
            "half_set_resolution_0143_angstrom_median": float(np.median(half_set.resolution_0143_angstrom[populated])),
            **{k: v for k, v in metrics.items() if k != "per_class"},
            "held_out": {k: v for k, v in held.items() if k != "per_class"},
            "retired": state.retired_count,
        }
        batches.append(entry)
        print(
            f"cryodecon batch {entry['batch']}: {entry['particles_seen']} seen, {seconds:.1f} s, held-out purity "
            f"{held['purity']:.3f} ({held['good_classes']} good classes), "
            f"FRC(truth)=0.5 at {entry['resolution_05_angstrom_median']:.1f} Å",
            flush=True,
        )
    assert state is not None
    t = time.perf_counter()
    final_class = np.zeros(n, dtype=np.int64)
    final_parts = []
    for start in range(0, n, batch):
        index = np.arange(start, min(n, start + batch))
        final_parts.append(assign_particles(state, particles.boxes[index], particles.ctfs.subset(index), config))
        final_class[index] = final_parts[-1].class_index
    assign_seconds = time.perf_counter() - t
    members = [np.flatnonzero(final_class == k) for k in range(n_classes)]
    final = evaluate_classes(
        particles,
        structures,
        members,
        [np.zeros(m.size, dtype=bool) for m in members],
        class_averages(state).double().numpy(),
    )
    selection = select_classes(state)
    kept = np.concatenate([select_particles(a, selection) for a in final_parts])
    in_selected = np.isin(final_class, selection.selected_classes)
    good = particles.good
    recall = float((kept & good).sum() / good.sum())
    precision = float((kept & good).sum() / kept.sum()) if kept.any() else math.nan
    for c in final["per_class"]:
        k = c["class"]
        c["selected"] = bool(selection.selected[k])
        c["rejected_because"] = list(selection.reasons[k])
    return {
        "config": {
            "n_classes": n_classes,
            "particle_diameter_angstrom": MASK_DIAMETER_ANGSTROM,
            "batch_size": batch,
            "angle_step_deg": config.angle_step_deg,
            "max_shift_px": config.max_shift_px,
            "forgetting_factor": config.forgetting_factor,
            "initial_iterations": config.initial_iterations,
            "batch_iterations": config.batch_iterations,
            "split_classes": config.split_classes,
            "seed": seed,
        },
        "update_seconds": update_seconds,
        "seconds_per_1000": 1000.0 * update_seconds / n,
        "assign_seconds": assign_seconds,
        "final": final,
        "selection": {
            "selected_classes": int(selection.selected.sum()),
            "particles_kept": int(kept.sum()),
            "good_kept_fraction": recall,
            "precision": precision,
            "junk_kept": int((kept & ~good).sum()),
            "junk_kept_by_kind": {
                kind: int(sum(1 for i in np.flatnonzero(kept & ~good) if particles.junk_kind[i] == kind))
                for kind in JUNK_KINDS
            },
            "goal_met": bool(recall >= GOAL_RECALL and precision >= GOAL_PRECISION),
            "classes_only": {
                "particles_kept": int(in_selected.sum()),
                "good_kept_fraction": float((in_selected & good).sum() / good.sum()),
                "precision": float((in_selected & good).sum() / in_selected.sum()) if in_selected.any() else math.nan,
            },
            "rejections_by_rule": {
                rule: sum(1 for r in selection.reasons if rule in r)
                for rule in sorted({x for r in selection.reasons for x in r})
            },
        },
        "batches": batches,
    }


def aspire_environment(python: Path) -> dict[str, Any]:
    """Whether the ASPIRE venv is there, and what it holds (or exactly why not)."""
    if not python.exists():
        return {"available": False, "reason": f"{python} not found: run `bash benchmarks/setup_aspire.sh` first"}
    probe = subprocess.run(
        [str(python), "-c", "import aspire.classification, sys, aspire; print(aspire.__version__)"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    if probe.returncode != 0:
        return {"available": False, "reason": f"`import aspire.classification` failed: {probe.stderr[-800:]}"}
    return {"available": True, "aspire_version": probe.stdout.strip(), "venv": str(python.parent.parent)}


def run_aspire(
    python: Path,
    particles: Particles,
    structures: tuple[Structure3D, ...],
    n_classes: int,
    selector: str,
    n_nbor: int,
    seed: int,
    threads: int,
) -> dict[str, Any]:
    """ASPIRE's RIR classification and class averages of the same boxes (``aspire_class2d_runner.py``)."""
    ctfs = particles.ctfs
    first = CtfParams(
        float(ctfs.defocus_u_angstrom[0]), float(ctfs.defocus_v_angstrom[0]), float(ctfs.astigmatism_angle_deg[0])
    )
    reference = np.fft.fftshift(ctf_2d(first, MICROSCOPE, (BOX_PX, BOX_PX), rfft=False, dtype=torch.float64).numpy())
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    with tempfile.TemporaryDirectory(prefix="bench_class2d_") as tmp:
        folder = Path(tmp)
        np.savez(
            folder / "in.npz",
            boxes=particles.boxes,
            defocus_u_angstrom=ctfs.defocus_u_angstrom,
            defocus_v_angstrom=ctfs.defocus_v_angstrom,
            astigmatism_angle_deg=ctfs.astigmatism_angle_deg,
            pixel_size_angstrom=PIXEL_ANGSTROM,
            voltage_kv=MICROSCOPE.voltage_kv,
            cs_mm=MICROSCOPE.spherical_aberration_mm,
            amplitude_contrast=MICROSCOPE.amplitude_contrast_fraction,
            reference_ctf=reference,
        )
        command = [
            str(python),
            str(ASPIRE_RUNNER),
            str(folder / "in.npz"),
            str(folder / "out.npz"),
            f"--n-classes={n_classes}",
            f"--selector={selector}",
            f"--n-nbor={n_nbor}",
            f"--seed={seed}",
        ]
        t = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=folder, env=env, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0 or not (folder / "out.npz").exists():
            raise RuntimeError(f"ASPIRE runner exited {proc.returncode}: {proc.stderr[-3000:]}")
        out = dict(np.load(folder / "out.npz"))
    meta = json.loads(str(out["meta"]))
    selection = out["selection"]
    members = [out["classes"][i] for i in selection]
    reflected = [out["reflections"][i] for i in selection]
    final = evaluate_classes(particles, structures, members, reflected, out["averages"].astype(np.float64))
    for c, reference_image in zip(final["per_class"], selection, strict=True):
        c["reference_image"] = int(reference_image)
    n = particles.boxes.shape[0]
    seconds = sum(meta["seconds"].values())
    covered = np.unique(np.concatenate(members))
    return {
        **meta,
        "label": f"ASPIRE {meta['aspire_version']} RIR + BFT, {n_nbor} neighbours ({n_nbor + 1} per class)",
        "n_nbor": n_nbor,
        "subprocess_wall_seconds": wall,
        "seconds_total": seconds,
        "seconds_per_1000": 1000.0 * seconds / n,
        "particles_in_selected_classes": int(covered.size),
        "junk_share_in_selected_classes": float(np.mean(particles.structure[np.concatenate(members)] < 0)),
        "final": final,
    }


# --- report ---------------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 1, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}{unit}"


def pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def findings(result: dict[str, Any]) -> list[str]:
    """Plain statements computed from the figures."""
    ours = result["cryodecon"]
    out = []
    s = ours["selection"]
    out.append(
        f"cryodecon's automatic selection keeps {pct(s['good_kept_fraction'])} of the good particles at "
        f"{pct(s['precision'])} precision ({s['junk_kept']} junk kept: {s['junk_kept_by_kind']}); the goal "
        f"(≥ {pct(GOAL_RECALL)} at ≥ {pct(GOAL_PRECISION)}) is {'met' if s['goal_met'] else 'NOT met'}."
    )
    b = ours["batches"]
    if len(b) > 1:
        h0, h1 = b[0]["held_out"], b[-1]["held_out"]
        out.append(
            f"Streaming: the classes after each batch, scored on {result['n_held_out']} held-out particles: view "
            f"purity {fmt(h0['purity'], 3)} → {fmt(h1['purity'], 3)}, good classes {h0['good_classes']} → "
            f"{h1['good_classes']}, structure purity {fmt(h0['structure_purity'], 2)} → "
            f"{fmt(h1['structure_purity'], 2)}; median FRC(truth)=0.5 resolution "
            f"{fmt(b[0]['resolution_05_angstrom_median'])} → {fmt(b[-1]['resolution_05_angstrom_median'])} Å from the "
            f"first to the last batch; updates take {min(x['update_seconds'] for x in b):.1f}–"
            f"{max(x['update_seconds'] for x in b):.1f} s per batch."
        )
    runs = result.get("aspire_runs") or []
    if not runs:
        out.append(f"ASPIRE was not run: {result['aspire']['reason']}")
        return out
    o = ours["final"]
    oracle = result.get("oracle", {})
    if oracle:
        sizes = ", ".join(f"{fmt(v['purity'], 3)} at {v['members_per_class']:.0f} per class" for v in oracle.values())
        out.append(
            f"Ceiling: classes cut from the true views (spherical k-means per structure) reach a view purity of "
            f"{sizes}; purity falls as classes grow, so methods compare at equal class size."
        )
    for aspire in runs:
        a = aspire["final"]

        def compare(
            name: str, key: str, higher_better: bool, unit: str = "", digits: int = 2, a: dict[str, Any] = a
        ) -> str:
            x, y = o[key], a[key]
            if not (math.isfinite(x) and math.isfinite(y)):
                return f"{name}: cryodecon {fmt(x, digits, unit)}, ASPIRE {fmt(y, digits, unit)}."
            ours_better = x > y if higher_better else x < y
            winner = "cryodecon" if ours_better else "ASPIRE"
            tag = "" if ours_better or x == y else " — we lose here"
            return f"{name}: cryodecon {fmt(x, digits, unit)}, ASPIRE {fmt(y, digits, unit)} ({winner} better{tag})."

        out.append(
            f"Against {aspire['label']} (cryodecon: {o['members_per_class_mean']:.0f} members per populated class):"
        )
        out.append(compare("View purity of the good classes (10°, member-weighted)", "purity", True))
        out.append(
            compare("View purity of the good particles in every class (10°)", "good_particle_purity", True, digits=3)
            + f" Over {o['good_memberships']} good memberships for cryodecon, {a['good_memberships']} for ASPIRE."
        )
        out.append(compare("Structure purity of the good classes", "structure_purity", True))
        out.append(compare("Junk share of the good classes' members", "junk_share_in_good_classes", False))
        out.append(
            f"Junk-majority classes: cryodecon {o['junk_classes']}/{o['populated_classes']} "
            f"({pct(o['junk_share_in_junk_classes'])} junk inside them), "
            f"ASPIRE {a['junk_classes']}/{a['populated_classes']} "
            f"({pct(a['junk_share_in_junk_classes'])} junk inside them)."
        )
        out.append(
            compare("Median class resolution, FRC vs truth = 0.5", "resolution_05_angstrom_median", False, " Å", 1)
        )
        out.append(
            compare("Median class resolution, FRC vs truth = 0.143", "resolution_0143_angstrom_median", False, " Å", 1)
        )
        t_ours, t_aspire = ours["seconds_per_1000"], aspire["seconds_per_1000"]
        out.append(
            f"CPU time per 1,000 particles: cryodecon {t_ours:.1f} s, ASPIRE {t_aspire:.1f} s "
            f"({'cryodecon' if t_ours < t_aspire else 'ASPIRE'} faster by "
            f"{max(t_ours, t_aspire) / min(t_ours, t_aspire):.1f}×{'' if t_ours < t_aspire else ' — we lose here'}); "
            f"{pct(aspire['seconds']['select'] / aspire['seconds_total'])} of ASPIRE's time is its class selector "
            f"({aspire['settings']['selector']})."
        )
        out.append(
            f"ASPIRE's {a['classes']} selected classes hold {aspire['particles_in_selected_classes']} distinct "
            f"particles ({pct(aspire['junk_share_in_selected_classes'])} of memberships are junk); it has no junk "
            "rejection, so selection accuracy is cryodecon's only."
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    ours = result["cryodecon"]
    runs = result.get("aspire_runs") or []
    title = "QUICK SMOKE RUN — " if result["quick"] else ""
    lines = [
        f"{title}2D classification of {result['n_particles']} simulated particles "
        f"({pct(result['junk_fraction'])} junk: noise, off-centre blobs, ice gradients), "
        f"{BOX_PX} px at {PIXEL_ANGSTROM} Å/px, SNR {SNR}, 3 structures, "
        f"random views; K = {result['n_classes']}; one CPU thread each.",
        "",
        "Purity over the good (non-junk-majority) classes; junk classes: more than half junk.",
        "",
        "| method | members per class | view purity (10°) | purity (20°) | structure purity "
        "| good particles' view purity, all classes "
        "| junk in good classes | junk classes "
        "| FRC(truth)=0.5, median | FRC(truth)=0.143, median | best class (0.5) | s / 1,000 particles |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("cryodecon (final membership)", ours["final"], ours["seconds_per_1000"])]
    rows += [(f"{a['label']}, {a['settings']['selector']}", a["final"], a["seconds_per_1000"]) for a in runs]
    for name, f, seconds in rows:
        lines.append(
            f"| {name} | {f['members_per_class_mean']:.0f} | {fmt(f['purity'], 2)} | {fmt(f['purity_20deg'], 2)} | "
            f"{fmt(f['structure_purity'], 2)} | "
            f"{fmt(f['good_particle_purity'], 3)} (of {f['good_memberships']}) | "
            f"{pct(f['junk_share_in_good_classes'])} | "
            f"{f['junk_classes']}/{f['populated_classes']} "
            f"| {fmt(f['resolution_05_angstrom_median'])} Å | "
            f"{fmt(f['resolution_0143_angstrom_median'])} Å | {fmt(f['resolution_05_angstrom_best'])} Å "
            f"| {seconds:.1f} |"
        )
    if not runs:
        lines.append(f"| ASPIRE | not run: {result['aspire']['reason']} | | | | | | | | | | |")
    for oracle in result.get("oracle", {}).values():
        lines.append(
            f"| ceiling: classes cut from the true views | {oracle['members_per_class']:.0f} | "
            f"{fmt(oracle['purity'], 2)} | {fmt(oracle['purity_20deg'], 2)} | 1.00 | | | | | | | |"
        )
    s = ours["selection"]
    lines += [
        "",
        f"cryodecon selection: {s['selected_classes']} classes kept, {s['particles_kept']} particles; good kept "
        f"{pct(s['good_kept_fraction'])}, precision {pct(s['precision'])} (goal ≥ {pct(GOAL_RECALL)} at ≥ "
        f"{pct(GOAL_PRECISION)}: {'met' if s['goal_met'] else 'NOT met'}); the selected classes' particles before "
        f"the per-particle evidence test (ln B ≥ 3 against background): {s['classes_only']['particles_kept']}, good "
        f"kept {pct(s['classes_only']['good_kept_fraction'])}, precision {pct(s['classes_only']['precision'])}.",
        "",
        f"Streaming (cryodecon): the classes after each batch, scored on {result['n_held_out']} held-out particles "
        "(assigned to them with `assign_particles`; a fixed set, so the figures compare across batches), and on "
        "arrival: every particle seen so far under the class it got when it arrived (small early classes score "
        "higher there: a class of m members has purity ≥ 1/m).",
        "",
        "| batch | particles seen | update s | s / 1,000 | held-out purity | held-out structure purity "
        "| good classes (held-out) | on-arrival purity | FRC(truth)=0.5 median | half-set FRC 0.143 median "
        "| retired by splits |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in ours["batches"]:
        h = b["held_out"]
        lines.append(
            f"| {b['batch']} | {b['particles_seen']} | {b['update_seconds']:.1f} | {b['seconds_per_1000']:.1f} | "
            f"{fmt(h['purity'], 3)} | {fmt(h['structure_purity'], 2)} | {h['good_classes']} | "
            f"{fmt(b['purity'], 3)} | {fmt(b['resolution_05_angstrom_median'])} Å | "
            f"{fmt(b['half_set_resolution_0143_angstrom_median'])} Å | {b['retired']} |"
        )
    lines += ["", "Findings:", ""] + [f"* {x}" for x in result["findings"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="600 particles, batches of 200, K = 20")
    parser.add_argument("--particles", type=int, default=None, help="default 5000 (--quick: 600)")
    parser.add_argument("--batch", type=int, default=None, help="stream batch size, default 1000 (--quick: 200)")
    parser.add_argument("--classes", type=int, default=None, help="K, default 50 (--quick: 20)")
    parser.add_argument("--junk-fraction", type=float, default=0.25)
    parser.add_argument(
        "--held-out", type=int, default=1000, help="particles the classes after each batch are scored on"
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=1, help="torch threads and ASPIRE's BLAS/OpenMP threads")
    parser.add_argument(
        "--aspire-selector",
        choices=("global-variance", "distance"),
        default="distance",
        help="ASPIRE's class selector (its default, global-variance, kept only junk-majority classes here)",
    )
    parser.add_argument(
        "--aspire-n-nbor",
        default="50,match",
        help="comma-separated neighbours per ASPIRE class, one ASPIRE run each; 'match': n/K - 1, so that its "
        "classes are as large as cryodecon's on average (default: ASPIRE's 50 and match)",
    )
    parser.add_argument("--no-aspire", action="store_true")
    parser.add_argument("--aspire-python", type=Path, default=ASPIRE_PYTHON)
    parser.add_argument("--output-name", default=None, help="results file stem (default classification[_quick])")
    args = parser.parse_args()
    n = args.particles or (600 if args.quick else 5000)
    batch = args.batch or (200 if args.quick else 1000)
    n_classes = args.classes or (20 if args.quick else 50)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    structures = make_structures(4, STRUCTURE_DIAMETER_ANGSTROM, seed=args.seed)[1:]
    t = time.perf_counter()
    particles = simulate_particles(n, args.junk_fraction, args.seed, structures)
    held_out = simulate_particles(args.held_out, args.junk_fraction, args.seed + 1, structures)
    simulate_seconds = time.perf_counter() - t
    print(f"simulated {n} particles in {simulate_seconds:.1f} s", flush=True)

    aspire = (
        {"available": False, "reason": "--no-aspire given"}
        if args.no_aspire
        else aspire_environment(args.aspire_python)
    )
    ours = run_cryodecon(particles, held_out, structures, n_classes, batch, args.seed)
    n_nbors = sorted(
        {round(n / n_classes) - 1 if x.strip() == "match" else int(x) for x in args.aspire_n_nbor.split(",")}
    )
    aspire_runs = []
    if aspire["available"]:
        for n_nbor in n_nbors:
            print(f"running ASPIRE, {n_nbor} neighbours …", flush=True)
            aspire_runs.append(
                run_aspire(
                    args.aspire_python,
                    particles,
                    structures,
                    n_classes,
                    args.aspire_selector,
                    n_nbor,
                    args.seed,
                    args.threads,
                )
            )
    else:
        print(f"ASPIRE not run: {aspire['reason']}", file=sys.stderr)

    result: dict[str, Any] = {
        "quick": args.quick,
        "n_particles": n,
        "n_good": int(particles.good.sum()),
        "n_held_out": int(held_out.boxes.shape[0]),
        "junk_fraction": args.junk_fraction,
        "junk_by_kind": {k: sum(1 for x in particles.junk_kind if x == k) for k in JUNK_KINDS},
        "n_classes": n_classes,
        "batch_size": batch,
        "box_px": BOX_PX,
        "pixel_size_angstrom": PIXEL_ANGSTROM,
        "snr": SNR,
        "structures": [
            {"structure_id": s.structure_id, "n_lobes": s.n_lobes, "n_atoms": s.n_atoms} for s in structures
        ],
        "view_tolerance_deg": VIEW_TOLERANCE_DEG,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "simulate_seconds": simulate_seconds,
        "goals": {"good_kept_fraction": GOAL_RECALL, "precision": GOAL_PRECISION},
        "aspire": aspire,
        "cryodecon": ours,
        "aspire_runs": aspire_runs,
        "oracle": {
            str(size): oracle_view_purity(particles, size, args.seed)
            for size in sorted({round(ours["final"]["members_per_class_mean"])} | {n_nbor + 1 for n_nbor in n_nbors})
        },
    }
    result["findings"] = findings(result)
    result["runtime_seconds"] = time.perf_counter() - started
    text = markdown(result)
    name = args.output_name or ("classification_quick" if args.quick else "classification")
    out = write_results(name, result, text)
    print(text)
    print(f"wrote {out}; runtime {result['runtime_seconds']:.0f} s")


if __name__ == "__main__":
    main()
