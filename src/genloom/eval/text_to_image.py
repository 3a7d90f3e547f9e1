"""`genloom eval text-to-image`: caption alignment and memorisation of a text-to-image model, per guidance scale.

On builtin:shapes the captions are sampled from the seen and the held-out (colour, shape) combinations and every
generated image is parsed (`genloom.eval.shapes`); on builtin:digits an independent classifier reads the ten
digit captions' images and a Fréchet distance compares them with real ones (`genloom.eval.digits`). Both report
the copy rate of `genloom.eval.memorization`. The split is rebuilt from the run's data record, so the images
the model trained on are the training split of the scores.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genloom.data.builtin_images import DIGIT_WORDS
from genloom.data.image_sets import load_images, split_images
from genloom.data.images import ImageCaptionSet
from genloom.errors import GenloomError
from genloom.eval.digits import DigitsEvaluator
from genloom.eval.memorization import format_memorization_report, memorization_report
from genloom.eval.shapes import score_shapes
from genloom.generate.rerank import imagine_best_of
from genloom.generate.text_to_image import ImageGenerator, draw_images, image_resolution, method_of
from genloom.registry import LoadedClip

SCORED_SETS = ("builtin:shapes", "builtin:digits")


@dataclass
class ImageSampling:
    """How evaluation images are drawn: image i of a call uses seed + i (candidate j of image i with a reranker:
    seed + i * rerank + j)."""

    options: dict[str, Any] = field(default_factory=dict)  # the method's options of `draw_images`
    seed: int = 0
    batch_size: int = 32  # captions sampled together
    rerank: int | None = None  # candidates per image, with a reranker


@dataclass
class EvalData:
    """Which data to score on; None: as the run was trained (its data record)."""

    data: str | None = None
    resolution: int | None = None
    limit: int | None = None
    val_fraction: float | None = None
    n_per_caption: int = 4
    max_captions: int = 32  # shapes: captions sampled from each of the seen and held-out groups


@dataclass
class ScaleResult:
    guidance_scale: float
    steps: int | None  # diffusion's sampling steps
    report: str  # the full report of this scale, several lines
    row: str  # its line of the summary table
    scores: dict[str, Any] = field(default_factory=dict)  # for the JSON report


def generate_for(
    loaded: ImageGenerator, captions: list[str], n: int, scale: float, sampling: ImageSampling,
    reranker: LoadedClip | None = None, steps: int | None = None,
) -> np.ndarray:
    """`n` images per caption (caption-major), `sampling.batch_size` captions at a time; image i uses seed + i.

    With a reranker each image is the best of `sampling.rerank` candidates. steps: diffusion's sampling steps
    instead of the options'.
    """
    options: dict[str, Any] = {**sampling.options, "guidance_scale": scale, "progress": False}
    if steps is not None:
        options["sampling"] = dataclasses.replace(options["sampling"], steps=steps)
    out = []
    for start in range(0, len(captions), sampling.batch_size):
        chunk = captions[start : start + sampling.batch_size]
        if reranker is None:
            images, _ = draw_images(loaded, chunk, n, seed=sampling.seed + start * n, **options)
        else:
            assert sampling.rerank is not None
            per_image = [c for c in chunk for _ in range(n)]
            images = imagine_best_of(loaded, reranker, per_image, 1, sampling.rerank,
                                     seed=sampling.seed + start * n * sampling.rerank, **options).images
        out.append(images)
    return np.concatenate(out)


def sample_captions(data: ImageCaptionSet, k: int, seed: int) -> list[str]:
    """`k` distinct captions of `data`, drawn with `seed`, in sorted order."""
    unique = sorted(set(data.captions))
    chosen = np.random.default_rng(seed).permutation(len(unique))[:k]
    return [unique[i] for i in sorted(chosen.tolist())]


def percent(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"  # NaN: no image in that group


def nan_to_null(value: Any) -> Any:
    """NaN (a group with no image) as JSON null rather than the non-standard NaN token."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_null(v) for v in value]
    return value


