"""Gain references end to end at the science level: movies recorded through a known gain, the reference
stored in another orientation, found by each convention, read, oriented (MotionCor2) and applied; the
per-session settings that name and orient it.

Statistics.  A movie of n frames at expected counts λ per pixel and frame, recorded through gain g
(raw = Binomial(true, 1/g)), corrected as raw × g, sums to S with E[S] = n·λ and Var[S] = n·λ·g.  Summed
over 8 × 8 blocks, z = Σ(S − nλ) / √Σ(nλg) is standard normal where the correction is right; a gain
applied in the wrong orientation (or not at all) leaves a bias of n·λ·(g_used/g − 1), ≈ 10–20 % of the
counts, which over a block of 64 pixels is many σ.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tifffile

from cryodecon_science.exposure import ICE_AMPLITUDE_CONTRAST_FRACTION
from cryodecon_science.ingest import prepare_exposure
from cryodecon_science.io.errors import GainReferenceMismatchError, GainReferenceMissingError
from cryodecon_science.io.gain import (
    GainFlip,
    is_gain_reference_name,
    load_gain_reference,
    read_gain_reference,
    unorient_image,
)
from cryodecon_science.io.gain_discovery import SessionGains
from cryodecon_science.io.layout import classify_exposure, discover_session, read_exposure
from cryodecon_science.io.mrc import write_mrc
from cryodecon_science.io.serialem import read_mdoc
from cryodecon_science.io.session_settings import (
    GainSettings,
    SessionSettings,
    SessionSettingsError,
    resolve_session_settings,
)
from cryodecon_science.simulate import (
    SimulationConfig,
    record_frames_through_gain,
    record_through_gain,
    simulate_gain_reference,
    simulate_session,
    write_simulated_session,
)

SHAPE = (48, 64)  # not square: a quarter turn changes the reference's shape on disk
N_FRAMES = 10
ORIENTATIONS: list[tuple[int, GainFlip]] = [(k, f) for k in range(4) for f in ("none", "upside_down", "left_right")]


def _expected_counts() -> npt.NDArray[np.float64]:
    """λ per pixel and frame: a smooth specimen-like image, 4–6 counts."""
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return 5.0 + 1.0 * np.sin(2 * np.pi * yy / 31.0) * np.cos(2 * np.pi * xx / 23.0)


def _block_z(
    total: npt.NDArray[np.floating], expected: npt.NDArray[np.floating], variance: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """z of the 8 × 8 block sums of total − expected, in units of their Poisson σ."""
    ny, nx = (s // 8 * 8 for s in total.shape)

    def blocks(a: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        return np.asarray(a[:ny, :nx], dtype=np.float64).reshape(ny // 8, 8, nx // 8, 8).sum(axis=(1, 3))

    return (blocks(total) - blocks(expected)) / np.sqrt(blocks(variance))


def _flat_gain(level: float) -> npt.NDArray[np.float32]:
    """A reference of mean ``level`` (with a 1 % ramp: MRC readers refuse a constant image)."""
    ramp = np.linspace(-0.01, 0.01, SHAPE[1], dtype=np.float32)[None, :]
    return (np.full(SHAPE, level, np.float32) * (1.0 + ramp)).astype(np.float32)


def _movie_through_gain(
    tmp_path: Path, rotate: int, flip: GainFlip, seed: int = 0
) -> tuple[Path, Path, npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """(movie file, stored reference file, λ, true gain): frames through a gain stored as MotionCor2 would need."""
    rng = np.random.default_rng(seed)
    lam = _expected_counts()
    true_counts = rng.poisson(np.broadcast_to(lam, (N_FRAMES, *SHAPE))).astype(np.float32)
    gain = simulate_gain_reference(SHAPE, 0.15, 3, seed, rotate, flip)
    raw = record_frames_through_gain(true_counts, gain, [seed, 2])
    movie = tmp_path / "movies" / "m_0001_fractions.mrc"
    write_mrc(movie, raw.astype(np.uint16), 1.0)
    stored = tmp_path / "movies" / "K3_gain.mrc"
    write_mrc(stored, gain.stored_reference, 1.0)
    return movie, stored, lam, gain.gain


@pytest.mark.parametrize(("rotate", "flip"), ORIENTATIONS)
def test_gain_read_oriented_and_applied_gives_the_truth_within_noise(
    tmp_path: Path, rotate: int, flip: GainFlip
) -> None:
    movie, stored, lam, true_gain = _movie_through_gain(tmp_path, rotate, flip)
    reference = read_gain_reference(stored, rotate_quarter_turns_ccw=rotate, flip=flip)
    np.testing.assert_array_equal(reference.gain, true_gain)
    assert reference.defect_count == 3 and len(reference.sha256) == 64

    exposure = read_exposure(movie, gain=reference)
    total = exposure.frames.sum(axis=0, dtype=np.float64)
    expected, variance = N_FRAMES * lam, N_FRAMES * lam * np.where(true_gain > 0, true_gain, 1.0)
    live = ~reference.defect_mask
    z_pixels = (total - expected)[live] / np.sqrt(variance[live])
    assert abs(float(z_pixels.mean())) < 0.1 and 0.9 < float(z_pixels.std()) < 1.1
    z = _block_z(total, expected, variance)
    assert float(np.sqrt(np.mean(z**2))) < 1.6, "gain-corrected sum differs from the truth beyond noise"
    # The dead pixels are filled from their neighbours, and the record says what was applied.
    detector = exposure.metadata.detector
    assert detector.gain_reference_path == str(stored) and detector.gain_reference_sha256 == reference.sha256
    assert detector.gain_rotate_quarter_turns_ccw == rotate and detector.gain_flip == flip
    assert detector.gain_convention == "multiply" and detector.defect_pixels == 3

    # The same reference without the orientation it needs: refused (shape) or visibly wrong (pattern).
    if (rotate, flip) != (0, "none"):
        try:
            wrong = read_exposure(movie, gain=read_gain_reference(stored))
        except GainReferenceMismatchError as error:
            assert rotate % 2 == 1 and "does not match" in str(error)
        else:
            misoriented = _block_z(wrong.frames.sum(axis=0, dtype=np.float64), expected, variance)
            assert float(np.sqrt(np.mean(misoriented**2))) > 4.0
    # And not applied at all: the raw sum is low by the detector's lost electrons.
    flat = read_exposure(movie).frames.sum(axis=0, dtype=np.float64)
    assert float(np.sqrt(np.mean(_block_z(flat, expected, variance) ** 2))) > 5.0


def test_unorient_inverts_orient_and_a_divide_reference_is_inverted(tmp_path: Path) -> None:
    gain = simulate_gain_reference(SHAPE, 0.2, 0, 4)
    for rotate, flip in ORIENTATIONS:
        path = tmp_path / f"g{rotate}{flip}.mrc"
        write_mrc(path, unorient_image(gain.gain, rotate, flip), 1.0)
        np.testing.assert_array_equal(
            read_gain_reference(path, rotate_quarter_turns_ccw=rotate, flip=flip).gain, gain.gain
        )
    response = tmp_path / "response.gain"
    tifffile.imwrite(response, (1.0 / gain.gain).astype(np.float32))
    np.testing.assert_allclose(read_gain_reference(response, convention="divide").gain, gain.gain, rtol=1e-6)


def test_gain_references_are_read_once_per_file_version(tmp_path: Path) -> None:
    path = tmp_path / "gain.mrc"
    write_mrc(path, _flat_gain(1.5), 1.0)
    first = load_gain_reference(path, rotate_quarter_turns_ccw=1)
    assert load_gain_reference(path, rotate_quarter_turns_ccw=1) is first
    assert load_gain_reference(path) is not first  # another orientation is another reference
    later_ns = path.stat().st_mtime_ns + 10**9
    write_mrc(path, _flat_gain(2.0), 1.0)
    os.utime(path, ns=(later_ns, later_ns))  # a rewrite within the clock's resolution still counts as new
    again = load_gain_reference(path, rotate_quarter_turns_ccw=1)
    assert again is not first and float(again.gain.mean()) == pytest.approx(2.0) and again.sha256 != first.sha256


# --------------------------------------------------------------------------------------------------
# Which movies need a gain, and where it is found

MDOC = """PixelSpacing = 1
Voltage = 300
ImageFile = {image}
ImageSize = 64 48
DataMode = 0

