"""Text-to-image benchmarks (issue 4), on the built-in sets, each model trained for at most 30 minutes.

    python benchmarks/text_to_image.py                      # all parts, about 85 minutes on 2 CPU cores
    python benchmarks/text_to_image.py --parts digits,sampling

- shapes: a vq-colour image tokenizer (patch encoder, shape x colour tokens), then a dalle-compact (1.8M)
  caption->image model; `genloom eval text-to-image` scores caption alignment (colour-segmentation parser) on
  seen and held-out (colour, shape) combinations per guidance scale. Then a clip-small reranker (`genloom train
  clip`, on the same training pairs and the same tokens) and the same evaluation with every image the best of
  RERANK candidates. The parser on the tokenizer's reconstructions of real test images gives the ceiling.
- digits: a vq-digits tokenizer (8x8 -> 4x4 codes) and a caption->image model; accuracy of an independent
  classifier on the generated digits, and a Fréchet distance on its features.
- emoji: a vq-small tokenizer on the 1357 OpenMoji glyphs: validation PSNR, codebook usage during the last
  validation interval and over the whole set.
- sampling: images/s of the shapes model at batch 16 with and without the KV cache.

Training and evaluation run through the `genloom` CLI exactly as a user would; each command and its output go to
OUT/PART/*.log. Results accumulate in OUT/results.json (a rerun of one part replaces only its entry) and the
README table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloom.checkpoint import BEST_DIR, read_checkpoint_config
from genloom.data.image_sets import load_images, split_images
from genloom.eval.shapes import score_shapes
from genloom.generate.imagine import codes_to_images, encode_images, imagine
from genloom.registry import load_image_tokenizer, load_text_to_image_model

# Minutes of training per model (each at most 30, as the issue asks); the shapes caption model's: --shapes-minutes.
SHAPES_VQ_MINUTES = 3
SHAPES_CLIP_MINUTES = 6
DIGITS_VQ_MINUTES, DIGITS_T2I_MINUTES = 3, 10
EMOJI_VQ_MINUTES = 15
SHAPES_SCENES = 20000  # builtin:shapes draws this many scenes; about 30 % show a held-out pair and go to test
SHAPES_RESOLUTION = 32
# The caption->image model (see the dalle-compact preset for why not dalle-small). The recorded runs passed the
# preset's settings as flags on dalle-small (--d-model 192 --n-layers 4 --n-heads 6 --d-ff 768): the same model.
COMPACT_MODEL = ["--preset", "dalle-compact", "--lr", 2e-3]
GUIDANCE_SCALES = "1,1.5,2,3"
RERANK = 8  # candidates per evaluated image
SAMPLING_BATCH = 16


def genloom(log: Path, *args: object) -> None:
    """Run `genloom ARGS`, appending the command and its output to `log`; stop the benchmark if it fails."""
    command = [sys.executable, "-m", "genloom.cli", *map(str, args)]
    shown = "genloom " + shlex.join(command[3:])
    print(f"$ {shown}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {shown}\n")
        out.flush()
        started = time.perf_counter()
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        out.write(f"# exit {code} after {time.perf_counter() - started:.0f} s\n")
    if code:
        sys.exit(f"benchmark stopped: `{shown}` exited with {code}; see {log}")


def train_flags(minutes: float, out: Path) -> list[object]:
    # --steps is only an upper bound: the time budget ends each run, and the cosine schedule decays over it.
    return ["--max-minutes", minutes, "--steps", 1_000_000, "--no-progress", "--overwrite", "--out", out]


def best_metrics(run: Path) -> dict[str, Any]:
    """The validation metrics (and step) stored with a run's best/ checkpoint."""
    return {k: v for k, v in read_checkpoint_config(run / BEST_DIR).items() if k != "model"}


def last_step(run: Path) -> int:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return max(int(json.loads(line)["step"]) for line in lines)


def vq_summary(run: Path) -> dict[str, Any]:
    best = best_metrics(run)
    return {"steps": last_step(run), "best_step": best.get("step"), "psnr": best.get("psnr"),
            "codebook_usage_last_interval": best.get("codebook_usage"),
            "codebook_perplexity": best.get("codebook_perplexity")}


