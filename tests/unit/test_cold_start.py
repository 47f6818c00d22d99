"""Cold start (issue 11): what `tailnetd serve` loads before it answers /health.

The admin API, the operator page and TLS load on first use; the commit is read
with the git command. A heavy module creeping back onto the start path fails
here by name (a timing test would only flake): the server is started in a
fresh interpreter as `tailnetd serve` starts it, and asked for /health.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.cli import main
from server.store._rows import json_list, str_tuple
from server.store.addresses import ip_text, ipv4_from_text, ipv6_from_text
from tests.e2e.harness import ROOT, TailnetRepo
from tests.unit.control_client import USERS

# Loaded only when needed: the HTTP app (starlette, jinja2), gitpython (a remote
# repository), OIDC (authlib, joserfc), PostgreSQL (psycopg), webhooks (httpx),
# TLS files and ACME (cryptography.x509, acme, josepy, requests); jsonschema.
HEAVY = (
    "jsonschema",  # only when a commit is checked that did not pass the schemas before
    "prometheus_client",  # the first scrape of /metrics
    "http.client",  # the admin CLI's requests (and prometheus_client)
    "server.edge.derp_server",  # the first /derp connection, a mesh peer or a scrape
    "nacl",
    "starlette",
    "jinja2",
    "git",
    "authlib",
    "joserfc",
    "psycopg",
    "httpx",
    "cryptography.x509",
    "acme",
    "josepy",
    "requests",
    "server.api._app",
    "server.page",
)

CHILD = """
import asyncio, json, sys

from server.cli import build_parser
from server.app import Server
from server.config import load_config

HEAVY = json.loads(sys.argv[1])


async def get(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\\r\\n\\r\\n")
    return int(head.split()[1]), json.loads(body)


async def main():
    args = build_parser().parse_args(sys.argv[2:])
    server = Server(load_config(vars(args)))
    await server.start()
    try:
        health = await get(server.port, "/health")
        before = [name for name in HEAVY if name in sys.modules]
        key = await get(server.port, "/key")
        keyed = [name for name in HEAVY if name in sys.modules]
        probe = await get(server.port, "/ready")
        after = [name for name in HEAVY if name in sys.modules]
    finally:
        await server.stop()
    print(json.dumps({"health": health, "before": before, "key": key, "keyed": keyed,
                  "probe": probe, "after": after}))


asyncio.run(main())
"""


def _serve_once(repo: TailnetRepo, data: str) -> dict[str, Any]:
    args = ["serve", "--repo", str(repo.path), "--data", data]
    args += ["--listen", "127.0.0.1:0", "--stun-listen", "off"]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(HEAVY), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return seen


def test_serving_and_health_load_no_heavy_module_until_a_request_needs_it(
    tmp_path: Path,
) -> None:
    repo = TailnetRepo(tmp_path / "repo", {"users.yaml": USERS})
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:  # AF_UNIX paths are short
        # The first start checks the commit against the schemas (jsonschema loads);
        # a restart on the same commit and schemas does not.
        first = _serve_once(repo, data)
        seen = _serve_once(repo, data)
    assert first["health"] == [200, {"status": "ok", "serving": repo.head()}]
    assert first["before"] == ["jsonschema"]
    # Healthy means serving: the commit is compiled before /health answers.
    assert seen["health"] == [200, {"status": "ok", "serving": repo.head()}]
    assert seen["before"] == []
    # /key, every client's first request, is answered without the HTTP app.
    status, key = seen["key"]
    assert status == 200 and key["publicKey"].startswith("mkey:")
    assert seen["keyed"] == []
    # The first other request loads the HTTP app and is answered by it.
    assert seen["probe"][0] == 200 and seen["probe"][1]["ready"] is True
    assert "starlette" in seen["after"] and "server.api._app" in seen["after"]


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_an_ipv6_address_text_is_what_ipaddress_writes_and_reads(value: int) -> None:
    ip = IPv6Address(value)
    assert ip_text(ip) == str(ip)
    assert ipv6_from_text(str(ip)) == ip


@given(st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_an_ipv4_address_text_is_what_ipaddress_writes_and_reads(value: int) -> None:
    ip = IPv4Address(value)
    assert ip_text(ip) == str(ip)
    assert ipv4_from_text(str(ip)) == ip


def test_tailnet_addresses_keep_their_text() -> None:
    for text in ("fd7a:115c:a1e0::1", "fd7a:115c:a1e0:ab12:4843:cd96:6258:b240", "::ffff:1.2.3.4"):
        assert ip_text(ipv6_from_text(text)) == str(IPv6Address(text))
    assert ip_text(ipv4_from_text("100.64.0.1")) == "100.64.0.1"


def test_the_cli_turns_collections_back_on_for_every_command_but_serve(tmp_path: Path) -> None:
    # main() loads its modules with the collector off; only `serve` keeps it off
    # (until it has settled), so an admin command or a test calling main() does not.
    assert gc.isenabled()
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    assert gc.isenabled()
    assert main(["nodes", "list", "--data", str(tmp_path)]) == 1  # no server running there
    assert gc.isenabled()


@given(st.lists(st.text()))
def test_a_stored_list_of_strings_reads_back_as_written(items: list[str]) -> None:
    assert str_tuple(json_list(items)) == tuple(items)


def test_a_stored_list_that_is_not_all_strings_reads_as_before() -> None:
    assert str_tuple('["a", 1, true]') == ("a", "1", "True")
    assert str_tuple(["x", "y"]) == ("x", "y")  # jsonb comes parsed
    with pytest.raises(ValueError):
        str_tuple("[")


SERVE_REFUSED = """
import sys
from server.cli import main
rc = main(["serve", "--listen", "bogus", "--repo", "/nonexistent"])
print(rc, "server.memtrace" in sys.modules, "ctypes" in sys.modules)
"""


@pytest.mark.parametrize(("trace", "loaded"), [("", "False False"), ("1", "True True")])
def test_serve_loads_the_memory_tracer_only_when_asked(
    tmp_path: Path, trace: str, loaded: str
) -> None:
    """server/memtrace.py (ctypes and a search for libc, ~50 ms) stays off the
    start path of `tailnetd serve` unless TAILNETD_TRACEMALLOC names a directory."""
    env = {**os.environ, "TAILNETD_TRACEMALLOC": str(tmp_path) if trace else ""}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_REFUSED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", *loaded.split()]