[FrameSet = 0]
ExposureDose = 50
NumSubFrames = 4
{gain}"""


def _counts(seed: int) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).poisson(3.0, size=(4, *SHAPE)).astype(np.uint8)


def _serialem_movie(folder: Path, gain_line: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    movie = folder / "sq12_0001.tif"
    tifffile.imwrite(movie, _counts(1), compression="lzw", photometric="minisblack")
    (folder / "sq12_0001.tif.mdoc").write_text(MDOC.format(image=movie.name, gain=gain_line))
    return movie


def test_serialem_mdoc_names_the_gain_and_a_converted_dm4_is_found(tmp_path: Path) -> None:
    movie = _serialem_movie(tmp_path, "GainReference = CountRef_sq12_0001.dm4\n")
    assert read_mdoc(movie.with_name(movie.name + ".mdoc")).gain_reference == "CountRef_sq12_0001.dm4"
    gains = SessionGains(tmp_path, GainSettings())
    with pytest.raises(GainReferenceMissingError, match="names GainReference") as missing:
        gains.find_gain_reference(classify_exposure(movie))
    assert missing.value.reason == "gain_reference_missing" and "CountRef_sq12_0001.mrc" in missing.value.detail
    write_mrc(tmp_path / "CountRef_sq12_0001.mrc", _flat_gain(1.2), 1.0)  # IMOD dm2mrc of the .dm4
    choice = SessionGains(tmp_path, GainSettings()).find_gain_reference(classify_exposure(movie))
    assert choice.origin == "mdoc" and choice.reference is not None and "GainReference" in str(choice.needed_because)
    # The gain file is no exposure.
    assert [e.path.name for e in discover_session(tmp_path)] == ["sq12_0001.tif"]


def test_epu_gain_beside_the_data_or_above_it(tmp_path: Path) -> None:
    data = tmp_path / "Images-Disc1" / "GridSquare_1" / "Data"
    data.mkdir(parents=True)
    movie = data / "FoilHole_2_Data_3_4_20250108_154915_fractions.tiff"
    tifffile.imwrite(movie, _counts(2), photometric="minisblack")
    exposure = classify_exposure(movie)
    none = SessionGains(tmp_path, GainSettings()).find_gain_reference(exposure)
    assert none.reference is None and none.needed_because is None  # a TIFF announces nothing: read as stored
    write_mrc(tmp_path / "20250108_K3_gain.mrc", _flat_gain(1.1), 1.0)
    found = SessionGains(tmp_path, GainSettings()).find_gain_reference(exposure)
    assert found.origin == "beside_data" and found.reference is not None
    assert found.reference.source_path.endswith("20250108_K3_gain.mrc")
    write_mrc(data / "square1_gain.mrc", _flat_gain(1.3), 1.0)  # nearer wins
    nearer = SessionGains(tmp_path, GainSettings()).find_gain_reference(exposure)
    assert nearer.reference is not None and nearer.reference.source_path.endswith("square1_gain.mrc")
    # An explicit setting wins over every convention.
    write_mrc(tmp_path / "refs" / "other.mrc", _flat_gain(1.4), 1.0)
    chosen = SessionGains(tmp_path, GainSettings(path="refs/other.mrc")).find_gain_reference(exposure)
    assert chosen.origin == "settings" and chosen.reference is not None
    assert float(chosen.reference.gain.mean()) == pytest.approx(1.4)
    with pytest.raises(GainReferenceMissingError, match="does not exist"):
        SessionGains(tmp_path, GainSettings(path="refs/gone.mrc")).find_gain_reference(exposure)


def test_eer_needs_a_gain_unless_the_settings_say_otherwise(tmp_path: Path) -> None:
    from tests.science.test_io_formats import eer_frames, write_eer

    movie = tmp_path / "Data" / "FoilHole_5_Data_6_7_20250108_154915_EER.eer"
    movie.parent.mkdir()
    write_eer(movie, eer_frames(np.random.default_rng(3), n=4, ny=16, nx=24, p=0.3))
    exposure = classify_exposure(movie)
    with pytest.raises(GainReferenceMissingError, match="EER movies are stored without gain normalisation"):
        SessionGains(tmp_path, GainSettings()).find_gain_reference(exposure)
    assert SessionGains(tmp_path, GainSettings(required=False)).find_gain_reference(exposure).reference is None
    tiff = tmp_path / "Data" / "FoilHole_5_Data_6_8_20250108_154915_fractions.tiff"
    tifffile.imwrite(tiff, _counts(4), photometric="minisblack")
    with pytest.raises(GainReferenceMissingError, match="require"):
        SessionGains(tmp_path, GainSettings(required=True)).find_gain_reference(classify_exposure(tiff))


def test_gain_reference_names() -> None:
    assert is_gain_reference_name("K3_gain.mrc") and is_gain_reference_name("CountRef_sq12_0001.dm4")
    assert is_gain_reference_name("/x/20250108_Gain_ref.tiff") and is_gain_reference_name("SuperRef_a.mrc")
    assert not is_gain_reference_name("again_001.tif") and not is_gain_reference_name("FoilHole_1_Data_2_3.mrc")
    assert not is_gain_reference_name("gain_test_mov_0001_fractions.tif")  # a session named "gain_test"


# --------------------------------------------------------------------------------------------------
# Session settings


def _write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def test_settings_merge_configuration_and_session_json_field_by_field(tmp_path: Path) -> None:
    session = tmp_path / "krios1"
    _write_json(
        session / "session.json",
        {
            "microscope": {"voltage_kv": 300},  # the session description's keys are not settings
            "particle_diameter_angstrom": 140.0,
            "gain": {"rotate_quarter_turns_ccw": 1, "flip": 2},
        },
    )
    settings = resolve_session_settings(
        session,
        configured_defaults={"gain": {"rotate_quarter_turns_ccw": 3, "convention": "divide"}},
        configured_for_session={"gain": {"path": "/refs/g.mrc"}, "optics_overrides": {"voltage_kv": 200.0}},
        configuration_source="/etc/cryodecon/settings.json",
    )
    assert settings.particle_diameter_angstrom == 140.0
    assert settings.gain == GainSettings(
        path="/refs/g.mrc", rotate_quarter_turns_ccw=1, flip="left_right", convention="divide"
    )
    assert settings.optics_overrides.voltage_kv == 200.0
    sources = dict(settings.sources)
    assert sources["gain.rotate_quarter_turns_ccw"] == str(session / "session.json")
    assert sources["gain.convention"] == "/etc/cryodecon/settings.json defaults"
    assert sources["gain.path"] == "/etc/cryodecon/settings.json sessions.krios1"
    # The version is the values' hash: stable, and another value is another version.
    again = resolve_session_settings(
        session,
        configured_defaults={"gain": {"convention": "divide", "rotate_quarter_turns_ccw": 3}},
        configured_for_session={"optics_overrides": {"voltage_kv": 200}, "gain": {"path": "/refs/g.mrc"}},
        configuration_source="elsewhere.json",
    )
    assert again.sha256 == settings.sha256 and len(settings.sha256) == 64
    assert SessionSettings().sha256 != settings.sha256
    assert json.loads(settings.to_json())["gain"]["flip"] == "left_right"
    assert resolve_session_settings(tmp_path / "no_such_session") == SessionSettings()


def test_thresholds_merge_field_by_field_and_null_switches_a_default_off(tmp_path: Path) -> None:
    from cryodecon_science.curation import CurationThresholds

    session = tmp_path / "krios1"
    _write_json(session / "session.json", {"thresholds": {"ctf_fit_resolution_max_angstrom": 5.0, "particles_min": 20}})
    settings = resolve_session_settings(
        session,
        configured_defaults={"thresholds": {"total_motion_max_angstrom": 60.0, "particles_min": 50}},
        configured_for_session={"thresholds": {"astigmatism_max_angstrom": None}},
        configuration_source="conf.json",
    )
    assert settings.thresholds == CurationThresholds(
        ctf_fit_resolution_max_angstrom=5.0,
        astigmatism_max_angstrom=None,
        total_motion_max_angstrom=60.0,
        particles_min=20,
    )
    sources = dict(settings.sources)
    assert sources["thresholds.particles_min"] == str(session / "session.json")
    assert sources["thresholds.astigmatism_max_angstrom"] == "conf.json sessions.krios1"
    assert json.loads(settings.to_json())["thresholds"]["astigmatism_max_angstrom"] is None
    # A threshold is part of the version: changing one is a new version.
    stricter = resolve_session_settings(session, configured_for_session={"thresholds": {"particles_min": 21}})
    assert stricter.sha256 != settings.sha256 and stricter.thresholds.particles_min == 21
    assert SessionSettings().thresholds == CurationThresholds()
    # The merged range must not be empty, whichever layer set its bounds.
    with pytest.raises(SessionSettingsError, match="defocus_min_angstrom") as error:
        resolve_session_settings(
            session,
            configured_defaults={"thresholds": {"defocus_max_angstrom": 10000.0}},
            configured_for_session={"thresholds": {"defocus_min_angstrom": 20000.0}},
            configuration_source="conf.json",
        )
    assert error.value.source == "conf.json sessions.krios1"


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        ({"gain": {"flip": "sideways"}}, "gain.flip", "must be 'none', 'upside_down', 'left_right'"),
        ({"gain": {"rotate_quarter_turns_ccw": 4}}, "gain.rotate_quarter_turns_ccw", "0, 1, 2 or 3"),
        ({"gain": {"rotate_quater_turns": 1}}, "gain", "unknown keys ['rotate_quater_turns']"),
        ({"gain": {"convention": "times"}}, "gain.convention", "'multiply' or 'divide'"),
        ({"gain": {"required": "yes"}}, "gain.required", "true or false"),
        ({"gain": {"path": ""}}, "gain.path", "non-empty string"),
        ({"gain": "K3_gain.mrc"}, "gain", "must be an object"),
        ({"particle_diameter_angstrom": -150}, "particle_diameter_angstrom", "must be > 0"),
        ({"optics_overrides": {"amplitude_contrast_fraction": 1.5}}, "optics_overrides.amplitude_contrast", "< 1"),
        ({"optics_overrides": {"pixel_size": 1.0}}, "optics_overrides", "unknown keys"),
        ({"thresholds": {"ctf_fit_resolution_max": 6.0}}, "thresholds", "unknown keys ['ctf_fit_resolution_max']"),
        ({"thresholds": {"astigmatism_max_angstrom": -5}}, "thresholds.astigmatism_max_angstrom", "must be > 0"),
        ({"thresholds": {"particles_min": 2.5}}, "thresholds.particles_min", "whole number >= 0"),
        (
            {"thresholds": {"defocus_min_angstrom": 9000, "defocus_max_angstrom": 8000}},
            "thresholds.defocus_min_angstrom",
            "9000 > defocus_max_angstrom 8000",
        ),
    ],
)
def test_bad_settings_name_the_file_and_the_field(
    tmp_path: Path, document: dict[str, object], field: str, message: str
) -> None:
    _write_json(tmp_path / "s" / "session.json", document)
    with pytest.raises(SessionSettingsError, match=re.escape(message)) as error:
        resolve_session_settings(tmp_path / "s")
    assert error.value.source == str(tmp_path / "s" / "session.json") and error.value.field_name.startswith(field)
    assert str(tmp_path / "s" / "session.json") in str(error.value)


def test_bad_configuration_documents_are_refused(tmp_path: Path) -> None:
    from cryodecon_resources import SessionSettingsConfig

    path = tmp_path / "settings.json"
    assert SessionSettingsConfig(path=str(path)).document() == {}
    with pytest.raises(SessionSettingsError, match="no such file"):
        SessionSettingsConfig(path=str(path), must_exist=True).document()
    path.write_text("{not json")
    with pytest.raises(SessionSettingsError, match="not valid JSON"):
        SessionSettingsConfig(path=str(path)).document()
    _write_json(path, {"default": {}})
    with pytest.raises(SessionSettingsError, match=r"unknown keys \['default'\]"):
        SessionSettingsConfig(path=str(path)).document()
    _write_json(path, {"sessions": {"krios1": {"microscope": {}}}})
    with pytest.raises(SessionSettingsError, match=r"sessions\.krios1") as error:
        SessionSettingsConfig(path=str(path)).document()
    assert "unknown keys ['microscope']" in str(error.value)
    _write_json(path, {"defaults": {"gain": {"flip": 1}}, "sessions": {"krios1": {"particle_diameter_angstrom": 90}}})
    settings = SessionSettingsConfig(path=str(path)).for_session(tmp_path, "krios1")
    assert settings.gain.flip == "upside_down" and settings.particle_diameter_angstrom == 90.0


def test_settings_override_optics_and_diameter_of_the_prepared_exposure(tmp_path: Path) -> None:
    path = tmp_path / "micrographs" / "m.mrc"
    write_mrc(path, np.random.default_rng(0).poisson(20.0, (64, 64)).astype(np.float32), 1.0)
    raw = read_exposure(path)
    plain = prepare_exposure(raw, "m", False, "s", None, (), "cpu")
    assert plain.exposure.microscope.amplitude_contrast_fraction == ICE_AMPLITUDE_CONTRAST_FRACTION
    assert plain.exposure.particle_diameter_angstrom is None
    settings = resolve_session_settings(
        tmp_path,
        configured_for_session={
            "particle_diameter_angstrom": 120.0,
            "optics_overrides": {
                "voltage_kv": 200.0,
                "spherical_aberration_mm": 1.4,
                "amplitude_contrast_fraction": 0.1,
            },
        },
    )
    ready = prepare_exposure(raw, "m", False, "s", None, (), "cpu", settings=settings).exposure
    assert (ready.microscope.voltage_kv, ready.microscope.spherical_aberration_mm) == (200.0, 1.4)
    assert ready.microscope.amplitude_contrast_fraction == 0.1 and ready.particle_diameter_angstrom == 120.0


# --------------------------------------------------------------------------------------------------
# The simulator's sessions through a gain


def test_simulated_session_through_a_gain_is_written_as_serialem_saves_unnormalised_frames(tmp_path: Path) -> None:
    config = SimulationConfig(shape_px=(64, 48), particles_per_micrograph=2, n_frames=4, drift_total_px_range=(1, 2))
    flat = simulate_session(config, "gs", 1, 2, seed=1)
    gain = simulate_gain_reference(config.shape_px, 0.15, 2, seed=9, stored_rotate_quarter_turns_ccw=3)
    session = record_through_gain(flat, gain)
    for raw, truth in zip(session.movies, flat.movies, strict=True):
        assert raw.frames.dtype == np.float32 and np.all(raw.frames <= truth.frames)  # electrons only lost
        assert np.all(raw.frames[:, gain.dead_pixels_yx[:, 0], gain.dead_pixels_yx[:, 1]] == 0)
    assert session.micrographs[0] is flat.micrographs[0]
    write_simulated_session(session, tmp_path)
    folder = tmp_path / "gs"
    document = json.loads((folder / "session.json").read_text())
    assert document["gain"] == {"rotate_quarter_turns_ccw": 3, "flip": "none"}
    truth = json.loads((folder / "ground_truth.json").read_text())["detector_gain"]
    assert truth["reference"] == "movies/CountRef_gs.mrc" and len(truth["dead_pixels_yx"]) == 2
    movie = folder / "movies" / "gs_mov_0000_fractions.mrc"
    assert read_mdoc(movie.with_name(movie.name + ".mdoc")).gain_reference == "CountRef_gs.mrc"
    settings = resolve_session_settings(folder)
    choice = SessionGains(folder, settings.gain).find_gain_reference(classify_exposure(movie))
    assert choice.origin == "mdoc" and choice.reference is not None
    np.testing.assert_array_equal(choice.reference.gain, gain.gain)
    assert {e.path.name for e in discover_session(folder)} == {
        "gs_mic_0000.mrc",
        "gs_mov_0000_fractions.mrc",
        "gs_mov_0001_fractions.mrc",
    }
    # A flat session is written as before: no sidecars, no reference, no gain settings.
    write_simulated_session(flat, tmp_path / "flat")
    assert not list((tmp_path / "flat" / "gs").rglob("*.mdoc")) and not list((tmp_path / "flat").rglob("CountRef*"))
    assert "gain" not in json.loads((tmp_path / "flat" / "gs" / "session.json").read_text())
