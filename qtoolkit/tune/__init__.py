"""Accuracy-aware tuning (``qtk tune``): observer/algorithm settings, then float fallback of the most
sensitive modules, each judged on the exported INT8 ONNX on a validation split, within a budget."""

from qtoolkit.tune.run import tune
from qtoolkit.tune.search import TuneSettings
from qtoolkit.tune.sensitivity import RANKINGS, Ranking
from qtoolkit.tune.space import AXES, Axis, candidate_settings, register_axis

__all__ = [
    "AXES",
    "RANKINGS",
    "Axis",
    "Ranking",
    "TuneSettings",
    "candidate_settings",
    "register_axis",
    "tune",
]
