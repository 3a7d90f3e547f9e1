"""The models a server holds, by name: each loaded once, with the scheduler that batches its requests.

Names are an allow-list fixed at start-up (`--name NAME=PATH`, else the checkpoint directory's name); a request
names a model, never a path. Only genloom checkpoints (safetensors + JSON) and Hugging Face directories with
safetensors weights are loaded: the registry never unpickles.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from genloom.checkpoint import read_checkpoint_config, resolve_checkpoint
from genloom.data.translation import encode_source
from genloom.diffusion.process import check_sampler
from genloom.errors import GenloomError
from genloom.generate.compiled import compile_decoding
from genloom.generate.diffuse import DiffusionSampling, latents_to_images
from genloom.generate.diffusion_batch import DiffusionBatch, LatentGroup
from genloom.generate.image_io import image_record, png_bytes
from genloom.generate.image_token_batch import ImageTokenBatch, TokenGroup
from genloom.generate.imagine import codes_to_images, encode_image_prompts, row_generators
from genloom.generate.rerank import Reranked, check_same_image_tokenizer, imagine_best_of, keep_best
from genloom.generate.sampling import SamplingConfig
from genloom.generate.text_to_image import ImageGenerator, draw_images, image_resolution, method_of, pixel_model
from genloom.generate.translate_batch import TranslationBatch, TranslationGroup
from genloom.interop.hf_gpt2 import SAFETENSORS_FILE, is_hf_directory
from genloom.models.gpt import GPT
from genloom.registry import (
    TEXT_TO_IMAGE_FAMILIES,
    TRANSLATION_FAMILIES,
    LoadedClip,
    LoadedLatentDiffusion,
    LoadedTextToImage,
    load_clip_model,
    load_image_generator,
    load_pretrained,
    load_translation_model,
)
from genloom.run_record import attribution, read_data_record
from genloom.serve import KV_CACHE_DTYPES, PREFILL_CHUNK, KVCacheDtype
from genloom.serve.engine_process import EngineProcess
from genloom.serve.metrics import ServerMetrics
from genloom.serve.scheduler import TextScheduler
from genloom.serve.step_scheduler import StepScheduler
from genloom.tokenizers import SpecialIds, Tokenizer
from genloom.tokenizers.chat_template import ChatFormat
from genloom.train.distributed import pick_device

TEXT, IMAGES, TRANSLATION = "text", "images", "translation"


@dataclass
class ServeSettings:
    max_batch: int = 16  # rows decoded together per model (images: images per call or denoiser pass)
    max_queue: int = 64  # requests waiting per model before 429
    device: str = "auto"
    clip: Path | None = None  # a CLIP reranker for the image models' best-of-N (`rerank`)
    engine: Literal["thread", "process"] = "thread"  # language models decode on a thread here, or in a process each
    threads: int = 1  # torch threads of an engine process
    kv_cache_dtype: KVCacheDtype = "auto"  # the language models' KV caches: "auto" is the weights' dtype
    compile: bool = False  # the language models decode with a torch.compile'd step (genloom.generate.compiled)
    prefill_chunk: int = PREFILL_CHUNK  # prompt tokens a language model reads per decoding step (chunked prefill)


def kv_cache_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a `kv_cache_dtype` setting; None for "auto" (the model's own)."""
    if name not in KV_CACHE_DTYPES:
        raise GenloomError(f"unknown KV cache dtype {name!r}; choose one of {', '.join(KV_CACHE_DTYPES)}")
    return None if name == "auto" else getattr(torch, name)


@dataclass
class ServedModel:
    name: str
    kind: str  # TEXT, IMAGES or TRANSLATION
    family: str
    path: Path
    context_length: int | None
    worker: TextScheduler | EngineProcess | StepScheduler
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """An entry of /v1/models: OpenAI's fields, then genloom's."""
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "genloom", "family": self.family,
                "kind": self.kind, "context_length": self.context_length, **self.extra}


@dataclass
class TextModel(ServedModel):
    model: GPT | None = None
    tokenizer: Tokenizer | None = None
    chat_format: ChatFormat | None = None


@dataclass
class ImageModel(ServedModel):
    loaded: ImageGenerator | None = None
    reranker: LoadedClip | None = None


@dataclass
class TranslationModel(ServedModel):
    model: torch.nn.Module | None = None
    tokenizer: Tokenizer | None = None


def parse_model_specs(checkpoints: list[str], named: list[str]) -> dict[str, Path]:
    """`PATH` (named after its directory) and `NAME=PATH` -> {name: path}; a one-line error for a clash."""
    specs: dict[str, Path] = {}
    pairs = [(Path(p).resolve().name if Path(p).name in ("", ".") else Path(p).name, p) for p in checkpoints]
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise GenloomError(f"--name expects NAME=PATH, got {item!r}")
        pairs.append((name, path))
    for name, path in pairs:
        if name in specs:
            raise GenloomError(f"two models are named {name!r}; name them apart with --name NAME=PATH")
        if not all(c.isalnum() or c in "-_.:" for c in name):
            raise GenloomError(f"model name {name!r} may hold only letters, digits and - _ . :")
        specs[name] = Path(path)
    if not specs:
        raise GenloomError("nothing to serve: give at least one checkpoint")
    return specs


