"""The zoo benchmark: torchvision classifiers through qtoolkit's public API beside onnxruntime's quantizer.

    python bench/zoo.py --out runs/zoo                         # the 11 models of issue 12
    python bench/zoo.py --models resnet18 regnet_x_400mf --rounds 5 --threads 2 --out runs/zoo2

Same program as ``qtk zoo`` (see :mod:`qtoolkit.peers.zoo`); prints one table and writes
``OUT/zoo.md`` and ``OUT/zoo.json`` (rows, per-round latencies, machine, versions, threads).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
