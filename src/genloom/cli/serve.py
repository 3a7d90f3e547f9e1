"""`genloom serve`: every given checkpoint behind one OpenAI-compatible HTTP server, with a web page at `/`."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
from pathlib import Path

from genloom.cli.common import add_compile_flag, positive_int
from genloom.errors import GenloomError
from genloom.serve import KV_CACHE_DTYPES, PREFILL_CHUNK

API_KEY_ENV = "GENLOOM_API_KEY"


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API and a web page")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                   help="run directories or checkpoints (language, chat, translation or text-to-image models), each "
                   "served under its directory's name")
    p.add_argument("--name", action="append", default=[], metavar="NAME=PATH",
                   help="serve PATH as model NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but loopback needs --api-key")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"clients must send `Authorization: Bearer KEY` (default: ${API_KEY_ENV})")
    p.add_argument("--max-batch", type=positive_int, default=16, help="rows decoded together per model")
    p.add_argument("--max-queue", type=positive_int, default=64,
                   help="requests waiting per model before the server answers 429")
    p.add_argument("--clip", metavar="RUN", help="a `genloom train clip` run: the image endpoint's reranker "
                   "(`rerank: N` draws N candidates and keeps the best)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=positive_int, default=default_threads(),
                   help="torch threads for the models on the CPU (default: every core but one, which is left to "
                   "the HTTP event loop; see the serve_load benchmark)")
    p.add_argument("--engine", choices=("process", "thread"), default="process",
                   help="decode each language model in a process of its own (default: no interpreter lock shared "
                   "with the HTTP side; its weights are held in both processes), or on a thread of the server")
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                   help="the language models' KV caches: auto (the weights' dtype), or 16 bits, as llama.cpp keeps "
                   "them: half the memory per row, at a small change to the numbers (on a 2-core CPU no faster: "
                   "serve_load benchmark)")
    p.add_argument("--prefill-chunk", type=positive_int, default=PREFILL_CHUNK, metavar="TOKENS",
                   help="prompt tokens a language model reads between two decoding steps: a longer prompt is read "
                   "over several steps, so it delays the running streams by one chunk a step instead of by its whole "
                   "prefill (vLLM's chunked prefill; a value of at least the context reads every prompt whole)")
    add_compile_flag(p)
    p.set_defaults(func=_cmd_serve)


def default_threads() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from genloom.serve.app import ServerConfig, create_app
    from genloom.serve.metrics import ServerMetrics
    from genloom.serve.models import ServeSettings, load_served_models, parse_model_specs

    if not is_loopback(args.host) and not args.api_key:
        raise GenloomError(f"refusing to listen on {args.host} without an API key: anyone who can reach it could use "
                           f"the models; pass --api-key KEY (or set ${API_KEY_ENV}), or serve on 127.0.0.1")
    if args.api_key is not None and len(args.api_key) < 8:
        raise GenloomError("the API key must be at least 8 characters")
    specs = parse_model_specs(args.checkpoints, args.name)
    # On 2 cores, torch's two OpenMP threads spin between a step's ops on the core the event loop needs: the measured
    # single-stream latency halves with one thread (README, Serving benchmark).
    torch.set_num_threads(args.threads)
    metrics = ServerMetrics()
    settings = ServeSettings(args.max_batch, args.max_queue, args.device, Path(args.clip) if args.clip else None,
                             args.engine, args.threads, args.kv_cache_dtype, args.compile, args.prefill_chunk)
    models = load_served_models(specs, settings, metrics)
    app = create_app(models, metrics, ServerConfig(api_key=args.api_key))
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # listening before the address is printed: a client that connects at once is queued
    except OSError as e:
        raise GenloomError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(f"{name} ({served.kind})" for name, served in models.items())
    print(f"genloom: serving {names} at http://{shown}:{port}/ (OpenAI API at http://{shown}:{port}/v1)", flush=True)
    # Ctrl-C or SIGTERM, which uvicorn re-raises after its graceful shutdown, is the normal way to stop a server.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
    print("genloom: server stopped", flush=True)
