"""Peak resident memory (RSS) and wall time of each step of ``process_batch``, one process per step, on the CPU.

A step is one asset for one batch partition.  The benchmark:

1. prepares a fresh working folder (a temporary one, or ``--workdir``) in a child process: the environment
   of ``tests/conftest.py::pipeline_environment`` (settle 0, batch window 0, ``CRYODECON_MAX_BATCH_SIZE`` =
   ``--micrographs``, ``CRYODECON_DEVICE=cpu``, ``CRYODECON_CPU_THREADS`` = ``--threads``), a simulated session
   of ``--micrographs`` flat micrographs of ``--size``² pixels (``SimulationConfig`` defaults otherwise), the
   synthetic citation graph and reference library of ``tests/assets/test_pipeline.py::seed_session``, and a
   SQLite instance; it ticks ``microscope_storage_sensor`` (with settle 0 the first tick sees the files and
   the second cuts the batch), adds the dynamic partitions it requests and keeps its run request, which is
   not executed;
2. materialises each asset of ``process_batch``, upstream first, in its own fresh Python process
   (``job.execute_in_process(asset_selection=[asset], partition_key=batch)`` on that instance, tagged as the
   run request is; the inputs load from the IO manager's files written by the steps before), and reads the
   child's peak RSS from ``os.wait4`` (``ru_maxrss``) and its wall time from the launcher;
3. runs a baseline child that imports ``cryodecon_assets.definitions``, opens the instance and builds the
   same resources, materialising nothing: "above baseline" is a step's peak minus the baseline's peak, and
   the wall column is the step's wall time minus the baseline's (the step itself, without the imports).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_step_memory.py --size 4096 --micrographs 2

Writes ``benchmarks/results/step_memory_<size>.md`` and ``.json``.

Caveats:

* ``ru_maxrss`` is a high-water mark over the whole process: a step's peak includes the imports, Dagster's
  run machinery and the inputs loaded from disk, hence the baseline column; the peak of a step is not
  additive over steps (the in-process executor of a real run holds one process for every step, and its
  peak is at least the largest step's, plus whatever earlier steps left allocated).
* On Linux an exec'd child inherits its parent's RSS high-water mark as a floor of its ``ru_maxrss``, so the
  launcher imports nothing heavy (the ``python -c pass`` row shows that floor).
* Peak memory is set by the largest arrays of a step, so it scales with the micrograph area and with the
  micrographs a step holds at once, not with run-to-run noise; wall times are one run each, on a shared
  machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
PROCESS_JOB = "process_batch"
SESSION = "grid"
MAX_TICKS = 4
KIB_PER_MIB = 1024.0


# ---- children -----------------------------------------------------------------------------------------
def prepare(plan_path: Path, size: int, micrographs: int, seed: int) -> None:
    """Seed the working folder, cut the batch with the sensor, write the plan (partition, tags, steps)."""
    import dagster as dg

    from cryodecon_assets.batch import BATCH_ASSETS
    from cryodecon_assets.cli.instance import prepare_instance_home
    from cryodecon_assets.cli.synthetic_references import (
        ensure_citation_graph,
        ensure_reference_library,
        established_papers,
    )
    from cryodecon_assets.definitions import build_definitions
    from cryodecon_assets.intake.sensors import microscope_storage_sensor
    from cryodecon_resources import resources_from_environment
    from cryodecon_science.io.citations import read_citation_graph
    from cryodecon_science.simulate import SimulationConfig, simulate_session, write_simulated_session

    began = time.perf_counter()
    resources = resources_from_environment()
    config = SimulationConfig(shape_px=(size, size))
    session = simulate_session(config, SESSION, micrographs, 0, seed)
    write_simulated_session(session, Path(resources["microscope_storage"].root))  # type: ignore[attr-defined]
    del session
    folder = ensure_citation_graph(Path(resources["scoring"].citation_graph_path), seed=0, n_papers=1500)  # type: ignore[attr-defined]
    ensure_reference_library(
        resources["structure_library"],  # type: ignore[arg-type]
        config,
        seed=seed,
        projections_per_structure=4,
        papers=established_papers(read_citation_graph(folder)),
        class_library=resources["class_library"],  # type: ignore[arg-type]
    )
    seeded_s = time.perf_counter() - began

    instance = dg.DagsterInstance.from_config(str(prepare_instance_home(Path(os.environ["CRYODECON_HOME"]))))
    defs = build_definitions()
    cursor: str | None = None
    requests: list[dg.RunRequest] = []
    ticks = 0
    while not requests and ticks < MAX_TICKS:
        if ticks:
            time.sleep(0.05)
        ticks += 1
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources=dict(defs.resources or {}), definitions=defs
        ) as context:
            result = microscope_storage_sensor(context)
        assert isinstance(result, dg.SensorResult)
        cursor = result.cursor
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                new = [
                    k
                    for k in request.partition_keys
                    if not instance.has_dynamic_partition(request.partitions_def_name, k)
                ]
                instance.add_dynamic_partitions(request.partitions_def_name, new)
        requests = [r for r in result.run_requests or [] if isinstance(r, dg.RunRequest)]
    if len(requests) != 1:
        raise SystemExit(f"expected the sensor to cut one batch, got {len(requests)} run requests")
    request = requests[0]

    job = defs.resolve_job_def(PROCESS_JOB)
    asset_graph = defs.resolve_asset_graph()
    in_job = dg.AssetSelection.assets(*BATCH_ASSETS).resolve(asset_graph)
    steps = [key.to_user_string() for key in asset_graph.toposorted_asset_keys if key in in_job]
    assert job.name == PROCESS_JOB and len(steps) == len(in_job)
    plan = {
        "partition": request.partition_key,
        "tags": {**request.tags, "dagster/run_key": str(request.run_key)},
        "steps": steps,
        "seed_seconds": seeded_s,
        "sensor_ticks": ticks,
    }
    plan_path.write_text(json.dumps(plan, indent=1))


def baseline() -> None:
    """What every step process pays before its step: the code location, the instance, the resources."""
    import dagster as dg

    from cryodecon_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    defs.resolve_job_def(PROCESS_JOB)
    with dg.build_resources(dict(defs.resources or {}), instance=instance) as built:
        assert built is not None


def one_step(asset: str, partition: str, tags: dict[str, str]) -> None:
    """Materialise ``asset`` alone for ``partition``; exit status 1 if the step failed."""
    import dagster as dg

    from cryodecon_assets.definitions import defs

    result = defs.resolve_job_def(PROCESS_JOB).execute_in_process(
        instance=dg.DagsterInstance.get(),
        partition_key=partition,
        asset_selection=[dg.AssetKey.from_user_string(asset)],
        tags={**tags, "cryodecon/source": "bench_step_memory"},
        raise_on_error=False,
    )
    raise SystemExit(0 if result.success else 1)


# ---- launcher -----------------------------------------------------------------------------------------
def environment(workdir: Path, micrographs: int, threads: int) -> dict[str, str]:
    """The variables of ``tests/conftest.py::pipeline_environment``, for the CPU with ``threads`` threads."""
    return {
        **os.environ,
        "CRYODECON_HOME": str(workdir),
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "CRYODECON_SETTLE_SECONDS": "0",
        "CRYODECON_BATCH_WINDOW_SECONDS": "0",
        "CRYODECON_MAX_BATCH_SIZE": str(micrographs),
        "CRYODECON_DEVICE": "cpu",
        "CRYODECON_CPU_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }


def measure(argv: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``argv`` to its end; its exit status, peak RSS (MiB, ``wait4``'s ``ru_maxrss``) and wall time (s)."""
    with log.open("w") as out:
        began = time.perf_counter()
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall_s = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {"exit_status": child.returncode, "peak_rss_mib": usage.ru_maxrss / KIB_PER_MIB, "wall_s": wall_s}


