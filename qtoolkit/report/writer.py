"""report.json and report.md: the table a user reads, and the record a regression test checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtoolkit.atomic import write_text_atomic

DEFAULT_NOISE_FACTOR = 2.0


def parity_limit(min_agreement: float, floor_agreement: float | None, factor: float) -> float:
    """Least top-1 agreement INT8 ONNX must reach with torch INT8: ``min_agreement``, relaxed to
    ``1 − factor · (1 − floor_agreement)`` when torch INT8 disagrees with itself under a kernel swap
    (``qtoolkit.evaluate.noise_floor``) on more inputs than ``min_agreement`` allows."""
    if floor_agreement is None:
        return min_agreement
    return min(min_agreement, max(0.0, 1.0 - factor * (1.0 - floor_agreement)))


VARIANTS = ("fp32_torch", "int8_torch", "fp32_onnx", "int8_onnx")


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pass/fail of the accuracy drop against the tolerance and of ONNX-vs-torch INT8 parity."""
    metrics, tolerance = report["metrics"], report["tolerance_pp"]
    drop_pp = 100.0 * (metrics["fp32_torch"]["accuracy"] - metrics["int8_onnx"]["accuracy"])
    agreement = report["parity"]["int8_onnx_vs_int8_torch_agreement"]
    floor = report["parity"].get("noise_floor") or {}
    limit = parity_limit(
        report["min_agreement"],
        floor.get("int8_torch_vs_swapped_agreement"),
        report.get("parity_noise_factor", DEFAULT_NOISE_FACTOR),
    )
    return {
        "accuracy_drop": {
            "value_pp": round(drop_pp, 3),
            "limit_pp": tolerance,
            "passed": drop_pp <= tolerance,
        },
        "parity": {
            "value": agreement,
            "limit": round(limit, 6),
            "passed": agreement >= limit,
        },
    }


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


def markdown_table(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    fp32_size = metrics["fp32_onnx"]["size_mb"]
    lines = [
        f"### {report['recipe']} ({report['method']})",
        "",
        "| variant | top-1 | Δ vs FP32 torch (pp) | latency ms (batch "
        f"{report['latency']['batch_size']}, {report['environment']['threads']} threads) | size MB |",
        "|---|---:|---:|---:|---:|",
    ]
    base = metrics["fp32_torch"]["accuracy"]
    for name in VARIANTS:
        m = metrics[name]
        delta = 100.0 * (m["accuracy"] - base)
        lines.append(
            f"| {name.replace('_', ' ')} | {100 * m['accuracy']:.2f}% | {delta:+.2f} | {m['latency_ms']:.2f} | {m['size_mb']:.2f} |"
        )
    checks_ = report["checks"]
    lines += [
        "",
        f"- INT8 ONNX vs INT8 torch top-1 agreement: {100 * report['parity']['int8_onnx_vs_int8_torch_agreement']:.2f}% "
        f"(limit {100 * checks_['parity']['limit']:.2f}%) — {'pass' if checks_['parity']['passed'] else 'FAIL'}",
        _noise_floor_line(report),
        f"- accuracy drop: {checks_['accuracy_drop']['value_pp']:.2f} pp (tolerance {report['tolerance_pp']} pp) — "
        f"{'pass' if checks_['accuracy_drop']['passed'] else 'FAIL'}",
        f"- size ratio FP32/INT8 ONNX: {fp32_size / metrics['int8_onnx']['size_mb']:.2f}×",
        _calibration_line(report["calibration"]),
        *_train_lines(report),
        f"- {report['environment']['cpu']}, torch {report['environment']['torch']}, "
        f"onnxruntime {report['environment']['onnxruntime']}, flags {', '.join(report['environment']['cpu_flags'])}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    import json

    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(out_dir / "report.md", markdown_table(report))
