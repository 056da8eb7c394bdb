"""``qtk zoo``: torchvision classifiers a user might bring, through the public API, beside onnxruntime's
own quantizer.

For each model (random init; BatchNorm statistics warmed up on random data in train mode, as a
trained network has them): ``quantize_model(model, StaticQuantConfig(), calibration=…)`` and
``export_int8_onnx`` (qtoolkit), ``quantize_static`` (QDQ, per-channel, MinMax, u8 activations) of
the same FP32 ONNX with the same calibration batches (onnxruntime), then

* parity of qtoolkit's INT8 ONNX with torch's INT8 model (top-1 agreement, worst |Δlogit|) on
  ``parity_samples`` random inputs. Every op qtoolkit quantizes beyond torch.ao's defaults
  (``qtoolkit.quantize.int8_rules``) is rewritten into torch's own INT8 kernels, so torch's
  converted model is the reference for every op;
* the kernel noise floor of that parity (:func:`qtoolkit.evaluate.noise_floor.ort_fusion_floor`):
  top-1 agreement of the same qtoolkit INT8 file run by onnxruntime unfused (optimizations
  disabled: the QDQ graph as written) vs fused (all optimizations), on the same inputs. It shows how
  much of a parity gap is onnxruntime's fused integer rounding, amplified by the network, rather
  than the export; the parity figure and its gate are unchanged;
* the graph onnxruntime runs (:mod:`qtoolkit.evaluate.graph_quality`): float compute ops,
  DequantizeLinear nodes and layout Transposes, qtoolkit's and onnxruntime's quantizer's;
* size ratio FP32 / INT8 and latency of FP32 ONNX, qtoolkit INT8, ORT INT8 in interleaved rounds
  at each batch size; ratios are medians of per-round ratios (paired: a slow phase of the host
  hits all three alike).
* with ``runtimes=("onnxruntime", "openvino")``: parity and latency of the same files on each
  runtime (keys ``<variant>_<runtime>``, all in the same rounds), and for OpenVINO the executed
  graph's compute nodes by runtime precision (``runtime_graph``), which shows where a file runs float.

A model that fails anywhere gets a row with the reason (the error's first line), not a crash.
"""

from __future__ import annotations

import tempfile
import traceback
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.evaluate.graph_quality import float_op_names, graph_quality, optimized_op_counts
from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.evaluate.noise_floor import ort_fusion_floor
from qtoolkit.evaluate.parity import check_parity
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.peers.ort_quantizer import ort_quantize_static
from qtoolkit.quantize import StaticQuantConfig, quantize
from qtoolkit.report.environment import collect_environment
from qtoolkit.runtime.onnx_runtimes import DEFAULT_RUNTIME, load_onnx, variant_name
from qtoolkit.runtime.ort import model_size_mb

ZOO_MODELS = (
    "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "googlenet", "squeezenet1_1",
    "shufflenet_v2_x1_0", "densenet121", "convnext_tiny", "vit_b_16", "swin_t",
)  # fmt: skip
# torchvision builder keywords for random-init models that differ from the defaults.
_BUILD_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
VARIANTS = ("fp32_onnx", "qtoolkit_int8", "ort_int8")


def _tiny_builders() -> dict[str, Callable[[], nn.Module]]:
    import torchvision.models as tvm
    from torchvision.models.convnext import CNBlockConfig

    return {
        "tiny_vit": lambda: tvm.VisionTransformer(64, 16, 4, 4, 64, 128, num_classes=100),
        "tiny_convnext": lambda: tvm.convnext.ConvNeXt(
            [CNBlockConfig(32, 64, 2), CNBlockConfig(64, None, 2)], num_classes=100
        ),
        "tiny_swin": lambda: tvm.swin_transformer.SwinTransformer(
            [4, 4], 32, [2, 2], [2, 4], [4, 4], num_classes=100
        ),
    }


# Small configs of the transformer families, 64x64 inputs (``--models tiny_vit ...``): seconds, not
# minutes, to quantize and time, for developing graph rules before the full-size rows.
TINY_MODELS = ("tiny_vit", "tiny_swin", "tiny_convnext")
TINY_IMAGE_SIZE = 64


