"""`genloom` command line: parse flags, call a library function, print. No logic of its own.

Each family's commands live in their own module (`lm`, `translate`, `image_train`, `imagine`, `image_eval`); this
one assembles the parser, with the `train` and `eval` groups the families add their subcommands to, and turns
user errors into one line and a non-zero exit. SIGTERM (a scheduler's kill, torchrun stopping its workers) is
handled as Ctrl-C is: a save in progress removes its temporary files, and the command exits non-zero.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from genloom.cli import chat, image_eval, image_train, imagine, lm, serve, translate
from genloom.cli.common import Parser, positive_int
from genloom.errors import GenloomError, first_line

QUICKSTARTS = ("chat", "image", "lm", "translate")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so the same cleanup runs as for Ctrl-C."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _quickstart(what: str, out: str | None, steps: int | None, interactive: bool | None, method: str) -> None:
    path = Path(out) if out is not None else None
    if what == "chat":
        from genloom.generate import SamplingConfig
        from genloom.generate.chat import ChatSession
        from genloom.quickstart.chat import quickstart_chat
        from genloom.registry import load_language_model

        interactive = sys.stdin.isatty() if interactive is None else interactive
        run = quickstart_chat(path, steps, script=not interactive)
        if interactive:
            model, tokenizer = load_language_model(run)
            chat.chat_loop(ChatSession(model, tokenizer, SamplingConfig(max_new_tokens=128, temperature=0.0)), str(run))
    elif what == "lm":
        from genloom.quickstart.lm import quickstart_lm

        quickstart_lm(path, steps)
    elif what == "translate":
        from genloom.quickstart.translate import quickstart_translate

        quickstart_translate(path, steps)
    else:
        from genloom.quickstart.image import quickstart_image

        quickstart_image(path, steps, method=method)


def build_parser() -> Parser:
    parser = Parser(prog="genloom", description="Generative models built from one Transformer core.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="family", required=True, parser_class=Parser)
    ev = sub.add_parser("eval", help="score a model on held-out data")
    eval_sub = ev.add_subparsers(dest="task", required=True, parser_class=Parser)
    lm.add_commands(sub, train_sub)
    chat.add_commands(sub, train_sub, eval_sub)
    translate.add_commands(sub, train_sub, eval_sub)
    image_train.add_commands(train_sub)
    imagine.add_commands(sub)
    image_eval.add_commands(eval_sub)
    serve.add_commands(sub)

    quick = sub.add_parser("quickstart", help="train a small model on built-in data in minutes and sample it")
    quick.add_argument("what", nargs="?", choices=QUICKSTARTS, default="lm",
                       help="lm: a character-level GPT (default); chat: a GPT fine-tuned into a chat model; "
                       "translate: English number words to German; image: captions to pictures of coloured shapes")
    quick.add_argument("--out", help="run directory (default runs/quickstart, runs/quickstart-translate, "
                       "runs/quickstart-image, runs/quickstart-diffusion or runs/quickstart-chat); an earlier "
                       "quickstart there is replaced, other files are refused")
    quick.add_argument("--steps", type=positive_int, help="training steps (default 1500 for lm)")
    quick.add_argument("--interactive", action=argparse.BooleanOptionalAction, default=None,
                       help="chat: open the chat after training (default when stdin is a terminal) or print a "
                       "scripted conversation (--no-interactive)")
    quick.add_argument("--method", choices=("tokens", "diffusion"), default="tokens",
                       help="image: tokens (a VQ tokenizer + a caption -> image-token Transformer, DALL-E style) or "
                       "diffusion (an autoencoder + a diffusion Transformer, Stable Diffusion style)")
    quick.set_defaults(func=lambda args: _quickstart(args.what, args.out, args.steps, args.interactive, args.method))
    return parser


def is_out_of_memory(e: RuntimeError) -> bool:
    """A device allocation failed (CUDA's OutOfMemoryError, or MPS's RuntimeError). torch is looked up, not
    imported: a command that never imported it cannot have run out of device memory."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, torch.OutOfMemoryError):
        return True
    return str(e).startswith("MPS backend out of memory")


def out_of_memory_message(e: RuntimeError) -> str:
    """torch's first two sentences (what failed to allocate), and what to change."""
    what = ". ".join(first_line(e, "out of memory").split(". ")[:2]).rstrip(".")
    return (f"the device ran out of memory ({what}); use a smaller --batch-size (when training, --grad-accum keeps "
            f"the global batch) or --dtype bf16 where the command has it; complete checkpoints are kept")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals go to the main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        args.func(args)
    except GenloomError as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print("genloom: terminated (SIGTERM); the last complete checkpoint is kept", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("genloom: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permission denied, ...: the user's environment, not a bug
        print(f"genloom: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        print(f"genloom: error: {out_of_memory_message(e)}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
