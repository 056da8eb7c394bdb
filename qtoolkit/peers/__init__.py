"""Comparisons with peers: onnxruntime's own quantizer on the same FP32 ONNX, the same calibration
batches and the same eval data as qtoolkit (``qtk bench``, ``qtk compare-ort``, ``bench/``).

``ort_quantizer`` is the one public wrapper of ``onnxruntime.quantization``; ``image_bench`` and
``ort_compare`` build, quantize and export models and time them in interleaved rounds
(:func:`qtoolkit.evaluate.latency.interleaved_latency`).
"""
