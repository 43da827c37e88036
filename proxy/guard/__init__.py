"""Checks before signing: the chain (balances, a pre-flight call) and the policy."""
