"""The text-to-image quickstarts on coloured shapes: a VQ image tokenizer and a caption -> image-token Transformer
(--method tokens), or an autoencoder and a diffusion Transformer over its latents (--method diffusion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genloom.data.image_sets import load_images, split_images
from genloom.diffusion.process import DiffusionConfig
from genloom.errors import GenloomError
from genloom.eval.shapes import score_shapes
from genloom.generate.diffuse import DiffusionSampling
from genloom.generate.image_io import save_images
from genloom.generate.text_to_image import draw_images
from genloom.outputs import check_output_dir
from genloom.registry import load_image_generator
from genloom.run_record import image_data_record
from genloom.train.config import TrainConfig
from genloom.train.image_autoencoder import train_image_autoencoder
from genloom.train.image_tokenizer import train_image_tokenizer
from genloom.train.latent_diffusion import train_latent_diffusion
from genloom.train.text_to_image import train_text_to_image

OUT = {"tokens": "runs/quickstart-image", "diffusion": "runs/quickstart-diffusion"}
# What each quickstart writes into its folder: the image model, the caption -> image model, the samples.
PARTS = {"tokens": ("image-tokenizer", "text-to-image", "samples"),
         "diffusion": ("autoencoder", "text-to-image", "samples")}
# Time budgets that keep the whole quickstart within about 10 minutes on 2 CPU cores; the step counts are upper
# bounds the budgets normally cut short.
VQ_MINUTES = 1.5
DALLE_MINUTES = 7.0
VQ_STEPS = 3000
DALLE_STEPS = 8000
SCENES = 20000  # ~13.6k training scenes: 7 minutes of training (~2100 steps) sees each ~5 times
GUIDANCE = 2.0
# Latent diffusion: vae-32 (32x32 -> 8x8x4) and dit-small, flow matching, sampled with 20 Euler steps.
VAE_MINUTES = 1.5
DIT_MINUTES = 7.0
VAE_STEPS = 3000
DIT_STEPS = 20000
DIFFUSION_GUIDANCE = 3.0
DIFFUSION_STEPS = 20
VAL_FRACTION = 0.05
# Seen combinations, then ones naming a held-out (colour, shape) pair (builtin_images.HELD_OUT).
PROMPTS = (
    "a red circle",
    "a blue square above a yellow triangle",
    "a cyan circle left of a red square",
    "a green triangle",
    "a magenta square below a blue circle",
)


def quickstart_image(out: Path | None = None, steps: int | None = None, say: Callable[[str], None] = print,
                     method: str = "tokens") -> None:
    if method not in PARTS:
        raise GenloomError(f"unknown --method {method!r}; choose tokens or diffusion")
    parts = PARTS[method]
    out = out or Path(OUT[method])
    check_output_dir(out, lambda folder: all(p.name in parts for p in folder.iterdir()),
                     f"an earlier image quickstart ({', '.join(parts)})")
    image_dir, generator_dir, samples = (out / part for part in parts)
    what = ("a VQ image tokenizer and a caption -> image Transformer" if method == "tokens" else
            "an image autoencoder and a diffusion Transformer over its latents")
    say(f"genloom quickstart image --method {method}: {what} on coloured shapes (builtin:shapes, 32x32), on the "
        "CPU, in about 10 minutes.")
    start = time.perf_counter()
    data = load_images("builtin:shapes", 32, SCENES)
    train, val, test = split_images(data, VAL_FRACTION)
    say(f"{len(train)} training images; {len(test)} showing held-out colour+shape pairs are kept out")
    # What `eval text-to-image` needs to rebuild this split (`limit` draws that many scenes).
    record = image_data_record(data, SCENES, VAL_FRACTION)

    def budget(run_dir: Path, max_steps: int, minutes: float, lr: float, ema: float = 0.0) -> TrainConfig:
        max_steps = min(max_steps, steps) if steps is not None else max_steps
        return TrainConfig(
            out_dir=str(run_dir), max_steps=max_steps, batch_size=32, lr=lr, min_lr=lr / 10,
            warmup_steps=min(100, max_steps), weight_decay=0.0, eval_interval=max(1, min(500, max_steps)),
            eval_batches=4, device="cpu", max_minutes=minutes, overwrite=True, best_metric="val_loss",
            ema_decay=ema,
        )

    if method == "tokens":
        # Shape x colour tokens: a held-out pair such as "a green triangle" is a new pair of known codes.
        say(f"1/2 image tokenizer (vq-colour: shape x colour tokens, up to {VQ_MINUTES:g} minutes)")
        _, vq_result = train_image_tokenizer(train.images, val.images, "vq-colour",
                                             budget(image_dir, VQ_STEPS, VQ_MINUTES, 2e-3), run_record=record)
        say(f"   {vq_result.step} steps; reconstruction PSNR {vq_result.best.get('psnr', float('nan')):.1f} dB")
        say(f"2/2 caption -> image model (dalle-compact, up to {DALLE_MINUTES:g} minutes)")
        _, _, _, result = train_text_to_image(
            train, val, image_dir, "dalle-compact", budget(generator_dir, DALLE_STEPS, DALLE_MINUTES, 2e-3),
            run_record=record,
        )
        options: dict[str, Any] = {"guidance_scale": GUIDANCE}
    else:
        say(f"1/2 image autoencoder (vae-32: 32x32 -> 8x8x4 latents, up to {VAE_MINUTES:g} minutes)")
        _, vae_result = train_image_autoencoder(train.images, val.images, "vae-32",
                                                budget(image_dir, VAE_STEPS, VAE_MINUTES, 2e-3), run_record=record)
        say(f"   {vae_result.step} steps; reconstruction PSNR {vae_result.best.get('psnr', float('nan')):.1f} dB")
        say(f"2/2 denoiser (dit-small, flow matching, EMA, up to {DIT_MINUTES:g} minutes)")
        _, _, _, result = train_latent_diffusion(
            train, val, image_dir, "dit-small", budget(generator_dir, DIT_STEPS, DIT_MINUTES, 1e-3, ema=0.999),
            DiffusionConfig(objective="flow"), run_record=record,
        )
        options = {"guidance_scale": DIFFUSION_GUIDANCE, "sampling": DiffusionSampling(steps=DIFFUSION_STEPS)}
    say(f"   {result.step} steps; val loss {result.val_loss:.3f}")
    loaded = load_image_generator(generator_dir)
    n = 4
    images, _ = draw_images(loaded, list(PROMPTS), n, seed=0, progress=False, **options)
    params = {"model": str(loaded.path), "seed": 0, "n_images": n, "guidance_scale": options["guidance_scale"]}
    if method == "diffusion":
        params |= {"steps": DIFFUSION_STEPS, "sampler": "euler"}
    saved = save_images(images, samples, list(PROMPTS), params, data_name=data.name)
    say(f"{n} images per caption (guidance scale {options['guidance_scale']:g}) in {saved.grid}, one row per "
        "caption:")
    for prompt in PROMPTS:
        say(f"  {prompt}")
    say(score_shapes(images, [p for p in PROMPTS for _ in range(n)]).format_report())
    say(f"done in {time.perf_counter() - start:.0f} s; try: genloom imagine {generator_dir} \"a yellow square\"")
