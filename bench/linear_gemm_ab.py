"""Linear on ≥3-D activations: MatMulIntegerToFloat + float bias Add vs the QGemm rewrite, on ORT.

    python bench/linear_gemm_ab.py convnext_tiny        # or vit_b_16, swin_t (random init, BN warmed)

Exports one qtoolkit INT8 model twice, with ``qdq_passes.LINEAR_TO_GEMM`` on ("gemm") and off
("nogemm"), beside onnxruntime's ``quantize_static`` of the same FP32 model ("ort"), and prints the
latency of each at batch 1 and 8 (2 threads, 5 interleaved rounds) and the paired median ratio to
the peer. Decides the default of ``LINEAR_TO_GEMM``.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qtoolkit as qtk
import qtoolkit.export.qdq_passes as qp
from qtoolkit.evaluate.latency import interleaved_latency, paired_ratio
from qtoolkit.peers.ort_quantizer import ort_quantize_static
from qtoolkit.peers.zoo import build_torchvision
from qtoolkit.runtime.ort import make_session

torch.set_num_threads(2)
name = sys.argv[1] if len(sys.argv) > 1 else "convnext_tiny"
out = Path(tempfile.mkdtemp())
m = build_torchvision(name)
g = torch.Generator().manual_seed(3)
calib = [torch.randn(4, 3, 224, 224, generator=g) for _ in range(4)]
x = calib[0][:1]
q = qtk.quantize_model(m, qtk.StaticQuantConfig(), calibration=calib, example_input=x)
for variant, on in (("gemm", True), ("nogemm", False)):
    qp.LINEAR_TO_GEMM = on
    qtk.export_int8_onnx(q, x, out / f"{variant}.onnx")
qtk.export_onnx(m, x, out / "fp32.onnx")
inp = onnx.load(str(out / "fp32.onnx")).graph.input[0].name
ort_quantize_static(out / "fp32.onnx", out / "ort.onnx", calib, inp)
res = {}
for b in (1, 8):
    feed = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
    calls = {}
    for v in ("gemm", "nogemm", "ort"):
        s = make_session(out / f"{v}.onnx", 2)
        n = s.get_inputs()[0].name
        calls[v] = lambda s=s, n=n, f=feed: s.run(None, {n: f})
    pr = interleaved_latency(calls, rounds=5, warmup=2, repeats=10 if b == 1 else 5)
    print(
        name,
        f"b{b}",
        {k: round(float(np.median(v)), 2) for k, v in pr.items()},
        "gemm/ort",
        {k: round(v, 3) for k, v in paired_ratio(pr, "gemm", "ort").items()},
        "nogemm/ort",
        {k: round(v, 3) for k, v in paired_ratio(pr, "nogemm", "ort").items()},
        flush=True,
    )
