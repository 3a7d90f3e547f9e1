"""The language-model quickstart: a character-level GPT on the Python documentation, then samples."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from genloom.checkpoint import is_run_directory
from genloom.generate import SamplingConfig, generate
from genloom.outputs import check_output_dir
from genloom.registry import load_language_model
from genloom.train.config import TrainConfig
from genloom.train.lm import DataSpec, train_lm

OUT = "runs/quickstart"
STEPS = 1500
PROMPTS = ("The for statement", "A class definition", "Exceptions are")


def quickstart_lm(out: Path | None = None, steps: int | None = None, say: Callable[[str], None] = print) -> None:
    out = out or Path(OUT)
    steps = steps or STEPS
    check_output_dir(out, is_run_directory, "an earlier run")  # before the data is read
    say("genloom quickstart: a character-level GPT on the Python documentation (pydoc_data), on the CPU.")
    start = time.perf_counter()
    # nanoGPT's small CPU model with a longer context and the higher learning rate that suits it
    # (benchmarks/train_shakespeare.py): 1.5-4 minutes on 2 cores, as fast as the machine is that day.
    train = TrainConfig(
        out_dir=str(out), max_steps=steps, batch_size=12, lr=3e-3, min_lr=3e-4, warmup_steps=100,
        eval_interval=max(1, steps // 4), eval_batches=10, device="cpu", overwrite=True,
    )
    _, result = train_lm(DataSpec(data="builtin:pydoc", tokenizer="char"), "tiny", train, {"context_length": 128})
    say(f"trained {result.step} steps in {time.perf_counter() - start:.0f} s; val loss {result.val_loss:.3f}")
    model, tokenizer = load_language_model(out)  # best/: the lowest validation loss
    samples = generate(model, tokenizer, list(PROMPTS), SamplingConfig(max_new_tokens=160, temperature=0.7, seed=0))
    for prompt, sample in zip(PROMPTS, samples, strict=True):
        say("-" * 60)
        say(prompt + sample.text)
    say("-" * 60)
    say(f"saved to {out}; try: genloom generate {out} \"The with statement\"")
