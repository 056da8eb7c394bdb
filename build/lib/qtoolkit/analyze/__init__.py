"""Diagnostics of quantized models (per-layer SQNR, ``qtk analyze``)."""

from qtoolkit.analyze.layerwise import LayerSQNR, format_table, layerwise_sqnr, plot_sqnr

__all__ = ["LayerSQNR", "format_table", "layerwise_sqnr", "plot_sqnr"]
