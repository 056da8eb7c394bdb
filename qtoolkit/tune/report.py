"""report.json and report.md of ``qtk tune``: every trial, the winner, test figures vs FP32 and plain PTQ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qtoolkit.atomic import write_text_atomic


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _setting(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def trials_table(report: dict[str, Any]) -> str:
    """Markdown table of every trial, in the order they ran."""
    lines = [
        "| # | phase | settings | float modules | val acc | drop pp | val KL ×1e4 | meets | latency ms (b1) "
        "| size MB | s |",
        "|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for t in report["trials"]:
        drop = "-" if t["drop_pp"] is None else f"{t['drop_pp']:.2f}"
        kl = "-" if t.get("val_kl") is None else f"{1e4 * t['val_kl']:.2f}"
        status = "yes" if t["meets"] else ("error" if t["error"] else "no")
        last = f" (+{t['float_modules'][-1]})" if t["float_modules"] else ""
        lines.append(
            f"| {t['index']} | {t['phase']} | {_setting(t['settings'])} | {len(t['float_modules'])}{last} "
            f"| {_pct(t['val_accuracy'])} | {drop} | {kl} | {status} | {t['latency_ms'] or '-'} "
            f"| {t['size_mb'] or '-'} | {t['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> str:
    """The few lines a user reads first: goal, winner, test accuracy vs FP32 and plain PTQ, speed."""
    test, winner, val = report["test"], report["winner"], report["validation"]
    speed = "; ".join(
        f"batch {b}: {s['speedup']['median']:.2f}x ({s['fp32_onnx_ms']} -> {s['int8_onnx_ms']} ms)"
        for b, s in report.get("speed", {}).items()
    )
    floats = ", ".join(winner["float_modules"]) or "none"
    order = report.get("fallback_ranking", {})
    ranked = (
        f"- fallback ranking: {order['name']} on {order['batches']} validation batches"
        f" ({len(report['ranking'])} modules ranked)\n"
        if order and report.get("ranking")
        else ""
    )
    return (
        f"## qtk tune: {report['recipe']}\n\n"
        f"{report['message']}.\n\n"
        f"- validation: {val.get('source')}, {val.get('size')} samples, FP32 torch {_pct(val['fp32_torch_accuracy'])}\n"
        f"- trials: {report['budget']['trials_run']} ({report['budget']['stopped']}), {report.get('seconds', '-')} s; "
        f"judged by {report.get('judge', 'accuracy')}\n"
        f"{ranked}"
        f"- winner: trial {winner['trial']}, {_setting(winner['settings'])}; float modules: {floats}\n"
        f"- test ({test['samples']} samples): FP32 torch {_pct(test['fp32_torch'])}, tuned INT8 ONNX "
        f"{_pct(test['int8_onnx'])} ({-test['drop_vs_fp32_pp']:+.2f} pp vs FP32), plain PTQ INT8 ONNX "
        f"{_pct(test['plain_ptq_int8_onnx'])} ({-test['plain_drop_vs_fp32_pp']:+.2f} pp); tuned vs plain "
        f"{test['gain_vs_plain_pp']:+.2f} pp\n"
        f"- INT8 ONNX speed-up over FP32 ONNX (paired, interleaved rounds): {speed or '-'}\n"
        f"- size: {test['fp32_onnx_size_mb']} MB FP32 ONNX, {test['int8_onnx_size_mb']} MB INT8 ONNX\n"
        f"- recipe `qtk run` reproduces: {report['tuned_recipe']}\n"
    )


def write_tune_report(report: dict[str, Any], out_dir: Path) -> None:
    """``report.json`` and ``report.md`` (summary, trials table) into ``out_dir``, each atomically."""
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", f"{summary(report)}\n### trials\n\n{trials_table(report)}")
