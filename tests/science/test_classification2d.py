"""Streaming 2D classification on simulated particles with known classes, poses, CTFs and noise.

Three particle shapes (triangle, rod, ring: sums of Gaussian blobs) and one kind of junk (picks on empty ice) are
seen at random in-plane angles and ±3 px shifts through an astigmatic CTF (1–2.5 µm underfocus, 300 kV, 4 Å/px),
contrast-inverted, at SNR 0.1 in white noise of standard deviation 1 — the RELION-normalised boxes
``picking.extract_particles`` cuts.  Classification runs with one class more than there are kinds of picks, as 2D
classification is used (EM finds local optima; a spare class absorbs them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch

import cryodecon_science.classification.streaming as streaming_module
from cryodecon_science.classification import (
    MIN_LOG_EVIDENCE_RATIO,
    RULES,
    ClassAssignments,
    Classification2DConfig,
    ClassificationState,
    ParticleCtfs,
    assign_particles,
    centre_offset_px,
    class_averages,
    class_resolution,
    contrast,
    embed_class_averages,
    frc_resolution,
    mask_fit_fraction,
    particle_transfer_functions,
    resolution_at_threshold_angstrom,
    rotate_images,
    select_classes,
    select_particles,
    update_classes,
)
from cryodecon_science.classification.geometry import shift_phase
from cryodecon_science.io.particles import ParticleRow
from cryodecon_science.optics import CtfParams, MicroscopeSettings, ctf_2d

BOX_PX = 40
PIXEL_ANGSTROM = 4.0
DIAMETER_ANGSTROM = 100.0  # 25 px: the particle circle has radius 12.5 px
RADIUS_PX = DIAMETER_ANGSTROM / PIXEL_ANGSTROM / 2
SNR = 0.1
PER_GROUP = 60
MICROSCOPE = MicroscopeSettings(voltage_kv=300.0, spherical_aberration_mm=2.7, pixel_size_angstrom=PIXEL_ANGSTROM)

# Blob centres (y, x) in pixels about the particle centre, and the blob σ in pixels.
SHAPES: dict[str, tuple[list[tuple[float, float]], float]] = {
    "triangle": ([(6.0 * math.sin(a), 6.0 * math.cos(a)) for a in np.arange(3) * 2 * math.pi / 3], 1.5),
    "rod": ([(0.0, x) for x in (-9.0, -3.0, 3.0, 9.0)], 1.5),
    "ring": ([(8.0 * math.sin(a), 8.0 * math.cos(a)) for a in np.arange(6) * 2 * math.pi / 6], 1.5),
}
GOOD = ("triangle", "rod", "ring")
JUNK = "empty"  # picks on empty ice: noise only
GROUPS = (*GOOD, JUNK)
N_CLASSES = len(GROUPS) + 1

FloatArray = npt.NDArray[np.float64]


def render(name: str, angle_deg: float = 0.0, shift_yx_px: tuple[float, float] = (0.0, 0.0)) -> FloatArray:
    """The shape turned by ``angle_deg`` (counter-clockwise in (x, y)) and shifted, centre at index B//2."""
    if name == JUNK:
        return np.zeros((BOX_PX, BOX_PX))
    yy, xx = np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    centres, sigma = SHAPES[name]
    image = np.zeros((BOX_PX, BOX_PX))
    for cy, cx in centres:
        x = c * cx - s * cy + shift_yx_px[1]
        y = s * cx + c * cy + shift_yx_px[0]
        image += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2.0 * sigma**2))
    return image


@dataclass(frozen=True)
class Batch:
    boxes: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    ctfs: ParticleCtfs


