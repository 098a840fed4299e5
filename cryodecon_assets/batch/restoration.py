"""Restored micrographs: Wiener restoration and deconvolution, the session denoiser, learned and fused denoising."""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
import numpy as np

from cryodecon_assets.batch.common import GROUP, run_per_micrograph, selected
from cryodecon_assets.batch.figures import PREVIEW_LIMIT, before_after_markdown
from cryodecon_assets.execution import GPU_POOL, GPU_STEP_TAGS
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import OutputStore, RestorationSettings, ScoreWarehouse, TorchDevice
from cryodecon_science import causal
from cryodecon_science.exposure import Exposure
from cryodecon_science.io.denoiser_weights import load_pretrained_denoiser, save_finetuned_denoiser
from cryodecon_science.io.mrc import Micrograph
from cryodecon_science.records import CtfFit
from cryodecon_science.reproducibility import stable_seed
from cryodecon_science.restoration.denoiser import DenoiserUNet, denoise_learned_many
from cryodecon_science.restoration.finetune import DENOISER_WEIGHTS_NAME, DenoiserRecord, finetune_denoiser
from cryodecon_science.restoration.restore import wiener_deconvolve, wiener_denoise


def _restore(
    context: dg.AssetExecutionContext,
    stage: str,
    raw_micrographs: dict[str, Exposure],
    ctf_estimates: dict[str, CtfFit],
    causal_priors: dict[str, causal.CausalPriors],
    warehouse: ScoreWarehouse,
    device: TorchDevice,
    restore: Callable[..., np.ndarray],
) -> dict[str, Micrograph]:
    torch_device = device.torch_device()
    items = {k: v for k, v in selected(context, raw_micrographs).items() if k in ctf_estimates and k in causal_priors}

    def step(name: str, exposure: Exposure) -> Micrograph:
        fit = causal.refined_ctf_fit(ctf_estimates[name], causal_priors[name])
        data = restore(exposure.data, fit, exposure.microscope, device=torch_device)
        return Micrograph(name, np.asarray(data, dtype=np.float32), exposure.pixel_size_angstrom)

    return run_per_micrograph(context, warehouse, stage, items, step)


def before_after(raw: Mapping[str, Exposure], restored: Mapping[str, Micrograph], label: str) -> dg.MetadataValue:
    """Before/after thumbnails of the first ``PREVIEW_LIMIT`` restored micrographs, as UI markdown."""
    shown = list(restored)[:PREVIEW_LIMIT]
    return dg.MetadataValue.md(
        before_after_markdown({k: raw[k].data for k in shown}, {k: restored[k].data for k in shown}, label)
    )


def restoration_asset(name: str, restore: Callable[..., np.ndarray], description: str) -> dg.AssetsDefinition:
    """One restoration target as an asset: same inputs, same GPU pool, its own Wiener filter."""

    @dg.asset(
        name=name,
        partitions_def=acquisition_batches,
        group_name=GROUP,
        pool=GPU_POOL,
        op_tags=GPU_STEP_TAGS,
        kinds={"torch", "mrc"},
        description=description,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        raw_micrographs: dict[str, Exposure],
        ctf_estimates: dict[str, CtfFit],
        causal_priors: dict[str, causal.CausalPriors],
        warehouse: ScoreWarehouse,
        device: TorchDevice,
    ) -> dg.Output[dict[str, Micrograph]]:
        result = _restore(context, name, raw_micrographs, ctf_estimates, causal_priors, warehouse, device, restore)
        pixel_sizes = {m.pixel_size_angstrom for m in result.values()}
        return dg.Output(
            result,
            metadata={
                "micrographs": len(result),
                "pixel_size_angstrom": float(pixel_sizes.pop()) if len(pixel_sizes) == 1 else float("nan"),
                "before_after": before_after(raw_micrographs, result, name.removesuffix("_micrographs")),
            },
        )

    return _asset


restored_micrographs = restoration_asset(
    "restored_micrographs",
    wiener_denoise,
    "Denoised micrographs (CTF kept): Wiener filter (S·CTF² + G)/(S·CTF² + G + F) from the causal priors' "
    "refined spectra: detector noise floor F removed, specimen signal S and ice background G kept.  "
    "float32 MRC, pixel size in the header.",
)
deconvolved_micrographs = restoration_asset(
    "deconvolved_micrographs",
    wiener_deconvolve,
    "CTF-corrected micrographs: Wiener deconvolution CTF·S/(S·CTF² + B), zero beyond the fit resolution "
    "(never invents power there).  float32 MRC, pixel size in the header.",
)


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"torch"},
    description="The denoiser that restores this batch: the shipped U-Net, or — with "
    "`CRYODECON_FINETUNE_STEPS` > 0 — the shipped U-Net fine-tuned on the batch's own micrographs "
    "(Noise2Noise on binomial splits, from the shipped weights), kept only if its held-out Noise2Noise "
    "loss on fresh splits of the batch is lower.  Its lineage shows which model restored which micrograph.",
)
def session_denoiser(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    restoration: RestorationSettings,
    outputs: OutputStore,
) -> dg.Output[dict[str, DenoiserRecord]]:
    batch = context.partition_key
    record = finetune_denoiser(
        [exposure.data for exposure in raw_micrographs.values()],
        load_pretrained_denoiser(),
        restoration.denoiser_finetune_steps,
        stable_seed(batch),
        functools.partial(save_finetuned_denoiser, outputs.asset_path("session_denoiser", batch)),
    )
    metadata: dict[str, Any] = {"model": record.description, "source": record.source}
    if record.shipped_loss is not None and record.finetuned_loss is not None:
        metadata |= {
            "holdout_loss_shipped": record.shipped_loss,
            "holdout_loss_finetuned": record.finetuned_loss,
        }
    return dg.Output({"model": record}, metadata=metadata)


