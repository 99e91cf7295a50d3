"""``GET /metrics``: Prometheus series named as vLLM names them, with the ``alignspec:`` prefix.

Speculation counters are added straight from :class:`~alignspec.stats.SpecCounters` (the one
stats module), and token counts from :func:`~alignspec.server.responses.usage`, the same
function that fills each response's ``usage``, so the series add up to what clients were told.
Generations cancelled by a disconnect count only in ``request_cancelled_total``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from alignspec.server.responses import usage
from alignspec.server.scheduler import Job

P = "alignspec:"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServerMetrics:
    """The server's registry (its own, so tests and several apps never share series)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        m = ("method",)
        self.drafts = Counter(P + "spec_decode_num_drafts", "Rounds that drafted", m, registry=r)
        self.draft_tokens = Counter(
            P + "spec_decode_num_draft_tokens", "Proposed draft tokens", m, registry=r
        )
        self.accepted = Counter(
            P + "spec_decode_num_accepted_tokens", "Accepted draft tokens", m, registry=r
        )
        self.accepted_per_pos = Counter(
            P + "spec_decode_num_accepted_tokens_per_pos",
            "Rounds whose accepted draft reached depth position + 1",
            ("method", "position"),
            registry=r,
        )
        self.rounds = Counter(P + "spec_decode_num_rounds", "Target verify rounds", m, registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens", m, registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Generated tokens", m, registry=r)
        self.success = Counter(
            P + "request_success",
            "Finished requests",
            ("method", "finish_reason"),
            registry=r,
        )
        self.cancelled = Counter(
            P + "request_cancelled", "Requests cancelled by a disconnect", registry=r
        )
        self.errors = Counter(P + "request_errors", "Refused requests", ("status",), registry=r)
        self.ttft = Histogram(
            P + "time_to_first_token_seconds",
            "From arrival to the first text, queueing included",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            P + "e2e_request_latency_seconds",
            "From arrival to the last token",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_s = Histogram(
            P + "generation_tokens_per_second",
            "Generated tokens per second of a request (prefill included)",
            m,
            buckets=RATE_BUCKETS,
            registry=r,
        )
        Gauge(P + "num_requests_waiting", "Queued requests", registry=r).set_function(waiting)
        Gauge(P + "num_requests_running", "Running requests", registry=r).set_function(running)

    def request_error(self, status: int) -> None:
        self.errors.labels(str(status)).inc()

    def observe(self, job: Job) -> None:
        """Record a finished job (the scheduler's ``on_done``)."""
        out = job.output
        if out is None:
            if job.cancelled:
                self.cancelled.inc()
            return
        method = out.method
        counters = out.stats.counters
        self.drafts.labels(method).inc(counters.num_drafts)
        self.draft_tokens.labels(method).inc(counters.num_draft_tokens)
        self.accepted.labels(method).inc(counters.num_accepted_tokens)
        self.rounds.labels(method).inc(counters.num_rounds)
        for position, n in enumerate(counters.num_accepted_tokens_per_pos):
            self.accepted_per_pos.labels(method, str(position)).inc(n)
        used = usage(out)
        self.prompt_tokens.labels(method).inc(used["prompt_tokens"])
        self.generation_tokens.labels(method).inc(used["completion_tokens"])
        self.success.labels(method, out.finish_reason).inc()
        if job.first_delta_at is not None:
            self.ttft.labels(method).observe(job.first_delta_at - job.submitted)
        self.e2e.labels(method).observe(job.finished_at - job.submitted)
        self.tokens_per_s.labels(method).observe(out.stats.tokens_per_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
