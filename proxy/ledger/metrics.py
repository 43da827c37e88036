"""The ledger's Prometheus metrics, in the app's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class LedgerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.db_round_trips = Counter(
            "qsigner_ledger_db_round_trips", "database round trips made by the nonce ledger",
            registry=registry,
        )  # fmt: skip
        self.nonces = Counter(
            "qsigner_ledger_nonces",
            "nonces allocated, released (given back), reused (a hole taken again) and filled "
            "(a hole closed with a 0-value self-transfer)",
            ["event"], registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "qsigner_ledger_in_flight",
            "transactions of this replica between their nonce's reservation and the node's "
            "answer, by account (at most QSIGNER_MAX_IN_FLIGHT)", ["account"], registry=registry,
        )  # fmt: skip
        self.unmined = Gauge(
            "qsigner_ledger_unmined",
            "transactions sent and not yet mined, by account, as the account's recovery last saw",
            ["account"], registry=registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "qsigner_ledger_queue_depth",
            "requests of this replica waiting for a nonce or being given one, by account",
            ["account"], registry=registry,
        )  # fmt: skip
        self.request_to_sent = Histogram(
            "qsigner_ledger_request_to_sent_seconds",
            "from a nonce's reservation to the node taking the transaction", registry=registry,
            buckets=_SECONDS,
        )  # fmt: skip
        self.request_to_mined = Histogram(
            "qsigner_ledger_request_to_mined_seconds",
            "from a transaction's ledger row to its receipt", registry=registry, buckets=_SECONDS,
        )  # fmt: skip
        self.resent = Counter(
            "qsigner_ledger_resent", "stored transactions sent again by recovery",
            registry=registry,
        )  # fmt: skip
