"""TLS for the front door: a server context that can take a new certificate
while running, and the certificate facts the rest of the server checks.

Python's `SSLContext.load_cert_chain` may be called again on a live context;
handshakes that start afterwards use the new pair. A bad pair must never
replace a good one, so every reload is first tried on a throw-away context.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.datadir import write_private
from server.tls import TlsError

__all__ = [
    "CertificateInfo",
    "ReloadingContext",
    "TlsError",
    "certificate_info",
    "name_matches",
    "watch_certificate_files",
    "write_private",
    "write_self_signed",
]

# The Go clients offer h2 and http/1.1; the front door speaks HTTP/1.1 only,
# and /ts2021 and /derp are HTTP/1.1 upgrades.
ALPN = ["http/1.1"]
CHECK_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    names: tuple[str, ...]  # DNS names and IP addresses from subjectAltName
    not_before: datetime
    not_after: datetime
    self_signed: bool = False  # a stand-in, never something a client trusts

    def covers(self, host: str) -> bool:
        return any(name_matches(pattern, host) for pattern in self.names)


def name_matches(pattern: str, host: str) -> bool:
    """RFC 6125 matching as Go's crypto/tls does it: exact, or one `*.` label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".").strip("[]")
    if pattern == host:
        return True
    if pattern.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == pattern[2:] and not _is_ip(host)
    return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def certificate_info(pem: bytes) -> CertificateInfo:
    """Facts about the first (leaf) certificate of a PEM chain."""
    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        raise TlsError("no PEM certificate in it") from None
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names += san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return CertificateInfo(
        tuple(names),
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        self_signed=cert.issuer == cert.subject,
    )


def _read_info(cert: Path) -> CertificateInfo:
    try:
        pem = cert.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {cert}: {exc.strerror}") from None
    try:
        return certificate_info(pem)
    except TlsError as exc:
        raise TlsError(f"{cert}: {exc}") from None


def _load_pair(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsError(f"cannot read {exc.filename}: no such file") from None
    except PermissionError as exc:
        raise TlsError(f"cannot read {exc.filename}: permission denied") from None
    except ssl.SSLError as exc:
        raise TlsError(
            f"cannot use certificate {cert} with key {key}: {exc.reason or exc.strerror or exc}"
            " (is the key the certificate's, and are both PEM?)"
        ) from None


def _new_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(ALPN)
    return context


class ReloadingContext:
    """A server SSLContext bound to a certificate and key file pair."""

    def __init__(self, cert: Path, key: Path, *, log: logging.Logger) -> None:
        self.cert, self.key = cert, key
        self._log = log
        self._stamp = self._file_stamp()
        self.info = _read_info(cert)
        self.context = _new_context()
        _load_pair(self.context, cert, key)

    def _file_stamp(self) -> tuple[int, ...]:
        try:
            c, k = self.cert.stat(), self.key.stat()
        except OSError:
            return ()
        return (c.st_mtime_ns, c.st_size, c.st_ino, k.st_mtime_ns, k.st_size, k.st_ino)

    def reload(self) -> bool:
        """Load the files again; on any problem keep serving the old pair."""
        stamp = self._file_stamp()
        try:
            info = _read_info(self.cert)
            _load_pair(_new_context(), self.cert, self.key)
        except TlsError as exc:
            self._log.error("TLS: keeping the current certificate: %s", exc)
            return False
        _load_pair(self.context, self.cert, self.key)
        self._stamp, self.info = stamp, info
        self._log.info(
            "TLS: now serving %s for %s, valid until %s",
            self.cert,
            ", ".join(info.names) or "(no names)",
            info.not_after.date(),
        )
        return True

    def changed(self) -> bool:
        return self._file_stamp() != self._stamp

    def reload_if_changed(self) -> bool:
        # A renewal tool may write the key and the certificate a moment apart;
        # the pair is checked before use, so a half-written pair is only retried.
        return self.changed() and self.reload()


async def watch_certificate_files(
    context: ReloadingContext, interval: float = CHECK_INTERVAL
) -> None:
    """Pick up certificates renewed in place (certbot, cert-manager, acme.sh)."""
    while True:
        await asyncio.sleep(interval)
        context.reload_if_changed()


def write_self_signed(cert: Path, key: Path, names: Iterable[str], now: datetime) -> None:
    """A short-lived stand-in so the listener can start before a CA answers."""
    private = ec.generate_private_key(ec.SECP256R1())
    names = list(names)
    alt: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names
    ]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tailnetd temporary certificate")])
    built = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(private, hashes.SHA256())
    )
    write_private(
        key,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(cert, built.public_bytes(serialization.Encoding.PEM))
