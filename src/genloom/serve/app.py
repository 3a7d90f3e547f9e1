"""The HTTP API: OpenAI's completions, chat completions and images endpoints, genloom's translations, health,
Prometheus metrics and the web page, as one FastAPI app over the models `serve.models` loaded.

The handlers only validate, turn a request into scheduler jobs and the scheduler's events into OpenAI's JSON or
server-sent events; decoding is `genloom.generate`'s (the same engine as `genloom generate` and `genloom chat`)
and chat prompts are rendered by the model's own template, the function training used.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genloom.data.captions import CaptionCodec
from genloom.data.translation import direction_prefix
from genloom.diffusion.process import check_guidance
from genloom.errors import GenloomError
from genloom.generate.batch import TokenLogprobs, prompt_logprobs
from genloom.generate.lm import DecoderTool
from genloom.generate.sampling import SamplingConfig
from genloom.generate.translate import check_sources
from genloom.registry import LoadedLatentDiffusion
from genloom.serve.engine_process import EngineProcess
from genloom.serve.errors import (
    ApiError,
    api_error_handler,
    bad_request,
    queue_full,
    unknown_model,
    validation_error_handler,
)
from genloom.serve.metrics import ServerMetrics
from genloom.serve.models import (
    DIFFUSION_STEPS,
    IMAGES,
    MAX_DIFFUSION_STEPS,
    TEXT,
    TRANSLATION,
    ImageJob,
    ImageModel,
    ServedModel,
    TextModel,
    TranslationJob,
    TranslationModel,
    new_seed,
)
from genloom.serve.scheduler import CallJob, CallQueue, QueueFull, TextJob, TextScheduler, TokenEvent
from genloom.serve.schemas import (
    MAX_PROMPTS,
    MAX_STOP_STRINGS,
    MAX_TRANSLATIONS,
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    ImageRequest,
    TokenizeRequest,
    TranslationRequest,
)
from genloom.tokenizers.chat_template import check_messages, encode_prompt
from genloom.tokenizers.chat_tools import decoder_tool

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_BODY_BYTES = 1 << 20
STATIC = resources.files("genloom.serve") / "static"
KEYED_PATHS = ("/tokenize", "/detokenize")  # outside /v1/ (where vLLM has them), behind the API key all the same


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES


def create_app(models: dict[str, ServedModel], metrics: ServerMetrics, config: ServerConfig | None = None) -> FastAPI:
    """The app; its lifespan starts every model's scheduler thread and stops them at shutdown."""
    settings = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for served in models.values():
            served.worker.start()
        try:
            yield
        finally:
            for served in models.values():
                served.worker.stop()

    app = FastAPI(title="genloom", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)

    @app.exception_handler(GenloomError)
    async def genloom_error(request: Request, exc: GenloomError) -> JSONResponse:
        return bad_request(str(exc)).response()

    def lookup(name: str, kind: str, endpoint: str, body: Any = None) -> ServedModel:
        unsupported = body.unsupported() if body is not None else None
        if unsupported is not None:
            raise bad_request(f"{unsupported} is not supported by this server", param=unsupported,
                              code="unsupported_parameter")
        if name not in models:
            raise unknown_model(name, sorted(models))
        served = models[name]
        if served.kind != kind:
            raise bad_request(f"the model {name!r} is a {served.kind} model; {endpoint} needs a {kind} model",
                              param="model", code="wrong_model_kind")
        return served

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(models)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [served.describe() for served in models.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        if name not in models:
            raise unknown_model(name, sorted(models))
        return models[name].describe()

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Response | dict[str, Any]:
        served = lookup(body.model, TEXT, "/v1/completions", body)
        assert isinstance(served, TextModel) and served.tokenizer is not None
        prompts = body.prompt_list()
        if len(prompts) > MAX_PROMPTS:
            raise bad_request(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", param="prompt")
        encoded = [_encode_text(served, p) if isinstance(p, str) else _check_token_ids(served, p) for p in prompts]
        texts = [p if isinstance(p, str) else served.tokenizer.decode(p) for p in prompts]
        max_tokens = DEFAULT_COMPLETION_TOKENS if body.max_tokens is None else body.max_tokens
        if max_tokens == 0 and not body.echo:
            raise bad_request("max_tokens must be at least 1 (0 only with echo, to score the prompt)", "max_tokens")
        for tokens in encoded:
            _check_context(served, len(tokens), max_tokens)
        candidates = _candidates(body)
        # best_of ranks candidates by their tokens' log-probabilities, so its rows report at least the chosen one's.
        top = body.logprobs if candidates == body.n else (body.logprobs or 0)
        jobs = _jobs(served, body, encoded, candidates, max_tokens, top, served.tokenizer.eos_id) \
            if max_tokens > 0 else []
        stream = CompletionStream(served, body, texts, encoded, candidates)
        if body.stream:
            return _sse(stream.chunks(_run(served, jobs)))
        return await stream.collect(_run(served, jobs))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> Response | dict[str, Any]:
        served = lookup(body.model, TEXT, "/v1/chat/completions", body)
        assert isinstance(served, TextModel) and served.tokenizer is not None
        prompt = _encode_chat(served, body.messages, add_generation_prompt=True)
        assert served.chat_format is not None  # _encode_chat refuses a model without a template
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if asked == 0:
            raise bad_request("max_tokens must be at least 1", param="max_tokens")
        context = served.context_length or 0
        max_tokens = asked if asked is not None else max(1, context - len(prompt))
        _check_context(served, len(prompt), max_tokens)
        top = (body.top_logprobs or 0) if body.logprobs else None
        jobs = _jobs(served, body, [prompt], body.n, max_tokens, top, served.chat_format.end_id(served.tokenizer),
                     decoder_tool(served.tokenizer))
        stream = ChatStream(served, body, len(prompt))
        if body.stream:
            return _sse(stream.chunks(_run(served, jobs)))
        return await stream.collect(_run(served, jobs))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """A prompt's token ids, for token-array prompts and logit_bias (vLLM's endpoint and shape)."""
        served = lookup(body.model, TEXT, "/tokenize")
        assert isinstance(served, TextModel) and served.tokenizer is not None
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give either `prompt` or `messages`", param="prompt")
        if body.messages is not None:
            tokens = _encode_chat(served, body.messages, body.add_generation_prompt)
        else:
            tokens = served.tokenizer.encode(body.prompt or "")
        return {"count": len(tokens), "max_model_len": served.context_length, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        served = lookup(body.model, TEXT, "/detokenize")
        assert isinstance(served, TextModel) and served.tokenizer is not None
        tokens = _check_token_ids(served, body.tokens, param="tokens") if body.tokens else []
        return {"prompt": served.tokenizer.decode(tokens)}

    @app.post("/v1/images/generations")
    async def images(body: ImageRequest) -> dict[str, Any]:
        served = lookup(body.model, IMAGES, "/v1/images/generations")
        assert isinstance(served, ImageModel) and served.loaded is not None
        size, steps = served.extra["size"], served.extra["steps"]
        if body.response_format != "b64_json":
            raise bad_request("only response_format b64_json is served (this server keeps no image files)",
                              param="response_format")
        if body.size is not None and body.size != size:
            raise bad_request(f"this model draws {size} images, not {body.size}", param="size")
        loaded = served.loaded
        if isinstance(loaded, LoadedLatentDiffusion):
            steps = _diffusion_request(loaded, body)
        elif body.steps is not None and body.steps != steps:
            raise bad_request(f"this model draws an image token by token, in exactly {steps} steps", param="steps")
        if body.rerank is not None and served.reranker is None:
            raise bad_request("reranking needs a CLIP model: start the server with --clip RUN (a `genloom train "
                              "clip` run on this model's image tokenizer)", param="rerank")
        if body.rerank is not None and body.rerank < body.n:
            raise bad_request(f"rerank keeps the best {body.n} of `rerank` candidates; ask for at least {body.n}",
                              param="rerank")
        codec = CaptionCodec(loaded.tokenizer, loaded.model.config.text_len)
        codec.encode([body.prompt, body.negative_prompt])  # a caption that does not fit: 400 now, not in a batch
        job = ImageJob(body.prompt, body.n, new_seed() if body.seed is None else body.seed, body.guidance_scale,
                       body.negative_prompt, body.temperature, body.rerank, steps)
        pngs = await _call(served, body.rerank or body.n, job)
        metrics.images.labels(served.name).inc(len(pngs))
        return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png).decode("ascii"),
                                                       "revised_prompt": None} for png in pngs],
                "seed": job.seed}

    @app.post("/v1/translations/text")
    async def translations(body: TranslationRequest) -> dict[str, Any]:
        served = lookup(body.model, TRANSLATION, "/v1/translations/text")
        assert isinstance(served, TranslationModel) and served.tokenizer is not None and served.model is not None
        texts = body.texts()
        if len(texts) > MAX_TRANSLATIONS:
            raise bad_request(f"at most {MAX_TRANSLATIONS} texts per request, got {len(texts)}", param="text")
        prefix = direction_prefix(served.tokenizer, body.source_language, body.target_language)
        check_sources(served.model, served.tokenizer, [prefix + t for t in texts])
        job = TranslationJob(texts, prefix, body.beam_size)
        results = await _call(served, len(texts), job)
        return {"object": "translation", "model": served.name,
                "translations": [{"index": i, "text": text} for i, text in enumerate(results)]}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    return app


