"""TorchDevice: auto resolves to what exists, one step per GPU; an absent CUDA device is a clear error, not a silent
CPU; every asset that uses the device is in the gpu pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cryodecon_resources import TorchDevice
from cryodecon_resources.device import DeviceLeaseTimeoutError, visible_device_ids


def test_auto_and_cpu_resolve() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert TorchDevice(device="auto").torch_device().type == expected
    assert TorchDevice(device="cpu", cpu_threads=1).torch_device() == torch.device("cpu")
    assert torch.get_num_threads() == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        TorchDevice(device="cuda:0").torch_device()


def test_dtype_is_checked() -> None:
    assert TorchDevice(dtype="bfloat16").torch_dtype() == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        TorchDevice(dtype="float8").torch_dtype()


# --- one step per GPU: leases over a fake device list ------------------------------------------------------------


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node with four CUDA devices, as far as the resource can tell (no GPU is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_auto_gives_concurrent_steps_distinct_devices_and_waits_when_all_are_taken(
    four_gpus: None, tmp_path: Path
) -> None:
    steps = [TorchDevice(lease_dir=str(tmp_path), lease_timeout_s=0.3) for _ in range(5)]
    devices = [s.torch_device() for s in steps[:4]]
    assert sorted(d.index for d in devices) == [0, 1, 2, 3]  # every GPU used, none twice
    assert steps[0].torch_device() == devices[0]  # a step keeps its device
    with pytest.raises(DeviceLeaseTimeoutError, match="gpu pool"):
        steps[4].torch_device()  # a fifth concurrent GPU step: no device is shared
    steps[2].release()
    assert steps[4].torch_device() == devices[2]  # the freed device goes to the waiting step
    for s in steps:
        s.release()


def test_leases_hold_across_processes_and_die_with_them(four_gpus: None, tmp_path: Path) -> None:
    """A device leased by another process (a run worker) is not given out; once it exits, it is free again."""
    lock = tmp_path / "cuda-1.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        steps = [TorchDevice(lease_dir=str(tmp_path), lease_timeout_s=0.3) for _ in range(3)]
        assert sorted(s.torch_device().index for s in steps) == [0, 2, 3]
        freed = steps[0].torch_device().index
        steps[0].release()
    finally:
        holder.kill()
        holder.wait()
    late = TorchDevice(lease_dir=str(tmp_path), lease_timeout_s=2.0)
    assert late.torch_device().index in (freed, 1)  # device 1 came free when its holder was killed
    other = TorchDevice(lease_dir=str(tmp_path), lease_timeout_s=0.3)
    assert {late.torch_device().index, other.torch_device().index} == {freed, 1}
    for s in (*steps, late, other):
        s.release()


def test_devices_are_named_by_their_physical_id(four_gpus: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers pinned to subsets of a node's GPUs (CUDA_VISIBLE_DEVICES) lock the same physical device by name."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")
    assert visible_device_ids(4) == ["2", "3", "5", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")
    assert visible_device_ids(1) == ["GPU-aaaa"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_device_ids(2) == ["0", "1"]


def test_every_asset_that_uses_the_device_runs_in_the_gpu_pool(tmp_path: Path) -> None:
    from cryodecon_assets.definitions import build_definitions
    from cryodecon_resources.settings import Settings

    definitions = build_definitions(Settings.from_environment({"CRYODECON_HOME": str(tmp_path)}))
    graph = definitions.resolve_asset_graph()
    using = {
        key.to_user_string(): graph.get(key).assets_def.node_def.pool  # type: ignore[union-attr]
        for key in graph.get_all_asset_keys()
        if graph.get(key).assets_def is not None and "device" in graph.get(key).assets_def.required_resource_keys
    }
    assert {"raw_micrographs", "causal_priors", "evaluation_scores", "ctf_estimates", "classes_2d"} <= set(using)
    assert {name for name, pool in using.items() if pool != "gpu"} == set()