def t2i_summary(run: Path) -> dict[str, Any]:
    best = best_metrics(run)
    return {"steps": last_step(run), "best_step": best.get("step"), "val_image_loss": best.get("val_image_loss"),
            "val_image_accuracy": best.get("val_image_accuracy")}


def reconstruct(vq_run: Path, images: np.ndarray) -> np.ndarray:
    """The tokenizer's round trip image -> codes -> image, as uint8."""
    vq = load_image_tokenizer(vq_run).eval()
    g = vq.grid_size
    return codes_to_images(vq, encode_images(vq, images).view(-1, g, g))


def part_shapes(out: Path, t2i_minutes: float) -> dict[str, Any]:
    vq, t2i, clip, log = out / "vq", out / "t2i", out / "clip", out / "shapes.log"
    data_flags = ["--data", "builtin:shapes", "--limit", SHAPES_SCENES]
    # vq-colour: a patch encoder (equal patches get equal codes; a conv encoder gave the 85 distinct 4x4 patches
    # of these scenes codes with ~3 nats of context-dependent entropy) and tokens that pair a shape code with a
    # colour code, so a held-out colour+shape pair is a new pair of codes the model has emitted before.
    genloom(log, "train", "image-tokenizer", *data_flags, "--preset", "vq-colour", "--lr", 2e-3,
            "--eval-batches", 8, *train_flags(SHAPES_VQ_MINUTES, vq))
    # Caption words reach the image positions uncontextualised: "circle" after "yellow" (a held-out pair) is then
    # the same vector as after "red", not a context the model has never seen.
    genloom(log, "train", "text-to-image", *data_flags, "--image-tokenizer", vq, *COMPACT_MODEL,
            "--caption-attention", "self", "--eval-interval", 500, "--eval-batches", 8,
            *train_flags(t2i_minutes, t2i))
    eval_flags = ["--guidance-scales", GUIDANCE_SCALES, "--max-captions", 64, "--n-per-caption", 4]
    genloom(log, "eval", "text-to-image", t2i, *eval_flags, "--json", out / "eval.json", "--overwrite")
    # The reranker reads the caption model's tokens, so it trains on codes of the caption model's VQ copy.
    genloom(log, "train", "clip", *data_flags, "--image-tokenizer", t2i / "image_tokenizer", "--eval-interval", 500,
            *train_flags(SHAPES_CLIP_MINUTES, clip))
    genloom(log, "eval", "text-to-image", t2i, *eval_flags, "--clip", clip, "--rerank", RERANK,
            "--json", out / "eval-rerank.json", "--overwrite")

    # The parser on the tokenizer's reconstructions of real unseen images: what a perfect prior could score.
    _, val, test = split_images(load_images("builtin:shapes", SHAPES_RESOLUTION, SHAPES_SCENES), 0.05)
    real = np.concatenate([val.images, test.images[:1000]])
    captions = val.captions + test.captions[:1000]
    ceiling = score_shapes(reconstruct(vq, real), captions)
    clip_best = best_metrics(clip)
    return {
        "image_tokenizer": vq_summary(vq),
        "text_to_image": t2i_summary(t2i),
        "t2i_minutes": t2i_minutes,
        "clip": {"steps": last_step(clip), "best_step": clip_best.get("step"), "val_loss": clip_best.get("val_loss"),
                 "val_accuracy": clip_best.get("val_accuracy")},
        "reconstruction_all_correct": {"seen": ceiling.seen.all_correct, "held_out": ceiling.held_out.all_correct},
        "guidance": guidance_rows(out / "eval.json"),
        "guidance_reranked": guidance_rows(out / "eval-rerank.json"),
    }


def guidance_rows(eval_json: Path) -> list[dict[str, Any]]:
    report = json.loads(eval_json.read_text())
    return [{"scale": s["guidance_scale"], "seen": s["seen"]["all_correct"], "held_out": s["held_out"]["all_correct"],
             "seen_binding": s["seen"]["binding"], "held_out_binding": s["held_out"]["binding"],
             "copy_rate": s["memorization"]["copy_rate"]} for s in report["scores"]]


