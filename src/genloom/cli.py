"""`genloom` command line: parse flags, call a library function, print. No logic of its own."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from genloom.errors import GenloomError

if TYPE_CHECKING:  # the heavy imports (torch) wait until a command needs them, so --help is instant
    from torch import nn

    from genloom.generate import SamplingConfig
    from genloom.tokenizers import Tokenizer
    from genloom.train.config import TrainConfig
    from genloom.train.trainer import TrainResult

QUICKSTART_DIR = "runs/quickstart"
QUICKSTART_LM_STEPS = 1500
QUICKSTART_TRANSLATE_STEPS = 1200
QUICKSTART_TRANSLATE_LR = 2e-3
QUICKSTART_TRANSLATE_MAX_TOKENS = 2048


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the message already names the bad flag.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


# ---- train lm -----------------------------------------------------------------------------------------


def _add_train_lm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="train a GPT language model on text")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="builtin:pydoc", help="text file, folder, .jsonl (text field) or builtin:pydoc")
    d.add_argument("--tokenizer", default="char", help="char | bpe (trained on the data) | tokenizer directory")
    d.add_argument("--vocab-size", type=_positive_int, default=4096, help="BPE vocabulary size")
    d.add_argument("--val-fraction", type=float, default=0.1)
    m = p.add_argument_group("model (flags override the preset)")
    m.add_argument("--preset", default="tiny", help="gpt2, gpt2-medium, gpt3-small, tiny, tiny-modern, ...")
    m.add_argument("--n-layers", type=_positive_int)
    m.add_argument("--d-model", type=_positive_int)
    m.add_argument("--n-heads", type=_positive_int)
    m.add_argument("--context-length", type=_positive_int)
    m.add_argument("--dropout", type=_non_negative_float)
    m.add_argument("--positional", choices=["learned", "sinusoidal", "rotary"])
    m.add_argument("--activation", choices=["gelu", "gelu_tanh", "relu", "swiglu"])
    m.add_argument("--norm", choices=["layernorm", "rmsnorm"])
    m.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=None)
    t = _add_training_flags(p, out="runs/lm", lr_help="peak learning rate", warmup=100, weight_decay=0.1)
    t.add_argument("--batch-size", type=_positive_int, default=12, help="sequences per micro-batch per process")
    t.add_argument("--min-lr", type=float, default=1e-4)
    t.add_argument("--beta2", type=float, default=0.99)
    t.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.set_defaults(func=_cmd_train_lm)


def _add_training_flags(
    p: argparse.ArgumentParser, out: str, lr_help: str, warmup: int, weight_decay: float
) -> argparse._ArgumentGroup:
    """The flags every `train` family shares; each family adds its own to the returned group."""
    t = p.add_argument_group("training")
    t.add_argument("--out", default=out, help="run directory (checkpoints, metrics.jsonl)")
    t.add_argument("--steps", type=_positive_int, default=2000)
    t.add_argument("--grad-accum", type=_positive_int, default=1)
    t.add_argument("--lr", type=float, default=1e-3, help=lr_help)
    t.add_argument("--warmup", type=int, default=warmup)
    t.add_argument("--weight-decay", type=_non_negative_float, default=weight_decay)
    t.add_argument("--grad-clip", type=_non_negative_float, default=1.0)
    t.add_argument("--eval-interval", type=_positive_int, default=250)
    t.add_argument("--eval-batches", type=_positive_int, default=20)
    t.add_argument("--keep-last", type=_positive_int, default=2)
    t.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --out")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--no-progress", action="store_true")
    return t


def _train_config(args: argparse.Namespace, **family_settings: object) -> TrainConfig:
    """TrainConfig from the shared training flags plus a family's own settings."""
    from genloom.train.config import TrainConfig

    try:
        return TrainConfig(
            out_dir=args.out, max_steps=args.steps, grad_accum=args.grad_accum, lr=args.lr,
            warmup_steps=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
            eval_interval=args.eval_interval, eval_batches=args.eval_batches, keep_last=args.keep_last,
            device=args.device, seed=args.seed, progress=not args.no_progress,
            **family_settings,  # type: ignore[arg-type]
        )
    except ValueError as e:
        raise GenloomError(str(e)) from None


