"""Deployment files: docker-compose.yml (validated by docker-compose itself, against a network
that `quorum-signer network generate` wrote), the Dockerfile, the compose stack's init, and the
Kubernetes base and dev overlay (built by kustomize, schema-checked by kubernetes-validate).

No Docker engine runs here: what can be checked without one is, including the init service's
script, run against a real PostgreSQL and a real SoftHSM token.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from proxy.dev import network
from proxy.settings import PREFIX, Settings
from tests.support.cli import JWT_SECRET, query

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
KUSTOMIZATIONS = {
    "base": ROOT / "deploy" / "kubernetes" / "base",
    "dev": ROOT / "deploy" / "kubernetes" / "overlays" / "dev",
}
# The oldest Kubernetes still commonly offered by managed services, and the newest known.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_PIN|TOKEN|PRIVATE|API_KEY|DATABASE_URL", re.I)
PLACEHOLDER = "REPLACE_ME"


def tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; {why}")
    return path


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert result.returncode == 0, f"{args[:2]} failed: {result.stderr}"
    return result.stdout


# --- docker-compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = network.generate(4242, seed=b"test_deploy")
    return network.write(built, tmp_path_factory.mktemp("compose") / "network")


@pytest.fixture(scope="module")
def compose(network_dir: Path) -> dict[str, Any]:
    """The compose file as docker-compose itself reads it (interpolated, env files merged)."""
    binary = tool("docker-compose", "scripts/install-system-deps installs it (`make test` does)")
    env = {**os.environ, "QUORUM_NETWORK_DIR": str(network_dir)}
    config: dict[str, Any] = yaml.safe_load(run(binary, "-f", str(COMPOSE_FILE), "config",
                                                env=env))  # fmt: skip
    return config


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def services_named(compose: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith(prefix)}


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    expected = {f"quorum{i}" for i in range(1, network.NODE_COUNT + 1)}
    expected |= {f"tessera{i}" for i in network.TESSERA_NODES}
    expected |= {"postgres", "init", "proxy1", "proxy2"}
    assert set(compose["services"]) == expected


def test_images_are_pinned(raw_compose: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in raw_compose["services"].items() if "image" in s}
    for name, image in images.items():
        assert ":" in image and not image.endswith((":latest", ":")), name
    quorum = {images[f"quorum{i}"] for i in range(1, network.NODE_COUNT + 1)}
    assert len(quorum) == 1 and re.fullmatch(r"quorumengineering/quorum:\d+\.\d+\.\d+", *quorum)
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+", images["postgres"])
    # Tessera: its release line (24.4); the exact patch tag could not be confirmed from here.
    assert re.fullmatch(r"quorumengineering/tessera:\d+\.\d+(\.\d+)?", images["tessera1"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert bases and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+( AS \w+)?", b) for b in bases)


def test_nodes_and_tessera_match_the_generated_network(
    compose: dict[str, Any], network_dir: Path
) -> None:
    services = compose["services"]
    subnet = ipaddress.ip_network(compose["networks"]["quorum"]["ipam"]["config"][0]["subnet"])
    static_nodes = (network_dir / "quorum1" / "static-nodes.json").read_text()
    for index in range(1, network.NODE_COUNT + 1):
        node = services[f"quorum{index}"]
        address = node["networks"]["quorum"]["ipv4_address"]
        assert address == network.node_ip(index) and ipaddress.ip_address(address) in subnet
        assert f"@{address}:30303" in static_nodes  # peers find it where compose puts it
        assert f"{network_dir}/quorum{index}:/config:ro" in node["volumes"]
        env = environment(node)
        assert env["QUORUM_NETWORK_ID"] == "4242"
        script = node["command"][0].replace("$$", "$")
        assert "--miner.gasprice 0" in script and '--networkid "${QUORUM_NETWORK_ID}"' in script
        assert "--nodekey /config/nodekey" in script and "--permissioned" in script
        if index in network.TESSERA_NODES:
            assert env["PTM_URL"] == f"http://tessera{index}:{network.TESSERA_Q2T_PORT}"
        else:
            assert "PTM_URL" not in env
    for index in network.TESSERA_NODES:
        tessera = services[f"tessera{index}"]
        assert f"{network_dir}/tessera{index}:/config:ro" in tessera["volumes"]
        assert tessera["command"] == ["-configfile", "/config/tessera-config.json"]
        config = yaml.safe_load(
            (network_dir / f"tessera{index}" / "tessera-config.json").read_text()
        )
        hosts = {urlsplit(peer["url"]).hostname for peer in config["peer"]}
        hosts |= {urlsplit(s["serverAddress"]).hostname for s in config["serverConfigs"]}
        for host in hosts:  # every Tessera address is a compose service on the same network
            assert host in services and "quorum" in services[host]["networks"], host


def test_proxy_replicas_share_one_database_and_the_same_nodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    proxies = services_named(compose, "proxy")
    assert len(proxies) >= 2
    envs = [environment(p) for p in proxies.values()]
    for key in ("QSIGNER_UPSTREAMS", "QSIGNER_DATABASE_URL", "QSIGNER_TESSERA_URL",
                "QSIGNER_JWT_SECRET", "QSIGNER_CHAIN_ID"):  # fmt: skip
        assert len({env[key] for env in envs}) == 1, f"the replicas differ in {key}"
    env = envs[0]
    assert env["QSIGNER_CHAIN_ID"] == "4242"
    upstreams = [urlsplit(url) for url in env["QSIGNER_UPSTREAMS"].split(",")]
    assert {u.hostname for u in upstreams} == {f"quorum{i}" for i in range(1, 5)}
    assert {u.port for u in upstreams} == {network.RPC_PORT}
    database = urlsplit(env["QSIGNER_DATABASE_URL"])
    assert database.hostname == "postgres" and database.path == f"/{network.DATABASE}"
    assert urlsplit(env["QSIGNER_TESSERA_URL"]).hostname in services
    assert len({p["image"] for p in proxies.values()} | {services["init"]["image"]}) == 1
    for proxy in proxies.values():
        assert "softhsm-tokens:/var/lib/quorum-signer/tokens:rw" in proxy["volumes"]
        assert proxy["depends_on"]["init"]["condition"] == "service_completed_successfully"
        for host in {u.hostname for u in upstreams}:  # `serve` starts once a node answers
            assert proxy["depends_on"][host]["condition"] == "service_healthy"
        assert proxy["command"] == ["serve"]
    init = services["init"]
    assert environment(init)["QSIGNER_DATABASE_URL"] == env["QSIGNER_DATABASE_URL"]
    assert "softhsm-tokens:/var/lib/quorum-signer/tokens:rw" in init["volumes"]
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    for inside in ("/deploy/init.py:ro", "/deploy/network.json:ro"):
        mounted = [v.split(":")[0] for v in init["volumes"] if v.endswith(inside)]
        assert mounted and Path(mounted[0]).is_file(), inside
    # The database's password reaches PostgreSQL as a docker secret, the same one in the DSN.
    postgres = services["postgres"]
    assert environment(postgres)["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    password_file = Path(compose["secrets"]["postgres_password"]["file"])
    assert database.password == password_file.read_text().strip()


def test_compose_holds_no_secret(raw_compose: dict[str, Any], network_dir: Path) -> None:
    text = COMPOSE_FILE.read_text()
    for name, service in raw_compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), (name, key)
    for secret in raw_compose["secrets"].values():
        assert secret["file"].startswith("${QUORUM_NETWORK_DIR:-./network}/secrets/")
    for path in (network_dir / "secrets").iterdir():
        assert path.read_text().strip() not in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") :] and "!network/" not in ignored  # allowlist: keys stay out


def test_dockerfile_is_slim_non_root_and_healthchecked() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthcheck = re.search(r"^HEALTHCHECK .*?(?=^\S)", dockerfile, re.M | re.S)
    assert healthcheck and "/readyz" in healthcheck.group(0)
    assert "softhsm2" in dockerfile and "--no-install-recommends" in dockerfile
    for line in re.findall(r"^(?:ENV|ARG)\s.*(?:\n\s+.*)*", dockerfile, re.M):
        assert not SECRET_NAME.search(line.replace("SOFTHSM2_CONF", "")), line
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which is gone"


def test_compose_init_sets_up_the_stack_once(
    network_dir: Path, database_url: str, softhsm_conf: Path, tmp_path: Path
) -> None:
    """The init service's script, run as the image runs it: the schema, the token, the demo
    organisation, account and user, and its Tessera; run again, it changes nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")}
    env.update(QSIGNER_DATABASE_URL=database_url, SOFTHSM2_CONF=str(softhsm_conf),
               INIT_SECRETS_DIR=str(network_dir / "secrets"), QSIGNER_JWT_SECRET=JWT_SECRET,
               QSIGNER_PBKDF2_ITERATIONS="100000",
               INIT_NETWORK_JSON=str(network_dir / "network.json"))  # fmt: skip
    init = str(ROOT / "deploy" / "compose" / "init.py")
    first = run(sys.executable, init, env=env).strip()
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", first)
    assert run(sys.executable, init, env=env).strip() == first
    tessera = json.loads((network_dir / "network.json").read_text())["nodes"][0]["tessera"]
    (row,) = query(database_url, "SELECT url, keys FROM organisation_tessera")
    assert (row["url"], list(row["keys"])) == (tessera["third_party"], [tessera["public_key"]])
    # The demo user's envelope opens with the generated password and holds the token's PIN.
    password_file = str(network_dir / "secrets" / "demo_password")
    key = run(str(Path(sys.executable).parent / "quorum-signer"), "apikey", "create",
              "--user", "demo", "--password-file", password_file, env=env)  # fmt: skip
    assert key.strip().startswith("qsk_")


