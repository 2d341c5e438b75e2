#!/usr/bin/env bash
# The README's test command (CI runs exactly this). Extra arguments go to pytest, e.g. `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
. .venv/bin/activate
python -m pytest -q "$@"
