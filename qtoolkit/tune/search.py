"""The search: settings first, then float fallback of the most sensitive modules, within a budget.

Order of trials (each judged on the exported INT8 ONNX, validation split; :mod:`qtoolkit.tune.trial`):

1. *plain*: the recipe as written (plain PTQ);
2. *settings*: the other settings of the method's axes (:mod:`qtoolkit.tune.space`), at most
   ``setting_trials`` trials with the plain one (default: half the trial budget, so that fallback
   always gets its share);
3. *fallback*: from the best setting so far, the modules ranked by ``ranking`` (SQNR, or each
   module's own effect on the logits; :mod:`qtoolkit.tune.sensitivity`) go to float one at a
   time, cumulatively: trial k keeps the k worst modules in float.

The search stops at the first trial that meets the tolerance (the least change that does), or when
the trial or time budget is spent. The winner is that trial; when none meets it, the trial with the
highest validation accuracy (ties: the earlier, i.e. the smaller change).

``judge="kl"`` changes one thing: the settings phase runs all its trials even after one meets the
tolerance, and of the trials that meet it the one with the lowest validation KL from FP32 wins
(ties: the earlier). On a split where a tolerance of a few tenths of a point is a handful of
samples, plain PTQ often "meets" it by chance; the KL of every logit tells the settings apart.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.metrics import accuracy, predictions
from qtoolkit.quantize.static import resolve_mode
from qtoolkit.recipe import Recipe
from qtoolkit.tasks.base import PreparedTask
from qtoolkit.tune.sensitivity import rank_modules
from qtoolkit.tune.space import candidate_settings
from qtoolkit.tune.trial import Trial, run_trial, val_reference, with_setting

JUDGES = ("accuracy", "kl")  # what ranks the trials that meet the tolerance


@dataclass(frozen=True)
class TuneSettings:
    """Goal and budget of a tuning run."""

    tolerance_pp: float  # allowed validation drop of INT8 ONNX vs FP32 torch, percentage points
    margin_pp: float = 0.0  # a trial meets the goal at drop ≤ tolerance − margin (validation is a sample)
    max_trials: int = 20
    time_budget_s: float | None = None  # checked before each trial
    seed: int = 0  # torch / numpy / random seeds of the search
    sensitivity_batches: int = 2  # validation batches the fallback ranking runs on
    ranking: str = "sqnr"  # fallback order, a name in qtoolkit.tune.sensitivity.RANKINGS
    latency_repeats: int = 10  # per-trial batch-1 latency (a ranking figure)
    max_fallback: int | None = None  # at most this many modules in float (None: no limit)
    setting_trials: int | None = None  # trials for plain + settings (None: half the budget, rounded up)
    judge: str = "accuracy"  # among trials meeting the goal: the first (accuracy) or the lowest val KL (kl)

    def __post_init__(self) -> None:
        if self.max_trials < 1:
            raise QtkError(f"--max-trials must be at least 1, not {self.max_trials}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise QtkError(f"--time-budget must be positive seconds, not {self.time_budget_s}")
        if self.sensitivity_batches < 1:
            raise QtkError(f"--rank-batches must be at least 1, not {self.sensitivity_batches}")
        if self.setting_trials is not None and self.setting_trials < 1:
            raise QtkError(f"--setting-trials must be at least 1, not {self.setting_trials}")
        if self.tolerance_pp < 0:
            raise QtkError(
                f"--tolerance must be a non-negative drop in percentage points, not {self.tolerance_pp}"
            )
        if self.margin_pp < 0:
            raise QtkError(f"--margin must be non-negative percentage points, not {self.margin_pp}")
        if self.judge not in JUDGES:
            raise QtkError(f"--judge must be one of {', '.join(JUDGES)}, not {self.judge!r}")

    @property
    def threshold_pp(self) -> float:
        """The validation drop a trial may have: tolerance less the margin."""
        return self.tolerance_pp - self.margin_pp


@dataclass
class SearchResult:
    fp32_val_accuracy: float
    trials: list[Trial]
    winner: Trial
    ranking: list[dict[str, object]] = field(default_factory=list)  # fallback order with its figure
    stopped: str = ""  # why the search ended

    @property
    def met(self) -> bool:
        return self.winner.meets


def _better(a: Trial, b: Trial, judge: str = "accuracy") -> Trial:
    """The better of two trials (``a`` is the earlier): meeting the goal, then (both meeting, judge
    ``kl``) the lower validation KL, else the higher validation accuracy."""
    if b.val_accuracy is None:
        return a
    if a.val_accuracy is None:
        return b
    if a.meets != b.meets:
        return a if a.meets else b
    if judge == "kl" and a.meets and a.val_kl is not None and b.val_kl is not None:
        return b if b.val_kl < a.val_kl else a
    return b if b.val_accuracy > a.val_accuracy else a


class _Budget:
    def __init__(self, settings: TuneSettings) -> None:
        self.settings, self.started, self.used = settings, time.perf_counter(), 0

    def exhausted(self) -> str:
        if self.used >= self.settings.max_trials:
            return f"trial budget ({self.settings.max_trials}) spent"
        limit = self.settings.time_budget_s
        if limit is not None and time.perf_counter() - self.started >= limit:
            return f"time budget ({limit:g} s) spent"
        return ""


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def search(
    recipe: Recipe, task: PreparedTask, settings: TuneSettings, work_dir: Path, cache_dir: Path
) -> SearchResult:
    """Run the trials (module docstring); INT8 ONNX files of trial i are ``work_dir/trial_<i>.onnx``."""
    if task.val_batches is None:
        raise QtkError(f"{recipe.source}: task {recipe.task!r} has no validation split; qtk tune needs one")
    _seed(settings.seed)
    # the axes that apply depend on the mode the model resolves to (auto -> eager with QuantStubs)
    section = dataclasses.replace(recipe.quantize, mode=resolve_mode(task.fp32_model, recipe.quantize.mode))
    candidates = candidate_settings(section)
    reference = val_reference(task)
    fp32_val = accuracy(predictions(reference.logits["fp32"]), reference.labels)
    budget, trials = _Budget(settings), []
    progress = tqdm(total=settings.max_trials, desc="tune", unit="trial", dynamic_ncols=True)

    def attempt(phase: str, setting: dict, floats: list[str]) -> Trial:
        trial = Trial(len(trials), phase, dict(setting), list(floats))
        progress.set_postfix_str(f"{phase} {len(floats)} float" if floats else phase)
        run_trial(trial, recipe, task, work_dir / f"trial_{trial.index}.onnx", fp32_val, settings.threshold_pp,
                  cache_dir, settings.latency_repeats, reference.logits["fp32"])  # fmt: skip
        trials.append(trial)
        budget.used += 1
        progress.update()
        return trial

    share = settings.setting_trials or -(-settings.max_trials // 2)  # the rest is left to fallback

    def plan() -> Iterator[tuple[str, dict, list[str]]]:
        yield "plain", candidates[0], []
        for setting in candidates[1:share]:
            yield "settings", setting, []

    best, stopped, ranking = None, "", []
    try:
        for phase, setting, floats in plan():
            stopped = budget.exhausted()
            if stopped or (best is not None and best.meets and settings.judge != "kl"):
                break
            trial = attempt(phase, setting, floats)
            best = trial if best is None else _better(best, trial, settings.judge)
        if not stopped and best is not None and not best.meets and best.val_accuracy is not None:
            base = best.settings
            progress.set_postfix_str(f"ranking modules ({settings.ranking})")
            rows = rank_modules(
                with_setting(recipe, base), task, cache_dir, settings.sensitivity_batches, settings.ranking
            )
            ranking = [r.to_dict() for r in rows]
            limit = settings.max_fallback if settings.max_fallback is not None else len(rows)
            floats: list[str] = []
            for row in rows[:limit]:
                stopped = budget.exhausted()
                if stopped or best.meets:
                    break
                floats.append(row.module)
                best = _better(best, attempt("fallback", base, floats), settings.judge)
    finally:
        progress.close()
    if best is None or best.val_accuracy is None:
        errors = "; ".join(t.error or "" for t in trials[:3])
        raise QtkError(f"{recipe.source}: no tuning trial produced an INT8 model ({errors})")
    if not stopped:
        stopped = "tolerance met" if best.meets else "search space exhausted"
    return SearchResult(fp32_val, trials, best, ranking, stopped)
