"""The client snippets that `dev` prints and README's "Try it" section shows: each one moves 1 of
the demo's asset token from the demo account, signed inside the HSM through the proxy.

README holds them verbatim, with the placeholders below where `dev` prints the real values
(tests/unit/test_dev_snippets.py keeps the two identical, and an acceptance test runs README's).
"""

from __future__ import annotations

from typing import NamedTuple

# What a user replaces in README's snippets (the banner has them filled in).
URL = "http://127.0.0.1:8545"  # QSIGNER_LISTEN's default
API_KEY = "qsk_YOUR_API_KEY"
ACCOUNT = "0xYOUR_DEMO_ACCOUNT"
TOKEN = "0xYOUR_ASSET_TOKEN"  # noqa: S105 (a placeholder for a contract address)
# The recipient of every snippet's transfer: anvil's second well-known development account.
RECIPIENT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
AMOUNT = 10**18  # 1 token of 18 decimals


class Snippet(NamedTuple):
    name: str  # the README marker: <!-- snippet: NAME -->
    title: str  # what the banner says before it
    language: str  # the fenced block's info string
    code: str


SNIPPETS = (
    Snippet("web3.py", "web3.py (python transfer.py)", "python", f'''\
from web3 import Web3

w3 = Web3(Web3.HTTPProvider("{URL}/rpc/{API_KEY}"))
transfer = {{
    "type": "function",
    "name": "transfer",
    "stateMutability": "nonpayable",
    "inputs": [{{"name": "to", "type": "address"}}, {{"name": "amount", "type": "uint256"}}],
    "outputs": [{{"name": "", "type": "bool"}}],
}}
token = w3.eth.contract(address="{TOKEN}", abi=[transfer])
tx_hash = token.functions.transfer("{RECIPIENT}", 10**18).transact(
    {{"from": "{ACCOUNT}"}}
)
print(w3.eth.wait_for_transaction_receipt(tx_hash).status)  # 1: mined
'''),
    Snippet("ethers", "ethers v6 (node transfer.mjs)", "js", f'''\
import {{ Contract, JsonRpcProvider, parseUnits }} from "ethers";

const provider = new JsonRpcProvider("{URL}/rpc/{API_KEY}");
const signer = await provider.getSigner("{ACCOUNT}");
const token = new Contract("{TOKEN}",
  ["function transfer(address to, uint256 amount) returns (bool)"], signer);
const tx = await token.transfer("{RECIPIENT}", parseUnits("1", 18));
console.log((await tx.wait()).status); // 1: mined
provider.destroy();
'''),
    Snippet("viem", "viem, a JSON-RPC account (node transfer.mjs)", "js", f'''\
import {{ createPublicClient, createWalletClient, http, parseAbi, parseUnits }} from "viem";

const transport = http("{URL}/rpc/{API_KEY}");
const wallet = createWalletClient({{ account: "{ACCOUNT}", transport }});
const hash = await wallet.writeContract({{
  address: "{TOKEN}",
  abi: parseAbi(["function transfer(address to, uint256 amount) returns (bool)"]),
  functionName: "transfer",
  args: ["{RECIPIENT}", parseUnits("1", 18)],
  chain: null,
}});
const receipt = await createPublicClient({{ transport }}).waitForTransactionReceipt({{ hash }});
console.log(receipt.status); // success
'''),
    Snippet("hardhat.config.js", "hardhat 2: hardhat.config.js", "js", f'''\
module.exports = {{
  networks: {{
    qsigner: {{
      url: "{URL}",
      accounts: "remote",
      httpHeaders: {{ Authorization: "Bearer {API_KEY}" }},
    }},
  }},
}};
'''),
    Snippet("hardhat-script", "hardhat 2: scripts/transfer.js", "js", f'''\
const {{ network }} = require("hardhat");
const {{ BrowserProvider, Contract, parseUnits }} = require("ethers");

async function main() {{
  const signer = await new BrowserProvider(network.provider).getSigner("{ACCOUNT}");
  const token = new Contract("{TOKEN}",
    ["function transfer(address to, uint256 amount) returns (bool)"], signer);
  const tx = await token.transfer("{RECIPIENT}", parseUnits("1", 18));
  console.log((await tx.wait()).status); // 1: mined
}}

main().catch((error) => {{
  console.error(error);
  process.exitCode = 1;
}});
'''),
    Snippet("hardhat-run", "hardhat 2: run it", "sh", '''\
npx hardhat run --network qsigner scripts/transfer.js
'''),
    Snippet("cast", "foundry's cast", "sh", f'''\
cast send --unlocked --from {ACCOUNT} --rpc-url {URL}/rpc/{API_KEY} \\
  {TOKEN} "transfer(address,uint256)" {RECIPIENT} 1000000000000000000
'''),
)  # fmt: skip


def render(code: str, *, url: str, api_key: str, account: str, token: str) -> str:
    """A snippet with the placeholders replaced by this dev stack's values."""
    for placeholder, value in ((URL, url), (API_KEY, api_key), (ACCOUNT, account),
                               (TOKEN, token)):  # fmt: skip
        code = code.replace(placeholder, value)
    return code
