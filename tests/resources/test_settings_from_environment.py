"""Settings from the environment: artifact steps and pinned weights of V are validated with clear errors."""

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


def test_pinned_weights_from_the_environment_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryodecon_resources import ScoringSettings

    monkeypatch.setenv("CRYODECON_WEIGHTS", "1,0,0,1,0")
    assert resources_from_environment()["scoring"].weights == [1.0, 0.0, 0.0, 1.0, 0.0]  # type: ignore[attr-defined]
    monkeypatch.setenv("CRYODECON_WEIGHTS", "1,heavy,0,1,0")
    with pytest.raises(ValueError, match="five comma-separated numbers"):
        resources_from_environment()
    monkeypatch.setenv("CRYODECON_WEIGHTS", "1,1")
    with pytest.raises(ValueError, match="5 entries"):
        resources_from_environment()
    with pytest.raises(ValueError, match="finite and >= 0"):
        ScoringSettings(weights=[1.0, -1.0, 0.0, 0.0, 0.0])