def session_model(session_denoiser: Mapping[str, DenoiserRecord]) -> tuple[DenoiserUNet, str]:
    """The U-Net `session_denoiser` chose (its fine-tuned copy, or the shipped weights) and its description."""
    from cryodecon_science.io.denoiser_weights import load_denoiser

    record = session_denoiser.get("model")
    if record is not None and record.weights_path is not None:
        return load_denoiser(record.weights_path), record.description
    description = record.description if record is not None else f"{DENOISER_WEIGHTS_NAME}, shipped"
    return load_pretrained_denoiser(), description


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"torch", "mrc"},
    description="Micrographs denoised by the self-supervised U-Net of `session_denoiser` (the shipped "
    "Noise2Noise model on binomial splits of the counts, `cryodecon_science/data/denoiser_v1.pt`, or its "
    "fine-tuned copy; bf16 on a GPU, float32 on CPU): the CTF is kept.  float32 MRC, pixel size in the header.",
)
def learned_denoised_micrographs(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    session_denoiser: dict[str, DenoiserRecord],
    warehouse: ScoreWarehouse,
    device: TorchDevice,
) -> dg.Output[dict[str, Micrograph]]:
    model, model_description = session_model(session_denoiser)
    torch_device = device.torch_device()

    def batch_step(items: Mapping[str, Micrograph]) -> dict[str, Micrograph | Exception]:
        # On a GPU the frames stream through pinned buffers, copies overlapping compute (benchmarks/bench_gpu.py).
        outcomes = denoise_learned_many([m.data for m in items.values()], model, device=torch_device)
        return {
            name: outcome
            if isinstance(outcome, Exception)
            else Micrograph(name, outcome, micrograph.pixel_size_angstrom)
            for (name, micrograph), outcome in zip(items.items(), outcomes, strict=True)
        }

    result = run_per_micrograph(
        context,
        warehouse,
        "learned_denoised_micrographs",
        selected(context, raw_micrographs),
        batch_step=batch_step,
    )
    return dg.Output(
        result,
        metadata={
            "micrographs": len(result),
            "model": model_description,
            "before_after": before_after(raw_micrographs, result, "learned"),
        },
    )


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"torch", "mrc"},
    description="The product's denoised micrographs (CTF kept): `learned_denoised_micrographs` and the Wiener "
    "`restored_micrographs` fused per Fourier ring, with weights fitted on binomial splits of each "
    "micrograph's own counts (Noise2Noise; `cryodecon_science.restoration.fusion`): the network's particle-scale "
    "contrast, the Wiener filter's low frequencies and Thon rings.  float32 MRC, pixel size in the header.",
)
def fused_denoised_micrographs(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    ctf_estimates: dict[str, CtfFit],
    causal_priors: dict[str, causal.CausalPriors],
    session_denoiser: dict[str, DenoiserRecord],
    learned_denoised_micrographs: dict[str, Micrograph],
    restored_micrographs: dict[str, Micrograph],
    warehouse: ScoreWarehouse,
    device: TorchDevice,
) -> dg.Output[dict[str, Micrograph]]:
    from cryodecon_science.restoration.fusion import fuse_learned_and_wiener

    model, model_description = session_model(session_denoiser)
    torch_device = device.torch_device()
    items = {
        k: v
        for k, v in selected(context, raw_micrographs).items()
        if k in learned_denoised_micrographs and k in restored_micrographs and k in causal_priors
    }
    low_weights: dict[str, float] = {}

    def step(name: str, exposure: Exposure) -> Micrograph:
        fit = causal.refined_ctf_fit(ctf_estimates[name], causal_priors[name])
        data, weights = fuse_learned_and_wiener(
            exposure.data,
            model,
            fit,
            exposure.microscope,
            seed=stable_seed(name),
            learned_full=learned_denoised_micrographs[name].data,
            wiener_full=restored_micrographs[name].data,
            device=torch_device,
        )
        low_weights[name] = float(weights.ring_weights()[1:9, 0].mean())
        return Micrograph(name, np.asarray(data, dtype=np.float32), exposure.pixel_size_angstrom)

    result = run_per_micrograph(context, warehouse, "fused_denoised_micrographs", items, step)
    return dg.Output(
        result,
        metadata={
            "micrographs": len(result),
            "model": model_description,
            "mean_learned_weight_rings_1_8": float(np.mean(list(low_weights.values())))
            if low_weights
            else float("nan"),
            "before_after": before_after(raw_micrographs, result, "fused"),
        },
    )