class Guard:
    """ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streams and hides disconnects): refuses a
    request before its handler (`_refuse`), and counts responses by endpoint and status."""

    def __init__(self, app: ASGIApp, settings: ServerConfig, metrics: ServerMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        endpoint = path if path.startswith("/v1/") else "/" + path.strip("/").split("/")[0]
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refused = _refuse(request, self.settings)
            if refused is not None:
                await refused(scope, receive, counted)
            else:
                await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()


def _refuse(request: Request, settings: ServerConfig) -> Response | None:
    """The checks every request passes before its handler: body size, then the API key (for /v1/)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
        return ApiError(413, f"request body over the server's limit of {settings.max_body_bytes} bytes",
                        code="request_too_large").response()
    if request.headers.get("transfer-encoding", "").lower() == "chunked":
        return ApiError(411, "send the body with a Content-Length (chunked bodies are not accepted)").response()
    if settings.api_key is not None and (request.url.path.startswith("/v1/") or request.url.path in KEYED_PATHS):
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the key matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
            return ApiError(401, "a valid API key is required: send `Authorization: Bearer KEY`",
                            type_="authentication_error", code="invalid_api_key").response()
    return None


def _encode_text(served: TextModel, text: str) -> list[int]:
    assert served.tokenizer is not None
    tokens = served.tokenizer.encode(text)
    if not tokens:  # an empty prompt continues from the start of a text, as GPT-2 does
        if served.tokenizer.eos_id is None:
            raise bad_request("the prompt is empty and this model has no end-of-text token to start from", "prompt")
        tokens = [served.tokenizer.eos_id]
    return tokens


def _encode_chat(served: TextModel, messages: list[ChatMessage], add_generation_prompt: bool) -> list[int]:
    """The ids of `messages` rendered by the model's chat template, the function training used."""
    assert served.tokenizer is not None
    if served.chat_format is None:
        raise bad_request(f"the model {served.name!r} has no chat template (it is not a chat model); use "
                          "/v1/completions, or make a chat model with `genloom train chat`", param="model",
                          code="model_has_no_chat_template")
    checked = check_messages([{"role": m.role, "content": m.text()} for m in messages], "messages")
    return encode_prompt(served.tokenizer, served.chat_format, checked, add_generation_prompt)


def _check_token_ids(served: TextModel, tokens: list[int], param: str = "prompt") -> list[int]:
    """A token-array prompt, each id checked against the tokenizer's vocabulary."""
    assert served.tokenizer is not None
    if not tokens:
        raise bad_request("a token-array prompt must hold at least one token", param=param)
    vocab = served.tokenizer.vocab_size
    bad = next((t for t in tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside this model's vocabulary of {vocab} tokens", param=param)
    return tokens


def _logit_bias(served: TextModel, body: CompletionRequest | ChatRequest) -> dict[int, float]:
    """The request's logit_bias with integer token ids, each in the vocabulary, each bias in [-100, 100]."""
    assert served.tokenizer is not None
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias keys are token ids, not {key!r}", param="logit_bias") from None
        if not -100.0 <= value <= 100.0:
            raise bad_request(f"logit_bias values must be in [-100, 100], got {value} for token {key}",
                              param="logit_bias")
        bias[token] = value
    if bias:
        _check_token_ids(served, list(bias), param="logit_bias")
    return bias


def _candidates(body: CompletionRequest) -> int:
    """Sequences to sample per prompt: best_of, or n."""
    if body.best_of is None or body.best_of == body.n:
        return body.n
    if body.best_of < body.n:
        raise bad_request(f"best_of ({body.best_of}) must be at least n ({body.n})", param="best_of")
    if body.stream:
        raise bad_request("best_of cannot be streamed: the best candidates are known only when all have ended",
                          param="best_of")
    return body.best_of


def _diffusion_request(loaded: LoadedLatentDiffusion, body: ImageRequest) -> int:
    """The sampling steps of an image request to a diffusion model; a 400 for what it cannot do."""
    process = loaded.model.config.process
    steps = DIFFUSION_STEPS if body.steps is None else body.steps
    limit = min(MAX_DIFFUSION_STEPS, process.train_timesteps)
    if steps > limit:
        raise bad_request(f"steps ({steps}) must be at most {limit} for this model", param="steps")
    if body.temperature != 1.0:
        raise bad_request("temperature applies to token-method models; a diffusion model samples by steps",
                          param="temperature")
    try:
        check_guidance(process, body.guidance_scale)
    except ValueError as e:
        raise bad_request(str(e), param="guidance_scale") from None
    return steps


def _check_context(served: ServedModel, prompt_tokens: int, max_tokens: int) -> None:
    context = served.context_length or 0
    if prompt_tokens + max_tokens > context:
        raise bad_request(f"this model's maximum context length is {context} tokens, but {prompt_tokens + max_tokens} "
                          f"were asked for ({prompt_tokens} in the prompt, {max_tokens} to generate); shorten the "
                          "prompt or lower max_tokens", param="max_tokens" if prompt_tokens < context else "prompt",
                          code="context_length_exceeded")


def _jobs(served: TextModel, body: CompletionRequest | ChatRequest, prompts: list[list[int]], per_prompt: int,
          max_tokens: int, top_logprobs: int | None, eos_id: int | None, tool: DecoderTool | None = None
          ) -> list[TextJob]:
    """`per_prompt` jobs per prompt (n, or best_of), prompt-major; job i samples with seed + i, so a request is
    reproducible whatever else the server is running. `tool`: the chat calculator, for a model trained to call it."""
    stops = body.stop_strings()
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}", param="stop")
    bias = _logit_bias(served, body)
    jobs = []
    for p, prompt in enumerate(prompts):
        for j in range(per_prompt):
            index = p * per_prompt + j
            sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=body.temperature,
                                      top_p=None if body.top_p >= 1.0 else body.top_p, stop=stops,
                                      seed=None if body.seed is None else body.seed + index,
                                      presence_penalty=body.presence_penalty,
                                      frequency_penalty=body.frequency_penalty, logit_bias=bias)
            jobs.append(TextJob(prompt, sampling, eos_id, top_logprobs, deliver=lambda event: None, tool=tool))
    return jobs


Burst = list[tuple[int, TokenEvent]]  # (job index, event) pairs that arrived together


async def _run(served: ServedModel, jobs: list[TextJob]) -> AsyncIterator[Burst]:
    """Submit `jobs` and yield their events as they come, in bursts: everything that has arrived by the time the
    consumer asks, so a stream that falls behind catches up in one write instead of one per token. Leaving early
    (a client gone: the response task is cancelled) cancels the unfinished jobs, and the scheduler drops their
    rows before its next step."""
    if not jobs:
        return
    relay = _relay(asyncio.get_running_loop())
    events: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()

    def deliverer(index: int) -> Callable[[TokenEvent], None]:
        def deliver(event: TokenEvent) -> None:  # on the scheduler's thread
            relay.post(events, (index, event))
        return deliver

    for index, job in enumerate(jobs):
        job.deliver = deliverer(index)
    scheduler = served.worker
    assert isinstance(scheduler, TextScheduler | EngineProcess)
    if len(jobs) > scheduler.max_queue:  # it could never be queued: a 429 would have the client retry in vain
        raise bad_request(f"this request asks for {len(jobs)} sequences (prompts x n, or x best_of); this server "
                          f"queues at most {scheduler.max_queue} (--max-queue)", param="n")
    try:
        scheduler.submit(jobs)
    except QueueFull as full:
        raise queue_full(full.depth) from None
    open_jobs = set(range(len(jobs)))
    try:
        while open_jobs:
            burst = [await events.get()]
            while not events.empty():
                burst.append(events.get_nowait())
            for index, event in burst:
                if event.error is not None:
                    raise ApiError(500, f"generation failed: {event.error}", type_="server_error")
                if event.finish_reason is not None:
                    open_jobs.discard(index)
            yield burst
    finally:
        if open_jobs:
            scheduler.cancel([jobs[i] for i in open_jobs])


class _Relay:
    """Hands items from scheduler threads to queues of the event loop, one wake-up of the loop per burst: a decoding
    step of 16 rows delivers 16 events, and 16 `call_soon_threadsafe`s would each write to the loop's self-pipe."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[asyncio.Queue[Any], Any]] = []
        self.lock = threading.Lock()
        self.scheduled = False

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        with self.lock:
            self.pending.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self.lock:
            pending, self.pending, self.scheduled = self.pending, [], False
        for queue, item in pending:
            queue.put_nowait(item)


_RELAYS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Relay] = weakref.WeakKeyDictionary()


def _relay(loop: asyncio.AbstractEventLoop) -> _Relay:
    if loop not in _RELAYS:
        _RELAYS[loop] = _Relay(loop)
    return _RELAYS[loop]


async def _call(served: ServedModel, items: int, payload: Any) -> Any:
    """Run a request with one result (images, translations) on the model's step scheduler: it joins the running
    steps (`items` images or texts) and leaves when its last step is done. A client gone before its request starts
    is skipped; one gone mid-way frees its rows before the next step."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def deliver(result: Any, error: BaseException | None) -> None:
        def settle() -> None:
            if done.cancelled():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)
        loop.call_soon_threadsafe(settle)

    job = CallJob(None, items, payload, deliver)  # no key: only a whole-call BatchWorker groups by it
    assert isinstance(served.worker, CallQueue)
    try:
        served.worker.submit(job)
    except QueueFull as full:
        raise queue_full(full.depth) from None
    try:
        return await done
    except GenloomError as e:
        raise bad_request(str(e)) from None
    except asyncio.CancelledError:
        job.cancelled = True
        raise


