"""Language-model commands: `train lm`, `generate`, `info`, `plot`, `export hf` and `quickstart lm`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from genloom.cli.common import (
    Parser,
    add_compile_flag,
    add_dtype_flag,
    add_training_flags,
    compile_if_asked,
    non_negative_float,
    positive_int,
    report_done,
    train_config,
)
from genloom.errors import GenloomError

if TYPE_CHECKING:
    from genloom.generate import Completion, SamplingConfig

def add_commands(sub: argparse._SubParsersAction, train_sub: argparse._SubParsersAction) -> None:
    """`train lm` under `train`, and the language-model commands at the top level."""
    _add_train_lm(train_sub)

    gen = sub.add_parser("generate", help="continue a prompt with a language model")
    gen.add_argument("checkpoint", help="genloom checkpoint, run directory or Hugging Face GPT-2 directory")
    gen.add_argument("prompt", nargs="?", help="the prompt; omit or '-' to read one prompt per line on stdin")
    add_sampling_flags(gen)
    gen.add_argument("--batch-size", type=positive_int, default=8, help="prompts decoded together")
    gen.add_argument("--device", default="auto")
    add_compile_flag(gen)
    gen.set_defaults(func=_cmd_generate)

    info = sub.add_parser("info", help="architecture, parameter count and memory of a preset or checkpoint")
    info.add_argument("checkpoint", nargs="?")
    info.add_argument("--preset")
    info.set_defaults(func=_cmd_info)

    plot = sub.add_parser("plot", help="draw loss and learning-rate curves of a run to a PNG")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="PNG path (default RUN_DIR/curves.png, replaced on every call)")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    plot.set_defaults(func=_cmd_plot)

    export = sub.add_parser("export", help="export a checkpoint to another format")
    export_sub = export.add_subparsers(dest="format", required=True, parser_class=Parser)
    hf = export_sub.add_parser("hf", help="Hugging Face GPT-2 directory (transformers can load it)")
    hf.add_argument("checkpoint")
    hf.add_argument("out_dir")
    hf.set_defaults(func=_cmd_export_hf)


def _add_train_lm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="train a GPT language model on text")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="builtin:pydoc", help="text file, folder, .jsonl (text field) or builtin:pydoc")
    d.add_argument("--tokenizer", default="char", help="char | bpe (trained on the data) | tokenizer directory")
    d.add_argument("--vocab-size", type=positive_int, default=4096, help="BPE vocabulary size")
    d.add_argument("--val-fraction", type=float, default=0.1)
    m = p.add_argument_group("model (flags override the preset)")
    m.add_argument("--preset", default="tiny", help="gpt2, gpt2-medium, gpt3-small, tiny, tiny-modern, ...")
    m.add_argument("--n-layers", type=positive_int)
    m.add_argument("--d-model", type=positive_int)
    m.add_argument("--n-heads", type=positive_int)
    m.add_argument("--context-length", type=positive_int)
    m.add_argument("--dropout", type=non_negative_float)
    m.add_argument("--positional", choices=["learned", "sinusoidal", "rotary"])
    m.add_argument("--activation", choices=["gelu", "gelu_tanh", "relu", "swiglu"])
    m.add_argument("--norm", choices=["layernorm", "rmsnorm"])
    m.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=None)
    t = add_training_flags(p, out="runs/lm", lr_help="peak learning rate", warmup=100, weight_decay=0.1)
    t.add_argument("--batch-size", type=positive_int, default=12, help="sequences per micro-batch per process")
    t.add_argument("--min-lr", type=float, default=1e-4)
    t.add_argument("--beta2", type=float, default=0.99)
    add_dtype_flag(t)
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.set_defaults(func=_cmd_train_lm)


def _cmd_train_lm(args: argparse.Namespace) -> None:
    from genloom.registry import preset_config
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.lm import DataSpec, train_lm

    data = DataSpec(data=args.data, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                    val_fraction=args.val_fraction)
    overrides = {"n_layers": args.n_layers, "d_model": args.d_model, "n_heads": args.n_heads,
                 "context_length": args.context_length, "dropout": args.dropout, "positional": args.positional,
                 "activation": args.activation, "norm": args.norm, "qk_norm": args.qk_norm}
    preset_config("gpt", args.preset, **overrides)  # a bad preset or size is an error before the data is read
    train = train_config(args, batch_size=args.batch_size, min_lr=min(args.min_lr, args.lr), beta2=args.beta2,
                         dtype=args.dtype, compile=args.compile)
    try:
        _, result = train_lm(data, args.preset, train, overrides, resume=args.resume)
    finally:
        shutdown_distributed()
    report_done(result)


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    from genloom.generate import SamplingConfig

    return SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
        stop=[_unescape(stop) for stop in args.stop],
    )


def _cmd_generate(args: argparse.Namespace) -> None:
    from genloom.generate import generate
    from genloom.registry import load_language_model
    from genloom.train.distributed import pick_device

    cfg = sampling_config(args)
    if args.prompt is None or args.prompt == "-":
        # One output per input line, blank lines included (their completion is empty), so outputs line up.
        prompts = [_unescape(line.rstrip("\r\n")) for line in sys.stdin]
        if not any(p.strip() for p in prompts):
            raise GenloomError("no prompt given: pass PROMPT or lines on stdin")
    else:
        prompts = [_unescape(args.prompt)]
    model, tokenizer = load_language_model(Path(args.checkpoint))
    model = model.to(pick_device(args.device))
    compile_if_asked(args, model)
    context = model.config.context_length
    if len(prompts) == 1:
        # One prompt: stream its tokens to the terminal as they are produced. The prompt is echoed with
        # the first piece, so an error (say, a prompt longer than the context) prints nothing else.
        echoed = False

        def stream(_: int, piece: str) -> None:
            nonlocal echoed
            _write(piece if echoed else prompts[0] + piece)
            echoed = True

        completions = generate(model, tokenizer, prompts, cfg, on_text=stream)
        print("" if echoed else prompts[0])
        _note_context_limit(completions, context)
        return
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        real = [p for p in chunk if p]
        done = iter(generate(model, tokenizer, real, cfg) if real else [])
        for line, prompt in enumerate(chunk, start + 1):
            completion = next(done) if prompt else None
            print(prompt + (completion.text if completion is not None else ""))
            print("-" * 40)
            if completion is not None:
                _note_context_limit([completion], context, f"line {line}: ")


def _note_context_limit(completions: list[Completion], context: int, where: str = "") -> None:
    """Say on stderr when generation stopped because the model's context was full, not because it was done."""
    if any(c.context_limited for c in completions):
        print(f"genloom: note: {where}stopped at the context length of {context} tokens", file=sys.stderr)


