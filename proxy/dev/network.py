"""The compose network generator: everything a 4-node GoQuorum QBFT network with Tessera beside
two of its nodes needs, written to one directory that `docker-compose.yml` mounts.

Keys are random unless a seed is given (tests, reproducible demos: anyone holding the seed holds
every key). The formats follow GoQuorum 24.4 and Tessera 24.4: QBFT's extraData is
RLP([32-byte vanity, [validators], vote (empty list), round (empty string), seals (empty list)]),
a node key is 64 hex digits, a Tessera key pair is NaCl box (Curve25519) keys in base64.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rlp
from coincurve import PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from proxy.errors import BadInput
from signer.base import SECP256K1_N
from signer.ecdsa import keccak256

NODE_COUNT = 4
TESSERA_NODES = (1, 2)  # the nodes that have a Tessera beside them
DEFAULT_CHAIN_ID = 1337
BLOCK_PERIOD_SECONDS = 1
# The compose network's subnet: peers find each other at fixed addresses, because GoQuorum looks
# an enode's host name up once at start-up and drops the peer when that container is not up yet.
SUBNET_PREFIX = "172.16.239."
P2P_PORT = 30303
RPC_PORT = 8545
TESSERA_P2P_PORT = 9000
TESSERA_THIRD_PARTY_PORT = 9080
TESSERA_Q2T_PORT = 9101
DATABASE, DATABASE_USER = "qsigner", "qsigner"
FUNDED_BALANCE = 10**24  # wei given to each --fund address (a million ether)
# GoQuorum's IstanbulDigest: the mixHash of every IBFT/QBFT block, genesis included.
ISTANBUL_DIGEST = "0x63746963616c2062797a616e74696e65206661756c7420746f6c6572616e6365"
QBFT_VANITY = bytes(32)
# The docker secrets the compose file names, each a file under DIR/secrets/.
SECRET_NAMES = ("postgres_password", "token_pin", "token_so_pin", "demo_password")


def node_service(index: int) -> str:
    return f"quorum{index}"


def tessera_service(index: int) -> str:
    return f"tessera{index}"


def node_ip(index: int) -> str:
    return f"{SUBNET_PREFIX}{10 + index}"


@dataclass(frozen=True)
class NodeKey:
    """A node's secp256k1 key: its address is the validator's, its public key the enode id."""

    private: bytes = field(repr=False)

    @property
    def public(self) -> bytes:
        """64 bytes `x || y`, the enode id."""
        return PrivateKey(self.private).public_key.format(compressed=False)[1:]

    @property
    def address(self) -> bytes:
        return keccak256(self.public)[12:]


@dataclass(frozen=True)
class TesseraKey:
    """A Tessera key pair: NaCl box keys (X25519), shown and addressed in base64."""

    private: bytes = field(repr=False)

    @property
    def public(self) -> bytes:
        return tessera_public_key(self.private)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()


def tessera_public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key, as NaCl's crypto_box_keypair makes it."""
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Node:
    index: int
    key: NodeKey
    tessera: TesseraKey | None

    @property
    def service(self) -> str:
        return node_service(self.index)

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    @property
    def enode(self) -> str:
        return f"enode://{self.key.public.hex()}@{self.ip}:{P2P_PORT}?discport=0"


@dataclass(frozen=True)
class Network:
    chain_id: int
    nodes: tuple[Node, ...]
    funded: tuple[bytes, ...] = ()
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def validators(self) -> list[bytes]:
        return [node.key.address for node in self.nodes]

    @property
    def tessera_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.tessera is not None]


class _KeySource:
    """Random bytes, or bytes derived from a seed (keyed BLAKE2b of a label) when one is given."""

    def __init__(self, seed: bytes | None) -> None:
        self._key = None if seed is None else hashlib.sha256(seed).digest()

    def bytes32(self, label: str) -> bytes:
        if self._key is None:
            return secrets.token_bytes(32)
        return hashlib.blake2b(label.encode(), key=self._key, digest_size=32).digest()

    def secp256k1(self, label: str) -> bytes:
        for attempt in range(100):  # a value outside [1, n) comes once in 2**128
            candidate = self.bytes32(f"{label}/{attempt}")
            if 0 < int.from_bytes(candidate, "big") < SECP256K1_N:
                return candidate
        raise AssertionError("no valid secp256k1 key")  # pragma: no cover

    def secret(self, label: str) -> str:
        return base64.urlsafe_b64encode(self.bytes32(label)).decode().rstrip("=")


