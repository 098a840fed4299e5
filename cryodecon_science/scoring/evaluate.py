"""The evaluation of one micrograph: the five components of V from its raw image, CTF fit, priors and restorations.

* **LogicScore** — the consistency rules of :mod:`~cryodecon_science.scoring.rules` on the CTF fit, the header, the
  restorations' power and the packing of the particles (the batch's decomposition graph).
* **Novelty** — the kept particles' embeddings, boxed from the CTF-corrected image
  (:func:`~cryodecon_science.embedding.embed_particles`), against the structure library known before the
  batch, calibrated by the library's own nearest-neighbour distances
  (:func:`~cryodecon_science.embedding.novelty_score`).
* **ImpactFore** — a new structure enters the citation graph as a paper citing the papers of the known
  structures it resembles (:func:`~cryodecon_science.impact.forecast_new_paper`), its forecast
  citations log-normalised (:func:`~cryodecon_science.scoring.components.impact_normalised`).
* **ΔRepro** — the weakest link (:func:`~cryodecon_science.scoring.components.reproducibility_score`) of the CTF on
  independent sub-crops, the restoration on an independent noise split and on a one-pixel shift, CPU vs GPU
  when on a GPU, and the compute-cost deviation (:mod:`~cryodecon_science.reproducibility`).
* **⋄Meta** — the stability of the causal priors' self-evaluation loop
  (:func:`~cryodecon_science.scoring.components.meta_stability_score`).

The structure library and the citation model live outside the science (a database, a trained model): they
come in as callables (:class:`ReferenceData`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from cryodecon_science import reproducibility
from cryodecon_science.causal import CausalPriors, refined_ctf_fit
from cryodecon_science.embedding import embed_particles, novelty_score
from cryodecon_science.exposure import Exposure
from cryodecon_science.picking import extract_boxes
from cryodecon_science.picking.micrograph import MicrographPicks
from cryodecon_science.picking.region_graph import PackingFacts
from cryodecon_science.records import CtfFit
from cryodecon_science.restoration.restore import wiener_denoise, wiener_denoise_filter
from cryodecon_science.scoring.components import (
    ScoreComponents,
    impact_normalised,
    limiting_quantity,
    meta_stability_score,
    reproducibility_score,
)
from cryodecon_science.scoring.power_ratios import low_frequency_power_ratio, power_beyond_ratio
from cryodecon_science.scoring.rules import RuleInputs, RuleResult, evaluate_rules, logic_score

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


class LibraryHit(Protocol):
    """One structure of the library near a particle: the paper describing it and the cosine distance."""

    @property
    def paper_id(self) -> str | None: ...

    @property
    def distance(self) -> float: ...


NearestStructures = Callable[[Float32Array], tuple[FloatArray, Sequence[Sequence[LibraryHit]]]]
"""embeddings (n, d) → (cosine distances (n, k), ∞ where none; each particle's hits, nearest first)."""
ImpactForecast = Callable[[Sequence[str], Sequence[float]], float]
"""(cited paper ids, their weights) → forecast citations of a new paper citing them."""


@dataclass(frozen=True)
class ReferenceData:
    """What a batch is compared with: the structure library and the citation graph as known before it.

    Attributes
    ----------
    nearest : NearestStructures
        The library's nearest entry of each particle embedding (entries registered before the batch, not
        the batch's own).
    library_nn_distances : ndarray of float64, shape (M,)
        The library entries' own nearest-neighbour distances, the calibration of the novelty.
    forecast_citations : ImpactForecast or None
        ImpactFore of a new paper citing given papers (None without a citation graph and model).
    max_citations : float
        x_max of ``impact_normalised``, the graph's largest 5-year citation count (0: no graph,
        ImpactFore 0).
    """

    nearest: NearestStructures
    library_nn_distances: FloatArray
    forecast_citations: ImpactForecast | None
    max_citations: float


@dataclass(frozen=True)
class EvaluationRecord:
    """The evaluation of one micrograph.

    Attributes
    ----------
    components : ScoreComponents
        LogicScore, Novelty, ImpactFore, ΔRepro and ⋄Meta, each in [0, 1].
    rules : tuple of RuleResult
        Every consistency rule's outcome.
    n_particles : int
        Particles kept by the picker.
    impact_citations : float
        ImpactFore's forecast citations before normalisation.
    details : Mapping[str, float]
        ``repro_<q>``: each ΔRepro deviation δ_q; ``half_set_correlation``: ρ of the restored noise halves.
    repro_limited_by : str
        The deviation q that sets ΔRepro.
    half_set_frc_0143_angstrom : float or None
        Where the restored noise halves' FRC drops below 0.143 for good, Å (None: never reaches it).
    """

    components: ScoreComponents
    rules: tuple[RuleResult, ...]
    n_particles: int
    impact_citations: float
    details: Mapping[str, float]
    repro_limited_by: str
    half_set_frc_0143_angstrom: float | None


@dataclass(frozen=True)
class MicrographEvaluation:
    """:func:`evaluate_micrograph`'s result: the record and the particle embeddings (n_particles, d) float32."""

    record: EvaluationRecord
    embeddings: Float32Array


@dataclass(frozen=True)
class _Reproducibility:
    deviations: dict[str, float]
    half_set_correlation: float
    frc_resolution_angstrom: float | None


def evaluate_micrograph(
    exposure: Exposure,
    ctf_fit: CtfFit,
    priors: CausalPriors,
    restored: Float32Array,
    deconvolved: Float32Array,
    *,
    picks: MicrographPicks,
    packing: PackingFacts | None,
    references: ReferenceData,
    cost_deviation: float | None,
    seed: int,
    device: torch.device,
) -> MicrographEvaluation:
    """The five components of V for one micrograph (module docstring).

    Parameters
    ----------
    exposure : Exposure
        The raw micrograph in counts with its optics, dose and nominal defocus.
    ctf_fit : CtfFit
        Its CTF fit (``ctf.estimate_ctf``).
    priors : CausalPriors
        Its causal priors (``causal.fit_priors``): refined spectra and the loop's history.
    restored : ndarray of float32, shape (ny, nx)
        The Wiener-denoised micrograph (``restore.wiener_denoise`` with the refined fit), counts.
    deconvolved : ndarray of float32, shape (ny, nx)
        The CTF-corrected micrograph (``restore.wiener_deconvolve``), where particles are picked and boxed.
    references : ReferenceData
        The structure library and the citation model known before the batch.
    picks : MicrographPicks
        The micrograph's picks (``picking.micrograph.pick_micrograph``); the kept ones are embedded.
    packing : PackingFacts or None
        The micrograph's packing in the batch's decomposition graph (``picking.region_graph.packing_facts``).
    cost_deviation : float or None
        δ_cost of the micrograph (``reproducibility.cost_deviations``; None: not measured).
    seed : int
        Seed of the binomial noise split (``reproducibility.stable_seed`` of the name: the same on reruns).
    device : torch.device
        Where embedding and restoration run; off the CPU, the CPU restoration is compared with it.
    """
    rule_results = evaluate_rules(_rule_inputs(exposure, ctf_fit, restored, deconvolved, packing))
    # Novelty and ImpactFore through the structure library, on CTF-corrected particle boxes (the references
    # are CTF-free projections, so CTF-modulated boxes would look novel for that alone).
    kept = picks.coords_yx_px[picks.kept]
    box_px = picks.box_px
    boxes = extract_boxes(deconvolved, kept, box_px) if len(kept) else np.zeros((0, box_px, box_px), np.float32)
    embeddings = embed_particles(boxes, device=device) if len(boxes) else np.zeros((0, 1), np.float32)
    novelty, impact_citations = _novelty_and_citations(embeddings, references)
    max_citations = references.max_citations
    impact = impact_normalised(impact_citations, float(max_citations)) if max_citations > 0 else 0.0
    repro = _reproducibility(exposure, ctf_fit, priors, restored, cost_deviation, seed, device)
    sigmas = {e.node: e.sigma for e in priors.estimates}
    components = ScoreComponents(
        logic=logic_score(rule_results),
        novelty=novelty,
        impact=impact,
        repro=reproducibility_score(repro.deviations, reproducibility.REPRO_TOLERANCES),
        meta=meta_stability_score(priors.iterations, sigmas, priors.converged),
    )
    record = EvaluationRecord(
        components,
        rule_results,
        len(kept),
        impact_citations,
        {**{f"repro_{k}": v for k, v in repro.deviations.items()}, "half_set_correlation": repro.half_set_correlation},
        limiting_quantity(repro.deviations, reproducibility.REPRO_TOLERANCES),
        repro.frc_resolution_angstrom,
    )
    return MicrographEvaluation(record, embeddings)


def _rule_inputs(
    exposure: Exposure,
    fit: CtfFit,
    restored: Float32Array,
    deconvolved: Float32Array,
    packing: PackingFacts | None,
) -> RuleInputs:
    """What LogicScore's rules look at (``RuleInputs``)."""
    raw, pixel = exposure.data, exposure.pixel_size_angstrom
    return RuleInputs(
        defocus_u_angstrom=fit.ctf.defocus_u_angstrom,
        defocus_v_angstrom=fit.ctf.defocus_v_angstrom,
        nominal_defocus_angstrom=exposure.nominal_defocus_angstrom,
        fit_resolution_angstrom=fit.fit_resolution_angstrom,
        pixel_size_angstrom=pixel,
        dose_header_e_per_angstrom2=exposure.dose_e_per_angstrom2,
        mean_counts_per_pixel=float(raw.mean()),
        low_frequency_power_ratio=low_frequency_power_ratio(raw, restored, pixel),
        beyond_fit_power_ratio=power_beyond_ratio(raw, deconvolved, pixel, fit.fit_resolution_angstrom),
        packing=packing,
    )


def _novelty_and_citations(embeddings: Float32Array, references: ReferenceData) -> tuple[float, float]:
    """(Novelty, ImpactFore's forecast citations) of a micrograph's particle embeddings.

    No particle: novelty 0 (empty ice or contamination is not a novel structure) and no citations.  An
    empty library gives infinite distances, hence novelty 1: nothing is known yet.  Only neighbours closer
    than cosine distance 1 with a paper are cited, each weighted by its similarity 1 − distance.
    """
    if not len(embeddings):
        return 0.0, 0.0
    distances, neighbours = references.nearest(embeddings)
    novelty = novelty_score(distances[:, 0], references.library_nn_distances)
    cited = [
        (hits[0].paper_id, 1.0 - hits[0].distance)
        for hits in neighbours
        if hits and hits[0].paper_id and hits[0].distance < 1.0
    ]
    if references.forecast_citations is None or not cited:
        return novelty, 0.0
    return novelty, references.forecast_citations([str(p) for p, _ in cited], [w for _, w in cited])


def _reproducibility(
    exposure: Exposure,
    fit: CtfFit,
    priors: CausalPriors,
    restored: Float32Array,
    cost_deviation: float | None,
    seed: int,
    device: torch.device,
) -> _Reproducibility:
    """ΔRepro's deviations δ_q (keys of ``REPRO_TOLERANCES``) and the half-set quality of the restoration.

    The CTF on independent sub-crops (tile halves), the restoration on an independent binomial noise split
    and on a one-pixel shift, CPU vs ``device`` when that is not the CPU, and the compute-cost deviation.
    """
    raw, microscope, pixel = exposure.data, exposure.microscope, exposure.pixel_size_angstrom
    fit_used = refined_ctf_fit(fit, priors)
    shifted = wiener_denoise(np.roll(raw, 1, axis=1), fit_used, microscope, device=device)
    deviations = {
        "defocus_subcrops_phase": reproducibility.defocus_phase_error_rad(
            fit.defocus_sigma_angstrom, fit.fit_resolution_angstrom, microscope.voltage_kv
        ),
        "restoration_shift": reproducibility.nrmsd(np.roll(shifted, -1, axis=1), restored),
    }
    half_a, half_b = reproducibility.binomial_split_counts(raw, seed=seed)
    denoise_filter = wiener_denoise_filter(raw.shape, fit_used, microscope, device=device)
    half_correlation = reproducibility.filtered_half_correlation(half_a, half_b, denoise_filter, pixel)
    # Quality without ground truth: where the independently restored halves stop agreeing.
    frc_resolution = reproducibility.frc_resolution_angstrom(
        *reproducibility.half_set_frc(half_a, half_b, denoise_filter, pixel)
    )
    deviations["noise_split"] = max(0.0, 1.0 - half_correlation)
    if device.type != "cpu":
        on_cpu = wiener_denoise(raw, fit_used, microscope, device="cpu")
        deviations["cpu_vs_device"] = reproducibility.nrmsd(restored, on_cpu)
    if cost_deviation is not None:
        deviations["compute_cost"] = cost_deviation
    return _Reproducibility(deviations, half_correlation, frc_resolution)
