#!/usr/bin/env bash
# Create the benchmark-only virtual environment holding Topaz: Topaz-Denoise (bench_restoration.py's
# peer) and Topaz's pretrained particle picker (topaz_pick_runner.py, a picking benchmark's peer).
#
#     bash benchmarks/setup_topaz.sh            # -> benchmarks/.venv-topaz
#
# Topaz (Bepler et al. 2020, "Topaz-Denoise: general deep denoising models for cryoEM and cryoET",
# Nat. Commun. 11:5208; Bepler et al. 2019, "Positive-unlabeled convolutional neural networks for
# particle picking in cryo-electron micrographs", Nat. Methods 16:1153) is never a dependency of
# cryodecon: it lives in its own venv and the benchmarks run it as a subprocess.  Choices:
#
# * torch: the *same* CPU wheel as the project's .venv (torch 2.13.0+cpu; pip finds it through the
#   machine's find-links/index configuration, e.g. /opt/wheels).  No CUDA build is downloaded.
#   Override with TOPAZ_TORCH_SPEC (e.g. "torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu").
# * topaz-em is installed with --no-deps so that its pinned requirements do not replace torch, and
#   torchvision is NOT installed (PyPI's torchvision does not import beside a +cpu torch).  The Python
#   denoise path (topaz.denoise.denoise_image, what `topaz denoise` calls) does not need it, but the
#   `topaz` command line does: topaz/main.py imports every subcommand, and `train` imports torchvision.
#   So bench_restoration.py calls the Python API with the CLI's defaults (verified offline on MRC files).
# * The picker needs no torchvision either, so none is installed for it.  Checked on topaz-em 0.3.20:
#   torchvision is imported only by topaz/utils/data/sampler.py and topaz/utils/data/memory_mapped_data.py
#   (train-time rotations/flips), which only topaz/training.py (`topaz train`) imports.  Everything the
#   pretrained picker runs -- topaz.utils.image.downsample, topaz.stats.normalize (what `topaz preprocess`
#   calls), topaz.model.factory.load_model with the bundled topaz/pretrained/detector/*.sav and
#   topaz.algorithms.non_maximum_suppression (what `topaz extract` calls) -- imports without it, and the
#   check below fails if that ever changes.  topaz_pick_runner.py therefore calls those functions with the
#   commands' defaults; on simulated micrographs its picks equal, to the last digit, those of
#   topaz.stats.normalize_images + topaz.extract.extract_particles (the preprocess/extract command bodies)
#   run through MRC files.  The alternative was tried and does not work: the torchvision release paired
#   with torch 2.13 is 0.28.0 (its metadata requires torch==2.13.0), and the index has it, but PyPI's
#   wheel is the CUDA build: its torchvision/_C.so links libtorch_cuda.so, libc10_cuda.so and
#   libcudart.so.13, which the +cpu torch does not ship, so its operators never register and
#   `import torchvision` (installed --no-deps beside torch 2.13.0+cpu) dies in _meta_registrations.py with
#   "RuntimeError: operator torchvision::nms does not exist".  The matching +cpu torchvision wheel lives
#   only on PyTorch's own index, which this project cannot reach.
# * setuptools<81: topaz finds its bundled pretrained weights (topaz/pretrained/denoise/*.sav) through
#   pkg_resources, which setuptools 81 removed.  (The picker's topaz/pretrained/detector/*.sav load through
#   importlib.resources and need no pkg_resources.)
# * The runtime modules the denoise path imports: numpy, scipy, pandas, pillow, future, scikit-learn
#   (listed in its requirements), tqdm, h5py (topaz.denoising.datasets imports it), psutil.  The picker
#   path needs no more (topaz.extract imports pandas and tqdm; topaz.algorithms and topaz.stats, scipy).
#
# Installing needs the package index; running the benchmarks afterwards needs no network (the denoise and
# picker weights ship inside the topaz-em wheel).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${TOPAZ_VENV:-$here/.venv-topaz}"
python="${PYTHON:-python3.11}"
torch_spec="${TOPAZ_TORCH_SPEC:-torch==2.13.0+cpu}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)
# shellcheck disable=SC2086  # torch_spec may carry extra pip options on purpose
"${pip[@]}" $torch_spec
"${pip[@]}" "setuptools<81" "numpy<2.5" scipy pandas pillow future scikit-learn tqdm h5py psutil
"${pip[@]}" --no-deps "topaz-em==0.3.20"
TOPAZ_PICK_RUNNER="$here/topaz_pick_runner.py" "$venv/bin/python" - <<'PY'
import sys

import torch
import topaz
from topaz.denoise import Denoise  # noqa: F401  (the Python API bench_restoration.py calls)
from topaz.denoising.models import load_model

load_model("unet")  # bundled pretrained weights, found offline via the package

# The pretrained particle picker (topaz_pick_runner.py): what `topaz preprocess` and `topaz extract` call.
import numpy as np
from topaz.algorithms import non_maximum_suppression
from topaz.model.factory import load_model as load_picker
from topaz.stats import normalize
from topaz.utils.data.loader import load_mrc  # noqa: F401
from topaz.utils.image import downsample

picker = load_picker("resnet16_u64")  # bundled topaz/pretrained/detector/resnet16_u64.sav, offline
picker.eval()
picker.fill()
np.random.seed(0)
image, _ = normalize(downsample(np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32), 2))
with torch.no_grad():
    score = picker(torch.from_numpy(image)[None, None])[0, 0].numpy()
assert score.shape == image.shape and np.isfinite(score).all(), score.shape
non_maximum_suppression(score, 8, threshold=-6)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torchvision")
assert not loaded, f"the picker path imported torchvision ({loaded}); see the header of setup_topaz.sh"

# ... and the runner end to end on a noise micrograph (2 Å/px, 100 Å particles -> downsampled 2x).
import json
import os
import subprocess
import tempfile

from topaz.utils.image import save_mrc

with tempfile.TemporaryDirectory() as tmp:
    mic = os.path.join(tmp, "noise.mrc")
    save_mrc(np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32), mic, extended_header=b"")
    spec = {"micrographs": [mic], "pixel_size_angstrom": 2.0, "particle_diameter_angstrom": 100.0}
    with open(os.path.join(tmp, "in.json"), "w") as f:
        json.dump(spec, f)
    subprocess.run(
        [sys.executable, os.environ["TOPAZ_PICK_RUNNER"], "--input-json", os.path.join(tmp, "in.json"),
         "--output-json", os.path.join(tmp, "out.json")],
        check=True, stderr=subprocess.DEVNULL,
    )
    with open(os.path.join(tmp, "out.json")) as f:
        out = json.load(f)
    assert out["model"] == "resnet16_u64" and out["downsample_factor"] == 2 and mic in out["picks"], out

print("topaz", topaz.__version__, "torch", torch.__version__, "python", sys.version.split()[0],
      "picker resnet16_u64 receptive field", picker.width)
PY