def part_digits(out: Path) -> dict[str, Any]:
    vq, t2i, log = out / "vq", out / "t2i", out / "digits.log"
    data_flags = ["--data", "builtin:digits", "--resolution", 8]
    genloom(log, "train", "image-tokenizer", *data_flags, "--preset", "vq-digits", "--lr", 2e-3,
            "--eval-interval", 200, *train_flags(DIGITS_VQ_MINUTES, vq))
    # 1.7k training images seen ~70 times in 10 minutes: dropout, and best/ by validation loss, against overfitting.
    genloom(log, "train", "text-to-image", *data_flags, "--image-tokenizer", vq, *COMPACT_MODEL, "--dropout", 0.1,
            "--eval-interval", 250, "--eval-batches", 4, *train_flags(DIGITS_T2I_MINUTES, t2i))
    genloom(log, "eval", "text-to-image", t2i, "--guidance-scales", GUIDANCE_SCALES, "--n-per-caption", 20,
            "--json", out / "eval.json", "--overwrite")
    report = json.loads((out / "eval.json").read_text())
    return {
        "image_tokenizer": vq_summary(vq),
        "text_to_image": t2i_summary(t2i),
        "classifier_accuracy_on_real": report["scores"][0]["classifier_accuracy"],
        "guidance": [{"scale": s["guidance_scale"], "accuracy": s["accuracy"], "frechet": s["frechet"],
                      "copy_rate": s["memorization"]["copy_rate"]} for s in report["scores"]],
    }


def part_emoji(out: Path) -> dict[str, Any]:
    vq = out / "vq"
    genloom(out / "emoji.log", "train", "image-tokenizer", "--data", "builtin:emoji", "--preset", "vq-small",
            "--eval-interval", 250, *train_flags(EMOJI_VQ_MINUTES, vq))
    model = load_image_tokenizer(vq).eval()
    codes = encode_images(model, load_images("builtin:emoji", 32).images)  # every glyph, train and validation
    used = int(torch.unique(codes).numel())
    return {"image_tokenizer": vq_summary(vq), "codes_used_whole_set": used,
            "codebook_size": model.config.codebook_size}