def _report_done(result: TrainResult) -> None:
    if result.val_loss is not None and os.environ.get("RANK", "0") == "0":  # once, not once per torchrun process
        print(f"done: step {result.step}, val loss {result.val_loss:.4f}; checkpoints in {result.run_dir}")


def _cmd_train_lm(args: argparse.Namespace) -> None:
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.lm import DataSpec, build_model_config, train_lm

    data = DataSpec(data=args.data, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                    val_fraction=args.val_fraction)
    model_config = build_model_config(
        args.preset, vocab_size=1, n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads,
        context_length=args.context_length, dropout=args.dropout, positional=args.positional,
        activation=args.activation, norm=args.norm, qk_norm=args.qk_norm,
    )
    try:
        train = _train_config(
            args, batch_size=args.batch_size, min_lr=min(args.min_lr, args.lr), beta2=args.beta2, dtype=args.dtype,
            compile=args.compile,
        )
        _, result = train_lm(data, model_config, train, resume=args.resume)
    finally:
        shutdown_distributed()
    _report_done(result)


# ---- train translate ------------------------------------------------------------------------------------

TRANSLATION_FAMILY = {"transformer": "seq2seq", "lstm": "lstm"}  # CLI name -> registry family
DEFAULT_TRANSLATION_PRESET = {"transformer": "transformer-small", "lstm": "lstm-small"}
DATA_HELP = "builtin:numbers | builtin:emoji | builtin:dates | builtin:quantities | TSV file | SRC_FILE,TGT_FILE"


def _add_parallel_data_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--src-lang", default="en", help="source language (built-in corpora)")
    p.add_argument("--tgt-lang", default="de", help="target language (built-in corpora)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of a file corpus held out for validation (and as much again for test)")


def _add_train_translate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="train a translation model (Transformer or LSTM) on parallel text")
    d = p.add_argument_group("data")
    _add_parallel_data_flags(d)
    d.add_argument("--vocab-size", type=_positive_int, default=8000, help="shared source/target BPE size")
    m = p.add_argument_group("model")
    m.add_argument("--family", choices=sorted(TRANSLATION_FAMILY), default="transformer")
    m.add_argument("--preset", help="transformer-tiny, transformer-small, transformer-base, lstm-small, ... "
                   "(default: transformer-small or lstm-small)")
    m.add_argument("--no-attention", action="store_true", help="lstm: no attention (the last encoder state only)")
    m.add_argument("--dropout", type=_non_negative_float)
    t = _add_training_flags(
        p, out="runs/translate", lr_help="peak learning rate (inverse_sqrt schedule)", warmup=200, weight_decay=0.0
    )
    t.add_argument("--max-tokens", type=_positive_int, default=4096, help="padded tokens per batch")
    t.add_argument("--schedule", choices=["inverse_sqrt", "cosine", "constant"], default="inverse_sqrt")
    t.add_argument("--label-smoothing", type=_non_negative_float, default=0.1)
    p.set_defaults(func=_cmd_train_translate)


def _cmd_train_translate(args: argparse.Namespace) -> None:
    from genloom.data.parallel import load_parallel_splits
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.translate import train_translation

    family = TRANSLATION_FAMILY[args.family]
    preset_name = args.preset or DEFAULT_TRANSLATION_PRESET[args.family]
    if args.no_attention and family != "lstm":
        raise GenloomError("--no-attention applies only to --family lstm")
    splits = load_parallel_splits(args.data, args.src_lang, args.tgt_lang, val_fraction=args.val_fraction)
    overrides: dict[str, object] = {"dropout": args.dropout}
    if args.no_attention:
        overrides["attention"] = False
    cfg = _train_config(args, min_lr=0.0, schedule=args.schedule)
    try:
        _, _, result = train_translation(
            splits.train, splits.val, family, preset_name, cfg, vocab_size=args.vocab_size,
            max_tokens=args.max_tokens, label_smoothing=args.label_smoothing, model_overrides=overrides,
            resume=args.resume,
        )
    finally:
        shutdown_distributed()
    _report_done(result)


# ---- translate, eval translate --------------------------------------------------------------------------


def _add_decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-size", type=_positive_int, default=4, help="1 means greedy")
    p.add_argument("--alpha", type=_non_negative_float, default=0.6, help="GNMT length penalty")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="sentences decoded together")
    p.add_argument("--device", default="auto")


