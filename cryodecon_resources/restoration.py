"""Restoration settings: which artifact-removal steps run before the restoration filters."""

from __future__ import annotations

import dagster as dg
from pydantic import field_validator

from cryodecon_science.artifacts import ARTIFACT_STEPS


class RestorationSettings(dg.ConfigurableResource):
    """Artifact steps (``cryodecon_science.artifacts``) applied to each micrograph before restoration.

    ``artifact_steps`` names steps of ``ARTIFACT_STEPS``: ``hot_pixels`` and ``stripes`` (causal node
    ``detector_noise``), ``ice_gradient`` and ``carbon_edges`` (node ``ice_thickness``).  Default: hot
    pixels, stripes and carbon edges — each leaves an image without that artifact practically unchanged.
    ``ice_gradient`` is off by default because it changes the photometry of the whole field (it divides
    by a fitted trend); switch it on for sessions with wedged ice.
    """

    artifact_steps: list[str] = ["hot_pixels", "stripes", "carbon_edges"]

    @field_validator("artifact_steps")
    @classmethod
    def _known(cls, steps: list[str]) -> list[str]:
        unknown = sorted(set(steps) - set(ARTIFACT_STEPS))
        if unknown:
            raise ValueError(f"unknown artifact steps {unknown}; known: {list(ARTIFACT_STEPS)}")
        return steps
