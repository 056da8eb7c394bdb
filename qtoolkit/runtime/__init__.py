"""Running models: the foundation every stage may import (it imports no stage).

* :mod:`qtoolkit.runtime.onnx_runtimes` — the registry of ONNX runtimes (``onnxruntime``,
  ``openvino``): ``load_onnx(path, runtime, threads)`` -> a callable on numpy feeds (no torch);
* :mod:`qtoolkit.runtime.ort` — onnxruntime sessions, feeds and the ORT runner (no torch);
* :mod:`qtoolkit.runtime.openvino_rt` — OpenVINO's CPU plugin (the ``[openvino]`` extra; no torch);
* :mod:`qtoolkit.runtime.cpu` — CPU model and ISA flags (no torch);
* :mod:`qtoolkit.runtime.batches` — splitting batches into inputs and labels, and the one loop that
  collects logits of runners over batches (no torch);
* :mod:`qtoolkit.runtime.torch_runner` — device resolution and the torch runner.

A *runner* maps one batch of model inputs (a tensor, a tuple of tensors or a mapping of named
tensors) to logits as a numpy array. Runners live here, not in ``evaluate/``, because training
(a lower stage than evaluation) validates with the same runner, and the torch-free deploy path
opens its sessions here. This package imports nothing on import, so ``import qtoolkit.runtime.ort``
loads no torch.
"""
