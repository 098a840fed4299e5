"""Streaming reference-free 2D classification: CTF-aware expectation–maximisation over mini-batches.

Model (Sigworth 1998, J. Struct. Biol. 122:328; Scheres 2012, RELION, J. Struct. Biol. 180:519).  A contrast-
inverted particle box x_i (background mean 0, standard deviation 1) is one of K class images A_k, turned by an
in-plane angle r, shifted by s, seen through the particle's transfer function H_i = −CTF_i = sin χ_i (the box is
negated, so the CTF that multiplies the projection is −CTF; ``ctf``), plus white Gaussian noise of variance σ² per
pixel:

    x_i = T_s R_r (h_i ⊛ A_k) + n_i,   i.e.   X_i = e^{−2πi k·s} · H_i · F(R_r A_k) + N_i.

σ² is measured in the boxes' background (beyond 0.75 · B/2, RELION's normalisation radius) and kept as a running
mean.

Alignment (E-step).  For every class k and rotation r of the grid (``angle_step_deg``) the model
M_ikr = H_i · F(R_r(m·A_k)) is compared with the masked particle m·x_i (m a soft disc of the particle diameter) at
every integer shift |s| ≤ ``max_shift_px``, c(s) = ⟨m x_i, T_s M_ikr⟩ (one matrix product over the searched shifts,
or an inverse FFT over all of them, whichever is cheaper):

    log p(x_i | k, r, s) = [c(s) − ½‖M_ikr‖²] / σ² − |s|² / (2σ_s²) + const,

a Gaussian log-likelihood with RELION's Gaussian prior on the offsets (σ_s = ``shift_prior_sigma_px``).  The E-step
is **a posterior over classes with the best pose per class**: the class posterior marginalises the pose,

    w_ik = π_k L_ik / Σ_l π_l L_il,   log L_ik = log Σ_{r,s} p(x_i | k, r, s)   (up to a constant),

with class priors π_k from the class weights (add-one smoothed; uniform on the first batch), as RELION's (Scheres
2012) and Sigworth's (1998) marginal likelihood; each class then keeps only its most likely pose (r*, s*) for the
M-step, as cryoSPARC's 2D classification does (Punjani et al. 2017, Nat. Methods 14:290), instead of RELION's M-step
term per pose. Marginalising matters for junk: an empty pick correlates best with some pose of any structured
reference by chance (the maximum of ~10³ noise correlations), and only the sum over poses discounts that.  The same
sum, normalised by the pose prior, is each particle's log Bayes factor against background alone (x_i = n_i, for
which every score above is 0): ln B_ik = ln Σ_{r,s} π(r, s) p(x_i | k, r, s) / p(x_i | 0), with π uniform in r and
the offset prior in s (``ClassAssignments.log_evidence_ratio``; ``selection.select_particles``).  On the
first batch σ² is multiplied by a temperature T ≥ 1 (below).  Before each E-step the references are shifted so that
the centre of mass of their positive density lies on the box centre (RELION's ``--center_classes``); with the offset
prior this keeps classes centred, so an off-centre average means particles off by more than the search.

Averaging (M-step), CTF-aware.  Each particle is turned back into the frame of class k (x ← R_{−r} T_{−s} x, the
shift exactly by a Fourier phase, the rotation by bicubic interpolation); its transfer function in that frame is H_i
with astigmatism angle θ_ast − r, evaluated exactly (``ctf``).  The sufficient statistics of class k are

    N_k = Σ_i w_ik H_i^{(−r)} F(R_{−r} T_{−s} x_i),   D_k = Σ_i w_ik (H_i^{(−r)})²,   W_k = Σ_i w_ik,

kept separately for the two half sets (particle j overall is in half j mod 2), and the class average is the Wiener
(MAP) estimate of RELION's 2D M-step,

    A_k = (N_k^A + N_k^B) / (D_k^A + D_k^B + 1/SNR_k),   1/SNR_k(j) = B²σ²/τ_k²(j) = D̄_k(j) (1 − FRC_k(j)) / FRC_k(j),

per Fourier ring j, with the signal power τ_k² from the half-set FRC of the class (``resolution``): SNR_half =
FRC/(1 − FRC) = D̄ τ²/(B²σ²) for D̄ the ring mean of one half's CTF² weights, as RELION derives τ² from the FSC in
3D refinement (Scheres 2012).  FRC is clamped to [``FRC_FLOOR``, ``FRC_CEILING``]; rings from the first with FRC ≤ 0
on get the floor (no measurable signal); frequencies beyond Nyquist are set to 0.  The averages are not masked.

First batch (reference-free start).  The particles are split into K random subsets with random in-plane angles
(seeded; RELION's and cryoSPARC's start) and averaged; then ``initial_iterations`` EM iterations run on the batch.
Two devices keep EM out of its commonest poor optima, where one class absorbs two kinds of particle while junk
spreads over several: deterministic annealing (Ueda & Nakano 1998, Neural Networks 11:271), T_t = T_0^(1 − t/t_a)
multiplies σ² in the likelihood, T_0 = ``initial_temperature`` falling to 1 by t_a = iterations −
``SETTLING_ITERATIONS``, so classes take shape while assignments are still soft (cryoSPARC's "initial classification
uncertainty factor" plays this part); and, until t_a, refilling any class left with less than
``MIN_START_CLASS_SHARE`` of n/K particles with a random half of the largest class.  EM still finds local optima:
ask for more classes than the kinds of particle expected, as 2D classification is used.

Later batches (stepwise EM).  Each later batch first decays the old statistics by the forgetting factor γ, (N, D, W)
← γ (N, D, W), then runs ``batch_iterations`` E/M passes against the averages of γ·old + this batch's current
statistics; the returned state holds γ·old + new.  This is stepwise (online) EM (Neal & Hinton 1998; Cappé &
Moulines 2009, J. R. Stat. Soc. B 71:593) in the spirit of cryoSPARC's streaming 2D classification and of RELION-4's
VDAM, whose mini-batch updates decay older gradients (Kimanius et al. 2021, Biochem. J. 478:4169): γ = 1 is a plain
running sum, γ < 1 lets particles aligned against early, poor references fade.  :func:`assign_particles` runs the
E-step alone, against fixed classes.

Class splitting on later batches.  Classes that lose their particles (weight below ``SPLIT_MIN_SHARE`` of the
mean: typically a few junk classes among many, or a class whose view another class took over) are re-seeded by
splitting the heaviest class, at most ``SPLIT_MAX_FRACTION`` · K per batch, after the first E-step: the heaviest
class's members in the batch are turned into its frame, phase-flipped (sign of H) and low-passed to
``SPLIT_LOW_PASS_FRACTION`` of Nyquist inside the mask, and split at the median of their first principal
component (the direction of largest variation, i.e. the views the class mixes), as CL2D splits classes
(Sorzano et al. 2010, J. Struct. Biol. 171:197).  One half moves to the re-seeded class, whose old statistics
become half of the split class's; the re-seeded class's earlier particles are counted as retired
(``ClassificationState.retired_count``).  With a fixed K this moves capacity from junk to the views that hold the
data, so the classes grow finer as particles accumulate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.classification.ctf import CtfTensors, ParticleCtfs
from cryodecon_science.classification.geometry import (
    centre_of_mass_offset_px,
    centred_radius_px,
    frequencies_per_px,
    hermitian_weights,
    in_plane_angles_deg,
    ring_index,
    rotate_images,
    shift_phase,
    soft_circular_mask,
)
from cryodecon_science.classification.resolution import ClassResolution, frc_resolution, ring_frc
from cryodecon_science.picking.extraction import RELION_BACKGROUND_RADIUS_FRACTION

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

FRC_FLOOR = 1e-3
"""Smallest FRC used for the Wiener regulariser: 1/SNR ≤ 999 D̄ (heavy damping, never a division by zero)."""
FRC_CEILING = 0.999
"""Largest FRC used for the Wiener regulariser (1/SNR ≥ D̄/999)."""
MIN_PAIR_WEIGHT = 1e-3
"""Class posteriors below this are left out of the M-step (they change an average by less than 0.1 % of a particle)."""
MIN_START_CLASS_SHARE = 0.25
"""On the first batch, a class with less than this fraction of n/K particles is refilled from the largest class."""
SETTLING_ITERATIONS = 3
"""The last EM iterations on the first batch run without refilling, so that the classes settle."""
SPLIT_MIN_SHARE = 0.35
"""On a later batch, a class whose weight (decayed old + this batch) is below this fraction of the mean is re-seeded
by splitting the heaviest class (module docstring)."""
SPLIT_MIN_MEMBERS = 20
"""A class is split only with at least this many members in the batch (each half needs enough to average)."""
SPLIT_MAX_FRACTION = 0.1
"""At most this fraction of K (and at least one) classes are re-seeded per batch."""
SPLIT_LOW_PASS_FRACTION = 0.25
"""The split's principal component is taken from the members below this fraction of the box's Nyquist ring."""
MIN_BOX_PX = 16
"""Smallest box edge accepted, pixels."""
_CHUNK_ELEMENTS = 1 << 24
"""Largest intermediate per E-step or M-step chunk, in float32 elements (≈ 64 MB), whatever K, the grid and B."""
_GEMM_SPEEDUP = 5.0
"""Throughput of a matrix product relative to batched small FFTs and element-wise products (measured on CPU)."""


@dataclass(frozen=True)
class Classification2DConfig:
    """Settings of streaming 2D classification (module docstring).

    Attributes
    ----------
    n_classes : int
        K ≥ 1.
    particle_diameter_angstrom : float
        Diameter d of the particle mask, Å (at most the box).
    angle_step_deg : float
        Step of the in-plane rotation grid, degrees.
    max_shift_px : int
        Largest translation searched, pixels (a disc of this radius, integer shifts).
    shift_prior_sigma_px : float
        σ_s of the Gaussian prior on translations, pixels.
    forgetting_factor : float
        γ ∈ (0, 1]: the old statistics are multiplied by it before each new batch.
    initial_iterations : int
        EM iterations on the first batch (≥ 1).
    batch_iterations : int
        E/M passes on each later batch (≥ 1).
    initial_temperature : float
        T_0 ≥ 1 of the deterministic annealing on the first batch (1: none).
    split_classes : bool
        Re-seed light classes by splitting the heaviest on later batches (module docstring).
    seed : int
        Seed of the random initial subsets and angles.
    """

    n_classes: int
    particle_diameter_angstrom: float
    angle_step_deg: float = 10.0
    max_shift_px: int = 4
    shift_prior_sigma_px: float = 2.0
    forgetting_factor: float = 0.9
    initial_iterations: int = 8
    batch_iterations: int = 2
    initial_temperature: float = 16.0
    split_classes: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {self.n_classes}")
        if not (math.isfinite(self.particle_diameter_angstrom) and self.particle_diameter_angstrom > 0):
            raise ValueError(f"particle_diameter_angstrom must be positive, got {self.particle_diameter_angstrom}")
        if not 0.0 < self.angle_step_deg <= 180.0:
            raise ValueError(f"angle_step_deg must lie in (0, 180], got {self.angle_step_deg}")
        if self.max_shift_px < 0:
            raise ValueError(f"max_shift_px must be >= 0, got {self.max_shift_px}")
        if not self.shift_prior_sigma_px > 0:
            raise ValueError(f"shift_prior_sigma_px must be positive, got {self.shift_prior_sigma_px}")
        if not 0.0 < self.forgetting_factor <= 1.0:
            raise ValueError(f"forgetting_factor must lie in (0, 1], got {self.forgetting_factor}")
        if self.initial_iterations < 1 or self.batch_iterations < 1:
            raise ValueError("initial_iterations and batch_iterations must be >= 1")
        if not (math.isfinite(self.initial_temperature) and self.initial_temperature >= 1.0):
            raise ValueError(f"initial_temperature must be finite and >= 1, got {self.initial_temperature}")


@dataclass(frozen=True, eq=False)
class ClassificationState:
    """Sufficient statistics of K classes after some batches (module docstring); never modified in place.

    Attributes
    ----------
    numerator : Tensor, shape (2, K, B, B//2+1), complex64
        N_k^h = Σ_i w_ik H_i F(aligned x_i) per half set h and class k (rfft layout, box centre at index B//2).
    denominator : Tensor, shape (2, K, B, B//2+1), float32
        D_k^h = Σ_i w_ik H_i².
    weight : Tensor, shape (2, K), float32
        W_k^h = Σ_i w_ik, decayed like N and D (effective particle numbers).
    particle_count : ndarray, shape (K,), int64
        Particles assigned to each class (their most probable class) over all batches, not decayed.
    noise_variance : float
        σ², the boxes' background variance per pixel (running mean, decayed like W).
    noise_weight : float
        Effective number of particles behind ``noise_variance``.
    particles_seen, batches_seen : int
        Particles and batches classified so far (particle j overall is in half set j mod 2).
    retired_count : int
        Particles counted in classes that were later re-seeded (splitting): Σ particle_count + retired_count is
        the number of particles seen.
    pixel_size_angstrom : float
        Sampling of the boxes, Å/px.
    particle_diameter_angstrom : float
        Mask diameter the classes were built with, Å.
    """

    numerator: torch.Tensor
    denominator: torch.Tensor
    weight: torch.Tensor
    particle_count: IntArray
    noise_variance: float
    noise_weight: float
    particles_seen: int
    batches_seen: int
    pixel_size_angstrom: float
    particle_diameter_angstrom: float
    retired_count: int = 0

    @property
    def n_classes(self) -> int:
        return int(self.numerator.shape[1])

    @property
    def box_px(self) -> int:
        return int(self.numerator.shape[2])

    @property
    def device(self) -> torch.device:
        return self.numerator.device

    @property
    def effective_count(self) -> FloatArray:
        """W_k^A + W_k^B per class, (K,) float64."""
        return np.asarray(self.weight.sum(dim=0).to("cpu", torch.float64).numpy(), dtype=np.float64)

    @property
    def particle_radius_px(self) -> float:
        return 0.5 * self.particle_diameter_angstrom / self.pixel_size_angstrom


@dataclass(frozen=True, eq=False)
class ClassAssignments:
    """Where each particle of a batch went.

    Pose convention: the class average turned by ``angle_deg`` (counter-clockwise in the (x, y) index plane, about
    index (B//2, B//2)) and then shifted by ``shift_yx_px`` matches the particle (``geometry``).

    Attributes
    ----------
    class_index : ndarray, shape (n,), int64
        Most probable class, 0 … K − 1.
    angle_deg : ndarray, shape (n,), float64
        In-plane angle of the best pose in that class, degrees in [0, 360).
    shift_yx_px : ndarray, shape (n, 2), float64
        Shift [y, x] of the best pose, pixels.
    posterior : ndarray, shape (n,), float64
        Posterior probability of the assigned class, max_k w_ik.
    class_posteriors : ndarray, shape (n, K), float64
        w_ik for every class (rows sum to 1).
    correlation : ndarray, shape (n,), float64
        Normalised cross-correlation of the masked particle with its best model H_i · R_r A_k, in [−1, 1].
    log_evidence_ratio : ndarray, shape (n,), float64
        ln p(x_i | k) − ln p(x_i | noise alone): the log Bayes factor of the assigned class's model, marginalised
        over the pose grid under the pose prior, against the particle being background (module docstring).
    half_set : ndarray, shape (n,), int64
        Half set (0 or 1) whose statistics the particle entered.
    """

    class_index: IntArray
    angle_deg: FloatArray
    shift_yx_px: FloatArray
    posterior: FloatArray
    class_posteriors: FloatArray
    correlation: FloatArray
    log_evidence_ratio: FloatArray
    half_set: IntArray


class _Stats(NamedTuple):
    numerator: torch.Tensor
    denominator: torch.Tensor
    weight: torch.Tensor

    def scaled(self, factor: float) -> _Stats:
        return _Stats(self.numerator * factor, self.denominator * factor, self.weight * factor)

    def plus(self, other: _Stats) -> _Stats:
        return _Stats(
            self.numerator + other.numerator, self.denominator + other.denominator, self.weight + other.weight
        )


class _Poses(NamedTuple):
    posterior: torch.Tensor  # (n, K)
    angle_deg: torch.Tensor  # (n, K)
    shift_yx_px: torch.Tensor  # (n, K, 2)
    correlation: torch.Tensor  # (n, K)
    log_evidence_ratio: torch.Tensor  # (n, K)


class _Grid:
    """Masks, Fourier weights and the translation search of one box size and config."""

    def __init__(self, box_px: int, radius_px: float, config: Classification2DConfig, device: torch.device) -> None:
        self.box = box_px
        self.mask = soft_circular_mask(box_px, radius_px, device=device)
        self.background = centred_radius_px(box_px, device) > RELION_BACKGROUND_RADIUS_FRACTION * box_px / 2
        self.angles_deg = torch.as_tensor(
            in_plane_angles_deg(config.angle_step_deg), dtype=torch.float32, device=device
        )
        self.weights = hermitian_weights(box_px, device)
        self.rings = ring_index(box_px, device)
        index = torch.arange(box_px, device=device)
        signed = torch.where(index <= box_px // 2, index, index - box_px).to(torch.float32)  # circular lag → shift
        sy, sx = torch.meshgrid(signed, signed, indexing="ij")
        distance2 = (sy**2 + sx**2).reshape(-1)
        searched = torch.nonzero(distance2 <= config.max_shift_px**2 + 1e-6)[:, 0]
        self.search_index = searched  # flat index into a (B, B) correlation map
        self.search_shifts_yx = torch.stack((sy, sx), dim=-1).reshape(-1, 2)[searched]  # (S, 2)
        self.search_log_prior = -distance2[searched] / (2.0 * config.shift_prior_sigma_px**2)  # (S,)
        ky, kx = frequencies_per_px(box_px, device)
        phase = (
            2.0 * math.pi * (ky[..., None] * self.search_shifts_yx[:, 0] + kx[..., None] * self.search_shifts_yx[:, 1])
        )
        # w(k)/B² · e^{+2πi k·s}: c(s) = Σ_k Re(X(k) conj(M(k)) · this), the correlation at the searched shifts.
        self.search_kernel = (
            torch.polar(torch.ones_like(phase), phase) * (self.weights[..., None] / box_px**2)
        ).reshape(-1, searched.shape[0])

    @property
    def n_shifts(self) -> int:
        return int(self.search_index.shape[0])

    def direct_correlation_is_cheaper(self) -> bool:
        """Whether the correlation at S shifts is cheaper as one matrix product than as a full inverse FFT.

        Per particle and reference the product costs 4·F·S flops (F = B(B/2+1) coefficients) at matrix-multiply
        speed, the FFT ≈ 2.5·B² log₂ B² + 6F at ``_GEMM_SPEEDUP`` times lower throughput.
        """
        n_coefficients = self.box * (self.box // 2 + 1)
        direct = 4.0 * n_coefficients * self.n_shifts
        fft = _GEMM_SPEEDUP * (2.5 * self.box**2 * math.log2(self.box**2) + 6.0 * n_coefficients)
        return direct <= fft


def _zero_stats(n_classes: int, box_px: int, device: torch.device) -> _Stats:
    shape = (2, n_classes, box_px, box_px // 2 + 1)
    return _Stats(
        torch.zeros(shape, dtype=torch.complex64, device=device),
        torch.zeros(shape, dtype=torch.float32, device=device),
        torch.zeros((2, n_classes), dtype=torch.float32, device=device),
    )


def _regulariser(stats: _Stats, grid: _Grid) -> torch.Tensor:
    """1/SNR_k per rfft coefficient, D̄_k (1 − FRC_k) / FRC_k on its ring (module docstring); (K, B, B//2+1)."""
    n_rings = grid.box // 2 + 1
    frc = ring_frc(stats.numerator[0], stats.numerator[1]).to(torch.float64)  # (K, rings)
    frc[:, 0] = frc[:, 1]  # the DC "ring" is one coefficient; use its neighbour
    dead = torch.cumsum((frc <= 0).to(torch.int64), dim=1) > 0
    frc = torch.where(dead, torch.full_like(frc, FRC_FLOOR), frc.clamp(FRC_FLOOR, FRC_CEILING))
    denominator = stats.denominator.sum(dim=0)  # (K, B, Bh)
    inside = grid.rings < n_rings
    index = grid.rings[inside]
    ring_sums = torch.zeros((denominator.shape[0], n_rings), dtype=torch.float64, device=denominator.device)
    ring_sums.index_add_(1, index, denominator[:, inside].to(torch.float64))
    ring_counts = torch.bincount(index, minlength=n_rings).to(torch.float64)
    half_mean = 0.5 * ring_sums / ring_counts
    inverse_snr = (half_mean * (1.0 - frc) / frc).to(torch.float32)  # (K, rings)
    return inverse_snr[:, grid.rings.clamp_max(n_rings - 1)]


def _wiener_ft(
    numerator: torch.Tensor, denominator: torch.Tensor, regulariser: torch.Tensor, grid: _Grid
) -> torch.Tensor:
    """N / (D + 1/SNR), zero beyond Nyquist and where nothing was measured."""
    total = denominator + regulariser
    ratio = numerator / total.clamp_min(1e-30)
    return torch.where((grid.rings <= grid.box // 2) & (total > 0), ratio, torch.zeros_like(ratio))


def _wiener_averages(stats: _Stats, grid: _Grid) -> torch.Tensor:
    """A_k = (N_k^A + N_k^B) / (D_k^A + D_k^B + 1/SNR_k) in real space (module docstring); (K, B, B) float32."""
    average_ft = _wiener_ft(stats.numerator.sum(dim=0), stats.denominator.sum(dim=0), _regulariser(stats, grid), grid)
    averages: torch.Tensor = torch.fft.irfft2(average_ft, s=(grid.box, grid.box))
    return averages


def _references(stats: _Stats, grid: _Grid) -> torch.Tensor:
    """The Wiener averages, each shifted so that the centre of mass of its positive part falls on the box centre
    (RELION's ``--center_classes``); (K, B, B) float32."""
    averages = _wiener_averages(stats, grid)
    box = grid.box
    offset = centre_of_mass_offset_px(averages)
    references: torch.Tensor = torch.fft.irfft2(torch.fft.rfft2(averages) * shift_phase(-offset, box), s=(box, box))
    return references


def _reseeded(poses: _Poses, rng: np.random.Generator) -> _Poses:
    """Refill collapsed classes while the first batch converges: each class holding less than
    ``MIN_START_CLASS_SHARE`` of an even share takes a random half of the particles of the largest class (their
    poses in that class), which splits a class that has absorbed two kinds of particle."""
    n, n_classes = poses.posterior.shape
    posterior = poses.posterior.clone()
    angle = poses.angle_deg.clone()
    shift = poses.shift_yx_px.clone()
    for small in range(n_classes):
        weight = posterior.sum(dim=0)
        if float(weight[small]) >= MIN_START_CLASS_SHARE * n / n_classes:
            continue
        largest = int(weight.argmax())
        members = torch.nonzero(posterior.argmax(dim=1) == largest)[:, 0]
        if members.shape[0] < 2:
            continue
        chosen = members[torch.as_tensor(rng.permutation(members.shape[0])[: members.shape[0] // 2])]
        posterior[chosen] = 0.0
        posterior[chosen, small] = 1.0
        angle[chosen, small] = angle[chosen, largest]
        shift[chosen, small] = shift[chosen, largest]
    return poses._replace(posterior=posterior, angle_deg=angle, shift_yx_px=shift)


def _split_classes(
    poses: _Poses,
    images: torch.Tensor,
    ctf: CtfTensors,
    old: _Stats,
    count: IntArray,
    grid: _Grid,
) -> tuple[_Poses, _Stats, IntArray, int]:
    """Re-seed light classes by splitting the heaviest (module docstring): new poses, old statistics, counts and the
    number of particles retired from the re-seeded classes."""
    n_classes = poses.posterior.shape[1]
    weight = old.weight.sum(dim=0) + poses.posterior.sum(dim=0)
    light = [int(k) for k in torch.argsort(weight) if float(weight[k]) < SPLIT_MIN_SHARE * float(weight.mean())]
    light = light[: max(1, int(SPLIT_MAX_FRACTION * n_classes))]
    if not light:
        return poses, old, count, 0
    posterior, angle, shift = poses.posterior.clone(), poses.angle_deg.clone(), poses.shift_yx_px.clone()
    numerator, denominator, stat_weight = old.numerator.clone(), old.denominator.clone(), old.weight.clone()
    count = count.copy()
    retired = 0
    used = set(light)
    box = grid.box
    ky, kx = frequencies_per_px(box, images.device)
    low = (torch.sqrt(ky**2 + kx**2) <= 0.5 * SPLIT_LOW_PASS_FRACTION).to(torch.float32)
    for small in light:
        order = [int(k) for k in torch.argsort(weight, descending=True) if int(k) not in used]
        if not order:
            break
        heavy = order[0]
        members = torch.nonzero(posterior.argmax(dim=1) == heavy)[:, 0]
        if members.shape[0] < SPLIT_MIN_MEMBERS:
            continue
        used.add(heavy)
        a, r = shift[members, heavy], angle[members, heavy]
        aligned_ft = _aligned_ft(images[members], a, r, "bilinear")
        flipped = torch.fft.irfft2(aligned_ft * torch.sign(ctf.transfer(members, rotation_deg=r)) * low, s=(box, box))
        features = (flipped * grid.mask).reshape(members.shape[0], -1)
        features = features - features.mean(dim=0)
        _, _, v = torch.linalg.svd(features, full_matrices=False)
        score = features @ v[0]
        moved = members[score > score.median()]
        posterior[moved] = 0.0
        posterior[moved, small] = 1.0
        angle[moved, small] = angle[moved, heavy]
        shift[moved, small] = shift[moved, heavy]
        numerator[:, heavy] *= 0.5
        denominator[:, heavy] *= 0.5
        stat_weight[:, heavy] *= 0.5
        numerator[:, small] = numerator[:, heavy]
        denominator[:, small] = denominator[:, heavy]
        stat_weight[:, small] = stat_weight[:, heavy]
        retired += int(count[small])
        count[small] = count[heavy] // 2
        count[heavy] -= count[small]
    return (
        poses._replace(posterior=posterior, angle_deg=angle, shift_yx_px=shift),
        _Stats(numerator, denominator, stat_weight),
        count,
        retired,
    )


def _start_temperature(initial_temperature: float, iteration: int, iterations: int) -> float:
    """T_t = T_0^(1 − t/t_a) for iteration t < t_a = iterations − ``SETTLING_ITERATIONS``, then 1."""
    anneal = max(1, iterations - SETTLING_ITERATIONS)
    return float(initial_temperature ** max(0.0, 1.0 - iteration / anneal))


def _log_class_prior(stats: _Stats) -> torch.Tensor:
    weight = stats.weight.sum(dim=0)
    return torch.log((weight + 1.0) / (weight.sum() + weight.shape[0]))


def _expectation(
    masked_ft: torch.Tensor,
    masked_energy: torch.Tensor,
    ctf: CtfTensors,
    references: torch.Tensor,
    log_class_prior: torch.Tensor,
    noise_variance: float,
    grid: _Grid,
) -> _Poses:
    """Best pose per class and class posteriors of every particle against the references (K, B, B).

    The class logit is log Σ_{r,s} exp(score) over the pose grid (the pose-marginal likelihood) plus log π_k; the
    pose kept for the M-step is the arg max of the same scores.  The correlations c(s) = ⟨m x_i, T_s M_ikr⟩ at the S
    searched shifts come either from one matrix product, Σ_k Re(X_i H_i conj(F R_r A_k) w e^{2πi k·s}) / B², or
    from a full inverse FFT of X_i conj(M_ikr), whichever costs less (``_Grid.direct_correlation_is_cheaper``);
    ‖M_ikr‖² = Σ_k w H_i² |F R_r A_k|² / B² is a product of H_i² with the references' power.
    """
    n = masked_ft.shape[0]
    n_classes = references.shape[0]
    n_angles = grid.angles_deg.shape[0]
    n_refs = n_classes * n_angles
    n_shifts = grid.n_shifts
    box = grid.box
    n_coefficients = box * (box // 2 + 1)
    device = masked_ft.device
    direct = grid.direct_correlation_is_cheaper()
    if direct:
        chunk = max(1, _CHUNK_ELEMENTS // (2 * n_coefficients * n_shifts + n_refs * n_shifts))
    else:
        chunk = max(1, _CHUNK_ELEMENTS // (n_refs * box * box))
    best = torch.empty((n, n_classes), device=device)
    angle = torch.empty((n, n_classes), device=device)
    shift = torch.empty((n, n_classes, 2), device=device)
    correlation = torch.empty((n, n_classes), device=device)
    rotated = rotate_images(
        (references * grid.mask).repeat_interleave(n_angles, dim=0),
        grid.angles_deg.repeat(n_classes),
        mode="bilinear",
    )
    ref_ft = torch.fft.rfft2(rotated * grid.mask)  # (K·R, B, Bh), class-major
    ref_power = (ref_ft.abs() ** 2 * (grid.weights / box**2)).reshape(n_refs, n_coefficients)
    if direct:
        ref_matrix = torch.cat((ref_ft.real.reshape(n_refs, -1), ref_ft.imag.reshape(n_refs, -1)), dim=1)
        kernel_real = grid.search_kernel.real[:, None, :]  # (F, 1, S)
        kernel_imag = grid.search_kernel.imag[:, None, :]
    for start in range(0, n, chunk):
        index = torch.arange(start, min(n, start + chunk), device=device)
        c = index.shape[0]
        transfer = ctf.transfer(index)  # (c, B, Bh)
        filtered = masked_ft[index] * transfer  # X_i H_i
        model_energy = (transfer**2).reshape(c, -1) @ ref_power.T  # (c, K·R)
        if direct:
            # [Re; Im] of X_i H_i w e^{2πi k·s} / B², laid out (2F, c, S) for one matrix product with the references.
            stacked = torch.empty((2 * n_coefficients, c, n_shifts), device=device)
            real = filtered.real.reshape(c, n_coefficients).T[:, :, None]
            imag = filtered.imag.reshape(c, n_coefficients).T[:, :, None]
            torch.mul(real, kernel_real, out=stacked[:n_coefficients])
            stacked[:n_coefficients].addcmul_(imag, kernel_imag, value=-1.0)
            torch.mul(real, kernel_imag, out=stacked[n_coefficients:])
            stacked[n_coefficients:].addcmul_(imag, kernel_real)
            cc = (ref_matrix @ stacked.reshape(2 * n_coefficients, -1)).reshape(n_refs, c, n_shifts).permute(1, 0, 2)
        else:
            full = torch.fft.irfft2(filtered[:, None] * ref_ft.conj()[None], s=(box, box))  # (c, K·R, B, B)
            cc = full.reshape(c, n_refs, box * box)[..., grid.search_index]
        score = (cc - 0.5 * model_energy[..., None]) / noise_variance + grid.search_log_prior
        flat = score.reshape(c, n_classes, n_angles * n_shifts)
        arg = flat.argmax(dim=-1)
        r = arg // n_shifts
        best[index] = torch.logsumexp(flat, dim=-1)
        angle[index] = grid.angles_deg[r]
        shift[index] = grid.search_shifts_yx[arg % n_shifts]
        cc_best = cc.reshape(c, n_classes, -1).gather(-1, arg[..., None])[..., 0]
        energy_best = model_energy.reshape(c, n_classes, n_angles).gather(-1, r[..., None])[..., 0]
        norm = torch.sqrt(masked_energy[index, None] * energy_best).clamp_min(1e-30)
        correlation[index] = cc_best / norm
    posterior = torch.softmax(best + log_class_prior, dim=1)
    log_pose_prior_sum = math.log(n_angles) + float(torch.logsumexp(grid.search_log_prior, dim=0))
    return _Poses(posterior, angle, shift, correlation, best - log_pose_prior_sum)


def _aligned_ft(images: torch.Tensor, shift_yx_px: torch.Tensor, angle_deg: torch.Tensor, mode: str) -> torch.Tensor:
    """F(R_{−r} T_{−s} x): each image turned back into its class's frame, the shift exactly by a Fourier phase, the
    rotation by ``rotate_images`` interpolation (``mode``); (n, B, B//2+1) complex."""
    box = images.shape[-1]
    unshifted = torch.fft.irfft2(torch.fft.rfft2(images) * shift_phase(-shift_yx_px, box), s=(box, box))
    aligned_ft: torch.Tensor = torch.fft.rfft2(rotate_images(unshifted, -angle_deg, mode=mode))
    return aligned_ft


def _maximisation(
    images: torch.Tensor, half: torch.Tensor, ctf: CtfTensors, poses: _Poses, n_classes: int, grid: _Grid
) -> _Stats:
    """CTF-weighted sums N, D, W of one batch in each class's frame (module docstring)."""
    box = grid.box
    stats = _zero_stats(n_classes, box, images.device)
    numerator = stats.numerator.reshape(2 * n_classes, box, box // 2 + 1)
    denominator = stats.denominator.reshape(2 * n_classes, box, box // 2 + 1)
    weight = stats.weight.reshape(-1)
    particle, klass = torch.nonzero(poses.posterior >= MIN_PAIR_WEIGHT, as_tuple=True)
    chunk = max(1, _CHUNK_ELEMENTS // (8 * box * box))
    for start in range(0, particle.shape[0], chunk):
        i = particle[start : start + chunk]
        k = klass[start : start + chunk]
        w = poses.posterior[i, k]
        angle = poses.angle_deg[i, k]
        aligned_ft = _aligned_ft(images[i], poses.shift_yx_px[i, k], angle, "bicubic")
        transfer = ctf.transfer(i, rotation_deg=angle)
        slot = half[i] * n_classes + k
        numerator.index_add_(0, slot, w[:, None, None] * transfer * aligned_ft)
        denominator.index_add_(0, slot, w[:, None, None] * transfer**2)
        weight.index_add_(0, slot, w)
    return stats


def _assignments(poses: _Poses, half: torch.Tensor) -> ClassAssignments:
    """Each particle's most probable class and its best pose there."""
    klass = poses.posterior.argmax(dim=1)
    rows = torch.arange(klass.shape[0], device=klass.device)
    return ClassAssignments(
        class_index=klass.to("cpu").numpy().astype(np.int64),
        angle_deg=poses.angle_deg[rows, klass].to("cpu", torch.float64).numpy() % 360.0,
        shift_yx_px=poses.shift_yx_px[rows, klass].to("cpu", torch.float64).numpy(),
        posterior=poses.posterior[rows, klass].to("cpu", torch.float64).numpy(),
        class_posteriors=poses.posterior.to("cpu", torch.float64).numpy(),
        correlation=poses.correlation[rows, klass].to("cpu", torch.float64).numpy(),
        log_evidence_ratio=poses.log_evidence_ratio[rows, klass].to("cpu", torch.float64).numpy(),
        half_set=half.to("cpu").numpy().astype(np.int64),
    )


def _checked_state(state: ClassificationState, box: int, pixel_size: float, config: Classification2DConfig) -> None:
    if state.box_px != box:
        raise ValueError(f"boxes are {box} px but the classes are {state.box_px} px")
    if state.n_classes != config.n_classes:
        raise ValueError(f"config asks for K = {config.n_classes} but the state has {state.n_classes} classes")
    if not math.isclose(state.pixel_size_angstrom, pixel_size, rel_tol=1e-6):
        raise ValueError(f"pixel size {pixel_size} Å differs from the classes' {state.pixel_size_angstrom} Å")
    if not math.isclose(state.particle_diameter_angstrom, config.particle_diameter_angstrom, rel_tol=1e-6):
        raise ValueError("config.particle_diameter_angstrom differs from the state's")


def _checked_batch(
    boxes: npt.ArrayLike | torch.Tensor, ctfs: ParticleCtfs, config: Classification2DConfig
) -> npt.NDArray[np.float32]:
    data = boxes.detach().to("cpu").numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"boxes must have shape (n, B, B), got {data.shape}")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise ValueError(f"boxes must be numeric, got dtype {data.dtype}")
    n, box = data.shape[0], data.shape[1]
    if n == 0:
        raise ValueError("no particles in the batch")
    if box < MIN_BOX_PX or box % 2:
        raise ValueError(f"the box edge must be even and >= {MIN_BOX_PX} px, got {box}")
    if not np.all(np.isfinite(data)):
        raise ValueError("boxes contain NaN or Inf")
    if not isinstance(ctfs, ParticleCtfs):
        raise ValueError(f"ctfs must be ParticleCtfs, got {type(ctfs).__name__}")
    if len(ctfs) != n:
        raise ValueError(f"{n} boxes but {len(ctfs)} CTFs")
    diameter_px = config.particle_diameter_angstrom / ctfs.microscope.pixel_size_angstrom
    if diameter_px > box:
        raise ValueError(f"the particle diameter ({diameter_px:.1f} px) exceeds the box ({box} px)")
    if 2 * config.max_shift_px >= box:
        raise ValueError(f"max_shift_px {config.max_shift_px} must be below half the box ({box} px)")
    return np.ascontiguousarray(data, dtype=np.float32)


def update_classes(
    state: ClassificationState | None,
    boxes: npt.ArrayLike | torch.Tensor,
    ctfs: ParticleCtfs,
    config: Classification2DConfig,
    device: torch.device | str | None = None,
) -> tuple[ClassificationState, ClassAssignments]:
    """Classify one batch of particles and fold it into the class statistics (module docstring).

    Parameters
    ----------
    state : ClassificationState or None
        The classes so far; None starts reference-free from this batch (at least 2 particles per class).
    boxes : array or Tensor, shape (n, B, B)
        Contrast-inverted (white) particle boxes [particle, y, x], background mean 0 and standard deviation 1
        (``picking.extract_particles``), centre at index B//2; B even, ≥ 16.
    ctfs : ParticleCtfs
        The n particles' CTF parameters; ``ctfs.microscope.pixel_size_angstrom`` is the boxes' sampling.
    config : Classification2DConfig
        K, mask diameter, search grid, forgetting factor, iterations, seed; K and the diameter must match ``state``.
    device : torch.device or str, optional
        Where to compute; by default the state's device, or the CPU for the first batch.  Work is float32.

    Returns
    -------
    (ClassificationState, ClassAssignments)
        A new state (γ·old + this batch) on ``device`` and the batch's assignments.

    Raises
    ------
    ValueError
        Boxes that are not (n, B, B) with even B ≥ 16, empty, non-finite; a CTF count other than n; a diameter larger
        than the box; fewer than 2K particles in a first batch; a state of another box, K, pixel size or diameter.
    """
    data = _checked_batch(boxes, ctfs, config)
    n, box = data.shape[0], data.shape[1]
    n_classes = config.n_classes
    pixel_size = ctfs.microscope.pixel_size_angstrom
    if state is None:
        if n < 2 * n_classes:
            raise ValueError(f"a first batch needs at least 2 particles per class: {n} particles for K = {n_classes}")
    else:
        _checked_state(state, box, pixel_size, config)
    torch_device = torch.device(device) if device is not None else (state.device if state else torch.device("cpu"))
    grid = _Grid(box, 0.5 * config.particle_diameter_angstrom / pixel_size, config, torch_device)
    images = torch.as_tensor(data, device=torch_device)
    ctf = CtfTensors(ctfs, box, torch_device)
    seen = 0 if state is None else state.particles_seen
    half = (torch.arange(n, device=torch_device) + seen) % 2
    masked = images * grid.mask
    masked_ft = torch.fft.rfft2(masked)
    masked_energy = (masked**2).sum(dim=(-2, -1))
    background = images[:, grid.background]
    batch_variance = float(background.var(dim=1, unbiased=False).mean())
    gamma = config.forgetting_factor

    rng = np.random.default_rng(config.seed)
    if state is None:
        start_class = torch.as_tensor(rng.permutation(n) % n_classes, device=torch_device)
        start_angle = torch.as_tensor(rng.uniform(0.0, 360.0, n), dtype=torch.float32, device=torch_device)
        start = _Poses(
            torch.nn.functional.one_hot(start_class, n_classes).to(torch.float32),
            start_angle[:, None].expand(n, n_classes).contiguous(),
            torch.zeros((n, n_classes, 2), device=torch_device),
            torch.zeros((n, n_classes), device=torch_device),
            torch.zeros((n, n_classes), device=torch_device),
        )
        old = _zero_stats(n_classes, box, torch_device)
        batch = _maximisation(images, half, ctf, start, n_classes, grid)
        noise_weight = float(n)
        noise_variance = batch_variance
        iterations = config.initial_iterations
        count_before: IntArray = np.zeros(n_classes, dtype=np.int64)
    else:
        old = _Stats(state.numerator, state.denominator, state.weight).scaled(gamma)
        old = _Stats(*(t.to(torch_device) for t in old))
        batch = _zero_stats(n_classes, box, torch_device)
        noise_weight = gamma * state.noise_weight + n
        noise_variance = (gamma * state.noise_weight * state.noise_variance + n * batch_variance) / noise_weight
        iterations = config.batch_iterations
        count_before = state.particle_count

    retired = 0 if state is None else state.retired_count
    poses: _Poses | None = None
    for iteration in range(iterations):
        current = old.plus(batch)
        starting = state is None
        poses = _expectation(
            masked_ft,
            masked_energy,
            ctf,
            _references(current, grid),
            torch.zeros(n_classes, device=torch_device) if starting else _log_class_prior(current),
            noise_variance
            * (_start_temperature(config.initial_temperature, iteration, iterations) if starting else 1.0),
            grid,
        )
        if starting and iteration < iterations - SETTLING_ITERATIONS:
            poses = _reseeded(poses, rng)
        if not starting and iteration == 0 and config.split_classes:
            poses, old, count_before, newly_retired = _split_classes(poses, images, ctf, old, count_before, grid)
            retired += newly_retired
        batch = _maximisation(images, half, ctf, poses, n_classes, grid)
    assert poses is not None  # iterations >= 1 (config)
    final = old.plus(batch)

    assignments = _assignments(poses, half)
    new_state = ClassificationState(
        numerator=final.numerator,
        denominator=final.denominator,
        weight=final.weight,
        particle_count=count_before + np.bincount(assignments.class_index, minlength=n_classes).astype(np.int64),
        noise_variance=float(noise_variance),
        noise_weight=float(noise_weight),
        particles_seen=seen + n,
        batches_seen=(0 if state is None else state.batches_seen) + 1,
        pixel_size_angstrom=float(pixel_size),
        particle_diameter_angstrom=float(config.particle_diameter_angstrom),
        retired_count=retired,
    )
    return new_state, assignments


def assign_particles(
    state: ClassificationState,
    boxes: npt.ArrayLike | torch.Tensor,
    ctfs: ParticleCtfs,
    config: Classification2DConfig,
    device: torch.device | str | None = None,
) -> ClassAssignments:
    """The E-step alone: each particle's class posteriors and best poses against the classes of ``state``, which
    is left as it is (module docstring; inputs as :func:`update_classes`).  ``half_set`` is the half each particle
    would enter as the next batch.  Useful to classify held-out or late particles against fixed classes.
    """
    data = _checked_batch(boxes, ctfs, config)
    n, box = data.shape[0], data.shape[1]
    pixel_size = ctfs.microscope.pixel_size_angstrom
    _checked_state(state, box, pixel_size, config)
    torch_device = torch.device(device) if device is not None else state.device
    grid = _Grid(box, 0.5 * config.particle_diameter_angstrom / pixel_size, config, torch_device)
    images = torch.as_tensor(data, device=torch_device)
    masked = images * grid.mask
    stats = _Stats(*(t.to(torch_device) for t in (state.numerator, state.denominator, state.weight)))
    poses = _expectation(
        torch.fft.rfft2(masked),
        (masked**2).sum(dim=(-2, -1)),
        CtfTensors(ctfs, box, torch_device),
        _references(stats, grid),
        _log_class_prior(stats),
        state.noise_variance,
        grid,
    )
    return _assignments(poses, (torch.arange(n, device=torch_device) + state.particles_seen) % 2)


def class_averages(state: ClassificationState) -> torch.Tensor:
    """The Wiener class averages A_k of ``state`` in real space (module docstring); (K, B, B) float32, on its device.

    White (positive) density, CTF-corrected, centre at index (B//2, B//2), not masked.
    """
    box = state.box_px
    radius = state.particle_radius_px
    config = Classification2DConfig(
        n_classes=state.n_classes, particle_diameter_angstrom=2 * radius * state.pixel_size_angstrom
    )
    grid = _Grid(box, radius, config, state.device)
    return _wiener_averages(_Stats(state.numerator, state.denominator, state.weight), grid)


def half_set_averages(state: ClassificationState) -> torch.Tensor:
    """The Wiener averages of each half set alone, N_k^h / (D_k^h + 1/SNR_k); (2, K, B, B) float32, on its device.

    1/SNR_k is the one-half regulariser of :func:`class_averages` (module docstring), so each half is filtered as
    an average of its own particles; the difference of the two halves is the averages' noise (with twice the
    variance of each half, four times that of the full average).
    """
    box = state.box_px
    radius = state.particle_radius_px
    config = Classification2DConfig(
        n_classes=state.n_classes, particle_diameter_angstrom=2 * radius * state.pixel_size_angstrom
    )
    grid = _Grid(box, radius, config, state.device)
    regulariser = _regulariser(_Stats(state.numerator, state.denominator, state.weight), grid)
    halves = [
        torch.fft.irfft2(_wiener_ft(state.numerator[h], state.denominator[h], regulariser, grid), s=(box, box))
        for h in (0, 1)
    ]
    return torch.stack(halves)


def class_resolution(state: ClassificationState) -> ClassResolution:
    """Half-set FRC of every class of ``state`` and its resolution at 0.143 and 0.5 (``resolution``)."""
    return frc_resolution(state.numerator[0], state.numerator[1], state.pixel_size_angstrom)
