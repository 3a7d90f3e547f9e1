"""`genloom imagine`: draw images for captions with a text-to-image model, optionally best-of-N reranked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genloom.cli.common import non_negative_float, positive_int
from genloom.errors import GenloomError

if TYPE_CHECKING:
    from genloom.registry import LoadedClip, LoadedTextToImage


def add_commands(sub: argparse._SubParsersAction) -> None:
    im = sub.add_parser("imagine", help="draw images for captions with a text-to-image model")
    im.add_argument("checkpoint", help="run directory or checkpoint of `genloom train text-to-image`")
    im.add_argument("prompts", nargs="*", help="captions; none or '-' to read one caption per line on stdin")
    im.add_argument("--n-images", type=positive_int, default=4, help="images per caption")
    add_image_sampling_flags(im)
    im.add_argument("--guidance-scale", type=non_negative_float, default=3.0,
                    help="classifier-free guidance: 1 = plain conditional sampling, 0 = ignore the caption")
    im.add_argument("--seed", type=int, default=0, help="image i of the call samples with seed + i")
    add_rerank_flags(im, "draw N candidates per caption and keep the --n-images the reranker scores highest")
    im.add_argument("--out", default="samples", help="folder for the PNGs, their JSON sidecars and grid.png (a new "
                    "or empty folder, or an earlier output of imagine, which is replaced)")
    im.add_argument("--no-cache", action="store_true", help="recompute every position (slower; for checking)")
    im.add_argument("--device", default="auto")
    im.set_defaults(func=_cmd_imagine)


def add_image_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely codes")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of codes reaching p")


def add_rerank_flags(p: argparse.ArgumentParser, rerank_help: str) -> None:
    p.add_argument("--clip", help="run directory or checkpoint of `genloom train clip`: the reranker")
    p.add_argument("--rerank", type=positive_int, metavar="N", help=f"{rerank_help} (needs --clip)")


def load_generator(checkpoint: str, device: str) -> LoadedTextToImage:
    from genloom.registry import load_text_to_image_model
    from genloom.train.distributed import pick_device

    loaded = load_text_to_image_model(Path(checkpoint))
    target = pick_device(device)
    loaded.model.to(target)
    loaded.vq.to(target)
    return loaded


def load_reranker(args: argparse.Namespace, generator: LoadedTextToImage) -> LoadedClip | None:
    """The --clip model on the generator's device, or None; a one-line error when only one of the flags is set."""
    from genloom.registry import load_clip_model

    if args.rerank is None and args.clip is None:
        return None
    if args.rerank is None or args.clip is None:
        raise GenloomError("reranking needs both --clip (the reranker) and --rerank N (candidates)")
    clip = load_clip_model(Path(args.clip))
    clip.model.to(next(generator.model.parameters()).device)
    return clip


def _cmd_imagine(args: argparse.Namespace) -> None:
    from genloom.generate.image_io import save_images
    from genloom.generate.imagine import imagine
    from genloom.generate.rerank import imagine_best_of
    from genloom.run_record import attribution, read_data_record

    prompts = [p for p in args.prompts if p != "-"]
    if not prompts:
        prompts = [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise GenloomError("nothing to imagine: pass captions or lines on stdin")
    loaded = load_generator(args.checkpoint, args.device)
    reranker = load_reranker(args, loaded)
    sampling: dict[str, Any] = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                                "guidance_scale": args.guidance_scale, "progress": sys.stderr.isatty(),
                                "use_cache": not args.no_cache}
    params = {"model": str(loaded.path), "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
              "guidance_scale": args.guidance_scale, "seed": args.seed, "n_images": args.n_images}
    image_params = None
    if reranker is None:
        images, _ = imagine(loaded.model, loaded.tokenizer, loaded.vq, prompts, n_images=args.n_images,
                            seed=args.seed, **sampling)
    else:
        best = imagine_best_of(loaded, reranker, prompts, args.n_images, args.rerank, seed=args.seed, **sampling)
        images = best.images
        params |= {"clip": str(reranker.path), "rerank": args.rerank}
        image_params = [{"image_seed": seed, "clip_score": round(float(score), 4)}
                        for seed, score in zip(best.seeds or [], best.scores, strict=True)]
    record = read_data_record(loaded.path)
    credit = attribution(record)
    saved = save_images(images, Path(args.out), prompts, params, data_name=record.get("data"), attribution=credit,
                        image_params=image_params)
    for png in saved.images:
        print(png)
    print(f"grid: {saved.grid}")
    if credit:
        print(credit)
