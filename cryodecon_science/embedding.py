"""Rotation- and shift-invariant particle embeddings, and a calibrated novelty score.

Why these features.  A particle appears in a box at an unknown in-plane angle and a few pixels off the
picked centre, so a descriptor that compares particles across micrographs must ignore both.  The
descriptor here is built on the particle's **autocorrelation** A(ρ) = Σ_x f(x) f(x + ρ) (computed as
the inverse FFT of |F(k)|², zero-padded to twice the box so it does not wrap):

* A is invariant to shifts of the particle within the box;
* an in-plane rotation of the particle rotates A by the same angle, which on a polar grid A(ρ, φ) is a
  circular shift along φ, so the amplitudes of its angular Fourier series are rotation invariant
  (the rotation-invariant Fourier descriptors of Schatzki et al. and the rotational-average/
  autocorrelation invariants of reference-free 2D alignment, Schatz & van Heel 1990, Ultramicroscopy
  32:255; Penczek, Radermacher & Frank 1992, Ultramicroscopy 40:33);
* white noise contributes to A only at ρ = 0 (in expectation), so excluding the origin makes the
  descriptor robust to the noise level — unlike the power spectrum, where noise adds to every ring.

Features, per ring ρ_i of R = d/4 rings between 1 pixel and half the box:

1. the rotational average ā(ρ_i) = ⟨A(ρ_i, φ)⟩_φ, the particle's radial "size and mass distribution"
   signature (equivalently, the Hankel transform of the rotationally averaged power spectrum);
2. the angular harmonic amplitudes |A_m(ρ_i)| = |⟨A(ρ_i, φ) e^(−imφ)⟩_φ| for m = 2, 4, 6, which keep
   the particle's anisotropy (elongation → m = 2, 4-fold arrangement → m = 4, 6-fold → m = 6) that the
   rotational average discards.  Odd harmonics vanish: A is centrosymmetric.

Normalisation is per particle, never per batch, so an embedding does not depend on what else is in the
batch and library entries from different sessions stay comparable: the radial block has its mean over
rings removed (the profile's shape, not its offset), and the concatenation is L2-normalised, which also
cancels contrast and gain (A scales with their square).  The library compares embeddings by cosine
distance.  A log-compressed rotational power spectrum was tried as an extra block: it is as invariant
but separates shapes less and degrades faster with noise, so it is not included.

Before the transform each box is multiplied by a soft circular mask (1 inside 0.40·B, raised-cosine
edge to 0.48·B): it removes the box corners — which a rotation would move relative to the particle —
and the edge discontinuity.  The particle plus its centring error must fit inside 0.40·B, so the box
must be at least 1.25 × the particle diameter plus 2.5 × the centring error (1.5–2 × d is usual).

Limits of this first version: it describes single 2D images, so two projection directions of one 3D
structure may embed apart, and at the SNR of raw single particles (≪ 1) the features are noisy —
embedding class averages or restored/denoised particles is the intended use.  Boxes should come from
CTF-corrected (restored) micrographs; otherwise the CTF's fringes enter A.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as functional

FloatArray = npt.NDArray[np.float64]

# Angular harmonics used as anisotropy features (even only: the autocorrelation is centrosymmetric).
HARMONICS = (2, 4, 6)
_FEATURES_PER_RING = 1 + len(HARMONICS)
_INNER_RADIUS_PX = 1.0
_OUTER_RADIUS_FRACTION_OF_BOX = 0.5
_RADIAL_SUBSAMPLES = 4
_N_ANGLES = 96
_MASK_INNER_FRACTION = 0.40
_MASK_OUTER_FRACTION = 0.48
# Boxes larger than this are resampled to it first: R ≤ 32 rings need no finer sampling, and the cost
# and memory of the zero-padded FFT stay fixed (a 1.5 × 150 Å box at 0.66 Å/px would be 340 px).
WORK_BOX_PX = 64
_CHUNK_PARTICLES = 256


def _soft_circular_mask(box_px: int, device: torch.device) -> torch.Tensor:
    """1 inside 0.40·B, raised-cosine fall-off to 0 at 0.48·B, centred at index B//2."""
    coords = torch.arange(box_px, device=device, dtype=torch.float64) - box_px // 2
    radius = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    inner, outer = _MASK_INNER_FRACTION * box_px, _MASK_OUTER_FRACTION * box_px
    t = ((radius - inner) / (outer - inner)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def _polar_autocorrelation(boxes: torch.Tensor, n_rings: int) -> torch.Tensor:
    """Autocorrelation of each masked box on a polar grid, averaged over each ring's radial extent.

    Returns shape (n, n_rings, n_angles): ring i spans radii edges[i] … edges[i+1] (1 … B/2 pixels),
    sampled at ``_RADIAL_SUBSAMPLES`` radii and ``_N_ANGLES`` angles over [0, 2π), bilinear
    interpolation, then averaged over the sub-radii.
    """
    n, box, _ = boxes.shape
    device = boxes.device
    centred = boxes - boxes.mean(dim=(1, 2), keepdim=True)
    masked = centred * _soft_circular_mask(box, device)
    size = 2 * box  # zero padding: linear, not circular, correlation
    power = torch.fft.rfft2(masked, s=(size, size)).abs() ** 2
    acf = torch.fft.fftshift(torch.fft.irfft2(power, s=(size, size)), dim=(-2, -1))  # origin at index B
    edges = torch.linspace(
        _INNER_RADIUS_PX, _OUTER_RADIUS_FRACTION_OF_BOX * box, n_rings + 1, device=device, dtype=torch.float64
    )
    fractions = (torch.arange(_RADIAL_SUBSAMPLES, device=device, dtype=torch.float64) + 0.5) / _RADIAL_SUBSAMPLES
    radii = edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * fractions[None, :]  # (rings, sub)
    phi = torch.arange(_N_ANGLES, device=device, dtype=torch.float64) * (2.0 * math.pi / _N_ANGLES)
    x = box + radii[..., None] * torch.cos(phi)  # (rings, sub, angles), pixel indices
    y = box + radii[..., None] * torch.sin(phi)
    # grid_sample with align_corners=True maps -1 → index 0 and +1 → index size-1.
    grid = torch.stack((2.0 * x / (size - 1) - 1.0, 2.0 * y / (size - 1) - 1.0), dim=-1)
    grid = grid.reshape(1, n_rings * _RADIAL_SUBSAMPLES, _N_ANGLES, 2).expand(n, -1, -1, -1)
    sampled = functional.grid_sample(acf[:, None], grid.to(acf.dtype), mode="bilinear", align_corners=True)
    return sampled.reshape(n, n_rings, _RADIAL_SUBSAMPLES, _N_ANGLES).mean(dim=2)


def embed_particles(
    boxes: npt.NDArray[np.floating], n_features: int = 64, device: torch.device | str = "cpu"
) -> npt.NDArray[np.float32]:
    """Rotation- and shift-invariant embedding of particle boxes (module docstring).

    e = normalise([ā(ρ_1) − ⟨ā⟩, …, ā(ρ_R) − ⟨ā⟩,  |A_2(ρ_1)|, |A_4(ρ_1)|, |A_6(ρ_1)|, …, |A_6(ρ_R)|])

    with R = n_features / 4 rings and ⟨ā⟩ the mean of ā over the rings; ‖e‖ = 1, so the cosine distance
    1 − e·e' compares two particles.  Boxes larger than ``WORK_BOX_PX`` (64) are first resampled to
    64 × 64 (antialiased bilinear), so the rings are fixed fractions of the box: with boxes cut at a fixed
    multiple of the expected particle diameter, embeddings from different pixel sizes are comparable.
    Each box is processed independently (the result does not depend on the batch), in chunks of 256,
    float64 internally.

    Parameters
    ----------
    boxes : ndarray, shape (n, B, B)
        Particle boxes [particle, y, x] centred on the picked positions (``extract_boxes``), B ≥ 16.
    n_features : int
        Embedding length d: a multiple of 4, at least 8 and at most 2·min(B, 64) (rings ≥ ½ pixel wide).
    device : torch.device or str
        Where to compute (the caller picks it, e.g. from the ``TorchDevice`` resource).

    Returns
    -------
    ndarray of float32, shape (n, d)
        Unit-norm embeddings; a constant box, which carries no information, gives the zero vector.
    """
    data = np.asarray(boxes)
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"boxes must have shape (n, B, B), got {data.shape}")
    box = data.shape[1]
    if n_features % _FEATURES_PER_RING != 0 or n_features < 2 * _FEATURES_PER_RING:
        raise ValueError(f"n_features must be a multiple of {_FEATURES_PER_RING} and >= 8, got {n_features}")
    if box < 16 or n_features > 2 * min(box, WORK_BOX_PX):
        raise ValueError(f"box size {box} too small for n_features={n_features} (need B >= max(16, d/2))")
    if not np.all(np.isfinite(data)):
        raise ValueError("boxes contain NaN or Inf")
    n = data.shape[0]
    if n == 0:
        return np.zeros((0, n_features), dtype=np.float32)
    n_rings = n_features // _FEATURES_PER_RING
    chunks = []
    for start in range(0, n, _CHUNK_PARTICLES):
        tensor = torch.as_tensor(data[start : start + _CHUNK_PARTICLES], dtype=torch.float64, device=device)
        if box > WORK_BOX_PX:
            tensor = functional.interpolate(
                tensor[:, None],
                size=(WORK_BOX_PX, WORK_BOX_PX),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[:, 0]
        chunks.append(_features(tensor, n_rings))
    features = torch.cat(chunks, dim=0)
    return np.asarray(features.to("cpu", torch.float32).numpy(), dtype=np.float32)


def _features(boxes: torch.Tensor, n_rings: int) -> torch.Tensor:
    """Unit-norm feature vectors (n, 4·n_rings) of boxes (n, B, B), float64 (see ``embed_particles``)."""
    n = boxes.shape[0]
    polar = _polar_autocorrelation(boxes, n_rings)
    series = torch.fft.rfft(polar, dim=-1) / _N_ANGLES  # angular Fourier series per ring
    radial = series[..., 0].real
    radial = radial - radial.mean(dim=1, keepdim=True)
    harmonic = series[..., list(HARMONICS)].abs().reshape(n, -1)
    features = torch.cat((radial, harmonic), dim=1)
    norm = features.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, features / norm.clamp_min(1e-300), torch.zeros_like(features))


