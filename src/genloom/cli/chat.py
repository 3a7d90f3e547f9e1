"""Chat and prompting commands: `train chat`, `chat`, `eval chat` and `eval few-shot`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from genloom.cli.common import (
    add_compile_flag,
    add_dtype_flag,
    add_training_flags,
    compile_if_asked,
    positive_int,
    report_done,
    train_config,
)
from genloom.cli.lm import add_sampling_flags, sampling_config
from genloom.errors import GenloomError, UnencodableTextError

if TYPE_CHECKING:
    from genloom.generate.chat import ChatSession
    from genloom.models.gpt import GPT
    from genloom.tokenizers import Tokenizer

CHAT_COMMANDS = "/reset, /system TEXT, /save FILE, /exit"


def add_commands(sub: argparse._SubParsersAction, train_sub: argparse._SubParsersAction,
                 eval_sub: argparse._SubParsersAction) -> None:
    _add_train_chat(train_sub)

    chat = sub.add_parser("chat", help="talk to a chat model in the terminal (one turn per line from a pipe)")
    chat.add_argument("checkpoint", help="a chat checkpoint or run (made by `genloom train chat`)")
    chat.add_argument("--system", help="system message to start with")
    chat.add_argument("--load", help="continue a conversation saved with /save")
    add_sampling_flags(chat)
    chat.set_defaults(max_new_tokens=128, temperature=0.0)  # a chat answers; greedy is its best guess
    chat.add_argument("--device", default="auto")
    add_compile_flag(chat)
    chat.set_defaults(func=_cmd_chat)

    ev = eval_sub.add_parser("chat", help="exact-answer accuracy on held-out conversations, by family")
    ev.add_argument("checkpoint", help="a chat model, or a base model (asked through a plain prompt)")
    ev.add_argument("--data", default="builtin:chat",
                    help="builtin:chat, builtin:FAMILY, a mixture builtin:FAMILY+FAMILY... or a JSONL file")
    ev.add_argument("--n", type=positive_int, default=50,
                    help="questions per family (built-in; per share of a mixture) or in all (file)")
    ev.add_argument("--plain", action="store_true", help="ask through the plain prompt even if it has a template")
    ev.add_argument("--batch-size", type=positive_int, default=32)
    ev.add_argument("--json", help="also write the scores to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_cmd_eval_chat)

    few = eval_sub.add_parser("few-shot", help="accuracy with k examples in the prompt, no weight update")
    few.add_argument("checkpoint")
    few.add_argument("--shots", default="0,1,2,4,8", help="comma-separated numbers of examples (default 0,1,2,4,8)")
    few.add_argument("--families", help="comma-separated ICL families (default: all)")
    few.add_argument("--n", type=positive_int, default=100, help="prompts per family and k")
    few.add_argument("--seed", type=int, default=0)
    few.add_argument("--device", default="auto")
    few.set_defaults(func=_cmd_eval_few_shot)


def _add_train_chat(train_sub: argparse._SubParsersAction) -> None:
    p = train_sub.add_parser("chat", help="fine-tune a GPT on conversations (supervised fine-tuning)")
    p.add_argument("--base", required=True, help="GPT checkpoint, run directory or Hugging Face GPT-2 directory")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="builtin:chat", help="JSONL of {\"messages\": [...]} or builtin:chat, "
                   "builtin:arithmetic, builtin:units, builtin:instructions, builtin:pydoc, builtin:follow_up, or a "
                   "mixture of them joined by + (a family named twice is drawn twice as often)")
    d.add_argument("--train-examples", type=positive_int, default=20_000,
                   help="conversations to train on (drawn from a built-in set; the first N of a file)")
    d.add_argument("--val-examples", type=positive_int, default=200)
    d.add_argument("--val-fraction", type=float, default=0.1, help="of a file, for validation")
    d.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                   help="pack several conversations per row with document masking (default) or pad one per row")
    d.add_argument("--report-questions", type=positive_int, default=50,
                   help="held-out questions per family in report.md / report.json")
    d.add_argument("--tools", default="", help="tools the assistant learns to call: 'calculator' (the built-in "
                   "sets' calculations are then written as calls; see README, \"Chat with a calculator\")")
    t = add_training_flags(p, out="runs/chat", lr_help="peak learning rate", warmup=50, weight_decay=0.0)
    p.set_defaults(steps=1000, lr=1e-3, eval_interval=200)
    t.add_argument("--batch-size", type=positive_int, default=16, help="rows per micro-batch per process")
    t.add_argument("--min-lr", type=float, default=1e-4)
    add_dtype_flag(t)
    p.set_defaults(func=_cmd_train_chat)


def _cmd_train_chat(args: argparse.Namespace) -> None:
    from genloom.tokenizers.chat_tools import check_tools
    from genloom.train.chat import PACKING_DEFAULT, ChatDataSpec, train_chat
    from genloom.train.chat_report import build_report, report_markdown, write_report
    from genloom.train.distributed import shutdown_distributed

    main = os.environ.get("RANK", "0") == "0"
    train = train_config(args, batch_size=args.batch_size, min_lr=min(args.min_lr, args.lr), dtype=args.dtype)
    data = ChatDataSpec(data=args.data, train_examples=args.train_examples, val_examples=args.val_examples,
                        val_fraction=args.val_fraction,
                        packing=PACKING_DEFAULT if args.packing is None else args.packing,
                        tools=check_tools([t.strip() for t in args.tools.split(",") if t.strip()]))
    try:
        run = train_chat(args.base, data, train, resume=args.resume, say=print if main else lambda _: None)
    finally:
        shutdown_distributed()
    report_done(run.result)
    if main:
        report = build_report(run.result.run_dir, _recorded_base(run.result.run_dir, args.base), args.data,
                              run.result, n_eval=args.report_questions)
        write_report(run.result.run_dir, report)
        print(report_markdown(report))
        print(f"report: {run.result.run_dir / 'report.md'}")


def _recorded_base(run_dir: Path, given: str) -> str:
    """The base the run started from (a resumed run's record says which), else the one given now."""
    from genloom.run_record import read_data_record

    base = read_data_record(run_dir).get("base")
    return base if isinstance(base, str) else given


def _load(checkpoint: str, device: str) -> tuple[GPT, Tokenizer]:
    from genloom.registry import load_language_model
    from genloom.train.distributed import pick_device

    model, tokenizer = load_language_model(Path(checkpoint))
    return model.to(pick_device(device)), tokenizer


def _cmd_chat(args: argparse.Namespace) -> None:
    from genloom.generate.chat import ChatSession

    model, tokenizer = _load(args.checkpoint, args.device)
    compile_if_asked(args, model)
    session = ChatSession(model, tokenizer, sampling_config(args), where=args.checkpoint, system=args.system)
    if args.load:
        session.load(Path(args.load))
    chat_loop(session, args.checkpoint)


def chat_loop(session: ChatSession, name: str) -> None:
    """Talk until /exit or end of input: a prompt and streamed answers on a terminal; from a pipe, one user turn
    per line and one answer per line, so a conversation can be scripted."""
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"genloom chat: {name} (context {session.model.config.context_length} tokens). Commands: "
              f"{CHAT_COMMANDS}.")
    saved: set[Path] = set()  # files this session wrote, which a later /save may replace
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if _command(session, text, saved):
                break
            continue
        if interactive:
            sys.stdout.write("assistant> ")
        try:
            # From a pipe a newline inside an answer is written `\n`, so each answer stays on its own line.
            reply = session.reply(line.replace("\\n", "\n"),
                                  on_text=_write if interactive else lambda piece: _write(piece.replace("\n", "\\n")))
        except GenloomError as e:
            if not interactive:
                raise  # a script's answers would no longer line up with its questions
            print(f"\ngenloom: error: {e}", file=sys.stderr)  # a person can say it differently
            continue
        print()
        if reply.dropped_turns:
            print(f"genloom: note: the {reply.dropped_turns} oldest turn(s) no longer fit the context and were "
                  "left out", file=sys.stderr)
        if reply.context_limited:
            print("genloom: note: the reply stopped at the context length; /reset to start over", file=sys.stderr)


