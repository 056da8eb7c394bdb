"""Where an ONNX text model spends its time, per op type, from onnxruntime's own profiler.

    python bench/recurrent_profile.py                        # the GRU recipe, FP32 vs INT8, batch 8
    python bench/recurrent_profile.py --subject anchor-gru --batch 1

Exports the subject of ``bench/rnn_dynamic.py`` (FP32 ONNX and qtoolkit's INT8 ONNX), runs each
``--runs`` times at ``--batch`` with ORT's profiler on, and prints, per op type, the kernel time per
model run (the ``*_kernel_time`` events; nodes inside a ``Scan`` body are counted once per step, so
their calls per run are steps × layers) next to the whole run's time. The profiler adds a fixed cost
to every node it times, which inflates graphs of many small nodes: use it to see where the time
goes, and ``bench/rnn_dynamic.py`` for speed-ups.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rnn_dynamic import RECIPES, subject

from qtoolkit import DynamicQuantConfig, export_int8_onnx, export_onnx, quantize_model
from qtoolkit.runtime.ort import SLOW_FUSIONS


def profile(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int, work: Path) -> dict[str, Any]:
    """Per op type: kernel µs per model run and calls per run; plus the mean model run (µs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    options.enable_profiling, options.profile_file_prefix = True, str(work / path.stem)
    session = ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(SLOW_FUSIONS)
    )
    for _ in range(3):  # warm-up, also profiled: dropped below by run index
        session.run(None, feeds)
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first = starts[3]  # the first timed run
    timed = [e for e in events if e.get("ts", 0) >= first]
    total, calls = Counter(), Counter()
    for event in timed:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
            calls[event["args"]["op_name"]] += 1
    run_us = [e["dur"] for e in timed if e.get("name") == "model_run"]
    return {
        "model_run_us": float(np.median(run_us)),
        "ops": {
            op: {"us_per_run": us / runs, "calls_per_run": calls[op] / runs} for op, us in total.most_common()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subject", default="recipe-gru", choices=[*RECIPES, "anchor-lstm", "anchor-gru"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64, help="tokens per input of the anchor subjects")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    spec = subject(args.subject, args.seq)
    feeds = {key: value.numpy() for key, value in spec["latency"](args.batch).items()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = {"fp32_onnx": work / "fp32_onnx.onnx", "int8_onnx": work / "int8_onnx.onnx"}
        export_onnx(spec["model"], spec["example"], paths["fp32_onnx"])
        export_int8_onnx(
            quantize_model(spec["model"], DynamicQuantConfig()), spec["example"], paths["int8_onnx"]
        )
        found = {name: profile(path, feeds, args.threads, args.runs, work) for name, path in paths.items()}
    print(json.dumps({"subject": args.subject, "batch": args.batch, "threads": args.threads}))
    for name, result in found.items():
        print(f"\n{name}: model run {result['model_run_us']:.0f} us (median of {args.runs}, profiler on)")
        for op, row in list(result["ops"].items())[: args.top]:
            per_call = row["us_per_run"] / row["calls_per_run"]
            print(
                f"  {op:24s} {row['us_per_run']:9.0f} us/run  {row['calls_per_run']:6.0f} calls  {per_call:7.1f} us/call"
            )


if __name__ == "__main__":
    main()
