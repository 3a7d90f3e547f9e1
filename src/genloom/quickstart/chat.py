"""The chat quickstart: a character-level GPT on the Python docs (the LM quickstart's, reused when it is there),
fine-tuned on the built-in conversations, its report card, then a short scripted conversation."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from genloom.checkpoint import is_run_directory
from genloom.errors import GenloomError
from genloom.generate import SamplingConfig
from genloom.generate.chat import ChatSession
from genloom.outputs import check_output_dir
from genloom.quickstart.lm import quickstart_lm
from genloom.registry import load_language_model
from genloom.train.chat import ChatDataSpec, train_chat
from genloom.train.chat_report import build_report, report_markdown, write_report
from genloom.train.config import TrainConfig

OUT = "runs/quickstart-chat"
STEPS = 3000  # an upper bound: MINUTES decides on a slow machine
MINUTES = 4.0  # of fine-tuning; with the base's 1.5-4 minutes and the report, under 10 minutes on 2 cores
SCRIPT = (  # phrased as the built-in conversations are (genloom.data.builtin_chat)
    "What is 23 + 45?",
    "Now add 5 to that.",
    "Reverse these words: red green blue",
    "How many meters are in 3 kilometers?",
    "Write 42 in words.",
)


def base_for(out: Path) -> Path:
    """Where the base model is: the LM quickstart's run beside the chat run."""
    return out.parent / "quickstart"


def quickstart_chat(out: Path | None = None, steps: int | None = None, say: Callable[[str], None] = print,
                    script: bool = True) -> Path:
    """Train (or reuse) the base, fine-tune it, write the report; `script`: print a scripted conversation.
    `steps` (for a quick try) caps both the base's training and the fine-tuning, instead of the time budget.
    Returns the chat run directory."""
    out = out or Path(OUT)
    check_output_dir(out, is_run_directory, "an earlier run")  # before anything is trained
    base = base_for(out)
    start = time.perf_counter()
    try:
        load_language_model(base)
        say(f"genloom quickstart chat: reusing the language model in {base} as the base.")
    except GenloomError:
        say(f"genloom quickstart chat: first a base language model, in {base}.")
        quickstart_lm(base, steps, say=say)
    say("fine-tuning it on the built-in conversations (arithmetic, units, instructions, pydoc, follow-ups)...")
    train = TrainConfig(
        out_dir=str(out), max_steps=steps or STEPS, max_minutes=0.0 if steps else MINUTES, batch_size=16,
        lr=2e-3, min_lr=2e-4, warmup_steps=50, weight_decay=0.0, eval_interval=500, eval_batches=8,
        device="cpu", overwrite=True,
    )
    run = train_chat(str(base), ChatDataSpec(), train, say=say)
    report = build_report(out, str(base), "builtin:chat", run.result, n_eval=30)
    write_report(out, report)
    say(report_markdown(report))
    say(f"done in {time.perf_counter() - start:.0f} s; the report is in {out / 'report.md'}")
    if script:
        model, tokenizer = load_language_model(out)
        session = ChatSession(model, tokenizer, SamplingConfig(max_new_tokens=64, temperature=0.0), str(out))
        for message in SCRIPT:
            say(f"you> {message}")
            say(f"assistant> {session.reply(message).text}")
    say(f"talk to it: genloom chat {out}")
    return out
