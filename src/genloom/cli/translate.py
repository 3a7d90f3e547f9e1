"""Translation commands: `train translate`, `translate`, `eval translate` and `average-checkpoints`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from genloom.cli.common import (
    add_training_flags,
    non_negative_float,
    positive_int,
    report_done,
    train_config,
)
from genloom.errors import GenloomError

if TYPE_CHECKING:
    from torch import nn

    from genloom.tokenizers import Tokenizer

TRANSLATION_FAMILY = {"transformer": "seq2seq", "lstm": "lstm"}  # CLI name -> registry family
DEFAULT_TRANSLATION_PRESET = {"transformer": "transformer-small", "lstm": "lstm-small"}
DATA_HELP = ("builtin:numbers | builtin:emoji | builtin:dates | builtin:quantities | TSV file | SRC_FILE,TGT_FILE | "
             "a pattern like train.{lang}.gz naming one line-aligned file per language")


def add_commands(
    sub: argparse._SubParsersAction, train_sub: argparse._SubParsersAction, eval_sub: argparse._SubParsersAction
) -> None:
    """`train translate` under `train`, `eval translate` under `eval`, and the translation commands at the top
    level."""
    _add_train_translate(train_sub)

    tr = sub.add_parser("translate", help="translate text with a trained translation model")
    tr.add_argument("checkpoint", help="genloom checkpoint or run directory of a seq2seq or lstm model")
    tr.add_argument("text", nargs="?", help="the source text; omit or '-' to read one sentence per line on stdin")
    tr.add_argument("--src-lang", help="source language (multi-task models: picks the direction)")
    tr.add_argument("--tgt-lang", help="target language (multi-task models: picks the direction)")
    _add_decoding_flags(tr)
    tr.set_defaults(func=_cmd_translate)

    evt = eval_sub.add_parser("translate", help="BLEU, chrF and exact match of a translation model")
    evt.add_argument("checkpoint")
    _add_parallel_data_flags(evt)
    evt.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                     help="a split of --data as training cut it, or all of it (e.g. an official test set)")
    evt.add_argument("--out", help="write the hypotheses here, one line per source")
    evt.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    evt.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer: 13a, intl, char, zh, ...")
    _add_decoding_flags(evt)
    evt.set_defaults(func=_cmd_eval_translate)

    average = sub.add_parser("average-checkpoints", help="average the weights of a run's last N checkpoints")
    average.add_argument("run_dir")
    average.add_argument("--last", type=positive_int, default=5)
    average.add_argument("--out", required=True, help="directory for the averaged checkpoint")
    average.set_defaults(func=_cmd_average)


def _add_parallel_data_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--src-lang", default="en", help="source language (built-in corpora, {lang} patterns, "
                   "multi-task models)")
    p.add_argument("--tgt-lang", default="de", help="target language")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of a file corpus held out for validation (and as much again for test)")


def _add_train_translate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="train a translation model (Transformer or LSTM) on parallel text")
    d = p.add_argument_group("data")
    _add_parallel_data_flags(d)
    d.add_argument("--directions", help="train one multi-task model on several directions, e.g. de-en,en-de,fr-en "
                   "(each source gets its <src-tgt> tag; replaces --src-lang/--tgt-lang)")
    d.add_argument("--val-data", help="a separate validation set (same forms as --data); then all of --data trains")
    d.add_argument("--vocab-size", type=positive_int, default=8000, help="shared source/target BPE size")
    m = p.add_argument_group("model")
    m.add_argument("--family", choices=sorted(TRANSLATION_FAMILY), default="transformer")
    m.add_argument("--preset", help="transformer-tiny, transformer-small, transformer-base, lstm-small, ... "
                   "(default: transformer-small or lstm-small)")
    m.add_argument("--no-attention", action="store_true", help="lstm: no attention (the last encoder state only)")
    m.add_argument("--dropout", type=non_negative_float)
    t = add_training_flags(
        p, out="runs/translate", lr_help="peak learning rate (inverse_sqrt schedule)", warmup=200, weight_decay=0.0
    )
    t.add_argument("--max-tokens", type=positive_int, default=4096, help="padded tokens per batch")
    t.add_argument("--schedule", choices=["inverse_sqrt", "cosine", "constant"], default="inverse_sqrt")
    t.add_argument("--label-smoothing", type=non_negative_float, default=0.1)
    t.add_argument("--bleu-sentences", type=int, default=200,
                   help="validation pairs translated (greedy) for BLEU and chrF at every validation; 0: none")
    t.add_argument("--best-metric", choices=["bleu", "chrf", "val_loss"],
                   help="picks best/ and drives --patience (default: bleu, or val_loss with --bleu-sentences 0)")
    p.set_defaults(func=_cmd_train_translate)


def _cmd_train_translate(args: argparse.Namespace) -> None:
    from genloom.data.parallel import load_directions, parse_directions
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.translate import train_translation

    family = TRANSLATION_FAMILY[args.family]
    preset_name = args.preset or DEFAULT_TRANSLATION_PRESET[args.family]
    if args.no_attention and family != "lstm":
        raise GenloomError("--no-attention applies only to --family lstm")
    directions = parse_directions(args.directions) if args.directions else [(args.src_lang, args.tgt_lang)]
    splits = load_directions(args.data, directions, args.val_fraction, val_data=args.val_data)
    overrides: dict[str, object] = {"dropout": args.dropout}
    if args.no_attention:
        overrides["attention"] = False
    if args.bleu_sentences < 0:
        raise GenloomError(f"--bleu-sentences ({args.bleu_sentences}) must be >= 0")
    best_metric = args.best_metric or ("bleu" if args.bleu_sentences else "val_loss")
    if best_metric != "val_loss" and not args.bleu_sentences:
        raise GenloomError(f"--best-metric {best_metric} needs --bleu-sentences above 0")
    cfg = train_config(args, min_lr=0.0, schedule=args.schedule, best_metric=best_metric)
    try:
        _, _, result = train_translation(
            splits.train, splits.val, family, preset_name, cfg, vocab_size=args.vocab_size,
            max_tokens=args.max_tokens, label_smoothing=args.label_smoothing, model_overrides=overrides,
            resume=args.resume, bleu_sentences=args.bleu_sentences,
        )
    finally:
        shutdown_distributed()
    report_done(result)


def _add_decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-size", type=positive_int, default=4, help="1 means greedy")
    p.add_argument("--alpha", type=non_negative_float, default=0.6, help="GNMT length penalty")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sentences decoded together")
    p.add_argument("--device", default="auto")


def _load_translation(args: argparse.Namespace) -> tuple[nn.Module, Tokenizer]:
    from genloom.registry import load_translation_model
    from genloom.train.distributed import pick_device

    loaded = load_translation_model(Path(args.checkpoint))
    return loaded.model.to(pick_device(args.device)), loaded.tokenizer


def _cmd_translate(args: argparse.Namespace) -> None:
    from genloom.data.translation import direction_prefix
    from genloom.generate.translate import translate_stream

    reading_stdin = args.text is None or args.text == "-"
    lines: Iterable[str] = (line.rstrip("\r\n") for line in sys.stdin) if reading_stdin else [args.text]
    model, tokenizer = _load_translation(args)
    prefix = direction_prefix(tokenizer, args.src_lang, args.tgt_lang)
    # A terminal gets each line translated as soon as it is typed; a pipe is read a few batches at a time.
    window = 1 if reading_stdin and sys.stdin.isatty() else 8 * args.batch_size
    sources = (prefix + line if line.strip() else line for line in lines)
    translated = 0
    for output in translate_stream(model, tokenizer, sources, window, args.beam_size, args.alpha, args.batch_size):
        print(output, flush=True)
        translated += 1
    if not translated:
        raise GenloomError("nothing to translate: pass TEXT or lines on stdin")


def _cmd_eval_translate(args: argparse.Namespace) -> None:
    from genloom.data.parallel import load_parallel_splits
    from genloom.data.translation import direction_prefix
    from genloom.eval.translation import evaluate_translation
    from genloom.outputs import check_output_file, write_text_atomically

    if args.out:
        check_output_file(Path(args.out), args.overwrite)  # before the minutes of decoding, not after
    model, tokenizer = _load_translation(args)
    prefix = direction_prefix(tokenizer, args.src_lang, args.tgt_lang)
    if args.split == "all":
        pairs = load_parallel_splits(args.data, args.src_lang, args.tgt_lang, 0.0, 0.0).train
    else:
        splits = load_parallel_splits(args.data, args.src_lang, args.tgt_lang, val_fraction=args.val_fraction)
        pairs = getattr(splits, args.split)
    hyps, scores = evaluate_translation(model, tokenizer, pairs, beam_size=args.beam_size, alpha=args.alpha,
                                        batch_size=args.batch_size, tokenize=args.tokenize, prefix=prefix)
    print(f"{args.split} split of {args.data} ({args.src_lang}->{args.tgt_lang}), beam {args.beam_size}")
    print(scores.format_report())
    if args.out:
        write_text_atomically(Path(args.out), "".join(h.replace("\n", " ") + "\n" for h in hyps))
        print(f"wrote {len(hyps)} hypotheses to {args.out}")


def _cmd_average(args: argparse.Namespace) -> None:
    from genloom.train.average import average_checkpoints

    used = average_checkpoints(Path(args.run_dir), args.last, Path(args.out))
    print(f"averaged {', '.join(p.name for p in used)} into {args.out}")
