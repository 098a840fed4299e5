"""Settings from the environment: artifact steps and pinned weights of V are validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryodecon_resources import RestorationSettings, Settings, build_resources, resources_from_environment


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


def test_settings_are_read_once_and_passed_not_put_into_the_environment(tmp_path: Path) -> None:
    """The demo and tests configure by value: the environment they were given is left as it was."""
    from cryodecon_resources import Settings, build_resources

    env = {"CRYODECON_HOME": str(tmp_path), "CRYODECON_SETTLE_SECONDS": "5"}
    settings = Settings.from_environment(env).replace(max_batch_size=3)
    resources = build_resources(settings)
    assert resources.microscope_storage.root == str(tmp_path / "storage")
    assert resources.microscope_storage.settle_seconds == 5.0 and resources.microscope_storage.max_batch_size == 3
    assert env == {"CRYODECON_HOME": str(tmp_path), "CRYODECON_SETTLE_SECONDS": "5"}
    with pytest.raises(ValueError, match="CRYODECON_MAX_BATCH_SIZE must be an integer"):
        Settings.from_environment({"CRYODECON_MAX_BATCH_SIZE": "many"})


def test_paths_set_in_the_environment_reach_the_code_location_as_env_vars(tmp_path: Path) -> None:
    import dagster as dg

    from cryodecon_resources import Settings, build_resources

    settings = Settings.from_environment({"CRYODECON_HOME": str(tmp_path), "CRYODECON_WAREHOUSE_ROOT": "/data/wh"})
    located = build_resources(settings, env_vars=True)
    assert (
        isinstance(located.warehouse.root, dg.EnvVar)
        and located.warehouse.root.env_var_name == "CRYODECON_WAREHOUSE_ROOT"
    )
    assert located.outputs.root == str(tmp_path / "outputs")  # not set in the environment: the default path
    assert build_resources(settings).warehouse.root == "/data/wh"  # resolved for direct use (CLI, tests)
    assert build_resources(settings.replace(warehouse_root=tmp_path), env_vars=True).warehouse.root == str(tmp_path)


def test_a_particle_diameter_that_is_not_a_positive_number_names_itself() -> None:
    with pytest.raises(ValueError, match="CRYODECON_PARTICLE_DIAMETER_ANGSTROM must be a number"):
        Settings.from_environment({"CRYODECON_PARTICLE_DIAMETER_ANGSTROM": "wide"})
    with pytest.raises(ValueError, match="particle_diameter_angstrom must be positive"):
        build_resources(Settings.from_environment({"CRYODECON_PARTICLE_DIAMETER_ANGSTROM": "-150"}))


def test_picker_adaptation_steps_reach_the_picking_resource() -> None:
    assert build_resources(Settings.from_environment({})).picking.adaptation().steps == 0
    picking = build_resources(Settings.from_environment({"CRYODECON_PICKER_ADAPTATION_STEPS": "150"})).picking
    assert picking.adaptation_steps == 150 and picking.adaptation().steps == 150
    with pytest.raises(ValueError, match="CRYODECON_PICKER_ADAPTATION_STEPS must be an integer"):
        Settings.from_environment({"CRYODECON_PICKER_ADAPTATION_STEPS": "many"})
    with pytest.raises(ValueError, match="adaptation_steps must be >= 0"):
        build_resources(Settings.from_environment({"CRYODECON_PICKER_ADAPTATION_STEPS": "-1"}))
