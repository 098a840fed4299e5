"""``ctf_estimates``: the CTF of each micrograph, its rows and the batch's ``micrographs_ctf.star``."""

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from cryodecon_assets.batch.common import GROUP, run_per_micrograph, selected, selection
from cryodecon_assets.batch.figures import PREVIEW_LIMIT, ctf_markdown
from cryodecon_assets.execution import GPU_POOL, GPU_STEP_TAGS
from cryodecon_assets.partitions import acquisition_batches
from cryodecon_resources import OutputStore, ScoreWarehouse, TorchDevice
from cryodecon_resources.tables import tables_metadata
from cryodecon_science.ctf import estimate_ctf
from cryodecon_science.exposure import Exposure
from cryodecon_science.records import CtfFit


def load_stored_fits(outputs: OutputStore, batch: str) -> dict[str, CtfFit]:
    """CTF fits already stored for the batch (a selective rerun keeps the others in the STAR file)."""
    directory = outputs.asset_path("ctf_estimates", batch)
    fits: dict[str, CtfFit] = {}
    for path in sorted(directory.glob("*.pkl")) if directory.is_dir() else []:
        with open(path, "rb") as handle:
            fits[path.stem] = pickle.load(handle)
    return fits


@dg.asset(
    partitions_def=acquisition_batches,
    group_name=GROUP,
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    kinds={"torch"},
    description="CTF fit per micrograph (tile-averaged periodogram, 1D search + 2D refinement); rows in "
    "the warehouse table `ctf` and a RELION `micrographs_ctf.star` per batch.",
)
def ctf_estimates(
    context: dg.AssetExecutionContext,
    raw_micrographs: dict[str, Exposure],
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
    device: TorchDevice,
) -> dg.Output[dict[str, CtfFit]]:
    batch = context.partition_key
    torch_device = device.torch_device()

    def step(name: str, exposure: Exposure) -> CtfFit:
        return estimate_ctf(
            exposure.data,
            exposure.microscope,
            nominal_defocus_angstrom=exposure.nominal_defocus_angstrom,
            device=torch_device,
        )

    fits = run_per_micrograph(context, warehouse, "ctf_estimates", selected(context, raw_micrographs), step)
    rows = ctf_rows(batch, raw_micrographs, fits)
    held = {"ctf": warehouse.write_rows("ctf", batch, rows, replace_micrographs=selection(context))}
    star_path = write_ctf_star(warehouse, outputs, batch, raw_micrographs, fits)
    return dg.Output(fits, metadata={**ctf_metadata(raw_micrographs, fits, rows, star_path), **tables_metadata(held)})


def ctf_rows(batch: str, raw: Mapping[str, Exposure], fits: Mapping[str, CtfFit]) -> list[dict[str, Any]]:
    """The ``ctf`` table: one row per fitted micrograph."""
    return [
        {
            "micrograph": name,
            "batch": batch,
            "session": raw[name].session,
            "defocus_u_angstrom": fit.ctf.defocus_u_angstrom,
            "defocus_v_angstrom": fit.ctf.defocus_v_angstrom,
            "astigmatism_angle_degrees": fit.ctf.astigmatism_angle_deg,
            "phase_shift_rad": fit.ctf.phase_shift_rad,
            "fit_resolution_angstrom": fit.fit_resolution_angstrom,
            "cross_correlation": fit.cross_correlation,
            "defocus_sigma_angstrom": fit.defocus_sigma_angstrom,
            "nominal_defocus_angstrom": raw[name].nominal_defocus_angstrom,
        }
        for name, fit in fits.items()
    ]


def write_ctf_star(
    warehouse: ScoreWarehouse,
    outputs: OutputStore,
    batch: str,
    raw: Mapping[str, Exposure],
    fits: Mapping[str, CtfFit],
) -> Path:
    """RELION ``micrographs_ctf.star`` over the batch's ``ctf`` rows (a selective rerun keeps the others' fits)."""
    from cryodecon_science.io.star import MicrographCtfRow, write_micrographs_ctf_star

    star_path = outputs.star_path(batch, "micrographs_ctf.star")
    star_rows = []
    stored = load_stored_fits(outputs, batch)
    for row in warehouse.read_rows("ctf", batch).to_dict("records"):
        name = row["micrograph"]
        fit = fits.get(name) or stored.get(name)
        if fit is not None and name in raw:
            star_rows.append(
                MicrographCtfRow(
                    str(outputs.asset_path("raw_micrographs", batch, f"{name}.mrc")), fit, raw[name].microscope
                )
            )
    if star_rows:
        write_micrographs_ctf_star(star_path, star_rows)
    return star_path


def ctf_metadata(
    raw: Mapping[str, Exposure], fits: Mapping[str, CtfFit], rows: list[dict[str, Any]], star_path: Path
) -> dict[str, Any]:
    """The UI metadata of ``ctf_estimates``: medians, the STAR file, diagnostics and the fits' table."""
    defoci = [r["defocus_u_angstrom"] for r in rows]
    return {
        "fitted": len(fits),
        "median_defocus_u_angstrom": float(np.median(defoci)) if defoci else float("nan"),
        "median_fit_resolution_angstrom": (
            float(np.median([r["fit_resolution_angstrom"] for r in rows])) if rows else float("nan")
        ),
        "star_file": dg.MetadataValue.path(str(star_path)),
        "diagnostics": dg.MetadataValue.md(
            ctf_markdown(
                {k: raw[k].data for k in list(fits)[:PREVIEW_LIMIT]},
                fits,
                {k: raw[k].microscope for k in fits},
            )
        ),
        "fits": dg.MetadataValue.md(
            "| micrograph | ΔfU (Å) | ΔfV (Å) | angle (°) | fit res (Å) | CC |\n|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {r['micrograph']} | {r['defocus_u_angstrom']:.0f} | {r['defocus_v_angstrom']:.0f} | "
                f"{r['astigmatism_angle_degrees']:.1f} | {r['fit_resolution_angstrom']:.2f} | "
                f"{r['cross_correlation']:.3f} |"
                for r in rows
            )
        ),
    }
