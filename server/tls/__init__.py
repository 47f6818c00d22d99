"""TLS for the control port: certificate files reloaded on change, and
certificates from an ACME CA (HTTP-01)."""
