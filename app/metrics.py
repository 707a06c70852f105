"""Prometheus metrics (SPEC §5 ``GET /metrics``), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, node_id: str | None = None) -> None:
        self.registry = CollectorRegistry()
        if node_id is not None:
            # weft_node_info{node_id="..."} 1: which node of a cluster this is (SPEC §12.2).
            Info("weft_node", "This node.", registry=self.registry).info({"node_id": node_id})
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
        self.takeovers = Counter(
            "weft_takeovers",
            "Live streams this node took over after their lease expired or was released.",
            registry=self.registry,
        )
        self.leases_lost = Counter(
            "weft_leases_lost",
            "Live streams this node dropped because it no longer held their lease.",
            registry=self.registry,
        )
        self.evictions = Counter(
            "weft_evictions",
            "Finished streams deleted to keep the stored total under limits.total_bytes.",
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

        self.hook_deliveries = Counter(
            "weft_hook_deliveries",
            "Webhook calls by event and outcome (delivered, failed, dropped; "
            "pre-create: accepted, refused, unreachable).",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.hook_pending = Gauge(
            "weft_hook_deliveries_pending",
            "post-* webhook deliveries waiting in the outbox, on every node.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
