"""Typed, frozen values for the non-policy sections, read from the merged document.

The merged document has already passed its schemas, so this module checks meaning only:
addresses parse, durations parse, a user is not declared twice, MagicDNS has a domain.
Defaults live here, in one place, next to the field they belong to.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from gitctl.diagnostics import Diagnostic, JsonPath
from gitctl.policy.times import parse_rfc3339
from gitctl.tailnet.files import Provenance

__all__ = [
    "DerpNodeSpec",
    "DerpRegionSpec",
    "DnsSpec",
    "EmbeddedDerp",
    "ExtraRecord",
    "IPNetwork",
    "KeySpec",
    "Rollout",
    "RouteApproval",
    "SecretRef",
    "TailnetSettings",
    "WebhookTarget",
    "UserSpec",
    "build_model",
    "parse_duration",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ephemeral nodes send a keepalive about once a minute; removing them sooner would delete
# nodes that are merely between keepalives.
MIN_EPHEMERAL_TIMEOUT = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class UserSpec:
    name: str
    email: str
    display_name: str
    # Tailscale's user role; autogroup:owner, autogroup:admin, ... name users by it.
    role: str = "member"


@dataclass(frozen=True, slots=True)
class ExtraRecord:
    name: str
    type: Literal["A", "AAAA"]
    value: str


def _frozen_map() -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DnsSpec:
    magic_dns: bool = False
    base_domain: str | None = None
    override_local_dns: bool = True  # headscale's default too
    nameservers: tuple[str, ...] = ()
    split: Mapping[str, tuple[str, ...]] = field(default_factory=_frozen_map)
    search_domains: tuple[str, ...] = ()
    extra_records: tuple[ExtraRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class DerpNodeSpec:
    name: str
    region_id: int
    host_name: str
    ipv4: str = ""
    ipv6: str = ""
    stun_port: int = 0
    stun_only: bool = False
    derp_port: int = 0
    cert_name: str = ""
    can_port80: bool = False


@dataclass(frozen=True, slots=True)
class DerpRegionSpec:
    region_id: int
    region_code: str
    region_name: str
    nodes: tuple[DerpNodeSpec, ...]
    avoid: bool = False


@dataclass(frozen=True, slots=True)
class EmbeddedDerp:
    enabled: bool = True
    region_id: int = 999
    region_code: str = "tailnetd"
    region_name: str = "tailnetd embedded"


@dataclass(frozen=True, slots=True)
class TailnetSettings:
    ipv4_prefix: ipaddress.IPv4Network | None = ipaddress.IPv4Network("100.64.0.0/10")
    ipv6_prefix: ipaddress.IPv6Network | None = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
    ip_allocation: Literal["sequential", "random"] = "sequential"
    # None means node keys never expire; Tailscale's default is 180 days.
    node_key_expiry: timedelta | None = timedelta(days=180)
    ephemeral_inactivity_timeout: timedelta = timedelta(seconds=120)
    derp_regions: tuple[DerpRegionSpec, ...] = ()
    embedded_derp: EmbeddedDerp = EmbeddedDerp()
    # Repository-relative allowed-signers file: commits must be signed by a key it lists.
    trusted_signers: str | None = None
    # "required": new nodes wait for an operator's approval before they see peers.
    device_approval: Literal["none", "required"] = "none"
    # Where the server POSTs its events; the signing secret is the server's, never git's.
    webhooks: tuple[WebhookTarget, ...] = ()
    # A new commit goes to the canary nodes first and to everyone after the hold.
    rollout: Rollout | None = None
    # True: operators may also approve advertised routes at runtime (API, CLI), on top of
    # routes.yaml and autoApprovers; `tailnetd drift` lists such approvals. False: git only.
    runtime_route_approval: bool = False
    # "token": an OIDC-registered node's key expires with the ID token of its login.
    oidc_key_expiry: Literal["node_key_expiry", "token"] = "node_key_expiry"
    # True: an identity the provider vouches for that users.yaml does not declare joins as a
    # runtime user (the server's --oidc-admit-unknown does the same); False: it is refused.
    oidc_admit_unknown: bool = False


@dataclass(frozen=True, slots=True)
class Rollout:
    canary: str  # the selector: a tag ("tag:canary")
    hold: timedelta

    def selects(self, tags: tuple[str, ...]) -> bool:
        return self.canary in tags


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    events: frozenset[str] | None = None  # None: every event type

    def wants(self, event_type: str) -> bool:
        return self.events is None or event_type in self.events


@dataclass(frozen=True, slots=True)
class RouteApproval:
    """Routes approved for one machine (by its machine key, which stays with the
    machine through renames, logouts and re-registrations) or for every node
    with a tag. `node` is only a label for people when `machine` is given."""

    node: str | None
    tag: str | None
    routes: tuple[IPNetwork, ...]
    machine: str | None = None


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where the server reads a declared key's text: an environment variable or a file."""

    kind: Literal["env", "file"]
    name: str

    def describe(self) -> str:
        return f"environment variable {self.name}" if self.kind == "env" else f"file {self.name}"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A pre-auth key declared in keys.yaml; its secret stays outside git."""

    name: str
    user: str | None  # exactly one of user and tags
    tags: tuple[str, ...]
    reusable: bool
    ephemeral: bool
    expires: datetime | None
    secret: SecretRef


_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:[0-9]+[wdhms])+")


def parse_duration(text: str) -> timedelta:
    """ "180d", "1h30m", "120s" -> timedelta; raises ValueError otherwise."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f'invalid duration "{text}" (use e.g. "180d", "12h", "1h30m", "120s")')
    seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)([wdhms])", text))
    return timedelta(seconds=seconds)


