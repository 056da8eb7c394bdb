"""Dynamic INT8 BERT on Rotten Tomatoes: accuracy, agreement, size and speed, in one run.

    python bench/bert_dynamic.py                      # MiniLM-L6, cached fine-tune, 2 threads
    python bench/bert_dynamic.py --variants           # also torch INT8 accuracy of other configs
    python bench/bert_dynamic.py --compare-sdpa       # also time the sdpa-attention trace

Measures on the same seeded test split and the same batches (64, padded to the longest):
FP32 torch, torch dynamic INT8, FP32 ONNX, our INT8 ONNX, and onnxruntime's own
``quantize_dynamic`` of the FP32 ONNX (the peer). Latency is seq = max length (128) at batch 1 and 8, same process,
same thread count, models measured in interleaved rounds. The table shows each model's best median
over rounds; a speed-up is the median over rounds of the ratio of the two models' medians in the same
round (paired, so that slow phases of the host cancel), with its range over rounds.
ONNX models are timed twice: in qtoolkit's sessions (``SLOW_FUSIONS`` skipped) and in sessions with
ORT's default fusions. Writes ``OUT/results.json`` and ``OUT/deploy/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit.atomic import write_text_atomic
from qtoolkit.data.text import load_rotten_tomatoes, stratified_split
from qtoolkit.deploy import predict, write_deploy_dir
from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.evaluate.metrics import mcnemar
from qtoolkit.export import export_onnx, onnx_export
from qtoolkit.export.dynamic_onnx import export_dynamic_int8_onnx
from qtoolkit.models.bert import (
    FineTuneConfig,
    fine_tune_cached,
    load_encoder,
)
from qtoolkit.peers.ort_quantizer import ort_quantize_dynamic
from qtoolkit.quantize.dynamic import DynamicQuantConfig, quantize_dynamic
from qtoolkit.report.environment import collect_environment
from qtoolkit.runtime.batches import logits_of
from qtoolkit.runtime.ort import SLOW_FUSIONS, make_session, model_size_mb, ort_runner
from qtoolkit.runtime.torch_runner import torch_runner

ORT_DEFAULTS = "@ort_default_session"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", default="none", choices=["none", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    parser.add_argument("--reduce-range", action="store_true", help="7-bit activations (torch default)")
    parser.add_argument("--exclude", nargs="*", default=[], help="module name patterns kept in float")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--compare-sdpa",
        action="store_true",
        help="also export with the model's sdpa attention and time those files in the same rounds",
    )
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--out", default="runs/bert_dynamic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    splits = stratified_split(load_rotten_tomatoes(), seed=args.seed)
    ft = FineTuneConfig(
        steps=args.steps, lr=args.lr, warmup_steps=args.warmup, max_length=args.max_length,
        precision=args.precision, seed=args.seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    model, ft_dir, cached = fine_tune_cached(args.model, splits.train, splits.fingerprint, ft)
    print(f"fine-tuned model: {ft_dir} ({'cache' if cached else f'{time.perf_counter() - t0:.0f} s'})")
    encoder = load_encoder(ft_dir, args.max_length)
    texts, labels = splits.test.texts, np.asarray(splits.test.labels)

    qconfig = DynamicQuantConfig(
        per_channel=not args.per_tensor, reduce_range=args.reduce_range, exclude=tuple(args.exclude)
    )
    qmodel = quantize_dynamic(model, qconfig)

    def torch_logits(module: torch.nn.Module) -> np.ndarray:
        return logits_of(torch_runner(module), encoder.batches(texts))

    logits = {"fp32_torch": torch_logits(model), "int8_torch": torch_logits(qmodel)}
    # Noise floor for parity: torch's own INT8 model with only its attention kernel swapped. Float
    # rounding differences flip a few dynamic activation roundings, and 6 layers amplify them.
    kernel = qmodel.config._attn_implementation
    other = "sdpa" if kernel == "eager" else "eager"
    qmodel.set_attn_implementation(other)
    swapped = torch_logits(qmodel)
    qmodel.set_attn_implementation(kernel)
    noise_floor = {
        "kernels": f"{kernel} vs {other}",
        "agreement": float((swapped.argmax(-1) == logits["int8_torch"].argmax(-1)).mean()),
        "max_abs_logit_diff": float(np.abs(swapped - logits["int8_torch"]).max()),
    }

    example = {k: torch.from_numpy(v) for k, v in encoder.encode(texts[:2]).items()}
    paths = {"fp32_onnx": out / "model_fp32.onnx", "int8_onnx": out / "model_int8.onnx"}
    export_onnx(model, example, paths["fp32_onnx"])
    export_dynamic_int8_onnx(qmodel, example, paths["int8_onnx"], metadata={"quant": qconfig.to_dict()})
    extra_paths = {}
    if args.compare_sdpa:  # what tracing with eager attention saves, timed in the same rounds
        extra_paths = {
            "fp32_onnx_sdpa": out / "model_fp32_sdpa.onnx",
            "int8_onnx_sdpa": out / "model_int8_sdpa.onnx",
        }
        with mock.patch.object(onnx_export, "_eager_attention", contextlib.nullcontext):
            export_onnx(model, example, extra_paths["fp32_onnx_sdpa"])
            export_dynamic_int8_onnx(qmodel, example, extra_paths["int8_onnx_sdpa"])
    paths["ort_peer"] = ort_quantize_dynamic(paths["fp32_onnx"], out / "model_ort_dynamic.onnx")
    sessions = {
        name: make_session(path, threads=args.threads) for name, path in (paths | extra_paths).items()
    }
    default_sessions = {
        name: make_session(path, threads=args.threads, disabled_optimizers=()) for name, path in paths.items()
    }
    for name, session in sessions.items():
        logits[name] = logits_of(ort_runner(session), encoder.batches(texts))
    for name, session in default_sessions.items():  # fusions change float rounding, hence predictions
        logits[name + ORT_DEFAULTS] = logits_of(ort_runner(session), encoder.batches(texts))

    preds = {name: value.argmax(-1) for name, value in logits.items()}
    accuracy = {name: float((pred == labels).mean()) for name, pred in preds.items()}
    agreement = float((preds["int8_onnx"] == preds["int8_torch"]).mean())
    sizes = {name: model_size_mb(path) for name, path in paths.items()}

    vocab = model.config.vocab_size
    latency: dict[str, dict[str, float]] = {}
    per_round: dict[str, dict[str, list[float]]] = {}
    for batch in (1, 8):
        feeds = encoder.full_length_batch(batch, encoder.max_length, vocab)
        tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
        calls = {name: (lambda s=session, f=feeds: s.run(None, f)) for name, session in sessions.items()}
        # the same files in sessions with ORT's own default fusions (qtoolkit skips SLOW_FUSIONS)
        calls.update({f"{name}{ORT_DEFAULTS}": (lambda s=session, f=feeds: s.run(None, f))
                      for name, session in default_sessions.items()})  # fmt: skip
        calls["fp32_torch"] = lambda f=tfeeds: model(**f)
        calls["int8_torch"] = lambda f=tfeeds: qmodel(**f)
        with torch.no_grad():
            repeats = 10 if batch == 8 else 20
            medians = interleaved_latency(calls, rounds=args.rounds, warmup=3, repeats=repeats)
        per_round[f"batch{batch}"] = medians
        latency[f"batch{batch}"] = best_of_rounds(medians)

    variants = {}
    if args.variants:
        for label, config in {
            "per_tensor_reduce_range (torch default)": DynamicQuantConfig(
                per_channel=False, reduce_range=True
            ),
            "per_channel_reduce_range": DynamicQuantConfig(reduce_range=True),
            "per_channel_full_range": DynamicQuantConfig(),
            "per_channel_full_range_float_classifier": DynamicQuantConfig(exclude=("classifier",)),
        }.items():
            variant_logits = torch_logits(quantize_dynamic(model, config))
            variants[label] = float((variant_logits.argmax(-1) == labels).mean())

    deploy = write_deploy_dir(out / "deploy", paths["int8_onnx"], encoder, splits.label_names,
                              extra={"quant": qconfig.to_dict(), "split": splits.manifest()})  # fmt: skip
    examples = ["A gorgeous, witty and deeply moving film.", "Tedious, overlong and badly acted."]
    predictions = [p.to_dict() for p in predict(deploy, examples)]

    speedup = {k: paired_ratio(v, "fp32_onnx", "int8_onnx") for k, v in per_round.items()}
    peer_speedup = {k: paired_ratio(v, "fp32_onnx", "ort_peer") for k, v in per_round.items()}
    sdpa_speedup = {
        k: {
            "int8_vs_fp32_sdpa_traced": paired_ratio(v, "fp32_onnx_sdpa", "int8_onnx_sdpa"),
            "fp32_eager_vs_sdpa_traced": paired_ratio(v, "fp32_onnx_sdpa", "fp32_onnx"),
            "int8_eager_vs_sdpa_traced": paired_ratio(v, "int8_onnx_sdpa", "int8_onnx"),
        }
        for k, v in per_round.items()
        if "fp32_onnx_sdpa" in v
    }
    default_speedup = {
        k: {
            name: paired_ratio(v, f"fp32_onnx{ORT_DEFAULTS}", f"{name}{ORT_DEFAULTS}")
            for name in ("int8_onnx", "ort_peer")
        }
        for k, v in per_round.items()
    }
    checks = {
        "fp32_torch_accuracy>=0.80": accuracy["fp32_torch"] >= 0.80,
        "int8_onnx_drop<=1.0pp": accuracy["fp32_torch"] - accuracy["int8_onnx"] <= 0.010,
        "agreement_with_torch_int8>=99%": agreement >= 0.99,
        "size_ratio>=3.5": sizes["fp32_onnx"] / sizes["int8_onnx"] >= 3.5,
        "speedup_batch1>=1.9": speedup["batch1"]["median"] >= 1.9,
        "speedup_batch8>=1.9": speedup["batch8"]["median"] >= 1.9,
        "accuracy>=ort_peer": accuracy["int8_onnx"] >= accuracy["ort_peer"],
        "accuracy>=ort_peer (ORT default session)": accuracy["int8_onnx" + ORT_DEFAULTS]
        >= accuracy["ort_peer" + ORT_DEFAULTS],
    }
    versus_peer = {
        session: mcnemar(preds["int8_onnx" + session] == labels, preds["ort_peer" + session] == labels)
        for session in ("", ORT_DEFAULTS)
    }
    report = {
        "environment": collect_environment(args.threads),
        "split": splits.manifest(),
        "fine_tune": {"dir": str(ft_dir), "config": ft.to_dict(), "cached": cached},
        "quant_config": qconfig.to_dict(),
        "speedup_sdpa_traced": sdpa_speedup,
        "accuracy": accuracy,
        "agreement_int8_onnx_vs_int8_torch": agreement,
        "max_abs_logit_diff_int8_onnx_vs_int8_torch": float(
            np.abs(logits["int8_onnx"] - logits["int8_torch"]).max()
        ),
        "int8_torch_attention_kernel_noise_floor": noise_floor,
        "size_mb": sizes,
        "size_ratio_fp32_over_int8": sizes["fp32_onnx"] / sizes["int8_onnx"],
        "latency_ms_seq128": latency,
        "latency_ms_seq128_per_round": per_round,
        "speedup_int8_onnx_vs_fp32_onnx": speedup,
        "speedup_ort_peer_vs_fp32_onnx": peer_speedup,
        "session_disabled_optimizers": list(SLOW_FUSIONS),
        "int8_onnx_vs_ort_peer_mcnemar": {
            session or "qtoolkit_session": v for session, v in versus_peer.items()
        },
        "speedup_with_ort_default_session": default_speedup,
        "variants_int8_torch_accuracy": variants,
        "example_predictions": predictions,
        "checks": checks,
    }
    write_text_atomic(out / "results.json", json.dumps(report, indent=2, default=str) + "\n")

    print(f"split {splits.sizes()} sha256 {splits.fingerprint[:16]}…  threads {args.threads}")
    print(f"{'model':<12}{'accuracy':>10}{'size MB':>10}{'b1 ms':>9}{'b8 ms':>9}")
    for name in ("fp32_torch", "int8_torch", "fp32_onnx", "int8_onnx", "ort_peer"):
        size = f"{sizes[name]:.1f}" if name in sizes else "-"
        b1, b8 = latency["batch1"][name], latency["batch8"][name]
        print(f"{name:<12}{accuracy[name] * 100:>9.2f}%{size:>10}{b1:>9.2f}{b8:>9.2f}")
    for key in [name + ORT_DEFAULTS for name in ("fp32_onnx", "int8_onnx", "ort_peer")] + list(extra_paths):
        b1, b8 = latency["batch1"][key], latency["batch8"][key]
        print(f"{key:<32}{accuracy[key] * 100:>9.2f}%{b1:>9.2f}{b8:>9.2f}")
    for session, test in versus_peer.items():
        print(f"INT8 ONNX vs ORT peer{session or ' (qtoolkit session)'}: only ours right {test['only_a']}, "
              f"only peer right {test['only_b']}, McNemar exact p = {test['p_value']:.2f}")  # fmt: skip
    print(f"agreement INT8 ONNX vs torch INT8: {agreement * 100:.2f}%  (max |Δlogit| "
          f"{report['max_abs_logit_diff_int8_onnx_vs_int8_torch']:.2e})")  # fmt: skip
    print(f"noise floor, torch INT8 {noise_floor['kernels']} attention: agreement "
          f"{noise_floor['agreement'] * 100:.2f}%  (max |Δlogit| {noise_floor['max_abs_logit_diff']:.2e})")  # fmt: skip
    print(f"size FP32/INT8 ONNX: {report['size_ratio_fp32_over_int8']:.2f}x")
    for key in ("batch1", "batch8"):
        ours, peer = speedup[key], peer_speedup[key]
        print(f"speed-up vs FP32 ONNX {key}: ours {ours['median']:.2f}x ({ours['min']:.2f}-{ours['max']:.2f})   "
              f"ort quantize_dynamic {peer['median']:.2f}x ({peer['min']:.2f}-{peer['max']:.2f})")  # fmt: skip
        ours, peer = default_speedup[key]["int8_onnx"], default_speedup[key]["ort_peer"]
        print(f"  same files, ORT default session: ours {ours['median']:.2f}x ({ours['min']:.2f}-{ours['max']:.2f})   "
              f"ort quantize_dynamic {peer['median']:.2f}x ({peer['min']:.2f}-{peer['max']:.2f})")  # fmt: skip
        for label, ratio in sdpa_speedup.get(key, {}).items():
            print(f"  {label}: {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})")
    for label, value in variants.items():
        print(f"variant {label}: torch INT8 accuracy {value * 100:.2f}%")
    print("predict:", [(p["label"], round(p["score"], 3)) for p in predictions])
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")


if __name__ == "__main__":
    main()
