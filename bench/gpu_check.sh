#!/usr/bin/env bash
# GPU check (issue 17): embedding and detector throughput on CUDA beside the CPU, at most 8 min.
#
#   bench/gpu_check.sh                        # full setting -> bench/results/gpu_check.md
#   GPU_CHECK_SIZE=tiny bench/gpu_check.sh --out /tmp/gpu_check.md   # seconds, on a CPU too
#
# Options go to bench/gpu_check.py (--size, --like, --out, --devices, --threads). The data is
# rendered like a real DL_info.csv (GPU_CHECK_LIKE, default ../shared/deeplesion_real/
# DL_info_test.csv). GPU_CHECK_TIMEOUT (seconds, default 480) bounds the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-480}" "$PY" bench/gpu_check.py "$@"
