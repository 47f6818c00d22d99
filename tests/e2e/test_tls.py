"""tailnetd behind its own TLS listener, joined by real tailscale 1.96.4
clients that verify it as they would on the internet: no plain-HTTP DERP,
no InsecureForTests, only a CA of our own in SSL_CERT_FILE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.harness import (
    ServerProcess,
    TailnetRepo,
    TailscaleNode,
    TestCA,
    free_port,
    in_parallel,
    wait_for,
)

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"


class TlsTailnet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = TestCA(tmp / "ca")
        self.cert, self.key = self.ca.issue("server", ["127.0.0.1", "localhost"])
        self.repo = TailnetRepo(tmp / "repo", {"users.yaml": USERS})
        self.server = ServerProcess(
            self.repo.path,
            tmp / "data",
            tmp / "tailnetd.log",
            extra=["--tls-cert", str(self.cert), "--tls-key", str(self.key)],
            ca_file=self.ca.cert_path,
        )
        self.nodes: list[TailscaleNode] = []
        self.ca_for_clients = self.ca.cert_path
        self.login_url: str | None = None  # a reverse proxy's URL, when there is one

    def node(self, name: str) -> TailscaleNode:
        node = TailscaleNode(name, self.tmp / "nodes", derp_over_http=False)
        node.extra_env = {
            "SSL_CERT_FILE": str(self.ca_for_clients),
            "TS_DEBUG_ALWAYS_USE_DERP": "1",
        }
        self.nodes.append(node)
        return node

    def join_two_and_ping(self, first: str, second: str) -> TailscaleNode:
        """Log two fresh clients in; `first` pings `second` through DERP over TLS."""
        key = self.server.create_key("alice", "--reusable")
        a, b = self.node(first), self.node(second)
        in_parallel(n.start for n in (a, b))
        try:
            in_parallel((lambda n=n: n.up(self.login_url or self.server, key)) for n in (a, b))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None
        for node in (a, b):
            assert node.status()["BackendState"] == "Running", self.diagnose()
        wait_for(lambda: a.peer_names() == {second}, 20, f"{first} to see {second}")
        out = a.ping(second)
        assert f"pong from {second}" in out and "via DERP(tailnetd)" in out, out + self.diagnose()
        return a

    def diagnose(self) -> str:
        parts = [f"--- tailnetd log ---\n{self.server.log()[-6000:]}"]
        parts += [f"--- {n.name} tailscaled log ---\n{n.log()[-4000:]}" for n in self.nodes]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTailnet]:
    net = TlsTailnet(tmp_path_factory.mktemp("tls"))
    net.server.start()
    try:
        yield net
    finally:
        for node in net.nodes:
            node.stop()
        net.server.stop()


def served_certificate(port: int, server_name: str | None = None) -> bytes:
    """The DER certificate the listener presents right now."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def https_get(url: str, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(url, context=context, timeout=5) as resp:
        return bytes(resp.read())


def test_key_is_served_over_tls_that_verifies_against_the_ca(net: TlsTailnet) -> None:
    key = json.loads(https_get(net.server.url + "/key?v=133", net.ca.cert_path))
    assert key["publicKey"].startswith("mkey:")


def test_clients_log_in_over_https_and_relay_through_derp_over_tls(net: TlsTailnet) -> None:
    a = net.join_two_and_ping("tls1", "tls2")
    assert a.status()["Self"].get("Relay") == "tailnetd"


def test_the_derp_map_points_at_the_certificate_name_and_verifies(net: TlsTailnet) -> None:
    derp_map = json.loads(net.nodes[0].cli("debug", "derp-map").stdout)
    (node,) = derp_map["Regions"]["999"]["Nodes"]
    assert node["HostName"] == "127.0.0.1" and node["DERPPort"] == net.server.port, node
    assert not node.get("InsecureForTests"), node


