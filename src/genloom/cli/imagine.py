"""`genloom imagine`: draw images for captions with a text-to-image model of either method (image tokens or
latent diffusion, read from the checkpoint), optionally best-of-N reranked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genloom.cli.common import non_negative_float, positive_int
from genloom.errors import GenloomError

if TYPE_CHECKING:
    from genloom.generate.text_to_image import ImageGenerator
    from genloom.registry import LoadedClip

TOKEN_FLAGS = ("temperature", "top_k", "top_p")
DIFFUSION_FLAGS = ("sampler", "eta", "spacing")


def add_commands(sub: argparse._SubParsersAction) -> None:
    im = sub.add_parser("imagine", help="draw images for captions with a text-to-image model")
    im.add_argument("checkpoint", help="run directory or checkpoint of `genloom train text-to-image`")
    im.add_argument("prompts", nargs="*", help="captions; none or '-' to read one caption per line on stdin")
    im.add_argument("--n-images", type=positive_int, default=4, help="images per caption")
    im.add_argument("--guidance-scale", type=non_negative_float, default=3.0,
                    help="classifier-free guidance: 1 = plain conditional sampling, 0 = ignore the caption")
    im.add_argument("--negative-prompt", help="a caption to steer away from (it replaces the empty caption of "
                    "guidance)")
    im.add_argument("--seed", type=int, default=0, help="image i of the call samples with seed + i")
    add_image_sampling_flags(im)
    im.add_argument("--steps", type=positive_int, help="diffusion: sampling steps (default 20)")
    im.add_argument("--init-image", help="diffusion: a PNG to start from (img2img), at the model's resolution")
    im.add_argument("--strength", type=float, help="diffusion, with --init-image: how much of it to redraw, in "
                    "(0, 1] (default 0.8; 1 keeps nothing)")
    im.add_argument("--preview-every", type=positive_int, metavar="K",
                    help="diffusion: also save the predicted clean images every K steps (preview-step-NNN.png)")
    add_rerank_flags(im, "draw N candidates per caption and keep the --n-images the reranker scores highest")
    im.add_argument("--out", default="samples", help="folder for the PNGs, their JSON sidecars and grid.png (a new "
                    "or empty folder, or an earlier output of imagine, which is replaced)")
    im.add_argument("--no-cache", action="store_true", help="tokens: recompute every position (slower; for "
                    "checking)")
    im.add_argument("--device", default="auto")
    im.set_defaults(func=_cmd_imagine)


def add_image_sampling_flags(p: argparse.ArgumentParser) -> None:
    """The sampling flags of each method; `method_options` refuses those of the other method."""
    p.add_argument("--temperature", type=non_negative_float, help="tokens: 0 = greedy (default 1)")
    p.add_argument("--top-k", type=positive_int, help="tokens: sample among the k most likely codes")
    p.add_argument("--top-p", type=float, help="tokens: nucleus sampling, the smallest set of codes reaching p")
    p.add_argument("--sampler", choices=("dpm++", "ddim", "ddpm", "euler"),
                   help="diffusion: default dpm++ for a ddpm-objective model, euler for a flow model")
    p.add_argument("--eta", type=non_negative_float, help="diffusion, ddim: added noise (0 = deterministic)")
    p.add_argument("--spacing", choices=("trailing", "leading", "linspace"),
                   help="diffusion, ddpm objective: which training timesteps the sampler visits (default trailing)")


def add_rerank_flags(p: argparse.ArgumentParser, rerank_help: str) -> None:
    p.add_argument("--clip", help="run directory or checkpoint of `genloom train clip`: the reranker")
    p.add_argument("--rerank", type=positive_int, metavar="N", help=f"{rerank_help} (needs --clip)")


def method_options(args: argparse.Namespace, generator: ImageGenerator, steps: int | None = None
                   ) -> dict[str, Any]:
    """The keyword arguments of `draw_images` for the checkpoint's method from the flags (and `steps`, for
    diffusion); a one-line error for a flag of the other method."""
    from genloom.diffusion.process import check_sampler
    from genloom.generate.diffuse import DiffusionSampling
    from genloom.generate.text_to_image import method_of
    from genloom.registry import LoadedLatentDiffusion

    method = method_of(generator)
    others = TOKEN_FLAGS if method == "diffusion" else (*DIFFUSION_FLAGS, "steps", "init_image", "strength",
                                                        "preview_every")
    given = [name for name in others if getattr(args, name, None) is not None]
    if method == "diffusion" and getattr(args, "no_cache", False):
        given.append("no_cache")
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise GenloomError(f"{flags}: not for {generator.path}, a {method} model (see --help)")
    if not isinstance(generator, LoadedLatentDiffusion):
        return {"temperature": 1.0 if args.temperature is None else args.temperature, "top_k": args.top_k,
                "top_p": args.top_p, "use_cache": not getattr(args, "no_cache", False)}
    try:
        sampler = check_sampler(generator.model.config.process, args.sampler)
    except ValueError as e:
        raise GenloomError(f"--sampler: {e}") from None
    sampling = DiffusionSampling(steps=steps or 20, sampler=sampler, eta=args.eta or 0.0,
                                 spacing=args.spacing or "trailing")
    return {"sampling": sampling}


def sampling_params(options: dict[str, Any]) -> dict[str, Any]:
    """What `method_options` chose, as the parameters an image records."""
    sampling = options.get("sampling")
    if sampling is None:
        return {k: options[k] for k in ("temperature", "top_k", "top_p")}
    return {"steps": sampling.steps, "sampler": sampling.sampler, "eta": sampling.eta, "spacing": sampling.spacing}


def load_generator(checkpoint: str, device: str) -> ImageGenerator:
    """A text-to-image model of either method with the model that makes its pixels, on `device`."""
    from genloom.generate.text_to_image import pixel_model
    from genloom.registry import load_image_generator
    from genloom.train.distributed import pick_device

    loaded = load_image_generator(Path(checkpoint))
    target = pick_device(device)
    loaded.model.to(target)
    pixel_model(loaded).to(target)
    return loaded


def load_reranker(args: argparse.Namespace, generator: ImageGenerator) -> LoadedClip | None:
    """The --clip model on the generator's device, or None; a one-line error when only one of the flags is set."""
    from genloom.registry import load_clip_model

    if args.rerank is None and args.clip is None:
        return None
    if args.rerank is None or args.clip is None:
        raise GenloomError("reranking needs both --clip (the reranker) and --rerank N (candidates)")
    clip = load_clip_model(Path(args.clip))
    device = next(generator.model.parameters()).device
    clip.model.to(device)
    clip.vq.to(device)
    return clip


