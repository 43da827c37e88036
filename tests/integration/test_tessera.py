"""Organisations' Tessera (GoQuorum private transactions): `org set-tessera` as users run it, and
the proxy's storeraw client against the Tessera stand-in of tests/support/tessera.py (no Tessera
binary can be installed here; the stand-in follows Tessera's OpenAPI for the calls we make).
Every failure is a TesseraError that names Tessera and never its URL's credentials."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import TesseraError, translate
from proxy.nodes.tessera import Tessera
from tests.support.anvil import free_port
from tests.support.cli import Cli, query
from tests.support.tessera import tessera, tessera_key


def _stored(database_url: str, org: str) -> tuple[str, list[str]] | None:
    rows = query(database_url, """SELECT t.url, t.keys FROM organisation_tessera t
                                  JOIN organisations o ON o.id = t.organisation_id
                                  WHERE o.name = $1""", org)  # fmt: skip
    return (rows[0]["url"], list(rows[0]["keys"])) if rows else None


def test_set_tessera_from_the_command_line(cli: Cli, database_url: str) -> None:
    cli.ok("db", "upgrade")
    cli.ok("org", "create", "acme")
    first, second = tessera_key(), tessera_key()
    url = "https://ops:s3cret-pass@tessera.acme:9080"
    result = cli.run("org", "set-tessera", "--org", "acme", url, "--key", first, "--key", second,
                     "--key", first)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{first} {second}"  # default first, each once
    assert "s3cret-pass" not in result.stderr and "tessera.acme:9080" in result.stderr
    assert _stored(database_url, "acme") == (url, [first, second])
    for wrong in ("not base64!", "AAAA", tessera_key()[:-4]):
        cli.bad("org", "set-tessera", "--org", "acme", url, "--key", wrong,
                match="not a Tessera public key")  # fmt: skip
    cli.bad("org", "set-tessera", "--org", "acme", "ftp://x", match=r"not an http\(s\) URL")
    cli.bad("org", "set-tessera", "--org", "nope", url, match="no organisation named 'nope'")
    assert _stored(database_url, "acme") == (url, [first, second])  # refusals change nothing
    assert cli.ok("org", "set-tessera", "--org", "acme", "http://t2:9080") == ""  # no keys
    assert _stored(database_url, "acme") == ("http://t2:9080", [])
    events = [r["content"] for r in query(database_url, "SELECT content FROM audit_log")
              if "tessera_set" in r["content"]]  # fmt: skip
    assert len(events) == 2 and "s3cret-pass" not in str(events)


async def test_storeraw_stores_the_payload_from_the_named_key() -> None:
    own, other = tessera_key(), tessera_key()
    async with tessera([own, other]) as standin:
        client = Tessera(timeout=5)
        try:
            key = await client.store_raw(standin.url, b"\x60\x80private init code", other)
            assert len(key) == 64
            assert standin.payload_of(key).payload == b"\x60\x80private init code"
            assert standin.payload_of(key).sender == other
            default = await client.store_raw(standin.url, b"x", None)  # Tessera's default key
            assert standin.payload_of(default).sender == own and default != key
        finally:
            client.close()


async def test_storeraw_carries_the_urls_credentials_as_a_header() -> None:
    async with tessera() as standin:
        standin.basic_auth = "ops:s3cret-pass"
        client = Tessera(timeout=5)
        try:
            url = standin.url.replace("http://", "http://ops:s3cret-pass@")
            assert len(await client.store_raw(url, b"p", None)) == 64
            with pytest.raises(TesseraError, match="HTTP 401") as refused:
                await client.store_raw(url.replace("s3cret", "wrong"), b"p", None)
            assert "wrong-pass" not in str(refused.value) and "ops" not in str(refused.value)
        finally:
            client.close()


async def test_each_tessera_failure_is_a_clear_error_without_credentials() -> None:
    async with tessera() as standin:
        client = Tessera(timeout=0.5)
        secret_url = standin.url.replace("http://", "http://ops:s3cret-pass@")
        cases = [
            (lambda: None, tessera_key(), "refused the private payload (HTTP 404: Key "),
            (lambda: setattr(standin, "mode", "fail"), None, "HTTP 500"),
            (lambda: setattr(standin, "mode", "hang"), None, "did not answer within 0.5 s"),
        ]
        try:
            for arrange, sender, message in cases:
                arrange()
                with pytest.raises(TesseraError) as failed:
                    await client.store_raw(secret_url, b"payload", sender)
                assert message in str(failed.value) and "s3cret" not in str(failed.value)
                assert "Tessera at http://***@127.0.0.1" in str(failed.value)
                answer = translate(failed.value)
                assert answer.code == -32603 and "nothing was signed" in answer.message
            down = f"http://127.0.0.1:{free_port()}"
            with pytest.raises(TesseraError, match=r"unreachable \(connection refused\)"):
                await client.store_raw(down, b"payload", None)
        finally:
            client.close()
        await asyncio.sleep(0)
