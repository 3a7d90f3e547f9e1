"""In-context learning, measured: few-shot accuracy vs k for a GPT trained on `builtin:icl`, a 1-layer model of
the same width beside it, and the induction probes over training steps (the phase change).

Each model is trained by genloom's Trainer (`train_lm`, the same code as `genloom train lm --data builtin:icl`)
for a fixed time budget, with several seeds; accuracies are given as the mean and the range over seeds. The
phase change is read off metrics.jsonl: the first validation at which the mapping gain (loss on first-seen minus
repeated outputs of fresh name -> letter mappings) exceeds half of its final value, when that final value shows
a lookup (PHASE_MIN_GAIN); the same for the repeated-stretch induction gain (first minus second copy of a
repeated stretch of validation text) beside it.

Two more figures test what the mapping accuracy comes from: chance (a uniform guess among the output
letters the prompt shows) and the k = 8 accuracy by how many lines back the nearest example of the query's name
is. A model doing the lookup is right at every distance; one that reads the answer off fixed distances from the
query (what a 1-layer model did while every line had the same width) is right only for the last line or two.

Usage: python benchmarks/icl.py [--minutes 10] [--seeds 2] [--n 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import print_table, set_threads

from genloom.data.icl import ICL_FAMILIES, FewShotPrompt, few_shot_prompts
from genloom.eval.icl import few_shot_accuracy, few_shot_correct
from genloom.models.gpt import GPT
from genloom.registry import load_language_model
from genloom.tokenizers import Tokenizer
from genloom.train.config import TrainConfig
from genloom.train.lm import DataSpec, train_lm
from genloom.train.metrics import read_metrics

SHOTS = [0, 1, 2, 4, 8]
DISTANCES = ("1", "2", "3", "4+")  # lines back from the query to the nearest example of its name
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


# A lookup has formed when the probe gains this much: a first-seen output costs ~ln 20 = 3 nats (a guess among the
# letters not used yet), a looked-up one ~0. A 1-layer model's guess among the last lines' outputs gains ~1 nat.
PHASE_MIN_GAIN = 2.0


def phase_step(rows: list[dict[str, float]], probe: str) -> int | None:
    """The first validation step at which `probe` passes half its final value (None unless the final value is over
    PHASE_MIN_GAIN nats: no lookup formed)."""
    final = rows[-1][probe]
    return next((int(r["step"]) for r in rows if final > PHASE_MIN_GAIN and r[probe] > final / 2), None)


def lines_back(item: FewShotPrompt) -> str:
    """How many lines before the query the nearest example with the query's name is, as a DISTANCES bucket."""
    *examples, query = item.prompt.split("\n")
    back = next(d for d, line in enumerate(reversed(examples), 1) if line[:-1] == query)
    return str(back) if back < 4 else "4+"


def chance(items: list[FewShotPrompt]) -> float:
    """The accuracy of a uniform guess among the distinct output letters each prompt shows."""
    return statistics.mean(1 / len({line[-1] for line in item.prompt.split("\n")[:-1]}) for item in items)


def mapping_by_distance(model: GPT, tokenizer: Tokenizer, n: int, seed: int) -> dict[str, tuple[int, int]]:
    """(right, prompts) per DISTANCES bucket for the k = 8 mapping prompts, scored as `few_shot_accuracy` does."""
    items = few_shot_prompts("mapping", 8, n, seed)
    counts = {bucket: (0, 0) for bucket in DISTANCES}
    for item, correct in zip(items, few_shot_correct(model, tokenizer, items), strict=True):
        bucket = lines_back(item)
        right, total = counts[bucket]
        counts[bucket] = (right + correct, total + 1)
    return counts


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
                run["by_distance"] = mapping_by_distance(model, tokenizer, 4 * args.n, seed)
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

    print(f"\nMapping at k = 8 ({4 * args.n} prompts per seed), % right by how many lines back the nearest example "
          f"of the query's name is (right / prompts, seeds pooled); chance: a uniform guess among the output letters "
          f"shown, {100 * chance(few_shot_prompts('mapping', 8, 4 * args.n, 0)):.0f} %:\n")
    rows = []
    for n_layers in (2, 1):
        cells = []
        for bucket in DISTANCES:
            right = sum(r["by_distance"][bucket][0] for r, _ in results[n_layers])  # type: ignore[index]
            total = sum(r["by_distance"][bucket][1] for r, _ in results[n_layers])  # type: ignore[index]
            cells.append(f"{100 * right / max(total, 1):.0f} ({right} / {total})")
        rows.append([f"{n_layers}-layer", *cells])
    print_table(["model", *(f"{d} back" for d in DISTANCES)], rows)

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
