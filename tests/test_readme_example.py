"""The README's Python API example runs as written and its INT8 ONNX agrees with torch INT8."""

from __future__ import annotations

import os
import re

import pytest
from conftest import REPO


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README lost its Python example"
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="kept in float"):
        exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    agreement = float(re.search(r"agrees with torch INT8 on ([\d.]+)%", printed).group(1))
    assert agreement >= 95.0
    assert os.path.getsize("my_model_int8.onnx") < os.path.getsize("my_model_fp32.onnx")


def test_readme_dynamic_lstm_example_runs(tmp_path, monkeypatch, capsys):
    import torch
    from torch import nn

    import qtoolkit as qtk

    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "class Tagger" in b)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(block, "README.md", "exec"), {"torch": torch, "nn": nn, "qtk": qtk})
    printed = capsys.readouterr().out
    assert "'agreement': 1.0" in printed and os.path.exists("tagger_int8.onnx")
