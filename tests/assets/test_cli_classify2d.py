"""The classify2d CLI contract: labels, poses in RELION's conventions, class averages and classes.csv from a RELION
particles.star whose image paths are relative to the current folder; bad input refused with exit 2, naming the file.

Particles: three shapes (triangle, rod, ring: sums of Gaussian blobs) and picks on empty ice, at random in-plane
angles and ±3 px shifts, through an astigmatic CTF (1–2.5 µm underfocus, 300 kV), contrast-inverted (white, as
RELION extracts them), SNR 0.1 in white noise of standard deviation 1, 48 px boxes at 4 Å/px; classified at 40 px
(Fourier-cropped, 4.8 Å/px) into one class more than there are kinds of pick.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import starfile

from cryodecon_assets.cli import classify
from cryodecon_assets.cli.main import main
from cryodecon_science.classification import RULES
from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.io.star import write_star_blocks
from cryodecon_science.optics import CtfParams, MicroscopeSettings, ctf_2d

CLI = str(Path(sys.executable).parent / "cryodecon")
BOX_PX = 48
CLASSIFICATION_BOX_PX = 40
PIXEL_ANGSTROM = 4.0
DIAMETER_ANGSTROM = 100.0
SNR = 0.1
PER_GROUP = 75
MICROSCOPE = MicroscopeSettings(voltage_kv=300.0, spherical_aberration_mm=2.7, pixel_size_angstrom=PIXEL_ANGSTROM)
SHAPES: dict[str, tuple[list[tuple[float, float]], float]] = {  # blob centres (y, x) and σ, pixels
    "triangle": ([(6.0 * math.sin(a), 6.0 * math.cos(a)) for a in np.arange(3) * 2 * math.pi / 3], 1.5),
    "rod": ([(0.0, x) for x in (-9.0, -3.0, 3.0, 9.0)], 1.5),
    "ring": ([(8.0 * math.sin(a), 8.0 * math.cos(a)) for a in np.arange(6) * 2 * math.pi / 6], 1.5),
    # No symmetry; blob centres averaging to 0, so the centre of mass is the particle centre.
    "hook": ([(y - 1.0, x - 1.8) for y, x in ((0.0, -9.0), (0.0, -3.0), (0.0, 3.0), (0.0, 9.0), (5.0, 9.0))], 1.5),
}
GROUPS = ("triangle", "rod", "ring", "empty")
N_CLASSES = len(GROUPS) + 1
OUTPUTS = ("class_averages.mrcs", "particles.star", "classes.csv")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600, env=dict(os.environ), cwd=cwd)


def render(name: str, angle_deg: float, shift_yx_px: tuple[float, float]) -> npt.NDArray[np.float64]:
    """The shape turned by ``angle_deg`` (counter-clockwise in (x, y)) and then shifted, centre at index B//2."""
    image = np.zeros((BOX_PX, BOX_PX))
    if name == "empty":
        return image
    yy, xx = np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    centres, sigma = SHAPES[name]
    for cy, cx in centres:
        x = c * cx - s * cy + shift_yx_px[1]
        y = s * cx + c * cy + shift_yx_px[0]
        image += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2.0 * sigma**2))
    return image


@dataclass(frozen=True)
class Truth:
    labels: npt.NDArray[np.int64]
    angle_deg: npt.NDArray[np.float64]
    shift_yx_px: npt.NDArray[np.float64]


def simulate(
    rng: np.random.Generator, groups: tuple[str, ...] = GROUPS, per_group: int = PER_GROUP, snr: float = SNR
) -> tuple[npt.NDArray[np.float32], list[CtfParams], Truth]:
    """Contrast-inverted boxes x = −CTF ⊛ p + n in random order; ``snr`` = mean variance of the signal inside the
    particle circle over the particles that have one, noise variance 1."""
    signals, labels, params, angles, shifts = [], [], [], [], []
    for label, name in enumerate(groups):
        for _ in range(per_group):
            angle, shift = rng.uniform(0.0, 360.0), rng.uniform(-3.0, 3.0, 2)
            defocus_u = rng.uniform(10_000.0, 25_000.0)
            ctf = CtfParams(defocus_u, defocus_u - rng.uniform(0.0, 500.0), rng.uniform(0.0, 180.0))
            inverted = -ctf_2d(ctf, MICROSCOPE, (BOX_PX, BOX_PX)).numpy()
            projection = render(name, angle, (float(shift[0]), float(shift[1])))
            signals.append(np.fft.irfft2(np.fft.rfft2(projection) * inverted, s=(BOX_PX, BOX_PX)))
            labels.append(label)
            params.append(ctf)
            angles.append(angle)
            shifts.append(shift)
    signal = np.stack(signals)
    radius_px = 0.5 * DIAMETER_ANGSTROM / PIXEL_ANGSTROM
    inside = np.hypot(*(np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2)) <= radius_px
    variance = signal[:, inside].var(axis=1)
    signal *= math.sqrt(snr / variance[variance > 0].mean())
    boxes = (signal + rng.normal(size=signal.shape)).astype(np.float32)
    order = rng.permutation(len(labels))
    truth = Truth(np.asarray(labels)[order], np.asarray(angles)[order], np.asarray(shifts)[order])
    return boxes[order], [params[i] for i in order], truth


