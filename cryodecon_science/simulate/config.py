"""``SimulationConfig``: everything that defines a simulated acquisition and the ranges of its per-exposure draws."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cryodecon_science.optics import MicroscopeSettings

# Fields that switch on the regions of a picking benchmark; at their defaults a simulation and its stored
# truth are byte-identical to one made before these fields existed (``storage`` omits them then).
REGION_FIELDS = (
    "hole_diameter_angstrom",
    "hole_edge_probability",
    "carbon_thickness_nm",
    "carbon_mean_free_path_nm",
    "carbon_particle_density_ratio",
    "continuous_film_thickness_nm",
    "contamination_per_micrograph",
    "contamination_diameter_range_angstrom",
    "contamination_thickness_range_nm",
    "aggregate_fraction",
    "structure_aspect_ratio",
)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated acquisition, with the ranges per-exposure draws come from.

    Attributes
    ----------
    shape_px : tuple of int
        Image size (ny, nx) in pixels.
    pixel_size_angstrom : float
        Sampling on the specimen, Å/pixel.
    voltage_kv, spherical_aberration_mm, amplitude_contrast_fraction : float
        Microscope optics (``optics.MicroscopeSettings``).
    defocus_range_angstrom : tuple of float
        Range of the true mean defocus (U+V)/2 in Å, positive = underfocus (0.5–3 µm default).
    max_astigmatism_angstrom : float
        Astigmatism U − V is drawn uniformly in [0, max]; its angle uniformly in [0, 180) degrees.
    bfactor_range_angstrom2 : tuple of float
        Range of the B-factor of the envelope exp(−B k²/4), Å².
    dose_e_per_angstrom2 : float
        Total exposure, e⁻/Å² (split evenly over movie frames).
    ice_thickness_range_nm : tuple of float
        Range of ice thickness t, nm; sets the ice power (∝ t) and the inelastic fraction.
    particle_diameter_angstrom : float
        Diameter of the structures' bounding sphere, Å.
    particles_per_micrograph : int
        Particles requested per exposure.  Placement is random sequential addition with centres one
        diameter apart; when the field cannot hold that many (e.g. 1024 px at 1 Å with 150 Å particles
        holds about 25–30) the exposure gets as many as fit, and the truth lists those.
    n_structures : int
        Number of distinct structures, ids 0 … n_structures − 1.
    structure_seed : int
        Seed of the structures alone (independent of the exposures' seeds).
    read_noise_std_counts : float
        Gaussian read noise of integrated micrographs, counts (movies are electron-counted: none).
    hot_pixel_fraction : float
        Fraction of detector pixels that are hot.
    n_frames : int
        Frames per movie.
    drift_total_px_range : tuple of float
        Range of the beam-induced drift path length over a movie, pixels.
    target_snr : float or None
        If set, scale the specimen contrast so that var(particle signal) / var(detector noise) equals
        this value over the image (the benchmarks' SNR 0.1 / 0.03 / 0.01).
    nominal_defocus_error_std_angstrom : float
        Standard deviation of the microscope's nominal defocus about the true mean defocus, Å.
    inelastic_mean_free_path_nm : float
        Inelastic mean free path λ_in in vitreous ice, nm (≈350 nm at 300 kV).

    The fields below add the regions of a picking benchmark (``regions``, ``formation``).  Their
    defaults switch them off, and then every output is bit-identical to a simulation without them.

    hole_diameter_angstrom : float or None
        Diameter of the foil hole of a holey-carbon support, Å (Quantifoil/C-flat: 1.2–2 µm, i.e.
        12 000–20 000 Å); None: no support film in view.
    hole_edge_probability : float
        Probability that an exposure's field is crossed by the hole edge (otherwise wholly in the hole).
    carbon_thickness_nm : float
        Thickness of the support's amorphous carbon, nm (holey-carbon films: 10–20 nm).
    carbon_mean_free_path_nm : float
        Mean free path λ_C of amorphous carbon for the electrons the image loses, nm: 187 nm from the
        Malis formula λ = 106·F·E₀ / (E_m·ln(2βE₀/E_m)), E_m = 7.6·Z^0.36 eV, at Z = 6, 300 kV and
        β = 10 mrad (Malis, Cheng & Egerton 1988, J. Electron Microsc. Tech. 8:193).
    carbon_particle_density_ratio : float
        Particle number density on the carbon relative to the hole (kept with this probability).
    continuous_film_thickness_nm : float
        Thin continuous carbon or graphene-oxide film over the whole field, nm (2–5 nm for thin carbon,
        ≈1 nm for graphene oxide); 0 for none.
    contamination_per_micrograph : float
        Poisson mean of surface-contamination blobs (crystalline ice, ethane) per exposure.
    contamination_diameter_range_angstrom : tuple of float
        Range of the blobs' equal-area diameters, Å.
    contamination_thickness_range_nm : tuple of float
        Range of the blobs' central thickness, nm.
    aggregate_fraction : float
        Fraction of the requested particles placed in clusters of touching particles.
    structure_aspect_ratio : float
        >= 1: the structures are compressed across their longest principal axis by this factor (rods of
        length ``particle_diameter_angstrom``); 1 leaves them unchanged.
    """

    shape_px: tuple[int, int] = (1024, 1024)
    pixel_size_angstrom: float = 1.0
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast_fraction: float = 0.07
    defocus_range_angstrom: tuple[float, float] = (5000.0, 30000.0)
    max_astigmatism_angstrom: float = 1000.0
    bfactor_range_angstrom2: tuple[float, float] = (40.0, 120.0)
    dose_e_per_angstrom2: float = 40.0
    ice_thickness_range_nm: tuple[float, float] = (20.0, 60.0)
    particle_diameter_angstrom: float = 150.0
    particles_per_micrograph: int = 40
    n_structures: int = 4
    structure_seed: int = 0
    read_noise_std_counts: float = 0.5
    hot_pixel_fraction: float = 0.0
    n_frames: int = 16
    drift_total_px_range: tuple[float, float] = (10.0, 40.0)
    target_snr: float | None = None
    nominal_defocus_error_std_angstrom: float = 300.0
    inelastic_mean_free_path_nm: float = 350.0
    hole_diameter_angstrom: float | None = None
    hole_edge_probability: float = 0.5
    carbon_thickness_nm: float = 15.0
    carbon_mean_free_path_nm: float = 190.0
    carbon_particle_density_ratio: float = 0.3
    continuous_film_thickness_nm: float = 0.0
    contamination_per_micrograph: float = 0.0
    contamination_diameter_range_angstrom: tuple[float, float] = (200.0, 1500.0)
    contamination_thickness_range_nm: tuple[float, float] = (100.0, 400.0)
    aggregate_fraction: float = 0.0
    structure_aspect_ratio: float = 1.0

    def __post_init__(self) -> None:
        ny, nx = self.shape_px
        if ny < 16 or nx < 16:
            raise ValueError(f"shape_px must be at least 16 x 16, got {self.shape_px}")
        for label, (low, high) in (
            ("defocus_range_angstrom", self.defocus_range_angstrom),
            ("bfactor_range_angstrom2", self.bfactor_range_angstrom2),
            ("ice_thickness_range_nm", self.ice_thickness_range_nm),
            ("drift_total_px_range", self.drift_total_px_range),
        ):
            if not 0.0 <= low <= high or not math.isfinite(high):
                raise ValueError(f"{label} must be an ordered non-negative range, got {(low, high)}")
        positives = {
            "pixel_size_angstrom": self.pixel_size_angstrom,
            "dose_e_per_angstrom2": self.dose_e_per_angstrom2,
            "particle_diameter_angstrom": self.particle_diameter_angstrom,
            "inelastic_mean_free_path_nm": self.inelastic_mean_free_path_nm,
        }
        for label, value in positives.items():
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value}")
        if self.defocus_range_angstrom[0] - 0.5 * self.max_astigmatism_angstrom <= 0:
            raise ValueError("the smallest defocus minus half the astigmatism must stay underfocus (> 0 Å)")
        if self.max_astigmatism_angstrom < 0 or self.read_noise_std_counts < 0:
            raise ValueError("max_astigmatism_angstrom and read_noise_std_counts must be >= 0")
        if not 0.0 <= self.hot_pixel_fraction < 1.0:
            raise ValueError(f"hot_pixel_fraction must lie in [0, 1), got {self.hot_pixel_fraction}")
        if self.particles_per_micrograph < 0 or self.n_structures < 1 or self.structure_seed < 0:
            raise ValueError("particles_per_micrograph >= 0, n_structures >= 1 and structure_seed >= 0 required")
        if self.n_frames < 2:
            raise ValueError(f"a movie needs n_frames >= 2, got {self.n_frames}")
        if self.target_snr is not None:
            if not self.target_snr > 0:
                raise ValueError(f"target_snr must be positive, got {self.target_snr}")
            if self.particles_per_micrograph == 0:
                raise ValueError("target_snr scales the particle signal: particles_per_micrograph must be > 0")
        self._check_regions()
        # Validates voltage, amplitude contrast and pixel size once, here.
        self.microscope  # noqa: B018

    def _check_regions(self) -> None:
        for label, (low, high) in (
            ("contamination_diameter_range_angstrom", self.contamination_diameter_range_angstrom),
            ("contamination_thickness_range_nm", self.contamination_thickness_range_nm),
        ):
            if not 0.0 < low <= high or not math.isfinite(high):
                raise ValueError(f"{label} must be an ordered positive range, got {(low, high)}")
        if self.hole_diameter_angstrom is not None and not self.hole_diameter_angstrom > 0:
            raise ValueError(f"hole_diameter_angstrom must be positive or None, got {self.hole_diameter_angstrom}")
        fractions = {
            "hole_edge_probability": self.hole_edge_probability,
            "carbon_particle_density_ratio": self.carbon_particle_density_ratio,
            "aggregate_fraction": self.aggregate_fraction,
        }
        for label, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must lie in [0, 1], got {value}")
        if not (self.carbon_thickness_nm >= 0 and self.continuous_film_thickness_nm >= 0):
            raise ValueError("carbon_thickness_nm and continuous_film_thickness_nm must be >= 0")
        if not (self.contamination_per_micrograph >= 0 and self.carbon_mean_free_path_nm > 0):
            raise ValueError("contamination_per_micrograph >= 0 and carbon_mean_free_path_nm > 0 required")
        if not (1.0 <= self.structure_aspect_ratio < math.inf):
            raise ValueError(f"structure_aspect_ratio must be >= 1, got {self.structure_aspect_ratio}")

    @property
    def support_enabled(self) -> bool:
        """Whether any object imaged through the support wave is on: hole, film or contamination."""
        return (
            self.hole_diameter_angstrom is not None
            or self.continuous_film_thickness_nm > 0
            or self.contamination_per_micrograph > 0
        )

    @property
    def regions_enabled(self) -> bool:
        """Whether any region feature (support, contamination, aggregates) draws from the region stream."""
        return self.support_enabled or self.aggregate_fraction > 0

    @property
    def microscope(self) -> MicroscopeSettings:
        """The optical settings as the rest of cryodecon uses them."""
        return MicroscopeSettings(
            voltage_kv=self.voltage_kv,
            spherical_aberration_mm=self.spherical_aberration_mm,
            amplitude_contrast_fraction=self.amplitude_contrast_fraction,
            pixel_size_angstrom=self.pixel_size_angstrom,
        )

    @property
    def dose_per_pixel_e(self) -> float:
        """Mean electrons per pixel D = dose · pixel²."""
        return self.dose_e_per_angstrom2 * self.pixel_size_angstrom**2
