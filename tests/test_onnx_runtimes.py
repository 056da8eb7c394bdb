"""The ONNX runtime seam: the registry, OpenVINO beside onnxruntime on the same INT8 file, precision
labels, per-runtime checks, and a recipe naming a runtime that is not installed."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from models_for_tests import StubbedNet, calibration_batches

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.parity import check_parity
from qtoolkit.export import export_int8_onnx
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig, quantize
from qtoolkit.report.writer import checks, markdown_table, validated_runtimes
from qtoolkit.runtime.onnx_runtimes import load_onnx, missing_reason, require_runtimes, variant_name


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    calibration = calibration_batches()
    config = StaticQuantConfig(observers=ObserverSpec(activation="minmax", reduce_range=False))
    quantized = quantize(
        StubbedNet().eval(), config, calibration=calibration, example_input=calibration[0][:1]
    )
    path = tmp_path_factory.mktemp("rt") / "int8.onnx"
    export_int8_onnx(quantized.int8_model, calibration[0][:1], path)
    return quantized.int8_model, path


def test_registry_refuses_unknown_and_names_the_install() -> None:
    with pytest.raises(QtkError, match="unknown ONNX runtime 'tensorrt'"):
        require_runtimes(["onnxruntime", "tensorrt"])
    assert require_runtimes(["onnxruntime", "onnxruntime"]) == ("onnxruntime",)
    assert missing_reason("onnxruntime") is None
    assert variant_name("int8_onnx", "onnxruntime") == "int8_onnx"
    assert variant_name("int8_onnx", "openvino") == "int8_onnx_openvino"


def test_onnxruntime_model_matches_torch_int8(int8_file) -> None:
    int8_model, path = int8_file
    batches = calibration_batches(3, (8, 3, 16, 16))
    parity = check_parity(int8_model, path, batches, runtime="onnxruntime")
    assert parity["agreement"] == 1.0 and parity["samples"] == 24
    assert parity["runtime"]["runtime"] == "onnxruntime" and parity["runtime"]["precision"] == "f32"


def test_openvino_runs_the_same_int8_file(int8_file) -> None:
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    int8_model, path = int8_file
    batches = calibration_batches(3, (8, 3, 16, 16))
    parity = check_parity(int8_model, path, batches, runtime="openvino", strict_fp32=True)
    assert parity["samples"] == 24 and parity["agreement"] >= 23 / 24, parity
    with torch.no_grad():
        scale = float(int8_model(batches[0]).abs().max())
    assert parity["max_abs_diff"] <= 0.05 * scale, (parity, scale)
    info = parity["runtime"]
    assert info["runtime"] == "openvino" and info["precision"] == "f32"  # strict_fp32 holds
    assert (
        info["settings"]["INFERENCE_NUM_THREADS"] == 2
        and info["settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    )

    ov_model, ort_model = load_onnx(path, "openvino", 1), load_onnx(path, "onnxruntime", 1)
    x = batches[0].numpy()
    np.testing.assert_allclose(ov_model.run(x), ort_model.run(x), atol=0.05 * scale)
    graph = ov_model.runtime_graph()
    integer_convs = sum(
        n for key, n in graph.items() if key.startswith("Convolution:") and key[-2:] in ("u8", "i8")
    )
    assert integer_convs == 2, graph  # both convolutions of the file run as integer kernels


def _report(ov_accuracy: float, ov_agreement: float) -> dict:
    metrics = {
        "fp32_torch": {"accuracy": 0.90, "latency_ms": 1.0, "size_mb": 4.0},
        "int8_torch": {"accuracy": 0.90, "latency_ms": 1.0, "size_mb": 1.0},
    }
    parity = {"samples": 1000, "noise_floor": None}
    for runtime, accuracy, agreement in (
        ("onnxruntime", 0.899, 0.999),
        ("openvino", ov_accuracy, ov_agreement),
    ):
        for kind in ("fp32_onnx", "int8_onnx"):
            name = variant_name(kind, runtime)
            metrics[name] = {
                "accuracy": accuracy,
                "latency_ms": 1.0,
                "size_mb": 1.0,
                "runtime": runtime,
                "precision": "bf16",
            }
        parity[f"{variant_name('int8_onnx', runtime)}_vs_int8_torch_agreement"] = agreement
    by_runtime = {
        rt: {"version": "1", "precision": "bf16" if rt == "openvino" else "f32", "settings": {},
             "latency_ms": {"1": {"fp32_onnx": 2.0, "int8_onnx": 1.0}},
             "ratios": {"1": {"fp32_over_int8": {"median": 2.0}, "int8_onnx_over_onnxruntime": {"median": 0.5}}}}
        for rt in ("onnxruntime", "openvino")
    }  # fmt: skip
    report = {
        "recipe": "r", "method": "static", "metrics": metrics, "parity": parity, "tolerance_pp": 0.5,
        "min_agreement": 0.995, "latency": {"batch_size": 1}, "calibration": {"size": 0},
        "onnx_runtimes": {"rounds": 3, "repeats": 5, "by_runtime": by_runtime},
        "environment": {"threads": 2, "cpu": "cpu", "torch": "t", "onnxruntime": "o", "openvino": "v", "cpu_flags": []},
    }  # fmt: skip
    report["checks"] = checks(report)
    report["passed"] = all(c["passed"] for c in report["checks"].values())
    return report


def test_every_runtime_is_held_to_the_gate() -> None:
    good = _report(0.898, 0.998)
    assert good["passed"] and set(good["checks"]) == {
        "accuracy_drop",
        "parity",
        "accuracy_drop_openvino",
        "parity_openvino",
    }
    low_accuracy, low_parity = _report(0.89, 0.998), _report(0.898, 0.99)
    assert not low_accuracy["checks"]["accuracy_drop_openvino"]["passed"] and not low_accuracy["passed"]
    assert not low_parity["checks"]["parity_openvino"]["passed"] and low_parity["checks"]["parity"]["passed"]
    assert validated_runtimes(low_parity)["openvino"]["passed"] is False
    assert validated_runtimes(low_parity)["onnxruntime"]["passed"] is True
    table = markdown_table(good)
    assert (
        "| fp32 onnx (openvino, bf16) |" in table
        and "| openvino | 1 | bf16 | 2.00 / 1.00 | 2.00× | 0.50× |" in table
    )


def test_old_reports_read_as_onnxruntime_only() -> None:
    report = _report(0.898, 0.998)
    old = copy.deepcopy(report)
    del old["onnx_runtimes"]
    assert set(checks(old)) == {"accuracy_drop", "parity"}


def test_recipe_asking_for_missing_openvino_is_one_line(tmp_path) -> None:
    code = 'import sys; sys.modules["openvino"] = None\nfrom qtoolkit.cli import main\nsys.exit(main(sys.argv[1:]))'
    out = tmp_path / "out"
    recipe = REPO / "recipes" / "resnet18_fmnist_static.yaml"
    args = [
        sys.executable,
        "-c",
        code,
        "run",
        str(recipe),
        "--out",
        str(out),
        "--set",
        "evaluate.runtimes=[onnxruntime, openvino]",
    ]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "qtk: error: ONNX runtime 'openvino' needs the openvino package, which is not installed: "
        'pip install -e ".[openvino]"'
    ]
    assert not out.exists()


def test_deploy_records_validated_runtimes(tmp_path) -> None:
    import json

    from qtoolkit.deploy import record_validation

    assert record_validation(tmp_path, {"onnxruntime": {}}) is False  # no deploy.json: nothing written
    (tmp_path / "deploy.json").write_text(json.dumps({"model": "model_int8.onnx"}))
    validated = validated_runtimes(_report(0.898, 0.99))
    assert record_validation(tmp_path, validated) is True
    meta = json.loads((tmp_path / "deploy.json").read_text())
    assert meta["model"] == "model_int8.onnx"
    assert meta["validated_runtimes"]["openvino"]["agreement_with_int8_torch"] == 0.99
    assert meta["validated_runtimes"]["openvino"]["passed"] is False


def test_benches_skip_openvino_without_vnni_in_one_line(monkeypatch) -> None:
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    from qtoolkit.peers import image_bench

    said: list[str] = []
    monkeypatch.setattr(image_bench, "cpu_has_vnni", lambda: False)
    assert image_bench.bench_runtimes(["onnxruntime", "openvino"], said.append) == ("onnxruntime",)
    assert len(said) == 1 and said[0].startswith("skipping openvino: this CPU has no AVX512-VNNI")
    monkeypatch.setattr(image_bench, "cpu_has_vnni", lambda: True)
    assert image_bench.bench_runtimes(["onnxruntime", "openvino"], said.append) == ("onnxruntime", "openvino")
