"""``qtk tune``: search order, budgets, fallback determinism, the winning recipe reproduced by
``qtk run``, and the "no trial meets the tolerance" path (best exported, exit 1).

A tiny task registered here keeps the static tests fast: a small FX conv net with random weights,
random images labelled by the FP32 model itself (FP32 accuracy 100%), so any INT8 error is a drop.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from qtoolkit.cli import main
from qtoolkit.errors import QtkError
from qtoolkit.recipe import QuantizeSection, load_recipe
from qtoolkit.tasks.base import PreparedTask, register_task
from qtoolkit.tune import Axis, candidate_settings, register_axis
from qtoolkit.tune.space import AXES

TASK = "tune-tiny-images"


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():  # no constant offsets: the label depends on the input
            for conv in (self.conv1, self.conv2, self.conv3):
                conv.bias.zero_()
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        y = nn.functional.adaptive_avg_pool2d(self.conv3(y), 2).flatten(1)
        return self.fc(y)


def _labelled(model: nn.Module, seed: int, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(64, 3, 8, 8, generator=generator)
            out.append((x, model(x).argmax(1)))
    return out


@register_task(TASK)
def _prepare_tiny(recipe, cache_dir) -> PreparedTask:
    torch.manual_seed(0)
    model = TinyNet().eval()
    calibration = [x for x, _ in _labelled(model, 1, 2)]
    return PreparedTask(
        fp32_model=model,
        example_input=calibration[0][:1],
        calibration=calibration,
        calibration_info={"size": 128, "fingerprint": "tiny"},
        eval_batches=_labelled(model, 2, 4),
        val_batches=_labelled(model, 3, 4),
        val_info={"source": "tiny", "size": 256},
    )


def _recipe(tmp_path, weight_bits: int = 8, observer: str = "minmax"):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-static",
                "task": TASK,
                "quantize": {
                    "method": "static",
                    "mode": "fx",
                    "activation_observer": observer,
                    "weight_bits": weight_bits,
                },
                "evaluate": {"tolerance_pp": 100.0, "min_agreement": 0.0, "warmup": 1, "repeats": 3},
            }
        )
    )
    return path


def test_space_reads_the_registries_and_starts_with_the_recipe(monkeypatch):
    from qtoolkit.quantize import qconfig

    monkeypatch.setitem(qconfig.ACTIVATION_OBSERVERS, "planted", qconfig.ACTIVATION_OBSERVERS["minmax"])
    settings = candidate_settings(
        QuantizeSection(activation_observer="minmax", weight_observer="per_channel")
    )
    assert settings[0] == {
        "bias_correction": False,
        "activation_observer": "minmax",
        "equalize": False,
        "weight_observer": "per_channel",
    }
    assert {**settings[0], "activation_observer": "planted"} in settings
    assert len(settings) == len(qconfig.ACTIVATION_OBSERVERS) * len(qconfig.WEIGHT_SCHEMES) * 2 * 2
    changes = [sum(s[k] != settings[0][k] for k in s) for s in settings]
    assert changes == sorted(changes)  # one change at a time before pairs
    dynamic = candidate_settings(QuantizeSection(method="dynamic", reduce_range=None))
    # dynamic PTQ: torch's min/max weight ranges only (per channel or per tensor), not mse_per_channel
    assert dynamic[0]["reduce_range"] is False and len(dynamic) == 3 * 2 * 2 * 2
    # the recipe's own setting first (smoothing off), then the likeliest winner: SmoothQuant at 0.85
    assert dynamic[0]["smoothing"] is None and _changed(dynamic)[0] == "smoothing"
    assert dynamic[1]["smoothing"] == 0.85
    assert {s["weight_observer"] for s in dynamic} == {"per_channel", "per_tensor"}
    with pytest.raises(QtkError, match="qat"):
        candidate_settings(QuantizeSection(method="qat"))


def _changed(settings: list[dict]) -> list[str]:
    """The key each one-change setting changes, in search order."""
    own = settings[0]
    return [next(k for k in s if s[k] != own[k]) for s in settings if sum(s[k] != own[k] for k in s) == 1]


def test_space_tries_the_accuracy_algorithms_cheap_first():
    import dataclasses

    from qtoolkit.recipe import AdaRoundSection, Recipe
    from qtoolkit.tune.trial import with_setting

    w8 = QuantizeSection(mode="fx", activation_observer="minmax")
    settings = candidate_settings(w8)
    assert "adaround" not in settings[0]  # learned rounding only below 8-bit weights
    assert settings[1] == {**settings[0], "bias_correction": True}  # the first trial after plain
    singles = _changed(settings)
    assert singles[0] == "bias_correction" and singles.index("equalize") < singles.index("weight_observer")

    w4 = dataclasses.replace(w8, weight_bits=4)
    singles = _changed(candidate_settings(w4))
    assert singles[0] == "bias_correction" and singles[-1] == "adaround"  # the expensive one last
    eager = candidate_settings(dataclasses.replace(w4, mode="eager"))  # eager refuses the FX passes
    assert set(eager[0]) == {"activation_observer", "weight_observer"}

    # A trial's recipe carries the setting: adaround on -> the recipe's own section, or the defaults.
    recipe = Recipe(name="r", quantize=w4)
    tried = with_setting(recipe, {"adaround": True, "equalize": True, "bias_correction": True}, ["fc"])
    assert tried.quantize.adaround == AdaRoundSection() and tried.quantize.equalize
    assert tried.quantize.bias_correction and tried.quantize.skip_modules == ["fc"]
    own = AdaRoundSection(iterations=7)
    recipe = Recipe(name="r", quantize=dataclasses.replace(w4, adaround=own, skip_modules=["conv1"]))
    assert candidate_settings(recipe.quantize)[0]["adaround"] is True
    assert with_setting(recipe, {"adaround": True}, ["fc"]).quantize.adaround == own
    off = with_setting(recipe, {"adaround": False}, ["fc"]).quantize
    assert off.adaround is None and off.skip_modules == ["conv1", "fc"]  # the recipe's own skips stay


def test_registered_axis_joins_the_space(monkeypatch):
    monkeypatch.setitem(AXES, "static", list(AXES["static"]))
    register_axis("static", Axis("reduce_range", lambda: (False, True), bool))
    settings = candidate_settings(QuantizeSection())
    assert {s["reduce_range"] for s in settings} == {False, True}


@pytest.mark.slow  # two tunes and a qtk run: ~40 s on a quiet machine
def test_tune_falls_back_deterministically_and_qtk_run_reproduces(tmp_path, capsys):
    recipe = _recipe(tmp_path, weight_bits=3)
    args = ["tune", str(recipe), "--tolerance", "0.5", "--max-trials", "3", "--cache", str(tmp_path / "c")]
    runs = []
    for name in ("a", "b"):
        code = main([*args, "--out", str(tmp_path / name)])
        runs.append((code, json.loads((tmp_path / name / "report.json").read_text())))
    (code_a, a), (_, b) = runs
    assert code_a == (0 if a["met"] else 1)
    trials = a["trials"]
    assert trials[0]["phase"] == "plain" and not trials[0]["meets"]  # 3-bit weights miss 0.5 pp
    fallback = [t for t in trials if t["phase"] == "fallback"]
    assert fallback, "the settings alone met a tolerance they should not"
    ranking = [r["module"] for r in a["ranking"]]
    for k, trial in enumerate(fallback, 1):  # cumulative, in ranking order (worst SQNR first)
        assert trial["float_modules"] == ranking[:k]
    assert [t["float_modules"] for t in b["trials"]] == [t["float_modules"] for t in trials]
    assert a["ranking"] == b["ranking"]
    for trial in trials:
        assert set(trial) >= {"settings", "val_accuracy", "latency_ms", "size_mb", "seconds"}
        assert trial["error"] is None and 0.0 <= trial["val_accuracy"] <= 1.0
    best = max(t["val_accuracy"] for t in trials)
    winner = trials[a["winner"]["trial"]]
    assert winner["meets"] or winner["val_accuracy"] == best
    assert a["test"]["plain_ptq_int8_onnx"] <= 1.0 and set(a["speed"]) == {"1", "8"}
    md = (tmp_path / "a" / "report.md").read_text()
    assert md.count("| fallback |") == len(fallback)

    # The written recipe is one `qtk run` reproduces: same settings, same INT8 ONNX test accuracy.
    tuned = load_recipe(tmp_path / "a" / "recipe_tuned.yaml")
    assert tuned.quantize.skip_modules == winner["float_modules"]
    final = json.loads((tmp_path / "a" / "final" / "report.json").read_text())
    capsys.readouterr()
    assert main(["run", str(tmp_path / "a" / "recipe_tuned.yaml"), "--out", str(tmp_path / "rerun")]) in (
        0,
        1,
    )
    rerun = json.loads((tmp_path / "rerun" / "report.json").read_text())
    assert rerun["metrics"]["int8_onnx"]["accuracy"] == final["metrics"]["int8_onnx"]["accuracy"]
    assert rerun["metrics"]["int8_onnx"]["accuracy"] == a["test"]["int8_onnx"]


@pytest.mark.slow  # two trials, the final qtk run and a rerun: ~25 s
def test_bias_correction_trial_meets_what_plain_misses_and_qtk_run_reproduces(tmp_path, capsys):
    # 3-bit weights: plain min-max loses ~32 pp on validation, bias correction ~21 pp (fixed seeds)
    recipe = _recipe(tmp_path, weight_bits=3)
    out = tmp_path / "out"
    args = ["tune", str(recipe), "--tolerance", "25", "--max-trials", "4", "--setting-trials", "3"]
    assert main([*args, "--out", str(out), "--cache", str(tmp_path / "c")]) == 0
    report = json.loads((out / "report.json").read_text())
    plain, corrected = report["trials"][:2]
    assert not plain["meets"] and plain["settings"]["bias_correction"] is False
    assert corrected["settings"] == {**plain["settings"], "bias_correction": True} and corrected["meets"]
    assert corrected["val_accuracy"] > plain["val_accuracy"]  # the pass ran in the trial
    assert report["winner"]["trial"] == 1 and len(report["trials"]) == 2 and not report["ranking"]
    tuned = load_recipe(out / "recipe_tuned.yaml")
    assert tuned.quantize.bias_correction and tuned.quantize.activation_observer == "minmax"
    final = json.loads((out / "final" / "report.json").read_text())
    assert final["quantization"]["config"]["bias_correction"] is True
    capsys.readouterr()
    main(
        [
            "run",
            str(out / "recipe_tuned.yaml"),
            "--out",
            str(tmp_path / "rerun"),
            "--cache",
            str(tmp_path / "c"),
        ]
    )
    rerun = json.loads((tmp_path / "rerun" / "report.json").read_text())
    assert rerun["metrics"]["int8_onnx"]["accuracy"] == report["test"]["int8_onnx"]
    assert report["test"]["gain_vs_plain_pp"] > 0


@pytest.mark.slow  # two trials and the final qtk run: ~20-30 s each
@pytest.mark.parametrize("goal", [["--tolerance", "0"], ["--tolerance", "100", "--margin", "100"]])
def test_no_trial_meets_the_tolerance_exports_the_best_and_exits_1(tmp_path, capsys, goal):
    # 2-bit weights drop well above 0 pp; a 100 pp tolerance less a 100 pp margin is the same goal
    recipe = _recipe(tmp_path, weight_bits=2)
    out = tmp_path / "out"
    code = main(["tune", str(recipe), *goal, "--max-trials", "2", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("qtk")]
    report = json.loads((out / "report.json").read_text())
    assert code == 1 and not report["met"]
    assert len(err) == 1 and err[0].startswith(f"qtk tune: no trial met the tolerance of {goal[1]} pp")
    assert report["margin_pp"] == (100.0 if "--margin" in goal else 0.0)
    assert all(t["drop_pp"] > 0 for t in report["trials"])
    assert len(report["trials"]) == 2 and report["budget"]["stopped"].startswith("trial budget")
    best = max(report["trials"], key=lambda t: t["val_accuracy"])
    assert report["winner"]["trial"] == best["index"]
    assert (out / "final" / "model_int8.onnx").is_file() and (out / "recipe_tuned.yaml").is_file()
    assert not list(out.glob(".qtk-staging-*"))


# full run only (~8 s): the other tune tests cover the trial loop in the fast subset
@pytest.mark.slow
def test_judge_kl_runs_every_setting_and_keeps_the_lowest_validation_kl(tmp_path, capsys):
    # A 100 pp tolerance: every trial meets it. By accuracy the first (plain) wins and the search
    # stops; by KL all three setting trials run and the one closest to FP32 on validation wins.
    recipe = _recipe(tmp_path)
    out = tmp_path / "out"
    args = ["tune", str(recipe), "--tolerance", "100", "--max-trials", "4", "--setting-trials", "3"]
    assert main([*args, "--judge", "kl", "--out", str(out), "--cache", str(tmp_path / "c")]) == 0
    report = json.loads((out / "report.json").read_text())
    trials = report["trials"]
    assert report["judge"] == "kl" and len(trials) == 3 and all(t["meets"] for t in trials)
    kls = [t["val_kl"] for t in trials]
    assert all(kl is not None and kl >= 0 for kl in kls) and len(set(kls)) > 1, kls
    assert report["winner"]["trial"] == kls.index(min(kls)) and report["winner"]["val_kl"] == min(kls)
    tuned = load_recipe(out / "recipe_tuned.yaml")
    winner = trials[report["winner"]["trial"]]
    assert tuned.quantize.bias_correction == winner["settings"]["bias_correction"]
    md = (out / "report.md").read_text()
    assert "val KL ×1e4" in md and "judged by kl" in md
    capsys.readouterr()
    assert (
        main(["tune", str(recipe), "--tolerance", "1", "--judge", "loss", "--out", str(tmp_path / "x")]) == 2
    )
    assert "--judge" in capsys.readouterr().err


@pytest.mark.parametrize("goal", [["--tolerance", "-1"], ["--tolerance", "1", "--margin", "-0.5"]])
def test_bad_tolerance_is_one_line(tmp_path, capsys, goal):
    code = main(["tune", str(_recipe(tmp_path)), *goal, "--out", str(tmp_path / "o")])
    assert code == 2 and goal[-2] in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_validation_holdout_is_disjoint_balanced_and_deterministic():
    import numpy as np

    from qtoolkit.data.calibration import balanced_indices, holdout_indices

    labels = np.repeat(np.arange(5), 40)
    calibration = balanced_indices(labels, 50, seed=0)
    val = holdout_indices(labels, 60, seed=0, exclude=calibration)
    assert not set(val) & set(calibration) and len(val) == 60
    assert np.bincount(labels[val]).tolist() == [12] * 5
    assert (holdout_indices(labels, 60, seed=0, exclude=calibration) == val).all()
    assert len(holdout_indices(labels, 10_000, seed=0, exclude=calibration)) == 150  # capped at the rest


@pytest.mark.slow  # fine-tunes a tiny BERT, then dynamic trials with ONNX exports
def test_dynamic_tune_falls_back_per_linear(tmp_path):
    pytest.importorskip("transformers")
    from test_text_pipeline import write_tiny_text_recipe

    recipe = write_tiny_text_recipe(
        tmp_path,
        "tiny-text",
        train="{max_steps: 30, batch_size: 16, lr: 0.001, optimizer: adamw, schedule: linear, warmup_steps: 2}",
        quantize="{method: dynamic}",
    )
    out = tmp_path / "out"
    args = ["tune", str(recipe), "--tolerance", "0", "--max-trials", "3", "--setting-trials", "1"]
    code = main([*args, "--out", str(out), "--cache", str(tmp_path / "cache")])
    report = json.loads((out / "report.json").read_text())
    assert code == (0 if report["met"] else 1)
    ranked = [r["module"] for r in report["ranking"]]
    if report["trials"][0]["meets"]:  # plain PTQ already lossless on validation: nothing to fall back
        assert len(report["trials"]) == 1
        return
    assert ranked and all("Linear" in r["kind"] or "Embedding" in r["kind"] for r in report["ranking"])
    fallback = [t for t in report["trials"] if t["phase"] == "fallback"]
    assert fallback[0]["float_modules"] == ranked[:1]
    tuned = load_recipe(out / "recipe_tuned.yaml")
    assert tuned.quantize.skip_modules == report["winner"]["float_modules"]
    final = json.loads((out / "final" / "report.json").read_text())
    kept = set(final["quantization"]["modules"])
    assert not kept & set(tuned.quantize.skip_modules)  # excluded Linears stayed float


def test_fallback_ranking_is_worst_sqnr_first_and_repeatable(tmp_path):
    from qtoolkit.tasks.base import prepare_task
    from qtoolkit.tune.sensitivity import rank_modules

    recipe = load_recipe(_recipe(tmp_path, weight_bits=3))
    task = prepare_task(recipe, tmp_path)
    first, second = (rank_modules(recipe, task, tmp_path) for _ in range(2))
    assert [r.module for r in first] == [r.module for r in second]
    assert {"conv1", "conv2", "conv3", "fc"} <= {r.module for r in first}
    assert [r.value for r in first] == sorted(r.value for r in first) and first[0].metric == "sqnr_db"


def test_dynamic_linears_are_ranked_full_range_ones_included():
    from qtoolkit.analyze.layerwise import layerwise_sqnr
    from qtoolkit.quantize.dynamic import DynamicQuantConfig, quantize_dynamic

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    batches = [(torch.randn(32, 8), torch.zeros(32))]
    for reduce_range in (False, True):  # False: qtoolkit's FullRangeDynamicLinear subclass
        int8 = quantize_dynamic(model, DynamicQuantConfig(reduce_range=reduce_range))
        rows = layerwise_sqnr(model, int8, batches)
        assert sorted(r.module for r in rows) == ["0", "2"] and all(r.sqnr_db > 10 for r in rows)