def simulate(rng: np.random.Generator, groups: tuple[str, ...] = GROUPS, per_group: int = PER_GROUP) -> Batch:
    """Contrast-inverted boxes x = −CTF ⊛ p + n, shuffled; SNR = (variance of a particle's signal inside the particle
    circle, averaged over the particles that have one) / (noise variance 1) = 0.1."""
    signals, labels, params = [], [], []
    for label, name in enumerate(groups):
        for _ in range(per_group):
            projection = render(name, rng.uniform(0.0, 360.0), tuple(rng.uniform(-3.0, 3.0, 2)))
            defocus_u = rng.uniform(10_000.0, 25_000.0)
            ctf = CtfParams(defocus_u, defocus_u - rng.uniform(0.0, 500.0), rng.uniform(0.0, 180.0))
            inverted = -ctf_2d(ctf, MICROSCOPE, (BOX_PX, BOX_PX)).numpy()  # the box is negated: −CTF
            signals.append(np.fft.irfft2(np.fft.rfft2(projection) * inverted, s=(BOX_PX, BOX_PX)))
            labels.append(label)
            params.append(ctf)
    signal = np.stack(signals)
    inside = np.hypot(*(np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2)) <= RADIUS_PX
    variance = signal[:, inside].var(axis=1)
    signal *= math.sqrt(SNR / variance[variance > 0].mean())
    boxes = signal + rng.normal(size=signal.shape)
    order = rng.permutation(len(labels))
    return Batch(
        boxes[order].astype(np.float32),
        np.asarray(labels, dtype=np.int64)[order],
        ParticleCtfs.from_params([params[i] for i in order], MICROSCOPE),
    )


def purity(classes: npt.NDArray[np.int64], labels: npt.NDArray[np.int64]) -> float:
    """Σ_k (largest group in class k) / n: 1 when no class mixes kinds of particle."""
    return sum(int(np.bincount(labels[classes == k]).max()) for k in np.unique(classes)) / labels.size


def majority(classes: npt.NDArray[np.int64], labels: npt.NDArray[np.int64], n_classes: int) -> list[int | None]:
    """The group most members of each class belong to (None for an empty class)."""
    return [int(np.bincount(labels[classes == k]).argmax()) if np.any(classes == k) else None for k in range(n_classes)]


def best_correlation(image: FloatArray, truth: FloatArray) -> float:
    """max over in-plane angles (1° steps) and circular shifts of the normalised correlation of image and truth."""
    angles = torch.arange(0.0, 360.0, 1.0, dtype=torch.float64)
    turned = rotate_images(torch.as_tensor(image, dtype=torch.float64).expand(angles.shape[0], -1, -1), angles)
    turned = turned - turned.mean(dim=(1, 2), keepdim=True)
    reference = torch.as_tensor(truth - truth.mean())
    cc = torch.fft.irfft2(torch.fft.rfft2(turned) * torch.fft.rfft2(reference).conj(), s=reference.shape)
    return float(cc.amax(dim=(1, 2)).max() / (turned[0].norm() * reference.norm()))


def config(**changes: object) -> Classification2DConfig:
    settings: dict[str, object] = {"n_classes": N_CLASSES, "particle_diameter_angstrom": DIAMETER_ANGSTROM}
    settings.update(changes)
    return Classification2DConfig(**settings)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Run:
    first: Batch
    second: Batch
    held_out: Batch
    state_1: ClassificationState
    assigned_1: ClassAssignments
    state_2: ClassificationState
    assigned_2: ClassAssignments


@pytest.fixture(scope="module")
def run() -> Run:
    """Two streaming batches of 240 particles each (one first batch from scratch, one update), and 240 held out."""
    rng = np.random.default_rng(20240611)
    first, second, held_out = simulate(rng), simulate(rng), simulate(rng)
    state_1, assigned_1 = update_classes(None, first.boxes, first.ctfs, config())
    state_2, assigned_2 = update_classes(state_1, second.boxes, second.ctfs, config())
    return Run(first, second, held_out, state_1, assigned_1, state_2, assigned_2)


# --- conventions: transfer function sign, rotation direction ------------------------------------------------