def _load_translation(args: argparse.Namespace) -> tuple[nn.Module, Tokenizer]:
    from genloom.models.registry import load_translation_model
    from genloom.train.distributed import pick_device

    loaded = load_translation_model(Path(args.checkpoint))
    return loaded.model.to(pick_device(args.device)), loaded.tokenizer


def _cmd_translate(args: argparse.Namespace) -> None:
    from genloom.generate.translate import translate

    if args.text is None or args.text == "-":
        sources = [line.strip() for line in sys.stdin if line.strip()]
        if not sources:
            raise GenloomError("nothing to translate: pass TEXT or lines on stdin")
    else:
        sources = [args.text]
    model, tokenizer = _load_translation(args)
    outputs = translate(model, tokenizer, sources, beam_size=args.beam_size, alpha=args.alpha,
                        batch_size=args.batch_size)
    for line in outputs:
        print(line)


def _cmd_eval_translate(args: argparse.Namespace) -> None:
    from genloom.data.parallel import load_parallel_splits
    from genloom.eval.translation import evaluate_translation

    splits = load_parallel_splits(args.data, args.src_lang, args.tgt_lang, val_fraction=args.val_fraction)
    pairs = getattr(splits, args.split)
    model, tokenizer = _load_translation(args)
    hyps, scores = evaluate_translation(model, tokenizer, pairs, beam_size=args.beam_size,
                                        alpha=args.alpha, batch_size=args.batch_size, tokenize=args.tokenize)
    print(f"{args.split} split of {args.data} ({args.src_lang}->{args.tgt_lang}), beam {args.beam_size}")
    print(scores.format_report())
    if args.out:
        Path(args.out).write_text("".join(h.replace("\n", " ") + "\n" for h in hyps), encoding="utf-8")
        print(f"wrote {len(hyps)} hypotheses to {args.out}")


# ---- generate -----------------------------------------------------------------------------------------


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=_positive_int, default=200)
    p.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=_positive_int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def _sampling_config(args: argparse.Namespace) -> SamplingConfig:
    from genloom.generate import SamplingConfig

    return SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
        stop=[_unescape(stop) for stop in args.stop],
    )


def _cmd_generate(args: argparse.Namespace) -> None:
    from genloom.generate import generate
    from genloom.models.registry import load_language_model
    from genloom.train.distributed import pick_device

    cfg = _sampling_config(args)
    if args.prompt is None or args.prompt == "-":
        prompts = [_unescape(line.rstrip("\n")) for line in sys.stdin if line.strip()]
        if not prompts:
            raise GenloomError("no prompt given: pass PROMPT or lines on stdin")
    else:
        prompts = [_unescape(args.prompt)]
    model, tokenizer = load_language_model(Path(args.checkpoint))
    model = model.to(pick_device(args.device))
    if len(prompts) == 1:
        # One prompt: stream its tokens to the terminal as they are produced. The prompt is echoed with
        # the first piece, so an error (say, a prompt longer than the context) prints nothing else.
        echoed = False

        def stream(_: int, piece: str) -> None:
            nonlocal echoed
            _write(piece if echoed else prompts[0] + piece)
            echoed = True

        generate(model, tokenizer, prompts, cfg, on_text=stream)
        print("" if echoed else prompts[0])
        return
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        for prompt, completion in zip(chunk, generate(model, tokenizer, chunk, cfg), strict=True):
            print(prompt + completion.text)
            print("-" * 40)


def _unescape(text: str) -> str:
    """A typed `\\n` means a newline: shells make real newlines awkward in arguments and impossible per line."""
    return text.replace("\\n", "\n")


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


# ---- info, plot, export, quickstart -------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> None:
    from genloom.info import describe_gpt
    from genloom.models.gpt import GPTConfig, preset

    if (args.preset is None) == (args.checkpoint is None):
        raise GenloomError("give either --preset NAME or a CHECKPOINT")
    if args.preset is not None:
        print(describe_gpt(preset(args.preset), args.preset))
        return
    from genloom.models.registry import load_pretrained

    loaded = load_pretrained(Path(args.checkpoint))
    assert isinstance(loaded.config, GPTConfig)
    print(f"checkpoint:   {loaded.path}")
    print(describe_gpt(loaded.config))


