"""Text-to-image commands (DALL-E style): `train image-tokenizer`, `train text-to-image`, `train clip` (the
reranker), `imagine`, `eval text-to-image` and `quickstart image`.

Which data a run learnt from: each `train` command here writes `data.json` into its run directory
(`{"data": "builtin:emoji", "resolution": 32, "limit": null, "val_fraction": 0.05, ...}`), next to its
checkpoints. A checkpoint finds it in its own directory or its parent (the run directory), the same places
`load_text_to_image_model` looks for `image_tokenizer/`. `imagine` reads it to add OpenMoji's attribution to images
of a model trained on builtin:emoji (as its licence requires), and `eval text-to-image` to rebuild the run's
train/validation split. A plain file rather than the checkpoint config, because the shared trainer writes those.

Splits: every command cuts the data with `ImageCaptionSet.split(val_fraction, seed=0)`, so training and
evaluation agree on which images were trained on. On builtin:shapes the held-out (colour, shape) combinations
go to the test split, never to train or validation, for the image tokenizer as for the text-to-image model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genloom.cli.common import (
    add_training_flags,
    non_negative_float,
    positive_int,
    report_done,
    train_config,
)
from genloom.errors import GenloomError

if TYPE_CHECKING:
    import numpy as np

    from genloom.data.images import ImageCaptionSet
    from genloom.models.registry import LoadedClip, LoadedTextToImage
    from genloom.train.trainer import TrainResult

DATA_RECORD = "data.json"  # in a run directory: the data its model learnt from (see the module docstring)
SPLIT_SEED = 0  # ImageCaptionSet.split seed shared by training and evaluation
DATA_HELP = "builtin:shapes | builtin:digits | builtin:emoji | a folder of images with captions"
METHODS = ("tokens",)  # `--method diffusion` (latent diffusion) is a later addition
QUICKSTART_IMAGE_DIR = "runs/quickstart-image"
# Time budgets that keep the whole quickstart within about 10 minutes on 2 CPU cores; the step counts are upper
# bounds the budgets normally cut short.
QUICKSTART_VQ_MINUTES = 1.5
QUICKSTART_DALLE_MINUTES = 7.0
QUICKSTART_VQ_STEPS = 3000
QUICKSTART_DALLE_STEPS = 8000
QUICKSTART_SCENES = 20000  # ~13.6k training scenes: 7 minutes of training (~2100 steps) sees each ~5 times
QUICKSTART_GUIDANCE = 2.0
# Seen combinations, then ones naming a held-out (colour, shape) pair (builtin_images.HELD_OUT).
QUICKSTART_PROMPTS = (
    "a red circle",
    "a blue square above a yellow triangle",
    "a cyan circle left of a red square",
    "a green triangle",
    "a magenta square below a blue circle",
)


def add_commands(
    sub: argparse._SubParsersAction, train_sub: argparse._SubParsersAction, eval_sub: argparse._SubParsersAction
) -> None:
    """`train image-tokenizer`, `train text-to-image` and `train clip`, `eval text-to-image`, and `imagine` at the top
    level."""
    _add_train_image_tokenizer(train_sub)
    _add_train_text_to_image(train_sub)
    _add_train_clip(train_sub)

    im = sub.add_parser("imagine", help="draw images for captions with a text-to-image model")
    im.add_argument("checkpoint", help="run directory or checkpoint of `genloom train text-to-image`")
    im.add_argument("prompts", nargs="*", help="captions; none or '-' to read one caption per line on stdin")
    im.add_argument("--n-images", type=positive_int, default=4, help="images per caption")
    _add_sampling_flags(im)
    im.add_argument("--guidance-scale", type=non_negative_float, default=3.0,
                    help="classifier-free guidance: 1 = plain conditional sampling, 0 = ignore the caption")
    im.add_argument("--seed", type=int, default=0, help="image i of the call samples with seed + i")
    _add_rerank_flags(im, "draw N candidates per caption and keep the --n-images the reranker scores highest")
    im.add_argument("--out", default="samples", help="folder for the PNGs, their JSON sidecars and grid.png")
    im.add_argument("--no-cache", action="store_true", help="recompute every position (slower; for checking)")
    im.add_argument("--device", default="auto")
    im.set_defaults(func=_cmd_imagine)

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
    _add_sampling_flags(ev)
    ev.add_argument("--seed", type=int, default=0)
    _add_rerank_flags(ev, "each scored image is the best of N candidates by the reranker")
    ev.add_argument("--batch-size", type=positive_int, default=32, help="captions sampled together")
    ev.add_argument("--json", help="also write the scores of every guidance scale to this JSON file")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_cmd_eval)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely codes")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of codes reaching p")


def _add_rerank_flags(p: argparse.ArgumentParser, rerank_help: str) -> None:
    p.add_argument("--clip", help="run directory or checkpoint of `genloom train clip`: the reranker")
    p.add_argument("--rerank", type=positive_int, metavar="N", help=f"{rerank_help} (needs --clip)")


def _reranker(args: argparse.Namespace, generator: LoadedTextToImage) -> LoadedClip | None:
    """The --clip model on the generator's device, or None; a one-line error when only one of the flags is set."""
    from genloom.models.registry import load_clip_model

    if args.rerank is None and args.clip is None:
        return None
    if args.rerank is None or args.clip is None:
        raise GenloomError("reranking needs both --clip (the reranker) and --rerank N (candidates)")
    clip = load_clip_model(Path(args.clip))
    clip.model.to(next(generator.model.parameters()).device)
    return clip


