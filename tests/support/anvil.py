"""A real anvil node for tests: the same runner `quorum-signer dev` uses."""

from proxy.dev.chain import ChainError, free_port, rpc, run_anvil, stop

__all__ = ["ChainError", "free_port", "rpc", "run_anvil", "stop"]
