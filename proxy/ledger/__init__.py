"""The nonce ledger: nonces (allocation and states), recovery, and tracking (receipts)."""
