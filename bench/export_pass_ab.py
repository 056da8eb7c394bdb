"""One export pass on and off, timed beside onnxruntime's quantizer on the same FP32 model.

    python bench/export_pass_ab.py vit_b_16 --pass linear_to_gemm            # Linear -> QGemm
    python bench/export_pass_ab.py vit_b_16 --pass select_on_integers        # q, k, v picked in int8
    python bench/export_pass_ab.py convnext_tiny --pass linear_float_output  # Linear -> GELU float
    python bench/export_pass_ab.py mobilenet_v3_large --pass hardsigmoid_on_integers
    python bench/export_pass_ab.py efficientnet_b0 --pass spatial_means_as_global_pools

Quantizes one torchvision model once (random init, BN warmed), exports its INT8 model twice, with the
pass on ("on") and off ("off"), beside onnxruntime's ``quantize_static`` of the same FP32 model
("ort"), and prints the latency of each at batch 1 and 8 (2 threads, ``--rounds`` interleaved) with the
paired median ratios on/ort, off/ort and on/off. Every pass is on by default
(``qdq_passes.LINEAR_TO_GEMM``, ``qdq_passes.LINEAR_FLOAT_OUTPUT``, ``grid_passes.select_on_integers``,
``activation_passes.hardsigmoid_on_integers``, ``grid_passes.spatial_means_as_global_pools``).
"""

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qtoolkit as qtk
import qtoolkit.export.activation_passes as ap
import qtoolkit.export.grid_passes as gp
import qtoolkit.export.qdq_passes as qp
from qtoolkit.evaluate.latency import interleaved_latency, paired_ratio
from qtoolkit.peers.ort_quantizer import ort_quantize_static
from qtoolkit.peers.zoo import build_torchvision
from qtoolkit.runtime.ort import make_session

_SELECT = gp.select_on_integers
_HARDSIGMOID = ap.hardsigmoid_on_integers
_GLOBAL_POOLS = gp.spatial_means_as_global_pools


def _linear_to_gemm(on: bool) -> None:
    qp.LINEAR_TO_GEMM = on


def _linear_float_output(on: bool) -> None:
    qp.LINEAR_FLOAT_OUTPUT = on


def _hardsigmoid_on_integers(on: bool) -> None:
    ap.hardsigmoid_on_integers = _HARDSIGMOID if on else (lambda model: 0)


def _spatial_means_as_global_pools(on: bool) -> None:
    gp.spatial_means_as_global_pools = _GLOBAL_POOLS if on else (lambda model: 0)


def _select_on_integers(on: bool) -> None:
    gp.select_on_integers = _SELECT if on else (lambda model: 0)  # make_ort_friendly looks it up per call


PASSES: dict[str, Callable[[bool], None]] = {
    "linear_to_gemm": _linear_to_gemm,
    "linear_float_output": _linear_float_output,
    "hardsigmoid_on_integers": _hardsigmoid_on_integers,
    "spatial_means_as_global_pools": _spatial_means_as_global_pools,
    "select_on_integers": _select_on_integers,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="convnext_tiny", help="torchvision model name")
    parser.add_argument("--pass", dest="pass_name", choices=sorted(PASSES), default="linear_to_gemm")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per batch size (default 7)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(tempfile.mkdtemp())
    model = build_torchvision(args.model)
    generator = torch.Generator().manual_seed(3)
    calibration = [torch.randn(4, 3, 224, 224, generator=generator) for _ in range(4)]
    example = calibration[0][:1]
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=calibration, example_input=example
    )
    toggle = PASSES[args.pass_name]
    for variant, on in (("on", True), ("off", False)):
        toggle(on)
        qtk.export_int8_onnx(quantized, example, out / f"{variant}.onnx")
    toggle(True)  # back to the default: both passes are on
    qtk.export_onnx(model, example, out / "fp32.onnx")
    ort_quantize_static(out / "fp32.onnx", out / "ort.onnx", [b.numpy() for b in calibration], "input")
    for batch in (1, 8):
        feed = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        calls = {}
        for variant in ("on", "off", "ort"):
            session = make_session(out / f"{variant}.onnx", 2)
            name = session.get_inputs()[0].name
            calls[variant] = lambda s=session, n=name, f=feed: s.run(None, {n: f})
        rounds = interleaved_latency(calls, rounds=args.rounds, warmup=2, repeats=10 if batch == 1 else 5)
        ratios = {
            f"{a}/{b}": {k: round(v, 3) for k, v in paired_ratio(rounds, a, b).items()}
            for a, b in (("on", "ort"), ("off", "ort"), ("on", "off"))
        }
        medians = {k: round(float(np.median(v)), 2) for k, v in rounds.items()}
        print(args.model, args.pass_name, f"b{batch}", medians, ratios, flush=True)


if __name__ == "__main__":
    main()
