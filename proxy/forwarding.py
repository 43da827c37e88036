"""Which methods go to the nodes (CONTRACT 4.3: an explicit allowlist, listed in docs/rpc.md),
and passing them on to the node pool, with the answers that never change for a pool (its chain
id and network id) remembered here, where they are used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy import rpc
from proxy.nodes.pool import NodePool

# The execution API's `eth_` reads and submission (ethereum/execution-apis), and geth's reads
# that GoQuorum inherits. The signing methods of the API are answered by the proxy (router.LOCAL).
STANDARD_ETH = frozenset({
    "eth_blobBaseFee", "eth_blockNumber", "eth_call", "eth_chainId", "eth_coinbase",
    "eth_createAccessList", "eth_estimateGas", "eth_feeHistory", "eth_gasPrice", "eth_getBalance",
    "eth_getBlockByHash", "eth_getBlockByNumber", "eth_getBlockReceipts",
    "eth_getBlockTransactionCountByHash", "eth_getBlockTransactionCountByNumber", "eth_getCode",
    "eth_getFilterChanges", "eth_getFilterLogs", "eth_getLogs", "eth_getProof",
    "eth_getStorageAt", "eth_getTransactionByBlockHashAndIndex",
    "eth_getTransactionByBlockNumberAndIndex", "eth_getTransactionByHash",
    "eth_getTransactionCount", "eth_getTransactionReceipt", "eth_getUncleByBlockHashAndIndex",
    "eth_getUncleByBlockNumberAndIndex", "eth_getUncleCountByBlockHash",
    "eth_getUncleCountByBlockNumber", "eth_hashrate", "eth_maxPriorityFeePerGas", "eth_mining",
    "eth_newBlockFilter", "eth_newFilter", "eth_newPendingTransactionFilter",
    "eth_protocolVersion", "eth_sendRawTransaction", "eth_simulateV1", "eth_syncing",
    "eth_uninstallFilter",
    # geth's own reads
    "eth_getHeaderByHash", "eth_getHeaderByNumber", "eth_getRawTransactionByHash",
})  # fmt: skip
# GoQuorum's documented `eth_` extensions that neither sign with the node's keys nor act with
# its private-transaction identity: privacy reads, and submissions of transactions the caller
# signed.
QUORUM_ETH = frozenset({
    "eth_sendRawPrivateTransaction", "eth_distributePrivateTransaction", "eth_storageRoot",
    "eth_getQuorumPayload", "eth_getQuorumPayloadExtra", "eth_getContractPrivacyMetadata",
    "eth_getPrivacyPrecompileAddress", "eth_getPrivateTransactionByHash",
    "eth_getPrivateTransactionReceipt", "eth_getPSI",
})  # fmt: skip
FORWARDED_NAMESPACES = ("net", "web3")
# Methods that make a node sign with its own keys: never forwarded, whatever QSIGNER_PASSTHROUGH
# says (those the proxy answers itself never reach this point).
NODE_SIGNING = frozenset({
    "eth_sign", "eth_signTransaction", "eth_sendTransaction", "eth_sendUnsignedTransaction",
    "eth_sendPrivateTransaction", "eth_sendTransactionAsync", "eth_signTypedData",
    "eth_signTypedData_v1", "eth_signTypedData_v3", "eth_signTypedData_v4",
})  # fmt: skip
# geth's personal_* and clef's account_*; GoQuorum's quorumPermission_* (addOrg, approveOrg, ...)
# and quorumExtension_* (extendContract, approveExtension, ...), which take `from` and send a
# transaction signed with the node's own account.
NODE_SIGNING_NAMESPACES = ("personal", "account", "quorumPermission", "quorumExtension")
# The reads of those GoQuorum namespaces sign nothing: QSIGNER_PASSTHROUGH may add them, by name
# or with their namespace (`quorumPermission_*` then forwards these and nothing else of it).
QUORUM_NAMESPACE_READS = frozenset({
    "quorumPermission_orgList", "quorumPermission_acctList", "quorumPermission_nodeList",
    "quorumPermission_roleList", "quorumPermission_getOrgDetails",
    "quorumPermission_connectionAllowed", "quorumPermission_transactionAllowed",
    "quorumExtension_activeExtensionContracts",
})  # fmt: skip


def is_forwarded(method: str, passthrough: tuple[str, ...]) -> bool:
    """The allowlist, plus QSIGNER_PASSTHROUGH's methods and `ns_*` namespaces."""
    namespace = method.partition("_")[0]
    if method in NODE_SIGNING:
        return False
    if namespace in NODE_SIGNING_NAMESPACES and method not in QUORUM_NAMESPACE_READS:
        return False
    if method in STANDARD_ETH or method in QUORUM_ETH or namespace in FORWARDED_NAMESPACES:
        return True
    return any(allowed == method or (allowed.endswith("_*") and allowed[:-2] == namespace)
               for allowed in passthrough)  # fmt: skip


# Answers fixed for the life of a pool: the pool refuses nodes whose chain id differs.
CONSTANT_ANSWERS = frozenset({"eth_chainId", "net_version"})


class Forwarding:
    """One per app: forwards to `pool`, answering the constant methods from memory."""

    def __init__(self, pool: NodePool) -> None:
        self.pool = pool
        self._constant: dict[str, Any] = {}

    async def call(self, method: str, params: Any = None,
                   headers: Mapping[str, str] | None = None) -> Any:  # fmt: skip
        if method in CONSTANT_ANSWERS:
            if method not in self._constant:
                self._constant[method] = await self.pool.call(method)
            return self._constant[method]
        return await self.pool.call(method, params, headers=headers)

    async def forward(self, method: str, params: Any, headers: Mapping[str, str] | None,
                      caller_id: bytes) -> bytes:  # fmt: skip
        """The whole answer to a caller's read, as bytes with `caller_id` (JSON) for its id."""
        if method in CONSTANT_ANSWERS:
            return rpc.result_bytes(caller_id, rpc.dumps(await self.call(method)))
        return await self.pool.forward(method, params, headers, caller_id)
