"""ΔRepro measurements: how far a result moves when the input is perturbed, and the compute-cost deviation.

The evaluation module's verification sandbox re-runs estimation and restoration on perturbed inputs and
scores how little the results move (``scoring.reproducibility_score`` turns each relative deviation δ_q
into exp(−δ_q/τ_q)).  This module holds the perturbations and the deviations that need more than one
line:

* **Independent noise split** (:func:`binomial_split_counts`, :func:`filtered_half_correlation`).  Counts
  N ~ Poisson(λ) split by binomial thinning, A ~ Binomial(N, ½) and B = N − A, are two *independent*
  Poisson(λ/2) images of the same specimen (the thinning property of the Poisson distribution; Rényi
  1956, and e.g. Papoulis & Pillai, *Probability, Random Variables and Stochastic Processes*, §10).  The
  same holds for any counts whose variance equals their mean, since Cov(A, B) = (Var N − E N)/4; read
  noise of variance r² leaves a small positive covariance r²/4 per pixel.  Restoring both halves with
  one linear filter H and correlating them is the single-exposure analogue of the even/odd-frame
  half-set test: the specimen signal is common to both halves, the shot noise is not, so the
  correlation of the restored halves is the restoration's signal fraction S/(S + N) in the band.
* **Compute-cost deviation** (:func:`predict_seconds`, :func:`relative_cost_deviation`,
  :func:`cost_deviations`): a cost model predicts each step's time from micrographs already processed,
  t̂ = c·n·log₂ n for an n-pixel image (FFT-bound work), c the median of tⱼ/(nⱼ·log₂ nⱼ); the deviation
  |t − t̂|/t̂ flags a micrograph whose processing behaved differently (an iterative fit that struggled, a
  device that fell back to CPU).
* **Image deviations** (:func:`nrmsd`) of a restoration under a perturbation, and the tolerance τ_q of
  every deviation (:data:`REPRO_TOLERANCES`).

Every function is pure; the caller supplies seeds, filters and timings.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.optics import electron_wavelength_angstrom, frequency_grid_per_angstrom

FloatArray = npt.NDArray[np.float64]
Float32Image = npt.NDArray[np.float32]

# Frequencies coarser than this are left out of the half-set correlation: the slow inelastic background
# (correlation length ~300 Å) is common to both halves and would make any exposure look reproducible.
HALF_SET_LOW_RESOLUTION_ANGSTROM = 200.0

REPRO_TOLERANCES: Mapping[str, float] = MappingProxyType(
    {
        # CTF phase error at the fit resolution from the defocus spread between independent sub-crops
        # (defocus_phase_error_rad): at 1 rad a CTF correction keeps cos(1) ≈ 54 % of the signal at the
        # fit resolution.
        "defocus_subcrops_phase": 1.0,
        # NRMSD of the restoration of a one-pixel-shifted input: a shift-invariant filter moves by round-off only.
        "restoration_shift": 0.05,
        # 1 − correlation of the restored independent noise halves above 1/200 Å⁻¹.  Measured half-set
        # correlations of simulated 1k micrographs span 0.02–0.65; τ = 0.5 maps that to e^-2 … e^-0.7, using
        # the score's range instead of crowding near 0.
        "noise_split": 0.5,
        # NRMSD between CPU and GPU restorations: float32 FFT round-off is ~1e-6; 1e-3 means a real difference.
        "cpu_vs_device": 1e-3,
        # |t − t̂|/t̂ of the compute time against the cost model; 2.0 because timings on a shared machine
        # scatter by tens of per cent without anything being wrong, while a step taking 3× its prediction
        # (δ = 2, a self-evaluation loop that needed every iteration, a silent CPU fallback) should register.
        "compute_cost": 2.0,
    }
)
"""τ_q of each ΔRepro deviation δ_q (``scoring.reproducibility_score``: a deviation of τ scores e⁻¹ ≈ 0.37)."""

COST_MODEL_STAGES: tuple[str, ...] = (
    "ctf_estimates",
    "causal_priors",
    "restored_micrographs",
    "deconvolved_micrographs",
)
"""The FFT-bound pipeline steps whose wall times the cost model of :func:`cost_deviations` sums."""


def stable_seed(name: str) -> int:
    """A seed derived from a name (micrograph, batch): the first 32 bits of its SHA-256, the same on every rerun."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def nrmsd(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """‖a − b‖_rms / std(b): how far image ``a`` lies from ``b``, relative to ``b``'s own contrast.

    Parameters
    ----------
    a, b : array, shape (ny, nx)
        The perturbed and the reference image, same units (counts).

    Returns
    -------
    float
        The normalised RMS deviation (dimensionless, ≥ 0; 1e-12 keeps a flat ``b`` finite).
    """
    reference = np.asarray(b)
    rms = np.sqrt(np.mean((np.asarray(a, np.float64) - reference) ** 2))
    return float(rms / (float(np.std(reference)) + 1e-12))


def binomial_split_counts(counts: npt.ArrayLike, seed: int, fraction: float = 0.5) -> tuple[Float32Image, Float32Image]:
    """Split an image of counts into two independent images by binomial thinning (half-dose by default).

    Nᵢ = max(round(yᵢ), 0);  Aᵢ ~ Binomial(Nᵢ, p);  Bᵢ = Nᵢ − Aᵢ   (module docstring), p = ``fraction``.

    For Poisson counts, A ~ Poisson(pλ) and B ~ Poisson((1 − p)λ) are independent, and A + B = N.  Values
    are rounded to whole counts first (a motion-corrected sum is interpolated, an integrating detector adds
    read noise), which is why the data should be in electron counts, gain-normalised.

    Parameters
    ----------
    counts : array, shape (ny, nx)
        Raw micrograph in electron counts per pixel (frame sum), finite.
    seed : int
        Seed of the ``numpy`` generator; the split is a deterministic function of (counts, seed).

    Returns
    -------
    (ndarray, ndarray) of float32, shape (ny, nx)
        The halves A and B.

    Raises
    ------
    ValueError
        For ``fraction`` outside (0, 1), a non-2-D or non-finite image, or one whose counts are all zero.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    data = np.asarray(counts, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"counts must be 2-D [y, x], got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("counts contain NaN or Inf")
    whole = np.clip(np.rint(data), 0, None).astype(np.int64)
    if not whole.any():
        raise ValueError("counts are all zero: there is nothing to split")
    half_a = np.random.default_rng(seed).binomial(whole, fraction)
    return half_a.astype(np.float32), (whole - half_a).astype(np.float32)


def filtered_half_correlation(
    half_a: npt.ArrayLike,
    half_b: npt.ArrayLike,
    filter_rfft: torch.Tensor | npt.ArrayLike,
    pixel_size_angstrom: float,
    low_resolution_angstrom: float = HALF_SET_LOW_RESOLUTION_ANGSTROM,
) -> float:
    """Correlation of two independently noisy halves after the same real filter H, above a frequency.

    ρ = Σ_k w_k H_k² Re(A_k B_k*) / √(Σ_k w_k H_k² |A_k|² · Σ_k w_k H_k² |B_k|²),  |k| ≥ 1/d_low,

    A, B the rfft2 of the halves, w_k the Hermitian weights (2 for interior columns, 1 for the first and,
    for even nx, the last) so the sums equal full-plane sums (Parseval).  Restoring each half with H and
    correlating the results gives the same ρ, since H is real and linear.  With signal power S and
    independent noise power N per half in the band, E[ρ] ≈ S/(S + N) (the Fourier ring correlation of
    half-sets, Saxton & Baumeister 1982, J. Microsc. 127:127, integrated over the band).

    Parameters
    ----------
    half_a, half_b : array, shape (ny, nx)
        The two halves (:func:`binomial_split_counts` or even/odd frame sums).
    filter_rfft : Tensor or array, shape (ny, nx//2 + 1)
        Real, non-negative filter H on the rfft2 grid (e.g. ``restore.wiener_denoise_filter``).
    pixel_size_angstrom : float
        Å per pixel.
    low_resolution_angstrom : float
        d_low: frequencies below 1/d_low are excluded (default 200 Å, module constant's reason).

    Returns
    -------
    float
        ρ ∈ [−1, 1].

    Raises
    ------
    ValueError
        On mismatched shapes, a filter of the wrong shape or with negative/non-finite values, or a band
        with no power in one half.
    """
    a = np.asarray(half_a, dtype=np.float64)
    b = np.asarray(half_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"halves must be 2-D with equal shapes, got {a.shape} and {b.shape}")
    if not pixel_size_angstrom > 0 or not low_resolution_angstrom > 0:
        raise ValueError("pixel_size_angstrom and low_resolution_angstrom must be positive")
    if isinstance(filter_rfft, torch.Tensor):
        h = filter_rfft.detach().to("cpu", torch.float64).numpy()
    else:
        h = np.asarray(filter_rfft, dtype=np.float64)
    expected_shape = (a.shape[0], a.shape[1] // 2 + 1)
    if h.shape != expected_shape:
        raise ValueError(f"filter must have the rfft2 shape {expected_shape}, got {h.shape}")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError("filter values must be finite and >= 0")
    fa = np.fft.rfft2(a - a.mean())
    fb = np.fft.rfft2(b - b.mean())
    ky, kx = frequency_grid_per_angstrom(a.shape, pixel_size_angstrom, rfft=True)
    weight = np.full(fa.shape, 2.0)
    weight[:, 0] = 1.0
    if a.shape[1] % 2 == 0:
        weight[:, -1] = 1.0
    weight = weight * h**2 * (np.hypot(ky, kx) >= 1.0 / low_resolution_angstrom)
    cross = float(np.sum(weight * np.real(fa * np.conj(fb))))
    power_a = float(np.sum(weight * np.abs(fa) ** 2))
    power_b = float(np.sum(weight * np.abs(fb) ** 2))
    if not (power_a > 0 and power_b > 0):
        raise ValueError("a half has no power in the filtered band")
    return max(-1.0, min(1.0, cross / math.sqrt(power_a * power_b)))


def defocus_phase_error_rad(defocus_sigma_angstrom: float, fit_resolution_angstrom: float, voltage_kv: float) -> float:
    """CTF phase error at the fit resolution caused by a defocus uncertainty: φ = π·λ·σ_Δz·k_fit².

    The defocus term of the CTF phase is χ(k) = π·λ·Δz·k² (e.g. Rohou & Grigorieff 2015, J. Struct.
    Biol. 192:216, eq. 1), so an error σ_Δz moves the phase by π·λ·σ_Δz·k² at frequency k; at the fit
    resolution (k_fit = 1/d_fit, the finest frequency the restoration corrects) that is where it matters
    most.  A relative defocus spread says little by itself: 1 % of 3 µm is harmless at 8 Å and ruinous
    at 3 Å; the phase error says how much the CTF correction degrades (cos φ is the fraction of signal a
    phase flip or Wiener filter keeps at k_fit).

    Parameters
    ----------
    defocus_sigma_angstrom : float
        σ_Δz ≥ 0, e.g. the spread of defocus between independent sub-crops (``CtfFit``), Å.
    fit_resolution_angstrom : float
        d_fit > 0, Å.
    voltage_kv : float
        Acceleration voltage, kV (sets λ).
    """
    if not (math.isfinite(defocus_sigma_angstrom) and defocus_sigma_angstrom >= 0):
        raise ValueError(f"defocus_sigma_angstrom must be finite and >= 0, got {defocus_sigma_angstrom}")
    if not (math.isfinite(fit_resolution_angstrom) and fit_resolution_angstrom > 0):
        raise ValueError(f"fit_resolution_angstrom must be finite and > 0, got {fit_resolution_angstrom}")
    wavelength = electron_wavelength_angstrom(voltage_kv)
    return math.pi * wavelength * defocus_sigma_angstrom / fit_resolution_angstrom**2


def fft_cost_units(n_pixels: int) -> float:
    """n·log₂ n for an n-pixel image: the operation count of its 2-D FFT up to a constant."""
    if n_pixels < 2:
        raise ValueError(f"n_pixels must be >= 2, got {n_pixels}")
    return n_pixels * math.log2(n_pixels)


def predict_seconds(reference_seconds: Sequence[float], reference_pixels: Sequence[int], n_pixels: int) -> float | None:
    """Cost-model prediction t̂ = c·n·log₂ n, c = median_j tⱼ/(nⱼ·log₂ nⱼ) over reference runs.

    Parameters
    ----------
    reference_seconds : sequence of float
        Measured wall times tⱼ (s) of the same step on other micrographs, finite and > 0.
    reference_pixels : sequence of int
        Their sizes nⱼ in pixels (ny·nx).
    n_pixels : int
        Size of the micrograph to predict.

    Returns
    -------
    float or None
        t̂ in seconds; None without references (nothing to calibrate on).

    Raises
    ------
    ValueError
        On mismatched lengths or a non-positive/non-finite reference time.
    """
    if len(reference_seconds) != len(reference_pixels):
        raise ValueError("reference_seconds and reference_pixels must have the same length")
    if len(reference_seconds) == 0:
        return None
    rates = []
    for seconds, pixels in zip(reference_seconds, reference_pixels, strict=True):
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"reference times must be finite and > 0, got {seconds}")
        rates.append(seconds / fft_cost_units(int(pixels)))
    return float(np.median(rates)) * fft_cost_units(n_pixels)


@dataclass(frozen=True)
class StepTime:
    """The wall time one pipeline step took on one micrograph.

    Attributes
    ----------
    micrograph : str
        The micrograph's name.
    seconds : float
        Wall time t of the step, s.
    n_pixels : int
        Size n = ny·nx of the micrograph, pixels.
    """

    micrograph: str
    seconds: float
    n_pixels: int


def cost_deviations(
    step_times: Mapping[str, Sequence[StepTime]], stages: Sequence[str] = COST_MODEL_STAGES
) -> dict[str, float]:
    """δ_cost per micrograph: its measured time of the FFT-bound steps against the cost model, leave one out.

    For each stage the model t̂ = c·n·log₂ n is calibrated on the batch's *other* micrographs
    (:func:`predict_seconds`); a micrograph's stage times and predictions are summed over the stages and
    compared, δ = |Σt − Σt̂|/Σt̂ (:func:`relative_cost_deviation`).

    Parameters
    ----------
    step_times : Mapping[str, Sequence[StepTime]]
        stage → the times of one batch's micrographs at that stage.
    stages : sequence of str
        The stages summed (default :data:`COST_MODEL_STAGES`).

    Returns
    -------
    dict[str, float]
        micrograph → δ_cost ≥ 0, sorted by name; empty when a stage has no times.  Micrographs missing
        a stage's time, or alone in their batch, get none.
    """
    measured: dict[str, float] = {}
    predicted: dict[str, float] = {}
    complete: set[str] | None = None
    for stage in stages:
        rows = step_times.get(stage, ())
        if not rows:
            return {}
        names = {r.micrograph for r in rows}
        complete = names if complete is None else complete & names
        for row in rows:
            others = [r for r in rows if r.micrograph != row.micrograph]
            guess = predict_seconds([r.seconds for r in others], [r.n_pixels for r in others], row.n_pixels)
            if guess is None:
                continue
            measured[row.micrograph] = measured.get(row.micrograph, 0.0) + row.seconds
            predicted[row.micrograph] = predicted.get(row.micrograph, 0.0) + guess
    return {
        name: relative_cost_deviation(measured[name], predicted[name])
        for name in sorted(complete or set())
        if name in predicted and predicted[name] > 0
    }


def relative_cost_deviation(measured_seconds: float, predicted_seconds: float) -> float:
    """δ_cost = |t − t̂| / t̂ (≥ 0), the seed's cost deviation of measured vs predicted compute time."""
    if not (math.isfinite(measured_seconds) and measured_seconds >= 0):
        raise ValueError(f"measured_seconds must be finite and >= 0, got {measured_seconds}")
    if not (math.isfinite(predicted_seconds) and predicted_seconds > 0):
        raise ValueError(f"predicted_seconds must be finite and > 0, got {predicted_seconds}")
    return abs(measured_seconds - predicted_seconds) / predicted_seconds


def half_set_frc(
    half_a: npt.ArrayLike,
    half_b: npt.ArrayLike,
    filter_rfft: torch.Tensor | npt.ArrayLike,
    pixel_size_angstrom: float,
) -> tuple[FloatArray, FloatArray]:
    """Fourier ring correlation of two independently noisy halves after the same real filter H.

    FRC(k) = Σ_{ring k} w H² Re(A B*) / √(Σ_{ring k} w H² |A|² · Σ_{ring k} w H² |B|²)   (Saxton &
    Baumeister 1982, J. Microsc. 127:127; van Heel 1987, Ultramicroscopy 21:95), on rings one Fourier
    pixel of the shorter image axis wide, Hermitian weights w as in :func:`filtered_half_correlation`.
    With independent noise halves, FRC(k) = SNR_half(k)/(1 + SNR_half(k)): how much of each ring the
    restoration reproduces.

    Returns
    -------
    k_per_angstrom, frc : ndarray of float64, shape (n_rings,)
        Ring centres (1/Å) from the first ring to Nyquist, and the FRC (NaN where a ring has no power).
    """
    a = np.asarray(half_a, dtype=np.float64)
    b = np.asarray(half_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"halves must be 2-D with equal shapes, got {a.shape} and {b.shape}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
    h = (
        filter_rfft.detach().to("cpu", torch.float64).numpy()
        if isinstance(filter_rfft, torch.Tensor)
        else (np.asarray(filter_rfft, dtype=np.float64))
    )
    if h.shape != (a.shape[0], a.shape[1] // 2 + 1):
        raise ValueError(f"filter must have the rfft2 shape {(a.shape[0], a.shape[1] // 2 + 1)}, got {h.shape}")
    fa = np.fft.rfft2(a - a.mean())
    fb = np.fft.rfft2(b - b.mean())
    ky, kx = frequency_grid_per_angstrom(a.shape, pixel_size_angstrom, rfft=True)
    k = np.hypot(ky, kx)
    ring_width = 1.0 / (min(a.shape) * pixel_size_angstrom)
    nyquist = 0.5 / pixel_size_angstrom
    n_rings = int(nyquist / ring_width)
    index = np.floor(k / ring_width).astype(np.int64)
    weight = np.full(fa.shape, 2.0)
    weight[:, 0] = 1.0
    if a.shape[1] % 2 == 0:
        weight[:, -1] = 1.0
    weight *= h**2
    valid = (index >= 1) & (index <= n_rings)

    def ring_sum(values: FloatArray) -> FloatArray:
        sums = np.bincount(index[valid], weights=(weight * values)[valid], minlength=n_rings + 1)
        return np.asarray(sums[1:], dtype=np.float64)

    cross = ring_sum(np.real(fa * np.conj(fb)))
    power = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        frc = np.where(power > 0, cross / power, np.nan)
    centres = (np.arange(1, n_rings + 1) + 0.5) * ring_width
    return centres, frc


def frc_resolution_angstrom(
    k_per_angstrom: npt.ArrayLike, frc: npt.ArrayLike, threshold: float = 0.143
) -> float | None:
    """1/k of the finest ring from which on the (3-ring smoothed) FRC stays below ``threshold``.

    Micrograph FRCs dip at every CTF zero (no signal there) and recover in the next Thon ring, so the
    *first* crossing would report the first zero; the resolution the data support is where the FRC
    drops below the threshold for good.  0.143 for half-sets (Rosenthal & Henderson 2003, J. Mol. Biol.
    333:721).  None when no ring reaches the threshold.
    """
    k = np.asarray(k_per_angstrom, dtype=np.float64)
    values = np.nan_to_num(np.asarray(frc, dtype=np.float64), nan=0.0)
    if k.shape != values.shape or k.size == 0:
        raise ValueError("k and frc must be non-empty arrays of the same shape")
    smoothed = np.convolve(values, np.ones(3) / 3.0, mode="same")
    above = np.nonzero(smoothed >= threshold)[0]
    return None if above.size == 0 else float(1.0 / k[above[-1]])
