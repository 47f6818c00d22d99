"""OIDC login end to end: real tailscaled 1.96.4, a real identity provider (Dex, built
with Go: `python -m tests.dex_bin`) on loopback, and a real headless Chromium (Debian
`chromium`, driven by Playwright) that clicks through Dex's login page.

Dex's authproxy connector takes the identity from request headers, as a proxy in front
of it would set them; the browser sends them, so each login can carry its own email and
groups (Dex's static passwords carry no groups). With a second connector (the password
database) Dex shows its connector page, where the browser clicks "Log in with Proxy".
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import dex_bin
from tests.e2e.harness import (
    ALICE_AND_BOB,
    ServerProcess,
    TailnetRepo,
    TailscaleNode,
    free_port,
    wait_for,
)
from tests.e2e.test_login import Up

CHROMIUM = "/usr/bin/chromium"
SECRET = "e2e-client-secret"
POLICY = json.dumps(
    {
        "groups": {"group:eng": []},
        "acls": [
            {"action": "accept", "src": ["group:eng"], "dst": ["bob@example.com:*"]},
            {"action": "accept", "src": ["bob@example.com"], "dst": ["group:eng:*"]},
        ],
    }
)

playwright = pytest.importorskip("playwright.sync_api")


def _dex_config(port: int, redirect: str, id_tokens: str | None = None) -> dict[str, Any]:
    expiry = {"expiry": {"idTokens": id_tokens}} if id_tokens else {}
    return {
        **expiry,
        "issuer": f"http://127.0.0.1:{port}/dex",
        "storage": {"type": "memory"},
        "web": {"http": f"127.0.0.1:{port}"},
        "logger": {"level": "info"},
        "oauth2": {"skipApprovalScreen": True},
        "staticClients": [
            {"id": "tailnetd", "secret": SECRET, "name": "tailnetd", "redirectURIs": [redirect]}
        ],
        "connectors": [{"type": "authproxy", "id": "proxy", "name": "Proxy"}],
        "enablePasswordDB": True,
    }


class Net:
    """Dex, tailnetd logging in through it, and tailscaled nodes. `files` replace the
    tailnet.d files; `id_tokens` is the lifetime of Dex's ID tokens (e.g. "45s");
    `extra` are more server flags."""

    def __init__(
        self,
        tmp: Path,
        files: dict[str, str] | None = None,
        id_tokens: str | None = None,
        allowed_groups: str = "staff",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.tmp = tmp
        self.id_tokens = id_tokens
        self.dex_port = free_port()
        self.issuer = f"http://127.0.0.1:{self.dex_port}/dex"
        self.repo = TailnetRepo(
            tmp / "repo", files or {"users.yaml": ALICE_AND_BOB, "policy.hujson": POLICY}
        )
        self.server = ServerProcess(
            self.repo.path,
            tmp / "data",
            tmp / "tailnetd.log",
            extra=[
                "--oidc-issuer", self.issuer,
                "--oidc-client-id", "tailnetd",
                "--oidc-allowed-domains", "example.com",
                "--oidc-allowed-groups", allowed_groups,
                *extra,
            ],
        )  # fmt: skip
        self.server.extra_env = {"TAILNETD_OIDC_CLIENT_SECRET": SECRET}
        self.nodes: list[TailscaleNode] = []
        self.dex: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.tmp / "dex.json"  # YAML is a superset of JSON
        config.write_text(
            json.dumps(
                _dex_config(self.dex_port, self.server.url + "/oidc/callback", self.id_tokens)
            )
        )
        with open(self.tmp / "dex.log", "ab") as log:
            self.dex = subprocess.Popen(
                [str(dex_bin.install()), "serve", str(config)], stdout=log, stderr=log
            )
        wait_for(self._dex_ready, 30, "Dex to serve its discovery document")
        self.server.start()

    def _dex_ready(self) -> bool:
        import urllib.request

        assert self.dex is not None and self.dex.poll() is None, self.dex_log()
        url = self.issuer + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def dex_log(self) -> str:
        return (self.tmp / "dex.log").read_text(errors="replace")[-5000:]

    def node(self, name: str) -> TailscaleNode:
        node = TailscaleNode(name, self.tmp / "nodes")
        node.extra_env = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}
        node.start()
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.server.stop()
        if self.dex is not None:
            self.dex.terminate()
            self.dex.wait(10)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if not Path(CHROMIUM).exists() or shutil.which("go") is None:
        pytest.skip("needs Debian's chromium and Go (make test-tools)")
    net = Net(tmp_path_factory.mktemp("oidc"))
    net.start()
    try:
        yield net
    finally:
        net.stop()


def browser_login(url: str, tmp: Path, email: str, groups: str) -> str:
    """Open the login URL in headless Chromium as `email` with `groups` (the headers a
    proxy in front of Dex would set), click through Dex, and return the last page's text."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync",
            ],
        )  # fmt: skip
        try:
            context = browser.new_context(
                extra_http_headers={
                    "X-Remote-User": email,
                    "X-Remote-User-Email": email,
                    "X-Remote-Group": groups,
                }
            )
            page = context.new_page()
            page.goto(url)
            page.get_by_text("Log in with Proxy").click()
            page.wait_for_url("**/oidc/callback**")
            return str(page.inner_text("body"))
        finally:
            browser.close()


