"""OIDC login checks: state, nonce and PKCE per login; the ID token (signature, issuer,
audience, expiry); claims to a user with allow-lists and groups. Keys and tokens are
made here with joserfc (the JOSE library under authlib); time is passed in."""

from __future__ import annotations

import base64
import hashlib
import itertools
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from server.oidc import Flows, OidcSettings, Refusal, admit, verify_id_token
from server.oidc.identity import claim_groups
from server.oidc.settings import read_client_secret

NOW = 1_800_000_000.0
ISSUER = "http://127.0.0.1:5556/dex"
SETTINGS = OidcSettings(
    issuer=ISSUER, client_id="tailnetd", client_secret="s3cret", server_url="http://127.0.0.1:8080"
)
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
JWKS = {"keys": [KEY.as_dict(private=False)]}
USERS = {"alice@example.com": "alice", "bob@example.com": "bob"}


def token(key: Any = KEY, alg: str = "RS256", **claims: Any) -> str:
    body = {
        "iss": ISSUER,
        "sub": "u1",
        "aud": "tailnetd",
        "exp": int(NOW) + 300,
        "iat": int(NOW),
        "nonce": "n1",
        "email": "alice@example.com",
        "email_verified": True,
        **claims,
    }
    return jwt.encode({"alg": alg, "kid": "k1"}, body, key)


def check(tok: str, nonce: str = "n1", now: float = NOW) -> dict[str, Any]:
    return verify_id_token(tok, JWKS, SETTINGS, nonce, now)


def refused(tok: str, **kw: Any) -> str:
    with pytest.raises(Refusal) as exc:
        check(tok, **kw)
    return exc.value.check


# -- the ID token ----------------------------------------------------------------------


def test_a_good_token_gives_its_claims() -> None:
    assert check(token())["email"] == "alice@example.com"


def test_a_token_signed_by_another_key_is_refused() -> None:
    assert refused(token(key=OTHER_KEY)) == "signature"


def test_a_token_signed_with_the_client_secret_is_refused() -> None:
    # HS256 with a key everyone holding the client secret knows: never accepted.
    assert refused(token(key=OctKey.import_key(b"s3cret" * 6), alg="HS256")) == "signature"


def test_a_tampered_token_is_refused() -> None:
    head, body, sig = token().split(".")
    forged = base64.urlsafe_b64encode(b'{"email":"root@example.com"}').rstrip(b"=").decode()
    assert refused(f"{head}.{forged}.{sig}") == "signature"


def test_a_token_for_another_client_is_refused() -> None:
    assert refused(token(aud="someone-else")) == "audience"


def test_a_token_from_another_issuer_is_refused() -> None:
    assert refused(token(iss="http://127.0.0.1:9999/evil")) == "issuer"


def test_an_expired_token_is_refused() -> None:
    assert refused(token(), now=NOW + 3600) == "expired"


def test_a_token_for_another_login_is_refused() -> None:
    assert refused(token(), nonce="n2") == "nonce"
    assert refused(token(nonce=None)) == "nonce"


def test_an_oversized_token_is_refused_before_parsing() -> None:
    assert refused("x" * 20_000) == "id_token"


# -- state, nonce, PKCE ----------------------------------------------------------------


def tokens() -> Any:
    counter = itertools.count()
    return lambda n: f"t{next(counter)}-" + "x" * n