def _cmd_plot(args: argparse.Namespace) -> None:
    from genloom.train.plot import plot_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise GenloomError(f"{run_dir} is not a run directory")
    print(f"wrote {plot_run(run_dir, Path(args.out) if args.out else None)}")


def _cmd_export_hf(args: argparse.Namespace) -> None:
    from genloom.interop.hf_gpt2 import export_hf_gpt2
    from genloom.models.registry import load_language_model

    model, tokenizer = load_language_model(Path(args.checkpoint))
    export_hf_gpt2(model, tokenizer, Path(args.out_dir))
    print(f"wrote a Hugging Face GPT-2 directory to {args.out_dir}")


def _cmd_average(args: argparse.Namespace) -> None:
    from genloom.train.average import average_checkpoints

    used = average_checkpoints(Path(args.run_dir), args.last, Path(args.out))
    print(f"averaged {', '.join(p.name for p in used)} into {args.out}")


def _cmd_quickstart(args: argparse.Namespace) -> None:
    if args.what == "translate":
        _quickstart_translate(args)
        return
    from genloom.generate import SamplingConfig, generate
    from genloom.train.config import TrainConfig
    from genloom.train.lm import DataSpec, build_model_config, train_lm

    args.out = args.out if args.out is not None else QUICKSTART_DIR
    args.steps = args.steps if args.steps is not None else QUICKSTART_LM_STEPS
    print("genloom quickstart: a character-level GPT on the Python documentation (pydoc_data), on the CPU.")
    start = time.perf_counter()
    # nanoGPT's small CPU model with a longer context and the higher learning rate that suits it
    # (benchmarks/train_shakespeare.py): about 1.5 minutes on 2 cores.
    model_config = build_model_config("tiny", vocab_size=1, context_length=128)
    train = TrainConfig(
        out_dir=args.out, max_steps=args.steps, batch_size=12, lr=3e-3, min_lr=3e-4, warmup_steps=100,
        eval_interval=max(1, args.steps // 4), eval_batches=10, device="cpu",
    )
    _, result = train_lm(DataSpec(data="builtin:pydoc", tokenizer="char"), model_config, train)
    print(f"trained {result.step} steps in {time.perf_counter() - start:.0f} s; val loss {result.val_loss:.3f}")
    from genloom.models.registry import load_language_model

    model, tokenizer = load_language_model(Path(args.out))  # best/: the lowest validation loss
    prompts = ["The for statement", "A class definition", "Exceptions are"]
    samples = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=160, temperature=0.7, seed=0))
    for prompt, sample in zip(prompts, samples, strict=True):
        print("-" * 60)
        print(prompt + sample.text)
    print("-" * 60)
    print(f"saved to {args.out}; try: genloom generate {args.out} \"The with statement\"")


QUICKSTART_TRANSLATE_DIR = "runs/quickstart-translate"


