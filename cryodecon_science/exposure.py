"""The exposure as the batch graph carries it: the image with everything a later step needs to read it.

A micrograph's pixel values mean nothing without its sampling and optics, so the image never travels
without them (as teamtomo passes the pixel spacing beside every image): the pixel size of
``Exposure.microscope`` is the micrograph's own, checked on construction, and no step re-reads optics from
a side table or falls back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cryodecon_science.io.mrc import Micrograph
from cryodecon_science.metadata import ExposureMetadata
from cryodecon_science.optics import MicroscopeSettings

# No EPU or SerialEM file records C_s: the Krios / Glacios / Talos objective's 2.7 mm unless a session
# description gives it.  Amplitude contrast of vitreous ice: 0.07 (RELION's and cryoSPARC's default).
OBJECTIVE_SPHERICAL_ABERRATION_MM = 2.7
ICE_AMPLITUDE_CONTRAST_FRACTION = 0.07
# An exposure that records no voltage is taken at 300 kV, the voltage of every high-end cryo-EM today.
FALLBACK_VOLTAGE_KV = 300.0


@dataclass(frozen=True)
class Exposure:
    """One exposure of a batch: micrograph (or aligned movie sum) in counts, optics, dose and its record.

    Attributes
    ----------
    micrograph : Micrograph
        The image [y, x], float32 counts, with its pixel size.
    microscope : MicroscopeSettings
        Voltage, C_s, amplitude contrast; its pixel size equals the micrograph's.
    session : str
        Acquisition session the exposure belongs to.
    dose_e_per_angstrom2 : float or None
        Total exposure, e⁻/Å² (None where no source records it).
    nominal_defocus_angstrom : float or None
        Defocus the acquisition software targeted, Å, underfocus positive (None where unknown).
    drift_total_px : float or None
        Total beam-induced drift of a movie's trajectory, pixels (None for a single-frame micrograph).
    residual_blur_px : float or None
        Motion left inside each frame after alignment ≈ drift / frames, pixels (None without a movie).
    metadata : ExposureMetadata
        The merged header + sidecar record.
    dose_weighted : Micrograph or None
        A movie's dose-weighted sum (Grant & Grigorieff 2015), what particles are extracted from; None for
        a micrograph and for a movie whose dose or voltage is unknown.
    particle_diameter_angstrom : float or None
        The sample's particle diameter as the session describes it, Å (None where it does not).
    """

    micrograph: Micrograph
    microscope: MicroscopeSettings
    session: str
    dose_e_per_angstrom2: float | None
    nominal_defocus_angstrom: float | None
    drift_total_px: float | None
    residual_blur_px: float | None
    metadata: ExposureMetadata
    dose_weighted: Micrograph | None = None
    particle_diameter_angstrom: float | None = None

    def __post_init__(self) -> None:
        if self.microscope.pixel_size_angstrom != self.micrograph.pixel_size_angstrom:
            raise ValueError(
                f"{self.micrograph.name}: optics give {self.microscope.pixel_size_angstrom} Å/px, "
                f"the image {self.micrograph.pixel_size_angstrom} Å/px"
            )
        weighted = self.dose_weighted
        if weighted is not None and (
            weighted.data.shape != self.micrograph.data.shape
            or weighted.pixel_size_angstrom != self.micrograph.pixel_size_angstrom
        ):
            raise ValueError(f"{self.micrograph.name}: the dose-weighted sum differs in shape or pixel size")

    @property
    def extraction_source(self) -> Micrograph:
        """What particles are cut from: the dose-weighted sum where there is one, else the micrograph."""
        return self.dose_weighted or self.micrograph

    @property
    def name(self) -> str:
        return self.micrograph.name

    @property
    def data(self) -> npt.NDArray[np.float32]:
        return self.micrograph.data

    @property
    def pixel_size_angstrom(self) -> float:
        return self.micrograph.pixel_size_angstrom


def microscope_from_record(record: ExposureMetadata, pixel_size_angstrom: float) -> MicroscopeSettings:
    """Optics from an exposure's own record, where no session description exists (real data).

    Voltage from the header or sidecar (``FALLBACK_VOLTAGE_KV`` where none records it); C_s from the
    record where present, else ``OBJECTIVE_SPHERICAL_ABERRATION_MM``; amplitude contrast
    ``ICE_AMPLITUDE_CONTRAST_FRACTION``; the pixel size is the image's.
    """
    return MicroscopeSettings(
        voltage_kv=record.optics.voltage_kv or FALLBACK_VOLTAGE_KV,
        spherical_aberration_mm=record.optics.spherical_aberration_mm or OBJECTIVE_SPHERICAL_ABERRATION_MM,
        amplitude_contrast_fraction=ICE_AMPLITUDE_CONTRAST_FRACTION,
        pixel_size_angstrom=pixel_size_angstrom,
    )
