"""Prometheus metrics of one server (its own registry, so several servers in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Fine at the low end: a small model's decoding step on a CPU takes 1-10 ms.
_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("genloom_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("genloom_prompt_tokens", "prompt tokens read", ["model"], registry=r)
        self.generated_tokens = Counter("genloom_generated_tokens", "tokens generated", ["model"], registry=r)
        self.images = Counter("genloom_generated_images", "images generated", ["model"], registry=r)
        self.queue_depth = Gauge("genloom_queue_depth", "requests waiting for a batch slot", ["model"], registry=r)
        self.running = Gauge("genloom_running_batch_size", "rows in the running batch", ["model"], registry=r)
        self.time_to_first_token = Histogram("genloom_time_to_first_token_seconds",
                                             "from a request's arrival to its first token", ["model"],
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram("genloom_inter_token_latency_seconds", "between consecutive tokens of "
                                             "one request", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        # Where the time between tokens goes, inside a language model's engine: every running row waits for both.
        self.decode_step = Histogram("genloom_decode_step_seconds", "one decoding step of a language model's "
                                     "running batch (its forward, sampling and events)", ["model"],
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.prefill = Histogram("genloom_prefill_seconds", "reading waiting prompts into a language model's batch "
                                 "(at most --prefill-chunk tokens), before its next step", ["model"],
                                 buckets=_LATENCY_BUCKETS, registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
