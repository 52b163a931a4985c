#!/usr/bin/env bash
# The GPU check of issue 16 as one prepared call (benchmarks/gpu_check.py says what it measures).
#
# On the machine with the GPU, from the repository root, with that machine's own python3 and
# torch (no Ray, no Optuna needed):
#     bash benchmarks/gpu_check.sh              # ~3-5 min on one GPU; results to $OUT or
#                                               # benchmarks/results/
# kdtune's science layer needs pydantic and pyyaml beside torch. Where that machine lacks them,
# they come from wheels carried with the checkout (git-ignored, a few MiB), made beforehand on a
# machine that reaches a package index:
#     bash benchmarks/gpu_check.sh --download-wheels    # into benchmarks/gpu_wheels/
# and carried along (the device tool's `carry: ["benchmarks/gpu_wheels"]`).
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=benchmarks/gpu_wheels
py=${PYTHON:-python3}

if [ "${1:-}" = "--download-wheels" ]; then
  mkdir -p "$wheels"
  for version in 3.10 3.11 3.12 3.13; do
    "$py" -m pip download -q --only-binary=:all: --python-version "$version" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$wheels" "pydantic>=2.7,<3" "pyyaml>=6" || exit 3
  done
  du -sh "$wheels"
  exit 0
fi

if ! "$py" -c "import pydantic, yaml" 2>/dev/null; then
  deps=$(mktemp -d /tmp/kdtune-gpu-deps-XXXX)
  "$py" -m pip install -q --no-index --find-links "$wheels" --target "$deps" pydantic pyyaml \
    || { echo "gpu_check: pydantic/pyyaml missing and not installable from $wheels"; exit 3; }
  export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
# the whole check stays inside the issue's 8 minutes
exec timeout 470 "$py" benchmarks/gpu_check.py "$@"