def _command(session: ChatSession, text: str, saved: set[Path]) -> bool:
    """Carry out a /command; True means leave."""
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name in ("/exit", "/quit"):
        return True
    if name == "/reset":
        session.reset()
        print("(conversation cleared)")
    elif name == "/system":
        session.system = rest or None
        print(f"(system message {'set' if rest else 'removed'})")
    elif name == "/save" and not rest:
        print("genloom: usage: /save FILE", file=sys.stderr)
    elif name == "/save":
        path = Path(rest)
        if path.exists() and path not in saved:
            print(f"genloom: {path} exists and this session did not write it; choose another file", file=sys.stderr)
        else:
            session.save(path)
            saved.add(path)
            print(f"(saved to {path}; continue it with --load {path})")
    else:
        print(f"genloom: unknown command {text!r}; commands: {CHAT_COMMANDS}", file=sys.stderr)
    return False


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _cmd_eval_chat(args: argparse.Namespace) -> None:
    from genloom.data.conversations import held_out_conversations
    from genloom.eval.chat import chat_accuracy, format_scores, overall
    from genloom.outputs import check_output_file, write_text_atomically
    from genloom.tokenizers.chat_tools import CALCULATOR

    if args.json:
        check_output_file(Path(args.json), args.overwrite)
    model, tokenizer = _load(args.checkpoint, args.device)
    templated = tokenizer.chat_format is not None and not args.plain
    # A model trained with the calculator is asked the same questions, its expected answers written as calls.
    calculator = templated and tokenizer.chat_format is not None and CALCULATOR in tokenizer.chat_format.tools
    conversations = held_out_conversations(args.data, args.n, calculator=calculator)
    scores = chat_accuracy(model, tokenizer, conversations, batch_size=args.batch_size, plain=args.plain or None)
    how = ("chat template" + (" with the calculator" if calculator else "")) if templated else "plain prompt"
    print(format_scores(scores, f"{args.checkpoint} on {args.data} (held out, {how}):"))
    unanswerable = sum(s.unanswerable for s in scores.values())
    if unanswerable:
        print(f"genloom: note: {unanswerable} question(s) counted wrong without asking: longer than the context or "
              "outside the tokenizer's vocabulary", file=sys.stderr)
    if args.json:
        record = {"checkpoint": args.checkpoint, "data": args.data, "prompt": how, "all": overall(scores),
                  "families": {f: {"accuracy": s.accuracy, "correct": s.correct, "total": s.total}
                               for f, s in sorted(scores.items())}}
        write_text_atomically(Path(args.json), json.dumps(record, indent=2) + "\n")