def load_served_models(specs: dict[str, Path], settings: ServeSettings,
                       metrics: ServerMetrics) -> dict[str, ServedModel]:
    device = pick_device(settings.device)
    models: dict[str, ServedModel] = {}
    try:
        for name, path in specs.items():
            models[name] = _load(name, path, settings, metrics, device)
        if settings.clip is not None:
            _attach_reranker(settings.clip, [m for m in models.values() if isinstance(m, ImageModel)], device)
    except BaseException:  # the server will not start: end the engine processes of the models loaded so far
        for served in models.values():
            if isinstance(served.worker, EngineProcess):
                served.worker.stop()
        raise
    return models


def _attach_reranker(path: Path, image_models: list[ImageModel], device: torch.device) -> None:
    """Give every image model the CLIP reranker at `path`; it must read their image tokens (the same VQ model)."""
    if not image_models:
        raise GenloomError("--clip reranks images, but no text-to-image model is served")
    reranker = load_clip_model(path)
    reranker.model.to(device).eval()
    reranker.vq.to(device).eval()
    for served in image_models:
        assert served.loaded is not None
        if isinstance(served.loaded, LoadedTextToImage):  # a diffusion model's images are coded by the reranker's VQ
            check_same_image_tokenizer(served.loaded.vq, reranker.vq, str(served.path), str(reranker.path))
        served.reranker = reranker
        served.extra["rerank"] = True
        assert isinstance(served.worker, StepScheduler)
        assert isinstance(served.worker.handler, DiffusionDrawer | TokenDrawer)
        served.worker.handler.reranker = reranker


def _load(name: str, path: Path, settings: ServeSettings, metrics: ServerMetrics, device: torch.device) -> ServedModel:
    if is_hf_directory(path) and not (path / SAFETENSORS_FILE).is_file():
        raise GenloomError(f"{path} has no {SAFETENSORS_FILE}; the server loads only safetensors weights (a "
                           "pickled .bin can run code when loaded)")
    family = "gpt" if is_hf_directory(path) else read_checkpoint_config(resolve_checkpoint(path))["family"]
    if family == "gpt":
        kv_dtype = kv_cache_dtype(settings.kv_cache_dtype)  # refused before any model is loaded
        loaded = load_pretrained(path)
        model, tokenizer = loaded.model, loaded.tokenizer
        assert isinstance(model, GPT) and tokenizer is not None
        model.to(device).eval()
        scheduler: TextScheduler | EngineProcess
        if settings.engine == "process":
            scheduler = EngineProcess(name, path, settings.max_batch, settings.max_queue, settings.device,
                                      settings.threads, metrics, settings.kv_cache_dtype, settings.compile,
                                      settings.prefill_chunk)
            scheduler.launch()
        else:
            if settings.compile:
                compile_decoding(model, kv_dtype=kv_dtype)
            scheduler = TextScheduler(name, model, tokenizer, settings.max_batch, settings.max_queue, metrics,
                                      kv_dtype=kv_dtype, prefill_chunk=settings.prefill_chunk)
        return TextModel(name, TEXT, family, loaded.path, model.config.context_length, scheduler,
                         {"chat": tokenizer.chat_format is not None}, model, tokenizer, tokenizer.chat_format)
    if family in TEXT_TO_IMAGE_FAMILIES:
        t2i = load_image_generator(path)
        t2i.model.to(device).eval()
        pixel_model(t2i).to(device).eval()
        side = image_resolution(t2i)
        # Requests share steps (denoiser passes, or image tokens), each request at its own.
        worker: StepScheduler
        if isinstance(t2i, LoadedLatentDiffusion):
            worker = StepScheduler(name, DiffusionBatch(t2i.model, settings.max_batch), DiffusionDrawer(t2i),
                                   settings.max_queue, metrics)
        else:
            worker = StepScheduler(name, ImageTokenBatch(t2i.model, settings.max_batch), TokenDrawer(t2i),
                                   settings.max_queue, metrics)
        return ImageModel(name, IMAGES, family, t2i.path, None, worker,
                          {"size": f"{side}x{side}", "method": method_of(t2i), "steps": _default_steps(t2i),
                           "rerank": False}, t2i)
    if family in TRANSLATION_FAMILIES:
        tr = load_translation_model(path)
        tr.model.to(device).eval()
        tokenizer = tr.tokenizer
        # Requests share decoding steps, each at its own target token and with its own beam size.
        batch = TranslationBatch(tr.model, settings.max_batch, SpecialIds.of(tokenizer))
        translator = StepScheduler(name, batch, Translator(tokenizer), settings.max_queue, metrics)
        return TranslationModel(name, TRANSLATION, family, tr.path, None, translator, {}, tr.model, tokenizer)
    raise GenloomError(f"{path} is a {family} model, which the server does not serve (it serves language, chat, "
                       "translation and text-to-image models)")