# float32 unit vectors: 1 − e·e reaches −d·ε₃₂ ≈ −64 × 6e−8 ≈ −4e−6 for d = 64; 1e−5 leaves room.
DISTANCE_ROUNDING = 1e-5


def gaussian_low_pass(
    images: npt.NDArray[np.floating], pixel_size_angstrom: float, resolution_angstrom: float
) -> FloatArray:
    """Gaussian low-pass of images (..., n, m): T(k) = exp(−½ (k · d)²), e^(−½) at k = 1/d, d = ``resolution_angstrom``.

    Brings images of different resolution (a clean reference projection, a class average) to one common
    resolution before they are embedded, so that their distance measures shape, not sharpness.
    """
    data = np.asarray(images, dtype=np.float64)
    if not (math.isfinite(pixel_size_angstrom) and pixel_size_angstrom > 0):
        raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
    if not (math.isfinite(resolution_angstrom) and resolution_angstrom > 0):
        raise ValueError(f"resolution_angstrom must be positive, got {resolution_angstrom}")
    ky = np.fft.fftfreq(data.shape[-2], d=pixel_size_angstrom)[:, None]
    kx = np.fft.rfftfreq(data.shape[-1], d=pixel_size_angstrom)[None, :]
    transfer = np.exp(-0.5 * (ky**2 + kx**2) * resolution_angstrom**2)
    return np.asarray(np.fft.irfft2(np.fft.rfft2(data) * transfer, s=data.shape[-2:]), dtype=np.float64)


