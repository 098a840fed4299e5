#!/usr/bin/env bash
# Create the benchmark-only virtual environment holding Topaz-Denoise (bench_restoration.py's peer).
#
#     bash benchmarks/setup_topaz.sh            # -> benchmarks/.venv-topaz
#
# Topaz (Bepler et al. 2020, "Topaz-Denoise: general deep denoising models for cryoEM and cryoET",
# Nat. Commun. 11:5208) is never a dependency of cryodecon: it lives in its own venv and
# bench_restoration.py runs it as a subprocess.  Choices:
#
# * torch: the *same* CPU wheel as the project's .venv (torch 2.13.0+cpu; pip finds it through the
#   machine's find-links/index configuration, e.g. /opt/wheels).  No CUDA build is downloaded.
#   Override with TOPAZ_TORCH_SPEC (e.g. "torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu").
# * topaz-em is installed with --no-deps so that its pinned requirements do not replace torch, and
#   torchvision is NOT installed (PyPI's torchvision does not import beside a +cpu torch).  The Python
#   denoise path (topaz.denoise.denoise_image, what `topaz denoise` calls) does not need it, but the
#   `topaz` command line does: topaz/main.py imports every subcommand, and `train` imports torchvision.
#   So bench_restoration.py calls the Python API with the CLI's defaults (verified offline on MRC files).
# * setuptools<81: topaz finds its bundled pretrained weights (topaz/pretrained/denoise/*.sav) through
#   pkg_resources, which setuptools 81 removed.
# * The runtime modules the denoise path imports: numpy, scipy, pandas, pillow, future, scikit-learn
#   (listed in its requirements), tqdm, h5py (topaz.denoising.datasets imports it), psutil.
#
# Installing needs the package index; running the benchmark afterwards needs no network.
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
"$venv/bin/python" - <<'PY'
import sys

import torch
import topaz
from topaz.denoise import Denoise  # noqa: F401  (the Python API bench_restoration.py calls)
from topaz.denoising.models import load_model

load_model("unet")  # bundled pretrained weights, found offline via the package

print("topaz", topaz.__version__, "torch", torch.__version__, "python", sys.version.split()[0])
PY
