"""Moved to :mod:`qtoolkit.runtime.ort` (torch-free, importable from every stage); kept as an alias."""

from qtoolkit.runtime.ort import SLOW_FUSIONS, make_session, model_size_mb

__all__ = ["SLOW_FUSIONS", "make_session", "model_size_mb"]