def write_particles(
    star: Path, image_names: list[str], params: list[CtfParams], drop: tuple[str, ...] = (), box_px: int = BOX_PX
) -> None:
    """A RELION 3.1 particles.star (optics + particles) listing ``image_names`` with their CTFs."""
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [MICROSCOPE.voltage_kv],
            "rlnSphericalAberration": [MICROSCOPE.spherical_aberration_mm],
            "rlnAmplitudeContrast": [MICROSCOPE.amplitude_contrast_fraction],
            "rlnImagePixelSize": [PIXEL_ANGSTROM],
            "rlnImageSize": [box_px],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": image_names,
            "rlnMicrographName": [f"mic_{i % 7}.mrc" for i in range(len(image_names))],
            "rlnCoordinateX": [100.0 + i for i in range(len(image_names))],
            "rlnCoordinateY": [200.0 + i for i in range(len(image_names))],
            "rlnDefocusU": [p.defocus_u_angstrom for p in params],
            "rlnDefocusV": [p.defocus_v_angstrom for p in params],
            "rlnDefocusAngle": [p.astigmatism_angle_deg for p in params],
            "rlnOpticsGroup": [1] * len(image_names),
        }
    ).drop(columns=list(drop))
    write_star_blocks(star, {"optics": optics, "particles": particles})


@dataclass(frozen=True)
class Project:
    """A RELION-like project folder: Extract/ holds two stacks, Select/particles.star lists their images,
    interleaved and in reverse section order, by paths relative to the project folder."""

    root: Path
    star: Path
    image_names: list[str]
    params: list[CtfParams]
    truth: Truth


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("classify2d_project")
    boxes, params, truth = simulate(np.random.default_rng(20240611))
    (root / "Extract").mkdir()
    (root / "Select").mkdir()
    # Particle i lives in stack i % 2 at section n/2 − i // 2 (counted from 1): file order is not stack order.
    half = len(params) // 2
    for s in range(2):
        write_mrc(root / "Extract" / f"stack_{s}.mrcs", boxes[s::2][::-1], PIXEL_ANGSTROM)
    names = [f"{half - i // 2:06d}@Extract/stack_{i % 2}.mrcs" for i in range(len(params))]
    star = root / "Select" / "particles.star"
    write_particles(star, names, params)
    return Project(root, star, names, params, truth)


@dataclass(frozen=True)
class Outputs:
    particles: pd.DataFrame
    classes: pd.DataFrame
    averages: npt.NDArray[np.float32]
    averages_pixel_angstrom: float
    stdout: str
    selected: dict[str, pd.DataFrame]


