#!/usr/bin/env bash
# The GPU suite as run on the device machine (the repository root is the working directory,
# benchmarks/.wheels carried along, $OUT the folder that comes back):
#     bash benchmarks/gpu_device.sh [gpu_suite options]
# rl2f is installed from this tree with no index and no build isolation (the machine reaches
# no registry; setuptools is already there); the suite then installs the peers' wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the output folder}"
python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation -e . || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 470 python3 -m benchmarks.gpu_suite --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
exit "${PIPESTATUS[0]}"