def _cmd_eval_few_shot(args: argparse.Namespace) -> None:
    from genloom.data.icl import ICL_FAMILIES
    from genloom.eval.icl import few_shot_accuracy

    shots = _shots(args.shots)
    families = ICL_FAMILIES if args.families is None else tuple(f.strip() for f in args.families.split(","))
    unknown = [f for f in families if f not in ICL_FAMILIES]
    if unknown:
        raise GenloomError(f"unknown few-shot family {unknown[0]!r}; choose from: {', '.join(ICL_FAMILIES)}")
    model, tokenizer = _load(args.checkpoint, args.device)
    try:
        table = few_shot_accuracy(model, tokenizer, families, shots, n=args.n, seed=args.seed)
    except UnencodableTextError as e:
        raise GenloomError(f"the few-shot prompts use characters this model's vocabulary lacks ({e}); train one "
                           "that has them, e.g. `genloom train lm --data builtin:icl`") from None
    print(f"{args.checkpoint}: exact-match accuracy with k examples in the prompt ({args.n} prompts each)")
    print(f"  {'family':<14}" + "".join(f"{'k=' + str(k):>8}" for k in shots))
    for family in families:
        print(f"  {family:<14}" + "".join(f"{100 * table[family][k]:7.1f}%" for k in shots))
    means = [sum(table[f][k] for f in families) / len(families) for k in shots]
    print(f"  {'mean':<14}" + "".join(f"{100 * m:7.1f}%" for m in means))


def _shots(text: str) -> list[int]:
    try:
        shots = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GenloomError(f"--shots must be comma-separated whole numbers, got {text!r}") from None
    if not shots or any(k < 0 for k in shots):
        raise GenloomError(f"--shots must list numbers >= 0, got {text!r}")
    return sorted(set(shots))

