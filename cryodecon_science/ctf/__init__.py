"""CTF estimation from a single micrograph, CTFFIND4-style, in torch (runs on CPU or GPU).

After Rohou & Grigorieff 2015, "CTFFIND4: Fast and accurate defocus estimation from electron
micrographs", J. Struct. Biol. 192:216; conventions in :mod:`cryodecon_science.optics`.
:func:`estimate_ctf` runs these steps, one module each, in dependency order:

* :mod:`~cryodecon_science.ctf.layout`: input checks and the spectrum: the tile-averaged periodogram, its
  pixels sorted by |k|, and the CTF phase coefficients.
* :mod:`~cryodecon_science.ctf.envelopes`: the non-negative B-spline profiles a(k) (signal × envelope)
  and b(k) (background) under the rings, and the :class:`~cryodecon_science.records.SpectralModel`.
* :mod:`~cryodecon_science.ctf.search_1d`: exhaustive 1-D search for the mean defocus on the rotational
  average, by variable projection.
* :mod:`~cryodecon_science.ctf.refine_2d`: 2-D refinement of defocus and astigmatism by a weighted NCC:
  coarse grid, then band-widening L-BFGS-B.
* :mod:`~cryodecon_science.ctf.fit_resolution`: the fit resolution from the equiphase average.
* :mod:`~cryodecon_science.ctf.uncertainty`: the defocus σ by a delete-one-group jackknife.
* :mod:`~cryodecon_science.ctf.estimate`: :func:`estimate_ctf`, the steps in order.
"""

from cryodecon_science.ctf.estimate import estimate_ctf
from cryodecon_science.ctf.layout import MIN_IMAGE_SIZE_PX, CtfEstimationError
from cryodecon_science.ctf.refine_2d import ctf_params_from_components

__all__ = ["MIN_IMAGE_SIZE_PX", "CtfEstimationError", "ctf_params_from_components", "estimate_ctf"]