def _add_data_flags(d: argparse._ActionsContainer, resolution_help: str) -> None:
    d.add_argument("--data", required=True, help=DATA_HELP)
    d.add_argument("--resolution", type=positive_int, help=resolution_help)
    d.add_argument("--limit", type=positive_int,
                   help="use only the first N images (builtin:shapes: draw N scenes instead of 5000)")
    d.add_argument("--val-fraction", type=float, default=0.05, help="share of the images held out for validation")


def _add_train_image_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image-tokenizer", help="train a VQ image tokenizer (images -> a grid of codes)")
    _add_data_flags(p.add_argument_group("data"), "images and tokenizer at N x N (default: the preset's "
                    "resolution); the code grid is N / 2**(len(widths) - 1) on a side")
    m = p.add_argument_group("model (flags override the preset)")
    m.add_argument("--preset", default="vq-small", help="vq-tiny, vq-small, vq-digits, vq-colour")
    m.add_argument("--encoder", choices=("conv", "patch"),
                   help="conv: codes also see neighbouring patches; patch: each code sees only its own patch, so "
                   "equal patches get equal codes (easier for the caption->image model on flat-colour images)")
    m.add_argument("--codebook-size", type=positive_int, help="codes in the codebook (the image vocabulary)")
    m.add_argument("--code-dim", type=positive_int, help="dimension of a code")
    m.add_argument("--colour-codes", type=positive_int,
                   help="factorised tokens for flat-coloured images on a dark background: --codebook-size shape "
                   "codes of the patch's brightness x this many colour codes (needs --encoder patch)")
    m.add_argument("--commitment", type=non_negative_float, help="weight of the commitment loss")
    m.add_argument("--dead-code-steps", type=int, help="re-seed codes unused this many steps; 0: never")
    t = add_training_flags(p, out="runs/image-tokenizer", lr_help="peak learning rate", warmup=100, weight_decay=0.0)
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per micro-batch per process")
    p.set_defaults(func=_cmd_train_image_tokenizer)


def _add_train_text_to_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("text-to-image", help="train a caption -> image model on top of a VQ image tokenizer")
    p.add_argument("--method", default="tokens", help="tokens: a Transformer over caption + image tokens (DALL-E)")
    d = p.add_argument_group("data")
    _add_data_flags(d, "load images at N x N (default: the image tokenizer's resolution, which they must match)")
    d.add_argument("--image-tokenizer", help="run directory or checkpoint of `genloom train image-tokenizer`")
    d.add_argument("--vocab-size", type=positive_int, default=512, help="caption BPE vocabulary size")
    m = p.add_argument_group("model (flags override the preset)")
    m.add_argument("--preset", default="dalle-small", help="dalle-tiny, dalle-compact, dalle-small")
    m.add_argument("--d-model", type=positive_int)
    m.add_argument("--n-layers", type=positive_int)
    m.add_argument("--n-heads", type=positive_int)
    m.add_argument("--d-ff", type=positive_int, help="hidden width of each MLP")
    m.add_argument("--dropout", type=non_negative_float)
    m.add_argument("--caption-attention", choices=("causal", "self"),
                   help="causal: caption tokens see earlier caption tokens (DALL-E); self: only themselves, so words "
                   "reach the image uncontextualised")
    m.add_argument("--image-loss-weight", type=non_negative_float,
                   help="weight w of the image tokens' loss against the caption's, 1:w (default 7, as DALL-E)")
    t = add_training_flags(p, out="runs/text-to-image", lr_help="peak learning rate", warmup=100, weight_decay=0.1)
    t.add_argument("--batch-size", type=positive_int, default=32, help="(caption, image) pairs per micro-batch")
    t.add_argument("--caption-dropout", type=non_negative_float, default=0.15,
                   help="share of captions replaced by the empty one, for classifier-free guidance")
    p.set_defaults(func=_cmd_train_text_to_image)


