"""``qtk bench``: latency of an image model as FP32/INT8 torch, FP32 ONNX, qtoolkit's INT8 ONNX and
onnxruntime's own ``quantize_static`` INT8 ONNX (QDQ, per-channel) made from the same FP32 ONNX.

Random weights are fine for speed (BatchNorm statistics are randomised so that folded biases are
non-zero, as in a trained model). All variants run in one process with the same thread count, in
interleaved rounds (:func:`qtoolkit.evaluate.latency.interleaved_latency`): the table shows each
variant's best round median, and the two ratios are medians of per-round ratios (paired, so that a
slow phase of the host cancels), with their range in the JSON.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.models import create_model
from qtoolkit.peers.ort_quantizer import ort_quantize_static
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig, quantize
from qtoolkit.report.environment import collect_environment
from qtoolkit.runtime.cpu import cpu_has_vnni
from qtoolkit.runtime.onnx_runtimes import DEFAULT_RUNTIME, available_runtimes, load_onnx, variant_name
from qtoolkit.runtime.ort import model_size_mb


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Random BatchNorm statistics and biases, so that folded biases are non-zero as in a trained model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)


def bench_runtimes(names: Sequence[str], report: Callable[[str], None] | None = None) -> tuple[str, ...]:
    """The runtimes of ``names`` a latency bench can use here: installed, and for openvino a CPU with
    VNNI (without it INT8 is not faster, so its INT8 timings say nothing about the CPUs it is for).
    Each other one is reported as one line and skipped."""
    kept = []
    for name in available_runtimes(names, report):
        if name == "openvino" and not cpu_has_vnni():
            if report is not None:
                report(
                    "skipping openvino: this CPU has no AVX512-VNNI/AVX-VNNI, so its INT8 timings mean nothing"
                )
            continue
        kept.append(name)
    return tuple(kept)


def bench_image_model(
    name: str = "resnet18",
    image_size: int = 224,
    batch_sizes: tuple[int, ...] | list[int] = (1, 8),
    threads: int = 2,
    repeats: int = 50,
    rounds: int = 3,
    runtimes: Sequence[str] = (DEFAULT_RUNTIME,),
    strict_fp32: bool = False,
) -> dict[str, Any]:
    """Measure every variant at every batch size on every runtime in ``runtimes`` (all in the same
    interleaved rounds); returns a JSON-able dict (see module docstring). ONNX variants on a runtime
    other than onnxruntime are keyed ``<variant>_<runtime>``."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = create_model(name).eval()
    randomise_batchnorm(model)
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(4, 3, image_size, image_size, generator=generator) for _ in range(4)]
    example = calibration[0][:1]
    config = StaticQuantConfig(observers=ObserverSpec(activation="minmax", reduce_range=False))
    int8_model = quantize(model, config, calibration=calibration, example_input=example).int8_model
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32_onnx": Path(tmp) / "fp32.onnx", "int8_onnx": Path(tmp) / "int8.onnx"}
        export_onnx(model, example, paths["fp32_onnx"])
        export_int8_onnx(int8_model, example, paths["int8_onnx"])
        paths["ort_int8_onnx"] = Path(tmp) / "ort_int8.onnx"
        ort_quantize_static(
            paths["fp32_onnx"], paths["ort_int8_onnx"], [b.numpy() for b in calibration], "input"
        )
        loaded = {
            variant_name(key, runtime): load_onnx(path, runtime, threads, strict_fp32)
            for runtime in runtimes
            for key, path in paths.items()
        }
        sizes = {key: round(model_size_mb(path), 3) for key, path in paths.items()}
        results: dict[str, Any] = {
            "sizes_mb": sizes,
            "runtimes": {rt: loaded[variant_name("int8_onnx", rt)].info for rt in runtimes},
            "latency_ms": {},
            "latency_ms_per_round": {},
            "ratios": {},
        }
        for batch_size in batch_sizes:
            x = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
            calls = {
                "fp32_torch": lambda x=x: model(x),
                "int8_torch": lambda x=x: int8_model(x),
                **{key: onnx.call(x) for key, onnx in loaded.items()},
            }
            with torch.no_grad():
                per_round = interleaved_latency(calls, rounds=rounds, warmup=5, repeats=repeats)
            key = str(batch_size)
            results["latency_ms"][key] = {k: round(v, 3) for k, v in best_of_rounds(per_round).items()}
            results["latency_ms_per_round"][key] = per_round
            ratios = results["ratios"][key] = {}
            for rt in runtimes:
                fp32, int8, ort8 = (variant_name(k, rt) for k in ("fp32_onnx", "int8_onnx", "ort_int8_onnx"))
                suffix = "" if rt == DEFAULT_RUNTIME else f"_{rt}"
                ratios[f"fp32_over_int8_onnx{suffix}"] = paired_ratio(per_round, fp32, int8)
                ratios[f"qtoolkit_over_ort_int8_onnx{suffix}"] = paired_ratio(per_round, int8, ort8)
                if rt != runtimes[0]:
                    ratios[f"{int8}_over_{variant_name('int8_onnx', runtimes[0])}"] = paired_ratio(
                        per_round, int8, variant_name("int8_onnx", runtimes[0])
                    )
    results.update(
        model=name,
        image_size=image_size,
        repeats=repeats,
        rounds=rounds,
        environment=collect_environment(threads),
    )
    return results


