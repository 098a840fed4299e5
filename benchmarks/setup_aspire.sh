#!/usr/bin/env bash
# Create the benchmark-only virtual environment holding ASPIRE (bench_ctf.py's comparison).
#
#     bash benchmarks/setup_aspire.sh            # -> benchmarks/.venv-aspire
#
# ASPIRE is never a dependency of cryodecon: it lives in its own venv and bench_ctf.py runs it as a
# subprocess (benchmarks/aspire_ctf_runner.py).  aspire 0.14.3 needs Python >= 3.10 and no torch; its
# dependencies (numpy, scipy, finufft, cvxpy, gemmi, ...) come from PyPI as CPU wheels.  Installing
# needs PyPI; running the benchmark afterwards needs no network.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ASPIRE_VENV:-$here/.venv-aspire}"
python="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet "aspire==0.14.3"
"$venv/bin/python" -c "import aspire; print('aspire', aspire.__version__, 'in', '$venv')"
