"""Tiny checkpoints of every served kind, and a live uvicorn server on an ephemeral loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import uvicorn
from chat_helpers import printable_chars

from genloom.checkpoint import save_checkpoint
from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.models.clip import Clip, ClipConfig
from genloom.models.dalle import Dalle, DalleConfig
from genloom.models.dit import DiT, DiTConfig
from genloom.models.gpt import GPT, GPTConfig
from genloom.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from genloom.models.vae import VAE, VAEConfig
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.serve import PREFILL_CHUNK, KVCacheDtype
from genloom.serve.app import ServerConfig, create_app
from genloom.serve.metrics import ServerMetrics
from genloom.serve.models import ServeSettings, load_served_models
from genloom.tokenizers.chat_template import add_chat_tokens

CONTEXT = 96
LONG_CONTEXT = 768  # a model whose long generations overlap other requests' (concurrency, disconnects)
CAPTIONS = ["a red circle", "a blue square above a green triangle", "a cyan triangle", "a yellow square"]


def _opinionated(model: torch.nn.Module, std: float) -> None:
    """Weights larger than the init: logits far from ties, so greedy decoding is not at the mercy of float noise."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)


def make_checkpoints(root: Path) -> dict[str, Path]:
    """{"lm", "chat", "images", "diffusion", "translate", "long"} -> checkpoint directory, random weights, made in
    a second."""
    torch.manual_seed(0)
    chars = printable_chars()
    lm_config = GPTConfig(vocab_size=chars.vocab_size, context_length=CONTEXT, n_layers=2, d_model=32, n_heads=4)
    lm = GPT(lm_config)
    _opinionated(lm, 0.3)
    save_checkpoint(root / "lm", lm, "gpt", lm_config, chars)

    chat_chars = printable_chars()
    add_chat_tokens(chat_chars)
    chat = GPT(lm_config)
    _opinionated(chat, 0.3)
    chat.resize_vocabulary(chat_chars.vocab_size)
    save_checkpoint(root / "chat", chat, "gpt", chat.config, chat_chars)

    captions = train_caption_tokenizer(CAPTIONS, 300)
    vq = VQVAE(VQConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4, codebook_size=16))
    dalle_config = DalleConfig(text_vocab_size=captions.vocab_size, text_len=12, image_vocab_size=16,
                               grid_size=vq.config.grid_size, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                               pad_id=CaptionCodec(captions, 12).ids.pad)
    dalle = Dalle(dalle_config)
    _opinionated(dalle, 0.6)
    save_checkpoint(root / "images" / "image_tokenizer", vq, "vqvae", vq.config, None)
    save_checkpoint(root / "images" / "final", dalle, "dalle", dalle_config, captions, metadata={
        "components": {"image_tokenizer": "vqvae"}})

    clip_config = ClipConfig(text_vocab_size=captions.vocab_size, text_len=12,
                             pad_id=CaptionCodec(captions, 12).ids.pad, image_vocab_size=16,
                             grid_size=vq.config.grid_size, d_model=32, n_layers=1, n_heads=4, d_ff=64, embed_dim=16)
    save_checkpoint(root / "images" / "clip", Clip(clip_config), "clip", clip_config, captions,
                    metadata={"components": {"image_tokenizer": "vqvae"}})  # the same VQ as the dalle run

    vae = VAE(VAEConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4))  # 8x8 -> 4x4x4 latents
    dit_config = DiTConfig(latent_size=4, d_model=32, n_layers=1, n_heads=4, d_ff=64,
                           text_vocab_size=captions.vocab_size, text_len=12, text_layers=1,
                           pad_id=CaptionCodec(captions, 12).ids.pad)
    dit = DiT(dit_config)
    _opinionated(dit, 0.05)  # adaLN-Zero's zero init would make every image the same
    save_checkpoint(root / "diffusion" / "autoencoder", vae, "vae", vae.config, None)
    save_checkpoint(root / "diffusion" / "final", dit, "dit", dit_config, captions, metadata={
        "components": {"autoencoder": "vae"}})

    s2s_config = Seq2SeqConfig(vocab_size=captions.vocab_size, max_len=24, n_encoder_layers=1, n_decoder_layers=1,
                               d_model=32, n_heads=4, d_ff=64, dropout=0.0, pad_id=CaptionCodec(captions, 12).ids.pad)
    s2s = Seq2SeqTransformer(s2s_config)
    _opinionated(s2s, 0.3)
    save_checkpoint(root / "translate", s2s, "seq2seq", s2s_config, captions)
    long_config = GPTConfig(vocab_size=chars.vocab_size, context_length=LONG_CONTEXT, n_layers=2, d_model=32,
                            n_heads=4)
    long = GPT(long_config)
    _opinionated(long, 0.3)
    save_checkpoint(root / "long", long, "gpt", long_config, chars)
    return {"lm": root / "lm", "chat": root / "chat", "images": root / "images" / "final",
            "diffusion": root / "diffusion" / "final", "translate": root / "translate", "long": root / "long"}


