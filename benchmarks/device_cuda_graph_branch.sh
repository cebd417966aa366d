#!/usr/bin/env bash
# The CUDA-graph branch check on a lent GPU machine (about 3 minutes on an H200):
#   device run: bash benchmarks/device_cuda_graph_branch.sh   (carry .whl when the machine lacks diffusers)
# Runs the GPU test (a replayed generation with no host sync, decisions and outputs equal to the
# one program's) and the gpu_check section that times it against plain Inductor in reduce-overhead.
set -uo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph_branch.py 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}
python3 -m benchmarks.gpu_check --sections cuda_graph_branch --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
cat "$OUT/gpu_check.json"
exit "$status"