def test_the_auth_url_carries_state_nonce_and_an_s256_challenge() -> None:
    flows = Flows(SETTINGS, tokens())
    flow, url = flows.start("auth-1", ISSUER + "/auth", NOW)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(ISSUER + "/auth?")
    assert q["state"] == flow.state and q["nonce"] == flow.nonce
    assert q["code_challenge_method"] == "S256"
    digest = hashlib.sha256(flow.code_verifier.encode()).digest()
    assert q["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert q["redirect_uri"] == "http://127.0.0.1:8080/oidc/callback"
    assert q["client_id"] == "tailnetd" and "openid" in q["scope"].split()
    assert "s3cret" not in url


def test_a_state_works_once() -> None:
    flows = Flows(SETTINGS, tokens())
    flow, _ = flows.start("auth-1", ISSUER + "/auth", NOW)
    assert flows.take(flow.state, NOW + 1).auth_id == "auth-1"
    with pytest.raises(Refusal) as exc:
        flows.take(flow.state, NOW + 2)
    assert exc.value.check == "state"


def test_a_state_expires() -> None:
    flows = Flows(SETTINGS, tokens())
    flow, _ = flows.start("auth-1", ISSUER + "/auth", NOW)
    with pytest.raises(Refusal, match="expired"):
        flows.take(flow.state, NOW + SETTINGS.login_ttl)


def test_an_unknown_state_is_refused() -> None:
    with pytest.raises(Refusal, match="unknown"):
        Flows(SETTINGS, tokens()).take("made-up", NOW)


def test_expired_flows_are_dropped_when_new_ones_start() -> None:
    flows = Flows(SETTINGS, tokens())
    flows.start("a", ISSUER + "/auth", NOW)
    flows.start("b", ISSUER + "/auth", NOW + SETTINGS.login_ttl + 1)
    assert len(flows) == 1


# -- claims to a user ------------------------------------------------------------------


def claims(**kw: Any) -> dict[str, Any]:
    return {"sub": "u1", "email": "Alice@Example.com", "email_verified": True, **kw}


def refusal(c: dict[str, Any], settings: OidcSettings = SETTINGS) -> Refusal:
    with pytest.raises(Refusal) as exc:
        admit(c, settings, USERS)
    return exc.value


def test_a_verified_email_of_tailnet_d_maps_to_its_user() -> None:
    who = admit(claims(groups=["eng", "ops"]), SETTINGS, USERS)
    assert (who.user, who.email, who.declared) == ("alice", "alice@example.com", True)
    assert who.groups == ("group:eng", "group:ops")


def test_an_unverified_email_is_refused_unless_allowed() -> None:
    r = refusal(claims(email_verified=False))
    assert r.check == "email_verified" and "alice@example.com" in r.message
    ok = admit(claims(email_verified=False), replace(SETTINGS, allow_unverified_email=True), USERS)
    assert ok.user == "alice"


def test_no_email_is_refused() -> None:
    assert refusal({"sub": "u1"}).check == "email"


def test_an_identity_not_in_git_is_refused_with_its_email_named() -> None:
    r = refusal(claims(email="carol@example.com"))
    assert r.check == "unknown_user" and "carol@example.com" in r.message


def test_an_identity_not_in_git_can_be_admitted_as_a_runtime_user() -> None:
    who = admit(claims(email="carol@example.com"), replace(SETTINGS, admit_unknown=True), USERS)
    assert (who.user, who.declared) == ("carol@example.com", False)


def test_allow_lists() -> None:
    by_domain = replace(SETTINGS, allowed_domains=frozenset({"corp.example"}))
    r = refusal(claims(), by_domain)
    assert r.check == "allowed_domains" and "example.com" in r.message
    by_email = replace(SETTINGS, allowed_emails=frozenset({"bob@example.com"}))
    assert refusal(claims(), by_email).check == "allowed_emails"
    assert admit(claims(email="bob@example.com"), by_email, USERS).user == "bob"
    by_group = replace(SETTINGS, allowed_groups=frozenset({"eng"}))
    assert refusal(claims(groups=["ops"]), by_group).check == "allowed_groups"
    assert admit(claims(groups=["ops", "eng"]), by_group, USERS).user == "alice"


def test_group_claims_map_to_policy_groups_with_a_prefix() -> None:
    prefixed = replace(SETTINGS, groups_prefix="idp-", groups_claim="roles")
    assert claim_groups({"roles": ["eng", "", 7, "eng"]}, prefixed) == ("group:idp-eng",)
    assert claim_groups({"roles": "admins"}, prefixed) == ("group:idp-admins",)
    assert claim_groups({"groups": ["eng"]}, prefixed) == ()
    assert len(claim_groups({"groups": [f"g{i}" for i in range(1000)]}, SETTINGS)) == 256


def test_the_client_secret_comes_from_a_file_or_the_environment(tmp_path: Any) -> None:
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert read_client_secret(f, {}) == "from-file"
    assert read_client_secret(None, {"TAILNETD_OIDC_CLIENT_SECRET": "from-env"}) == "from-env"
    with pytest.raises(ValueError, match="client secret"):
        read_client_secret(None, {})
    assert "s3cret" not in repr(SETTINGS)