def test_an_oidc_login_through_the_browser_joins_with_peers_and_groups(net: Net) -> None:
    bob1 = net.node("bob1")
    bob1.up(net.server, net.server.create_key("bob"))
    laptop = net.node("laptop")
    up = Up(laptop, net.server)
    text = browser_login(up.url(), net.tmp, "alice@example.com", "staff,eng")
    assert "Device approved" in text and "alice@example.com" in text
    assert up.finish() == 0, up.output
    status = laptop.status()
    assert status["BackendState"] == "Running"
    assert status["User"][str(status["Self"]["UserID"])]["LoginName"] == "alice@example.com"
    # group:eng came from the identity provider: it lets alice and bob see each other.
    wait_for(lambda: "bob1" in laptop.peer_names(), 30, "laptop to see bob1")

    wait_for(lambda: "laptop" in bob1.peer_names(), 30, "bob1 to see laptop")

    # The key expires; the node logs in again through the provider, now without the eng
    # group: connected bob1 loses laptop, with no commit. Once more with eng: it is back.
    for groups, visible in (("staff", False), ("staff,eng", True)):
        net.server.admin("nodes", "expire", "laptop")
        wait_for(lambda: laptop.status()["BackendState"] == "NeedsLogin", 30, "laptop expired")
        again = Up(laptop, net.server)
        text = browser_login(again.url(), net.tmp, "alice@example.com", groups)
        assert "Device approved" in text
        assert again.finish() == 0, again.output
        wait_for(
            lambda: ("laptop" in bob1.peer_names()) == visible,  # noqa: B023 - used at once
            30,
            f"bob1 to {'see' if visible else 'lose'} laptop after a login with {groups}",
        )
        wait_for(
            lambda: ("bob1" in laptop.peer_names()) == visible,  # noqa: B023 - used at once
            30,
            f"laptop to {'see' if visible else 'lose'} bob1",
        )


def refused(net: Net, name: str, email: str, groups: str) -> tuple[str, Up]:
    """A login from a new node as `email` with `groups`, refused: the page's text and the
    client's `tailscale up`, which ended with an error."""
    up = Up(net.node(name), net.server)
    text = browser_login(up.url(), net.tmp, email, groups)
    assert "Login refused" in text
    assert up.finish() != 0
    return text, up


def test_an_identity_of_another_domain_is_refused_with_a_page(net: Net) -> None:
    text, up = refused(net, "desk", "carol@other.org", "staff")
    assert "carol@other.org" in text and "other.org" in text
    assert "other.org" in up.output
    assert "check allowed_domains failed for carol@other.org" in net.server.log()


def test_an_identity_not_in_git_is_refused_by_default_with_a_page_naming_it(net: Net) -> None:
    text, _ = refused(net, "phone", "dave@example.com", "staff")
    assert "dave@example.com is not a user of this tailnet" in text
    assert "check unknown_user failed for dave@example.com" in net.server.log()
    assert "dave@example.com" not in net.server.admin("users", "list")


def test_an_identity_missing_the_required_group_is_refused_with_a_page(net: Net) -> None:
    text, _ = refused(net, "tablet", "bob@example.com", "eng")
    assert "none of the groups" in text
    assert "check allowed_groups failed for bob@example.com" in net.server.log()
