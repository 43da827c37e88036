"""A real anvil node for tests: the same runner `quorum-signer dev` uses."""

from proxy.dev.chain import free_port, rpc, run_anvil, stop
from proxy.errors import ChainError

__all__ = ["ChainError", "free_port", "rpc", "run_anvil", "stop"]
