"""In-context learning, measured: few-shot accuracy vs k for a GPT trained on `builtin:icl`, a 1-layer model of
the same width beside it, and the induction probes over training steps (the phase change).

Each model is trained by genloom's Trainer (`train_lm`, the same code as `genloom train lm --data builtin:icl`)
for a fixed time budget, with several seeds; accuracies are given as the mean and the range over seeds. The
phase change is read off metrics.jsonl: the first validation at which the mapping gain (loss on first-seen minus
repeated outputs of fresh symbol mappings) exceeds half of its final value; the same for the repeated-stretch
induction gain (first minus second copy of a repeated stretch of validation text) beside it.

Usage: python benchmarks/icl.py [--minutes 10] [--seeds 2] [--n 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import print_table, set_threads

from genloom.data.icl import ICL_FAMILIES
from genloom.eval.icl import few_shot_accuracy
from genloom.registry import load_language_model
from genloom.train.config import TrainConfig
from genloom.train.lm import DataSpec, train_lm
from genloom.train.metrics import read_metrics

SHOTS = [0, 1, 2, 4, 8]
WIDTH = {"d_model": 64, "n_heads": 4, "context_length": 256}


def train(out: Path, n_layers: int, minutes: float, seed: int) -> dict[str, object]:
    config = TrainConfig(out_dir=str(out), max_steps=100_000, max_minutes=minutes, batch_size=16, lr=3e-3,
                         min_lr=3e-4, warmup_steps=100, weight_decay=0.1, eval_interval=200, eval_batches=4,
                         device="cpu", progress=False, seed=seed)
    _, result = train_lm(DataSpec(data="builtin:icl", tokenizer="char"), "tiny", config,
                         {**WIDTH, "n_layers": n_layers})
    rows = [r for r in read_metrics(out) if "induction_gain" in r]
    return {"steps": result.step, "rows": rows, "phase_step": phase_step(rows, "mapping_gain"),
            "stretch_phase_step": phase_step(rows, "induction_gain"), "val_loss": result.val_loss}


def phase_step(rows: list[dict[str, float]], probe: str) -> int | None:
    """The first validation step at which `probe` passes half its final value (None unless that is > 0.5 nats)."""
    final = rows[-1][probe]
    return next((int(r["step"]) for r in rows if final > 0.5 and r[probe] > final / 2), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of each model")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n", type=int, default=100, help="prompts per family and k")
    args = parser.parse_args()
    set_threads()
    results: dict[int, list[tuple[dict[str, object], dict[str, dict[int, float]]]]] = {2: [], 1: []}
    with tempfile.TemporaryDirectory() as tmp:
        for n_layers in (2, 1):
            for seed in range(args.seeds):
                out = Path(tmp) / f"l{n_layers}-s{seed}"
                run = train(out, n_layers, args.minutes, seed)
                model, tokenizer = load_language_model(out)
                accuracy = few_shot_accuracy(model, tokenizer, ICL_FAMILIES, SHOTS, n=args.n, seed=seed)
                results[n_layers].append((run, accuracy))
                print(f"{n_layers}-layer seed {seed}: {run['steps']} steps, val loss {run['val_loss']:.3f}, "
                      f"phase change at step {run['phase_step']}", flush=True)

    def cell(n_layers: int, family: str, k: int) -> str:
        values = [100 * acc[family][k] for _, acc in results[n_layers]]
        return f"{statistics.mean(values):.0f} ({min(values):.0f}-{max(values):.0f})"

    print(f"\nFew-shot exact-match accuracy, % (mean and range over {args.seeds} seeds, {args.n} prompts each), "
          f"{args.minutes:g} min of training per model:\n")
    rows = []
    for family in ICL_FAMILIES:
        for n_layers in (2, 1):
            rows.append([family, f"{n_layers}-layer", *(cell(n_layers, family, k) for k in SHOTS)])
    print_table(["family", "model", *(f"k={k}" for k in SHOTS)], rows)

    print("\nInduction probe and ICL score over training (seed 0):\n")
    for n_layers in (2, 1):
        run = results[n_layers][0][0]
        print_table(["step", "mapping gain", "repeated-stretch gain", "icl score", "val loss"], [
            [str(r["step"]), f"{r['mapping_gain']:.2f}", f"{r['induction_gain']:.2f}", f"{r['icl_score']:.3f}",
             f"{r['val_loss']:.3f}"]
            for r in run["rows"]  # type: ignore[attr-defined]
        ])
        phases = [r["phase_step"] for r, _ in results[n_layers]]
        stretch = [r["stretch_phase_step"] for r, _ in results[n_layers]]
        print(f"{n_layers}-layer: phase change (mapping gain past half its final value) at steps {phases}; by the "
              f"repeated-stretch gain {stretch}\n")


if __name__ == "__main__":
    main()
