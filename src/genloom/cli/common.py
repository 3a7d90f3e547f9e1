"""What every `genloom` subcommand shares: the one-line-error parser, flag types, the training flags of every
`train` family, the TrainConfig built from them, and the end-of-training report."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, NoReturn

from genloom.errors import GenloomError

if TYPE_CHECKING:  # the heavy imports (torch) wait until a command needs them, so --help is instant
    from genloom.models.gpt import GPT
    from genloom.train.config import TrainConfig
    from genloom.train.trainer import TrainResult


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the message already names the bad flag.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def add_training_flags(
    p: argparse.ArgumentParser, out: str, lr_help: str, warmup: int, weight_decay: float
) -> argparse._ArgumentGroup:
    """The flags every `train` family shares; each family adds its own to the returned group."""
    t = p.add_argument_group("training")
    t.add_argument("--out", default=out, help="run directory (checkpoints, metrics.jsonl)")
    t.add_argument("--steps", type=positive_int, default=2000)
    t.add_argument("--grad-accum", type=positive_int, default=1)
    t.add_argument("--lr", type=float, default=1e-3, help=lr_help)
    t.add_argument("--warmup", type=int, default=warmup)
    t.add_argument("--weight-decay", type=non_negative_float, default=weight_decay)
    t.add_argument("--grad-clip", type=non_negative_float, default=1.0)
    t.add_argument("--eval-interval", type=positive_int, default=250)
    t.add_argument("--eval-batches", type=positive_int, default=20)
    t.add_argument("--keep-last", type=positive_int, default=2)
    t.add_argument("--max-minutes", type=non_negative_float, default=0.0,
                   help="stop (validate and save) once training has run this long in all, --resume included; "
                   "the cosine schedule decays over this budget when it ends before --steps; 0: no limit")
    t.add_argument("--patience", type=int, default=0,
                   help="stop after this many validations without a better best metric; 0: never stop early")
    t.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="replace the checkpoints of an earlier run in --out")
    t.add_argument("--ema-decay", type=non_negative_float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999, warmed "
                   "up), used for validation, best/ and inference; 0: off")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--no-progress", action="store_true")
    return t


def add_dtype_flag(t: argparse._ArgumentGroup) -> None:
    """--dtype, for the families that train under autocast: `train lm`, `train chat`, `train text-to-image`."""
    t.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision (on a CPU with AMX, a bf16 step of the tiny GPT or dit-small runs 1.4x "
                        "as fast as fp32 in benchmarks/train_speed.py, a whole dit-small run 1.2x; fp16 needs CUDA)")


def train_config(args: argparse.Namespace, **family_settings: object) -> TrainConfig:
    """TrainConfig from the shared training flags plus a family's own settings.

    A --out that is neither new, empty nor a genloom run is refused here, before any data is read (the
    trainer checks again when it starts).
    """
    from pathlib import Path

    from genloom.checkpoint import is_run_directory
    from genloom.outputs import check_output_dir
    from genloom.train.config import TrainConfig

    check_output_dir(Path(args.out), is_run_directory, "a genloom run directory")
    try:
        return TrainConfig(
            out_dir=args.out, max_steps=args.steps, grad_accum=args.grad_accum, lr=args.lr,
            warmup_steps=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
            eval_interval=args.eval_interval, eval_batches=args.eval_batches, keep_last=args.keep_last,
            device=args.device, seed=args.seed, progress=not args.no_progress, max_minutes=args.max_minutes,
            patience=args.patience, overwrite=args.overwrite,
            ema_decay=0.0 if args.ema_decay is None else args.ema_decay,
            **family_settings,  # type: ignore[arg-type]
        )
    except ValueError as e:
        raise GenloomError(str(e)) from None


def report_done(result: TrainResult,
                best_keys: tuple[str, ...] = ("val_loss", "bleu", "chrf", "val_answer_accuracy")) -> None:
    """The end of a training command: where the run is, and the validation numbers that chose `best/`."""
    if result.val_loss is None or os.environ.get("RANK", "0") != "0":  # once, not once per torchrun process
        return
    why = {"time_limit": " (time limit)", "early_stopping": " (early stopping)"}.get(result.stop_reason, "")
    print(f"done: step {result.step}{why}, val loss {result.val_loss:.4f}; checkpoints in {result.run_dir}")
    best = {k: result.best[k] for k in ("val_loss", *best_keys) if k in result.best}
    if best:
        shown = ", ".join(f"{k.removeprefix('val_').replace('_', ' ')} {v:.4g}" for k, v in best.items())
        print(f"best (step {int(result.best['step'])}, in {result.run_dir / 'best'}): {shown}")


COMPILE_HELP = ("decode with a torch.compile'd step: 1.4-1.6x the tokens/s of a tiny-preset model on a 2-core CPU, "
                "after compiling for about a minute at start (less when torch's cache has it; inductor needs a C++ "
                "compiler on a CPU). See benchmarks/decode_compile.py")


def add_compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def compile_if_asked(args: argparse.Namespace, model: GPT) -> None:
    """--compile: compile the model's decoding step now, before the first prompt."""
    if args.compile:
        from genloom.generate.compiled import compile_decoding

        compile_decoding(model)