def clip_of(checkpoints: dict[str, Path]) -> Path:
    """The CLIP reranker `make_checkpoints` saved beside the text-to-image run (not a served model itself)."""
    return checkpoints["images"].parent / "clip"


class LiveServer:
    """create_app over `specs`, served by uvicorn in a thread of this process on 127.0.0.1:<free port>."""

    def __init__(self, specs: dict[str, Path], api_key: str | None = None, max_batch: int = 4, max_queue: int = 8,
                 max_body_bytes: int = 1 << 20, clip: Path | None = None,
                 engine: Literal["thread", "process"] = "thread", kv_cache_dtype: KVCacheDtype = "auto",
                 compile: bool = False, prefill_chunk: int = PREFILL_CHUNK) -> None:
        self.metrics = ServerMetrics()
        settings = ServeSettings(max_batch, max_queue, "cpu", clip, engine, kv_cache_dtype=kv_cache_dtype,
                                 compile=compile, prefill_chunk=prefill_chunk)
        self.models = load_served_models(specs, settings, self.metrics)
        app = create_app(self.models, self.metrics, ServerConfig(api_key=api_key, max_body_bytes=max_body_bytes))
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


def http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict[str, str], object]:
    """(status, headers, parsed JSON or text) of one request, whatever the status."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, head, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        status, head, payload = e.code, dict(e.headers), e.read()
    text = payload.decode()
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text


def batched_and_solo_texts(client: Any, prompts: list[str], **kw: Any) -> tuple[list[str], list[str]]:
    """Each prompt's completion sent alone, one after another, then all at once (prompt i with seed 100 + i): the
    texts of both, which batching must leave equal."""
    import concurrent.futures

    def complete(i: int) -> str:
        return str(client.completions.create(prompt=prompts[i], seed=100 + i, **kw).choices[0].text)

    solo = [complete(i) for i in range(len(prompts))]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(complete, range(len(prompts))))
    return together, solo


def open_long_stream(server: LiveServer) -> Any:
    """An http.client connection streaming a long greedy completion from the "long" model, its first event read."""
    import http.client
    import json

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = {"model": "long", "prompt": "a", "max_tokens": LONG_CONTEXT - 8, "temperature": 0, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")  # streaming has begun
    return connection


def hang_up(connection: Any) -> None:
    """The client goes away mid-stream."""
    connection.sock.close()
    connection.close()


def _without_floats(value: Any) -> Any:
    """`value` (a choice's dump) with every float replaced by None: the tokens, texts and offsets left to compare."""
    if isinstance(value, float):
        return None
    if isinstance(value, dict):
        return {k: _without_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_floats(v) for v in value]
    return value


def _floats(value: Any) -> list[float]:
    """Every float in `value` (a choice's dump), in order."""
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _floats(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in _floats(v)]
    return []


def assert_choices_alike(a: Any, b: Any) -> None:
    """Same tokens, texts, offsets and top-k sets; log-probabilities equal to float rounding. Which steps two rows
    share depends on when the engine admits them, and a batch of other width sums in another order (about 1e-7)."""
    dumps = [c.model_dump() for c in a], [c.model_dump() for c in b]
    assert _without_floats(dumps[0]) == _without_floats(dumps[1])
    assert _floats(dumps[0]) == pytest.approx(_floats(dumps[1]), abs=1e-5)


def timed_passes(server: LiveServer, model: str, run: Callable[[], object], steps: int) -> tuple[float, float]:
    """(prefills, decoding steps) that `run` adds to `model`'s engine histograms, waiting up to 10 s for `steps`
    steps: a step's time is recorded after its events are delivered, so a response can arrive first."""
    def count(name: str) -> float:
        return server.metrics.registry.get_sample_value(f"genloom_{name}_seconds_count", {"model": model}) or 0.0
    before = count("prefill"), count("decode_step")
    run()
    deadline = time.monotonic() + 10
    while count("decode_step") - before[1] < steps and time.monotonic() < deadline:
        time.sleep(0.005)
    return count("prefill") - before[0], count("decode_step") - before[1]
