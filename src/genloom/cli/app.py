"""`genloom` command line: parse flags, call a library function, print. No logic of its own.

Each family's commands live in their own module (`lm`, `translate`, `image`); this one assembles the parser, with
the `train` and `eval` groups the families add their subcommands to, and turns
user errors into one line and a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from genloom.cli import image, lm, translate
from genloom.cli.common import Parser, positive_int
from genloom.errors import GenloomError

QUICKSTARTS = {"image": image.quickstart, "lm": lm.quickstart, "translate": translate.quickstart}


def build_parser() -> Parser:
    parser = Parser(prog="genloom", description="Generative models built from one Transformer core.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="family", required=True, parser_class=Parser)
    ev = sub.add_parser("eval", help="score a model on held-out data")
    eval_sub = ev.add_subparsers(dest="task", required=True, parser_class=Parser)
    lm.add_commands(sub, train_sub)
    translate.add_commands(sub, train_sub, eval_sub)
    image.add_commands(sub, train_sub, eval_sub)

    quick = sub.add_parser("quickstart", help="train a small model on built-in data in minutes and sample it")
    quick.add_argument("what", nargs="?", choices=sorted(QUICKSTARTS), default="lm",
                       help="lm: a character-level GPT (default); translate: English number words to German; "
                       "image: captions to pictures of coloured shapes")
    quick.add_argument("--out", help=f"run directory (default {lm.QUICKSTART_DIR}, "
                       f"{translate.QUICKSTART_TRANSLATE_DIR} or {image.QUICKSTART_IMAGE_DIR})")
    quick.add_argument("--steps", type=positive_int, help="training steps (default 1500 for lm)")
    quick.set_defaults(func=lambda args: QUICKSTARTS[args.what](args))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GenloomError as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("genloom: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permission denied, ...: the user's environment, not a bug
        print(f"genloom: error: {e}", file=sys.stderr)
        return 1
    return 0

