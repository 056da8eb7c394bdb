#!/usr/bin/env bash
# Set up, then run the default recipe end to end: ResNet-18 on Fashion-MNIST, static INT8 PTQ,
# QDQ ONNX export, evaluation of FP32/INT8 torch and ONNX, report in runs/resnet18_fmnist_static.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
qtk run recipes/resnet18_fmnist_static.yaml --out runs/resnet18_fmnist_static "$@"
