"""The translation quickstart: a tiny Transformer translating English number words to German."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from genloom.checkpoint import is_run_directory
from genloom.data.parallel import load_parallel_splits
from genloom.eval.translation import evaluate_translation
from genloom.generate.translate import translate
from genloom.outputs import check_output_dir
from genloom.train.config import TrainConfig
from genloom.train.translate import train_translation

OUT = "runs/quickstart-translate"
STEPS = 1200
LR = 2e-3
MAX_TOKENS = 2048


def quickstart_translate(out: Path | None = None, steps: int | None = None,
                         say: Callable[[str], None] = print) -> None:
    out = out or Path(OUT)
    steps = steps or STEPS
    check_output_dir(out, is_run_directory, "an earlier run")  # before the data is read
    say("genloom quickstart translate: a tiny Transformer translating English number words to German "
        "(builtin:numbers, en->de), on the CPU.")
    start = time.perf_counter()
    splits = load_parallel_splits("builtin:numbers", "en", "de")
    train = TrainConfig(
        out_dir=str(out), max_steps=steps, lr=LR, min_lr=0.0, warmup_steps=100, schedule="inverse_sqrt",
        weight_decay=0.0, eval_interval=max(1, steps // 4), eval_batches=5, device="cpu", overwrite=True,
    )
    model, tokenizer, result = train_translation(
        splits.train, splits.val, "seq2seq", "transformer-tiny", train, vocab_size=1000, max_tokens=MAX_TOKENS,
        model_overrides={"dropout": 0.0},
    )
    say(f"trained {result.step} steps in {time.perf_counter() - start:.0f} s; val loss {result.val_loss:.3f}")
    test = splits.test
    # Character-level BLEU: each German target is one compound word ("vierunddreißig"), and word-level BLEU
    # has no 4-grams to match in a one-word sentence, so it scores 0 even for perfect output.
    _, scores = evaluate_translation(model, tokenizer, test, beam_size=4, tokenize="char")
    say(f"held-out test split ({len(test)} numbers never seen in training), beam 4, character-level BLEU "
        "(the German targets are single compound words):")
    say(scores.format_report())
    examples = test[:: max(1, len(test) // 6)][:6]
    for (src, ref), hyp in zip(examples, translate(model, tokenizer, [s for s, _ in examples]), strict=True):
        say(f"  {src}  ->  {hyp}   (reference: {ref})")
    say(f"done in {time.perf_counter() - start:.0f} s; saved to {out}; try: genloom translate {out} \"forty-two\"")
