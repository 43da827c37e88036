"""`quorum-signer network generate`: the network docker-compose.yml runs is consistent.

Checked against implementations other than the generator's own: eth-keys for addresses and
enode ids, a known answer from GoQuorum's QBFT tests for extraData, RFC 7748's vector for the
Tessera (X25519) keys, and RLP decoding of what was written.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import rlp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_keys import keys

from proxy import cli
from proxy.dev import network

SEED = "a seed for tests only\n"


def generate(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> tuple[int, str]:
    code = cli.main(["network", "generate", str(directory), *args])
    captured = capsys.readouterr()
    return code, captured.out if code == 0 else captured.err


@pytest.fixture
def seeded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    seed = tmp_path / "seed"
    seed.write_text(SEED)
    code, out = generate(capsys, tmp_path / "net", "--seed-file", str(seed), "--chain-id", "2024")
    assert code == 0, out
    assert out.strip().splitlines()[-1] == str(tmp_path / "net")  # the result alone, last
    return tmp_path / "net"


def load(directory: Path, relative: str) -> Any:
    return json.loads((directory / relative).read_text())


def test_extra_data_is_goquorums_qbft_format() -> None:
    # consensus/istanbul/qbft/engine/engine_test.go (TestPrepareExtra) in GoQuorum 24.4.1.
    validators = [bytes.fromhex(v) for v in (
        "44add0ec310f115a0e603b2d7db9f067778eaf8a", "294fc7e8f22b3bcdcf955dd7ff3ba2ed833f8212",
        "6beaaed781d2d2ab6350f5c4566a2c6eaac407a6", "8be76812f765c24641ec63dc2852b378aba2b440",
    )]  # fmt: skip
    expected = (
        "f87aa00000000000000000000000000000000000000000000000000000000000000000f85494"
        "44add0ec310f115a0e603b2d7db9f067778eaf8a94294fc7e8f22b3bcdcf955dd7ff3ba2ed833f8212"
        "946beaaed781d2d2ab6350f5c4566a2c6eaac407a6948be76812f765c24641ec63dc2852b378aba2b440"
        "c080c0"
    )
    assert network.qbft_extra_data(validators).hex() == expected


def test_tessera_keys_are_x25519_as_rfc7748_computes_them() -> None:
    # RFC 7748, section 6.1: Alice's key pair.
    private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert network.tessera_public_key(private) == public


def test_validators_in_extra_data_are_the_node_keys_addresses(seeded: Path) -> None:
    genesis = load(seeded, "genesis.json")
    vanity, validators, vote, round_, seals = rlp.decode(bytes.fromhex(genesis["extraData"][2:]))
    assert (vanity, vote, round_, seals) == (bytes(32), [], b"", [])
    keys_addresses = [
        keys.PrivateKey(
            bytes.fromhex((seeded / f"quorum{i}/nodekey").read_text().strip())
        ).public_key.to_canonical_address()
        for i in range(1, network.NODE_COUNT + 1)
    ]
    assert validators == keys_addresses
    assert len(set(validators)) == network.NODE_COUNT
    summary = load(seeded, "network.json")
    assert summary["validators"] == ["0x" + v.hex() for v in validators]


def test_enode_ids_match_the_node_keys(seeded: Path) -> None:
    enodes = load(seeded, "quorum1/static-nodes.json")
    assert len(enodes) == network.NODE_COUNT
    for index, enode in enumerate(enodes, start=1):
        nodekey = (seeded / f"quorum{index}/nodekey").read_text()
        assert nodekey.endswith("\n") and len(nodekey.strip()) == 64  # geth's format: hex
        public = keys.PrivateKey(bytes.fromhex(nodekey.strip())).public_key.to_bytes().hex()
        assert enode == f"enode://{public}@{network.node_ip(index)}:30303?discport=0"
    for index in range(1, network.NODE_COUNT + 1):  # every node has the same view
        assert load(seeded, f"quorum{index}/static-nodes.json") == enodes
        assert load(seeded, f"quorum{index}/permissioned-nodes.json") == enodes
        assert load(seeded, f"quorum{index}/genesis.json") == load(seeded, "genesis.json")


def test_genesis_is_a_quorum_chain_without_fees(seeded: Path) -> None:
    genesis = load(seeded, "genesis.json")
    config = genesis["config"]
    assert config["chainId"] == 2024 != 1
    assert config["isQuorum"] is True
    assert set(config["qbft"]) >= {"epochlength", "blockperiodseconds", "requesttimeoutseconds"}
    # Gas price 0: no fee market (no London fork, no base fee) and no enableGasPriceBlock.
    assert "londonBlock" not in config and "enableGasPriceBlock" not in config
    assert "baseFeePerGas" not in genesis
    assert config["eip155Block"] == 0  # replay-protected public transactions from block 0
    assert 32 <= config["txnSizeLimit"] <= 128  # GoQuorum's bounds
    assert genesis["mixHash"] == network.ISTANBUL_DIGEST and genesis["difficulty"] == "0x1"
    assert (seeded / "quorum.env").read_text() == "QUORUM_NETWORK_ID=2024\n"
    assert "QSIGNER_CHAIN_ID=2024\n" in (seeded / "proxy.env").read_text()


def test_tessera_key_pairs_and_configs(seeded: Path) -> None:
    services = {f"tessera{i}" for i in network.TESSERA_NODES}
    for index in network.TESSERA_NODES:
        service = f"tessera{index}"
        key = load(seeded, f"{service}/tm.key")
        assert key["type"] == "unlocked"
        private = base64.b64decode(key["data"]["bytes"], validate=True)
        public = base64.b64decode((seeded / f"{service}/tm.pub").read_text(), validate=True)
        derived = X25519PrivateKey.from_private_bytes(private).public_key()
        assert public == derived.public_bytes(Encoding.Raw, PublicFormat.Raw)

        config = load(seeded, f"{service}/tessera-config.json")
        servers = {s["app"]: s for s in config["serverConfigs"]}
        assert set(servers) == {"ThirdParty", "Q2T", "P2P"}
        for app, port in (("ThirdParty", 9080), ("Q2T", 9101), ("P2P", 9000)):
            assert servers[app]["serverAddress"] == f"http://{service}:{port}"
            assert servers[app]["bindingAddress"] == f"http://0.0.0.0:{port}"
        peers = {p["url"] for p in config["peer"]}
        assert peers == {f"http://{s}:9000" for s in services - {service}}
        assert config["keys"]["keyData"] == [
            {"privateKeyPath": "/config/tm.key", "publicKeyPath": "/config/tm.pub"}
        ]

    summary = load(seeded, "network.json")
    with_tessera = [n["service"] for n in summary["nodes"] if n["tessera"]]
    assert with_tessera == [f"quorum{i}" for i in network.TESSERA_NODES]
    public_keys = {n["tessera"]["public_key"] for n in summary["nodes"] if n["tessera"]}
    assert len(public_keys) == len(network.TESSERA_NODES)


def test_secrets_stay_private_and_out_of_git(seeded: Path) -> None:
    assert stat.S_IMODE(seeded.stat().st_mode) == 0o700
    assert stat.S_IMODE((seeded / "proxy.env").stat().st_mode) == 0o600
    assert (seeded / ".gitignore").read_text().splitlines()[-1] == "*"
    for name in network.SECRET_NAMES:
        value = (seeded / "secrets" / name).read_text()
        assert len(value.strip()) >= 40 and value.endswith("\n")
    values = [(seeded / "secrets" / n).read_text() for n in network.SECRET_NAMES]
    assert len(set(values)) == len(values)


def test_a_seed_gives_the_same_network_and_none_a_new_one(
    seeded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = tmp_path / "again"
    code, _ = generate(capsys, again, "--seed-file", str(tmp_path / "seed"), "--chain-id", "2024")
    assert code == 0
    for path in seeded.rglob("*"):
        if path.is_file():
            assert (again / path.relative_to(seeded)).read_text() == path.read_text(), path
    random_one, random_two = tmp_path / "r1", tmp_path / "r2"
    assert generate(capsys, random_one)[0] == 0 and generate(capsys, random_two)[0] == 0
    for relative in ("quorum1/nodekey", "tessera1/tm.key", "secrets/token_pin"):
        assert (random_one / relative).read_text() != (random_two / relative).read_text()
        assert (random_one / relative).read_text() != (seeded / relative).read_text()
    assert load(random_one, "genesis.json")["config"]["chainId"] == network.DEFAULT_CHAIN_ID


def test_funded_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = "0x8D01619264bAD8A4E2132553821feB73FDdA0924"
    assert generate(capsys, tmp_path / "net", "--fund", address)[0] == 0
    alloc = load(tmp_path / "net", "genesis.json")["alloc"]
    assert alloc == {address[2:].lower(): {"balance": hex(network.FUNDED_BALANCE)}}
    code, err = generate(capsys, tmp_path / "bad", "--fund", "0x1234")
    assert code == 2 and err.count("\n") == 1 and "--fund" in err


def test_refusals(seeded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = generate(capsys, tmp_path / "mainnet", "--chain-id", "1")
    assert code == 2 and "chain-id 1" in err and not (tmp_path / "mainnet").exists()
    before = (seeded / "quorum1/nodekey").read_text()
    code, err = generate(capsys, seeded)  # a network is there: its keys are not overwritten
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert (seeded / "quorum1/nodekey").read_text() == before
    assert generate(capsys, seeded, "--force")[0] == 0
    assert (seeded / "quorum1/nodekey").read_text() != before
