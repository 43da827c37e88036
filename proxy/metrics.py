"""Prometheus metrics of one app (its own registry, so tests may build several apps)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.requests = Counter(
            "qsigner_rpc_requests", "JSON-RPC calls by method and outcome",
            ["method", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "qsigner_rpc_latency_seconds", "JSON-RPC call latency by method", ["method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )  # fmt: skip
        self.in_flight = Gauge("qsigner_rpc_in_flight", "JSON-RPC calls being served",
                               registry=self.registry)  # fmt: skip
        self.node_up = Gauge("qsigner_node_up", "1 when the node is in rotation", ["node"],
                             registry=self.registry)  # fmt: skip
        self.node_block = Gauge("qsigner_node_block", "latest block seen on the node", ["node"],
                                registry=self.registry)  # fmt: skip
        self.hsm_sign = Histogram(
            "qsigner_hsm_sign_seconds", "signing latency (HSM, low-s, recovery id)",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        )  # fmt: skip

        self.ws_connections = Gauge("qsigner_ws_connections", "open WebSocket connections",
                                    registry=self.registry)  # fmt: skip
        self.ws_subscriptions = Gauge(
            "qsigner_ws_subscriptions", "clients' eth_subscribe subscriptions by kind", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.ws_upstream_subscriptions = Gauge(
            "qsigner_ws_upstream_subscriptions",
            "subscriptions held on the nodes by kind (clients with the same one share it)",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.ws_closed = Counter(
            "qsigner_ws_closed", "WebSocket connections the proxy closed, by reason", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.ws_resubscriptions = Counter(
            "qsigner_ws_resubscriptions",
            "subscriptions moved to another node (or re-established) after theirs failed",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        for kind in ("newHeads", "logs", "newPendingTransactions"):
            self.ws_subscriptions.labels(kind)
            self.ws_upstream_subscriptions.labels(kind)

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        """One JSON-RPC call: counted, and its latency recorded. The labelled children are
        looked up once per (method, outcome), not on every call."""
        children = self._children.get((method, outcome))
        if children is None:
            children = (self.requests.labels(method, outcome), self.latency.labels(method))
            self._children[(method, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)
