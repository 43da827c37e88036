"""The tamper-evident audit log: hash chains per organisation in PostgreSQL (`log`), the row
format (`records`), signed checkpoints (`checkpoints`), verification and export (`verify`,
`export`), and the `quorum-signer audit` commands (`commands`)."""

from __future__ import annotations

from proxy.audit.log import AuditLog
from proxy.audit.records import AuditEvent

__all__ = ["AuditEvent", "AuditLog"]
