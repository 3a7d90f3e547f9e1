"""An OpenAI-compatible HTTP server over every genloom model family, with iteration-level batching and a web page."""

from typing import Literal

# The KV cache dtypes `genloom serve --kv-cache-dtype` takes ("auto": the weights' own); here, so the CLI can name
# them without importing torch.
KVCacheDtype = Literal["auto", "bfloat16", "float16"]
KV_CACHE_DTYPES: tuple[KVCacheDtype, ...] = ("auto", "bfloat16", "float16")

# Prompt tokens a language model's scheduler reads between two decoding steps (`genloom serve --prefill-chunk`): the
# most a newly arrived prompt delays the running streams' next token. A 1,000-token prompt read whole stalls every
# stream for its whole prefill (benchmarks/serve_long_prompts.py, README).
PREFILL_CHUNK = 128