def check_chain_id(chain_id: int) -> None:
    if chain_id == 1:
        raise BadInput("--chain-id 1 is Ethereum mainnet's, and GoQuorum refuses it: pick another")
    if not 0 < chain_id < 2**53:
        raise BadInput("--chain-id must be a positive integer below 2**53")


def generate(chain_id: int = DEFAULT_CHAIN_ID, funded: Sequence[bytes] = (),
             seed: bytes | None = None) -> Network:  # fmt: skip
    """A new network's keys and secrets (random, or derived from `seed`)."""
    check_chain_id(chain_id)
    source = _KeySource(seed)
    nodes = tuple(
        Node(index, NodeKey(source.secp256k1(f"node/{index}")),
             TesseraKey(source.bytes32(f"tessera/{index}")) if index in TESSERA_NODES else None)
        for index in range(1, NODE_COUNT + 1)
    )  # fmt: skip
    stack_secrets = {name: source.secret(f"secret/{name}") for name in (*SECRET_NAMES, "jwt")}
    return Network(chain_id, nodes, tuple(funded), stack_secrets)


def qbft_extra_data(validators: Sequence[bytes]) -> bytes:
    """QBFT's genesis extraData (GoQuorum's core/types.QBFTExtra, RLP): vanity, validators, no
    vote (a nil pointer encodes as the empty list), round 0 (the empty string), no seals."""
    if not validators or any(len(v) != 20 for v in validators):
        raise ValueError("validators are 20-byte addresses, at least one")
    return bytes(rlp.encode([QBFT_VANITY, list(validators), [], b"", []]))


def genesis(network: Network) -> dict[str, Any]:
    """GoQuorum's genesis: QBFT, no fee market (no london block, gas price 0 since no
    enableGasPriceBlock), EIP-155 from block 0 so every public transaction carries the chain id."""
    forks = ("homesteadBlock", "eip150Block", "eip155Block", "eip158Block", "byzantiumBlock",
             "constantinopleBlock", "petersburgBlock", "istanbulBlock", "berlinBlock")  # fmt: skip
    return {
        "config": {
            "chainId": network.chain_id,
            **dict.fromkeys(forks, 0),
            "qbft": {
                "epochlength": 30000,
                "blockperiodseconds": BLOCK_PERIOD_SECONDS,
                "requesttimeoutseconds": 10,
                "policy": 0,
                "ceil2Nby3Block": 0,
            },
            "isQuorum": True,
            "txnSizeLimit": 64,
            "maxCodeSize": 0,
        },
        "nonce": "0x0",
        "timestamp": "0x0",
        "extraData": "0x" + qbft_extra_data(network.validators).hex(),
        "gasLimit": hex(30_000_000),
        "difficulty": "0x1",
        "mixHash": ISTANBUL_DIGEST,
        "coinbase": "0x" + "00" * 20,
        "alloc": {address.hex(): {"balance": hex(FUNDED_BALANCE)} for address in network.funded},
        "number": "0x0",
        "gasUsed": "0x0",
        "parentHash": "0x" + "00" * 32,
    }


def tessera_url(index: int, port: int) -> str:
    return f"http://{tessera_service(index)}:{port}"


def tessera_config(network: Network, node: Node) -> dict[str, Any]:
    """Tessera's configuration for the one beside `node`: its servers answer under its compose
    service name, its peers are the other Tessera nodes, its key pair lives in /config."""

    def server(app: str, port: int) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "app": app,
            "enabled": True,
            "serverAddress": tessera_url(node.index, port),
            "bindingAddress": f"http://0.0.0.0:{port}",
            "communicationType": "REST",
        }
        if app != "ThirdParty":
            entry["sslConfig"] = {"tls": "OFF"}
        return entry

    return {
        "useWhiteList": False,
        "jdbc": {
            "username": "sa",
            "password": "",
            "url": "jdbc:h2:/data/tm/db;MODE=Oracle;TRACE_LEVEL_SYSTEM_OUT=0",
            "autoCreateTables": True,
        },
        "serverConfigs": [
            server("ThirdParty", TESSERA_THIRD_PARTY_PORT),
            server("Q2T", TESSERA_Q2T_PORT),
            server("P2P", TESSERA_P2P_PORT),
        ],
        "peer": [
            {"url": tessera_url(other.index, TESSERA_P2P_PORT)}
            for other in network.tessera_nodes
            if other.index != node.index
        ],
        "keys": {
            "passwords": [],
            "keyData": [{"privateKeyPath": "/config/tm.key", "publicKeyPath": "/config/tm.pub"}],
        },
        "alwaysSendTo": [],
    }