@pytest.fixture(scope="module")
def classified(project: Project) -> Outputs:
    """One run of the CLI from the project folder, as RELION runs (image paths relative to the current folder)."""
    out = project.root / "Class2D"
    completed = _run(
        "classify2d",
        "Select/particles.star",
        "--classes",
        str(N_CLASSES),
        "--output-dir",
        "Class2D",
        "--particle-diameter-angstrom",
        str(DIAMETER_ANGSTROM),
        "--box-size-px",
        str(CLASSIFICATION_BOX_PX),
        "--device",
        "cpu",
        cwd=project.root,
    )
    assert completed.returncode == 0, completed.stderr
    blocks = starfile.read(out / "particles.star", always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    with mrcfile.open(out / "class_averages.mrcs") as mrc:
        averages, pixel = np.array(mrc.data), float(mrc.voxel_size.x)
    selected_star = out / "particles_selected.star"
    selected = starfile.read(selected_star, always_dict=True) if selected_star.exists() else {}
    return Outputs(
        blocks["particles"],
        pd.read_csv(out / "classes.csv", keep_default_na=False),
        averages,
        pixel,
        completed.stdout,
        selected,
    )


def purity(classes: npt.NDArray[np.int64], labels: npt.NDArray[np.int64]) -> float:
    """Σ_k (largest group in class k) / n: 1 when no class mixes kinds of pick."""
    return sum(int(np.bincount(labels[classes == k]).max()) for k in np.unique(classes)) / labels.size


def test_every_particle_gets_a_class_in_input_order_and_the_classes_separate_the_shapes(
    project: Project, classified: Outputs
) -> None:
    particles = classified.particles
    assert list(particles["rlnImageName"]) == project.image_names
    classes = particles["rlnClassNumber"].to_numpy()
    assert classes.dtype.kind == "i" and classes.min() >= 1 and classes.max() <= N_CLASSES
    assert purity(classes, project.truth.labels) >= 0.85
    # The input's columns are kept, the alignment's added.
    for column in ("rlnMicrographName", "rlnCoordinateX", "rlnDefocusU", "rlnOpticsGroup"):
        assert column in particles.columns
    posterior = particles["rlnMaxValueProbDistribution"].to_numpy()
    assert np.all((posterior > 0) & (posterior <= 1.0 + 1e-9)) and np.median(posterior) > 0.9
    assert np.all((particles["rlnAnglePsi"] > -180.0) & (particles["rlnAnglePsi"] <= 180.0))


def test_classes_csv_and_class_averages_describe_the_k_classes(classified: Outputs) -> None:
    table = classified.classes
    assert list(table.columns) == [
        "class_number",
        "particles",
        "resolution_angstrom",
        "selected",
        "reasons",
        "particles_kept",
    ]
    assert list(table["class_number"]) == list(range(1, N_CLASSES + 1))
    counts = np.bincount(classified.particles["rlnClassNumber"], minlength=N_CLASSES + 1)[1:]
    assert list(table["particles"]) == list(counts) and int(table["particles"].sum()) == len(classified.particles)
    assert table["resolution_angstrom"].astype(float).gt(0).all()
    assert table["selected"].dtype == bool
    for selected, reasons in zip(table["selected"], table["reasons"], strict=True):
        assert (reasons == "") == selected
        assert set(filter(None, reasons.split(";"))) <= set(RULES)
    assert (table["particles_kept"] <= table["particles"]).all() and (
        table["particles_kept"][~table["selected"]] == 0
    ).all()
    assert table["particles_kept"][table["selected"]].sum() > 0.9 * table["particles"][table["selected"]].sum()
    # particles_selected.star: the kept rows of particles.star, with its optics block, as a Subset selection writes.
    assert set(classified.selected) == {"optics", "particles"}
    chosen = classified.selected["particles"]
    kept_per_class = np.bincount(chosen["rlnClassNumber"], minlength=N_CLASSES + 1)[1:]
    assert list(kept_per_class) == list(table["particles_kept"])
    assert set(chosen["rlnImageName"]) <= set(classified.particles["rlnImageName"])
    assert classified.averages.shape == (N_CLASSES, CLASSIFICATION_BOX_PX, CLASSIFICATION_BOX_PX)
    assert classified.averages.dtype == np.float32
    assert classified.averages_pixel_angstrom == pytest.approx(PIXEL_ANGSTROM * BOX_PX / CLASSIFICATION_BOX_PX)
    assert sum(line.startswith("class ") for line in classified.stdout.splitlines()) == N_CLASSES


def test_poses_follow_relions_conventions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """RELION (``Euler_angles2matrix``, ``Projector::rotate2D``): the particle is the class average turned clockwise
    by ψ and then moved by −origin.  An asymmetric shape centred on its centre of mass (as the class references are)
    seen at SNR 2, where alignment is accurate: origin = −(true shift) in Å, and θ_true + ψ is one angle (the class's
    own frame) for every particle, where the opposite conventions would leave errors of twice the shift and a
    spread θ − ψ."""
    boxes, params, truth = simulate(np.random.default_rng(7), groups=("hook",), per_group=80, snr=2.0)
    write_mrc(tmp_path / "hooks.mrcs", boxes, PIXEL_ANGSTROM)
    star = tmp_path / "hooks.star"
    write_particles(star, [f"{i + 1}@{tmp_path / 'hooks.mrcs'}" for i in range(len(params))], params)
    out = tmp_path / "out"
    argv = [str(star), "--classes", "1", "--output-dir", str(out), "--box-size-px", str(CLASSIFICATION_BOX_PX)]
    assert main(["classify2d", *argv, "--particle-diameter-angstrom", str(DIAMETER_ANGSTROM), "--device", "cpu"]) == 0
    capsys.readouterr()
    particles = starfile.read(out / "particles.star", always_dict=True)["particles"]
    origin_yx = particles[["rlnOriginYAngst", "rlnOriginXAngst"]].to_numpy()
    error = origin_yx + truth.shift_yx_px * PIXEL_ANGSTROM
    # Integer shifts at 4.8 Å/px leave up to 2.4 Å per axis; the opposite sign would leave twice the shift (~12 Å).
    assert np.median(np.abs(error)) <= 2.0, np.median(np.abs(error))
    psi = particles["rlnAnglePsi"].to_numpy()

    def concentration(angles_deg: npt.NDArray[np.float64]) -> float:
        return float(np.hypot(np.cos(np.radians(angles_deg)).mean(), np.sin(np.radians(angles_deg)).mean()))

    assert concentration(truth.angle_deg + psi) >= 0.95  # ψ is minus the counter-clockwise angle
    assert concentration(truth.angle_deg - psi) < 0.5


def test_streaming_chunks_in_file_order_and_assigns_every_particle(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(classify, "STREAM_ABOVE", 200)
    monkeypatch.setattr(classify, "STREAM_CHUNK", 150)
    monkeypatch.chdir(project.root)
    status = main(
        [
            "classify2d",
            str(project.star),
            "--classes",
            str(N_CLASSES),
            "--output-dir",
            str(tmp_path),
            "--particle-diameter-angstrom",
            str(DIAMETER_ANGSTROM),
            "--box-size-px",
            str(CLASSIFICATION_BOX_PX),
            "--device",
            "cpu",
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert "streamed in 2 chunks" in capsys.readouterr().out
    particles = starfile.read(tmp_path / "particles.star", always_dict=True)["particles"]
    assert list(particles["rlnImageName"]) == project.image_names
    assert purity(particles["rlnClassNumber"].to_numpy(), project.truth.labels) >= 0.85
    table = pd.read_csv(tmp_path / "classes.csv", keep_default_na=False)
    assert int(table["particles"].sum()) == len(project.image_names)


def test_stream_chunks_are_at_most_the_chunk_size_and_the_first_holds_two_per_class() -> None:
    chunks = classify.stream_chunks(2_501, 5)
    assert [len(c) for c in chunks] == [834, 834, 833]
    np.testing.assert_array_equal(np.concatenate(chunks), np.arange(2_501))
    assert len(classify.stream_chunks(2_100, 600)[0]) >= 1_200


def test_image_paths_are_resolved_against_the_current_folder(project: Project, tmp_path: Path) -> None:
    """Run from elsewhere, the relative stack paths of the same STAR file are not found: exit 2, nothing written."""
    completed = _run("classify2d", str(project.star), "--classes", "2", "--output-dir", "out", cwd=tmp_path)
    assert completed.returncode == 2
    assert str(project.star) in completed.stderr and "Extract/stack_0.mrcs" in completed.stderr
    assert "no such file" in completed.stderr and str(tmp_path) in completed.stderr
    assert not (tmp_path / "out").exists()


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command in this process; it must exit 2 and write nothing.  Returns its stderr."""
    out = Path(argv[argv.index("--output-dir") + 1])
    assert main(["classify2d", *argv, "--device", "cpu"]) == 2
    assert not out.exists() or not any(out.iterdir())
    return capsys.readouterr().err


def test_bad_input_is_refused_with_exit_2_naming_the_file(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project.root)
    out = str(tmp_path / "out")
    n = len(project.image_names)

    missing = tmp_path / "nowhere.star"
    assert str(missing) in _refused([str(missing), "--classes", "2", "--output-dir", out], capsys)

    for column in ("rlnImageName", "rlnDefocusU"):
        star = tmp_path / f"no_{column}.star"
        write_particles(star, project.image_names, project.params, drop=(column,))
        message = _refused([str(star), "--classes", "2", "--output-dir", out], capsys)
        assert str(star) in message and column in message

    too_far = tmp_path / "too_far.star"
    names = [*project.image_names[:-1], f"{n:06d}@Extract/stack_1.mrcs"]  # stack_1 holds n/2 images
    write_particles(too_far, names, project.params)
    message = _refused([str(too_far), "--classes", "2", "--output-dir", out], capsys)
    line = next(i for i, text in enumerate(too_far.read_text().splitlines(), 1) if f"{n:06d}@" in text)
    assert str(too_far) in message and f"line {line}" in message and "Extract/stack_1.mrcs" in message
    assert f"holds {n // 2} images" in message

    small = np.random.default_rng(0).normal(size=(4, 40, 40)).astype(np.float32)
    write_mrc(tmp_path / "small.mrcs", small, PIXEL_ANGSTROM)
    mixed = tmp_path / "mixed.star"
    names = [*project.image_names[:-4], *(f"{i + 1}@{tmp_path / 'small.mrcs'}" for i in range(4))]
    write_particles(mixed, names, project.params)
    message = _refused([str(mixed), "--classes", "2", "--output-dir", out], capsys)
    assert str(mixed) in message and "small.mrcs" in message and "48 px" in message and "40 px" in message

    few = tmp_path / "few.star"
    write_particles(few, project.image_names[:9], project.params[:9])
    message = _refused([str(few), "--classes", "5", "--output-dir", out], capsys)
    assert str(few) in message and "9 particles" in message
