#!/usr/bin/env bash
# The GPU check, from the repository root on a GPU machine with the wheelhouse carried beside it:
#
#   deploy/gpu-check/run.sh OUT_DIR [WHEELS_DIR]     (WHEELS_DIR: gpu-wheels, from wheelhouse.sh)
#   deploy/gpu-check/run.sh --cpu OUT_DIR            the rehearsal CI runs: CPU backends, small sizes,
#                                                    the Python on PATH (or $PYTHON), nothing installed
#
# Installs the wheels offline into a venv that sees the system's PyTorch, then runs the parts of
# deploy/gpu-check/check.py (pytest -m gpu, benchmarks/gpu.py, halp serve + halp prune, TensorRT if it
# imports), each under a time limit, each writing OUT_DIR/<part>.json, then OUT_DIR/summary.json and a
# table. Exit status 1 when a part failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ ${1:-} == --cpu ]]; then
    out=${2:?usage: run.sh --cpu OUT_DIR}
    exec timeout 600 "${PYTHON:-python3}" deploy/gpu-check/check.py --mode cpu --out "$out"
fi
out=${1:?usage: run.sh OUT_DIR [WHEELS_DIR]}
wheels=${2:-gpu-wheels}
[[ -d $wheels ]] || { echo "error: no wheelhouse at $wheels (build it with deploy/gpu-check/wheelhouse.sh)" >&2; exit 2; }
venv=${HALP_CHECK_VENV:-/tmp/halp-gpu-check-venv}
python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$wheels" "$wheels"/*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project runs from the tree: nothing to build
exec timeout 330 "$venv/bin/python" deploy/gpu-check/check.py --mode gpu --out "$out"
