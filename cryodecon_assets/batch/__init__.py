"""The batch lineage: raw micrographs -> CTF estimates -> causal priors -> restored micrographs ->
evaluation scores -> quality score V -> HyperScore, one acquisition batch per partition.

Each asset loads its inputs, calls science functions per micrograph, writes its warehouse rows
(``ScoreWarehouse.write_rows``: one Parquet file per table and partition, replaced atomically) and
returns ``dict[micrograph, value]`` to the ``BatchIOManager``.  A micrograph that fails a step is
quarantined with its reason (warehouse table ``quarantine``) and the rest of the batch goes on.

Reprocessing one micrograph: launch the ``process_batch`` job for its partition with the run tag
``cryodecon/micrographs=<name>[,<name>…]`` (``cryodecon reprocess``): every asset then handles only those
micrographs and replaces only their rows and files.
"""

from cryodecon_assets.batch.classes import classes_2d
from cryodecon_assets.batch.ctf import ctf_estimates
from cryodecon_assets.batch.curation import exposure_curation
from cryodecon_assets.batch.evaluation import evaluation_scores
from cryodecon_assets.batch.particles import particle_picks, particles, region_graph
from cryodecon_assets.batch.priors import causal_priors
from cryodecon_assets.batch.raw import raw_micrographs
from cryodecon_assets.batch.restoration import (
    deconvolved_micrographs,
    fused_denoised_micrographs,
    learned_denoised_micrographs,
    restored_micrographs,
    session_denoiser,
)
from cryodecon_assets.batch.scores import hyperscores, quality_scores

BATCH_ASSETS = [
    raw_micrographs,
    ctf_estimates,
    causal_priors,
    restored_micrographs,
    deconvolved_micrographs,
    session_denoiser,
    learned_denoised_micrographs,
    fused_denoised_micrographs,
    particle_picks,
    particles,
    region_graph,
    classes_2d,
    exposure_curation,
    evaluation_scores,
    quality_scores,
    hyperscores,
]