def markdown(result: dict[str, Any]) -> str:
    base = result["baseline"]
    lines = [
        f"# Peak memory per step of `process_batch`, {result['size_px']}² px, CPU",
        "",
        f"{result['micrographs']} flat simulated micrographs of {result['size_px']} × {result['size_px']} px in "
        f"one batch (`{result['partition']}`); CPU, {result['threads']} torch/OpenMP thread; "
        f"{result['machine']}.  Each step (one asset, this partition) runs alone in a fresh process on an "
        "SQLite instance, its inputs loaded from the IO manager's files; peak RSS is the process's `ru_maxrss` "
        "(`os.wait4`).  The baseline process imports `cryodecon_assets.definitions`, opens the instance and "
        f"builds the resources, materialising nothing: {base['peak_rss_mib']:.0f} MiB, {base['wall_s']:.1f} s "
        f"(a bare `python -c pass`: {result['interpreter']['peak_rss_mib']:.0f} MiB).  Wall = the step's "
        "process minus the baseline's, one run.  Dagster's execution machinery, which the baseline does not load, is "
        "in every step's figures (a step that holds little shows a few MiB above the baseline).",
        "",
        "| step | peak RSS (MiB) | above import baseline (MiB) | wall (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for step in result["steps"]:
        failed = "" if step["exit_status"] == 0 else " (failed)"
        lines.append(
            f"| `{step['asset']}`{failed} | {step['peak_rss_mib']:.0f} | {step['above_baseline_mib']:.0f} "
            f"| {step['step_wall_s']:.1f} |"
        )
    largest = max(result["steps"], key=lambda s: s["peak_rss_mib"])
    lines += [
        "",
        f"Largest: `{largest['asset']}`, {largest['peak_rss_mib']:.0f} MiB.  Seeding (simulation, references) "
        f"{result['seed_seconds']:.0f} s; whole benchmark {result['total_seconds']:.0f} s.",
        "",
        f"    {result['command']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        if workdir.exists() and any(workdir.iterdir()):
            raise SystemExit(f"--workdir {workdir} is not empty: the benchmark needs a fresh folder")
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="cryodecon_step_memory_"))
    logs = workdir / "bench_logs"
    logs.mkdir()
    env = environment(workdir, args.micrographs, args.threads)
    python = sys.executable
    began = time.perf_counter()
    try:
        interpreter = measure([python, "-c", "pass"], env, logs / "interpreter.log")
        plan_path = workdir / "bench_plan.json"
        prepared = measure(
            [python, str(SCRIPT), "--prepare", str(plan_path), *common_args(args)], env, logs / "prepare.log"
        )
        if prepared["exit_status"] != 0:
            raise SystemExit(f"preparation failed; see {logs / 'prepare.log'}")
        plan = json.loads(plan_path.read_text())
        base = measure([python, str(SCRIPT), "--baseline"], env, logs / "baseline.log")
        if base["exit_status"] != 0:
            raise SystemExit(f"baseline failed; see {logs / 'baseline.log'}")
        print(f"baseline: {base['peak_rss_mib']:.0f} MiB, {base['wall_s']:.1f} s", flush=True)
        steps = []
        for asset in plan["steps"]:
            argv = [python, str(SCRIPT), "--one-step", asset, "--partition", plan["partition"]]
            measured = measure([*argv, "--tags", json.dumps(plan["tags"])], env, logs / f"{asset}.log")
            measured.update(
                asset=asset,
                above_baseline_mib=measured["peak_rss_mib"] - base["peak_rss_mib"],
                step_wall_s=measured["wall_s"] - base["wall_s"],
            )
            steps.append(measured)
            status = "" if measured["exit_status"] == 0 else f"  FAILED, see {logs / (asset + '.log')}"
            print(f"{asset}: {measured['peak_rss_mib']:.0f} MiB, {measured['wall_s']:.1f} s{status}", flush=True)
        result = {
            "size_px": args.size,
            "micrographs": args.micrographs,
            "device": "cpu",
            "threads": args.threads,
            "machine": f"{os.cpu_count()} cores, {total_memory_gib():.0f} GiB, {platform.machine()}",
            "python": platform.python_version(),
            "partition": plan["partition"],
            "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_step_memory.py "
            + " ".join(common_args(args)),
            "interpreter": interpreter,
            "launcher_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB,
            "prepare": prepared,
            "seed_seconds": plan["seed_seconds"],
            "sensor_ticks": plan["sensor_ticks"],
            "baseline": base,
            "steps": steps,
            "total_seconds": time.perf_counter() - began,
        }
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    # Imported only now: numpy (in ``_common``) would raise the launcher's RSS high-water mark, which every
    # child exec'd after it inherits as the floor of its ``ru_maxrss``.
    from _common import write_results

    out = write_results(f"step_memory_{args.size}", result, markdown(result))
    print(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if any(step["exit_status"] != 0 for step in steps):
        raise SystemExit(1)


def common_args(args: argparse.Namespace) -> list[str]:
    return [
        f"--size={args.size}",
        f"--micrographs={args.micrographs}",
        f"--threads={args.threads}",
        f"--seed={args.seed}",
    ]


def total_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="micrograph side, pixels")
    parser.add_argument("--micrographs", type=int, default=2, help="micrographs in the batch")
    parser.add_argument("--threads", type=int, default=1, help="CRYODECON_CPU_THREADS and OMP_NUM_THREADS")
    parser.add_argument("--seed", type=int, default=3, help="seed of the simulated session")
    parser.add_argument("--workdir", help="a fresh (empty or new) folder to work in, kept afterwards")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    # the child processes
    parser.add_argument("--prepare", metavar="PLAN_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-step", metavar="ASSET", help=argparse.SUPPRESS)
    parser.add_argument("--partition", help=argparse.SUPPRESS)
    parser.add_argument("--tags", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(Path(args.prepare), args.size, args.micrographs, args.seed)
    elif args.baseline:
        baseline()
    elif args.one_step:
        one_step(args.one_step, args.partition, json.loads(args.tags))
    else:
        run(args)


if __name__ == "__main__":
    main()
