"""Fallback rankings of ``qtk tune`` (``qtoolkit.tune.sensitivity.RANKINGS``) on a planted model.

The tiny dynamic model has two Linears fed by outlier-heavy inputs. Dynamic INT8 quantizes each
Linear's input per tensor over its whole range, so one feature at ±100·|x| pushes the step to
~2.4 and rounds the ordinary ±1 features away:

* ``hurt`` sees a ×100 outlier and decides the logits: quantizing it alone changes them most;
* ``decoy`` sees a ×10000 outlier (its own output is ruined: the lowest SQNR) but reaches the logits
  only through a 1e-4 gain, so its own effect is negligible;
* ``head`` reads ordinary activations.

So by construction own-effect ranks ``hurt`` first while SQNR ranks ``decoy`` first.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from qtoolkit.cli import main
from qtoolkit.errors import QtkError
from qtoolkit.recipe import load_recipe
from qtoolkit.tasks.base import PreparedTask, prepare_task, register_task
from qtoolkit.tune.sensitivity import check_ranking, kl_divergence, rank_modules

TASK = "tune-tiny-outliers"


class Planted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hurt, self.decoy, self.head = nn.Linear(16, 16), nn.Linear(16, 4), nn.Linear(16, 4)
        with torch.no_grad():  # the outlier feature barely enters the FP32 outputs
            self.hurt.weight[:, 0] *= 1e-3
            self.decoy.weight[:, 0] *= 1e-3
        self.register_buffer("gain", torch.tensor([100.0] + [1.0] * 15))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hurt(x * self.gain))
        return self.head(h) + 1e-4 * self.decoy(x * self.gain * 100)


def _batches(model: nn.Module, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(64, 16, generator=generator)
            out.append((x, model(x).argmax(1)))
    return out


@register_task(TASK)
def _prepare(recipe, cache_dir) -> PreparedTask:
    torch.manual_seed(0)
    model = Planted().eval()
    return PreparedTask(
        fp32_model=model,
        example_input=torch.randn(1, 16),
        calibration=[],
        calibration_info={},
        eval_batches=_batches(model, 2),
        val_batches=_batches(model, 3),
        val_info={"source": "tiny", "size": 128},
    )


def _recipe(tmp_path, method: str = "dynamic"):
    path = tmp_path / "planted.yaml"
    quantize = {"method": method, "embeddings": False} if method == "dynamic" else {"method": method}
    path.write_text(
        yaml.safe_dump(
            {
                "name": "planted",
                "task": TASK,
                "quantize": quantize,
                "evaluate": {"tolerance_pp": 100.0, "min_agreement": 0.0, "warmup": 1, "repeats": 3},
            }
        )
    )
    return path


def test_own_effect_ranks_the_planted_linear_first_where_sqnr_does_not(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    task = prepare_task(recipe, tmp_path)
    own = rank_modules(recipe, task, tmp_path, batches=2, ranking="own_effect")
    assert own[0].module == "hurt"
    kl = {r.module: r.value for r in own}
    assert kl["hurt"] > 10 * max(kl["head"], kl["decoy"])  # the planted one dominates
    assert {r.metric for r in own} == {"kl"} and own[0].to_dict()["kl"] == pytest.approx(kl["hurt"])
    assert [r.module for r in rank_modules(recipe, task, tmp_path, 2, "own_effect")] == [
        r.module for r in own
    ]
    sqnr = rank_modules(recipe, task, tmp_path, batches=2, ranking="sqnr")
    assert sqnr[0].module == "decoy"  # accumulated output error points at the wrong module


def test_kl_divergence_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).numpy()
    assert kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(logits, logits + 3.0) == pytest.approx(0.0, abs=1e-9)  # softmax is shift-free
    assert kl_divergence(logits, logits[::-1].copy()) > 0


def test_unknown_or_unsupported_ranking_is_one_line(tmp_path, capsys):
    with pytest.raises(QtkError, match="sqnr, own_effect"):
        check_ranking("entropy", "dynamic")
    code = main(
        [
            "tune",
            str(_recipe(tmp_path, "static")),
            "--tolerance",
            "1",
            "--ranking",
            "own_effect",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "own_effect works for dynamic only" in err
    assert not (tmp_path / "o").exists()


def test_tune_falls_back_in_own_effect_order(tmp_path):
    out = tmp_path / "out"
    args = ["tune", str(_recipe(tmp_path)), "--tolerance", "0", "--max-trials", "2", "--setting-trials", "1"]
    code = main([*args, "--ranking", "own_effect", "--out", str(out), "--cache", str(tmp_path / "c")])
    report = json.loads((out / "report.json").read_text())
    assert code == (0 if report["met"] else 1)
    assert report["fallback_ranking"] == {"name": "own_effect", "batches": 2}
    assert report["trials"][0]["phase"] == "plain" and not report["trials"][0]["meets"]
    assert report["ranking"][0]["module"] == "hurt" and "kl" in report["ranking"][0]
    assert report["trials"][1]["float_modules"] == ["hurt"]
    assert report["trials"][1]["val_accuracy"] > report["trials"][0]["val_accuracy"]
    assert "- fallback ranking: own_effect on 2 validation batches" in (out / "report.md").read_text()
