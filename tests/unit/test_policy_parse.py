"""policy.parse: section 6's sample parses as written; every error names its line and field;
unknown keys and matches that can never hold are refused; amounts and durations are exact."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.abi import ERC20_FUNCTIONS, parse_signature
from policy.amounts import (
    AmountError,
    TokenAmount,
    format_duration,
    format_wei,
    parse_amount,
    parse_duration,
    token_amount,
)
from policy.model import Approvals, Condition, Limit
from policy.parse import PolicyError, parse_policy
from tests.support.policies import ACME, TWENTY_RULES, VAULT, address, sample

ACME_BYTES = bytes.fromhex(ACME[2:])
VAULT_BYTES = bytes.fromhex(VAULT[2:])
ETHER = 10**18


def test_section_six_sample_parses() -> None:
    policy = parse_policy(sample())
    assert (policy.version, policy.mode, policy.default) == (1, "enforce", "allow")
    acme, vault = policy.contracts["ACME"], policy.contracts["vault"]
    assert (acme.address, acme.standard, acme.functions) == (ACME_BYTES, "erc20", ERC20_FUNCTIONS)
    assert [f.text for f in vault.functions] == ["deposit(uint256)", "withdraw(uint256,address)"]
    assert [f.names for f in vault.functions] == [("arg0",), ("arg0", "arg1")]
    assert policy.contract_at(VAULT_BYTES) is vault and policy.contract_at(b"\0" * 20) is None
    assert [(r.name, r.action) for r in policy.rules] == [
        ("no-deployments", "deny"),
        ("no-raw-eth-sign", "deny"),
        ("only-known-contracts", "deny"),
        ("big-acme-transfers-need-approval", "hold"),
        ("large-value", "hold"),
    ]
    assert policy.rules[0].match.deploy is True
    assert policy.rules[1].match.methods == {"eth_sign"}
    extra = bytes.fromhex(address(0x33)[2:])
    assert policy.rules[2].match.to_not_in == {ACME_BYTES, VAULT_BYTES, extra}
    big = policy.rules[3].match
    assert (big.contract, big.contract_address) == ("ACME", ACME_BYTES)
    assert big.function is not None and big.function.candidates(ACME_BYTES)[0].name == "transfer"
    assert big.args[0].key == "amount"
    assert big.args[0].condition == Condition("gt", TokenAmount("ACME", Fraction(10000)))
    assert policy.rules[4].match.value == (Condition("gt", 5 * ETHER),)
    assert policy.rules[4].match.roles == {"signer"}
    assert policy.limits == (
        Limit("tx-rate", "user", 60, "transactions", 60),
        Limit("gas-per-day", "user", 86400, "gas", 50_000_000),
        Limit("value-per-day", "account", 86400, "value", 100 * ETHER),
        Limit("acme-per-day", "user", 86400, "token", TokenAmount("ACME", Fraction(50000)), "ACME"),
    )
    assert policy.approvals == Approvals(1, 3600)
    assert policy.decimals_needed() == ("ACME",)


def test_twenty_rules_parse() -> None:
    policy = parse_policy(TWENTY_RULES)
    assert (len(policy.rules), len(policy.limits)) == (20, 4)
    assert policy.contracts["vault"].errors == (
        parse_signature("Refused(address who,uint256 amount)"),
    )


def test_defaults_of_a_minimal_file() -> None:
    policy = parse_policy("version: 1\n")
    assert (policy.mode, policy.default, policy.rules, policy.limits) == (
        "enforce",
        "allow",
        (),
        (),
    )
    assert policy.approvals == Approvals(1, 3600) and policy.decimals_needed() == ()


HEAD = f'version: 1\ncontracts:\n  ACME: {{address: "{ACME}", standard: erc20}}\n'  # lines 1-3


def rules(*match_lines: str) -> str:
    """HEAD, then one deny rule whose match (from line 7) is `match_lines`."""
    return (
        HEAD
        + "rules:\n  - name: r\n    action: deny\n    match:\n"
        + "".join(f"      {line}\n" for line in match_lines)
    )


def limit(text: str) -> str:
    return HEAD + f"limits:\n  - {text}\n"  # the limit is on line 5


ERRORS: list[tuple[str, str, int | None, str, str]] = [
    # (case, text, line, field, part of the message)
    ("empty file", "", 1, "", "empty"),
    ("not YAML", "version: 1\nrules: [\n", 3, "", "not valid YAML"),
    ("not a mapping", "- 1\n", 1, "", "mapping"),
    ("unknown top-level key", "version: 1\ndefualt: deny\n", 2, "defualt",
     'did you mean "default"'),
    ("version missing", "mode: shadow\n", 1, "version", "required"),
    ("version 2", "version: 2\n", 1, "version", "format version is 1"),
    ("mode", "version: 1\nmode: strict\n", 2, "mode", "enforce, shadow"),
    ("default", "version: 1\ndefault: refuse\n", 2, "default", "allow, deny"),
    ("key given twice", "version: 1\ndefault: deny\ndefault: allow\n", 3, "default", "twice"),
    ("aliases", "version: 1\nx: &a 1\ny: *a\n", 3, "", "aliases"),
    ("contract key", HEAD + "  vault: {adress: \"0x" + "00" * 20 + '"}\n', 4,
     "contracts.vault.adress", 'unknown key "adress"'),
    ("contract address missing", HEAD + "  vault: {standard: erc20}\n", 4,
     "contracts.vault.address", "required"),
    ("short address", HEAD + '  vault: {address: "0x1234"}\n', 4, "contracts.vault.address",
     "not an address"),
    ("bad checksum", HEAD + f'  vault: {{address: "{ACME[:-1]}{ACME[-1].swapcase()}"}}\n', 4,
     "contracts.vault.address", "checksum"),
    ("same address twice", HEAD + f'  vault: {{address: "{ACME.lower()}"}}\n', 4,
     "contracts.vault.address", "same address as ACME"),
    ("contract named as a unit", HEAD + f'  ether: {{address: "{VAULT}"}}\n', 4,
     "contracts.ether", "unit of ether"),
    ("standard", HEAD + f'  vault: {{address: "{VAULT}", standard: erc721}}\n', 4,
     "contracts.vault.standard", "erc20"),
    ("bad signature", HEAD + f'  vault:\n    address: "{VAULT}"\n    functions:\n'
     '      - "deposit(uint256"\n', 7, "contracts.vault.functions[0]", "signature"),
    ("signature known twice", HEAD + f'  vault: {{address: "{VAULT}", standard: erc20, '
     'functions: ["transfer(address,uint256)"]}\n', 4, "contracts.vault.functions[0]",
     "already known"),
    ("rules not a list", HEAD + "rules: {name: r}\n", 4, "rules", "list"),
    ("rule key", HEAD + "rules:\n  - name: r\n    action: deny\n    when: {}\n", 7, "rules[0].when",
     "unknown key"),
    ("rule without match", HEAD + "rules:\n  - name: r\n    action: deny\n", 5, "rules[0].match",
     "required"),
    ("action", HEAD + "rules:\n  - name: r\n    action: block\n    match: {}\n", 6,
     "rules[0].action", "allow, deny, hold"),
    ("rule names", HEAD + "rules:\n  - {name: r, action: deny, match: {}}\n"
     "  - {name: r, action: allow, match: {}}\n", 6, "rules[1].name", "another rule"),
    ("match key typo", rules("valeu: 1"), 8, "rules[0].match.valeu", 'did you mean "value"'),
    ("empty match", HEAD + "rules:\n  - name: r\n    action: deny\n    match:\n", 7,
     "rules[0].match", "write {}"),
    ("role", rules("roles: [signer, auditor]"), 8, "rules[0].match.roles",
     '"auditor" is not a role'),
    ("method", rules("method: eth_sendRawTransaction"), 8, "rules[0].match.method",
     "not a signing method"),
    ("empty list", rules("users: []"), 8, "rules[0].match.users", "empty"),
    ("unknown name in to", rules("to: [ACME, vault]"), 8, "rules[0].match.to",
     '"vault" is not an address nor a contract'),
    ("contract", rules("contract: vault"), 8, "rules[0].match.contract", "not in contracts"),
    ("function name", rules("contract: ACME", "function: transfr"), 9, "rules[0].match.function",
     'no function "transfr"'),
    ("function by name needs a contract", rules("function: transfer"), 8,
     "rules[0].match.function", "needs contract"),
    ("args without function", rules("contract: ACME", "args: {amount: 1}"), 9,
     "rules[0].match.args", "needs function"),
    ("args parameter", rules("contract: ACME", "function: transfer", "args: {amonut: 1}"), 10,
     "rules[0].match.args.amonut", 'no parameter "amonut"'),
    ("args index", rules("contract: ACME", "function: transfer", "args: {2: 1}"), 10,
     "rules[0].match.args.2", "2 parameters"),
    ("args operator", rules("contract: ACME", "function: transfer", "args:",
                            "  amount: {greater: 1}"), 11, "rules[0].match.args.amount.greater",
     "unknown key"),
    ("args ordering on an address", rules("contract: ACME", "function: transfer",
                                          "args: {to: {gt: ACME}}"), 10,
     "rules[0].match.args.to.gt", "compares numbers"),
    ("args address", rules("contract: ACME", "function: transfer", "args: {to: vault}"), 10,
     "rules[0].match.args.to", "not an address nor a contract"),
    ("args in takes a list", rules("contract: ACME", "function: transfer",
                                   "args: {amount: {in: 5}}"), 10,
     "rules[0].match.args.amount.in", "list"),
    ("args amount unit", rules("contract: ACME", "function: transfer",
                               'args: {amount: {gt: "5 USDX"}}'), 10,
     "rules[0].match.args.amount.gt", 'unknown unit "USDX"'),
    ("value in a token", rules('value: {gt: "250 ACME"}'), 8, "rules[0].match.value.gt",
     'unknown unit "ACME"'),
    ("value as a float", rules("value: {gt: 1.5}"), 8, "rules[0].match.value.gt", "not exact"),
    ("value below a wei", rules('value: {gt: "1.5 wei"}'), 8, "rules[0].match.value.gt",
     "not a whole number of wei"),
    ("negative value", rules("value: {gt: -1}"), 8, "rules[0].match.value.gt", "negative"),
    ("deploy", rules("deploy: maybe"), 8, "rules[0].match.deploy", "true or false"),
    ("typed_data key", rules("typed_data: {domain: {chain: 1}}"), 8,
     "rules[0].match.typed_data.domain.chain", 'did you mean "chainId"'),
    ("transaction key on messages only", rules("method: [personal_sign]", "to: ACME"), 9,
     "rules[0].match.to", "applies to transactions"),
    ("typed_data with a transaction key", rules("typed_data: {primary_type: Permit}",
                                                "value: {gt: 0}"), 8,
     "rules[0].match.typed_data", "no request has both"),
    ("deployment to an address", rules("deploy: true", "to: ACME"), 9, "rules[0].match.to",
     "never matches"),
    ("limit key", limit("{name: l, per: user, window: 1m, max_tx: 5}"), 5, "limits[0].max_tx",
     "unknown key"),
    ("limit without max", limit("{name: l, per: user, window: 1m}"), 5,
     "limits[0].max_transactions", "one of"),
    ("limit with two maxes", limit("{name: l, per: user, window: 1m, max_gas: 1, max_value: 1}"),
     5, "limits[0].max_value", "only one of"),
    ("per", limit("{name: l, per: team, window: 1m, max_gas: 1}"), 5, "limits[0].per",
     "user, account, organisation"),
    ("window", limit("{name: l, per: user, window: 1w, max_gas: 1}"), 5, "limits[0].window",
     "duration"),
    ("window as a number", limit("{name: l, per: user, window: 60, max_gas: 1}"), 5,
     "limits[0].window", "duration"),
    ("window of zero", limit("{name: l, per: user, window: 0s, max_gas: 1}"), 5,
     "limits[0].window", "at least 1s"),
    ("gas with a unit", limit('{name: l, per: user, window: 1m, max_gas: "5 gwei"}'), 5,
     "limits[0].max_gas", "plain count"),
    ("max_amount without token", limit('{name: l, per: user, window: 1m, max_amount: 5}'), 5,
     "limits[0].token", "needs token"),
    ("token not a contract", limit("{name: l, per: user, window: 1m, token: USDX, max_amount: 5}"),
     5, "limits[0].token", "not in contracts"),
    ("token on a value limit", limit("{name: l, per: user, window: 1m, token: ACME, max_value: 5}"),
     5, "limits[0].token", "max_amount only"),
    ("limit named as a rule", HEAD + "rules:\n  - {name: x, action: deny, match: {}}\n"
     "limits:\n  - {name: x, per: user, window: 1m, max_gas: 1}\n", 7, "limits[0].name",
     "already the name of a rule"),
    ("approvers", HEAD + "approvals: {approvers: 0}\n", 4, "approvals.approvers", "at least 1"),
    ("expire", HEAD + "approvals: {approvers: 1, expire: soon}\n", 4, "approvals.expire",
     "duration"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "line", "field", "message"), ERRORS,
                         ids=[case[0] for case in ERRORS])  # fmt: skip
def test_each_error_names_its_line_and_field(
    case: str, text: str, line: int | None, field: str, message: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    error = caught.value
    assert (error.line, error.field) == (line, field), str(error)
    assert message in error.message
    where = ", ".join(p for p in (f"line {line}" if line else "", field) if p)
    assert str(error) == f"{where}: {error.message}"
    assert "\n" not in str(error)


def test_unknown_keys_are_refused_everywhere() -> None:
    """A misspelt key anywhere would silently widen what a rule allows: all are refused."""
    good = sample()
    for anchor, typo in [
        ("default: allow", "default: allow\ndefualt: deny"),
        ("standard: erc20}", "standard: erc20, fucntions: []}"),
        ("action: deny\n    match: {deploy: true}", "action: deny\n    match: {deplo: true}"),
        ('{gt: "10000 ACME"}', '{gt: "10000 ACME", gtt: 1}'),
        ("max_transactions: 60}", "max_transactions: 60, windw: 1h}"),
        ("expire: 1h}", "expire: 1h, approver: 2}"),
    ]:
        assert anchor in good
        with pytest.raises(PolicyError, match="unknown key"):
            parse_policy(good.replace(anchor, typo, 1))


def test_addresses_in_any_case_yaml_hex_included() -> None:
    lower, upper = ACME.lower(), "0x" + ACME[2:].upper()
    for written in (lower, upper, ACME):
        policy = parse_policy(f'version: 1\ncontracts:\n  ACME: {{address: "{written}"}}\n')
        assert policy.contracts["ACME"].address == ACME_BYTES
    # Unquoted, YAML 1.1 reads 0x… as a hex integer: the address is taken as written.
    unquoted = parse_policy(f"version: 1\ncontracts:\n  ACME: {{address: {lower}}}\n")
    assert unquoted.contracts["ACME"].address == ACME_BYTES


# --- amounts and durations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "amount"),
    [
        (5, 5),
        ("5 wei", 5),
        ("1.5 ether", 15 * 10**17),
        ("20 gwei", 20 * 10**9),
        ("1000e18", 1000 * ETHER),
        ("1e18 wei", ETHER),
        ("0.000000001 ether", 10**9),
        ("2.5e3 gwei", 2500 * 10**9),
        ("1_000_000", 10**6),
        (".5 ether", 5 * 10**17),
        ("3ether", 3 * ETHER),
        ("250 ACME", TokenAmount("ACME", Fraction(250))),
        ("0.001 ACME", TokenAmount("ACME", Fraction(1, 1000))),
        ("1e-2 ACME", TokenAmount("ACME", Fraction(1, 100))),
    ],
)
def test_amounts_are_exact(written: object, amount: object) -> None:
    assert parse_amount(written, ("ACME",)) == amount


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (1.5, "not exact"),
        (True, "expected an amount"),
        (None, "expected an amount"),
        ("five ether", "not an amount"),
        ("1.5", "not a whole number of wei"),
        ("1e-10 gwei", "not a whole number"),
        ("1 eth", 'unknown unit "eth"'),
        ("-1 ether", "negative"),
        ("1e999999", "exponent"),
        ("2e77", "uint256"),
        ("1 ether 2", "not an amount"),
    ],
)
def test_amount_errors(written: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_amount(written, ("ACME",))


def test_token_amounts_scale_by_decimals_exactly() -> None:
    assert token_amount(TokenAmount("ACME", Fraction(3, 2)), {"ACME": 18}) == 15 * 10**17
    assert token_amount(TokenAmount("ACME", Fraction(250)), {"ACME": 0}) == 250
    assert token_amount(7, {}) == 7
    with pytest.raises(AmountError, match="has 0 decimals"):
        token_amount(TokenAmount("ACME", Fraction(3, 2)), {"ACME": 0})
    with pytest.raises(AmountError, match="not known"):
        token_amount(TokenAmount("ACME", Fraction(1)), {"USDX": 6})


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("30s", 30), ("5m", 300), ("24h", 86400), ("7d", 604800), (" 2 h", 7200)],
)
def test_durations(written: str, seconds: int) -> None:
    assert parse_duration(written) == seconds


@given(st.integers(min_value=0, max_value=2**256 - 1))
def test_native_amounts_round_trip(wei: int) -> None:
    text = format_wei(wei)
    assert parse_amount(text) == wei
    assert parse_amount(f"{wei} wei") == wei == parse_amount(str(wei))


@given(
    units=st.integers(min_value=0, max_value=10**40),
    places=st.integers(min_value=0, max_value=30),
    decimals=st.integers(min_value=0, max_value=36),
)
def test_token_amounts_round_trip_and_scale(units: int, places: int, decimals: int) -> None:
    amount = TokenAmount("ACME", Fraction(units, 10**places))
    assert parse_amount(str(amount), ("ACME",)) == amount
    scaled = Fraction(units * 10**decimals, 10**places)
    if scaled.denominator == 1:
        assert token_amount(amount, {"ACME": decimals}) == scaled
    else:
        with pytest.raises(AmountError):
            token_amount(amount, {"ACME": decimals})


@given(st.integers(min_value=1, max_value=10**9))
def test_durations_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=300))
def test_any_text_parses_or_is_a_policy_error(text: str) -> None:
    try:
        parse_policy(text)
    except PolicyError as error:
        assert error.line is None or error.line >= 1
        assert "\n" not in str(error)


@given(st.data())
def test_an_edited_sample_parses_or_is_a_policy_error(data: st.DataObject) -> None:
    """Typos where users make them: a line dropped, a character changed or removed."""
    lines = sample().splitlines(keepends=True)
    index = data.draw(st.integers(0, len(lines) - 1))
    line = lines[index]
    edit = data.draw(st.sampled_from(["drop", "delete", "replace"]))
    at = data.draw(st.integers(0, max(len(line) - 1, 0)))
    if edit == "drop":
        line = ""
    elif edit == "delete":
        line = line[:at] + line[at + 1 :]
    else:
        line = line[:at] + data.draw(st.sampled_from(list(" :{}[],'\"#-!&*x0\t"))) + line[at + 1 :]
    try:
        parse_policy("".join([*lines[:index], line, *lines[index + 1 :]]))
    except PolicyError as error:
        assert error.line is None or 1 <= error.line <= len(lines) + 1, str(error)


def test_explicit_tags_and_deep_nesting_are_policy_errors() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("version: 1\nmode: !!python/name:os.system x\n")
    assert caught.value.line == 2
    with pytest.raises(PolicyError, match="mode"):
        parse_policy("version: 1\nmode: !!binary aGVsbG8=\n")
    with pytest.raises(PolicyError):
        parse_policy("version: 1\nrules: " + "[" * 5000 + "]" * 5000 + "\n")


# --- private transactions: Tessera keys by name, privacy flags ----------------------------------

KEY_A = "QUFB" * 10 + "QUE="  # 32 bytes of "A", base64
KEY_B = "QkJC" * 10 + "QkI="


def test_parties_name_tessera_keys_for_private_for_not_in() -> None:
    text = (f'version: 1\nparties:\n  bank-a: "{KEY_A}"\n  bank-b: "{KEY_B}"\n'
            "rules:\n  - name: only-known-banks\n    action: deny\n"
            f'    match: {{private_for_not_in: [bank-a, "{KEY_B}"],\n'
            "             privacy_flag_not_in: [0, 3]}\n")  # fmt: skip
    policy = parse_policy(text)
    assert dict(policy.parties) == {"bank-a": KEY_A, "bank-b": KEY_B}
    match = policy.rules[0].match
    assert match.private_for_not_in == {KEY_A, KEY_B}
    assert match.privacy_flag_not_in == {0, 3} and match.privacy_flag is None


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ('version: 1\nparties:\n  bank-a: "not a key"\n', 3, "parties.bank-a",
         "expected a Tessera public key"),
        (f'version: 1\nparties:\n  bank-a: "{KEY_A}"\n  bank-b: "{KEY_A}"\n', 4,
         "parties.bank-b", "the same key as bank-a"),
        (f'version: 1\nparties:\n  "9lives": "{KEY_A}"\n', 3, "parties.9lives",
         "a party name is"),
        ("version: 1\nrules:\n  - name: r\n    action: deny\n    match:\n"
         "      private_for_not_in: [bank-z]\n", 6, "rules[0].match.private_for_not_in",
         '"bank-z" is not a Tessera public key nor a party in parties (none declared)'),
        ("version: 1\nrules:\n  - name: r\n    action: deny\n    match:\n"
         "      privacy_flag: [0, 4]\n", 6, "rules[0].match.privacy_flag",
         "a GoQuorum privacy flag is 0"),
        ("version: 1\nrules:\n  - name: r\n    action: deny\n    match:\n"
         "      privacy_flag_not_in: []\n", 6, "rules[0].match.privacy_flag_not_in",
         "the list is empty"),
    ],
)  # fmt: skip
def test_private_transaction_keys_errors(text: str, line: int, field: str, message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(text)
    assert (refused.value.line, refused.value.field) == (line, field)
    assert message in refused.value.message
