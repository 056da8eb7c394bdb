"""qtoolkit: quantize PyTorch models to deployable INT8 ONNX, and prove they are still accurate."""

__version__ = "0.1.0"
