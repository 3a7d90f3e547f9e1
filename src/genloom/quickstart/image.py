"""The text-to-image quickstart: a VQ image tokenizer and a caption -> image Transformer on coloured shapes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from genloom.data.image_sets import load_images, split_images
from genloom.eval.shapes import score_shapes
from genloom.generate.image_io import save_images
from genloom.generate.imagine import imagine
from genloom.outputs import check_output_dir
from genloom.registry import load_text_to_image_model
from genloom.run_record import image_data_record
from genloom.train.config import TrainConfig
from genloom.train.image_tokenizer import train_image_tokenizer
from genloom.train.text_to_image import train_text_to_image

OUT = "runs/quickstart-image"
PARTS = ("image-tokenizer", "text-to-image", "samples")  # what the quickstart writes into its folder
# Time budgets that keep the whole quickstart within about 10 minutes on 2 CPU cores; the step counts are upper
# bounds the budgets normally cut short.
VQ_MINUTES = 1.5
DALLE_MINUTES = 7.0
VQ_STEPS = 3000
DALLE_STEPS = 8000
SCENES = 20000  # ~13.6k training scenes: 7 minutes of training (~2100 steps) sees each ~5 times
GUIDANCE = 2.0
VAL_FRACTION = 0.05
# Seen combinations, then ones naming a held-out (colour, shape) pair (builtin_images.HELD_OUT).
PROMPTS = (
    "a red circle",
    "a blue square above a yellow triangle",
    "a cyan circle left of a red square",
    "a green triangle",
    "a magenta square below a blue circle",
)


def _is_own(folder: Path) -> bool:
    return all(p.name in PARTS for p in folder.iterdir())


def quickstart_image(out: Path | None = None, steps: int | None = None, say: Callable[[str], None] = print) -> None:
    out = out or Path(OUT)
    check_output_dir(out, _is_own, f"an earlier image quickstart ({', '.join(PARTS)})")
    vq_dir, dalle_dir, samples = (out / part for part in PARTS)
    say("genloom quickstart image: a VQ image tokenizer and a caption -> image Transformer on coloured shapes "
        "(builtin:shapes, 32x32), on the CPU, in about 10 minutes.")
    start = time.perf_counter()
    data = load_images("builtin:shapes", 32, SCENES)
    train, val, test = split_images(data, VAL_FRACTION)
    say(f"{len(train)} training images; {len(test)} showing held-out colour+shape pairs are kept out")
    # What `eval text-to-image` needs to rebuild this split (`limit` draws that many scenes).
    record = image_data_record(data, SCENES, VAL_FRACTION)

    def budget(run_dir: Path, max_steps: int, minutes: float, lr: float) -> TrainConfig:
        max_steps = min(max_steps, steps) if steps is not None else max_steps
        return TrainConfig(
            out_dir=str(run_dir), max_steps=max_steps, batch_size=32, lr=lr, min_lr=lr / 10,
            warmup_steps=min(100, max_steps), weight_decay=0.0, eval_interval=max(1, min(500, max_steps)),
            eval_batches=4, device="cpu", max_minutes=minutes, overwrite=True, best_metric="val_loss",
        )

    # Shape x colour tokens: a held-out pair such as "a green triangle" is a new pair of known codes.
    say(f"1/2 image tokenizer (vq-colour: shape x colour tokens, up to {VQ_MINUTES:g} minutes)")
    _, vq_result = train_image_tokenizer(train.images, val.images, "vq-colour",
                                         budget(vq_dir, VQ_STEPS, VQ_MINUTES, 2e-3), run_record=record)
    psnr = vq_result.best.get("psnr", float("nan"))
    say(f"   {vq_result.step} steps; reconstruction PSNR {psnr:.1f} dB")
    say(f"2/2 caption -> image model (dalle-compact, up to {DALLE_MINUTES:g} minutes)")
    _, _, _, result = train_text_to_image(
        train, val, vq_dir, "dalle-compact", budget(dalle_dir, DALLE_STEPS, DALLE_MINUTES, 2e-3), run_record=record,
    )
    say(f"   {result.step} steps; val loss {result.val_loss:.3f}")
    loaded = load_text_to_image_model(dalle_dir)
    n = 4
    images, _ = imagine(loaded.model, loaded.tokenizer, loaded.vq, list(PROMPTS), n_images=n,
                        guidance_scale=GUIDANCE, seed=0, progress=False)
    params = {"model": str(loaded.path), "temperature": 1.0, "guidance_scale": GUIDANCE, "seed": 0, "n_images": n}
    saved = save_images(images, samples, list(PROMPTS), params, data_name=data.name)
    say(f"{n} images per caption (guidance scale {GUIDANCE:g}) in {saved.grid}, one row per caption:")
    for prompt in PROMPTS:
        say(f"  {prompt}")
    say(score_shapes(images, [p for p in PROMPTS for _ in range(n)]).format_report())
    say(f"done in {time.perf_counter() - start:.0f} s; try: genloom imagine {dalle_dir} \"a yellow square\"")
