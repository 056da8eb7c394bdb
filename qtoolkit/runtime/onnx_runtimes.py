"""The registry of ONNX runtimes: load an ONNX file with N threads -> a callable on numpy feeds.

Every stage that runs an ONNX file (evaluation, parity, benches, the zoo, deploy) opens it through
:func:`load_onnx`, naming the runtime: ``onnxruntime`` (the default, CPU execution provider) or
``openvino`` (the optional ``[openvino]`` extra). A loaded model says what it really ran:
:attr:`OnnxModel.info` holds the runtime's version, its settings and the float precision of its
non-integer ops (OpenVINO runs FP32 graphs in bf16 on CPUs with AMX unless told ``strict_fp32``).

No torch here, and neither runtime is imported before a model is loaded with it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from qtoolkit.errors import QtkError

DEFAULT_RUNTIME = "onnxruntime"


@dataclass(frozen=True)
class RuntimeSpec:
    """A runtime: the package it needs, the qtoolkit module that loads with it, how to install it."""

    name: str
    package: str  # importable name of the runtime's Python package
    module: str  # qtoolkit module with ``load(path, threads, strict_fp32) -> OnnxModel`` and ``version()``
    install: str


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("onnxruntime", "onnxruntime", "qtoolkit.runtime.ort", 'pip install "onnxruntime>=1.20"'),
        RuntimeSpec("openvino", "openvino", "qtoolkit.runtime.openvino_rt", 'pip install -e ".[openvino]"'),
    )
}


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX file opened by one runtime.

    ``infer`` maps a feed (input name -> numpy array) to the model's first output (the logits);
    ``info`` records ``runtime``, ``version``, ``settings`` and ``precision`` (the float precision
    its non-integer ops run in); ``runtime_graph`` (when the runtime can say) counts the executed
    graph's compute nodes by ``"type:precision"``.
    """

    runtime: str
    input_names: tuple[str, ...]
    infer: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    info: dict[str, Any]
    handle: Any = field(default=None, compare=False, repr=False)  # the runtime's own session object
    runtime_graph: Callable[[], dict[str, int]] | None = field(default=None, compare=False, repr=False)

    def feed(self, inputs: Any) -> dict[str, np.ndarray]:
        """The feed for one batch (a mapping by name, a tuple by position, or one array)."""
        from qtoolkit.runtime.ort import feed_by_names

        return feed_by_names(self.input_names, inputs)

    def run(self, inputs: Any) -> np.ndarray:
        """Runner protocol: one batch of inputs -> logits."""
        return self.infer(self.feed(inputs))

    def call(self, inputs: Any) -> Callable[[], object]:
        """A zero-argument call on ``inputs``, the feed built once (for timing)."""
        feed = self.feed(inputs)
        return lambda: self.infer(feed)


def missing_reason(name: str) -> str | None:
    """None when runtime ``name`` can run here, else one line saying why not and what to do."""
    spec = RUNTIMES.get(name)
    if spec is None:
        return f"unknown ONNX runtime {name!r}; choose from {', '.join(RUNTIMES)}"
    try:
        found = importlib.util.find_spec(spec.package) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked) has no spec
        found = False
    if not found:
        return (
            f"ONNX runtime {name!r} needs the {spec.package} package, which is not installed: {spec.install}"
        )
    return None


def require_runtimes(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` (duplicates dropped, order kept) after checking each can run here; QtkError if not."""
    names = tuple(dict.fromkeys(names))
    if not names:
        raise QtkError(f"no ONNX runtime chosen; name at least one of {', '.join(RUNTIMES)}")
    for name in names:
        reason = missing_reason(name)
        if reason is not None:
            raise QtkError(reason)
    return names


def available_runtimes(names: Iterable[str], report: Callable[[str], None] | None = None) -> tuple[str, ...]:
    """The runtimes of ``names`` that can run here; each other one is reported as one line and skipped."""
    kept = []
    for name in dict.fromkeys(names):
        reason = missing_reason(name)
        if reason is None:
            kept.append(name)
        elif report is not None:
            report(f"skipping {name}: {reason}")
    return tuple(kept)


def _backend(name: str) -> Any:
    reason = missing_reason(name)
    if reason is not None:
        raise QtkError(reason)
    return importlib.import_module(RUNTIMES[name].module)


def load_onnx(
    path: str | os.PathLike[str], runtime: str = DEFAULT_RUNTIME, threads: int = 2, strict_fp32: bool = False
) -> OnnxModel:
    """Open the ONNX file at ``path`` with ``runtime`` on ``threads`` CPU threads.

    ``strict_fp32`` forbids the runtime to lower float ops below FP32 (OpenVINO's
    ``INFERENCE_PRECISION_HINT=f32``; onnxruntime's CPU provider never lowers them).
    """
    return _backend(runtime).load(path, threads, strict_fp32)


@cache
def runtime_version(name: str) -> str | None:
    """The installed version of runtime ``name`` (None when it is not installed)."""
    if missing_reason(name) is not None:
        return None
    return str(_backend(name).version())


def variant_name(kind: str, runtime: str) -> str:
    """Report key of an ONNX variant (``fp32_onnx``, ``int8_onnx``, …) run on ``runtime``: the bare
    kind on onnxruntime (the keys reports have always had), ``kind_runtime`` on any other."""
    return kind if runtime == DEFAULT_RUNTIME else f"{kind}_{runtime}"