def part_sampling(out: Path, shapes_run: Path) -> dict[str, Any]:
    """Images/s at batch 16 (16 captions, one image each) with the KV cache and recomputing every position."""
    loaded = load_text_to_image_model(shapes_run)
    scenes = load_images("builtin:shapes", loaded.vq.config.resolution, 2000)
    prompts = sorted(set(split_images(scenes, 0.05)[0].captions))[:SAMPLING_BATCH]
    rows = []
    for scale in (1.0, 3.0):
        timings: dict[str, float] = {}
        for use_cache in (True, False):
            runs = []
            for repeat in range(3):
                started = time.perf_counter()
                imagine(loaded.model, loaded.tokenizer, loaded.vq, prompts, guidance_scale=scale, seed=repeat,
                        progress=False, use_cache=use_cache)
                runs.append(time.perf_counter() - started)
            timings["cached" if use_cache else "recomputed"] = SAMPLING_BATCH / float(np.median(runs))
        rows.append({"guidance_scale": scale, "images_per_s_cached": timings["cached"],
                     "images_per_s_recomputed": timings["recomputed"],
                     "speedup": timings["cached"] / timings["recomputed"]})
        print(f"guidance {scale:g}: {timings['cached']:.2f} images/s with the KV cache, "
              f"{timings['recomputed']:.2f} recomputing ({rows[-1]['speedup']:.2f}x)", flush=True)
    return {"batch": SAMPLING_BATCH, "threads": torch.get_num_threads(), "rows": rows}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def readme_table(results: dict[str, Any]) -> str:
    lines = ["| measure | result | target |", "|---|---|---|"]
    if "shapes" in results:
        s = results["shapes"]
        vq, t2i = s["image_tokenizer"], s["text_to_image"]
        sweeps = [("", s["guidance"])]
        if "guidance_reranked" in s:
            sweeps.append((f", best of {RERANK} by the CLIP reranker", s["guidance_reranked"]))
        for how, sweep in sweeps:
            best = max(sweep, key=lambda g: (g["seen"] or 0) + (g["held_out"] or 0))
            lines += [
                f"| shapes: all attributes correct, seen combinations{how} (guidance {best['scale']:g}) | "
                f"{pct(best['seen'])} | ≥ 90 % |",
                f"| shapes: all attributes correct, held-out combinations{how} (guidance {best['scale']:g}) | "
                f"{pct(best['held_out'])} | ≥ 60 % |",
                f"| shapes: guidance sweep{how}, seen / held-out | "
                + ", ".join(f"{g['scale']:g}: {pct(g['seen'])} / {pct(g['held_out'])}" for g in sweep) + " | |",
            ]
        lines += [
            f"| shapes: parser on tokenizer reconstructions of real images (ceiling), seen / held-out | "
            f"{pct(s['reconstruction_all_correct']['seen'])} / {pct(s['reconstruction_all_correct']['held_out'])} | |",
            f"| shapes: vq-colour {SHAPES_VQ_MINUTES} min ({vq['steps']} steps) PSNR; caption->image model "
            f"{s['t2i_minutes']:g} min ({t2i['steps']} steps) val image loss | {vq['psnr']:.1f} dB; "
            f"{t2i['val_image_loss']:.3f} | |",
        ]
        if "clip" in s:
            lines.append(f"| shapes: clip-small reranker {SHAPES_CLIP_MINUTES} min ({s['clip']['steps']} steps) "
                         f"validation accuracy against its batch and hard negatives | {pct(s['clip']['val_accuracy'])} "
                         "| |")
    if "digits" in results:
        d = results["digits"]
        best = max(d["guidance"], key=lambda g: g["accuracy"])
        lines += [
            f"| digits: classifier accuracy on generated digits (guidance {best['scale']:g}) | "
            f"{pct(best['accuracy'])} | ≥ 95 % |",
            "| digits: guidance sweep, accuracy / Fréchet / copy rate | "
            + ", ".join(f"{g['scale']:g}: {pct(g['accuracy'])} / {g['frechet']:.2f} / {pct(g['copy_rate'])}"
                        for g in d["guidance"])
            + f" (classifier on real digits {pct(d['classifier_accuracy_on_real'])}) | |",
        ]
    if "emoji" in results:
        e = results["emoji"]
        vq = e["image_tokenizer"]
        lines += [
            f"| emoji: vq-small {EMOJI_VQ_MINUTES} min ({vq['steps']} steps) validation PSNR | {vq['psnr']:.2f} dB | |",
            f"| emoji: codebook usage, last validation interval / whole set | "
            f"{pct(vq['codebook_usage_last_interval'])} / {pct(e['codes_used_whole_set'] / e['codebook_size'])} "
            f"({e['codes_used_whole_set']} of {e['codebook_size']}) | ≥ 90 % |",
        ]
    if "sampling" in results:
        for row in results["sampling"]["rows"]:
            lines.append(
                f"| sampling, batch {results['sampling']['batch']}, guidance {row['guidance_scale']:g}: images/s "
                f"with / without KV cache | {row['images_per_s_cached']:.2f} / {row['images_per_s_recomputed']:.2f} "
                f"({row['speedup']:.2f}x) | |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="shapes,sampling,digits,emoji")
    parser.add_argument("--out", default="runs/bench-text-to-image")
    parser.add_argument("--shapes-minutes", type=float, default=28.0, help="budget of the shapes caption model")
    args = parser.parse_args()
    out = Path(args.out)
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "shapes": lambda: part_shapes(out / "shapes", args.shapes_minutes),
        "digits": lambda: part_digits(out / "digits"),
        "emoji": lambda: part_emoji(out / "emoji"),
        "sampling": lambda: part_sampling(out / "sampling", out / "shapes" / "t2i"),
    }
    for name in args.parts.split(","):
        if name not in parts:
            sys.exit(f"unknown part {name!r}; choose from {', '.join(parts)}")
        print(f"=== {name}", flush=True)
        started = time.perf_counter()
        results[name] = {**parts[name](), "wall_s": round(time.perf_counter() - started)}
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results[name], indent=2), flush=True)
    print(readme_table(results))


if __name__ == "__main__":
    main()