def test_a_renewed_certificate_is_served_after_sighup(net: TlsTailnet) -> None:
    before = served_certificate(net.server.port)
    fresh_cert, fresh_key = net.ca.issue("renewed", ["127.0.0.1", "localhost"])
    net.cert.write_bytes(fresh_cert.read_bytes())
    net.key.write_bytes(fresh_key.read_bytes())
    assert net.server.proc is not None
    net.server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: served_certificate(net.server.port) != before, 10, "the renewed certificate")
    # Clients keep working across the swap.
    assert "pong from tls2" in net.nodes[0].ping("tls2", count=5)


def test_a_broken_certificate_file_does_not_replace_the_working_one(net: TlsTailnet) -> None:
    before = served_certificate(net.server.port)
    good = net.cert.read_bytes()
    net.cert.write_text("not a certificate\n")
    assert net.server.proc is not None
    net.server.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "keeping the current certificate" in net.server.log(),
        10,
        "the reload to be refused",
    )
    assert served_certificate(net.server.port) == before
    net.cert.write_bytes(good)


# ACME: a certificate from Let's Encrypt's test CA, pebble (Debian package
# `pebble`), running on loopback; the CA really fetches the HTTP-01 answer.


class Pebble:
    def __init__(self, tmp: Path, ca: TestCA, http01_port: int) -> None:
        binary = shutil.which("pebble")
        if binary is None:
            message = "pebble is not installed (apt-get install pebble)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.port, self.mgmt_port = free_port(), free_port()
        cert, key = ca.issue("pebble", ["127.0.0.1", "localhost"])
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": http01_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (tmp / "pebble.json").write_text(json.dumps(config))
        self.log_path = tmp / "pebble.log"
        self.context = ssl.create_default_context(cafile=ca.cert_path)
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-config", str(tmp / "pebble.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_for(lambda: self._get(self.directory), 20, "pebble's directory")
        # The management listener, which hands out the root, starts on its own.
        self.root = wait_for(
            lambda: self._get(f"https://127.0.0.1:{self.mgmt_port}/roots/0"), 20, "pebble's root"
        )

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self.context, timeout=5) as resp:
            return bytes(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def acme_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsTailnet, Pebble]]:
    tmp = tmp_path_factory.mktemp("acme")
    http01_port = free_port()
    net = TlsTailnet(tmp)
    pebble = Pebble(tmp, net.ca, http01_port)
    try:
        root = tmp / "pebble-root.pem"
        root.write_bytes(pebble.root)  # made anew by each pebble run
        net.ca_for_clients = root
        net.server = ServerProcess(
            net.repo.path,
            tmp / "data",
            tmp / "tailnetd.log",
            extra=[
                "--acme-domain", "localhost",
                "--acme-directory", pebble.directory,
                "--acme-http-listen", f"127.0.0.1:{http01_port}",
                "--acme-email", "admin@example.com",
            ],
            ca_file=root,  # healthy only once the CA's certificate is served
            host="localhost",
        )  # fmt: skip
        net.server.extra_env = {"REQUESTS_CA_BUNDLE": str(net.ca.cert_path)}
        net.server.start()
        yield net, pebble
    finally:
        for node in net.nodes:
            node.stop()
        net.server.stop()
        pebble.stop()


def test_acme_gets_a_certificate_that_real_clients_accept(
    acme_net: tuple[TlsTailnet, Pebble],
) -> None:
    net, _ = acme_net
    served = x509.load_der_x509_certificate(served_certificate(net.server.port, "localhost"))
    assert "Pebble" in served.issuer.rfc4514_string(), served.issuer
    net.join_two_and_ping("acme1", "acme2")


def test_the_acme_certificate_and_account_are_cached_for_restarts(
    acme_net: tuple[TlsTailnet, Pebble],
) -> None:
    net, pebble = acme_net
    cached = {p.name for p in (net.server.data / "acme").rglob("*") if p.is_file()}
    assert {"account.key", "localhost.crt", "localhost.key"} <= cached, cached
    before = served_certificate(net.server.port, "localhost")
    net.server.stop()
    net.server.start()
    assert served_certificate(net.server.port, "localhost") == before
    assert net.server.log().count("ACME: requesting a certificate") == 1


