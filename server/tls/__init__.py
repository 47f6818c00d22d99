"""TLS for the control port: certificate files reloaded on change, and
certificates from an ACME CA (HTTP-01).

The package's root is light: cryptography.x509 and the ACME client load only
when a certificate is configured (`serving.py`)."""

__all__ = ["TlsError"]


class TlsError(Exception):
    """A certificate or key that cannot be used; the message is for people."""
