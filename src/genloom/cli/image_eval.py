"""`genloom eval text-to-image`: caption alignment and memorisation, one row per guidance scale."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genloom.cli.common import positive_int
from genloom.cli.imagine import (
    add_image_sampling_flags,
    add_rerank_flags,
    load_generator,
    load_reranker,
    method_options,
)
from genloom.errors import GenloomError


def add_commands(eval_sub: argparse._SubParsersAction) -> None:
    ev = eval_sub.add_parser("text-to-image", help="caption alignment and memorisation of a text-to-image model "
                             "on builtin:shapes or builtin:digits")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="builtin:shapes | builtin:digits (default: the run's data)")
    ev.add_argument("--resolution", type=positive_int, help="default: the image tokenizer's")
    ev.add_argument("--limit", type=positive_int, help="as in training (default: the run's)")
    ev.add_argument("--val-fraction", type=float, help="as in training (default: the run's)")
    ev.add_argument("--n-per-caption", type=positive_int, default=4, help="images generated per caption")
    ev.add_argument("--max-captions", type=positive_int, default=32,
                    help="shapes: captions sampled from each of the seen and held-out groups")
    ev.add_argument("--guidance-scales", default="1,3,5", help="comma-separated; one table row each")
    ev.add_argument("--steps", help="diffusion: comma-separated sampling step counts, e.g. 10,20,50; one table "
                    "row per (steps, guidance) (default 20)")
    add_image_sampling_flags(ev)
    ev.add_argument("--seed", type=int, default=0)
    add_rerank_flags(ev, "each scored image is the best of N candidates by the reranker")
    ev.add_argument("--batch-size", type=positive_int, default=32, help="captions sampled together")
    ev.add_argument("--json", help="also write the scores of every guidance scale to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_cmd_eval)


def _guidance_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GenloomError(f"--guidance-scales expects numbers like 1,3,5, got {text!r}") from None
    if not scales or any(not s >= 0 for s in scales):
        raise GenloomError(f"--guidance-scales expects numbers >= 0 like 1,3,5, got {text!r}")
    return scales


def _step_counts(text: str | None) -> list[int | None]:
    if text is None:
        return [None]
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        steps = []
    if not steps or any(s < 1 for s in steps):
        raise GenloomError(f"--steps expects positive integers like 10,20,50, got {text!r}")
    return list(steps)


def _cmd_eval(args: argparse.Namespace) -> None:
    from genloom.eval.text_to_image import EvalData, ImageSampling, TextToImageEvaluation
    from genloom.outputs import check_output_file, write_text_atomically
    from genloom.run_record import read_data_record

    scales = _guidance_scales(args.guidance_scales)
    step_counts = _step_counts(args.steps)
    if args.json:
        check_output_file(Path(args.json), args.overwrite)
    loaded = load_generator(args.checkpoint, args.device)
    reranker = load_reranker(args, loaded)
    data = EvalData(args.data, args.resolution, args.limit, args.val_fraction, args.n_per_caption, args.max_captions)
    options = method_options(args, loaded, step_counts[0])
    sampling = ImageSampling(options, args.seed, args.batch_size, args.rerank)
    evaluation = TextToImageEvaluation(loaded, read_data_record(loaded.path), data, sampling, reranker)
    print(evaluation.intro)
    results = []
    for steps in step_counts:
        for scale in scales:
            result = evaluation.score(scale, steps)
            print(f"--- guidance scale {scale:g}" + ("" if result.steps is None else f", {result.steps} steps"))
            print(result.report)
            results.append(result)
    print("--- summary")
    print(evaluation.header)
    for result in results:
        print(result.row)
    if args.json:
        write_text_atomically(Path(args.json), json.dumps(evaluation.json_report(results), indent=2) + "\n")
