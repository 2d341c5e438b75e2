#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment at .venv. Idempotent: it reinstalls only when
# pyproject.toml changed since the last install. torch is installed first, pinned to the CPU build's release,
# so no later requirement pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
stamp=.venv/.rltune-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION}"
python -m pip install -q -e ".[dev,diffusion]"
# DeepSpeed compiles nothing at install with DS_BUILD_OPS=0 (its CPU paths need no custom ops), and
# --no-build-isolation keeps its build from fetching a second torch.
DS_BUILD_OPS=0 python -m pip install -q --no-build-isolation "deepspeed==0.19.8"
echo "$want" > "$stamp"
echo "venv ready: $(python -c 'import torch, transformers, trl; print("torch", torch.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__)')"
