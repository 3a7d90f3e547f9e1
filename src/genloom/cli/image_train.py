"""Image training commands: `train image-tokenizer`, `train text-to-image` and `train clip` (the reranker).

Each writes the run's data record (`genloom.run_record`), which `eval text-to-image` reads to rebuild the split
and `imagine` to credit the data's licence.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genloom.cli.common import (
    add_dtype_flag,
    add_training_flags,
    non_negative_float,
    positive_int,
    report_done,
    train_config,
)
from genloom.data.image_sets import IMAGE_DATA_HELP
from genloom.errors import GenloomError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from genloom.data.images import ImageCaptionSet
    from genloom.train.image_tokenizer import ImageReconstructionTask

METHODS = ("tokens", "diffusion")
PRESETS = {"tokens": "dalle-small", "diffusion": "dit-small"}
CAPTION_DROPOUT = {"tokens": 0.15, "diffusion": 0.1}
DIFFUSION_EMA = 0.999  # diffusion samples from averaged weights unless --ema-decay says otherwise


def add_commands(train_sub: argparse._SubParsersAction) -> None:
    _add_train_image_tokenizer(train_sub)
    _add_train_image_autoencoder(train_sub)
    _add_train_text_to_image(train_sub)
    _add_train_clip(train_sub)


def _add_data_flags(d: argparse._ActionsContainer, resolution_help: str) -> None:
    d.add_argument("--data", required=True, help=IMAGE_DATA_HELP)
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


def _add_train_image_autoencoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image-autoencoder", help="train a KL autoencoder (images -> a continuous latent grid, the "
                       "latent space of diffusion)")
    _add_data_flags(p.add_argument_group("data"), "images at N x N (default: the preset's resolution)")
    m = p.add_argument_group("model (flags override the preset)")
    m.add_argument("--preset", default="vae-32", help="vae-tiny, vae-32, vae-digits")
    m.add_argument("--latent-channels", type=positive_int, help="channels of the latent grid")
    m.add_argument("--kl-weight", type=non_negative_float, help="weight of the KL term")
    m.add_argument("--edge-weight", type=non_negative_float, help="weight of the image-gradient L1 term")
    t = add_training_flags(p, out="runs/image-autoencoder", lr_help="peak learning rate", warmup=100,
                           weight_decay=0.0)
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per micro-batch per process")
    p.set_defaults(func=_cmd_train_image_autoencoder)


def _add_train_text_to_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("text-to-image", help="train a caption -> image model: image tokens (DALL-E) or latent "
                       "diffusion (Stable Diffusion)")
    p.add_argument("--method", default="tokens", help="tokens: a Transformer over caption + VQ image tokens "
                   "(needs --image-tokenizer); diffusion: a diffusion Transformer over VAE latents (needs "
                   "--autoencoder)")
    d = p.add_argument_group("data")
    _add_data_flags(d, "load images at N x N (default: the image tokenizer's or autoencoder's resolution, which "
                    "they must match)")
    d.add_argument("--image-tokenizer", help="tokens: run directory or checkpoint of `genloom train image-tokenizer`")
    d.add_argument("--autoencoder", help="diffusion: run directory or checkpoint of `genloom train "
                   "image-autoencoder`")
    d.add_argument("--vocab-size", type=positive_int, default=512, help="caption BPE vocabulary size")
    d.add_argument("--random-flip", action="store_true",
                   help="mirror each training pair left-right with probability 1/2, the words left and right of "
                   "its caption swapped: for images whose meaning survives a mirror (shapes, most photos; not "
                   "digits or text)")
    m = p.add_argument_group("model (flags override the preset)")
    m.add_argument("--preset", help="tokens: dalle-tiny, dalle-compact, dalle-small (default); diffusion: dit-tiny, "
                   "dit-small (default), dit-b")
    m.add_argument("--d-model", type=positive_int)
    m.add_argument("--n-layers", type=positive_int)
    m.add_argument("--n-heads", type=positive_int)
    m.add_argument("--d-ff", type=positive_int, help="hidden width of each MLP")
    m.add_argument("--dropout", type=non_negative_float, help="tokens only")
    m.add_argument("--caption-attention", choices=("causal", "self"),
                   help="tokens: causal: caption tokens see earlier caption tokens (DALL-E); self: only themselves, "
                   "so words reach the image uncontextualised")
    m.add_argument("--image-loss-weight", type=non_negative_float,
                   help="tokens: weight w of the image tokens' loss against the caption's, 1:w (default 7, as DALL-E)")
    m.add_argument("--patch-size", type=positive_int, help="diffusion: a token is a p x p patch of the latent")
    m.add_argument("--text-layers", type=positive_int, help="diffusion: layers of the caption encoder")
    f = p.add_argument_group("diffusion process (--method diffusion; saved in the checkpoint, which sampling obeys)")
    f.add_argument("--objective", choices=("ddpm", "flow"), default="ddpm",
                   help="ddpm: denoise along a noise schedule; flow: rectified flow / flow matching")
    # The objective-specific flags default to None (DiffusionConfig's defaults apply), so that one given with the
    # other objective is refused instead of silently ignored.
    f.add_argument("--prediction", choices=("epsilon", "v_prediction", "sample"),
                   help="ddpm: what the denoiser outputs (the noise, v, or the clean latent; default epsilon)")
    f.add_argument("--schedule", choices=("linear", "scaled_linear", "cosine"),
                   help="ddpm: the β schedule (default linear)")
    f.add_argument("--train-timesteps", type=positive_int, default=1000)
    f.add_argument("--min-snr-gamma", type=non_negative_float,
                   help="ddpm: min-SNR-γ loss weighting (5 is the paper's; default 0: off)")
    f.add_argument("--flow-shift", type=float,
                   help="flow: shift of the sampling noise levels (SD3; default 1)")
    f.add_argument("--logit-mean", type=float,
                   help="flow: training noise levels are sigmoid(N(mean, std^2)) (SD3's logit-normal; default 0); a "
                   "mean > 0 trains more at high noise, where the layout a caption asks for is decided")
    f.add_argument("--logit-std", type=float, help="flow: the std of that normal (default 1)")
    t = add_training_flags(p, out="runs/text-to-image", lr_help="peak learning rate", warmup=100, weight_decay=0.1)
    t.add_argument("--batch-size", type=positive_int, default=32, help="(caption, image) pairs per micro-batch")
    t.add_argument("--caption-dropout", type=non_negative_float,
                   help="share of captions replaced by the empty one, for classifier-free guidance (default: 0.15 "
                   "tokens, 0.1 diffusion)")
    add_dtype_flag(t)
    p.set_defaults(func=_cmd_train_text_to_image, ema_decay=None)  # None: off for tokens, 0.999 for diffusion


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


def _load_data(args: argparse.Namespace, resolution: int | None) -> tuple[ImageCaptionSet, ...]:
    """(all, train, val, test) of --data as every command cuts it, after a line saying what they are."""
    from genloom.data.image_sets import load_images, split_images

    data = load_images(args.data, resolution, args.limit)
    if data.skipped:
        print(f"skipped {data.skipped} unreadable images in {args.data}")
    train, val, test = split_images(data, args.val_fraction)
    held = "" if data.held_out is None else f"; {len(test)} held-out combinations kept for testing"
    print(f"{data.name}: {len(train)} training and {len(val)} validation images at {data.resolution[0]}x"
          f"{data.resolution[1]}{held}")
    return data, train, val, test


def _cmd_train_image_tokenizer(args: argparse.Namespace) -> None:
    from genloom.train.image_tokenizer import ImageTokenizerTask

    overrides = {"resolution": args.resolution, "encoder": args.encoder, "codebook_size": args.codebook_size,
                 "code_dim": args.code_dim, "colour_codes": args.colour_codes, "commitment": args.commitment,
                 "dead_code_steps": args.dead_code_steps}
    _train_reconstruction(args, ImageTokenizerTask, overrides, ("psnr", "codebook_usage", "codebook_perplexity"))


def _train_reconstruction(args: argparse.Namespace, task_class: type[ImageReconstructionTask],
                          overrides: dict[str, object], report: tuple[str, ...]) -> None:
    """`train image-tokenizer` and `train image-autoencoder`: the data at the model's resolution, the recipe,
    best/ by PSNR."""
    from genloom.registry import preset_config
    from genloom.run_record import image_data_record
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.image_tokenizer import train_reconstruction

    resolution = preset_config(task_class.family, args.preset, **overrides).resolution
    data, train, val, _ = _load_data(args, resolution)
    cfg = train_config(args, batch_size=args.batch_size, min_lr=args.lr / 10, best_metric="psnr")
    try:
        _, result = train_reconstruction(task_class, train.images, val.images, args.preset, cfg, overrides,
                                         args.resume, image_data_record(data, args.limit, args.val_fraction))
    finally:
        shutdown_distributed()
    report_done(result, report)


def _image_tokenizer_flag(args: argparse.Namespace) -> Path:
    if args.image_tokenizer is None:
        raise GenloomError("--image-tokenizer is required: the run directory of `genloom train image-tokenizer`")
    path = Path(args.image_tokenizer)
    if not path.exists():
        raise GenloomError(f"--image-tokenizer {path} does not exist; train one with `genloom train image-tokenizer`")
    return path


def _vq_for(args: argparse.Namespace) -> tuple[Path | None, int]:
    """(the --image-tokenizer path, or None on --resume; the resolution the VQ model reads), from its config
    alone: the recipe loads the model."""
    from genloom.registry import IMAGE_TOKENIZER, read_model_config

    vq_path = None if args.resume else _image_tokenizer_flag(args)
    return vq_path, read_model_config("vqvae", vq_path or Path(args.out) / IMAGE_TOKENIZER).resolution


def _record_for(args: argparse.Namespace, data: ImageCaptionSet, image_model: Path | None) -> dict[str, object]:
    """The data record of a caption/image run; the data attribution of the image model it is built on (VQ
    tokenizer or autoencoder) when its own has none."""
    from genloom.run_record import attribution, image_data_record, read_data_record

    vq_record = read_data_record(image_model) if image_model is not None else {}
    record = image_data_record(data, args.limit, args.val_fraction, image_tokenizer_data=vq_record.get("data"))
    record["attribution"] = data.attribution or attribution(vq_record)
    if getattr(args, "random_flip", False):
        record["random_flip"] = True
    return record


def _training_pairs(args: argparse.Namespace, train: ImageCaptionSet) -> ImageCaptionSet:
    """The training split as text-to-image learns it: with its mirror images under --random-flip."""
    from genloom.data.images import with_mirrors

    if not args.random_flip:
        return train
    print(f"--random-flip: each of the {len(train)} training images is mirrored left-right half the time")
    return with_mirrors(train)


def _cmd_train_image_autoencoder(args: argparse.Namespace) -> None:
    from genloom.train.image_autoencoder import ImageAutoencoderTask

    overrides = {"resolution": args.resolution, "latent_channels": args.latent_channels,
                 "kl_weight": args.kl_weight, "edge_weight": args.edge_weight}
    _train_reconstruction(args, ImageAutoencoderTask, overrides, ("psnr", "kl", "latent_scale"))


def _cmd_train_text_to_image(args: argparse.Namespace) -> None:
    if args.method not in METHODS:
        raise GenloomError(f"unknown --method {args.method!r}; choose from: {', '.join(METHODS)}")
    if args.method == "diffusion":
        _train_latent_diffusion(args)
        return
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.text_to_image import train_text_to_image

    _refuse_other_method_flags(args, "tokens", ("autoencoder", "patch_size", "text_layers", *OBJECTIVE_FLAGS["ddpm"],
                                                *OBJECTIVE_FLAGS["flow"]))
    vq_path, resolution = _vq_for(args)
    data, train, val, _ = _load_data(args, args.resolution or resolution)
    train = _training_pairs(args, train)
    overrides = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads, "d_ff": args.d_ff,
                 "dropout": args.dropout, "image_loss_weight": args.image_loss_weight,
                 "caption_attention": args.caption_attention}
    cfg = train_config(args, batch_size=args.batch_size, min_lr=args.lr / 10, best_metric="val_image_loss",
                       dtype=args.dtype)
    try:
        _, _, _, result = train_text_to_image(
            train, val, vq_path, args.preset or PRESETS["tokens"], cfg, vocab_size=args.vocab_size,
            caption_dropout=_caption_dropout(args), model_overrides=overrides, resume=args.resume,
            run_record=_record_for(args, data, vq_path),
        )
    finally:
        shutdown_distributed()
    report_done(result, ("val_image_loss", "val_image_accuracy"))


def _caption_dropout(args: argparse.Namespace) -> float:
    return CAPTION_DROPOUT[args.method] if args.caption_dropout is None else args.caption_dropout


def _refuse_other_method_flags(args: argparse.Namespace, method: str, others: tuple[str, ...]) -> None:
    """A one-line error for a flag that only the other method reads (it would be silently ignored)."""
    _refuse_flags(args, others, f"--method {next(m for m in METHODS if m != method)}", f"--method {method}")


def _refuse_flags(args: argparse.Namespace, names: Iterable[str], theirs: str, ours: str) -> None:
    """A one-line error naming each of `names` (argparse dests, None when not given) that was given: flags of
    `theirs` (e.g. "--objective flow"), not of `ours`."""
    given = [name for name in names if getattr(args, name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise GenloomError(f"{flags}: a flag of {theirs}, not of {ours}")


# DiffusionConfig's fields that only one objective reads, by the CLI flag that sets each.
OBJECTIVE_FLAGS = {"ddpm": {"prediction": "prediction", "schedule": "beta_schedule", "min_snr_gamma": "min_snr_gamma"},
                   "flow": {"flow_shift": "flow_shift", "logit_mean": "logit_mean", "logit_std": "logit_std"}}


def _objective_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The given flags of args.objective as DiffusionConfig fields; a one-line error for a flag of the other
    objective (it would be stored in the checkpoint and never read)."""
    other = next(o for o in OBJECTIVE_FLAGS if o != args.objective)
    _refuse_flags(args, OBJECTIVE_FLAGS[other], f"--objective {other}", f"--objective {args.objective}")
    return {field: getattr(args, flag) for flag, field in OBJECTIVE_FLAGS[args.objective].items()
            if getattr(args, flag) is not None}


