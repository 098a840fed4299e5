#!/usr/bin/env bash
# Install teamtomo's torch-motion-correction (bench_motion.py's peer) into benchmarks/.tmc, beside — not
# into — the project's environment.
#
#     bash benchmarks/setup_tmc.sh              # -> benchmarks/.tmc (bench_motion.py puts it on sys.path)
#
# Every package is installed with --no-deps so that nothing replaces the project's CPU torch; the list is
# torch-motion-correction 0.6.0's requirements plus the two modules it imports without declaring them
# (torch-fourier-rescale, torch-ctf).  numpy, pandas and torch come from the project's .venv.
# Installing needs the package index; running the benchmark afterwards needs no network.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${TMC_TARGET:-$here/.tmc}"
python="${PYTHON:-$here/../.venv/bin/python}"
"$python" -m pip install --quiet --no-deps --target "$target" \
    torch-motion-correction==0.6.0 einops h5py tqdm torch-cubic-spline-grids torch-fourier-filter \
    torch-fourier-shift torch-grid-utils torch-image-interpolation torch-fourier-rescale torch-ctf
PYTHONPATH="$target" "$python" -c "import torch_motion_correction; print('torch-motion-correction ready in $target')"
