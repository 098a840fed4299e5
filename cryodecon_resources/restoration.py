"""Restoration settings: which artifact-removal steps run before the restoration filters, and the per-batch
fine-tuning of the learned denoiser."""

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
    # Optimiser steps of the per-batch fine-tuning of the shipped denoiser (`session_denoiser`); 0: off,
    # the shipped model restores every batch.  A few hundred steps take about a minute per batch on one
    # CPU core, seconds on a GPU.
    denoiser_finetune_steps: int = 0

    @field_validator("artifact_steps")
    @classmethod
    def _known(cls, steps: list[str]) -> list[str]:
        unknown = sorted(set(steps) - set(ARTIFACT_STEPS))
        if unknown:
            raise ValueError(f"unknown artifact steps {unknown}; known: {list(ARTIFACT_STEPS)}")
        return steps

    @field_validator("denoiser_finetune_steps")
    @classmethod
    def _non_negative(cls, steps: int) -> int:
        if steps < 0:
            raise ValueError(f"denoiser_finetune_steps must be >= 0, got {steps}")
        return steps