# Behind a reverse proxy: the example configs from docs/examples/, made to
# listen on loopback with the test CA's certificate, and nothing else changed.

DOCS = Path(__file__).resolve().parents[2] / "docs" / "examples"


def edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert old in text, f"the example no longer has {old!r}: update this test with it"
        text = text.replace(old, new)
    return text


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found is None:
        message = f"{binary} is not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def nginx_command(net: TlsTailnet, port: int, upstream: int) -> list[str]:
    binary = need("nginx", "nginx-light")
    site = edit(
        (DOCS / "nginx.conf").read_text(),
        ("/etc/letsencrypt/live/tailnet.example.com/fullchain.pem", str(net.cert)),
        ("/etc/letsencrypt/live/tailnet.example.com/privkey.pem", str(net.key)),
        ("tailnet.example.com", "localhost"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{free_port()};"),
        ("http://127.0.0.1:8080", f"http://127.0.0.1:{upstream}"),
        ("/var/www/letsencrypt", str(net.tmp)),
    )
    site = "\n".join(line for line in site.splitlines() if "[::]" not in line)
    (net.tmp / "site.conf").write_text(site)
    temp = {k: net.tmp / k for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = [
        "daemon off;",
        "user root;" if os.geteuid() == 0 else "",
        f"pid {net.tmp / 'nginx.pid'};",
        f"error_log {net.tmp / 'nginx-error.log'};",
        "events {}",
        "http {",
        "  access_log off;",
        *(f"  {k}_temp_path {v};" for k, v in temp.items()),
        f"  include {net.tmp / 'site.conf'};",
        "}",
    ]
    (net.tmp / "nginx.conf").write_text("\n".join(main) + "\n")
    return [binary, "-c", str(net.tmp / "nginx.conf"), "-p", str(net.tmp)]


def caddy_command(net: TlsTailnet, port: int, upstream: int) -> list[str]:
    binary = need("caddy", "caddy")
    site = edit(
        (DOCS / "Caddyfile").read_text(),
        ("tailnet.example.com {", f"https://localhost:{port} {{\n\ttls {net.cert} {net.key}"),
        ("reverse_proxy 127.0.0.1:8080\n", f"reverse_proxy 127.0.0.1:{upstream}\n"),
    )
    (net.tmp / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n" + site)
    return [binary, "run", "--config", str(net.tmp / "Caddyfile"), "--adapter", "caddyfile"]


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_clients_reach_tailnetd_through_the_example_reverse_proxy_configs(
    proxy: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    net = TlsTailnet(tmp_path_factory.mktemp(proxy))
    port = free_port()
    public = f"https://localhost:{port}"
    net.server = ServerProcess(
        net.repo.path, net.tmp / "data", net.tmp / "tailnetd.log", extra=["--server-url", public]
    )
    command = (nginx_command if proxy == "nginx" else caddy_command)(net, port, net.server.port)
    net.login_url = public
    net.server.start()
    with open(net.tmp / "proxy.log", "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(net.tmp)}
        )
    try:
        wait_for(lambda: https_get(public + "/health", net.ca.cert_path), 20, proxy)
        a = net.join_two_and_ping(f"{proxy}1", f"{proxy}2")
        (node,) = json.loads(a.cli("debug", "derp-map").stdout)["Regions"]["999"]["Nodes"]
        assert (node["HostName"], node["DERPPort"]) == ("localhost", port), node
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n--- {proxy} ---\n{(net.tmp / 'proxy.log').read_text()[-3000:]}"
        ) from None
    finally:
        for n in net.nodes:
            n.stop()
        proc.terminate()
        proc.wait(10)
        net.server.stop()