def _add_train_clip(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clip", help="train a CLIP-style caption/image reranker on the codes of a VQ image tokenizer")
    d = p.add_argument_group("data")
    _add_data_flags(d, "default: the image tokenizer's")
    d.add_argument("--image-tokenizer", help="the text-to-image run's image_tokenizer/ (or the image-tokenizer run "
                   "it was trained with): the reranker reads the codes that model writes")
    d.add_argument("--vocab-size", type=positive_int, default=512, help="caption BPE vocabulary size")
    m = p.add_argument_group("model (flags override the preset)")
    m.add_argument("--preset", default="clip-small", help="clip-tiny, clip-small")
    m.add_argument("--d-model", type=positive_int)
    m.add_argument("--n-layers", type=positive_int, help="layers of each encoder")
    m.add_argument("--n-heads", type=positive_int)
    m.add_argument("--embed-dim", type=positive_int, help="dimension of the shared caption/image space")
    t = add_training_flags(p, out="runs/clip", lr_help="peak learning rate", warmup=100, weight_decay=0.01)
    t.add_argument("--batch-size", type=positive_int, default=128,
                   help="(caption, image) pairs per micro-batch: each image's in-batch negatives")
    p.set_defaults(func=_cmd_train_clip)


# ---- data ---------------------------------------------------------------------------------------------------


def load_images(spec: str, resolution: int | None, limit: int | None = None) -> ImageCaptionSet:
    """builtin:NAME or a folder at `resolution` (None: the set's default), cut to its first `limit` images."""
    from genloom.data.builtin_images import builtin_images
    from genloom.data.images import load_image_folder

    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name == "shapes" and limit is not None:
            return builtin_images(name, resolution, n=limit)  # draws exactly `limit` scenes
        data = builtin_images(name, resolution)
    else:
        if resolution is None:
            raise GenloomError(f"--resolution is needed to load the folder {spec}")
        data = load_image_folder(spec, resolution)
        if data.skipped:
            print(f"skipped {data.skipped} unreadable images in {spec}")
    if limit is not None and limit < len(data):
        data = data.subset(range(limit))
    return data


def split_images(data: ImageCaptionSet, val_fraction: float) -> tuple[ImageCaptionSet, ...]:
    """(train, val, test) as every command here cuts them; held-out shapes are only ever in test."""
    train, val, test = data.split(val_fraction, 0.0, seed=SPLIT_SEED)
    # The composition test depends on it: no held-out (colour, shape) pair is ever trained on.
    assert train.held_out is None or not train.held_out.any(), "held-out images in the training split"
    return train, val, test


def _data_record(data: ImageCaptionSet, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {"data": data.name, "resolution": data.resolution[0], "images": len(data), "limit": args.limit,
            "val_fraction": args.val_fraction, "split_seed": SPLIT_SEED, **extra}


def _write_data_record(run_dir: Path, record: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Record the data of a run that is about to train; not when the trainer will refuse an earlier run."""
    from genloom.train.checkpoint import BEST_DIR, list_checkpoints

    if os.environ.get("RANK", "0") != "0":
        return
    path = run_dir / DATA_RECORD
    earlier = bool(list_checkpoints(run_dir)) or (run_dir / BEST_DIR).exists()
    if (resume and path.exists()) or (not resume and earlier and not overwrite):
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def read_data_record(checkpoint: Path) -> dict[str, Any]:
    """The `data.json` beside a checkpoint (in it, or in its run directory); {} when there is none."""
    for folder in (checkpoint, checkpoint.parent):
        path = folder / DATA_RECORD
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise GenloomError(f"{path} is not valid JSON") from None
            return record if isinstance(record, dict) else {}
    return {}


def _report_best(result: TrainResult, keys: tuple[str, ...]) -> None:
    if not result.best or os.environ.get("RANK", "0") != "0":
        return
    # report_done names best/ and its loss; these are the numbers that chose it.
    shown = ", ".join(f"{k.replace('_', ' ')} {result.best[k]:.4g}" for k in keys if k in result.best)
    print(f"  best/ {shown}")


# ---- train --------------------------------------------------------------------------------------------------


def _cmd_train_image_tokenizer(args: argparse.Namespace) -> None:
    from genloom.data.images import check_resolution
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.image_tokenizer import build_model_config, train_image_tokenizer

    overrides = {"resolution": args.resolution, "encoder": args.encoder, "codebook_size": args.codebook_size,
                 "code_dim": args.code_dim, "colour_codes": args.colour_codes, "commitment": args.commitment,
                 "dead_code_steps": args.dead_code_steps}
    try:
        model_config = build_model_config(args.preset, **overrides)
    except ValueError as e:
        raise GenloomError(str(e)) from None
    data = load_images(args.data, model_config.resolution, args.limit)
    check_resolution(data, model_config.resolution, f"the {args.preset} preset")
    train, val, _ = split_images(data, args.val_fraction)
    cfg = train_config(args, batch_size=args.batch_size, min_lr=args.lr / 10, best_metric="psnr")
    _write_data_record(Path(args.out), _data_record(data, args), args.resume, args.overwrite)
    print(f"{data.name}: {len(train)} training and {len(val)} validation images at {data.resolution[0]}x"
          f"{data.resolution[1]}")
    try:
        _, result = train_image_tokenizer(
            train.images, val.images, args.preset, cfg, model_overrides=overrides, resume=args.resume
        )
    finally:
        shutdown_distributed()
    report_done(result)
    _report_best(result, ("psnr", "codebook_usage", "codebook_perplexity"))


def _image_tokenizer_flag(args: argparse.Namespace) -> Path:
    if args.image_tokenizer is None:
        raise GenloomError("--image-tokenizer is required: the run directory of `genloom train image-tokenizer`")
    path = Path(args.image_tokenizer)
    if not path.exists():
        raise GenloomError(f"--image-tokenizer {path} does not exist; train one with `genloom train image-tokenizer`")
    return path


def _cmd_train_text_to_image(args: argparse.Namespace) -> None:
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.text_to_image import IMAGE_TOKENIZER_DIR, load_image_tokenizer, train_text_to_image

    if args.method == "diffusion":
        raise GenloomError("--method diffusion (latent diffusion) is not available yet; use --method tokens")
    if args.method not in METHODS:
        raise GenloomError(f"unknown --method {args.method!r}; choose from: {', '.join(METHODS)}")
    if args.resume:
        vq_path = None
        vq = load_image_tokenizer(Path(args.out) / IMAGE_TOKENIZER_DIR)
    else:
        vq_path = _image_tokenizer_flag(args)
        vq = load_image_tokenizer(vq_path)
    data = load_images(args.data, args.resolution or vq.config.resolution, args.limit)
    train, val, test = split_images(data, args.val_fraction)
    held = "" if data.held_out is None else f"; {len(test)} held-out combinations kept for testing"
    print(f"{data.name}: {len(train)} training and {len(val)} validation images{held}")
    vq_data = read_data_record(vq_path).get("data") if vq_path is not None else None
    overrides = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads, "d_ff": args.d_ff,
                 "dropout": args.dropout, "image_loss_weight": args.image_loss_weight,
                 "caption_attention": args.caption_attention}
    cfg = train_config(args, batch_size=args.batch_size, min_lr=args.lr / 10, best_metric="val_image_loss")
    _write_data_record(Path(args.out), _data_record(data, args, image_tokenizer_data=vq_data), args.resume,
                       args.overwrite)
    try:
        _, _, _, result = train_text_to_image(
            train, val, vq_path, args.preset, cfg, vocab_size=args.vocab_size, caption_dropout=args.caption_dropout,
            model_overrides=overrides, resume=args.resume,
        )
    except ValueError as e:  # a model config the overrides made impossible (d_model vs n_heads, ...)
        raise GenloomError(str(e)) from None
    finally:
        shutdown_distributed()
    report_done(result)
    _report_best(result, ("val_image_loss", "val_image_accuracy"))


def _cmd_train_clip(args: argparse.Namespace) -> None:
    from genloom.train.clip import train_clip
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.text_to_image import IMAGE_TOKENIZER_DIR, load_image_tokenizer

    vq_path = None if args.resume else _image_tokenizer_flag(args)
    vq = load_image_tokenizer(vq_path or Path(args.out) / IMAGE_TOKENIZER_DIR)
    data = load_images(args.data, args.resolution or vq.config.resolution, args.limit)
    train, val, _ = split_images(data, args.val_fraction)
    print(f"{data.name}: {len(train)} training and {len(val)} validation images")
    overrides = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads,
                 "embed_dim": args.embed_dim}
    cfg = train_config(args, batch_size=args.batch_size, min_lr=args.lr / 10)
    _write_data_record(Path(args.out), _data_record(data, args), args.resume, args.overwrite)
    try:
        _, _, result = train_clip(train, val, vq_path, args.preset, cfg, vocab_size=args.vocab_size,
                                  model_overrides=overrides, resume=args.resume)
    except ValueError as e:
        raise GenloomError(str(e)) from None
    finally:
        shutdown_distributed()
    report_done(result)
    _report_best(result, ("val_accuracy",))


# ---- imagine ------------------------------------------------------------------------------------------------


def _load(checkpoint: str, device: str) -> LoadedTextToImage:
    from genloom.models.registry import load_text_to_image_model
    from genloom.train.distributed import pick_device

    loaded = load_text_to_image_model(Path(checkpoint))
    target = pick_device(device)
    loaded.model.to(target)
    loaded.vq.to(target)
    return loaded


def _attribution(record: dict[str, Any]) -> str | None:
    from genloom.data.builtin_images import OPENMOJI_ATTRIBUTION
    from genloom.generate.imagine import EMOJI_DATA

    return OPENMOJI_ATTRIBUTION if EMOJI_DATA in (record.get("data"), record.get("image_tokenizer_data")) else None


def _cmd_imagine(args: argparse.Namespace) -> None:
    from genloom.generate.imagine import imagine, save_images
    from genloom.generate.rerank import imagine_best_of

    prompts = [p for p in args.prompts if p != "-"]
    if not prompts:
        prompts = [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise GenloomError("nothing to imagine: pass captions or lines on stdin")
    loaded = _load(args.checkpoint, args.device)
    reranker = _reranker(args, loaded)
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
    attribution = _attribution(record)
    saved = save_images(images, Path(args.out), prompts, params, data_name=record.get("data"),
                        attribution=attribution, image_params=image_params)
    for png in saved.images:
        print(png)
    print(f"grid: {saved.grid}")
    if attribution:
        print(attribution)


# ---- eval ---------------------------------------------------------------------------------------------------


def _guidance_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GenloomError(f"--guidance-scales expects numbers like 1,3,5, got {text!r}") from None
    if not scales or any(s < 0 for s in scales):
        raise GenloomError(f"--guidance-scales expects numbers >= 0 like 1,3,5, got {text!r}")
    return scales


def generate_for(
    loaded: LoadedTextToImage, captions: list[str], n: int, scale: float, args: argparse.Namespace,
    reranker: LoadedClip | None = None,
) -> np.ndarray:
    """`n` images per caption (caption-major), `args.batch_size` captions at a time; image i uses seed + i.

    With a reranker each image is the best of `args.rerank` candidates (candidate j of image i: seed + i * N + j).
    """
    import numpy as np

    from genloom.generate.imagine import imagine
    from genloom.generate.rerank import imagine_best_of

    sampling: dict[str, Any] = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                                "guidance_scale": scale, "progress": False}
    out = []
    for start in range(0, len(captions), args.batch_size):
        chunk = captions[start : start + args.batch_size]
        if reranker is None:
            images, _ = imagine(loaded.model, loaded.tokenizer, loaded.vq, chunk, n_images=n,
                                seed=args.seed + start * n, **sampling)
        else:
            per_image = [c for c in chunk for _ in range(n)]
            images = imagine_best_of(loaded, reranker, per_image, 1, args.rerank,
                                     seed=args.seed + start * n * args.rerank, **sampling).images
        out.append(images)
    return np.concatenate(out)


def _sample_captions(data: ImageCaptionSet, k: int, seed: int) -> list[str]:
    import numpy as np

    unique = sorted(set(data.captions))
    chosen = np.random.default_rng(seed).permutation(len(unique))[:k]
    return [unique[i] for i in sorted(chosen.tolist())]


def _cmd_eval(args: argparse.Namespace) -> None:
    import numpy as np

    from genloom.data.builtin_images import DIGIT_WORDS
    from genloom.eval.memorization import format_memorization_report, memorization_report

    scales = _guidance_scales(args.guidance_scales)
    loaded = _load(args.checkpoint, args.device)
    reranker = _reranker(args, loaded)
    record = read_data_record(loaded.path)
    spec = args.data or record.get("data")
    if spec not in ("builtin:shapes", "builtin:digits"):
        raise GenloomError(f"eval text-to-image scores builtin:shapes or builtin:digits, not {spec!r}; pass --data")
    same = record.get("data") == spec
    limit = args.limit if args.limit is not None else (record.get("limit") if same else None)
    val_fraction = args.val_fraction if args.val_fraction is not None else (
        record.get("val_fraction", 0.05) if same else 0.05)
    data = load_images(spec, args.resolution or loaded.vq.config.resolution, limit)
    train, val, test = split_images(data, val_fraction)
    unseen = np.concatenate([val.images, test.images])  # real images no training step saw
    n = args.n_per_caption

    if spec == "builtin:shapes":
        from genloom.eval.shapes import score_shapes

        captions = _sample_captions(train, args.max_captions, args.seed)
        captions += _sample_captions(test, args.max_captions, args.seed)  # test = the held-out combinations
        header = (f"{'guidance':>8}  {'seen all-correct':>16}  {'held-out all-correct':>20}  "
                  f"{'seen colour+shape':>17}  {'held-out colour+shape':>21}  {'copy rate':>9}")
        intro = f"{len(captions)} captions ({len(set(test.captions) & set(captions))} held-out), {n} images each"
    else:
        from genloom.eval.digits import DigitsEvaluator

        evaluator = DigitsEvaluator()
        captions = [f"the digit {word}" for word in DIGIT_WORDS]
        header = f"{'guidance':>8}  {'accuracy':>8}  {'Fréchet':>8}  {'copy rate':>9}"
        intro = f"the ten digit captions, {n} images each"
    per_image = [c for c in captions for _ in range(n)]
    if reranker is not None:
        intro += f", each the best of {args.rerank} by the reranker {reranker.path}"
    print(f"{spec} with {loaded.path}: {intro}")
    rows, scores = [], []
    for scale in scales:
        images = generate_for(loaded, captions, n, scale, args, reranker)
        memo = memorization_report(images, train.images, unseen)
        print(f"--- guidance scale {scale:g}")
        if spec == "builtin:shapes":
            shapes = score_shapes(images, per_image)
            print(shapes.format_report())
            groups = {"all": shapes.overall, "seen": shapes.seen, "held_out": shapes.held_out}
            scores.append({"guidance_scale": scale, **{k: dataclasses.asdict(g) for k, g in groups.items()},
                           "memorization": memo})
            rows.append(f"{scale:>8g}  {_pct(shapes.seen.all_correct):>16}  {_pct(shapes.held_out.all_correct):>20}  "
                        f"{_pct(shapes.seen.binding):>17}  {_pct(shapes.held_out.binding):>21}  "
                        f"{_pct(memo['copy_rate']):>9}")
        else:
            digits = evaluator.score(images, per_image, reference=data.images)
            print(digits.format_report())
            scores.append({"guidance_scale": scale, **dataclasses.asdict(digits), "memorization": memo})
            rows.append(f"{scale:>8g}  {_pct(digits.accuracy):>8}  {digits.frechet or 0.0:>8.3f}  "
                        f"{_pct(memo['copy_rate']):>9}")
        print(format_memorization_report(memo))
    print("--- summary")
    print(header)
    for row in rows:
        print(row)
    if args.json:
        report = {"checkpoint": str(loaded.path), "data": spec, "captions": captions, "n_per_caption": n,
                  "clip": None if reranker is None else str(reranker.path), "rerank": args.rerank,
                  "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
                  "scores": scores}
        Path(args.json).write_text(json.dumps(_nan_to_null(report), indent=2) + "\n")


def _nan_to_null(value: Any) -> Any:
    """NaN (a group with no image) as JSON null rather than the non-standard NaN token."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_null(v) for v in value]
    return value


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"  # NaN: no image in that group


# ---- quickstart ---------------------------------------------------------------------------------------------


def quickstart(args: argparse.Namespace) -> None:
    from genloom.data.builtin_images import builtin_images
    from genloom.eval.shapes import score_shapes
    from genloom.generate.imagine import imagine, save_images
    from genloom.models.registry import load_text_to_image_model
    from genloom.train.config import TrainConfig
    from genloom.train.image_tokenizer import train_image_tokenizer
    from genloom.train.text_to_image import train_text_to_image

    out = Path(args.out if args.out is not None else QUICKSTART_IMAGE_DIR)
    vq_dir, dalle_dir, samples = out / "image-tokenizer", out / "text-to-image", out / "samples"
    print("genloom quickstart image: a VQ image tokenizer and a caption -> image Transformer on coloured shapes "
          "(builtin:shapes, 32x32), on the CPU, in about 10 minutes.")
    start = time.perf_counter()
    data = builtin_images("shapes", 32, n=QUICKSTART_SCENES)
    train, val, test = split_images(data, 0.05)
    print(f"{len(train)} training images; {len(test)} showing held-out colour+shape pairs are kept out")
    # What `eval text-to-image` needs to rebuild this split (`--limit` draws that many scenes).
    record = {"data": data.name, "resolution": 32, "images": len(data), "limit": QUICKSTART_SCENES,
              "val_fraction": 0.05, "split_seed": SPLIT_SEED}

    def budget(run_dir: Path, steps: int, minutes: float, lr: float) -> TrainConfig:
        steps = min(steps, args.steps) if args.steps is not None else steps
        return TrainConfig(
            out_dir=str(run_dir), max_steps=steps, batch_size=32, lr=lr, min_lr=lr / 10, warmup_steps=min(100, steps),
            weight_decay=0.0, eval_interval=max(1, min(500, steps)), eval_batches=4, device="cpu",
            max_minutes=minutes, overwrite=True, best_metric="val_loss",
        )

    for run_dir in (vq_dir, dalle_dir):
        _write_data_record(run_dir, record, resume=False, overwrite=True)
    # Shape x colour tokens: a held-out pair such as "a green triangle" is a new pair of known codes.
    print(f"1/2 image tokenizer (vq-colour: shape x colour tokens, up to {QUICKSTART_VQ_MINUTES:g} minutes)")
    _, vq_result = train_image_tokenizer(
        train.images, val.images, "vq-colour", budget(vq_dir, QUICKSTART_VQ_STEPS, QUICKSTART_VQ_MINUTES, 2e-3)
    )
    psnr = vq_result.best.get("psnr", float("nan"))
    print(f"   {vq_result.step} steps; reconstruction PSNR {psnr:.1f} dB")
    print(f"2/2 caption -> image model (dalle-compact, up to {QUICKSTART_DALLE_MINUTES:g} minutes)")
    _, _, _, result = train_text_to_image(
        train, val, vq_dir, "dalle-compact",
        budget(dalle_dir, QUICKSTART_DALLE_STEPS, QUICKSTART_DALLE_MINUTES, 2e-3),
    )
    print(f"   {result.step} steps; val loss {result.val_loss:.3f}")
    loaded = load_text_to_image_model(dalle_dir)
    n = 4
    images, _ = imagine(loaded.model, loaded.tokenizer, loaded.vq, list(QUICKSTART_PROMPTS), n_images=n,
                        guidance_scale=QUICKSTART_GUIDANCE, seed=0, progress=False)
    params = {"model": str(loaded.path), "temperature": 1.0, "guidance_scale": QUICKSTART_GUIDANCE, "seed": 0,
              "n_images": n}
    saved = save_images(images, samples, list(QUICKSTART_PROMPTS), params, data_name=data.name)
    print(f"{n} images per caption (guidance scale {QUICKSTART_GUIDANCE:g}) in {saved.grid}, one row per caption:")
    for prompt in QUICKSTART_PROMPTS:
        print(f"  {prompt}")
    print(score_shapes(images, [p for p in QUICKSTART_PROMPTS for _ in range(n)]).format_report())
    print(f"done in {time.perf_counter() - start:.0f} s; try: genloom imagine {dalle_dir} \"a yellow square\"")
