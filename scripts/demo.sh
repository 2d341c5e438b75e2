#!/usr/bin/env bash
# The README's main job: build a tiny model, warm it up with SFT, run GRPO, print held-out accuracy before/after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
. .venv/bin/activate
RECIPE=${RECIPE:-recipes/addition-tiny.yaml}
start=$(date +%s)
rltune sft "$RECIPE"
rltune train "$RECIPE" --overwrite "$@"
echo "demo wall time: $(( $(date +%s) - start )) s (after the venv was ready)"
if [ "$RECIPE" = recipes/addition-tiny.yaml ] && [ $# -eq 0 ]; then
  python bench/demo_stability.py check runs/addition-tiny  # is the gain inside the README's measured range?
fi
