"""Random JSON and JSON-RPC shapes thrown at the running proxy: every answer is a JSON-RPC
answer (or 204 for notifications), never a 5xx, and the server keeps serving."""

from __future__ import annotations

import json
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.acceptance.conftest import Running

METHODS = ["eth_chainId", "eth_blockNumber", "eth_getBalance", "eth_call", "eth_sendTransaction",
           "eth_signTransaction", "eth_sign", "personal_sign", "eth_signTypedData_v4",
           "eth_sendRawTransaction", "eth_accounts", "wallet_switchEthereumChain", "net_version",
           "admin_peers", "debug_x", "personal_unlockAccount"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30) | st.sampled_from(["0x", "0x0", "0xzz", "0x" + "ab" * 20, "latest"]),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["from", "to", "value", "data", "gas", "nonce", "chainId",
                                       "types", "domain", "message", "x"]) | st.text(max_size=8),
                      children, max_size=5),
    max_leaves=25,
)  # fmt: skip
requests_shape = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "method": st.sampled_from(METHODS) | st.text()},
    optional={"id": json_values, "params": json_values},
)  # fmt: skip
bodies = (
    requests_shape.map(json.dumps)
    | st.lists(requests_shape, max_size=5).map(json.dumps)
    | json_values.map(json.dumps)
    | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
)


def test_fuzzed_bodies_get_json_rpc_answers(product: Running) -> None:
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {product.stack.jwt}",
                            "X-Signer-Password": product.stack.password,
                            "Content-Type": "application/json"})  # fmt: skip

    slow_is_fine = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

    @settings(max_examples=150, deadline=None, suppress_health_check=slow_is_fine)
    @given(bodies)
    def check(body: str) -> None:
        response = session.post(product.url, data=body.encode("utf-8", "surrogatepass"),
                                timeout=30)  # fmt: skip
        assert response.status_code < 500, (body, response.status_code, response.text)
        if response.status_code == 204:
            return
        answer: Any = response.json()
        for item in answer if isinstance(answer, list) else [answer]:
            assert item["jsonrpc"] == "2.0" and ("result" in item or "error" in item), item

    try:
        check()
    finally:
        alive = session.post(product.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})
        assert alive.json()["result"] == "0x539"
        session.close()