class TextToImageEvaluation:
    """The evaluation of one model on one data set; `score(scale)` generates and scores one guidance scale."""

    def __init__(
        self, loaded: ImageGenerator, record: dict[str, Any], data: EvalData, sampling: ImageSampling,
        reranker: LoadedClip | None = None,
    ) -> None:
        spec = data.data or record.get("data")
        if spec not in SCORED_SETS:
            raise GenloomError(f"eval text-to-image scores {' or '.join(SCORED_SETS)}, not {spec!r}; pass --data")
        if (reranker is None) != (sampling.rerank is None):
            raise GenloomError("reranking needs both --clip (the reranker) and --rerank N (candidates)")
        same = record.get("data") == spec
        limit = data.limit if data.limit is not None else (record.get("limit") if same else None)
        val_fraction = data.val_fraction if data.val_fraction is not None else (
            record.get("val_fraction", 0.05) if same else 0.05)
        images = load_images(spec, data.resolution or image_resolution(loaded), limit)
        self.train, val, test = split_images(images, val_fraction)
        self.unseen = np.concatenate([val.images, test.images])  # real images no training step saw
        self.loaded, self.reranker, self.sampling, self.spec = loaded, reranker, sampling, spec
        self.n = data.n_per_caption
        self.reference = images.images
        if spec == "builtin:shapes":
            self.captions = sample_captions(self.train, data.max_captions, sampling.seed)
            self.captions += sample_captions(test, data.max_captions, sampling.seed)  # test: held-out pairs
            self.header = (f"{'steps':>5}  {'guidance':>8}  {'seen all-correct':>16}  {'held-out all-correct':>20}  "
                           f"{'seen colour+shape':>17}  {'held-out colour+shape':>21}  {'copy rate':>9}  {'img/s':>6}")
            held = len(set(test.captions) & set(self.captions))
            intro = f"{len(self.captions)} captions ({held} held-out), {self.n} images each"
            self.digits: DigitsEvaluator | None = None
        else:
            self.digits = DigitsEvaluator()
            self.captions = [f"the digit {word}" for word in DIGIT_WORDS]
            self.header = (f"{'steps':>5}  {'guidance':>8}  {'accuracy':>8}  {'Fréchet':>8}  {'copy rate':>9}  "
                           f"{'img/s':>6}")
            intro = f"the ten digit captions, {self.n} images each"
        if reranker is not None:
            intro += f", each the best of {sampling.rerank} by the reranker {reranker.path}"
        self.method = method_of(loaded)
        self.intro = f"{spec} with {loaded.path} ({self.method} method): {intro}"

    def score(self, scale: float, steps: int | None = None) -> ScaleResult:
        """Generate and score at one guidance scale (and, for diffusion, a number of sampling steps)."""
        start = time.perf_counter()
        images = generate_for(self.loaded, self.captions, self.n, scale, self.sampling, self.reranker, steps)
        speed = len(images) / (time.perf_counter() - start)
        per_image = [c for c in self.captions for _ in range(self.n)]
        memo = memorization_report(images, self.train.images, self.unseen)
        if steps is None and self.method == "diffusion":
            steps = self.sampling.options["sampling"].steps
        lead = f"{'' if steps is None else steps:>5}  {scale:>8g}"
        scores: dict[str, Any] = {"guidance_scale": scale, "steps": steps, "images_per_second": speed}
        if self.digits is None:
            shapes = score_shapes(images, per_image)
            groups = {"all": shapes.overall, "seen": shapes.seen, "held_out": shapes.held_out}
            scores |= {**{k: dataclasses.asdict(g) for k, g in groups.items()}, "memorization": memo}
            row = (f"{lead}  {percent(shapes.seen.all_correct):>16}  {percent(shapes.held_out.all_correct):>20}  "
                   f"{percent(shapes.seen.binding):>17}  {percent(shapes.held_out.binding):>21}  "
                   f"{percent(memo['copy_rate']):>9}  {speed:>6.1f}")
            report = shapes.format_report()
        else:
            digits = self.digits.score(images, per_image, reference=self.reference)
            scores |= {**dataclasses.asdict(digits), "memorization": memo}
            row = (f"{lead}  {percent(digits.accuracy):>8}  {digits.frechet or 0.0:>8.3f}  "
                   f"{percent(memo['copy_rate']):>9}  {speed:>6.1f}")
            report = digits.format_report()
        return ScaleResult(scale, steps, report + "\n" + format_memorization_report(memo), row, scores)

    def json_report(self, results: list[ScaleResult]) -> dict[str, Any]:
        s = self.sampling
        options = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v)
                   for k, v in s.options.items() if k in ("temperature", "top_k", "top_p", "sampling")}
        return nan_to_null({
            "checkpoint": str(self.loaded.path), "method": self.method, "data": self.spec,
            "captions": self.captions, "n_per_caption": self.n,
            "clip": None if self.reranker is None else str(self.reranker.path), "rerank": s.rerank,
            "seed": s.seed, **options, "scores": [r.scores for r in results],
        })
