"""The control port's TLS as the server runs it: certificate files (reloaded
when they change and on SIGHUP), or a certificate kept by ACME (HTTP-01)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from server.tls.acme_http import ChallengeResponder

if TYPE_CHECKING:  # cryptography.x509 and the ACME client: loaded only with TLS configured
    from server.tls.acme import AcmeManager, AcmeSettings
    from server.tls.certs import ReloadingContext

__all__ = ["ServingTls"]


class ServingTls:
    """`start()` gives the listener its SSLContext (None: plain HTTP); `tasks()`
    keep the certificate current. TlsError (from start) is for people."""

    def __init__(
        self,
        *,
        cert: Path | None,
        key: Path | None,
        acme: AcmeSettings | None,
        responder: ChallengeResponder,
        server_url: str,
        log: logging.Logger,
        clock: Callable[[], datetime],
    ) -> None:
        self._cert, self._key = cert, key
        self._server_url = server_url
        self._log = log
        self.files: ReloadingContext | None = None
        self.acme: AcmeManager | None = None
        if acme is not None:
            from server.tls.acme import AcmeManager

            self.acme = AcmeManager(
                acme, responder, on_new_certificate=self.reload, log=log, clock=clock
            )

    def start(self) -> ssl.SSLContext | None:
        cert, key = self.acme.prepare() if self.acme is not None else (self._cert, self._key)
        if cert is None or key is None:
            return None
        from server.tls.certs import ReloadingContext

        self.files = ReloadingContext(cert, key, log=self._log)
        host = urlsplit(self._server_url).hostname or ""
        if not self.files.info.covers(host) and self.acme is None:
            # Clients check the name for /key and for DERP: they would fail later, obscurely.
            self._log.warning(
                "TLS: the certificate is for %s, not for %s from the server URL; "
                "clients will refuse it",
                ", ".join(self.files.info.names) or "no names",
                host,
            )
        return self.files.context

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """Watching the files for a renewal in place (certbot, cert-manager…)."""
        if self.files is None:
            return []
        from server.tls.certs import watch_certificate_files

        return [watch_certificate_files(self.files)]

    def reload(self) -> None:
        """Read the certificate files again (SIGHUP, a new ACME certificate)."""
        if self.files is not None:
            self.files.reload()
