"""Rotation- and shift-invariant embeddings of class averages, for comparing classes across sessions.

Class averages are the intended input of :func:`cryodecon_science.embedding.embed_particles` (the autocorrelation
invariants of Schatz & van Heel 1990, Ultramicroscopy 32:255): CTF-corrected and averaged, they have the SNR that
single particles lack.  The class frame is arbitrary (a class average may sit at any in-plane angle and a pixel or
two off centre), which the embedding ignores; two averages of the same view embed close in cosine distance.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science.classification.streaming import ClassificationState, class_averages
from cryodecon_science.embedding import embed_particles


def embed_class_averages(
    state: ClassificationState, n_features: int = 64, device: torch.device | str = "cpu"
) -> npt.NDArray[np.float32]:
    """Unit-norm embeddings (K, n_features) of the Wiener class averages of ``state`` (``embed_particles``).

    Box edges of at least 16 px and ``n_features`` ≤ 2·min(B, 64) (a multiple of 4) are required by
    ``embed_particles``; an all-zero average embeds as the zero vector.
    """
    averages = class_averages(state).detach().to("cpu", torch.float64).numpy()
    return embed_particles(np.ascontiguousarray(averages), n_features=n_features, device=device)