def test_transfer_function_of_inverted_boxes_is_minus_ctf_2d() -> None:
    params = [CtfParams(15_000.0, 14_000.0, 30.0), CtfParams(22_000.0, 21_000.0, 125.0, phase_shift_rad=0.5)]
    transfer = particle_transfer_functions(ParticleCtfs.from_params(params, MICROSCOPE), BOX_PX)
    assert transfer.shape == (2, BOX_PX, BOX_PX // 2 + 1) and transfer.dtype == torch.float32
    for h, p in zip(transfer, params, strict=True):
        torch.testing.assert_close(h, -ctf_2d(p, MICROSCOPE, (BOX_PX, BOX_PX)), atol=1e-5, rtol=0)
    # At k = 0 the inverted box's transfer is +w (white particles), the CTF's −w.
    assert float(transfer[0, 0, 0]) == pytest.approx(MICROSCOPE.amplitude_contrast_fraction, abs=1e-6)


def test_transfer_function_in_the_reference_frame_follows_a_rotation_of_the_image() -> None:
    """R_{−r}(h ⊛ f) = (H at R_r k) ⊛ R_{−r} f: the CTF in the frame of a reference turned by r."""
    ctfs = ParticleCtfs.from_params([CtfParams(30_000.0, 5_000.0, 20.0)], MICROSCOPE)
    h = particle_transfer_functions(ctfs, BOX_PX)[0].double().numpy()
    # Exact for r = 90° (np.rot90 is R_{−90} on the periodic box) once the Nyquist row and column, which a quarter
    # turn maps onto frequencies an even box does not hold, are empty; to 1e−5 because H is float32.
    f = np.random.default_rng(0).normal(size=(BOX_PX, BOX_PX))
    spectrum = np.fft.rfft2(f)
    spectrum[BOX_PX // 2, :] = 0.0
    spectrum[:, -1] = 0.0
    f = np.fft.irfft2(spectrum, s=f.shape)
    h_90 = particle_transfer_functions(ctfs, BOX_PX, rotation_deg=[90.0])[0].double().numpy()
    filtered = np.fft.irfft2(np.fft.rfft2(f) * h, s=f.shape)
    np.testing.assert_allclose(
        np.rot90(filtered), np.fft.irfft2(np.fft.rfft2(np.rot90(f)) * h_90, s=f.shape), atol=1e-5
    )
    # The direction: a point-spread function turned by −45° matches H at R_{45} k and not H at R_{−45} k
    # (bicubic interpolation of the sharp PSF keeps the match below 1).
    delta = np.zeros((BOX_PX, BOX_PX))
    delta[BOX_PX // 2, BOX_PX // 2] = 1.0
    psf = np.fft.irfft2(np.fft.rfft2(delta) * h, s=delta.shape)
    turned = rotate_images(torch.as_tensor(psf)[None], torch.tensor([-45.0]), mode="bicubic")[0].numpy()
    inside = np.hypot(*(np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2)) < 16

    def psf_in_frame(rotation_deg: float) -> FloatArray:
        h_r = particle_transfer_functions(ctfs, BOX_PX, rotation_deg=[rotation_deg])[0].double().numpy()
        return np.asarray(np.fft.irfft2(np.fft.rfft2(delta) * h_r, s=delta.shape))

    assert np.corrcoef(turned[inside], psf_in_frame(45.0)[inside])[0, 1] > 0.85
    assert np.corrcoef(turned[inside], psf_in_frame(-45.0)[inside])[0, 1] < 0.3


def test_particle_ctfs_come_from_particle_rows_of_one_optics_group() -> None:
    def row(ctf: CtfParams, microscope: MicroscopeSettings) -> ParticleRow:
        return ParticleRow("stack.mrcs", 1, "mic.mrc", (10.0, 20.0), ctf, microscope, 4.0, 0.9)

    first, second = CtfParams(15_000.0, 14_000.0, 30.0), CtfParams(21_000.0, 20_500.0, 100.0, 0.2)
    ctfs = ParticleCtfs.from_particle_rows([row(first, MICROSCOPE), row(second, MICROSCOPE)], pixel_size_angstrom=8.0)
    assert len(ctfs) == 2 and ctfs.microscope.pixel_size_angstrom == 8.0  # boxes binned twofold after extraction
    np.testing.assert_array_equal(ctfs.defocus_u_angstrom, [15_000.0, 21_000.0])
    np.testing.assert_array_equal(ctfs.phase_shift_rad, [0.0, 0.2])
    np.testing.assert_array_equal(ctfs.subset([1]).defocus_v_angstrom, [20_500.0])
    at_200_kv = MicroscopeSettings(voltage_kv=200.0, pixel_size_angstrom=PIXEL_ANGSTROM)
    with pytest.raises(ValueError, match="optics groups"):
        ParticleCtfs.from_particle_rows([row(first, MICROSCOPE), row(second, at_200_kv)])


def test_shift_phase_moves_an_image_by_whole_and_half_pixels() -> None:
    """T_s by the Fourier phase e^{−2πi k·s}: an integer shift is a circular roll; half a pixel puts a band-limited
    cosine at the value it has half a pixel away."""
    image = torch.randn(1, BOX_PX, BOX_PX, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    moved = torch.fft.irfft2(
        torch.fft.rfft2(image) * shift_phase(torch.tensor([[3.0, -5.0]]), BOX_PX), s=image.shape[-2:]
    )
    torch.testing.assert_close(moved, torch.roll(image, shifts=(3, -5), dims=(-2, -1)), atol=1e-5, rtol=0)
    x = torch.arange(BOX_PX, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 3 * x / BOX_PX)[None, None, :].expand(1, BOX_PX, BOX_PX)
    half = torch.fft.irfft2(torch.fft.rfft2(wave) * shift_phase(torch.tensor([[0.0, 0.5]]), BOX_PX), s=(BOX_PX, BOX_PX))
    torch.testing.assert_close(half[0, 0], torch.cos(2 * math.pi * 3 * (x - 0.5) / BOX_PX), atol=1e-5, rtol=0)


def test_rotation_is_counter_clockwise_in_the_xy_index_plane_about_the_box_centre() -> None:
    image = torch.zeros((1, BOX_PX, BOX_PX))
    c = BOX_PX // 2
    image[0, c, c + 5] = 1.0  # on the +x axis
    turned = rotate_images(image, torch.tensor([90.0]))[0]
    assert tuple(int(i) for i in torch.nonzero(turned > 0.99)[0]) == (c + 5, c)  # now on the +y axis


# --- classification of the first batch -----------------------------------------------------------------------


def test_first_batch_recovers_the_kinds_of_particle(run: Run) -> None:
    assigned, labels = run.assigned_1, run.first.labels
    assert purity(assigned.class_index, labels) >= 0.9
    # Every kind of particle is the majority of some class.
    assert set(GROUPS) <= {GROUPS[g] for g in majority(assigned.class_index, labels, N_CLASSES) if g is not None}
    assert assigned.class_posteriors.shape == (labels.size, N_CLASSES)
    np.testing.assert_allclose(assigned.class_posteriors.sum(axis=1), 1.0, atol=1e-5)
    assert np.median(assigned.posterior) > 0.9
    assert np.all((assigned.angle_deg >= 0) & (assigned.angle_deg < 360))
    assert np.all(np.hypot(*assigned.shift_yx_px.T) <= 4.0 + 1e-9)
    assert set(np.unique(assigned.half_set)) == {0, 1}
    assert int(run.state_1.particle_count.sum()) == labels.size
    # RELION-normalised boxes: background variance 1 (plus the little signal the ±3 px shifts put there).
    assert run.state_1.noise_variance == pytest.approx(1.0, abs=0.05)


def test_ctf_aware_class_averages_beat_plain_and_uncorrected_averages(run: Run) -> None:
    """The Wiener average Σ w H X / (Σ w H² + 1/SNR) restores the projection better than the plain mean of the
    raw boxes and than the mean of the same boxes aligned by the reported poses without CTF correction."""
    assigned, batch = run.assigned_1, run.first
    averages = class_averages(run.state_1).double().numpy()
    owners = majority(assigned.class_index, batch.labels, N_CLASSES)
    for group, name in enumerate(GOOD):
        k = max((k for k, g in enumerate(owners) if g == group), key=lambda k: int(np.sum(assigned.class_index == k)))
        members = np.flatnonzero((assigned.class_index == k) & (batch.labels == group))
        truth = render(name)
        wiener = best_correlation(averages[k], truth)
        plain = best_correlation(batch.boxes[batch.labels == group].mean(axis=0), truth)
        # Undo the reported pose, T_s then R_r, of each member: the pose convention of ClassAssignments.
        boxes = torch.as_tensor(batch.boxes[members], dtype=torch.float64)
        ky = torch.fft.fftfreq(BOX_PX, dtype=torch.float64)[:, None]
        kx = torch.fft.rfftfreq(BOX_PX, dtype=torch.float64)[None, :]
        shift = torch.as_tensor(assigned.shift_yx_px[members])
        phase = 2 * math.pi * (ky * shift[:, 0, None, None] + kx * shift[:, 1, None, None])
        unshifted = torch.fft.irfft2(torch.fft.rfft2(boxes) * torch.polar(torch.ones_like(phase), phase), s=(40, 40))
        aligned = rotate_images(unshifted, -torch.as_tensor(assigned.angle_deg[members])).mean(dim=0).numpy()
        uncorrected = best_correlation(aligned, truth)
        assert wiener > 0.8, name
        assert wiener > plain + 0.3, name
        assert wiener > uncorrected + 0.1, name
        # The reported poses put the aligned mean in the class average's own frame: no search needed.
        assert np.corrcoef(aligned.ravel(), averages[k].ravel())[0, 1] > 0.5, name


# --- streaming ------------------------------------------------------------------------------------------------


def test_a_streaming_update_keeps_purity_and_adds_particles(run: Run) -> None:
    assert purity(run.assigned_2.class_index, run.second.labels) >= 0.9
    # The classes keep their kind of particle from one batch to the next.
    before = majority(run.assigned_1.class_index, run.first.labels, N_CLASSES)
    after = majority(run.assigned_2.class_index, run.second.labels, N_CLASSES)
    for k, (a, b) in enumerate(zip(before, after, strict=True)):
        if a is not None and run.state_1.particle_count[k] >= PER_GROUP // 2:
            assert a == b
    # Purity on particles neither state has seen (the batches a state was built from flatter it: each particle's own
    # noise is in its class's average).  At SNR 0.1 it is set by each particle's noise more than by the averages, so
    # between two sets of classes it moves by a few particles either way: 0.02 is 5 of the 240.
    held_out = run.held_out
    with_one = purity(
        assign_particles(run.state_1, held_out.boxes, held_out.ctfs, config()).class_index, held_out.labels
    )
    with_two = purity(
        assign_particles(run.state_2, held_out.boxes, held_out.ctfs, config()).class_index, held_out.labels
    )
    assert with_two >= 0.9 and with_two >= with_one - 0.02
    assert run.state_2.particles_seen == 480 and run.state_2.batches_seen == 2
    # The spare class is light after the first batch: the second re-seeds it (splitting) and retires its particles.
    assert int(run.state_2.particle_count.sum()) + run.state_2.retired_count == 480
    assert run.state_1.retired_count == 0
    # Effective counts: γ · old + new, with γ = 0.9, less the re-seeded (lightest) class's old statistics.
    lightest = float(run.state_1.effective_count.min())
    np.testing.assert_allclose(run.state_2.effective_count.sum(), 0.9 * (240 - lightest) + 240, rtol=1e-3)
    # The second batch's half sets continue the particle parity of the first.
    assert run.assigned_2.half_set[0] == 240 % 2


def test_a_light_class_is_reseeded_by_splitting_the_class_that_mixes_two_kinds() -> None:
    """Triangles and rods, aligned, all in class 0; class 1 holds nothing this batch and 7 earlier particles: the split
    moves one kind to class 1, halves class 0's old statistics into it and retires class 1's 7 particles."""
    rng = np.random.default_rng(5)
    kinds = np.repeat([0, 1], 40)
    signals, params = [], []
    for kind in kinds:
        ctf = CtfParams(*(2 * [rng.uniform(10_000.0, 25_000.0)]), 0.0)
        image = render(("triangle", "rod")[kind])
        signals.append(np.fft.irfft2(np.fft.rfft2(image) * -ctf_2d(ctf, MICROSCOPE, (BOX_PX, BOX_PX)).numpy()))
        params.append(ctf)
    signal = np.stack(signals)
    boxes = torch.as_tensor(signal / signal.std() * math.sqrt(0.5) + rng.normal(size=signal.shape), dtype=torch.float32)
    ctfs = ParticleCtfs.from_params(params, MICROSCOPE)
    device = torch.device("cpu")
    grid = streaming_module._Grid(BOX_PX, RADIUS_PX, config(n_classes=2), device)
    n = kinds.size
    poses = streaming_module._Poses(
        torch.stack((torch.ones(n), torch.zeros(n)), dim=1),
        torch.zeros(n, 2),
        torch.zeros(n, 2, 2),
        torch.zeros(n, 2),
        torch.zeros(n, 2),
    )
    old = streaming_module._zero_stats(2, BOX_PX, device)
    old.weight[:, 0] = 50.0
    counts = np.array([100, 7])
    split, new_old, new_counts, retired = streaming_module._split_classes(
        poses, boxes, streaming_module.CtfTensors(ctfs, BOX_PX, device), old, counts, grid
    )
    moved = split.posterior.argmax(dim=1).numpy() == 1
    assert moved.sum() == n // 2 and purity(moved.astype(np.int64), kinds) == 1.0
    torch.testing.assert_close(new_old.weight[:, 1], torch.full((2,), 25.0))
    torch.testing.assert_close(new_old.weight[:, 0], torch.full((2,), 25.0))
    assert retired == 7 and new_counts.tolist() == [50, 50] and counts.tolist() == [100, 7]


def test_frc_resolution_is_finite_for_the_classes_of_particles(run: Run) -> None:
    owners = majority(run.assigned_2.class_index, run.second.labels, N_CLASSES)
    good = [k for k, g in enumerate(owners) if g is not None and GROUPS[g] in GOOD]
    resolution = class_resolution(run.state_2)
    assert resolution.frc.shape == (N_CLASSES, BOX_PX // 2)
    np.testing.assert_allclose(resolution.k_per_angstrom[-1], 1 / (2 * PIXEL_ANGSTROM))
    # Between Nyquist (8 Å) and the 0.4 d the selection asks for; 0.5 is read at or before 0.143.
    assert np.all((resolution.resolution_0143_angstrom[good] >= 8.0) & (resolution.resolution_0143_angstrom[good] < 40))
    assert np.all(resolution.resolution_05_angstrom[good] >= resolution.resolution_0143_angstrom[good])


def test_frc_resolution_improves_as_a_stream_adds_particles() -> None:
    """16 particles of one kind, then 144 more (γ = 1): ten times the particles resolve finer detail."""
    rng = np.random.default_rng(0)
    few = simulate(rng, groups=("triangle",), per_group=16)
    more = simulate(rng, groups=("triangle",), per_group=144)
    settings = config(n_classes=1, forgetting_factor=1.0)
    state_few, _ = update_classes(None, few.boxes, few.ctfs, settings)
    state_all, _ = update_classes(state_few, more.boxes, more.ctfs, settings)
    np.testing.assert_allclose(state_all.effective_count, [160.0], rtol=1e-4)
    before = class_resolution(state_few).resolution_0143_angstrom[0]
    after = class_resolution(state_all).resolution_0143_angstrom[0]
    assert math.isfinite(after) and 8.0 <= after < before


# --- selection --------------------------------------------------------------------------------------------------


def test_selection_keeps_the_particles_and_rejects_the_junk_with_its_reason(run: Run) -> None:
    selection = select_classes(run.state_2)
    owners = majority(run.assigned_2.class_index, run.second.labels, N_CLASSES)
    assert selection.selected.shape == (N_CLASSES,) and len(selection.reasons) == N_CLASSES
    for k, owner in enumerate(owners):
        if owner is None:
            continue
        name = GROUPS[owner]
        if name == JUNK:
            assert not selection.selected[k]
            assert "outside_mask" in selection.reasons[k]
        elif selection.particle_fraction[k] > 0.1:
            assert selection.selected[k], (name, selection.reasons[k])
            assert selection.reasons[k] == ()
    assert all(set(r) <= set(RULES) for r in selection.reasons)
    np.testing.assert_allclose(selection.particle_fraction.sum(), 1.0)
    np.testing.assert_array_equal(selection.particle_count, run.state_2.particle_count)


def test_the_evidence_against_background_keeps_the_particles_and_drops_the_empty_picks(run: Run) -> None:
    """ln B = ln p(x | class) − ln p(x | background): under background alone its expectation is −KL ≤ 0, so empty
    picks sit near 0; a particle's own signal puts it at ½‖M‖²/σ², tens here.  ``select_particles`` keeps ln B ≥ 3."""
    held_out = run.held_out
    assigned = assign_particles(run.state_2, held_out.boxes, held_out.ctfs, config())
    evidence = assigned.log_evidence_ratio
    empty = held_out.labels == GROUPS.index(JUNK)
    assert abs(float(np.median(evidence[empty]))) < 0.5 and np.all(evidence[empty] < MIN_LOG_EVIDENCE_RATIO)
    assert np.median(evidence[~empty]) > 5.0 and np.mean(evidence[~empty] >= MIN_LOG_EVIDENCE_RATIO) >= 0.9
    selection = select_classes(run.state_2)
    kept = select_particles(assigned, selection)
    assert not kept[empty].any() and kept[~empty].mean() >= 0.9
    in_selected = select_particles(assigned, selection, min_log_evidence_ratio=-np.inf)
    np.testing.assert_array_equal(in_selected, selection.selected[assigned.class_index])
    with pytest.raises(ValueError, match="outside"):
        select_particles(assigned, dataclasses.replace(selection, selected=np.ones(2, dtype=bool)))


def test_pure_noise_gives_no_class_worth_keeping() -> None:
    rng = np.random.default_rng(5)
    batch = simulate(rng, groups=("rod",), per_group=60)
    noise = rng.normal(size=batch.boxes.shape).astype(np.float32)
    state, _ = update_classes(None, noise, batch.ctfs, config(n_classes=2, initial_iterations=4))
    selection = select_classes(state)
    assert not selection.selected.any()
    assert all("low_contrast" in r or "outside_mask" in r for r in selection.reasons)


def test_shape_features_have_their_known_values() -> None:
    yy, xx = np.mgrid[0:BOX_PX, 0:BOX_PX] - BOX_PX // 2
    rho = np.hypot(yy, xx)
    centred = np.exp(-(yy**2 + xx**2) / (2 * 2.0**2))
    shifted = np.exp(-((yy - 0.0) ** 2 + (xx - 6.0) ** 2) / (2 * 2.0**2))
    wide_disc = (rho <= 16.0).astype(np.float64)
    two_level = np.where(rho <= RADIUS_PX, 3.0, 0.5)  # 3 inside the circle, 0.5 in the background
    averages = np.stack([centred, shifted, wide_disc, two_level])
    np.testing.assert_allclose(centre_offset_px(averages)[:2], [0.0, 6.0], atol=1e-6)
    fit = mask_fit_fraction(averages, RADIUS_PX)
    assert fit[0] == pytest.approx(1.0, abs=1e-6)
    assert fit[2] == pytest.approx(np.sum(rho <= RADIUS_PX) / np.sum(rho <= 16.0))  # uniform: the area ratio
    assert contrast(averages, RADIUS_PX)[3] == pytest.approx(6.0)
    assert np.isnan(contrast(averages, radius_px=18.0)).all()  # no background left beyond the mask edge
    with pytest.raises(ValueError, match="shape"):
        centre_offset_px(centred)


def test_resolution_is_read_where_the_frc_first_falls_below_the_threshold() -> None:
    k = np.arange(1, 21) / (40 * 4.0)  # rings of a 40 px box at 4 Å/px
    frc = np.clip(1.0 - (np.arange(1, 21) - 1) / 10.0, -1, 1)  # 1 at ring 1, 0 at ring 11
    # FRC = 0.5 at ring 6 exactly; 0.143 between rings 9 (0.2) and 10 (0.1): ring 9.57.
    assert resolution_at_threshold_angstrom(k, frc, 0.5) == pytest.approx(160.0 / 6.0)
    assert resolution_at_threshold_angstrom(k, frc, 0.143) == pytest.approx(160.0 / 9.57)
    assert resolution_at_threshold_angstrom(k, np.ones(20), 0.143) == pytest.approx(8.0)  # Nyquist, 2 × 4 Å
    assert resolution_at_threshold_angstrom(k, np.zeros(20), 0.143) == math.inf
    same = torch.fft.rfft2(torch.randn(2, BOX_PX, BOX_PX, generator=torch.Generator().manual_seed(1)))
    identical = frc_resolution(same, same, PIXEL_ANGSTROM)
    np.testing.assert_allclose(identical.frc, 1.0, atol=1e-5)
    np.testing.assert_allclose(identical.resolution_0143_angstrom, 8.0)


def test_correlation_by_matrix_product_and_by_fft_agree(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two ways the E-step correlates (``_Grid.direct_correlation_is_cheaper``) give the same poses."""
    boxes, ctfs = run.held_out.boxes[:80], run.held_out.ctfs.subset(np.arange(80))
    direct = assign_particles(run.state_2, boxes, ctfs, config())
    monkeypatch.setattr(streaming_module, "_GEMM_SPEEDUP", 0.0)  # the full inverse FFT always wins
    by_fft = assign_particles(run.state_2, boxes, ctfs, config())
    agree = (direct.class_index == by_fft.class_index) & (direct.angle_deg == by_fft.angle_deg)
    assert agree.mean() > 0.99  # float32 rounding may flip a near tie
    np.testing.assert_allclose(direct.correlation[agree], by_fft.correlation[agree], atol=1e-4)


# --- determinism, device, embedding ----------------------------------------------------------------------------


def test_classification_is_deterministic_for_a_seed_and_runs_on_the_device(device: str) -> None:
    batch = simulate(np.random.default_rng(3), groups=("triangle", "rod"), per_group=30)
    settings = config(n_classes=2, initial_iterations=2)
    state_a, a = update_classes(None, batch.boxes, batch.ctfs, settings, device=device)
    state_b, b = update_classes(None, batch.boxes, batch.ctfs, settings, device=device)
    assert state_a.device.type == torch.device(device).type
    np.testing.assert_array_equal(a.class_index, b.class_index)
    np.testing.assert_array_equal(a.angle_deg, b.angle_deg)
    torch.testing.assert_close(state_a.numerator, state_b.numerator)
    embedding = embed_class_averages(state_a, n_features=32, device=device)
    assert embedding.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message(run: Run) -> None:
    batch = run.first
    boxes, ctfs = batch.boxes[:20], ParticleCtfs.from_params([CtfParams(15_000.0, 15_000.0, 0.0)] * 20, MICROSCOPE)
    with pytest.raises(ValueError, match="n_classes"):
        config(n_classes=0)
    with pytest.raises(ValueError, match="forgetting_factor"):
        config(forgetting_factor=1.5)
    with pytest.raises(ValueError, match=r"\(n, B, B\)"):
        update_classes(None, boxes[0], ctfs, config())
    with pytest.raises(ValueError, match=r"\(n, B, B\)"):
        update_classes(None, boxes[:, :, :30], ctfs, config())
    with pytest.raises(ValueError, match="even"):
        update_classes(None, boxes[:, :39, :39], ctfs, config())
    with pytest.raises(ValueError, match="19 CTFs"):
        update_classes(None, boxes, ParticleCtfs.from_params([CtfParams(1e4, 1e4, 0.0)] * 19, MICROSCOPE), config())
    nan_boxes = boxes.copy()
    nan_boxes[3, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        update_classes(None, nan_boxes, ctfs, config())
    with pytest.raises(ValueError, match="2 particles per class"):
        update_classes(None, boxes[:5], ParticleCtfs.from_params([CtfParams(1e4, 1e4, 0.0)] * 5, MICROSCOPE), config())
    with pytest.raises(ValueError, match="K = 3"):
        update_classes(run.state_1, boxes, ctfs, config(n_classes=3))
    with pytest.raises(ValueError, match="exceeds the box"):
        update_classes(None, boxes, ctfs, config(particle_diameter_angstrom=200.0))
    other_optics = ParticleCtfs.from_params(
        [CtfParams(1e4, 1e4, 0.0)] * 20, MicroscopeSettings(pixel_size_angstrom=5.0)
    )
    with pytest.raises(ValueError, match="pixel size"):
        update_classes(run.state_1, boxes, other_optics, config())
    with pytest.raises(ValueError, match="NaN"):
        ParticleCtfs.from_params([CtfParams(math.nan, 1e4, 0.0)], MICROSCOPE)
