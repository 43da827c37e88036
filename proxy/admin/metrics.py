"""The admin API's Prometheus metrics, in the app's registry: calls by route and outcome (the
error code, or ok), and their latency by route."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class AdminMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.calls = Counter(
            "qsigner_admin_requests",
            "admin API calls by route (method and path template) and outcome (ok, or the error "
            "code: bad_input, unauthorized, forbidden, not_found, conflict, ...)",
            ["route", "outcome"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "qsigner_admin_latency_seconds", "admin API call latency by route", ["route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )  # fmt: skip

    def observe(self, path: str, method: str, outcome: str, seconds: float) -> None:
        label = f"{method} {path}"
        self.calls.labels(label, outcome).inc()
        self.latency.labels(label).observe(seconds)
