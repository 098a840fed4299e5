"""RestorationSettings: artifact steps are validated and read from the environment."""

from __future__ import annotations

import pytest

from cryodecon_resources import RestorationSettings, resources_from_environment


def test_unknown_steps_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown artifact steps"):
        RestorationSettings(artifact_steps=["hot_pixels", "sharpen"])
    assert RestorationSettings().artifact_steps == ["hot_pixels", "stripes", "carbon_edges"]


def test_steps_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYODECON_ARTIFACT_STEPS", "hot_pixels, ice_gradient")
    settings = resources_from_environment()["restoration"]
    assert settings.artifact_steps == ["hot_pixels", "ice_gradient"]  # type: ignore[attr-defined]