def _unescape(text: str) -> str:
    """A typed `\\n` means a newline: shells make real newlines awkward in arguments and impossible per line."""
    return text.replace("\\n", "\n")


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _cmd_info(args: argparse.Namespace) -> None:
    from genloom.info import describe_gpt
    from genloom.models.gpt import GPTConfig, preset

    if (args.preset is None) == (args.checkpoint is None):
        raise GenloomError("give either --preset NAME or a CHECKPOINT")
    if args.preset is not None:
        print(describe_gpt(preset(args.preset), args.preset))
        return
    from genloom.registry import load_pretrained

    loaded = load_pretrained(Path(args.checkpoint))
    assert isinstance(loaded.config, GPTConfig)
    print(f"checkpoint:   {loaded.path}")
    print(describe_gpt(loaded.config))


def _cmd_plot(args: argparse.Namespace) -> None:
    from genloom.outputs import check_output_file
    from genloom.train.plot import plot_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise GenloomError(f"{run_dir} is not a run directory")
    if args.out:
        check_output_file(Path(args.out), args.overwrite)
    print(f"wrote {plot_run(run_dir, Path(args.out) if args.out else None)}")


def _cmd_export_hf(args: argparse.Namespace) -> None:
    from genloom.interop.hf_gpt2 import export_hf_gpt2
    from genloom.registry import load_language_model

    model, tokenizer = load_language_model(Path(args.checkpoint))
    export_hf_gpt2(model, tokenizer, Path(args.out_dir))
    print(f"wrote a Hugging Face GPT-2 directory to {args.out_dir}")
