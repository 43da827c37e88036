"""Policy files for tests and the benchmark: section 6's sample with real addresses, and a
realistic 20-rule, 4-limit policy (`TWENTY_RULES`) whose rules an ordinary request walks through."""

from __future__ import annotations

from eth_utils.address import to_checksum_address


def address(tag: int) -> str:
    """A checksummed address that reads as its tag: address(0xAC) = 0xACAC…AC."""
    return str(to_checksum_address(bytes([tag]) * 20))


ACME = address(0xAC)
VAULT = address(0x7A)
USDX = address(0x05)
REGISTRY = address(0x4E)
TREASURY = address(0x7E)
BLOCKED = (address(0xBA), address(0xBD))
PARTNER_TESSERA_KEYS = (
    "BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3Bo=",
    "QfeDAys9MPDs2XHExtc84jKGHxZg/aj52DTh0vtA3Xc=",
)


def sample(acme: str = ACME, vault: str = VAULT, extra: str = address(0x33)) -> str:
    """The policy of contract section 6, as a user writes it."""
    return f"""\
version: 1
mode: enforce          # or shadow: decide and audit, but refuse nothing
default: allow         # or deny: what a request that no rule matches gets
contracts:             # names for addresses; `functions` lets rules match decoded calldata
  ACME: {{address: "{acme}", standard: erc20}}    # erc20: transfer/transferFrom/approve known
  vault: {{address: "{vault}", functions: ["deposit(uint256)", "withdraw(uint256,address)"]}}
rules:                 # every rule whose `match` holds applies: deny beats hold beats allow
  - name: no-deployments
    action: deny
    match: {{deploy: true}}
  - name: no-raw-eth-sign
    action: deny
    match: {{method: [eth_sign]}}
  - name: only-known-contracts
    action: deny
    match: {{to_not_in: [ACME, vault, "{extra}"]}}
  - name: big-acme-transfers-need-approval
    action: hold
    match: {{contract: ACME, function: transfer, args: {{amount: {{gt: "10000 ACME"}}}}}}
  - name: large-value
    action: hold
    match: {{value: {{gt: "5 ether"}}, roles: [signer]}}
limits:                # counted across replicas; reserved before signing, released if not sent
  - {{name: tx-rate, per: user, window: 1m, max_transactions: 60}}
  - {{name: gas-per-day, per: user, window: 24h, max_gas: 50000000}}
  - {{name: value-per-day, per: account, window: 24h, max_value: "100 ether"}}
  - {{name: acme-per-day, per: user, window: 24h, token: ACME, max_amount: "50000 ACME"}}
approvals: {{approvers: 1, expire: 1h}}   # approvals needed besides the requester's own
"""


SAMPLE = sample()


def twenty_rules(
    acme: str = ACME, vault: str = VAULT, usdx: str = USDX, registry: str = REGISTRY
) -> str:
    """20 rules and 4 limits as an organisation would run them.

    A signer's plain transfer of up to 5 ether to any address, and an ACME transfer of up to
    10000 ACME to an unblocked address, are allowed (by default) after every rule has been
    tried; the limits are generous enough for a benchmark's load (10000 transactions per user
    per minute). `acme` should be an ERC-20 with `decimals()` (the token limit and rules 10, 11
    and 14 are written in ACME units)."""
    partners = ", ".join(f'"{key}"' for key in PARTNER_TESSERA_KEYS)
    return f"""\
version: 1
mode: enforce
default: allow
contracts:
  ACME: {{address: "{acme}", standard: erc20}}
  USDX: {{address: "{usdx}", standard: erc20}}
  vault:
    address: "{vault}"
    functions: ["deposit(uint256 amount)", "withdraw(uint256 amount,address to)"]
    errors: ["Refused(address who,uint256 amount)"]
  registry:
    address: "{registry}"
    functions: ["setOwner(address owner)", "register(bytes32 name,address target)"]
rules:
  - name: no-deployments-but-admins
    action: deny
    match: {{deploy: true, roles: [signer, viewer]}}
  - name: no-raw-eth-sign
    action: deny
    match: {{method: eth_sign}}
  - name: viewers-sign-nothing
    action: deny
    match: {{roles: [viewer]}}
  - name: private-only-to-partners
    action: deny
    match: {{private: true, private_for_not_in: [{partners}]}}
  - name: blocked-recipients
    action: deny
    match: {{to: ["{BLOCKED[0]}", "{BLOCKED[1]}"]}}
  - name: no-acme-to-blocked
    action: deny
    match:
      contract: ACME
      function: transfer
      args: {{to: {{in: ["{BLOCKED[0]}", "{BLOCKED[1]}"]}}}}
  - name: no-unlimited-approvals
    action: deny
    match: {{function: "approve(address,uint256)", args: {{1: {{ge: "1e76"}}}}}}
  - name: vault-withdraws-to-treasury-only
    action: deny
    match: {{contract: vault, function: withdraw, args: {{to: {{ne: "{TREASURY}"}}}}}}
  - name: usdx-approvals-for-vault-only
    action: deny
    match: {{contract: USDX, function: approve, args: {{spender: {{not_in: [vault]}}}}}}
  - name: big-acme-transfers
    action: hold
    match: {{contract: ACME, function: transfer, args: {{amount: {{gt: "10000 ACME"}}}}}}
  - name: big-acme-pulls
    action: hold
    match: {{contract: ACME, function: transferFrom, args: {{amount: {{gt: "10000 ACME"}}}}}}
  - name: large-value
    action: hold
    match: {{value: {{gt: "5 ether"}}, roles: [signer]}}
  - name: big-usdx-transfers
    action: hold
    match: {{contract: USDX, function: transfer, args: {{amount: {{gt: 250000000000}}}}}}
  - name: big-vault-deposits
    action: hold
    match: {{contract: vault, function: deposit, args: {{amount: {{gt: "1000 ACME"}}}}}}
  - name: registry-owner-changes
    action: hold
    match: {{contract: registry, function: setOwner}}
  - name: treasury-account-moves
    action: hold
    match: {{accounts: [treasury], value: {{gt: "1 ether"}}}}
  - name: permits-need-approval
    action: hold
    match: {{method: eth_signTypedData_v4, typed_data: {{primary_type: Permit}}}}
  - name: login-messages
    action: allow
    match: {{method: personal_sign}}
  - name: ops-to-own-contracts
    action: allow
    match: {{users: [ops-bot, deployer], to: [vault, registry]}}
  - name: exchange-orders
    action: allow
    match:
      method: [eth_signTypedData_v4]
      typed_data: {{domain: {{name: Acme Exchange, chainId: 1337, verifyingContract: vault}}}}
limits:
  - {{name: tx-rate, per: user, window: 1m, max_transactions: 10000}}
  - {{name: gas-per-day, per: account, window: 24h, max_gas: 100000000000}}
  - {{name: value-per-day, per: organisation, window: 24h, max_value: "1000000 ether"}}
  - {{name: acme-per-day, per: user, window: 24h, token: ACME, max_amount: "100000000 ACME"}}
approvals: {{approvers: 1, expire: 1h}}
"""


TWENTY_RULES = twenty_rules()
