"""Seeded random tailnets for the policy performance tests: users, tagged and
untagged nodes, routers, and policies mixing ACLs, grants (ip, app, via),
SSH rules (check, localpart, self) and nodeAttrs."""

from __future__ import annotations

import random
from typing import Any

DOMAIN = "example.com"
TAGS = ("tag:web", "tag:db", "tag:ci", "tag:router")
ROUTES = ("10.1.0.0/16", "10.2.0.0/24", "0.0.0.0/0", "::/0")


def users(rng: random.Random) -> list[dict[str, Any]]:
    n = rng.randint(2, 5)
    return [{"id": i + 1, "name": f"u{i}", "email": f"u{i}@{DOMAIN}"} for i in range(n)]


def node(rng: random.Random, n: int, user_names: list[str], routers: bool = True) -> dict[str, Any]:
    tags = sorted(rng.sample(TAGS, rng.randint(1, 2))) if rng.random() < 0.4 else []
    routes: list[str] = []
    if routers and rng.random() < 0.2:
        routes = rng.sample(ROUTES, rng.randint(1, 2))
    return {
        "hostname": f"h{n}",
        "user": None if tags else rng.choice(user_names),
        "tags": tags,
        "ipv4": f"100.64.{n // 250}.{n % 250 + 1}",
        "ipv6": f"fd7a:115c:a1e0::{n:x}",
        "routable_ips": routes,
        "approved_routes": [r for r in routes if rng.random() < 0.7],
    }


def topology(rng: random.Random, size: int) -> dict[str, Any]:
    us = users(rng)
    names = [u["name"] for u in us]
    return {"users": us, "nodes": {f"n{i}": node(rng, i, names) for i in range(size)}}


def _self_src(rng: random.Random, us: list[dict[str, Any]]) -> str:
    """A source that may be paired with autogroup:self (users only)."""
    return rng.choice(["group:a", "autogroup:member", rng.choice(us)["email"]])


def _alias(rng: random.Random, us: list[dict[str, Any]], *, dst: bool = False) -> str:
    choices = [
        "*",
        "group:a",
        "group:b",
        rng.choice(TAGS),
        rng.choice(us)["email"],
        "autogroup:member",
        "autogroup:tagged",
        "svc",
        "10.1.0.0/16",
    ]
    if dst:
        choices.append("autogroup:self")
    return rng.choice(choices)


def policy(rng: random.Random, us: list[dict[str, Any]]) -> dict[str, Any]:
    emails = [u["email"] for u in us]
    acls = []
    for _ in range(rng.randint(1, 6)):
        dst = _alias(rng, us, dst=True)
        ports = rng.choice(["*", "22", "80,443", "8000-8100"])
        src = _self_src(rng, us) if dst == "autogroup:self" else _alias(rng, us)
        acl: dict[str, Any] = {"action": "accept", "src": [src], "dst": [f"{dst}:{ports}"]}
        if rng.random() < 0.2:
            acl["proto"] = "udp"
        acls.append(acl)
    grants = []
    for _ in range(rng.randint(0, 3)):
        dst = _alias(rng, us, dst=True)
        src = _self_src(rng, us) if dst == "autogroup:self" else _alias(rng, us)
        grant: dict[str, Any] = {"src": [src], "dst": [dst]}
        if rng.random() < 0.5:
            grant["ip"] = [rng.choice(["*", "tcp:443", "udp:53"])]
        else:
            grant["app"] = {
                rng.choice(["example.com/cap/x", "tailscale.com/cap/drive"]): [
                    {"n": rng.randint(0, 3)}
                ]
            }
        if "ip" in grant and grant["dst"] != ["autogroup:self"] and rng.random() < 0.3:
            grant["dst"] = ["10.1.0.0/16"]
            grant["via"] = ["tag:router"]
        grants.append(grant)
    ssh = []
    for _ in range(rng.randint(0, 3)):
        dst = rng.choice(["autogroup:self", "tag:web", "tag:db", "autogroup:member"])
        src = (
            _self_src(rng, us)
            if dst == "autogroup:self"
            else rng.choice(["autogroup:member", "group:a", "autogroup:tagged", rng.choice(emails)])
        )
        ssh.append(
            {
                "action": rng.choice(["accept", "check"]),
                "src": [src],
                "dst": [dst],
                "users": [rng.choice(["root", "autogroup:nonroot", f"localpart:*@{DOMAIN}"])],
            }
        )
    return {
        "groups": {"group:a": emails[:2], "group:b": emails[1:]},
        "hosts": {"svc": "100.64.0.3"},
        "tagOwners": {t: [emails[0]] for t in TAGS},
        "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:router"]},
        "acls": acls,
        "grants": grants,
        "ssh": ssh,
        "nodeAttrs": [
            {
                "target": [rng.choice(["tag:db", "autogroup:member"])],
                "attr": [rng.choice(["funnel", "disable-ipv4"])],
            }
        ],
    }