def novelty_score(
    query_nn_distances: npt.NDArray[np.floating], library_nn_distances: npt.NDArray[np.floating]
) -> float:
    """Calibrated novelty: median over query particles of the library's nearest-neighbour distance ECDF.

    N = median_j F̂(δ_j),  F̂(δ) = (#{i : D_i < δ} + ½ #{i : D_i = δ}) / M

    where δ_j is query particle j's distance to its nearest library entry and D_1 … D_M are the library
    entries' own nearest-neighbour distances (each to the nearest *other* entry).  A query that is a
    typical new member of a known structure's cloud lies as far from its neighbours as library members
    do, so F̂ is uniform and N ≈ 0.5; an exact duplicate gives 0; a structure far from everything known
    gives 1 (ties are counted half, the mid-rank ECDF).  The median makes the batch score robust to a
    minority of junk picks.  An infinite δ (no neighbour found) counts as beyond every D.

    A library with fewer than two entries has no nearest-neighbour distances (``library_nn_distances`` is
    empty): nothing is known to be familiar, so N = 1.0.

    Parameters
    ----------
    query_nn_distances : ndarray, shape (n,)
        δ_j ≥ 0, in the library's distance (cosine distance for ``StructureLibrary``); n ≥ 1.  Values
        down to −``DISTANCE_ROUNDING`` are rounding of a zero distance (float32 cosine of a vector with
        itself) and count as 0.
    library_nn_distances : ndarray, shape (M,)
        D_i ≥ 0, same distance; may be empty.

    Returns
    -------
    float
        N ∈ [0, 1].

    Raises
    ------
    ValueError
        With no query distances, or NaN or negative (beyond rounding) distances.
    """
    query = np.asarray(query_nn_distances, dtype=np.float64).ravel()
    library = np.asarray(library_nn_distances, dtype=np.float64).ravel()
    if query.size == 0:
        raise ValueError("no query distances: a batch without particles has no novelty")
    for name, values in (("query", query), ("library", library)):
        if np.any(np.isnan(values)) or np.any(values < -DISTANCE_ROUNDING):
            raise ValueError(f"{name} nearest-neighbour distances must be >= 0 and not NaN")
    query, library = np.maximum(query, 0.0), np.maximum(library, 0.0)
    if library.size == 0:
        return 1.0
    ordered = np.sort(library)
    below = np.searchsorted(ordered, query, side="left")
    at_or_below = np.searchsorted(ordered, query, side="right")
    ecdf = (below + 0.5 * (at_or_below - below)) / ordered.size
    return float(np.median(ecdf))
