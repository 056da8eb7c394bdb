#!/usr/bin/env bash
# Re-run every command whose output the README's Results section quotes (about 30-40 minutes on
# 2 cores with an empty cache; FP32 baselines are cached and shared between the recipes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
mkdir -p runs
for recipe in resnet18_fmnist_static resnet18_fmnist_qat resnet18_fmnist_static_w4 resnet18_fmnist_qat_w4 \
              minilm_rotten_tomatoes_dynamic; do
    qtk run "recipes/${recipe}.yaml" --out "runs/${recipe}" || true   # a failed check still writes its report
done
qtk bench --model resnet18 --batch-sizes 1 8 --json runs/bench_resnet18.json
python bench/bert_dynamic.py --out runs/bert_dynamic --rounds 5