class _Builder:
    def __init__(self, provenance: Provenance) -> None:
        self.prov = provenance
        self.diagnostics: list[Diagnostic] = []

    def error(self, path: JsonPath, message: str, *, key: bool = False) -> None:
        self.diagnostics.append(self.prov.diagnostic(path, message, key=key, show_key=True))

    def where(self, path: JsonPath) -> str:
        found = self.prov.locate(path)
        return f"{found[0]}:{found[1].line}:{found[1].col}" if found else "tailnet.d"

    def users(self, items: list[dict[str, Any]]) -> tuple[UserSpec, ...]:
        seen: dict[tuple[str, str], int] = {}
        out = []
        for i, u in enumerate(items):
            for field_name in ("name", "email"):
                value = u[field_name] if field_name == "name" else u[field_name].lower()
                first = seen.setdefault((field_name, value), i)
                if first != i:
                    self.error(
                        ("users", first, field_name),
                        f"user {field_name} {json.dumps(u[field_name])} is also used at "
                        f"{self.where(('users', i, field_name))}",
                    )
            out.append(
                UserSpec(
                    u["name"],
                    u["email"],
                    u.get("display_name") or u["name"],
                    u.get("role") or "member",
                )
            )
        return tuple(out)

    def address(self, path: JsonPath, text: str, version: int | None = None) -> bool:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            self.error(path, f'"{text}" is not an IP address')
            return False
        if version is not None and ip.version != version:
            self.error(path, f'"{text}" is not an IPv{version} address')
            return False
        return True

    def nameservers(self, path: JsonPath, items: list[str]) -> tuple[str, ...]:
        for i, ns in enumerate(items):
            if not ns.startswith("https://"):
                self.address((*path, i), ns)
        return tuple(items)

    def dns(self, d: dict[str, Any]) -> DnsSpec:
        if d.get("magic_dns") and not d.get("base_domain"):
            self.error(("dns", "magic_dns"), "MagicDNS needs a base_domain", key=True)
        records = []
        for i, r in enumerate(d.get("extra_records", [])):
            self.address(
                ("dns", "extra_records", i, "value"), r["value"], 4 if r["type"] == "A" else 6
            )
            records.append(ExtraRecord(r["name"].rstrip("."), r["type"], r["value"]))
        ns = d.get("nameservers", {})
        split = {
            dom.strip("."): self.nameservers(("dns", "nameservers", "split", dom), servers)
            for dom, servers in ns.get("split", {}).items()
        }
        return DnsSpec(
            magic_dns=bool(d.get("magic_dns", False)),
            base_domain=(d.get("base_domain") or "").rstrip(".") or None,
            override_local_dns=bool(d.get("override_local_dns", True)),
            nameservers=self.nameservers(("dns", "nameservers", "global"), ns.get("global", [])),
            split=MappingProxyType(split),
            search_domains=tuple(s.strip(".") for s in d.get("search_domains", [])),
            extra_records=tuple(records),
        )

    def network(self, path: JsonPath, text: str, version: int | None = None) -> IPNetwork | None:
        try:
            net = ipaddress.ip_network(text)
        except ValueError as exc:
            reason = "host bits are set" if "host bits" in str(exc) else "not a CIDR prefix"
            self.error(path, f'"{text}" is not a valid prefix ({reason})')
            return None
        if version is not None and net.version != version:
            self.error(path, f'"{text}" is not an IPv{version} prefix')
            return None
        return net

    def pool(self, path: JsonPath, raw: str | None, version: int) -> IPNetwork | None:
        return None if raw is None else self.network(path, raw, version)

    def duration(self, path: JsonPath, text: str) -> timedelta | None:
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.error(path, str(exc))
            return None

    def settings(self, s: dict[str, Any]) -> TailnetSettings:
        base = TailnetSettings()
        prefixes = s.get("ip_prefixes", {})
        v4, v6 = base.ipv4_prefix, base.ipv6_prefix
        if "v4" in prefixes:
            net = self.pool(("settings", "ip_prefixes", "v4"), prefixes["v4"], 4)
            v4 = net if isinstance(net, ipaddress.IPv4Network) else None
        if "v6" in prefixes:
            net = self.pool(("settings", "ip_prefixes", "v6"), prefixes["v6"], 6)
            v6 = net if isinstance(net, ipaddress.IPv6Network) else None
        if prefixes.get("v4", "") is None and prefixes.get("v6", "") is None:
            self.error(("settings", "ip_prefixes"), "nodes need at least one of v4 and v6")
        expiry: timedelta | None = base.node_key_expiry
        if "node_key_expiry" in s:
            raw = s["node_key_expiry"]
            expiry = None if raw is None else self.duration(("settings", "node_key_expiry"), raw)
        ephemeral = base.ephemeral_inactivity_timeout
        if "ephemeral_inactivity_timeout" in s:
            path = ("settings", "ephemeral_inactivity_timeout")
            parsed = self.duration(path, s["ephemeral_inactivity_timeout"])
            ephemeral = ephemeral if parsed is None else parsed
            if parsed is not None and parsed < MIN_EPHEMERAL_TIMEOUT:
                self.error(path, "must be at least 1s")
        embedded = s.get("embedded_derp", {})
        emb = (
            EmbeddedDerp(enabled=False)
            if embedded is None
            else EmbeddedDerp(
                enabled=embedded.get("enabled", True),
                region_id=embedded.get("region_id", 999),
                region_code=embedded.get("region_code", "tailnetd"),
                region_name=embedded.get("region_name", "tailnetd embedded"),
            )
        )
        regions = self.derp_regions(s.get("derp", {}).get("regions", {}), emb)
        if not emb.enabled and not regions and "embedded_derp" in s:
            # Clients relay and find each other through DERP; with no region
            # at all they stop short of connecting: never serve that.
            self.error(
                ("settings", "embedded_derp"),
                "turns off the embedded DERP relay while derp.regions lists no other: "
                "clients would have no relay",
            )
        signers = s.get("trusted_signers", {}).get("file")
        if signers is not None:
            signers = self.repo_path(("settings", "trusted_signers", "file"), signers)
        hooks = tuple(
            WebhookTarget(h["url"], frozenset(h["events"]) if "events" in h else None)
            for h in s.get("webhooks", ())
        )
        rollout = None
        if "rollout" in s:
            hold = self.duration(("settings", "rollout", "hold"), s["rollout"]["hold"])
            rollout = None if hold is None else Rollout(s["rollout"]["canary"], hold)
        return TailnetSettings(
            v4, v6, s.get("ip_allocation", "sequential"), expiry, ephemeral, regions, emb, signers,
            s.get("device_approval", "none"), hooks, rollout,
            bool(s.get("runtime_route_approval", False)),
            s.get("oidc_key_expiry", "node_key_expiry"), bool(s.get("oidc_admit_unknown", False)),
        )  # fmt: skip

    def repo_path(self, path: JsonPath, text: str) -> str | None:
        """A repository-relative file path, normalized; None (and an error) if it leaves
        the repository."""
        norm = posixpath.normpath(text)
        if text.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
            self.error(path, f'"{text}" must be a file path inside the repository')
            return None
        return norm

    def derp_regions(
        self, regions: dict[str, Any], emb: EmbeddedDerp
    ) -> tuple[DerpRegionSpec, ...]:
        out = []
        for key, r in regions.items():
            path = ("settings", "derp", "regions", key)
            if key != str(r["regionID"]):
                self.error(
                    (*path, "regionID"), f'regionID {r["regionID"]} differs from its key "{key}"'
                )
            if emb.enabled and r["regionID"] == emb.region_id:
                self.error(
                    (*path, "regionID"),
                    f"region {emb.region_id} is the embedded DERP "
                    "region (set embedded_derp.region_id)",
                )
            nodes = tuple(
                DerpNodeSpec(
                    n["name"],
                    n.get("regionID", r["regionID"]),
                    n["hostName"],
                    n.get("ipv4", ""),
                    n.get("ipv6", ""),
                    n.get("stunPort", 0),
                    n.get("stunOnly", False),
                    n.get("derpPort", 0),
                    n.get("certName", ""),
                    n.get("canPort80", False),
                )
                for n in r["nodes"]
            )
            out.append(
                DerpRegionSpec(
                    r["regionID"],
                    r["regionCode"],
                    r.get("regionName", r["regionCode"]),
                    nodes,
                    r.get("avoid", False),
                )
            )
        return tuple(out)

    def routes(self, items: list[dict[str, Any]]) -> tuple[RouteApproval, ...]:
        out = []
        for i, r in enumerate(items):
            nets = [self.network(("routes", i, "routes", j), p) for j, p in enumerate(r["routes"])]
            if r.get("node") is not None and r.get("machine") is None:
                self.error(
                    ("routes", i, "node"),
                    "a route approval names a machine, not a node name: a name passes to "
                    "another machine after a rename or when it is freed; write "
                    "`machine: mkey:…` (`tailnetd nodes list` shows each node's machine key) "
                    "and keep `node:` as a label if you like",
                    key=True,
                )
            out.append(
                RouteApproval(
                    r.get("node"),
                    r.get("tag"),
                    tuple(n for n in nets if n is not None),
                    machine=r.get("machine"),
                )
            )
        return tuple(out)

    def keys(self, items: list[dict[str, Any]], users: tuple[UserSpec, ...]) -> tuple[KeySpec, ...]:
        names = {u.name for u in users}
        seen: dict[str, int] = {}
        out = []
        for i, k in enumerate(items):
            first = seen.setdefault(k["name"], i)
            if first != i:
                self.error(
                    ("keys", first, "name"),
                    f"key name {json.dumps(k['name'])} is also used at "
                    f"{self.where(('keys', i, 'name'))}",
                )
            user = k.get("user")
            if user is not None and user not in names:
                self.error(("keys", i, "user"), f"user {json.dumps(user)} is not in users")
            expires = None
            if k.get("expires") is not None:
                try:
                    expires = parse_rfc3339(k["expires"])
                except ValueError as exc:
                    self.error(("keys", i, "expires"), str(exc))
            ((kind, ref),) = k["secret"].items()
            out.append(
                KeySpec(
                    k["name"],
                    user,
                    tuple(k.get("tags") or ()),
                    bool(k.get("reusable", False)),
                    bool(k.get("ephemeral", False)),
                    expires,
                    SecretRef(kind, ref),
                )
            )
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Model:
    users: tuple[UserSpec, ...]
    dns: DnsSpec
    settings: TailnetSettings
    routes: tuple[RouteApproval, ...]
    keys: tuple[KeySpec, ...] = ()


def build_model(
    document: Mapping[str, Any], provenance: Provenance
) -> tuple[Model, list[Diagnostic]]:
    """Typed sections from a schema-valid merged document, plus any meaning problems."""
    b = _Builder(provenance)
    users = b.users(document.get("users", []))
    model = Model(
        users=users,
        dns=b.dns(document.get("dns", {})),
        settings=b.settings(document.get("settings", {})),
        routes=b.routes(document.get("routes", [])),
        keys=b.keys(document.get("keys", []), users),
    )
    return model, b.diagnostics