def build_torchvision(name: str, image_size: int = 224, warmup_batches: int = 2, seed: int = 0) -> nn.Module:
    """torchvision classifier ``name`` with random weights (zero-initialised Linear layers drawn too)
    and BatchNorm statistics of random data."""
    import torchvision

    from qtoolkit.errors import QtkError

    if name in TINY_MODELS:
        builder = _tiny_builders()[name]
    else:
        try:
            builder = partial(
                torchvision.models.get_model_builder(name), weights=None, **_BUILD_KWARGS.get(name, {})
            )
        except ValueError as error:
            raise QtkError(
                f"{name} is not a torchvision model; see torchvision.models.list_models()"
            ) from error
    torch.manual_seed(seed)
    model = builder().train()
    for module in model.modules():  # ViT zero-inits its head: constant logits would hide any mismatch
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.01)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # running means/vars of real activations, so folded biases are non-trivial
        for _ in range(warmup_batches):
            model(torch.randn(4, 3, image_size, image_size, generator=generator))
    return model.eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _step(row: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; on failure record why under ``row['errors'][key]`` and return None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception as error:  # one failing model must not end the table
        row.setdefault("errors", {})[key] = _first_line(error)
        row.setdefault("tracebacks", {})[key] = traceback.format_exc(limit=4)
        return None


def zoo_row(
    name: str,
    *,
    image_size: int = 224,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int = 2,
    rounds: int = 3,
    repeats: int = 20,
    warmup: int = 3,
    calibration_batches: int = 4,
    parity_samples: int = 64,
    config: StaticQuantConfig | None = None,
    work_dir: Path | None = None,
    runtimes: Sequence[str] = (DEFAULT_RUNTIME,),
    strict_fp32: bool = False,
) -> dict[str, Any]:
    """One model's row (see module docstring); JSON-able. ``TINY_MODELS`` run at ``TINY_IMAGE_SIZE``."""
    row: dict[str, Any] = {"model": name}
    image_size = TINY_IMAGE_SIZE if name in TINY_MODELS else image_size
    generator = torch.Generator().manual_seed(2)
    calibration = [
        torch.randn(4, 3, image_size, image_size, generator=generator) for _ in range(calibration_batches)
    ]
    example = calibration[0][:1]
    model = _step(row, "build", lambda: build_torchvision(name, image_size))
    if model is None:
        return row
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(work_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        paths = {key: out / f"{name}_{key}.onnx" for key in VARIANTS}
        quantized = _step(
            row,
            "qtoolkit",
            lambda: quantize(
                model, config or StaticQuantConfig(), calibration=calibration, example_input=example
            ),
        )
        if quantized is not None:
            row["float_modules"] = quantized.details.get("float_modules", [])
            _step(
                row,
                "qtoolkit",
                lambda: export_int8_onnx(quantized.int8_model, example, paths["qtoolkit_int8"]),
            )
        if _step(row, "fp32_export", lambda: export_onnx(model, example, paths["fp32_onnx"])) is not None:
            _step(
                row,
                "ort",
                lambda: ort_quantize_static(
                    paths["fp32_onnx"], paths["ort_int8"], [b.numpy() for b in calibration], "input"
                ),
            )
        ready = {key: path for key, path in paths.items() if path.is_file()}
        row["exported"] = {key: key in ready for key in VARIANTS}
        if quantized is not None and "qtoolkit_int8" in ready:
            parity_batches = [
                torch.randn(8, 3, image_size, image_size, generator=generator)
                for _ in range(max(1, parity_samples // 8))
            ]
            row["parity"] = _step(
                row,
                "parity",
                lambda: check_parity(quantized.int8_model, ready["qtoolkit_int8"], parity_batches, threads),
            )
            row["kernel_floor"] = _step(
                row,
                "kernel_floor",
                lambda: ort_fusion_floor(ready["qtoolkit_int8"], parity_batches, threads),
            )
            row["parity_reference"] = (
                "torch INT8 (torch.ao convert + qtoolkit INT8 rules, torch's own kernels)"
            )
            for rt in (rt for rt in runtimes if rt != DEFAULT_RUNTIME):
                row.setdefault("parity_by_runtime", {})[rt] = _step(
                    row,
                    f"parity_{rt}",
                    lambda rt=rt: check_parity(
                        quantized.int8_model, ready["qtoolkit_int8"], parity_batches, threads, rt, strict_fp32
                    ),
                )
        row["sizes_mb"] = {key: round(model_size_mb(path), 3) for key, path in ready.items()}
        if "fp32_onnx" in ready:
            row["size_ratio"] = {
                key: round(row["sizes_mb"]["fp32_onnx"] / row["sizes_mb"][key], 2)
                for key in ready
                if key != "fp32_onnx"
            }
        row["optimized_ops"] = {
            key: optimized_op_counts(path) for key, path in ready.items() if key != "fp32_onnx"
        }
        row["graph_quality"] = {key: graph_quality(c) for key, c in row["optimized_ops"].items()}
        row["float_ops"] = {key: float_op_names(c) for key, c in row["optimized_ops"].items()}
        _step(
            row,
            "latency",
            lambda: _time(
                row, ready, image_size, batch_sizes, threads, rounds, repeats, warmup, runtimes, strict_fp32
            ),
        )
    return row


def _time(
    row: dict[str, Any],
    paths: dict[str, Path],
    image_size: int,
    batch_sizes: Sequence[int],
    threads: int,
    rounds: int,
    repeats: int,
    warmup: int,
    runtimes: Sequence[str] = (DEFAULT_RUNTIME,),
    strict_fp32: bool = False,
) -> None:
    loaded: dict[str, Any] = {}
    for rt in runtimes:
        try:
            loaded |= {
                variant_name(key, rt): load_onnx(path, rt, threads, strict_fp32)
                for key, path in paths.items()
            }
        except Exception as error:  # a runtime that cannot compile a file must not cost the others' timings
            row.setdefault("errors", {})[f"latency_{rt}"] = _first_line(error)
            row.setdefault("tracebacks", {})[f"latency_{rt}"] = traceback.format_exc(limit=4)
    runtimes = [rt for rt in runtimes if variant_name(next(iter(paths)), rt) in loaded]
    row["runtimes"] = {rt: loaded[variant_name(next(iter(paths)), rt)].info for rt in runtimes}
    graphs = {key: model.runtime_graph() for key, model in loaded.items() if model.runtime_graph is not None}
    if graphs:
        row["runtime_graph"] = graphs
    generator = torch.Generator().manual_seed(3)
    row["latency_ms"], row["latency_ms_per_round"], row["ratios"] = {}, {}, {}
    for batch_size in batch_sizes:
        x = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
        calls = {key: model.call(x) for key, model in loaded.items()}
        per_round = interleaved_latency(calls, rounds=rounds, warmup=warmup, repeats=repeats)
        key = str(batch_size)
        row["latency_ms"][key] = {k: round(v, 3) for k, v in best_of_rounds(per_round).items()}
        row["latency_ms_per_round"][key] = per_round
        ratios = {}
        if {"qtoolkit_int8", "ort_int8"} <= per_round.keys():
            ratios["qtoolkit_over_ort"] = paired_ratio(per_round, "qtoolkit_int8", "ort_int8")
        if {"fp32_onnx", "qtoolkit_int8"} <= per_round.keys():
            ratios["fp32_over_qtoolkit"] = paired_ratio(per_round, "fp32_onnx", "qtoolkit_int8")
        if {"fp32_onnx", "ort_int8"} <= per_round.keys():
            ratios["fp32_over_ort"] = paired_ratio(per_round, "fp32_onnx", "ort_int8")
        for rt in (rt for rt in runtimes if rt != DEFAULT_RUNTIME):
            qtk, ort8 = variant_name("qtoolkit_int8", rt), variant_name("ort_int8", rt)
            if {qtk, ort8} <= per_round.keys():
                ratios[f"qtoolkit_over_ort_{rt}"] = paired_ratio(per_round, qtk, ort8)
        row["ratios"][key] = ratios


def run_zoo(
    models: Sequence[str] = ZOO_MODELS,
    *,
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Every model's row plus the environment (machine, versions, threads) they were measured in."""
    torch.set_num_threads(threads)
    rows = []
    for name in models:
        if progress is not None:
            progress(name)
        rows.append(zoo_row(name, threads=threads, **options))
    return {
        "rows": rows,
        "options": {"threads": threads, **options},
        "environment": collect_environment(threads),
    }


def _export_cell(row: dict[str, Any]) -> str:
    errors = row.get("errors", {})
    for key in ("build", "qtoolkit"):
        if key in errors:
            return f"**fails**: {errors[key]}"
    return "ok" if row.get("exported", {}).get("qtoolkit_int8") else "**fails**"


def _pair(row: dict[str, Any], key: str) -> str:
    quality = row.get("graph_quality", {})
    return "/".join(str(quality[v][key]) if v in quality else "–" for v in ("qtoolkit_int8", "ort_int8"))


def _runtime_cells(row: dict[str, Any], batch: str, rt: str) -> list[str]:
    """ms of FP32 / qtoolkit / ORT files on runtime ``rt`` and the paired qtoolkit/ORT ratio there."""
    ms, ratios = row.get("latency_ms", {}).get(batch), row.get("ratios", {}).get(batch, {})
    if ms is None:
        return ["–", "–"]
    times = " / ".join(f"{ms[k]:.1f}" if k in ms else "–" for k in (variant_name(v, rt) for v in VARIANTS))
    ratio = ratios.get(f"qtoolkit_over_ort_{rt}")
    return [times, f"{ratio['median']:.2f}×" if ratio else "–"]


def _openvino_graph_cell(row: dict[str, Any]) -> str:
    """Integer/float compute nodes of the graph OpenVINO executes, qtoolkit's file vs ORT's."""
    from qtoolkit.runtime.openvino_rt import integer_and_float

    graphs = row.get("runtime_graph", {})
    cells = [graphs.get(variant_name(v, "openvino")) for v in ("qtoolkit_int8", "ort_int8")]
    return " vs ".join("/".join(map(str, integer_and_float(g))) if g else "–" for g in cells)


def _agreement_cell(result: dict[str, Any] | None) -> str:
    return f"{100 * result['agreement']:.1f}% / {result['max_abs_diff']:.3g}" if result else "–"


def _latency_cells(row: dict[str, Any], batch: str) -> list[str]:
    ms, ratios = row.get("latency_ms", {}).get(batch), row.get("ratios", {}).get(batch, {})
    if ms is None:
        return ["–", "–", "–"]
    times = " / ".join(f"{ms[v]:.1f}" if v in ms else "–" for v in VARIANTS)
    cells = [times]
    for key in ("qtoolkit_over_ort", "fp32_over_qtoolkit"):
        cells.append(f"{ratios[key]['median']:.2f}×" if key in ratios else "–")
    return cells


def format_zoo(results: dict[str, Any]) -> str:
    """One markdown table: export, parity, graph quality, size and latency ratios per model."""
    env, options = results["environment"], results["options"]
    batches = [str(b) for b in options.get("batch_sizes", (1, 8))]
    header = ["model", "qtoolkit export", "parity top-1 / max Δlogit", "kernel floor top-1 / max Δlogit",
              "float ops qtk/ORT", "DQ qtk/ORT", "layout qtk/ORT", "qtk float ops left",
              "size FP32/INT8"]  # fmt: skip
    others = [rt for rt in options.get("runtimes", ()) if rt != DEFAULT_RUNTIME]
    for b in batches:
        header += [f"b{b} ms FP32 / qtk / ORT", f"b{b} qtk/ORT", f"b{b} FP32/qtk"]
        for rt in others:
            header += [f"b{b} {rt} ms FP32 / qtk / ORT", f"b{b} {rt} qtk/ORT"]
    header += [f"parity on {rt}" for rt in others]
    header += ["openvino int/float nodes qtk vs ORT"] if "openvino" in others else []
    lines = [
        f"### zoo: {env['cpu']}, {env['threads']} threads, torch {env['torch']}, onnxruntime {env['onnxruntime']}"
        + "".join(f", {rt} {env.get(rt)}" for rt in others),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in results["rows"]:
        parity = row.get("parity")
        parity_cell = _agreement_cell(parity)
        floats = row.get("float_ops", {}).get("qtoolkit_int8")
        float_cell = (
            ", ".join(f"{op} {n}" for op, n in floats.items()) or "none" if floats is not None else "–"
        )
        size = row.get("size_ratio", {}).get("qtoolkit_int8")
        cells = [row["model"], _export_cell(row), parity_cell, _agreement_cell(row.get("kernel_floor")),
                 _pair(row, "float_ops"), _pair(row, "dequantize"),
                 _pair(row, "layout"), float_cell, f"{size:.2f}×" if size else "–"]  # fmt: skip
        for b in batches:
            cells += _latency_cells(row, b)
            for rt in others:
                cells += _runtime_cells(row, b, rt)
        for rt in others:
            got = (row.get("parity_by_runtime") or {}).get(rt)
            cells.append(_agreement_cell(got))
        if "openvino" in others:
            cells.append(_openvino_graph_cell(row))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "float ops / DQ / layout: op counts of the graph onnxruntime runs (after its optimizer); "
        f"latency: best of {options.get('rounds')} interleaved round medians (ms); ratios: median of "
        "per-round ratios; parity: qtoolkit INT8 ONNX vs torch's INT8 model; kernel floor: the same "
        "qtoolkit file on onnxruntime unfused (optimizations disabled) vs fused (all), same inputs.",
    ]
    return "\n".join(lines) + "\n"
