"""Particle settings: the particle diameter a session is picked for when its description does not give one,
how far the picker adapts to each batch, and the number of 2D classes of a session."""

from __future__ import annotations

import math

import dagster as dg
from pydantic import field_validator

from cryodecon_science.exposure import Exposure
from cryodecon_science.picking.adaptation import AdaptationConfig


class PickingSettings(dg.ConfigurableResource):
    """The expected particle diameter, Å, and the picker's per-batch adaptation.

    A session description (``session.json``: ``particle_diameter_angstrom``) gives the diameter of its
    sample; ``particle_diameter_angstrom`` here is used for sessions without one (as cryoSPARC Live and
    RELION's on-the-fly processing ask the operator for the particle size once per session).
    ``adaptation_steps``: Adam steps of self-training on each batch's own confident picks before it is
    picked again (``picking.adaptation``; 0: the shipped picker alone).  ``n_classes_2d``: K of each
    session's streaming 2D classification (``classes_2d``; fixed for a session once its first batch is
    classified).
    """

    particle_diameter_angstrom: float = 150.0
    adaptation_steps: int = 0
    n_classes_2d: int = 20

    @field_validator("particle_diameter_angstrom")
    @classmethod
    def _positive(cls, diameter: float) -> float:
        if not (math.isfinite(diameter) and diameter > 0):
            raise ValueError(f"particle_diameter_angstrom must be positive, got {diameter}")
        return diameter

    @field_validator("adaptation_steps")
    @classmethod
    def _not_negative(cls, steps: int) -> int:
        if steps < 0:
            raise ValueError(f"adaptation_steps must be >= 0, got {steps}")
        return steps

    @field_validator("n_classes_2d")
    @classmethod
    def _at_least_one(cls, classes: int) -> int:
        if classes < 1:
            raise ValueError(f"n_classes_2d must be >= 1, got {classes}")
        return classes

    def diameter_angstrom(self, exposure: Exposure) -> float:
        """The diameter to pick ``exposure`` for: its session's, else this setting's."""
        return exposure.particle_diameter_angstrom or self.particle_diameter_angstrom

    def adaptation(self) -> AdaptationConfig:
        """The self-training schedule of each batch."""
        return AdaptationConfig(steps=self.adaptation_steps)
