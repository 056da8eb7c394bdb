"""Where do an INT8 ONNX file and torch's INT8 model part ways?

    python bench/parity_divergence.py vit_b_16                # any torchvision classifier (zoo builder)
    python bench/parity_divergence.py tiny_vit tiny_swin      # small configs of the transformer families

Each model is built, calibrated and exported as ``qtk zoo`` does it, then run four ways on the same
random inputs: torch's INT8 model (T), its QDQ simulation (R, ``qtoolkit.export.to_reference``,
the graph that is exported), ONNX Runtime with graph optimizations disabled (U: DequantizeLinear ->
float op -> QuantizeLinear, the exported math) and with all optimizations (O: fused integer kernels).
Prints top-1 agreement and worst |Δlogit| for every pair, the median top-2 logit margin, and, per
QuantizeLinear of the exported graph in order, how many of its INT8 outputs differ between U and O
(first ``--nodes`` that differ). T≠R points at the reference, R≠U at the export, U≠O at ORT's
fused kernels rounding differently (and the network amplifying it).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit.export import export_int8_onnx, to_reference
from qtoolkit.peers.zoo import TINY_IMAGE_SIZE, TINY_MODELS, build_torchvision
from qtoolkit.quantize import StaticQuantConfig, quantize
from qtoolkit.runtime.ort import make_session


def _ort_logits(path: Path, level: str, inputs: torch.Tensor) -> np.ndarray:
    session = make_session(path, 2, optimization=level)
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]


def _quantize_outputs(
    path: Path, inputs: torch.Tensor, tmp: Path
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(QuantizeLinear output, producer op, INT8 values unfused, fused) in graph order."""
    model = onnx.load(str(path))
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    quantizers = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    outputs = {o.name for o in model.graph.output}
    for node in quantizers:
        if node.output[0] not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
    debug = tmp / "debug.onnx"
    onnx.save(model, str(debug))
    names = [o.name for o in model.graph.output]
    runs = {}
    for level in ("disabled", "all"):
        session = make_session(debug, 2, optimization=level)
        runs[level] = dict(
            zip(names, session.run(None, {session.get_inputs()[0].name: inputs.numpy()}), strict=True)
        )
    return [
        (
            n.output[0],
            producer.get(n.input[0], "input"),
            runs["disabled"][n.output[0]],
            runs["all"][n.output[0]],
        )
        for n in quantizers
    ]


def diverge(name: str, samples: int, nodes: int) -> None:
    size = TINY_IMAGE_SIZE if name in TINY_MODELS else 224
    generator = torch.Generator().manual_seed(2)
    calibration = [torch.randn(4, 3, size, size, generator=generator) for _ in range(4)]
    model = build_torchvision(name, size)
    quantized = quantize(
        model, StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
    )
    inputs = torch.randn(samples, 3, size, size, generator=generator)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.onnx"
        export_int8_onnx(quantized.int8_model, calibration[0][:1], path)
        with torch.no_grad():
            logits = {
                "T": quantized.int8_model(inputs).numpy(),
                "R": to_reference(quantized.int8_model)(inputs).numpy(),
            }
        logits["U"], logits["O"] = (_ort_logits(path, level, inputs) for level in ("disabled", "all"))
        print(f"== {name} ({samples} inputs)")
        for a, b in itertools.combinations("TRUO", 2):
            top1 = np.mean(logits[a].argmax(1) == logits[b].argmax(1))
            print(f"  {a} vs {b}: top-1 {top1:.1%}  max|Δlogit| {np.abs(logits[a] - logits[b]).max():.4g}")
        top2 = np.sort(logits["T"], axis=1)[:, -2:]
        print(f"  median top-2 margin (T): {np.median(top2[:, 1] - top2[:, 0]):.4g}")
        shown = 0
        for output, op, unfused, fused in _quantize_outputs(path, inputs[:8], Path(tmp)):
            diff = np.abs(unfused.astype(np.int32) - fused.astype(np.int32))
            if diff.max() > 0 and shown < nodes:
                shown += 1
                print(
                    f"  U≠O {output:<28} after {op:<20} {np.mean(diff > 0):7.2%} differ, max {diff.max()} LSB"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=20, help="QuantizeLinear outputs to list")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    for name in args.models:
        diverge(name, args.samples, args.nodes)


if __name__ == "__main__":
    main()
