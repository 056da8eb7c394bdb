"""report.json and report.md: the table a user reads, and the record a regression test checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtoolkit.atomic import write_text_atomic
from qtoolkit.runtime.onnx_runtimes import DEFAULT_RUNTIME, variant_name

DEFAULT_NOISE_FACTOR = 2.0


def parity_limit(min_agreement: float, floor_agreement: float | None, factor: float) -> float:
    """Least top-1 agreement INT8 ONNX must reach with torch INT8: ``min_agreement``, relaxed to
    ``1 − factor · (1 − floor_agreement)`` when torch INT8 disagrees with itself under a kernel swap
    (``qtoolkit.evaluate.noise_floor``) on more inputs than ``min_agreement`` allows."""
    if floor_agreement is None:
        return min_agreement
    return min(min_agreement, max(0.0, 1.0 - factor * (1.0 - floor_agreement)))


VARIANTS = ("fp32_torch", "int8_torch", "fp32_onnx", "int8_onnx")


def measured_runtimes(report: dict[str, Any]) -> list[str]:
    """The ONNX runtimes a report measured, in order (reports before runtimes existed: onnxruntime)."""
    return list((report.get("onnx_runtimes") or {}).get("by_runtime") or [DEFAULT_RUNTIME])


def _suffix(runtime: str) -> str:
    return "" if runtime == DEFAULT_RUNTIME else f"_{runtime}"


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pass/fail, for every runtime measured, of the INT8 ONNX accuracy drop against the tolerance
    and of its agreement with torch INT8 (keys ``accuracy_drop``/``parity`` on onnxruntime,
    ``accuracy_drop_<runtime>``/``parity_<runtime>`` on any other)."""
    metrics, tolerance = report["metrics"], report["tolerance_pp"]
    floor = report["parity"].get("noise_floor") or {}
    limit = parity_limit(
        report["min_agreement"],
        floor.get("int8_torch_vs_swapped_agreement"),
        report.get("parity_noise_factor", DEFAULT_NOISE_FACTOR),
    )
    result: dict[str, dict[str, Any]] = {}
    for runtime in measured_runtimes(report):
        int8 = variant_name("int8_onnx", runtime)
        drop_pp = 100.0 * (metrics["fp32_torch"]["accuracy"] - metrics[int8]["accuracy"])
        agreement = report["parity"][f"{int8}_vs_int8_torch_agreement"]
        result[f"accuracy_drop{_suffix(runtime)}"] = {
            "value_pp": round(drop_pp, 3),
            "limit_pp": tolerance,
            "passed": drop_pp <= tolerance,
        }
        result[f"parity{_suffix(runtime)}"] = {
            "value": agreement,
            "limit": round(limit, 6),
            "passed": agreement >= limit,
        }
    return result


