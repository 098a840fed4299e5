"""Self-supervised fusion of several estimates of one micrograph: weights that are smooth functions of the
spatial frequency, fitted on a binomial split of the micrograph's own counts (no clean image needed).

Problem
-------
Several restorations E₁(N), …, E_m(N) of one micrograph of counts N ~ Poisson(λ) are good in different
frequency bands: e.g. the learned denoiser (``denoiser.denoise_learned``) recovers particle-scale contrast
(≈ 15–100 Å) that no linear filter can, while the CTF-aware Wiener filter (``restore.wiener_denoise``)
keeps the lowest frequencies and the high-resolution Thon rings and ice ring that the network smooths
away.  The fused estimate is a linear combination whose weights depend only on the Fourier ring r = |k|:

    F̂(k) = Σᵢ wᵢ(r(k)) · Êᵢ(k),        wᵢ(r) = Σⱼ Φ(r, j) βᵢⱼ,

with Φ piecewise-linear "hat" functions on knots that are geometric at low frequency (``knots_per_octave``
per doubling of r, where the weights change fastest: across the ice/inelastic background and the first
Thon rings) and at most ``max_knot_spacing`` rings apart further out (:func:`ring_knots`,
:func:`hat_basis`); about a hundred coefficients β for two estimates of a 1024² image.

Training signal: a binomial split (Noise2Noise)
-----------------------------------------------
Thin the counts: A ~ Binomial(N, p), B = N − A (:func:`split_counts`; p = ½ is
``reproducibility.binomial_split_counts``).  For Poisson N, A ~ Poisson(pλ) and B ~ Poisson((1 − p)λ) are
*independent* (Rényi thinning), so T = B/(1 − p) is an unbiased noisy copy of λ independent of A.  Apply
the estimators to A and bring them to full-dose units, Eᵢ(A)/p.  For any weights,

    E‖F̂_β(A) − T‖² = E‖F̂_β(A) − λ‖² + E‖T − λ‖²,

because T − λ is zero-mean and independent of A (Lehtinen et al. 2018, "Noise2Noise: Learning image
restoration without clean data", ICML, PMLR 80:2965–2974; the thinning construction is that of Moran et al.
2020, "Noisier2Noise", CVPR 12064–12072, and Pang et al. 2021, "Recorrupted-to-Recorrupted", CVPR
2043–2052; the half-dose split of Poisson counts is the single-exposure analogue of cryo-CARE's even/odd
frames, Buchholz et al. 2019, ISBI).  The second term does not depend on β, so least squares against the
noisy T chooses, in expectation, the weights that are best against the truth.  By Parseval the objective
is a sum over Fourier coefficients, and with per-ring Gram matrices and right-hand sides
(:func:`ring_normal_equations`, sums over the full Fourier plane)

    G[r, i, i'] = Σ_{ring(k)=r} Re(Êᵢ Ê*ᵢ'),    c[r, i] = Σ_{ring(k)=r} Re(Êᵢ T̂*),

β solves the linear system (closed form, :func:`solve_weights`)

    (M + ν/τ² · I) β = v,   M[(j,i),(l,i')] = Σ_r Φ(r,j) Φ(r,l) G[r,i,i'],   v[(j,i)] = Σ_r Φ(r,j) c[r,i].

The ridge ν/τ² is the posterior mean under a N(0, τ²) prior on each β (τ = ``prior_std``) with the
target's white noise of known power ν = N_pixels·σ²_T per Fourier coefficient (σ²_T = mean(N)/(1 − p) per
pixel for Poisson counts): it shrinks only coefficients the data barely determine, i.e. the
high-frequency knots where both estimates carry little power next to the noise of T, and leaves the
well-determined ones alone.  It is scale-free (multiplying the counts by a gain scales M, v and ν alike).
Ring 0 (the image mean) is not fitted: the fused image keeps the first estimate's mean.  ``n_splits``
independent splits (seeds seed, seed + 1, …) average their G and c, which lowers the variance of the
fitted weights (their noise is not independent across splits of the same N, so they are averaged, not
summed, and ν stays that of one split).

Dose mismatch
-------------
The weights are fitted for inputs of dose fraction p and applied to the estimators' outputs on the full
image N, which are less noisy.  A/p has the full image's mean and 1/p times its shot-noise variance, so p
near 1 matches the statistics better while p near ½ gives a less noisy target (σ²_T ∝ 1/(1 − p)).  On
simulated 1024² micrographs (exposure seed 31, not the benchmark's; structures the shipped denoiser never
saw; 4 per SNR) weights fitted *with the truth* on the split estimates (p = 0.7) and applied to the
full-dose ones came within 0.003 / 0.007 / 0.012 dB (SNR 0.1 / 0.03 / 0.01) of weights fitted with the
truth on the full-dose estimates themselves: the mismatch is small next to the variance of the fit.

Choices (same development set, learned + Wiener, PSNR gain over the learned estimate alone at SNR 0.1 /
0.03 / 0.01): the defaults (p = 0.7, 2 splits, 6 knots per octave, τ = 0.5) gave +0.50 / +0.27 / +0.23 dB
against +0.52 / +0.32 / +0.33 dB for the same weight curves fitted with the truth; without the prior
(τ → ∞) +0.49 / +0.25 / +0.18 dB (4 splits); τ = 0.1 over-shrinks (+0.40 / +0.07 / −0.11 dB); 4 splits
instead of 2 add ≤ 0.015 dB; p = ½ is within 0.01 dB of p = 0.7.  Piecewise-constant weights on bands of
equal Fourier-coefficient count did worse (+0.42 / +0.11 / −0.11 dB at 16384 coefficients per band,
p = ½, 1 split, no prior), and adding the raw counts as a third estimate made the fit unstable (−1 dB
and worse on single micrographs) for at most +0.07 dB when fitted with the truth.
``benchmarks/bench_restoration.py`` reports the fused result on its own micrographs as ``cryodecon_fused``.

Estimators are callables ``f(counts, dose_fraction) -> estimate of the expected counts of counts``, in the
units of their input; ``dose_fraction`` is p on a split and 1 on the full image, for estimators that need
it (a Wiener filter built from the full image's spectral model has, on A, a noise floor 1/p times larger
relative to the signal: ``noise_power_scale = 1/p``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
import torch

from cryodecon_science.optics import MicroscopeSettings
from cryodecon_science.records import CtfFit
from cryodecon_science.reproducibility import binomial_split_counts
from cryodecon_science.restoration.denoiser import DenoiserUNet, denoise_learned
from cryodecon_science.restoration.restore import wiener_denoise
from cryodecon_science.spectrum import DEFAULT_MAX_FIT_PX as DEFAULT_MAX_FIT_PX
from cryodecon_science.spectrum import central_fit_crop, frame_tensor

Float32Image = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Estimator = Callable[[Float32Image, float], Float32Image]

DEFAULT_SPLIT_FRACTION = 0.7
"""p: dose fraction given to the estimators in the fit (module docstring, "Dose mismatch")."""
DEFAULT_N_SPLITS = 2
"""Independent splits whose normal equations are averaged."""
DEFAULT_KNOTS_PER_OCTAVE = 6.0
"""Knots of the weight curves per doubling of the ring radius at low frequency (:func:`ring_knots`)."""
DEFAULT_MAX_KNOT_SPACING = 32
"""Largest spacing of the knots, rings (:func:`ring_knots`)."""
DEFAULT_PRIOR_STD = 0.5
"""τ: prior standard deviation of each weight coefficient β (module docstring)."""
_NUMERICAL_RIDGE = 1e-10
"""Relative ridge (times the mean diagonal of M) that keeps exactly collinear estimates solvable."""


@dataclass(frozen=True, eq=False)
class FusionWeights:
    """Weights of m estimates as piecewise-linear functions of the Fourier ring (:func:`solve_weights`).

    Attributes
    ----------
    shape_px : (int, int)
        Image shape the weights belong to (ring geometry, :func:`fourier_rings`).
    knots : ndarray of float64, shape (K,)
        Increasing ring radii ≥ 1 at which the weights are free; linear in between, constant outside.
    coefficients : ndarray of float64, shape (K, m)
        Weight of each estimate at each knot.
    """

    shape_px: tuple[int, int]
    knots: FloatArray
    coefficients: FloatArray

    @property
    def n_estimates(self) -> int:
        """Number m of estimates combined."""
        return int(self.coefficients.shape[1])

    def for_shape(self, shape_px: tuple[int, int]) -> FusionWeights:
        """The same weights as functions of spatial frequency, on the ring grid of ``shape_px``.

        Ring r of a side n stands for |k| = r/n cycles per pixel (:func:`fourier_rings`), so knots scale
        by n_new / n_old; outside the knots the weights stay constant as before.
        """
        scale = max(shape_px) / max(self.shape_px)
        return FusionWeights((int(shape_px[0]), int(shape_px[1])), self.knots * scale, self.coefficients)

    def ring_weights(self) -> FloatArray:
        """Weights per ring 0 … n_rings − 1, shape (n_rings, m); ring 0 (the mean) is (1, 0, …, 0)."""
        weights = hat_basis(self.knots, n_rings_of(self.shape_px)) @ self.coefficients
        weights[0] = 0.0
        weights[0, 0] = 1.0
        return np.asarray(weights, dtype=np.float64)


# ------------------------------------------------------------------------------------------- geometry
def fourier_rings(shape_px: tuple[int, int]) -> tuple[IntArray, FloatArray]:
    """Ring index and Hermitian multiplicity of every coefficient of the rfft grid of ``shape_px``.

    Ring r = round(|k|·n), k in cycles/pixel and n = max(ny, nx) (the Fourier-pixel radius of a square
    image).  The multiplicity is 2 for the rfft columns that stand for ±k_x, 1 for k_x = 0 and, for even
    nx, the Nyquist column: sums weighted by it equal sums over the full Fourier plane.

    Raises
    ------
    ValueError
        For a side shorter than 2 pixels.
    """
    ring, multiplicity = _rings_on(shape_px, "cpu")
    return ring.numpy(), multiplicity.numpy()


def _rings_on(shape_px: tuple[int, int], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fourier_rings` as tensors on ``device`` (int64, float64)."""
    ny, nx = shape_px
    if ny < 2 or nx < 2:
        raise ValueError(f"shape_px must be at least 2 x 2, got {shape_px}")
    n = max(ny, nx)
    fy = torch.fft.fftfreq(ny, dtype=torch.float64, device=device)
    fx = torch.fft.rfftfreq(nx, dtype=torch.float64, device=device)
    ring = torch.round(torch.hypot(fy[:, None], fx[None, :]) * n).to(torch.int64)
    multiplicity = torch.full(ring.shape, 2.0, dtype=torch.float64, device=device)
    multiplicity[:, 0] = 1.0
    if nx % 2 == 0:
        multiplicity[:, -1] = 1.0
    return ring, multiplicity


