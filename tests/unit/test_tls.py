"""The TLS listener's certificate: what it accepts, what it refuses, and that
a renewed pair replaces the served one without a restart."""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.tls.certs import (
    ReloadingContext,
    TlsError,
    certificate_info,
    name_matches,
    write_self_signed,
)
from tests.e2e.harness import TestCA

LOG = logging.getLogger("test-tls")


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> bytes:
    """A full in-memory TLS handshake; returns the DER certificate the client saw."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c_done = s_done = False
    for _ in range(20):
        for done, conn in ((c_done, c), (s_done, s)):
            if not done:
                try:
                    conn.do_handshake()
                except ssl.SSLWantReadError:
                    continue
                if conn is c:
                    c_done = True
                else:
                    s_done = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if c_done and s_done:
            break
    assert c_done and s_done, "handshake did not finish"
    assert c.selected_alpn_protocol() in (None, "http/1.1")
    der = c.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


def client_for(ca: TestCA) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca.cert_path)
    context.set_alpn_protocols(["h2", "http/1.1"])  # what Go's HTTP client offers
    return context


def test_the_listener_serves_a_certificate_clients_verify(ca: TestCA) -> None:
    cert, key = ca.issue("srv", ["ts.example.com", "127.0.0.1"])
    tls = ReloadingContext(cert, key, log=LOG)
    assert tls.info.names == ("ts.example.com", "127.0.0.1")
    handshake(tls.context, client_for(ca), "ts.example.com")
    handshake(tls.context, client_for(ca), "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls.context, client_for(ca), "other.example.com")


def test_a_renewed_pair_is_served_after_reload(ca: TestCA) -> None:
    cert, key = ca.issue("srv", ["ts.example.com"])
    tls = ReloadingContext(cert, key, log=LOG)
    before = handshake(tls.context, client_for(ca), "ts.example.com")
    assert not tls.changed()
    new_cert, new_key = ca.issue("new", ["ts.example.com"])
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    assert tls.changed()
    assert tls.reload_if_changed()
    assert not tls.reload_if_changed()
    assert handshake(tls.context, client_for(ca), "ts.example.com") != before


@pytest.mark.parametrize("damage", ["garbage cert", "other key", "missing key"])
def test_a_bad_pair_never_replaces_the_served_one(
    ca: TestCA, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = ca.issue("srv", ["ts.example.com"])
    tls = ReloadingContext(cert, key, log=LOG)
    before = handshake(tls.context, client_for(ca), "ts.example.com")
    if damage == "garbage cert":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    elif damage == "other key":
        _, other_key = ca.issue("other", ["ts.example.com"])
        cert.write_bytes(ca.issue("renewed", ["ts.example.com"])[0].read_bytes())
        key.write_bytes(other_key.read_bytes())
    else:
        key.unlink()
    with caplog.at_level(logging.ERROR, logger="test-tls"):
        assert not tls.reload()
    assert "keeping the current certificate" in caplog.text
    assert handshake(tls.context, client_for(ca), "ts.example.com") == before


def test_startup_errors_name_the_file_in_words(ca: TestCA, tmp_path: Path) -> None:
    cert, key = ca.issue("srv", ["ts.example.com"])
    _, other_key = ca.issue("other", ["ts.example.com"])
    with pytest.raises(TlsError, match="(?i)no such file"):
        ReloadingContext(tmp_path / "missing.pem", key, log=LOG)
    with pytest.raises(TlsError, match=r"key.*certificate's"):
        ReloadingContext(cert, other_key, log=LOG)
    (tmp_path / "junk.pem").write_text("hello\n")
    with pytest.raises(TlsError, match="junk.pem: no PEM certificate") as info:
        ReloadingContext(tmp_path / "junk.pem", key, log=LOG)
    assert "Error" not in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("ts.example.com", "ts.example.com", True),
        ("TS.Example.com", "ts.example.COM.", True),
        ("*.example.com", "ts.example.com", True),
        ("*.example.com", "a.ts.example.com", False),
        ("*.example.com", "example.com", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("::1", "[::1]", True),
        ("*.0.0.1", "127.0.0.1", False),
    ],
)
def test_name_matching_follows_the_client(pattern: str, host: str, ok: bool) -> None:
    assert name_matches(pattern, host) is ok


def test_the_stand_in_certificate_covers_the_names_and_loads(tmp_path: Path) -> None:
    now = datetime(2030, 1, 2, tzinfo=UTC)
    write_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["ts.example.com", "127.0.0.1"], now)
    info = certificate_info((tmp_path / "c.pem").read_bytes())
    assert info.covers("ts.example.com") and info.covers("127.0.0.1")
    assert info.not_before < now < info.not_after and info.self_signed
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    ReloadingContext(tmp_path / "c.pem", tmp_path / "k.pem", log=LOG)
