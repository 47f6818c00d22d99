"""ACME without a CA: when to renew, how failures back off, what the HTTP-01
answer looks like, and that a new certificate lands where the listener
reads it. The whole exchange with a real CA (pebble) is in
tests/e2e/test_tls.py."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from server.tls.acme import (
    CHECK_MAX,
    AcmeManager,
    AcmeSettings,
    next_attempt,
    renewal_due,
    retry_delay,
)
from server.tls.acme_http import ChallengeResponder
from server.tls.acme_issue import _csr
from server.tls.certs import CertificateInfo, certificate_info
from tests.e2e.harness import TestCA

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
LOG = logging.getLogger("test-acme")


def cert(
    days: float, *, names: tuple[str, ...] = ("ts.example.com",), age: float = 0
) -> CertificateInfo:
    start = NOW - timedelta(days=age)
    return CertificateInfo(names, start, start + timedelta(days=days))


def test_a_90_day_certificate_is_renewed_30_days_before_it_expires() -> None:
    info = cert(90)
    assert renewal_due(info, "ts.example.com", NOW) == NOW + timedelta(days=60)


def test_a_six_day_certificate_is_renewed_two_days_before_it_expires() -> None:
    assert renewal_due(cert(6), "ts.example.com", NOW) == NOW + timedelta(days=4)


@pytest.mark.parametrize(
    "info",
    [
        None,
        CertificateInfo(("ts.example.com",), NOW, NOW + timedelta(days=7), self_signed=True),
        cert(90, names=("old.example.com",)),
        cert(90, age=89),
    ],
    ids=["none", "stand-in", "other name", "nearly expired"],
)
def test_a_missing_stand_in_misnamed_or_old_certificate_is_replaced_now(
    info: CertificateInfo | None,
) -> None:
    assert renewal_due(info, "ts.example.com", NOW) <= NOW


def test_failures_back_off_from_a_minute_to_six_hours() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert delays[-1] == timedelta(hours=6)
    assert delays == sorted(delays)
    assert retry_delay(10_000) == timedelta(hours=6)


def test_the_next_attempt_is_the_retry_time_else_renewal_but_checked_at_least_twice_a_day() -> None:
    info = cert(90)
    assert next_attempt(info, "ts.example.com", NOW, NOW + timedelta(minutes=4)) == NOW + timedelta(
        minutes=4
    )
    assert next_attempt(info, "ts.example.com", NOW, None) == NOW + CHECK_MAX
    assert next_attempt(cert(90, age=70), "ts.example.com", NOW, None) <= NOW


def test_each_ca_keeps_its_own_account(tmp_path: Path) -> None:
    le = AcmeSettings(
        "ts.example.com", None, "https://acme-v02.api.letsencrypt.org/directory", tmp_path
    )
    staging = AcmeSettings(
        "ts.example.com", None, "https://acme-staging-v02.api.letsencrypt.org/directory", tmp_path
    )
    assert le.account_key != staging.account_key
    assert le.account_dir.parent == tmp_path
    assert le.cert_path.name == "ts.example.com.crt" and le.key_path.name == "ts.example.com.key"


async def call(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def inner_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def test_http01_answers_are_the_bare_key_authorization_and_nothing_else_leaks() -> None:
    responder = ChallengeResponder()
    app = responder.wrap(inner_app)
    responder.add("tok-1", "tok-1.thumbprint")
    assert asyncio.run(call(app, "/.well-known/acme-challenge/tok-1")) == (200, b"tok-1.thumbprint")
    assert asyncio.run(call(app, "/.well-known/acme-challenge/tok-2"))[0] == 404
    assert asyncio.run(call(app, "/health")) == (299, b"inner")
    responder.remove("tok-1")
    assert asyncio.run(call(app, "/.well-known/acme-challenge/tok-1"))[0] == 404


def test_the_csr_asks_for_exactly_the_domain(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for name, kind in (("ts.example.com", x509.DNSName), ("192.0.2.7", x509.IPAddress)):
        csr = x509.load_pem_x509_csr(_csr(name, key))
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(v) for v in san.get_values_for_type(kind)] == [name]


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.ca = TestCA(tmp / "ca")
        self.settings = AcmeSettings(
            "ts.example.com", "me@example.com", "https://ca.test/dir", tmp / "acme"
        )
        self.reloads = 0
        self.fail_with: Exception | None = None
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.manager = AcmeManager(
            self.settings,
            ChallengeResponder(),
            on_new_certificate=self.reloaded,
            log=LOG,
            clock=lambda: self.now,
            issue=self.issue,
        )

    def reloaded(self) -> None:
        self.reloads += 1

    def issue(self, settings: AcmeSettings, responder: ChallengeResponder) -> tuple[bytes, bytes]:
        if self.fail_with is not None:
            raise self.fail_with
        cert_path, key_path = self.ca.issue("issued", [settings.domain], days=90)
        return cert_path.read_bytes(), key_path.read_bytes()


def test_the_listener_starts_with_a_stand_in_that_is_replaced_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    cert_path, key_path = h.manager.prepare()
    info = certificate_info(cert_path.read_bytes())
    assert info.self_signed and info.covers("ts.example.com") and key_path.exists()
    assert renewal_due(h.manager.current(), "ts.example.com", h.now) <= h.now
    assert h.manager.prepare() == (cert_path, key_path)  # an existing pair is kept
    assert certificate_info(cert_path.read_bytes()) == info


def test_an_issued_certificate_is_stored_privately_and_loaded(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.manager.prepare()
    assert asyncio.run(h.manager.renew_once())
    info = h.manager.current()
    assert info is not None and not info.self_signed
    assert h.reloads == 1
    assert h.settings.key_path.stat().st_mode & 0o077 == 0
    assert renewal_due(info, "ts.example.com", h.now) > h.now + timedelta(days=50)


def test_a_failed_order_keeps_the_old_certificate_and_retries_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path)
    h.manager.prepare()
    before = h.settings.cert_path.read_bytes()
    h.fail_with = RuntimeError(
        "the CA could not validate ts.example.com over HTTP-01 (connection refused)"
    )
    with caplog.at_level(logging.ERROR, logger="test-acme"):
        assert not asyncio.run(h.manager.renew_once())
        assert not asyncio.run(h.manager.renew_once())
    assert "no certificate for ts.example.com: the CA could not validate" in caplog.text
    assert h.manager.retry_at == h.now + timedelta(minutes=2)
    assert h.settings.cert_path.read_bytes() == before and h.reloads == 0
    h.fail_with = None
    assert asyncio.run(h.manager.renew_once())
    assert h.manager.retry_at is None and h.manager.failures == 0


def test_run_renews_when_due_and_then_sleeps(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.manager.prepare()

    async def scenario() -> None:
        task = asyncio.create_task(h.manager.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if h.reloads:
                break
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(scenario())
    assert h.reloads == 1  # renewed once, then asleep until the next check
