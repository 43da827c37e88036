"""Passthrough benchmark: `eth_blockNumber` through the proxy (with a JWT and with an API key)
vs. a minimal aiohttp forwarder (written below) vs. the node directly, all in the same run.

The load comes from wrk (Debian's `wrk`, written in C): a Python load generator on the same two
cores would take the CPU we mean to measure. Each round runs every target at `--concurrency`
(64) for `--seconds`, then at concurrency 1 for the unloaded latency; the targets' order turns
from round to round, and the medians over the rounds are compared: only the ratios (proxy /
forwarder) and differences (proxy - direct) mean anything on a shared, noisy machine.

Everything real: anvil, PostgreSQL (local, else embedded), SoftHSM, `quorum-signer serve` as a
separate process with the product's defaults. Nothing is asserted: it prints figures.
Usage: .venv/bin/python bench/passthrough.py [--rounds 5] [--seconds 5] [--concurrency 64]
       [--event-loop uvloop|asyncio] [--summary FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

import summary
from _stack import running_stack

from tests.support.anvil import free_port

BODY = '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def forwarder(port: int, upstream: str) -> None:
    """The baseline: the smallest sensible aiohttp forwarding proxy (one shared session)."""

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {"Content-Type": "application/json"}
        async with session.post(upstream, data=await request.read(), headers=headers) as answer:
            return web.Response(body=await answer.read(), content_type="application/json")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def wrk_script(directory: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = '{BODY}'"]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path = directory / f"script-{len(list(directory.iterdir()))}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, concurrency: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from one wrk run; any non-2xx answer is an error."""
    threads = 1 if concurrency == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(name: str) -> float:
        found = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert found is not None, out
        return float(found.group(1)) * _UNITS[found.group(2)]

    return rate, percentile("50"), percentile("99")


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the forwarder did not listen on port {port}") from None
            time.sleep(0.1)


def check_answers(targets: dict[str, tuple[str, dict[str, str]]]) -> None:
    """Every target answers the call with a block number before it is measured."""
    for name, (url, headers) in targets.items():
        request = urllib.request.Request(url, data=BODY.encode(), headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - ours
            body = answer.read()
        if b'"result":"0x' not in body.replace(b" ", b""):
            raise SystemExit(f"{name} did not answer eth_blockNumber: {body[:200]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the proxy's QSIGNER_EVENT_LOOP (the product's default: uvloop)",
    )
    parser.add_argument("--summary", metavar="FILE", help="write the figures there (JSON)")
    parser.add_argument(
        "--forwarder", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.forwarder:
        forwarder(int(args.forwarder[0]), args.forwarder[1])
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (make deps installs it)")
    serve_env = {"QSIGNER_EVENT_LOOP": args.event_loop}
    with running_stack(serve_env=serve_env) as running, tempfile.TemporaryDirectory() as tmp:
        fwd_port = free_port()
        fwd = subprocess.Popen([sys.executable, __file__, "--forwarder", str(fwd_port),
                                running.anvil])  # fmt: skip
        try:
            wait_for_port(fwd_port)
            json_headers = {"Content-Type": "application/json"}
            stack = running.stack
            targets = {
                "direct": (running.anvil, json_headers),
                "forwarder": (f"http://127.0.0.1:{fwd_port}/", json_headers),
                "proxy-jwt": (running.proxy + "/",
                              {**json_headers, "Authorization": f"Bearer {stack.jwt}"}),
                "proxy-key": (running.proxy + "/",
                              {**json_headers, "Authorization": f"Bearer {stack.api_key}"}),
            }  # fmt: skip
            check_answers(targets)
            scripts = {name: wrk_script(Path(tmp), headers)
                       for name, (_, headers) in targets.items()}  # fmt: skip
            loaded: dict[str, list[tuple[float, float, float]]] = {k: [] for k in targets}
            unloaded: dict[str, list[float]] = {k: [] for k in targets}
            for name, (url, _) in targets.items():  # warm-up
                wrk(url, scripts[name], args.concurrency, 2)
            names = list(targets)
            for number in range(args.rounds):
                order = names[number % len(names) :] + names[: number % len(names)]
                for name in order:
                    url = targets[name][0]
                    loaded[name].append(wrk(url, scripts[name], args.concurrency, args.seconds))
                    unloaded[name].append(wrk(url, scripts[name], 1, args.seconds / 2)[1])
                print(
                    f"  round {number + 1}: "
                    + ", ".join(f"{name} {loaded[name][-1][0]:.0f}/s" for name in names),
                    flush=True,
                )
        finally:
            fwd.terminate()
            fwd.wait()
    print(f"cores: {os.cpu_count()}; eth_blockNumber with wrk, {args.rounds} rounds of "
          f"{args.seconds:g} s, medians; the proxy on {args.event_loop}")  # fmt: skip
    c = args.concurrency
    print(f"{'target':>10} {f'req/s c={c}':>12} {'p50 ms':>8} {'p99 ms':>8} {'p50 ms c=1':>11}")
    rate, idle = {}, {}
    for name in targets:
        rate[name] = statistics.median(r[0] for r in loaded[name])
        idle[name] = statistics.median(unloaded[name])
        p50 = statistics.median(r[1] for r in loaded[name])
        p99 = statistics.median(r[2] for r in loaded[name])
        print(f"{name:>10} {rate[name]:>12.0f} {p50:>8.2f} {p99:>8.2f} {idle[name]:>11.3f}")
    for name in ("proxy-jwt", "proxy-key"):
        print(f"{name} / forwarder throughput: {rate[name] / rate['forwarder']:.2f}x "
              f"(goal >= 1.0x); p50 at c=1 over direct: {idle[name] - idle['direct']:+.3f} ms "
              f"(goal <= +0.3 ms)")  # fmt: skip
    print(f"forwarder p50 at c=1 over direct: {idle['forwarder'] - idle['direct']:+.3f} ms")
    proxies = (("proxy-jwt", "JWT"), ("proxy-key", "API key"))
    figures = [summary.Figure("passthrough", f"eth_blockNumber req/s c={c}, {how}", rate[name],
                              "/s", "aiohttp forwarder", rate["forwarder"])
               for name, how in proxies]  # fmt: skip
    figures += [summary.Figure("passthrough", f"eth_blockNumber p50 c=1, {how}", idle[name], "ms",
                               "node direct", idle["direct"], difference=True)
                for name, how in proxies]  # fmt: skip
    summary.write(args.summary, figures)


if __name__ == "__main__":
    main()