async def _each(bursts: AsyncIterator[Burst]) -> AsyncIterator[tuple[int, TokenEvent]]:
    async for burst in bursts:
        for item in burst:
            yield item


def _sse(chunks: AsyncIterator[list[dict[str, Any]]]) -> StreamingResponse:
    """Server-sent events: one `data: JSON` per chunk, then `data: [DONE]`, as OpenAI streams; the chunks of one
    burst go out in one write."""
    import json

    async def body() -> AsyncIterator[str]:
        try:
            async for burst in chunks:
                if burst:
                    yield "".join(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n" for chunk in burst)
        except ApiError as e:  # headers are sent: the error travels as an event
            yield f"data: {json.dumps(e.body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class CompletionStream:
    """/v1/completions responses: the whole body, or its chunks as tokens come.

    prompts: each prompt's text (a token-array prompt decoded); candidates: the jobs per prompt, n, or best_of, of
    which the n with the highest total log-probability are returned."""

    def __init__(self, served: TextModel, body: CompletionRequest, prompts: list[str], encoded: list[list[int]],
                 candidates: int | None = None) -> None:
        self.served, self.body, self.prompts, self.encoded = served, body, prompts, encoded
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.candidates = candidates or body.n
        self.choices = len(prompts) * body.n
        self.jobs = len(prompts) * self.candidates
        self._echoed: dict[int, dict[str, list[Any]]] = {}  # prompt -> its echoed tokens' log-probabilities

    def _prompt_of(self, index: int) -> int:
        """The prompt of job `index`."""
        return index // self.candidates

    async def _echo(self, index: int) -> tuple[str, dict[str, list[Any]]]:
        """The prompt's text and, with logprobs, its tokens' log-probabilities (the first token has none): scored
        once per prompt, a fresh copy for each of its choices."""
        p = self._prompt_of(index)
        if p not in self._echoed:
            logprobs = _empty_completion_logprobs()
            if self.body.logprobs is not None:
                assert self.served.model is not None
                # A forward pass over the prompt: on a worker thread, so the event loop keeps serving other streams.
                scored = await asyncio.to_thread(prompt_logprobs, self.served.model, self.encoded[p],
                                                 self.body.logprobs)
                for token, lp in zip(self.encoded[p], scored, strict=True):
                    self._add_logprob(logprobs, token, lp, None)
            self._echoed[p] = logprobs
        return self.prompts[p], {key: list(values) for key, values in self._echoed[p].items()}

    def _add_logprob(self, logprobs: dict[str, list[Any]], token: int, lp: TokenLogprobs | None,
                     offset: int | None) -> None:
        decode = self.served.tokenizer.decode  # type: ignore[union-attr]
        logprobs["text_offset"].append(offset if offset is not None else _next_offset(logprobs))
        logprobs["tokens"].append(decode([token]))
        logprobs["token_logprobs"].append(None if lp is None else lp.logprob)
        logprobs["top_logprobs"].append(None if lp is None else {decode([t]): v for t, v in lp.top})

    def _choice(self, index: int, text: str, logprobs: dict[str, list[Any]] | None, finish: str | None
                ) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    async def collect(self, bursts: AsyncIterator[Burst]) -> dict[str, Any]:
        texts = [""] * self.jobs
        logprobs = [_empty_completion_logprobs() for _ in range(self.jobs)]
        finish: list[str | None] = ["length"] * self.jobs
        total = [0.0] * self.jobs  # each job's log-probability, its end token's included, for best_of
        for i in range(self.jobs):
            if self.body.echo:
                texts[i], logprobs[i] = await self._echo(i)
        generated = 0
        async for index, event in _each(bursts):
            texts[index] += event.text
            if event.logprobs is not None:
                total[index] += event.logprobs.logprob
            if event.token is not None:
                generated += 1
                if self.body.logprobs is not None:
                    self._add_logprob(logprobs[index], event.token, event.logprobs, None)
            if event.finish_reason is not None:
                finish[index] = event.finish_reason
        want_logprobs = self.body.logprobs is not None
        prompt_tokens = sum(len(e) for e in self.encoded) * self.body.n
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.served.name,
                "choices": [self._choice(i, texts[job], logprobs[job] if want_logprobs else None, finish[job])
                            for i, job in enumerate(self._best(total))],
                # every candidate's tokens were generated, so all count (as OpenAI bills best_of)
                "usage": _usage(prompt_tokens, generated)}

    def _best(self, total: list[float]) -> list[int]:
        """The jobs returned as choices 0, 1, ...: each prompt's n candidates of highest total log-probability,
        best first (every job, in order, without best_of)."""
        if self.candidates == self.body.n:
            return list(range(self.jobs))
        chosen = []
        for p in range(len(self.prompts)):
            jobs = range(p * self.candidates, (p + 1) * self.candidates)
            chosen += sorted(jobs, key=lambda job: -total[job])[: self.body.n]
        return chosen

    async def chunks(self, bursts: AsyncIterator[Burst]) -> AsyncIterator[list[dict[str, Any]]]:
        want_logprobs = self.body.logprobs is not None
        head = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.served.name}
        if self.body.echo:
            echoes = [await self._echo(i) for i in range(self.choices)]
            yield [{**head, "choices": [self._choice(i, text, echoed if want_logprobs else None, None)]}
                   for i, (text, echoed) in enumerate(echoes)]
        generated = 0
        async for burst in bursts:
            out = []
            for index, event in burst:
                logprobs: dict[str, list[Any]] | None = None
                if want_logprobs:
                    logprobs = _empty_completion_logprobs()
                    if event.token is not None:
                        self._add_logprob(logprobs, event.token, event.logprobs, 0)
                generated += event.token is not None
                if event.text or event.finish_reason is not None or logprobs:
                    out.append({**head, "choices": [self._choice(index, event.text, logprobs, event.finish_reason)]})
            yield out
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            prompt_tokens = sum(len(e) for e in self.encoded) * self.body.n
            yield [{**head, "choices": [], "usage": _usage(prompt_tokens, generated)}]


