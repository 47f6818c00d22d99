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
    RELAY_ONLY,
    Member,
    Tailnet,
    TailscaleNode,
    TestCA,
    free_port,
    running_tailnet,
    tailnet_fixture,
    wait_for,
)

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"


net = tailnet_fixture({"users.yaml": USERS}, tls=True)


def certificate_files(net: Tailnet) -> tuple[Path, Path]:
    """The server's certificate and key, as the tailnet fixture issued them."""
    assert net.ca is not None
    return net.ca.dir / "server.pem", net.ca.dir / "server.key"


def join_two_and_ping(
    net: Tailnet, first: str, second: str, via: str | None = None
) -> TailscaleNode:
    """Log two fresh clients in; `first` pings `second` through DERP over TLS."""
    a, b = net.join([Member(first), Member(second)], via=via)
    for node in (a, b):
        assert node.status()["BackendState"] == "Running", net.diagnose()
    wait_for(lambda: a.peer_names() == {second}, 20, f"{first} to see {second}")
    out = a.ping(second)
    assert f"pong from {second}" in out and "via DERP(tailnetd)" in out, out + net.diagnose()
    return a


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


def test_key_is_served_over_tls_that_verifies_against_the_ca(net: Tailnet) -> None:
    key = json.loads(https_get(net.server.url + "/key?v=133", net.ca.cert_path))
    assert key["publicKey"].startswith("mkey:")


def test_clients_log_in_over_https_and_relay_through_derp_over_tls(net: Tailnet) -> None:
    a = join_two_and_ping(net, "tls1", "tls2")
    assert a.status()["Self"].get("Relay") == "tailnetd"


def test_the_derp_map_points_at_the_certificate_name_and_verifies(net: Tailnet) -> None:
    derp_map = json.loads(net.nodes["tls1"].cli("debug", "derp-map").stdout)
    (node,) = derp_map["Regions"]["999"]["Nodes"]
    assert node["HostName"] == "127.0.0.1" and node["DERPPort"] == net.server.port, node
    assert not node.get("InsecureForTests"), node


def test_a_renewed_certificate_is_served_after_sighup(net: Tailnet) -> None:
    assert net.ca is not None
    cert, key = certificate_files(net)
    before = served_certificate(net.server.port)
    fresh_cert, fresh_key = net.ca.issue("renewed", ["127.0.0.1", "localhost"])
    cert.write_bytes(fresh_cert.read_bytes())
    key.write_bytes(fresh_key.read_bytes())
    assert net.server.proc is not None
    net.server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: served_certificate(net.server.port) != before, 10, "the renewed certificate")
    # Clients keep working across the swap.
    assert "pong from tls2" in net.nodes["tls1"].ping("tls2", count=5)


def test_a_broken_certificate_file_does_not_replace_the_working_one(net: Tailnet) -> None:
    cert, _ = certificate_files(net)
    before = served_certificate(net.server.port)
    good = cert.read_bytes()
    cert.write_text("not a certificate\n")
    assert net.server.proc is not None
    net.server.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "keeping the current certificate" in net.server.log(),
        10,
        "the reload to be refused",
    )
    assert served_certificate(net.server.port) == before
    cert.write_bytes(good)


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
def acme_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Tailnet, Pebble]]:
    tmp = tmp_path_factory.mktemp("acme")
    http01_port = free_port()
    pebble_ca = TestCA(tmp / "pebble-ca")
    pebble = Pebble(tmp, pebble_ca, http01_port)
    root = tmp / "pebble-root.pem"
    root.write_bytes(pebble.root)  # made anew by each pebble run

    def use_acme(net: Tailnet) -> None:
        """The server gets its certificate from pebble instead of the fixture's CA."""
        net.server.extra = [
            "--acme-domain", "localhost",
            "--acme-directory", pebble.directory,
            "--acme-http-listen", f"127.0.0.1:{http01_port}",
            "--acme-email", "admin@example.com",
        ]  # fmt: skip
        net.server.ca_file = root  # healthy only once the CA's certificate is served
        net.server.host = "localhost"
        net.server.extra_env = {"REQUESTS_CA_BUNDLE": str(pebble_ca.cert_path)}

    clients = {**RELAY_ONLY, "SSL_CERT_FILE": str(root)}
    try:
        with running_tailnet(
            tmp, {"users.yaml": USERS}, tls=True, node_env=clients, prepare=use_acme
        ) as net:
            yield net, pebble
    finally:
        pebble.stop()


def test_acme_gets_a_certificate_that_real_clients_accept(
    acme_net: tuple[Tailnet, Pebble],
) -> None:
    net, _ = acme_net
    served = x509.load_der_x509_certificate(served_certificate(net.server.port, "localhost"))
    assert "Pebble" in served.issuer.rfc4514_string(), served.issuer
    join_two_and_ping(net, "acme1", "acme2")


def test_the_acme_certificate_and_account_are_cached_for_restarts(
    acme_net: tuple[Tailnet, Pebble],
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


def nginx_command(net: Tailnet, port: int, upstream: int) -> list[str]:
    binary = need("nginx", "nginx-light")
    cert, key = certificate_files(net)
    site = edit(
        (DOCS / "nginx.conf").read_text(),
        ("/etc/letsencrypt/live/tailnet.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/tailnet.example.com/privkey.pem", str(key)),
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


def caddy_command(net: Tailnet, port: int, upstream: int) -> list[str]:
    binary = need("caddy", "caddy")
    cert, key = certificate_files(net)
    site = edit(
        (DOCS / "Caddyfile").read_text(),
        ("tailnet.example.com {", f"https://localhost:{port} {{\n\ttls {cert} {key}"),
        ("reverse_proxy 127.0.0.1:8080\n", f"reverse_proxy 127.0.0.1:{upstream}\n"),
    )
    (net.tmp / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n" + site)
    return [binary, "run", "--config", str(net.tmp / "Caddyfile"), "--adapter", "caddyfile"]


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_clients_reach_tailnetd_through_the_example_reverse_proxy_configs(
    proxy: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    public = f"https://localhost:{port}"

    def behind_the_proxy(net: Tailnet) -> None:
        """Plain HTTP behind the proxy, which serves the fixture's certificate."""
        net.server.extra = ["--server-url", public]
        net.server.ca_file = None

    with running_tailnet(
        tmp_path_factory.mktemp(proxy), {"users.yaml": USERS}, tls=True, prepare=behind_the_proxy
    ) as net:
        assert net.ca is not None
        command = (nginx_command if proxy == "nginx" else caddy_command)(net, port, net.server.port)
        with open(net.tmp / "proxy.log", "ab") as log:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(net.tmp)},
            )
        try:
            wait_for(lambda: https_get(public + "/health", net.ca.cert_path), 20, proxy)
            a = join_two_and_ping(net, f"{proxy}1", f"{proxy}2", via=public)
            (node,) = json.loads(a.cli("debug", "derp-map").stdout)["Regions"]["999"]["Nodes"]
            assert (node["HostName"], node["DERPPort"]) == ("localhost", port), node
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- {proxy} ---\n{(net.tmp / 'proxy.log').read_text()[-3000:]}"
            ) from None
        finally:
            proc.terminate()
            proc.wait(10)
