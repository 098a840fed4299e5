"""TorchDevice: auto resolves to what exists; an absent CUDA device is a clear error, not a silent CPU."""

from __future__ import annotations

import pytest
import torch

from cryodecon_resources import TorchDevice


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