DIFFUSION_STEPS = 20  # a diffusion model's sampling steps when a request names none
MAX_DIFFUSION_STEPS = 250  # what one request may ask for: a bound on the compute it can claim


def _default_steps(t2i: ImageGenerator) -> int:
    """A token model's steps are its image tokens (fixed); a diffusion model's, the sampler's default."""
    return DIFFUSION_STEPS if isinstance(t2i, LoadedLatentDiffusion) else t2i.model.config.image_len


@dataclass
class ImageJob:
    prompt: str
    n: int
    seed: int
    guidance_scale: float
    negative_prompt: str
    temperature: float
    rerank: int | None = None  # draw this many candidates per image and keep the reranker's best
    steps: int = DIFFUSION_STEPS  # diffusion's sampling steps (a token model's are fixed)


def image_batch_key(job: ImageJob) -> tuple[float, float, int | None, int]:
    """Requests that can share one whole call (`draw_whole_call`): the same guidance, temperature, reranking and
    steps (seeds, prompts and negative prompts are per image). The server's `StepScheduler` shares its steps
    between any requests and needs none; the whole-call reference of benchmarks/step_serving.py groups by it."""
    return (job.guidance_scale, job.temperature, job.rerank, job.steps)


def _options(t2i: ImageGenerator, job: ImageJob) -> dict[str, Any]:
    """The method's sampling options of `draw_images` for a job."""
    if isinstance(t2i, LoadedLatentDiffusion):
        return {"sampling": DiffusionSampling(steps=job.steps)}
    return {"temperature": job.temperature}


def new_seed() -> int:
    """A seed for a request that gave none, recorded in its PNGs so the image can be drawn again."""
    return random.SystemRandom().randrange(2**31)


def draw_whole_call(t2i: ImageGenerator, reranker: LoadedClip | None, jobs: list[ImageJob]) -> list[list[bytes]]:
    """PNG bytes of every job's images from one sampling call; image i of a job is seed + i, as `imagine`.
    Reranked jobs draw their candidates with `imagine_best_of`, one call per job. The library's path, which the
    server's step-level drawers reproduce image for image (the tests check it; benchmarks/step_serving.py
    runs it as the whole-call reference)."""
    if jobs[0].rerank is not None:
        assert reranker is not None, "the app refuses rerank without a reranker"
        return [_draw_best_of(t2i, reranker, job) for job in jobs]
    prompts = [job.prompt for job in jobs for _ in range(job.n)]
    negatives = [job.negative_prompt for job in jobs for _ in range(job.n)]
    seeds = [job.seed + i for job in jobs for i in range(job.n)]
    first = jobs[0]
    images, _ = draw_images(t2i, prompts, 1, guidance_scale=first.guidance_scale, progress=False,
                            negative_prompts=negatives, image_seeds=seeds, **_options(t2i, first))
    out, at = [], 0
    for job in jobs:
        out.append([_png(t2i, job, i, images[at + i], {"image_seed": job.seed + i}) for i in range(job.n)])
        at += job.n
    return out


def _draw_best_of(t2i: ImageGenerator, reranker: LoadedClip, job: ImageJob) -> list[bytes]:
    assert job.rerank is not None
    best = imagine_best_of(t2i, reranker, [job.prompt], job.n, job.rerank, seed=job.seed,
                           guidance_scale=job.guidance_scale, progress=False, negative_prompts=[job.negative_prompt],
                           **_options(t2i, job))
    return _best_pngs(t2i, reranker, job, best)


def _best_pngs(t2i: ImageGenerator, reranker: LoadedClip, job: ImageJob, best: Reranked) -> list[bytes]:
    return [_png(t2i, job, i, image, {"clip": str(reranker.path), "rerank": job.rerank,
                                      "image_seed": None if best.seeds is None else best.seeds[i],
                                      "clip_score": round(float(score), 4)})
            for i, (image, score) in enumerate(zip(best.images, best.scores, strict=True))]


