"""One certificate order against an ACME CA (RFC 8555), HTTP-01 only.

The protocol work (JWS, nonces, polling, finalising) is certbot's `acme`
library; this module decides what to ask for and turns its failures into
sentences. It blocks on the network: callers run it in a thread.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from server.tls.certs import write_private

__all__ = ["AcmeError", "ChallengeSink", "Issued", "issue_certificate"]

USER_AGENT = "tailnetd"


class AcmeError(Exception):
    """The CA did not give us a certificate; the message is for people."""


class ChallengeSink(Protocol):
    """Where HTTP-01 answers go while the CA checks them (a ChallengeResponder)."""

    def add(self, token: str, key_authorization: str) -> None: ...

    def remove(self, token: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Issued:
    chain_pem: bytes  # leaf first, then intermediates
    key_pem: bytes


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _account_key(path: Path) -> JWKEC:
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise AcmeError(f"{path} is not an ECDSA key; move it away to create a new account")
        return JWKEC(key=loaded)
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(path, _private_pem(key))
    return JWKEC(key=key)


def _describe(exc: Exception) -> str:
    if isinstance(exc, messages.Error):
        return exc.detail or exc.description or str(exc.typ)
    return str(exc)


def _register(acme: client.ClientV2, email: str | None) -> None:
    registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:
        # The key already has an account (restart, or a lost cache of its URL).
        acme.net.account = messages.RegistrationResource(
            uri=exc.location, body=messages.Registration()
        )


def _csr(domain: str, key_pem: bytes) -> bytes:
    try:
        ip = ipaddress.ip_address(domain)
    except ValueError:
        return crypto_util.make_csr(key_pem, [domain])
    return crypto_util.make_csr(key_pem, ipaddrs=[ip])


def _failed_validations(exc: errors.ValidationError) -> str:
    reasons = []
    for authz in exc.failed_authzrs:
        for challb in authz.body.challenges:
            if challb.error is not None:
                reasons.append(f"{authz.body.identifier.value}: {_describe(challb.error)}")
    return "; ".join(reasons) or "no reason given"


def issue_certificate(
    *,
    directory_url: str,
    domain: str,
    email: str | None,
    account_key_path: Path,
    publish: ChallengeSink,
    log: logging.Logger,
) -> Issued:
    """Register (or find) the account, prove control of `domain`, get a chain."""
    jwk = _account_key(account_key_path)
    net = client.ClientNetwork(jwk, alg=ES256, user_agent=USER_AGENT)
    tokens: list[str] = []
    try:
        directory = client.ClientV2.get_directory(directory_url, net)
        acme = client.ClientV2(directory, net)
        _register(acme, email)
        cert_key = ec.generate_private_key(ec.SECP256R1())
        key_pem = _private_pem(cert_key)
        order = acme.new_order(_csr(domain, key_pem))
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # proven recently; the CA reuses it
            challb = next(
                (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None
            )
            if challb is None:
                raise AcmeError(
                    f"the CA offers no HTTP-01 challenge for {authz.body.identifier.value}"
                )
            response, validation = challb.response_and_validation(jwk)
            token = challb.chall.encode("token")
            publish.add(token, validation)
            tokens.append(token)
            acme.answer_challenge(challb, response)
        log.info(
            "ACME: asked %s to check http://%s/.well-known/acme-challenge/", directory_url, domain
        )
        order = acme.poll_and_finalize(order)
    except errors.ValidationError as exc:
        raise AcmeError(
            f"the CA could not validate {domain} over HTTP-01 ({_failed_validations(exc)})"
        ) from None
    except errors.TimeoutError:
        raise AcmeError(f"the CA did not finish validating {domain} in time") from None
    except messages.Error as exc:
        raise AcmeError(f"the CA refused: {_describe(exc)}") from None
    except (errors.Error, requests.RequestException, ValueError) as exc:
        raise AcmeError(f"talking to {directory_url} failed: {exc}") from None
    finally:
        for token in tokens:
            publish.remove(token)
    if not order.fullchain_pem:
        raise AcmeError("the CA finished the order without a certificate")
    return Issued(order.fullchain_pem.encode(), key_pem)
