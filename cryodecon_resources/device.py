"""The torch device resource: where GPU-capable steps run."""

from __future__ import annotations

import dagster as dg
import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TorchDevice(dg.ConfigurableResource):
    """Torch device and precision for the GPU steps (CTF estimation, restoration, embeddings).

    ``device`` is ``auto`` (the first CUDA device when one is visible, else the CPU), ``cpu`` or
    ``cuda:N``.  Steps that use it run in the ``gpu`` concurrency pool, so a node's GPUs are never
    oversubscribed: set the pool limit to the number of GPUs (``dagster instance concurrency set gpu N``).
    """

    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8
    # torch intra-op threads for CPU work.  One is fastest on a shared 2-core node: after the FFTs the
    # work is on small tensors, and CTF estimation of a 1024² micrograph took 0.14 s with one thread vs
    # 0.46 s with two (benchmarks/results/pipeline_cpu_1024_t*.json).  Parallelism comes from runs.
    cpu_threads: int = 1

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            resolved = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        else:
            resolved = torch.device(self.device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} requested but no CUDA device is visible")
        if resolved.type == "cpu" and self.cpu_threads > 0:
            torch.set_num_threads(self.cpu_threads)
        return resolved

    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        return _DTYPES[self.dtype]