def read_init_image(path: str, resolution: int) -> Any:
    """A PNG (or any image Pillow reads) as uint8 (H, W, 3); a one-line error unless it is resolution²."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise GenloomError(f"--init-image {path}: cannot read it as an image ({e})") from None
    if pixels.shape[:2] != (resolution, resolution):
        raise GenloomError(f"--init-image {path} is {pixels.shape[1]}x{pixels.shape[0]}; the model draws "
                           f"{resolution}x{resolution} images")
    return pixels


def _cmd_imagine(args: argparse.Namespace) -> None:
    from genloom.generate.image_io import save_images
    from genloom.generate.rerank import imagine_best_of
    from genloom.generate.text_to_image import draw_images, image_resolution
    from genloom.run_record import attribution, read_data_record

    prompts = [p for p in args.prompts if p != "-"]
    if not prompts:
        prompts = [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise GenloomError("nothing to imagine: pass captions or lines on stdin")
    loaded = load_generator(args.checkpoint, args.device)
    options = method_options(args, loaded, args.steps)
    reranker = load_reranker(args, loaded)
    params: dict[str, Any] = {"model": str(loaded.path), **sampling_params(options),
                              "guidance_scale": args.guidance_scale, "seed": args.seed, "n_images": args.n_images}
    options |= {"guidance_scale": args.guidance_scale, "progress": sys.stderr.isatty()}
    if args.negative_prompt is not None:
        options["negative_prompts"] = [args.negative_prompt] * len(prompts)
        params["negative_prompt"] = args.negative_prompt
    if args.init_image is not None:
        options |= {"init_images": read_init_image(args.init_image, image_resolution(loaded)),
                    "strength": args.strength}
        params |= {"init_image": str(args.init_image), "strength": 0.8 if args.strength is None else args.strength}
    elif args.strength is not None:
        raise GenloomError("--strength says how much of an init image to redraw; pass --init-image too")
    previews: dict[int, Any] = {}
    if args.preview_every is not None:
        options |= {"preview_every": args.preview_every, "on_preview": previews.__setitem__}
    image_params = None
    if reranker is None:
        images, _ = draw_images(loaded, prompts, args.n_images, seed=args.seed, **options)
    else:
        best = imagine_best_of(loaded, reranker, prompts, args.n_images, args.rerank, seed=args.seed, **options)
        images = best.images
        params |= {"clip": str(reranker.path), "rerank": args.rerank}
        image_params = [{"image_seed": seed, "clip_score": round(float(score), 4)}
                        for seed, score in zip(best.seeds or [], best.scores, strict=True)]
    record = read_data_record(loaded.path)
    credit = attribution(record)
    saved = save_images(images, Path(args.out), prompts, params, data_name=record.get("data"), attribution=credit,
                        image_params=image_params, previews=previews)
    for png in saved.images:
        print(png)
    print(f"grid: {saved.grid}")
    if previews:
        print(f"previews: {len(previews)} grids (preview-step-NNN.png) in {args.out}")
    if credit:
        print(credit)
