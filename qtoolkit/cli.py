"""``qtk``: a thin command line over the Python API. ``python -m qtoolkit`` is the same program."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from qtoolkit.errors import QtkError

EXIT_CHECKS_FAILED, EXIT_USAGE = 1, 2
RUNTIME_NAMES = (
    "onnxruntime",
    "openvino",
)  # qtoolkit.runtime.onnx_runtimes.RUNTIMES (not imported: lean CLI)
# what a torch-free runtime install (README, "Deploy without torch") lacks
_FULL_INSTALL = frozenset({"torch", "torchvision", "onnx", "onnx_ir", "onnxscript", "yaml", "transformers"})


def _say(line: str) -> None:
    print(f"qtk: {line}", file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    import json

    from qtoolkit.pipeline import run_recipe
    from qtoolkit.recipe import load_recipe
    from qtoolkit.report.writer import markdown_table

    overrides = list(args.set or [])
    if args.runtime:  # --runtime replaces the recipe's evaluate.runtimes
        overrides.append(f"evaluate.runtimes={json.dumps(args.runtime)}")
    if args.strict_fp32:
        overrides.append("evaluate.strict_fp32=true")
    recipe = load_recipe(args.recipe, overrides)
    report = run_recipe(recipe, args.out, cache_dir=args.cache)
    print(markdown_table(report))
    print(f"artifacts and report.json in {args.out}")
    return 0 if report["passed"] else EXIT_CHECKS_FAILED


def _cmd_tune(args: argparse.Namespace) -> int:
    from qtoolkit.recipe import load_recipe
    from qtoolkit.tune import tune
    from qtoolkit.tune.report import summary

    recipe = load_recipe(args.recipe, args.set or [])
    report = tune(
        recipe,
        args.tolerance,
        args.out,
        max_trials=args.max_trials,
        time_budget_s=args.time_budget,
        seed=args.seed,
        cache_dir=args.cache,
        setting_trials=args.setting_trials,
        ranking=args.ranking,
        rank_batches=args.rank_batches,
        margin_pp=args.margin,
        judge=args.judge,
    )
    print(summary(report))
    print(f"tuned recipe, final/ artifacts and report.json in {args.out}")
    if not report["met"]:
        print(f"qtk tune: {report['message']}", file=sys.stderr)
        return EXIT_CHECKS_FAILED
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from qtoolkit.recipe import load_recipe

    for path in sorted(Path(args.dir).glob("*.yaml")):
        recipe = load_recipe(path)
        print(f"{path}: {recipe.description or recipe.name}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from qtoolkit.atomic import write_text_atomic
    from qtoolkit.peers.image_bench import bench_image_model, bench_runtimes, format_bench

    runtimes = bench_runtimes(args.runtime or ["onnxruntime"], _say)
    if not runtimes:
        return EXIT_USAGE
    results = bench_image_model(
        args.model,
        args.image_size,
        args.batch_sizes,
        args.threads,
        args.repeats,
        args.rounds,
        runtimes=runtimes,
        strict_fp32=args.strict_fp32,
    )
    print(format_bench(results))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    import json

    from qtoolkit.atomic import write_text_atomic
    from qtoolkit.peers.image_bench import bench_runtimes
    from qtoolkit.peers.zoo import ZOO_MODELS, format_zoo, run_zoo

    runtimes = bench_runtimes(args.runtime or ["onnxruntime"], _say)
    if not runtimes:
        return EXIT_USAGE
    results = run_zoo(
        args.models or ZOO_MODELS,
        threads=args.threads,
        rounds=args.rounds,
        repeats=args.repeats,
        batch_sizes=tuple(args.batch_sizes),
        parity_samples=args.parity_samples,
        runtimes=runtimes,
        strict_fp32=args.strict_fp32,
        progress=lambda name: print(f"qtk zoo: {name}", file=sys.stderr, flush=True),
    )
    table = format_zoo(results)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "zoo.md", table)
        write_text_atomic(out / "zoo.json", json.dumps(results, indent=2) + "\n")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from qtoolkit.analyze.run import analyze_recipe
    from qtoolkit.recipe import load_recipe

    result = analyze_recipe(load_recipe(args.recipe, args.set or []), args.out, args.batches, args.cache)
    print(result["table"] if args.all else "\n".join(result["table"].splitlines()[: 2 + args.top]))
    print(f"layerwise.md, layerwise.json, layerwise.png in {args.out}")
    return 0


def _cmd_compare_ort(args: argparse.Namespace) -> int:
    import json

    from qtoolkit.analyze.run import compare_ort_recipe
    from qtoolkit.atomic import write_text_atomic
    from qtoolkit.peers.ort_compare import format_comparison
    from qtoolkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set or [])
    results = compare_ort_recipe(recipe, tuple(args.ort_methods), args.work_dir, args.cache, args.rounds)
    print(format_comparison(results, recipe.name))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from qtoolkit.deploy.predict import predict

    results = predict(args.dir, args.texts, threads=args.threads, runtime=args.runtime)
    for text, result in zip(args.texts, results, strict=True):
        print(f"{result.label}\t{result.score:.3f}\t{text}")
    return 0


def _runtime_options(parser: argparse.ArgumentParser, help_text: str) -> None:
    from qtoolkit.runtime.onnx_runtimes import RUNTIMES

    parser.add_argument("--runtime", action="append", choices=list(RUNTIMES), help=help_text)
    parser.add_argument(
        "--strict-fp32", action="store_true", help="run float ops in FP32 only (OpenVINO: no bf16 on AMX)"
    )


def build_parser() -> argparse.ArgumentParser:
    from qtoolkit.runtime.onnx_runtimes import RUNTIMES

    parser = argparse.ArgumentParser(
        prog="qtk", description="Quantize PyTorch models to INT8 ONNX and verify them."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details and warnings")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a recipe end to end and write report.json/report.md")
    run.add_argument("recipe", help="recipe file (YAML), e.g. recipes/resnet18_fmnist_static.yaml")
    run.add_argument("--out", required=True, help="output directory for ONNX models and reports")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a recipe key, e.g. train.epochs=1"
    )
    run.add_argument(
        "--cache",
        default=None,
        help="cache directory for FP32 baselines (default $QTK_CACHE or ~/.cache/qtoolkit)",
    )
    _runtime_options(run, "ONNX runtime to evaluate on (repeatable; replaces evaluate.runtimes)")
    run.set_defaults(func=_cmd_run)

    tune = commands.add_parser(
        "tune",
        help="accuracy-aware tuning: settings, then float fallback, judged on INT8 ONNX on a validation split",
    )
    tune.add_argument("recipe", help="recipe file (YAML) with quantize.method static or dynamic")
    tune.add_argument(
        "--tolerance", type=float, required=True, metavar="PP",
        help="allowed validation accuracy drop of INT8 ONNX vs FP32 torch, in percentage points",
    )  # fmt: skip
    tune.add_argument(
        "--margin", type=float, default=0.0, metavar="PP",
        help="judge trials at a drop of at most tolerance - PP on validation, to allow for its sampling "
        "noise (default 0)",
    )  # fmt: skip
    tune.add_argument(
        "--judge", default="accuracy",
        help="which trial meeting the tolerance wins: accuracy = the first (least change; default), kl = "
        "run every setting trial and keep the lowest validation KL from FP32 (tells settings apart where "
        "the tolerance is a handful of validation samples)",
    )  # fmt: skip
    tune.add_argument("--max-trials", type=int, default=20, help="at most this many trials (default 20)")
    tune.add_argument(
        "--time-budget", type=float, default=None, metavar="S", help="stop starting trials after S s"
    )
    tune.add_argument(
        "--setting-trials", type=int, default=None, metavar="N",
        help="trials for observer/algorithm settings, the plain recipe included (default: half of --max-trials)",
    )  # fmt: skip
    tune.add_argument("--seed", type=int, default=0, help="seed of the search (same seed, same trials)")
    tune.add_argument(
        "--ranking",
        default="sqnr",
        help="fallback order: sqnr (per-layer SQNR, static and dynamic) or own_effect (dynamic: KL of the "
        "logits with only that module INT8); default sqnr",
    )
    tune.add_argument(
        "--rank-batches",
        type=int,
        default=2,
        help="validation batches the fallback ranking runs on (default 2)",
    )
    tune.add_argument("--out", required=True, help="directory for recipe_tuned.yaml, final/ and report.json")
    tune.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    tune.add_argument("--cache", default=None, help="cache directory (default $QTK_CACHE)")
    tune.set_defaults(func=_cmd_tune)

    predict = commands.add_parser(
        "predict", help="classify texts with a deploy directory (onnxruntime + tokenizers only)"
    )
    predict.add_argument("dir", help="deploy directory written by a text recipe (OUT/deploy)")
    predict.add_argument("texts", nargs="+", help="texts to classify")
    predict.add_argument("--threads", type=int, default=2)
    predict.add_argument(
        "--runtime", default="onnxruntime", choices=list(RUNTIMES), help="ONNX runtime (openvino: the extra)"
    )
    predict.set_defaults(func=_cmd_predict)

    recipes = commands.add_parser("recipes", help="list the recipes in a directory")
    recipes.add_argument("dir", nargs="?", default="recipes")
    recipes.set_defaults(func=_cmd_recipes)

    bench = commands.add_parser(
        "bench", help="latency of FP32/INT8 ONNX (qtoolkit and onnxruntime's quantizer) and torch"
    )
    bench.add_argument("--model", default="resnet18", help="registered image model (random weights)")
    bench.add_argument("--image-size", type=int, default=224)
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--repeats", type=int, default=50, help="timed runs per measurement")
    bench.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds: best round median per variant, ratios paired per round",
    )
    bench.add_argument("--json", default=None, help="also write the results as JSON to this file")
    _runtime_options(bench, "ONNX runtime to time the files on (repeatable; default onnxruntime)")
    bench.set_defaults(func=_cmd_bench)

    zoo = commands.add_parser(
        "zoo",
        help="torchvision classifiers (random init): export, parity, graph and latency vs ORT's quantizer",
    )
    zoo.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="torchvision model names, or tiny_vit tiny_swin tiny_convnext (64x64 configs; default: the zoo)",
    )
    zoo.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    zoo.add_argument("--repeats", type=int, default=20, help="timed runs per round")
    zoo.add_argument("--threads", type=int, default=2)
    zoo.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    zoo.add_argument("--parity-samples", type=int, default=64)
    zoo.add_argument("--out", default=None, help="directory for zoo.md and zoo.json")
    _runtime_options(zoo, "ONNX runtime to time the files on (repeatable; default onnxruntime)")
    zoo.set_defaults(func=_cmd_zoo)

    analyze = commands.add_parser("analyze", help="per-layer SQNR of a static recipe's INT8 model vs FP32")
    analyze.add_argument("recipe", help="recipe file (YAML) with quantize.method: static")
    analyze.add_argument("--out", required=True, help="directory for layerwise.md/.json/.png")
    analyze.add_argument("--batches", type=int, default=2, help="calibration batches to measure on")
    analyze.add_argument("--top", type=int, default=15, help="rows to print (worst first)")
    analyze.add_argument("--all", action="store_true", help="print every layer")
    analyze.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    analyze.add_argument("--cache", default=None, help="cache directory (default $QTK_CACHE)")
    analyze.set_defaults(func=_cmd_analyze)

    compare = commands.add_parser(
        "compare-ort", help="qtoolkit INT8 ONNX vs onnxruntime quantize_static: agreement, latency, size"
    )
    compare.add_argument("recipe", help="recipe file (YAML) with quantize.method: static")
    compare.add_argument(
        "--ort-methods", nargs="+", default=["minmax", "entropy", "percentile"],
        choices=["minmax", "entropy", "percentile"], help="onnxruntime calibration methods",
    )  # fmt: skip
    compare.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    compare.add_argument("--work-dir", default=None, help="keep the ONNX models here")
    compare.add_argument("--json", default=None, help="also write the results as JSON to this file")
    compare.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    compare.add_argument("--cache", default=None, help="cache directory (default $QTK_CACHE)")
    compare.set_defaults(func=_cmd_compare_ort)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="qtk: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return args.func(args)
    except QtkError as error:
        print(f"qtk: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as error:
        if error.name not in _FULL_INSTALL:
            raise
        print(
            f"qtk: error: qtk {args.command} needs {error.name}, which this install lacks (a runtime-only "
            "install runs qtk predict); install qtoolkit with its dependencies: pip install qtoolkit",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("qtk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