def _train_latent_diffusion(args: argparse.Namespace) -> None:
    from genloom.diffusion.process import DiffusionConfig
    from genloom.registry import AUTOENCODER, read_model_config
    from genloom.train.distributed import shutdown_distributed
    from genloom.train.latent_diffusion import train_latent_diffusion

    _refuse_other_method_flags(args, "diffusion", ("image_tokenizer", "dropout", "caption_attention",
                                                   "image_loss_weight"))
    if args.resume:
        autoencoder = None
        resolution = read_model_config("vae", Path(args.out) / AUTOENCODER).resolution
    else:
        if args.autoencoder is None:
            raise GenloomError("--method diffusion needs --autoencoder: the run directory of `genloom train "
                               "image-autoencoder`")
        autoencoder = Path(args.autoencoder)
        if not autoencoder.exists():
            raise GenloomError(f"--autoencoder {autoencoder} does not exist; train one with `genloom train "
                               "image-autoencoder`")
        resolution = read_model_config("vae", autoencoder).resolution
    try:
        process = DiffusionConfig(objective=args.objective, train_timesteps=args.train_timesteps,
                                  caption_dropout=_caption_dropout(args), **_objective_flags(args))
    except ValueError as e:
        raise GenloomError(str(e)) from None
    data, train, val, _ = _load_data(args, args.resolution or resolution)
    train = _training_pairs(args, train)
    overrides = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads, "d_ff": args.d_ff,
                 "patch_size": args.patch_size, "text_layers": args.text_layers}
    if args.ema_decay is None:
        args.ema_decay = DIFFUSION_EMA
    cfg = train_config(args, batch_size=args.batch_size, min_lr=args.lr / 10, dtype=args.dtype)
    try:
        _, _, _, result = train_latent_diffusion(
            train, val, autoencoder, args.preset or PRESETS["diffusion"], cfg, process, vocab_size=args.vocab_size,
            model_overrides=overrides, resume=args.resume, run_record=_record_for(args, data, autoencoder),
        )
    finally:
        shutdown_distributed()
    report_done(result)


def _cmd_train_clip(args: argparse.Namespace) -> None:
    from genloom.train.clip import train_clip
    from genloom.train.distributed import shutdown_distributed

    vq_path, resolution = _vq_for(args)
    data, train, val, _ = _load_data(args, args.resolution or resolution)
    overrides = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads,
                 "embed_dim": args.embed_dim}
    cfg = train_config(args, batch_size=args.batch_size, min_lr=args.lr / 10)
    try:
        _, _, result = train_clip(train, val, vq_path, args.preset, cfg, vocab_size=args.vocab_size,
                                  model_overrides=overrides, resume=args.resume,
                                  run_record=_record_for(args, data, vq_path))
    finally:
        shutdown_distributed()
    report_done(result, ("val_accuracy",))
