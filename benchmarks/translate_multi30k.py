"""Multi30k translation on 2 CPU cores: Transformer vs LSTM (with and without attention), en->de, multi-task.

Every model trains under the same recipe and a wall-clock budget (validation with BLEU included in it):
shared BPE (8000) learned on the training pairs, 4096-token length-bucketed batches, label smoothing 0.1,
inverse-sqrt schedule, best/ chosen by greedy BLEU on 500 validation sentences. Then best/ translates
test_2016_flickr with beam 4 (alpha 0.6) and sacreBLEU scores it (13a tokens, detokenized output).

    python benchmarks/translate_multi30k.py                      # every run, then the decoding-speed table
    python benchmarks/translate_multi30k.py --runs transformer lstm --minutes 30

Results go to runs/bench-multi30k/<run>/result.json; the tables are printed at the end (README has them).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import print_table, set_threads, shared_file

from genloom.data.parallel import add_task_prefix, load_parallel, task_tag
from genloom.eval.bleu import LENGTH_BUCKETS
from genloom.eval.translation import evaluate_translation
from genloom.generate.translate import translate
from genloom.registry import load_translation_model
from genloom.train.config import TrainConfig
from genloom.train.translate import train_translation

OUT = Path("runs/bench-multi30k")
BLEU_SENTENCES = 500


@dataclass
class Run:
    name: str
    family: str  # seq2seq | lstm
    preset: str
    directions: tuple[tuple[str, str], ...]  # one direction, or several for a multi-task model
    minutes: float
    attention: bool = True


RUNS = {
    "transformer": Run("transformer", "seq2seq", "transformer-small", (("de", "en"),), 35),
    "lstm": Run("lstm", "lstm", "lstm-small", (("de", "en"),), 35),
    "lstm-noattn": Run("lstm-noattn", "lstm", "lstm-small", (("de", "en"),), 15, attention=False),
    "en-de": Run("en-de", "seq2seq", "transformer-small", (("en", "de"),), 10),
    "multitask": Run("multitask", "seq2seq", "transformer-small", (("de", "en"), ("en", "de"), ("fr", "en")), 15),
}


def multi30k(split: str, src: str, tgt: str) -> list[tuple[str, str]]:
    return list(load_parallel(shared_file(f"multi30k/{split}.{src}.gz"), shared_file(f"multi30k/{split}.{tgt}.gz")))


def split_pairs(run: Run, split: str) -> list[tuple[str, str]]:
    """The split's pairs; a multi-task model sees every direction, each source led by its `<src-tgt>` tag
    (shuffled, so that the validation sentences scored by BLEU during training cover every direction)."""
    if len(run.directions) == 1:
        return multi30k(split, *run.directions[0])
    pairs = [p for src, tgt in run.directions for p in add_task_prefix(multi30k(split, src, tgt), task_tag(src, tgt))]
    random.Random(0).shuffle(pairs)
    return pairs


def train_and_test(run: Run, minutes: float | None) -> dict[str, object]:
    budget = run.minutes if minutes is None else minutes
    out = OUT / run.name
    cfg = TrainConfig(
        out_dir=str(out), max_steps=10**9, max_minutes=budget, lr=1e-3, min_lr=0.0, warmup_steps=300,
        schedule="inverse_sqrt", weight_decay=0.0, eval_interval=150, eval_batches=20, keep_last=1,
        best_metric="bleu", progress=False, seed=1, overwrite=True,
    )
    started = time.perf_counter()
    model, _, result = train_translation(
        split_pairs(run, "train"), split_pairs(run, "val"), run.family, run.preset, cfg,
        model_overrides={} if run.attention else {"attention": False}, bleu_sentences=BLEU_SENTENCES,
    )
    train_minutes = (time.perf_counter() - started) / 60
    params = sum(p.numel() for p in model.parameters())
    best = load_translation_model(out / "best")
    tests = {}
    for src, tgt in run.directions:
        pairs = multi30k("test_2016_flickr", src, tgt)
        prefix = task_tag(src, tgt) if len(run.directions) > 1 else ""
        _, scores = evaluate_translation(best.model, best.tokenizer, pairs, beam_size=4, alpha=0.6, batch_size=64,
                                         prefix=prefix)
        tests[f"{src}-{tgt}"] = {
            "bleu": scores.bleu, "chrf": scores.chrf, "bleu_signature": scores.bleu_signature,
            "buckets": {k: [v.sentences, v.bleu] for k, v in scores.bleu_by_length.items()},
        }
        print(f"{run.name} {src}->{tgt} test_2016_flickr beam 4:\n{scores.format_report()}", flush=True)
    record = {
        "run": run.name, "family": run.family, "preset": run.preset, "attention": run.attention,
        "params": params, "budget_minutes": budget, "train_minutes": train_minutes, "steps": result.step,
        "stop_reason": result.stop_reason, "best": result.best, "test": tests,
    }
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def decoding_speed(batch_size: int = 64) -> list[list[str]]:
    """Sentences/s translating test_2016_flickr de->en with the transformer run's best/ (KV cache vs recompute)."""
    loaded = load_translation_model(OUT / "transformer" / "best")
    sources = [src for src, _ in multi30k("test_2016_flickr", "de", "en")]
    rows = []
    for beam in (1, 4):
        rates = {}
        for recompute in (False, True):
            translate(loaded.model, loaded.tokenizer, sources[:batch_size], beam_size=beam, batch_size=batch_size,
                      recompute=recompute)  # warm-up
            t0 = time.perf_counter()
            translate(loaded.model, loaded.tokenizer, sources, beam_size=beam, batch_size=batch_size,
                      recompute=recompute)
            rates[recompute] = len(sources) / (time.perf_counter() - t0)
        rows.append([
            "greedy" if beam == 1 else f"beam {beam}", str(batch_size), f"{rates[False]:.1f}", f"{rates[True]:.1f}",
            f"{rates[False] / rates[True]:.2f}x",
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", choices=[*RUNS, "speed"], default=[*RUNS, "speed"])
    parser.add_argument("--minutes", type=float, help="override every run's training budget")
    args = parser.parse_args()
    set_threads(2)
    torch.manual_seed(0)
    for name in args.runs:
        if name != "speed":
            train_and_test(RUNS[name], args.minutes)

    rows = []
    for name in RUNS:
        path = OUT / name / "result.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        for direction, t in r["test"].items():
            buckets = [f"{t['buckets'][b][1]:.1f} ({t['buckets'][b][0]})" if b in t["buckets"] else "-"
                       for b, _, _ in LENGTH_BUCKETS]
            rows.append([
                name, direction, f"{r['params'] / 1e6:.2f}M", f"{r['train_minutes']:.1f}", str(r["steps"]),
                f"{t['bleu']:.2f}", f"{t['chrf']:.2f}", *buckets,
            ])
    print_table(["run", "direction", "params", "train min", "steps", "BLEU", "chrF",
                 *[f"BLEU {b}" for b, _, _ in LENGTH_BUCKETS]], rows)
    if "speed" in args.runs:
        print_table(["decoding", "batch", "sent/s (KV cache)", "sent/s (recompute)", "cache speedup"],
                    decoding_speed())


if __name__ == "__main__":
    main()