def n_rings_of(shape_px: tuple[int, int]) -> int:
    """Number of rings of the rfft grid of ``shape_px`` (:func:`fourier_rings`): the corner ring + 1 (the
    ring of the largest |k_y| and |k_x|, as the radius grows with both)."""
    ny, nx = shape_px
    if ny < 2 or nx < 2:
        raise ValueError(f"shape_px must be at least 2 x 2, got {shape_px}")
    fy = float(np.abs(np.fft.fftfreq(ny)).max())
    fx = float(np.abs(np.fft.rfftfreq(nx)).max())
    return int(np.rint(np.hypot(fy, fx) * max(ny, nx))) + 1


def ring_knots(n_rings: int, knots_per_octave: float, max_spacing: int) -> FloatArray:
    """Knot radii 1 = r₀ < r₁ < … = n_rings − 1 with r_{j+1} = round(r_j + clip(r_j (2^{1/q} − 1), 1, Δ)),
    q = ``knots_per_octave`` and Δ = ``max_spacing``: every ring at first, then geometric, then at most Δ
    rings apart; the last knot is the outermost ring.

    Raises
    ------
    ValueError
        For q ≤ 0, Δ < 1 or fewer than 2 rings.
    """
    if not knots_per_octave > 0 or max_spacing < 1:
        raise ValueError("knots_per_octave must be > 0 and max_spacing >= 1")
    if n_rings < 2:
        raise ValueError(f"n_rings must be >= 2, got {n_rings}")
    last = float(n_rings - 1)
    knots = [1.0]
    ratio = 2.0 ** (1.0 / knots_per_octave) - 1.0
    while knots[-1] < last:
        step = min(max(knots[-1] * ratio, 1.0), float(max_spacing))
        knots.append(min(float(np.rint(knots[-1] + step)), last))
    return np.asarray(knots, dtype=np.float64)


