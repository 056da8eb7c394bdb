#!/usr/bin/env bash
# Set up, lint, then run the test suite. Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Trained FP32 baselines are shared by the tests of one run (and reused by later runs here).
export QTK_CACHE=${QTK_CACHE:-$PWD/.cache/qtoolkit}
ruff format --check qtoolkit tests bench
ruff check qtoolkit tests bench
python -m pytest -ra --durations=15 "$@"
