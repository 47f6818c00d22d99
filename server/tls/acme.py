"""Certificates from an ACME CA (Let's Encrypt by default), kept in the data
dir and renewed before they expire.

The listener must start before the CA can reach us, so a short-lived
self-signed stand-in is written when there is no certificate yet; clients
refuse it, and retry until the real one arrives a few seconds later.

Renewal follows the CA's own lifetime: at two thirds of it (day 60 of 90
for Let's Encrypt, day 4 of 6 for its short-lived certificates). Failures
back off exponentially so a misconfigured DNS name does not hammer the CA's
rate limits.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from server.tls.acme_http import ChallengeResponder
from server.tls.certs import (
    CertificateInfo,
    TlsError,
    certificate_info,
    write_private,
    write_self_signed,
)

__all__ = [
    "AcmeManager",
    "AcmeSettings",
    "next_attempt",
    "renewal_due",
    "retry_delay",
]

RETRY_FIRST = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=6)
CHECK_MAX = timedelta(hours=12)  # wake up at least this often, clocks jump


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    domain: str
    email: str | None
    directory: str
    cache: Path  # <data>/acme

    @property
    def account_dir(self) -> Path:
        """One directory per CA: an account belongs to the CA that created it."""
        parts = urlsplit(self.directory)
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.netloc}{parts.path}").strip("_")
        return self.cache / (slug or "ca")

    @property
    def account_key(self) -> Path:
        return self.account_dir / "account.key"

    @property
    def cert_path(self) -> Path:
        return self.account_dir / f"{self.domain}.crt"

    @property
    def key_path(self) -> Path:
        return self.account_dir / f"{self.domain}.key"


def renewal_due(info: CertificateInfo | None, domain: str, now: datetime) -> datetime:
    """When the certificate we hold should be replaced (`now` if already)."""
    if info is None or info.self_signed or not info.covers(domain):
        return now
    return info.not_after - (info.not_after - info.not_before) / 3


def retry_delay(failures: int) -> timedelta:
    """How long to wait after `failures` failed attempts in a row."""
    return min(RETRY_FIRST * (1 << min(max(failures - 1, 0), 16)), RETRY_MAX)


def next_attempt(
    info: CertificateInfo | None, domain: str, now: datetime, retry_at: datetime | None
) -> datetime:
    if retry_at is not None:
        return retry_at
    return min(renewal_due(info, domain, now), now + CHECK_MAX)


Issue = Callable[[AcmeSettings, ChallengeResponder], tuple[bytes, bytes]]


class AcmeManager:
    def __init__(
        self,
        settings: AcmeSettings,
        responder: ChallengeResponder,
        *,
        on_new_certificate: Callable[[], object],
        log: logging.Logger,
        clock: Callable[[], datetime],
        issue: Issue | None = None,
    ) -> None:
        self.settings = settings
        self.responder = responder
        self._on_new = on_new_certificate
        self._log = log
        self._clock = clock
        self._issue = issue or _issue_with_acme(log)
        self.failures = 0
        self.retry_at: datetime | None = None

    def prepare(self) -> tuple[Path, Path]:
        """A certificate/key pair the listener can start with."""
        s = self.settings
        if self.current() is None or not s.key_path.exists():
            write_self_signed(s.cert_path, s.key_path, [s.domain], self._clock())
        return s.cert_path, s.key_path

    def current(self) -> CertificateInfo | None:
        try:
            return certificate_info(self.settings.cert_path.read_bytes())
        except (OSError, TlsError):
            return None

    async def renew_once(self) -> bool:
        s = self.settings
        self._log.info("ACME: requesting a certificate for %s from %s", s.domain, s.directory)
        try:
            chain, key = await asyncio.to_thread(self._issue, s, self.responder)
            info = certificate_info(chain)
        except Exception as exc:  # noqa: BLE001 - every failure is retried later
            self.failures += 1
            self.retry_at = self._clock() + retry_delay(self.failures)
            self._log.error(
                "ACME: no certificate for %s: %s; retrying at %s",
                s.domain,
                exc,
                self.retry_at.isoformat(timespec="seconds"),
            )
            return False
        # Key first: a reload in between sees a mismatched pair, refuses it and retries.
        write_private(s.key_path, key)
        write_private(s.cert_path, chain)
        self.failures, self.retry_at = 0, None
        self._log.info("ACME: certificate for %s valid until %s", s.domain, info.not_after)
        self._on_new()
        return True

    async def run(self) -> None:
        while True:
            now = self._clock()
            when = next_attempt(self.current(), self.settings.domain, now, self.retry_at)
            if when > now:
                await asyncio.sleep((when - now).total_seconds())
                continue
            await self.renew_once()


def _issue_with_acme(log: logging.Logger) -> Issue:
    def issue(settings: AcmeSettings, responder: ChallengeResponder) -> tuple[bytes, bytes]:
        # Imported here: the ACME library is only needed when ACME is configured.
        from server.tls.acme_issue import issue_certificate

        issued = issue_certificate(
            directory_url=settings.directory,
            domain=settings.domain,
            email=settings.email,
            account_key_path=settings.account_key,
            publish=responder,
            log=log,
        )
        return issued.chain_pem, issued.key_pem

    return issue