def summary(network: Network) -> dict[str, Any]:
    """What is public about the network (network.json): for people and for tests."""
    return {
        "chain_id": network.chain_id,
        "validators": ["0x" + v.hex() for v in network.validators],
        "nodes": [
            {
                "service": node.service,
                "ip": node.ip,
                "address": "0x" + node.key.address.hex(),
                "enode": node.enode,
                "rpc": f"http://{node.service}:{RPC_PORT}",
                "tessera": None if node.tessera is None else {
                    "service": tessera_service(node.index),
                    "public_key": node.tessera.public_b64,
                    "third_party": tessera_url(node.index, TESSERA_THIRD_PARTY_PORT),
                    "q2t": tessera_url(node.index, TESSERA_Q2T_PORT),
                },
            }
            for node in network.nodes
        ],
    }  # fmt: skip


def proxy_env(network: Network) -> str:
    """The proxies' environment file: the database DSN and the JWT secret, so never committed."""
    password = network.secrets["postgres_password"]
    return (
        "# Written by `quorum-signer network generate`: secrets of this compose stack.\n"
        f"QSIGNER_DATABASE_URL=postgresql://{DATABASE_USER}:{password}@postgres:5432/{DATABASE}\n"
        f"QSIGNER_JWT_SECRET={network.secrets['jwt']}\n"
        f"QSIGNER_CHAIN_ID={network.chain_id}\n"
    )


def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def files(network: Network) -> dict[str, str]:
    """Every file of the network directory, by relative path."""
    enodes = _json([node.enode for node in network.nodes])
    out: dict[str, str] = {
        ".gitignore": "# generated keys and secrets: never commit them\n*\n",
        "network.json": _json(summary(network)),
        "genesis.json": _json(genesis(network)),
        "proxy.env": proxy_env(network),
        "quorum.env": f"QUORUM_NETWORK_ID={network.chain_id}\n",
    }
    for node in network.nodes:
        # Each node's directory is all that node's container mounts: its own key and copies of
        # the shared files, so that no container sees another's key.
        out[f"{node.service}/nodekey"] = node.key.private.hex() + "\n"
        out[f"{node.service}/genesis.json"] = out["genesis.json"]
        out[f"{node.service}/static-nodes.json"] = enodes
        out[f"{node.service}/permissioned-nodes.json"] = enodes
        if node.tessera is not None:
            tessera = tessera_service(node.index)
            private = base64.b64encode(node.tessera.private).decode()
            out[f"{tessera}/tm.key"] = _json({"type": "unlocked", "data": {"bytes": private}})
            out[f"{tessera}/tm.pub"] = node.tessera.public_b64
            out[f"{tessera}/tessera-config.json"] = _json(tessera_config(network, node))
    for name in SECRET_NAMES:
        out[f"secrets/{name}"] = network.secrets[name] + "\n"
    return out


def write(network: Network, directory: Path, *, force: bool = False) -> Path:
    """Write the network into `directory` (mode 0700: its files hold private keys).

    Inside it, files are readable by all, because the containers that read them (Tessera,
    PostgreSQL, the proxy's init) run as their own users, and docker-compose's secrets are plain
    bind mounts that keep the file's mode; the directory's own mode keeps other users out. Only
    proxy.env, read by docker-compose itself, stays 0600.
    """
    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise BadInput(f"{directory} is not empty (a network's keys would be lost): "
                       "pass --force to replace the network")  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for relative, text in files(network).items():
        path = directory / relative
        path.parent.mkdir(exist_ok=True)
        path.parent.chmod(0o700 if path.parent == directory else 0o755)
        path.write_text(text)
        path.chmod(0o600 if relative == "proxy.env" else 0o644)
    return directory