def hat_basis(knots: FloatArray, n_rings: int) -> FloatArray:
    """Piecewise-linear interpolation matrix Φ (n_rings, K): w(r) = Σⱼ Φ[r, j] βⱼ is linear between knots
    and constant below the first and beyond the last one; every row sums to 1.

    Raises
    ------
    ValueError
        If ``knots`` is not a non-empty strictly increasing 1-D array.
    """
    k = np.asarray(knots, dtype=np.float64)
    if k.ndim != 1 or k.size < 1 or np.any(np.diff(k) <= 0):
        raise ValueError("knots must be a non-empty strictly increasing 1-D array")
    basis = np.zeros((n_rings, k.size), dtype=np.float64)
    if k.size == 1:
        basis[:, 0] = 1.0
        return basis
    rings = np.clip(np.arange(n_rings, dtype=np.float64), k[0], k[-1])
    j = np.clip(np.searchsorted(k, rings, side="right") - 1, 0, k.size - 2)
    t = (rings - k[j]) / (k[j + 1] - k[j])
    rows = np.arange(n_rings)
    basis[rows, j] = 1.0 - t
    basis[rows, j + 1] += t
    return basis


# --------------------------------------------------------------------------------------------- fitting
def _images_on(
    estimates: Sequence[npt.ArrayLike], device: torch.device | str, what: str = "an estimate"
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """The estimates as float64 tensors on ``device``, checked: at least one, 2-D, one shape, finite (the
    finiteness checked on the device, one read-back for all)."""
    if len(estimates) < 1:
        raise ValueError("at least one estimate is required")
    arrays = [np.asarray(e) for e in estimates]
    shape = arrays[0].shape
    if len(shape) != 2:
        raise ValueError(f"estimates must be 2-D [y, x], got shape {shape}")
    for array in arrays:
        if array.shape != shape:
            raise ValueError(f"estimates differ in shape: {array.shape} vs {shape}")
    tensors = [frame_tensor(a, device, torch.float64) for a in arrays]
    if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise ValueError(f"{what} contains NaN or Inf")
    return tensors, (int(shape[0]), int(shape[1]))


def _spectrum(image: torch.Tensor) -> torch.Tensor:
    """rfft2 of a float64 image as real pairs (ny, nx // 2 + 1, 2), float64 (the ring sums below need
    it); real arithmetic on the pairs avoids promoting real weights to complex.

    On a CPU the transforms go through ``scipy.fft`` (pocketfft), which measured 2× faster than torch's
    CPU FFT for the inverse transform of a 4096² float64 image on one thread (0.44 vs 0.94 s).
    """
    if image.device.type == "cpu":
        spectrum: npt.NDArray[np.complex128] = scipy.fft.rfft2(image.numpy())
        return torch.view_as_real(torch.from_numpy(spectrum))
    return torch.view_as_real(torch.fft.rfft2(image))


def _image(spectrum: torch.Tensor, shape_px: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_spectrum` (real pairs in, float64 image of ``shape_px`` out)."""
    if spectrum.device.type == "cpu":
        image: FloatArray = scipy.fft.irfft2(torch.view_as_complex(spectrum).numpy(), s=shape_px)
        return torch.from_numpy(image)
    out: torch.Tensor = torch.fft.irfft2(torch.view_as_complex(spectrum), s=shape_px)
    return out


def ring_normal_equations(
    estimates: Sequence[npt.ArrayLike], target: npt.ArrayLike, device: torch.device | str = "cpu"
) -> tuple[FloatArray, FloatArray]:
    """Per-ring Gram matrices and right-hand sides of the least-squares fit of ``target`` by the estimates.

    Returns (G, c): G of shape (n_rings, m, m), G[r, i, j] = Σ_{ring(k)=r} Re(Êᵢ Ê*ⱼ), and c of shape
    (n_rings, m), c[r, i] = Σ_{ring(k)=r} Re(Êᵢ T̂*), summed over the full Fourier plane (module docstring).
    The transforms and ring sums run on ``device`` in float64.

    Raises
    ------
    ValueError
        For no estimates, shapes that differ, or non-finite values.
    """
    images, shape = _images_on(estimates, device)
    if np.shape(target) != shape:
        raise ValueError(f"target shape {np.shape(target)} does not match the estimates' {shape}")
    (t,), _ = _images_on([target], device, "target")
    ring, weight = _rings_on(shape, device)
    n_rings = n_rings_of(shape)
    flat_ring = ring.flatten()
    spectra = [_spectrum(image) for image in images] + [_spectrum(t)]
    m = len(images)
    pairs = [(i, j) for i in range(m) for j in range(i, m + 1)]  # j = m is the target
    sums = torch.zeros((len(pairs), n_rings), dtype=torch.float64, device=flat_ring.device)
    for row, (i, j) in enumerate(pairs):
        (re_i, im_i), (re_j, im_j) = spectra[i].unbind(-1), spectra[j].unbind(-1)
        cross = torch.addcmul(re_i * re_j, im_i, im_j).mul_(weight)  # multiplicity · Re(Êᵢ Ê*ⱼ)
        sums[row].index_add_(0, flat_ring, cross.flatten())
    values = sums.cpu().numpy()
    gram = np.empty((n_rings, m, m), dtype=np.float64)
    rhs = np.empty((n_rings, m), dtype=np.float64)
    for row, (i, j) in enumerate(pairs):
        if j == m:
            rhs[:, i] = values[row]
        else:
            gram[:, i, j] = gram[:, j, i] = values[row]
    return gram, rhs


def solve_weights(
    gram: FloatArray,
    rhs: FloatArray,
    shape_px: tuple[int, int],
    noise_power: float,
    prior_std: float = DEFAULT_PRIOR_STD,
    knots_per_octave: float = DEFAULT_KNOTS_PER_OCTAVE,
    max_knot_spacing: int = DEFAULT_MAX_KNOT_SPACING,
) -> FusionWeights:
    """Knot coefficients β from per-ring normal equations (:func:`ring_normal_equations`), ring 0 left out:
    (M + ν/τ²·I) β = v (module docstring), with ν = ``noise_power`` and τ = ``prior_std``.

    Parameters
    ----------
    gram, rhs : ndarray, shapes (n_rings, m, m) and (n_rings, m)
        G and c of :func:`ring_normal_equations` (or their mean over splits).
    shape_px : (int, int)
        The image shape they come from.
    noise_power : float
        ν ≥ 0: E|T̂(k) − λ̂(k)|² per Fourier coefficient, N_pixels times the per-pixel variance of the
        target's noise (0 for a noiseless target such as the truth: plain least squares).
    prior_std : float
        τ > 0, prior standard deviation of each β.
    knots_per_octave, max_knot_spacing : float, int
        Knot placement (:func:`ring_knots`).

    Raises
    ------
    ValueError
        For inconsistent shapes or bad parameters.
    """
    if not noise_power >= 0.0 or not prior_std > 0.0:
        raise ValueError(f"noise_power must be >= 0 and prior_std > 0, got {noise_power}, {prior_std}")
    n_rings, m, m2 = gram.shape
    if m != m2 or rhs.shape != (n_rings, m):
        raise ValueError(f"inconsistent normal equations: G {gram.shape}, c {rhs.shape}")
    if n_rings != n_rings_of(shape_px):
        raise ValueError(f"normal equations have {n_rings} rings, the shape {shape_px} has {n_rings_of(shape_px)}")
    knots = ring_knots(n_rings, knots_per_octave, max_knot_spacing)
    basis = hat_basis(knots, n_rings)[1:]
    k = knots.size
    system = np.einsum("rj,rl,rab->jalb", basis, basis, gram[1:]).reshape(k * m, k * m)
    vector = np.einsum("rj,ra->ja", basis, rhs[1:]).reshape(k * m)
    scale = float(np.mean(np.diag(system)))
    if not scale > 0.0:  # every estimate is constant: nothing to weigh
        coefficients = np.zeros((k, m), dtype=np.float64)
        coefficients[:, 0] = 1.0
        return FusionWeights(shape_px, knots, coefficients)
    system += (noise_power / prior_std**2 + _NUMERICAL_RIDGE * scale) * np.eye(k * m)
    beta = np.linalg.solve(system, vector).reshape(k, m)
    return FusionWeights(shape_px, knots, beta)


def fit_fusion_weights(
    estimates: Sequence[npt.ArrayLike],
    target: npt.ArrayLike,
    target_noise_variance: float = 0.0,
    prior_std: float = DEFAULT_PRIOR_STD,
    knots_per_octave: float = DEFAULT_KNOTS_PER_OCTAVE,
    max_knot_spacing: int = DEFAULT_MAX_KNOT_SPACING,
) -> FusionWeights:
    """Weights minimising ‖Σᵢ wᵢ(r(k)) Êᵢ(k) − T̂(k)‖² over k ≠ 0 (module docstring) for one target.

    Parameters
    ----------
    estimates : sequence of m arrays (ny, nx)
        The estimates to combine, finite, one shape.
    target : array (ny, nx)
        What to fit: the truth, or an independent noisy copy of it.
    target_noise_variance : float
        Per-pixel variance of the target's white noise (0 for the truth); sets ν = N_pixels × it.
    prior_std, knots_per_octave, max_knot_spacing
        As in :func:`solve_weights`.

    Raises
    ------
    ValueError
        For no estimates, shapes that differ, non-finite values or bad parameters.
    """
    gram, rhs = ring_normal_equations(estimates, target)
    ny, nx = np.asarray(target).shape
    return solve_weights(
        gram, rhs, (ny, nx), ny * nx * float(target_noise_variance), prior_std, knots_per_octave, max_knot_spacing
    )


def apply_fusion_weights(
    estimates: Sequence[npt.ArrayLike], weights: FusionWeights, device: torch.device | str = "cpu"
) -> Float32Image:
    """F̂(k) = Σᵢ wᵢ(r(k)) Êᵢ(k), the first estimate's mean kept; float32 image of the estimates' shape.

    The transforms run on ``device`` in float64.

    Raises
    ------
    ValueError
        If the number or shape of the estimates does not match ``weights``, or values are not finite.
    """
    images, shape = _images_on(estimates, device)
    if shape != weights.shape_px:
        raise ValueError(f"estimates are {shape}, the weights were fitted for {weights.shape_px}")
    if len(images) != weights.n_estimates:
        raise ValueError(f"{len(images)} estimates for weights of {weights.n_estimates}")
    flat_ring, _ = _rings_on(shape, device)
    per_ring = torch.as_tensor(weights.ring_weights(), device=device)
    fused = torch.zeros((*flat_ring.shape, 2), dtype=torch.float64, device=flat_ring.device)
    for i, image in enumerate(images):
        spectrum = _spectrum(image)
        if i == 0:
            mean = spectrum[0, 0].clone()
        fused.addcmul_(spectrum, per_ring[:, i][flat_ring].unsqueeze(-1))
    fused[0, 0] = mean
    out = _image(fused, shape).to(torch.float32)
    return np.ascontiguousarray(out.cpu().numpy())


# ---------------------------------------------------------------------------------------------- splits
def split_counts(counts: npt.ArrayLike, fraction: float, seed: int) -> tuple[Float32Image, Float32Image]:
    """Binomial thinning with any fraction p: Nᵢ = max(round(yᵢ), 0), Aᵢ ~ Binomial(Nᵢ, p), Bᵢ = Nᵢ − Aᵢ.

    For Poisson counts A ~ Poisson(pλ) and B ~ Poisson((1 − p)λ) are independent (module docstring);
    ``reproducibility.binomial_split_counts`` with ``fraction`` p (p = ½ is its default half split).

    Raises
    ------
    ValueError
        For p outside (0, 1), a non-2-D or non-finite image, or all-zero counts.
    """
    return binomial_split_counts(counts, seed, fraction)


def fit_split_fusion_weights(
    counts: npt.ArrayLike,
    estimators: Sequence[Estimator],
    fraction: float = DEFAULT_SPLIT_FRACTION,
    seed: int = 0,
    n_splits: int = DEFAULT_N_SPLITS,
    prior_std: float = DEFAULT_PRIOR_STD,
    knots_per_octave: float = DEFAULT_KNOTS_PER_OCTAVE,
    max_knot_spacing: int = DEFAULT_MAX_KNOT_SPACING,
    device: torch.device | str = "cpu",
) -> FusionWeights:
    """Weights fitted on ``n_splits`` binomial splits of ``counts``, no ground truth (module docstring).

    For split s (seed ``seed + s``): estimates fᵢ(A, p)/p, target T = B/(1 − p); G and c averaged over
    the splits; ν = N_pixels·mean(counts)/(1 − p) (Poisson noise of T).  The normal equations are
    summed on ``device``.

    Raises
    ------
    ValueError
        For no estimators, n_splits < 1, or counts that :func:`split_counts` rejects.
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    if not estimators:
        raise ValueError("at least one estimator is required")
    data = np.asarray(counts, dtype=np.float64)
    gram: FloatArray | None = None
    rhs: FloatArray | None = None
    for s in range(n_splits):
        part_a, part_b = split_counts(data, fraction, seed + s)
        estimates = [np.asarray(f(part_a, fraction), dtype=np.float64) / fraction for f in estimators]
        g, c = ring_normal_equations(estimates, part_b.astype(np.float64) / (1.0 - fraction), device)
        gram = g if gram is None else gram + g
        rhs = c if rhs is None else rhs + c
    assert gram is not None and rhs is not None
    ny, nx = data.shape
    noise_power = ny * nx * max(float(data.mean()), 0.0) / (1.0 - fraction)
    return solve_weights(
        gram / n_splits, rhs / n_splits, (ny, nx), noise_power, prior_std, knots_per_octave, max_knot_spacing
    )


def self_supervised_fusion(
    counts: npt.ArrayLike,
    estimators: Sequence[Estimator],
    fraction: float = DEFAULT_SPLIT_FRACTION,
    seed: int = 0,
    n_splits: int = DEFAULT_N_SPLITS,
    prior_std: float = DEFAULT_PRIOR_STD,
    full_estimates: Sequence[npt.ArrayLike] | None = None,
    max_fit_px: int | None = DEFAULT_MAX_FIT_PX,
    device: torch.device | str = "cpu",
) -> tuple[Float32Image, FusionWeights]:
    """Fuse the estimators' outputs on the full micrograph with weights fitted on its own splits.

    The weights are functions of spatial frequency, so when the longest side n exceeds ``max_fit_px``
    they are fitted on the central crop of 1/f the size, f = ⌈n / max_fit_px⌉ (the same aspect ratio, so
    rings map onto rings), and carried to the full grid by :meth:`FusionWeights.for_shape`.  A 2048² crop
    of a 4096² frame still holds 4× the Fourier coefficients per ring of the 1024² images the defaults
    were chosen on (module docstring), and costs a quarter of the estimator passes.

    Parameters
    ----------
    counts : array (ny, nx)
        The micrograph in electron counts (gain-normalised frame sum), finite, not all zero.
    estimators : sequence of m callables f(counts, dose_fraction) -> estimate (module docstring)
        The first one's mean is kept.
    fraction : float
        p in (0, 1), the dose fraction of the estimators' input in the fit.
    seed, n_splits : int
        Splits use seeds seed, seed + 1, …, seed + n_splits − 1.
    prior_std : float
        τ of :func:`solve_weights`.
    full_estimates : sequence of m arrays, optional
        fᵢ(counts, 1) when already computed (they are computed otherwise).
    max_fit_px : int or None
        Longest side the weights are fitted on (None: the whole micrograph).
    device : torch.device or str
        Where the Fourier transforms and ring sums of the fit and of the fusion run (the estimators
        choose their own device).

    Returns
    -------
    (ndarray float32 (ny, nx), FusionWeights)
        The fused estimate of λ (counts per pixel) and the weights used.

    Raises
    ------
    ValueError
        As :func:`fit_split_fusion_weights`, for ``full_estimates`` of the wrong number or shape, or for
        ``max_fit_px`` < 64.
    """
    data = np.asarray(counts)
    fit_on = central_fit_crop(data, max_fit_px) if data.ndim == 2 else data
    weights = fit_split_fusion_weights(fit_on, estimators, fraction, seed, n_splits, prior_std, device=device)
    if fit_on is not data:
        weights = weights.for_shape((int(data.shape[0]), int(data.shape[1])))
    if full_estimates is None:
        image = np.asarray(counts, dtype=np.float32)
        full_estimates = [f(image, 1.0) for f in estimators]
    if len(full_estimates) != len(estimators):
        raise ValueError(f"{len(full_estimates)} full estimates for {len(estimators)} estimators")
    return apply_fusion_weights(full_estimates, weights, device), weights


def fuse_learned_and_wiener(
    counts: npt.ArrayLike,
    model: DenoiserUNet,
    ctf_fit: CtfFit,
    microscope: MicroscopeSettings,
    seed: int = 0,
    learned_full: npt.ArrayLike | None = None,
    wiener_full: npt.ArrayLike | None = None,
    device: torch.device | str = "cpu",
    max_fit_px: int | None = DEFAULT_MAX_FIT_PX,
) -> tuple[Float32Image, FusionWeights]:
    """The product's fused denoising: the learned U-Net and the CTF-aware Wiener filter, fused per ring.

    Estimators (module docstring): the learned denoiser (``denoiser.denoise_learned``; its shot-noise
    normalisation adapts to any dose by itself) and ``restore.wiener_denoise`` with the full image's
    refined fit and, on a dose fraction p, the noise floor scaled by 1/p.  ``learned_full`` and
    ``wiener_full`` are their outputs on the full micrograph when already computed (the pipeline's
    ``learned_denoised_micrographs`` and ``restored_micrographs``).  The learned estimate's mean is kept.
    ``max_fit_px`` as in :func:`self_supervised_fusion` (weights fitted on a central crop of a larger frame).
    """

    def learned(image: Float32Image, dose_fraction: float) -> Float32Image:
        return denoise_learned(image, model, device=device)

    def wiener(image: Float32Image, dose_fraction: float) -> Float32Image:
        return wiener_denoise(image, ctf_fit, microscope, noise_power_scale=1.0 / dose_fraction, device=device)

    full: list[npt.ArrayLike] | None = None
    if learned_full is not None and wiener_full is not None:
        full = [learned_full, wiener_full]
    return self_supervised_fusion(
        counts, [learned, wiener], seed=seed, full_estimates=full, max_fit_px=max_fit_px, device=device
    )
