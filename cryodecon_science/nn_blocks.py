"""Building blocks shared by the project's U-Nets (the denoiser and the picker)."""

from __future__ import annotations

from torch import nn


def double_conv(c_in: int, c_out: int, slope: float) -> nn.Sequential:
    """One U-Net level: two 3×3 convolutions (same padding), each followed by LeakyReLU(``slope``)
    (Ronneberger et al. 2015)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.LeakyReLU(slope),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(slope),
    )
