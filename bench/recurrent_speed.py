"""Speed check of dynamic INT8 LSTM/GRU exports (random weights; dynamic-task owns the real bench).

    python bench/recurrent_speed.py                        # LSTM and GRU, batch 1 and 8, seq 64
    python bench/recurrent_speed.py --cells gru --rounds 5

Model: Embedding 20k×256 → 2-layer LSTM/GRU 512 → Linear(2) on the last step (FIELD_NOTES'
recurrent anchor). Variants in the same interleaved rounds, 2 threads: FP32 ONNX, qtoolkit INT8
ONNX (``export_int8_onnx``) and onnxruntime's ``quantize_dynamic`` of the FP32 ONNX. A speed-up is
the median over rounds of the per-round ratio (range in brackets).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit import DynamicQuantConfig, export_int8_onnx, export_onnx, quantize_model
from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.peers.ort_quantizer import ort_quantize_dynamic
from qtoolkit.runtime.ort import make_session, model_size_mb


class RecurrentClassifier(nn.Module):
    """Embedding → LSTM/GRU → Linear on the last time step."""

    def __init__(self, cell: str, vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embed(input_ids))
        return self.head(y[:, -1])


def run(cell: str, args: argparse.Namespace, work: Path) -> None:
    torch.manual_seed(0)
    model = RecurrentClassifier(cell, args.vocab, args.embed, args.hidden, args.layers).eval()
    example = {"input_ids": torch.randint(0, args.vocab, (2, 16))}
    paths = {name: work / f"{cell}_{name}.onnx" for name in ("fp32", "qtoolkit", "ort")}
    export_onnx(model, example, paths["fp32"])
    export_int8_onnx(quantize_model(model, DynamicQuantConfig()), example, paths["qtoolkit"])
    ort_quantize_dynamic(paths["fp32"], paths["ort"])
    sessions = {name: make_session(path, args.threads) for name, path in paths.items()}
    sizes = ", ".join(f"{name} {model_size_mb(path):.1f} MB" for name, path in paths.items())
    print(f"\n{cell.upper()} {args.layers}x{args.hidden}, seq {args.seq}, {args.threads} threads; {sizes}")
    for batch in args.batch_sizes:
        ids = np.random.default_rng(batch).integers(0, args.vocab, (batch, args.seq))

        feeds = {"input_ids": ids}
        per_round = interleaved_latency(
            {name: partial(session.run, None, feeds) for name, session in sessions.items()},
            rounds=args.rounds,
            warmup=3,
            repeats=args.repeats,
        )
        best = best_of_rounds(per_round)
        ratios = {name: paired_ratio(per_round, "fp32", name) for name in ("qtoolkit", "ort")}
        print(
            f"  batch {batch}: "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in best.items())
            + "; speed-up over FP32 ONNX: "
            + ", ".join(f"{n} {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" for n, r in ratios.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=20000)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as work:
        for cell in args.cells:
            run(cell, args, Path(work))


if __name__ == "__main__":
    main()