def test_every_setting_given_is_one_the_proxy_reads(
    compose: dict[str, Any], built: dict[str, list[dict[str, Any]]]
) -> None:
    """A misspelt QSIGNER_ variable would be ignored silently: each one named is a setting, and
    together they make valid settings."""
    known = {PREFIX + field.name.upper() for field in dataclasses.fields(Settings)}
    environments = [environment(s) for s in services_named(compose, "proxy").values()]
    for docs in built.values():
        config = one(docs, "ConfigMap", "quorum-signer-config")["data"]
        secret = one(docs, "Secret", "quorum-signer-secrets")["stringData"]
        environments.append({**config, **secret})
    for env in environments:
        named = {key for key in env if key.startswith(PREFIX)}
        assert named <= known, named - known
        Settings.from_env({key: value for key, value in env.items() if key in named})


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    """`kubectl kustomize` of the base and of the dev overlay."""
    kubectl = tool("kubectl", "kubectl >= 1.27 (kustomize v5 inside) comes with this machine")
    return {
        name: [doc for doc in yaml.safe_load_all(run(kubectl, "kustomize", str(path))) if doc]
        for name, path in KUSTOMIZATIONS.items()
    }


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_manifest_validates_against_the_kubernetes_schemas(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    sources = [
        doc
        for path in sorted(ROOT.joinpath("deploy", "kubernetes").rglob("*.yaml"))
        if path.name != "kustomization.yaml" and not path.name.endswith("-patch.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    documents = [*sources, *built["base"], *built["dev"]]
    for version in KUBERNETES_VERSIONS:
        for doc in documents:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    kinds = {doc["kind"] for doc in built["base"]}
    assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret", "Job"}
    assert "StatefulSet" not in kinds  # the base's database is external
    assert one(built["dev"], "StatefulSet")["metadata"]["name"] == "postgres"


def test_replicas_share_one_database(built: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in built.items():
        deployment = one(docs, "Deployment", "quorum-signer")
        assert deployment["spec"]["replicas"] >= 2, name
        job = one(docs, "Job")
        sources = [c["envFrom"] for c in (*containers(deployment)[-1:], *containers(job))]
        assert all(s == sources[0] for s in sources), "proxy and migration read one config"
        secret_name = next(s["secretRef"]["name"] for s in sources[0] if "secretRef" in s)
        urls = [
            doc["stringData"]["QSIGNER_DATABASE_URL"]
            for doc in of_kind(docs, "Secret")
            if "QSIGNER_DATABASE_URL" in doc.get("stringData", {})
        ]
        assert len(urls) == 1 and one(docs, "Secret", secret_name)["stringData"]
        assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]
    base_host = urlsplit(one(built["base"], "Secret", "quorum-signer-secrets")["stringData"][
        "QSIGNER_DATABASE_URL"]).hostname  # fmt: skip
    assert base_host and "." in base_host  # a managed database outside the cluster
    dev = built["dev"]
    dev_host = urlsplit(one(dev, "Secret", "quorum-signer-secrets")["stringData"][
        "QSIGNER_DATABASE_URL"]).hostname  # fmt: skip
    service = one(dev, "Service", dev_host)
    statefulset = one(dev, "StatefulSet", "postgres")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for doc in dev:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "quorum-signer-dev", doc["kind"]


def test_probes_point_at_the_right_routes(built: dict[str, list[dict[str, Any]]]) -> None:
    for docs in built.values():
        deployment = one(docs, "Deployment", "quorum-signer")
        proxy = containers(deployment)[-1]
        ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
        config = one(docs, "ConfigMap", "quorum-signer-config")["data"]
        assert ports["rpc"] == int(config["QSIGNER_LISTEN"].rsplit(":", 1)[1])
        assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "rpc"}
        assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "rpc"}
        assert proxy["args"] == ["serve"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = one(docs, "Service", "quorum-signer")
        assert service["spec"]["ports"][0]["targetPort"] == "rpc"
        assert service["spec"]["selector"].items() <= pod_labels.items()
        budget = one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
        assert budget.items() <= pod_labels.items()
        # The PKCS#11 module is on a volume, mounted where QSIGNER_PKCS11_MODULE points.
        module_dir = str(Path(config["QSIGNER_PKCS11_MODULE"]).parent)
        mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
        volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert mounts[module_dir] in volumes
        assert mounts["/var/lib/quorum-signer/tokens"] in volumes


def test_no_secret_is_inline(built: dict[str, list[dict[str, Any]]]) -> None:
    for docs in built.values():
        for doc in docs:
            if doc["kind"] == "Secret":  # placeholders only: real values never enter git
                for key, value in {**doc.get("stringData", {}), **doc.get("data", {})}.items():
                    assert PLACEHOLDER in value, (doc["metadata"]["name"], key)
            if doc["kind"] == "ConfigMap":
                assert not [k for k in doc["data"] if SECRET_NAME.search(k)]
            if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
                for container in containers(doc):
                    for variable in container.get("env", []):
                        if SECRET_NAME.search(variable["name"]):
                            assert "secretKeyRef" in variable.get("valueFrom", {}), variable
                    words = " ".join(container.get("command", []) + container.get("args", []))
                    assert not SECRET_NAME.search(words) and PLACEHOLDER not in words