def _quickstart_translate(args: argparse.Namespace) -> None:
    from genloom.data.parallel import load_parallel_splits
    from genloom.eval.translation import evaluate_translation
    from genloom.generate.translate import translate
    from genloom.train.config import TrainConfig
    from genloom.train.translate import train_translation

    out = args.out if args.out is not None else QUICKSTART_TRANSLATE_DIR
    steps = args.steps if args.steps is not None else QUICKSTART_TRANSLATE_STEPS
    print("genloom quickstart translate: a tiny Transformer translating English number words to German "
          "(builtin:numbers, en->de), on the CPU.")
    start = time.perf_counter()
    splits = load_parallel_splits("builtin:numbers", "en", "de")
    train = TrainConfig(
        out_dir=out, max_steps=steps, lr=QUICKSTART_TRANSLATE_LR, min_lr=0.0, warmup_steps=100,
        schedule="inverse_sqrt", weight_decay=0.0, eval_interval=max(1, steps // 4), eval_batches=5, device="cpu",
    )
    model, tokenizer, result = train_translation(
        splits.train, splits.val, "seq2seq", "transformer-tiny", train, vocab_size=1000,
        max_tokens=QUICKSTART_TRANSLATE_MAX_TOKENS, model_overrides={"dropout": 0.0},
    )
    print(f"trained {result.step} steps in {time.perf_counter() - start:.0f} s; val loss {result.val_loss:.3f}")
    test = splits.test
    # Character-level BLEU: each German target is one compound word ("vierunddreißig"), and word-level BLEU
    # has no 4-grams to match in a one-word sentence, so it scores 0 even for perfect output.
    _, scores = evaluate_translation(model, tokenizer, test, beam_size=4, tokenize="char")
    print(f"held-out test split ({len(test)} numbers never seen in training), beam 4, character-level BLEU "
          "(the German targets are single compound words):")
    print(scores.format_report())
    examples = test[:: max(1, len(test) // 6)][:6]
    for (src, ref), hyp in zip(examples, translate(model, tokenizer, [s for s, _ in examples]), strict=True):
        print(f"  {src}  ->  {hyp}   (reference: {ref})")
    print(f"done in {time.perf_counter() - start:.0f} s; saved to {out}; "
          f"try: genloom translate {out} \"forty-two\"")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genloom", description="Generative models built from one Transformer core.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="family", required=True, parser_class=_Parser)
    _add_train_lm(train_sub)
    _add_train_translate(train_sub)

    tr = sub.add_parser("translate", help="translate text with a trained translation model")
    tr.add_argument("checkpoint", help="genloom checkpoint or run directory of a seq2seq or lstm model")
    tr.add_argument("text", nargs="?", help="the source text; omit or '-' to read one sentence per line on stdin")
    _add_decoding_flags(tr)
    tr.set_defaults(func=_cmd_translate)

    ev = sub.add_parser("eval", help="score a model on held-out data")
    ev_sub = ev.add_subparsers(dest="task", required=True, parser_class=_Parser)
    evt = ev_sub.add_parser("translate", help="BLEU, chrF and exact match of a translation model")
    evt.add_argument("checkpoint")
    _add_parallel_data_flags(evt)
    evt.add_argument("--split", choices=["train", "val", "test"], default="test")
    evt.add_argument("--out", help="write the hypotheses here, one line per source")
    evt.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer: 13a, intl, char, zh, ...")
    _add_decoding_flags(evt)
    evt.set_defaults(func=_cmd_eval_translate)

    gen = sub.add_parser("generate", help="continue a prompt with a language model")
    gen.add_argument("checkpoint", help="genloom checkpoint, run directory or Hugging Face GPT-2 directory")
    gen.add_argument("prompt", nargs="?", help="the prompt; omit or '-' to read one prompt per line on stdin")
    _add_sampling_flags(gen)
    gen.add_argument("--batch-size", type=_positive_int, default=8, help="prompts decoded together")
    gen.add_argument("--device", default="auto")
    gen.set_defaults(func=_cmd_generate)

    info = sub.add_parser("info", help="architecture, parameter count and memory of a preset or checkpoint")
    info.add_argument("checkpoint", nargs="?")
    info.add_argument("--preset")
    info.set_defaults(func=_cmd_info)

    plot = sub.add_parser("plot", help="draw loss and learning-rate curves of a run to a PNG")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    plot.set_defaults(func=_cmd_plot)

    export = sub.add_parser("export", help="export a checkpoint to another format")
    export_sub = export.add_subparsers(dest="format", required=True, parser_class=_Parser)
    hf = export_sub.add_parser("hf", help="Hugging Face GPT-2 directory (transformers can load it)")
    hf.add_argument("checkpoint")
    hf.add_argument("out_dir")
    hf.set_defaults(func=_cmd_export_hf)

    average = sub.add_parser("average-checkpoints", help="average the weights of a run's last N checkpoints")
    average.add_argument("run_dir")
    average.add_argument("--last", type=_positive_int, default=5)
    average.add_argument("--out", required=True, help="directory for the averaged checkpoint")
    average.set_defaults(func=_cmd_average)

    quick = sub.add_parser("quickstart", help="train a small model on built-in data in minutes and sample it")
    quick.add_argument("what", nargs="?", choices=["lm", "translate"], default="lm",
                       help="lm: a character-level GPT (default); translate: English number words to German")
    quick.add_argument("--out", help=f"run directory (default {QUICKSTART_DIR} or {QUICKSTART_TRANSLATE_DIR})")
    quick.add_argument("--steps", type=_positive_int, help="training steps (default 1500 for lm)")
    quick.set_defaults(func=_cmd_quickstart)
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


if __name__ == "__main__":
    sys.exit(main())