def validated_runtimes(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a deploy directory records of each runtime its INT8 model was checked on: version,
    precision, settings, INT8 top-1, agreement with torch INT8, and whether both checks passed."""
    by_runtime = (report.get("onnx_runtimes") or {}).get("by_runtime") or {}
    result = {}
    for runtime in measured_runtimes(report):
        entry, suffix = by_runtime.get(runtime, {}), _suffix(runtime)
        parity, drop = report["checks"][f"parity{suffix}"], report["checks"][f"accuracy_drop{suffix}"]
        result[runtime] = {
            **{key: entry.get(key) for key in ("version", "precision", "settings")},
            "int8_accuracy": report["metrics"][variant_name("int8_onnx", runtime)]["accuracy"],
            "agreement_with_int8_torch": parity["value"],
            "passed": parity["passed"] and drop["passed"],
        }
    return result


def _calibration_line(calibration: dict[str, Any]) -> str:
    if not calibration.get("size"):
        return "- calibration: none (activations are quantized at run time)"
    return f"- calibration: {calibration['size']} samples, sha256 {calibration['fingerprint'][:16]}…"


def _noise_floor_line(report: dict[str, Any]) -> str:
    floor = report["parity"].get("noise_floor")
    if not floor:
        return (
            f"- parity noise floor: no kernel swap applies; fixed limit {100 * report['min_agreement']:.1f}%"
        )
    factor = report.get("parity_noise_factor", DEFAULT_NOISE_FACTOR)
    return (
        f"- parity noise floor: torch INT8 vs itself with {floor['swap']}: "
        f"{100 * floor['int8_torch_vs_swapped_agreement']:.2f}% agreement; limit = min({100 * report['min_agreement']:.1f}%, "
        f"1 − {factor:g} × floor disagreement)"
    )


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.1f} MB"


def _train_lines(report: dict[str, Any]) -> list[str]:
    """One line per training run behind the report (baseline / fine-tune, QAT)."""
    lines = []
    for name, run in (report.get("train") or {}).items():
        per_step = run.get("seconds_per_step")
        lines.append(
            f"- training ({name}): optimizer {run['optimizer']}, optimizer state "
            f"{_mb(run['optimizer_state_bytes'])}, peak memory {_mb(run['peak_memory_bytes'])} "
            f"({run['peak_memory_kind']}), {run['steps']} steps"
            + (f", {1000 * per_step:.0f} ms/step" if per_step else "")
        )
    return lines


def _variant_label(name: str, metrics: dict[str, Any], several_runtimes: bool) -> str:
    """``fp32 onnx`` alone; ``fp32 onnx (openvino, bf16)`` once several runtimes or a lowered
    precision are in the table, so each row says what ran it."""
    m = metrics[name]
    label = name.split("_onnx")[0] + " onnx" if "runtime" in m else name.replace("_", " ")
    if "runtime" in m and (several_runtimes or m.get("precision", "f32") != "f32"):
        label += f" ({m['runtime']}, {m['precision']})"
    return label


def _pass(check: dict[str, Any]) -> str:
    return "pass" if check["passed"] else "FAIL"


def _runtime_lines(report: dict[str, Any]) -> list[str]:
    """One line per runtime: its INT8 parity and accuracy checks."""
    checks_, lines = report["checks"], []
    runtimes = measured_runtimes(report)
    for runtime in runtimes:
        parity, drop = checks_[f"parity{_suffix(runtime)}"], checks_[f"accuracy_drop{_suffix(runtime)}"]
        where = f" on {runtime}" if len(runtimes) > 1 or runtime != DEFAULT_RUNTIME else ""
        lines += [
            f"- INT8 ONNX{where} vs INT8 torch top-1 agreement: {100 * parity['value']:.2f}% "
            f"(limit {100 * parity['limit']:.2f}%) — {_pass(parity)}",
            f"- accuracy drop{where}: {drop['value_pp']:.2f} pp (tolerance {report['tolerance_pp']} pp) — {_pass(drop)}",
        ]
    return lines


def runtime_table(report: dict[str, Any]) -> list[str]:
    """Per runtime: version, precision, settings, and interleaved-round latency of FP32 / INT8 ONNX
    at each batch size with the paired INT8 ratio over the first runtime."""
    section = report.get("onnx_runtimes")
    if not section:
        return []
    by_runtime = section["by_runtime"]
    first = next(iter(by_runtime))
    batches = list(next(iter(by_runtime.values()))["latency_ms"])
    header = ["runtime", "version", "float precision"]
    for b in batches:
        header += [f"b{b} ms FP32 / INT8", f"b{b} FP32/INT8"] + (
            [f"b{b} INT8 vs {first}"] if len(by_runtime) > 1 else []
        )
    lines = ["", "| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    for runtime, entry in by_runtime.items():
        cells = [runtime, entry["version"], entry["precision"]]
        for b in batches:
            ms, ratios = entry["latency_ms"][b], entry["ratios"][b]
            cells += [
                f"{ms['fp32_onnx']:.2f} / {ms['int8_onnx']:.2f}",
                f"{ratios['fp32_over_int8']['median']:.2f}×",
            ]
            if len(by_runtime) > 1:
                ratio = ratios.get(f"int8_onnx_over_{first}")
                cells.append(f"{ratio['median']:.2f}×" if ratio else "1.00×")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"latency: best of {section['rounds']} interleaved round medians of {section['repeats']} runs; ratios: "
        "median of per-round ratios. Settings: "
        + "; ".join(f"{rt} {entry['settings']}" for rt, entry in by_runtime.items()),
    ]
    return lines


def markdown_table(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    runtimes = measured_runtimes(report)
    several = len(runtimes) > 1
    onnx_names = [variant_name(kind, rt) for rt in runtimes for kind in ("fp32_onnx", "int8_onnx")]
    lines = [
        f"### {report['recipe']} ({report['method']})",
        "",
        "| variant | top-1 | Δ vs FP32 torch (pp) | latency ms (batch "
        f"{report['latency']['batch_size']}, {report['environment']['threads']} threads) | size MB |",
        "|---|---:|---:|---:|---:|",
    ]
    base = metrics["fp32_torch"]["accuracy"]
    for name in ("fp32_torch", "int8_torch", *onnx_names):
        m = metrics[name]
        delta = 100.0 * (m["accuracy"] - base)
        lines.append(
            f"| {_variant_label(name, metrics, several)} | {100 * m['accuracy']:.2f}% | {delta:+.2f} | "
            f"{m['latency_ms']:.2f} | {m['size_mb']:.2f} |"
        )
    fp32_size, int8_size = metrics[onnx_names[0]]["size_mb"], metrics[onnx_names[1]]["size_mb"]
    env = report["environment"]
    versions = f"onnxruntime {env['onnxruntime']}" + (
        f", openvino {env['openvino']}" if env.get("openvino") else ""
    )
    lines += [
        *runtime_table(report),
        "",
        *_runtime_lines(report),
        _noise_floor_line(report),
        f"- size ratio FP32/INT8 ONNX: {fp32_size / int8_size:.2f}×",
        _calibration_line(report["calibration"]),
        *_train_lines(report),
        f"- {env['cpu']}, torch {env['torch']}, {versions}, flags {', '.join(env['cpu_flags'])}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    import json

    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(out_dir / "report.md", markdown_table(report))
