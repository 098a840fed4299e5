"""The torch device resource: where GPU-capable steps run, one step per GPU.

``auto`` leases a free CUDA device for the step: each visible device has a lock file
(``<lease_dir>/cuda-<id>.lock``, id = the device's entry in ``CUDA_VISIBLE_DEVICES``, or its index when that is
unset, so workers that see different subsets of a node's GPUs still name each physical device once), and a step
takes the first device whose lock it can hold (``flock``, exclusive, non-blocking), starting from a different
device in each process so concurrent steps spread.  The lock is held until the step's resources are torn down
(``teardown_after_execution``) or the process exits — the kernel drops an ``flock`` with its process, so a
killed worker never strands a device.  With the ``gpu`` pool limited to the node's GPUs, a free device is
always there; without it, a step waits up to ``lease_timeout_s`` for one.  Two steps therefore never share a
device, and a node with N GPUs runs N GPU steps at once.  ``cuda:N`` pins a device without a lease (a worker
started with ``CUDA_VISIBLE_DEVICES=N`` and ``auto`` is the usual way to give each worker its own GPU).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import dagster as dg
import torch
from pydantic import PrivateAttr

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceLeaseTimeoutError(RuntimeError):
    """No CUDA device was free within ``lease_timeout_s``: more GPU steps run than the node has GPUs."""


def visible_device_ids(count: int) -> list[str]:
    """Physical ids of the ``count`` visible CUDA devices: ``CUDA_VISIBLE_DEVICES`` entries, else 0…count−1."""
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if len(listed) >= count else [str(i) for i in range(count)]


class TorchDevice(dg.ConfigurableResource):
    """Torch device and precision for the GPU steps (module docstring for ``auto``).

    ``device`` is ``auto`` (a leased free CUDA device when one is visible, else the CPU), ``cpu`` or ``cuda:N``.
    Steps that use it run in the ``gpu`` concurrency pool: set the pool limit to the number of GPUs
    (``dagster instance concurrency set gpu N``).
    """

    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8
    # torch intra-op threads for CPU work.  One is fastest on a shared 2-core node: after the FFTs the
    # work is on small tensors, and CTF estimation of a 1024² micrograph took 0.14 s with one thread vs
    # 0.46 s with two (benchmarks/results/pipeline_cpu_1024_t*.json).  Parallelism comes from runs.
    cpu_threads: int = 1
    lease_dir: str = ""
    """Folder of the per-device lock files; empty: ``<temp>/cryodecon-devices`` (node-local)."""
    lease_timeout_s: float = 600.0

    _lease: tuple[int, IO[str]] | None = PrivateAttr(default=None)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            resolved = torch.device(f"cuda:{self._leased_index()}" if torch.cuda.is_available() else "cpu")
        else:
            resolved = torch.device(self.device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} requested but no CUDA device is visible")
        if resolved.type == "cpu" and self.cpu_threads > 0:
            torch.set_num_threads(self.cpu_threads)
        return resolved

    def _leased_index(self) -> int:
        """The index of this step's CUDA device, leasing a free one on first use (module docstring)."""
        if self._lease is not None:
            return self._lease[0]
        ids = visible_device_ids(torch.cuda.device_count())
        folder = Path(self.lease_dir or Path(tempfile.gettempdir()) / "cryodecon-devices")
        folder.mkdir(parents=True, exist_ok=True)
        order = [(os.getpid() + k) % len(ids) for k in range(len(ids))]
        deadline = time.monotonic() + self.lease_timeout_s
        while True:
            for index in order:
                handle = open(folder / f"cuda-{ids[index]}.lock", "a+")  # held for the step: no `with`
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                self._lease = (index, handle)
                return index
            if time.monotonic() >= deadline:
                raise DeviceLeaseTimeoutError(
                    f"no free CUDA device among {ids} after {self.lease_timeout_s:.0f} s (locks in {folder}): "
                    "limit the gpu pool to the node's GPUs"
                )
            time.sleep(0.2)

    def release(self) -> None:
        """Give the leased device back (idempotent)."""
        if self._lease is not None:
            handle = self._lease[1]
            self._lease = None
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def teardown_after_execution(self, context: Any) -> None:
        self.release()

    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        return _DTYPES[self.dtype]
