"""The policy's Prometheus metrics, in the app's registry: decisions by action and reason, held
requests waiting for approval, and how full each limit's counter is."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.decisions = Counter(
            "qsigner_policy_decisions",
            "signing decisions by action (allow, deny, hold, shadow-deny, shadow-hold) and "
            "reason (none, denied, limit_exceeded, approval_required, ... and the chain checks' "
            "insufficient_funds, insufficient_token_balance, execution_reverted)",
            ["action", "reason"], registry=registry,
        )  # fmt: skip
        self.approvals_pending = Gauge(
            "qsigner_policy_approvals_pending",
            "held requests waiting for their approvals and not expired (every organisation, as "
            "the database last said: read every few seconds)", registry=registry,
        )  # fmt: skip
        self.limit_utilisation = Gauge(
            "qsigner_policy_limit_utilisation",
            "a limit's counter over its max (0 to 1) after the latest decision that counted it, "
            "by limit (whichever user, account or organisation that decision was for: one series "
            "a limit, however many users)", ["limit"], registry=registry,
        )  # fmt: skip