@dataclass
class DiffusionDrawer:
    """A diffusion model's image requests as `StepScheduler` runs them: each `ImageJob` is one group of the
    batch (its n images, or its `rerank` candidates), and its PNGs are those of the whole-call path (`draw_whole_call`):
    the same seeds, captions and plan, so the same images."""

    t2i: LoadedLatentDiffusion
    reranker: LoadedClip | None = None

    def start(self, batch: DiffusionBatch, job: ImageJob) -> LatentGroup:
        text, unconditional, generators = _group_inputs(self.t2i, job, batch.device)
        return batch.add(text, DiffusionSampling(steps=job.steps), job.guidance_scale, unconditional, generators)

    def finish(self, job: ImageJob, latents: Tensor) -> list[bytes]:
        return _request_pngs(self.t2i, self.reranker, job, latents_to_images(self.t2i.vae, latents), None)


@dataclass
class TokenDrawer:
    """A token model's image requests as `StepScheduler` runs them: each `ImageJob` is one group of the
    `ImageTokenBatch` (its n images, or its `rerank` candidates), and its PNGs are those of the whole-call path
    (`draw_whole_call`): the same seeds, captions and sampling, so the same images."""

    t2i: LoadedTextToImage
    reranker: LoadedClip | None = None

    def start(self, batch: ImageTokenBatch, job: ImageJob) -> TokenGroup:
        text, unconditional, generators = _group_inputs(self.t2i, job, batch.device)
        sampling = SamplingConfig(max_new_tokens=self.t2i.model.config.image_len, temperature=job.temperature)
        return batch.add(text, sampling, job.guidance_scale, unconditional, generators)

    def finish(self, job: ImageJob, tokens: Tensor) -> list[bytes]:
        grid = self.t2i.model.config.grid_size
        codes = tokens.view(-1, grid, grid).cpu()
        return _request_pngs(self.t2i, self.reranker, job, codes_to_images(self.t2i.vq, codes), codes)


def _group_inputs(t2i: ImageGenerator, job: ImageJob, device: torch.device
                  ) -> tuple[Tensor, Tensor, list[torch.Generator] | None]:
    """A request's captions (k, Lt), unconditional caption (its negative prompt) and per-image generators (seed + i),
    k its n images or its `rerank` candidates: what either method's engine takes for a group."""
    images = job.rerank or job.n
    text, unconditional = encode_image_prompts(t2i.tokenizer, t2i.model.config.text_len, [job.prompt], images,
                                               job.guidance_scale, [job.negative_prompt])
    return text, unconditional, row_generators(images, job.seed, None, device)


def _request_pngs(t2i: ImageGenerator, reranker: LoadedClip | None, job: ImageJob, images: np.ndarray,
                  codes: Tensor | None) -> list[bytes]:
    """A finished request's PNGs: its n images, or the reranker's best n of its candidates (codes: the token
    method's own; None for diffusion, whose pixels the reranker codes)."""
    if job.rerank is None:
        return [_png(t2i, job, i, images[i], {"image_seed": job.seed + i}) for i in range(job.n)]
    assert reranker is not None, "the app refuses rerank without a reranker"
    best = keep_best(reranker, [job.prompt], images, codes, job.n, job.seed)
    return _best_pngs(t2i, reranker, job, best)


def _png(t2i: ImageGenerator, job: ImageJob, index: int, image: np.ndarray, extra: dict[str, Any]) -> bytes:
    """Image `index` of `job` as PNG bytes with the record `genloom imagine` writes (parameters, data, credit)."""
    sampling: dict[str, Any] = {"temperature": job.temperature, "top_k": None, "top_p": None}
    if isinstance(t2i, LoadedLatentDiffusion):
        sampler = check_sampler(t2i.model.config.process, None)
        sampling = {"steps": job.steps, "sampler": sampler, "eta": 0.0, "spacing": DiffusionSampling.spacing}
    params = {"model": str(t2i.path), **sampling, "guidance_scale": job.guidance_scale, "seed": job.seed,
              "n_images": job.n, "index": index, "negative_prompt": job.negative_prompt or None, **extra}
    record = _data_record(t2i.path)
    return png_bytes(np.ascontiguousarray(image), image_record(job.prompt, params, record.get("data"),
                                                               attribution(record)))


@functools.cache
def _data_record(checkpoint: Path) -> dict[str, Any]:
    """The run's data record, read once per served model rather than once per image."""
    return read_data_record(checkpoint)


@dataclass
class TranslationJob:
    texts: list[str]
    prefix: str  # the direction tag of a multi-task model
    beam_size: int


@dataclass
class Translator:
    """A translation model's requests as `StepScheduler` runs them: each `TranslationJob` is one group of the
    `TranslationBatch` (its texts, with the direction tag of a multi-task model), and its texts are those
    `translate` gives for the same sources and beam size."""

    tokenizer: Tokenizer

    def start(self, batch: TranslationBatch, job: TranslationJob) -> TranslationGroup:
        ids = SpecialIds.of(self.tokenizer)
        return batch.add([encode_source(self.tokenizer, ids, job.prefix + text) for text in job.texts], job.beam_size)

    def finish(self, job: TranslationJob, targets: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in targets]