def format_bench(results: dict[str, Any]) -> str:
    """Markdown table, one row per batch size and runtime, with the two ratios the static-PTQ goals
    are stated in (FP32/INT8 ONNX and qtoolkit/ORT-quantizer INT8, each on that runtime)."""
    env = results["environment"]
    runtimes = results.get("runtimes") or {
        DEFAULT_RUNTIME: {"version": env["onnxruntime"], "precision": "f32"}
    }
    lines = [
        f"### {results['model']} {results['image_size']}×{results['image_size']}, {env['threads']} threads, "
        f"{env['cpu']} ({', '.join(env['cpu_flags'])}), torch {env['torch']}, "
        + ", ".join(f"{rt} {info['version']}" for rt, info in runtimes.items()),
        "",
        "| batch | ONNX runtime (float precision) | FP32 torch | INT8 torch | FP32 ONNX | INT8 ONNX (qtoolkit) "
        "| INT8 ONNX (ORT quantize_static) | FP32/INT8 ONNX speed-up | qtoolkit/ORT latency |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, ms in results["latency_ms"].items():
        ratios = results["ratios"][batch]
        for rt, info in runtimes.items():
            suffix = "" if rt == DEFAULT_RUNTIME else f"_{rt}"
            fp32, int8, ort8 = (variant_name(k, rt) for k in ("fp32_onnx", "int8_onnx", "ort_int8_onnx"))
            lines.append(
                f"| {batch} | {rt} ({info['precision']}) | {ms['fp32_torch']:.2f} | {ms['int8_torch']:.2f} | "
                f"{ms[fp32]:.2f} | {ms[int8]:.2f} | {ms[ort8]:.2f} | "
                f"{ratios[f'fp32_over_int8_onnx{suffix}']['median']:.2f}× | "
                f"{ratios[f'qtoolkit_over_ort_int8_onnx{suffix}']['median']:.2f}× |"
            )
    sizes = results["sizes_mb"]
    lines += [
        "",
        f"sizes MB: FP32 ONNX {sizes['fp32_onnx']:.2f}, INT8 ONNX (qtoolkit) {sizes['int8_onnx']:.2f}, "
        f"INT8 ONNX (ORT) {sizes['ort_int8_onnx']:.2f}; latency = best of {results['rounds']} interleaved "
        f"round medians of {results['repeats']} runs (ms), every runtime in the same rounds; "
        "ratios = median of per-round ratios",
    ]
    return "\n".join(lines) + "\n"
