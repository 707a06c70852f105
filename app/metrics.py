"""Prometheus metrics (SPEC §5 ``GET /metrics``), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.streams = Gauge(
            "weft_streams", "Streams stored, by state.", ["state"], registry=self.registry
        )
        self.bytes_in = Counter(
            "weft_bytes_in", "Stream bytes stored from producers.", registry=self.registry
        )
        self.bytes_out = Counter(
            "weft_bytes_out", "Stream bytes sent to readers.", registry=self.registry
        )
        self.live_readers = Gauge(
            "weft_live_readers", "Reader responses in progress.", registry=self.registry
        )
        self.live_producers = Gauge(
            "weft_live_producers", "Producers attached to streams.", registry=self.registry
        )
        self.corrupt_blocks = Counter(
            "weft_corrupt_blocks",
            "Stored blocks that failed verification when read or recovered.",
            registry=self.registry,
        )
        self.requests = Counter(
            "weft_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "weft_http_request_duration_seconds",
            "Time from request to response headers, by method and route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