def _empty_completion_logprobs() -> dict[str, list[Any]]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _next_offset(logprobs: dict[str, list[Any]]) -> int:
    """The character offset of the next token: after the tokens so far."""
    if not logprobs["text_offset"]:
        return 0
    return int(logprobs["text_offset"][-1]) + len(logprobs["tokens"][-1])


class ChatStream:
    """/v1/chat/completions responses: the whole body, or chunks with `delta`s."""

    def __init__(self, served: TextModel, body: ChatRequest, prompt_tokens: int) -> None:
        self.served, self.body, self.prompt_tokens = served, body, prompt_tokens
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def _logprob_entry(self, token: int, lp: TokenLogprobs | None) -> dict[str, Any]:
        decode = self.served.tokenizer.decode  # type: ignore[union-attr]

        def entry(t: int, value: float) -> dict[str, Any]:
            text = decode([t])
            return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

        assert lp is not None
        return {**entry(token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}

    async def collect(self, bursts: AsyncIterator[Burst]) -> dict[str, Any]:
        n = self.body.n
        texts, finish = [""] * n, ["length"] * n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        generated = 0
        async for index, event in _each(bursts):
            texts[index] += event.text
            if event.token is not None:
                generated += 1
                if self.body.logprobs:
                    logprobs[index].append(self._logprob_entry(event.token, event.logprobs))
            if event.finish_reason is not None:
                finish[index] = event.finish_reason
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.served.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                             "logprobs": {"content": logprobs[i]} if self.body.logprobs else None,
                             "finish_reason": finish[i]} for i in range(n)],
                "usage": _usage(self.prompt_tokens * n, generated)}

    async def chunks(self, bursts: AsyncIterator[Burst]) -> AsyncIterator[list[dict[str, Any]]]:
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.served.name}
        # OpenAI's first chunk of each choice carries the role.
        yield [{**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]} for i in range(self.body.n)]
        generated = 0
        async for burst in bursts:
            out = []
            for index, event in burst:
                generated += event.token is not None
                logprobs = None
                if self.body.logprobs and event.token is not None:
                    logprobs = {"content": [self._logprob_entry(event.token, event.logprobs)]}
                if event.text or logprobs is not None:
                    out.append({**head, "choices": [{"index": index, "delta": {"content": event.text},
                                                     "logprobs": logprobs, "finish_reason": None}]})
                if event.finish_reason is not None:
                    out.append({**head, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                     "finish_reason": event.finish_reason}]})
            yield out
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            yield [{**head, "choices": [], "usage": _usage(self.prompt_tokens * self.body.n, generated)}]
