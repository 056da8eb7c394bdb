"""The deploy path runs without torch: import ``qtoolkit``/``qtoolkit.deploy`` and predict with torch
(and transformers) blocked, on a tiny BERT exported the way ``qtk run`` exports it.

Blocking works by ``sys.modules["torch"] = None`` in a fresh interpreter: any ``import torch``
then raises ImportError, as in an install without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO
from models_for_tests import save_tiny_bert

pytest.importorskip("transformers")

from qtoolkit.deploy import write_deploy_dir
from qtoolkit.export.dynamic_onnx import export_dynamic_int8_onnx
from qtoolkit.models.bert import load_classifier
from qtoolkit.quantize.dynamic import DynamicQuantConfig, quantize_dynamic
from qtoolkit.runtime.batches import logits_of
from qtoolkit.runtime.torch_runner import torch_runner
from qtoolkit.tasks.text_classification import load_encoder

TEXTS = ["the film was great fun", "an awful, dull movie!", "good", "bad bad bad 123 the film is dull"]
LABELS = ["neg", "mid", "pos"]

BLOCKED_RUN = textwrap.dedent(
    """
    import io, json, runpy, sys
    from contextlib import redirect_stdout
    for name in ("torch", "torchvision", "transformers", "onnx", "onnxscript", "onnx_ir"):
        sys.modules[name] = None  # importing any of them now raises ImportError
    import qtoolkit
    from qtoolkit.deploy import predict
    runtime, directory, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    results = predict(directory, texts, runtime=runtime)
    sys.argv = ["qtk", "predict", directory, *texts, "--runtime", runtime]
    out = io.StringIO()
    with redirect_stdout(out):
        try:
            runpy.run_module("qtoolkit", run_name="__main__")
        except SystemExit as exit:
            assert not exit.code, exit.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx") and sys.modules[m])
    print(json.dumps({"ids": [r.label_id for r in results], "cli": out.getvalue(), "loaded": loaded}))
    """
)


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lean")
    model_dir = save_tiny_bert(root / "model", num_labels=3, seed=0)
    encoder = load_encoder(model_dir, max_length=32)
    qmodel = quantize_dynamic(load_classifier(model_dir), DynamicQuantConfig())
    feeds = {k: torch.from_numpy(v) for k, v in encoder.encode(TEXTS[:2]).items()}
    result = export_dynamic_int8_onnx(qmodel, feeds, root / "model_int8.onnx")
    directory = write_deploy_dir(root / "deploy", result.path, encoder, LABELS)
    expected = logits_of(torch_runner(qmodel), encoder.batches(TEXTS)).argmax(-1).tolist()
    return directory, expected


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_without_torch(deploy_dir, runtime) -> None:
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    directory, expected = deploy_dir
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, runtime, str(directory), *TEXTS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []
    assert got["ids"] == expected  # the torch INT8 model's labels, predicted without torch
    lines = got["cli"].strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [LABELS[i] for i in expected]
    assert [line.split("\t")[2] for line in lines] == TEXTS


def test_torch_commands_say_what_is_missing(tmp_path) -> None:
    code = (
        'import sys; sys.modules["torch"] = None\nfrom qtoolkit.cli import main\nsys.exit(main(sys.argv[1:]))'
    )
    recipe = REPO / "recipes" / "resnet18_fmnist_static.yaml"
    args = [sys.executable, "-c", code, "run", str(recipe), "--out", str(tmp_path / "out")]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("qtk: error: qtk run needs torch") and "Traceback" not in proc.stderr


def test_blocking_really_blocks() -> None:
    code = 'import sys; sys.modules["torch"] = None\nimport qtoolkit\nqtoolkit.StaticQuantConfig'
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "torch" in proc.stderr  # the lazy names still need torch when used


def test_public_names_resolve_lazily() -> None:
    import qtoolkit
    from qtoolkit.quantize import quantize

    assert all(getattr(qtoolkit, name) is not None for name in qtoolkit.__all__)
    assert qtoolkit.quantize_model is quantize and qtoolkit.export.export_onnx is qtoolkit.export_onnx
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = qtoolkit.nope
