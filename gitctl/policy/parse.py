"""Validate a policy document and build the frozen :class:`Policy`.

Error texts follow Tailscale's wording (the conformance corpus holds the
originals) so people moving a policy between servers see the same messages.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import Path, PolicyError, raise_collected
from .expiry import group_member, parse_expires
from .ipsets import parse_ipsets
from .model import (
    ALL_PORTS,
    WILDCARD,
    AclRule,
    Alias,
    AutoApprovers,
    Dest,
    Grant,
    IpCap,
    MemberExpiry,
    NodeAttr,
    Policy,
    PolicyTest,
    PortRange,
    SshRule,
    SshTest,
)
from .posture_parse import parse_postures, parse_src_posture, parse_test_posture_attrs
from .ssh_parse import parse_ssh_rule, parse_ssh_test

PROTOCOLS: Mapping[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "ipv4": 4,
    "ip-in-ip": 4,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": 58,
    "sctp": 132,
}

AUTOGROUPS = frozenset(
    {
        "member",
        "tagged",
        "self",
        "internet",
        "danger-all",
        "admin",
        "owner",
        "nonroot",
        "shared",
        "it-admin",
        "network-admin",
        "billing-admin",
        "auditor",
    }
)
_TAG_NAME = re.compile(r"^tag:[A-Za-z][A-Za-z0-9_-]*$")


class Ctx:
    """The parts of the document every alias is checked against."""

    def __init__(self, doc: Mapping[str, Any], errors: list[PolicyError]) -> None:
        self.errors = errors
        self.groups = doc.get("groups") or {}
        self.hosts = doc.get("hosts") or {}
        self.tags = doc.get("tagOwners") or {}
        self.ipsets = doc.get("ipsets") or {}
        self.postures: Mapping[str, Any] = {}

    def fail(self, message: str, path: Path) -> None:
        self.errors.append(PolicyError(message, path))

    def strings(self, value: Any, path: Path) -> list[str]:
        """``value`` as a list of strings (None: empty); anything else is an error."""
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail("expected a list of strings", path)
            return []
        return list(value)

    def section(self, value: Any, key: str) -> Mapping[str, Any]:
        """A top-level map such as ``postures`` (None: empty); anything else is an error."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{key} must be an object", (key,))
            return {}
        return value


def parse_prefix(text: str) -> str | None:
    """Normalised prefix text for an IP or CIDR (a bare IP becomes /32 or /128)."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def parse_alias(
    text: str, ctx: Ctx, path: Path, where: str = "", *, ipsets: bool = False
) -> Alias | None:
    """One src/dst/target name; records an error and returns None when invalid.
    ``ipsets``: whether ``ipset:`` names may be used here (acls and grants)."""
    if text == "*":
        return WILDCARD
    if text.startswith("ipset:"):
        if not ipsets:
            ctx.fail(f'{where}"{text}": ipsets can only be used in acls and grants', path)
            return None
        if text not in ctx.ipsets:
            ctx.fail(f'{where}ipset not found: "{text}"', path)
            return None
        return Alias("ipset", text)
    if text.startswith("autogroup:"):
        name = text.removeprefix("autogroup:")
        if name not in AUTOGROUPS:
            ctx.fail(f'{where}autogroup not found: "{text}"', path)
            return None
        return Alias("autogroup", text)
    if text.startswith("group:"):
        if text not in ctx.groups:
            ctx.fail(f'{where}group not found: "{text}"', path)
            return None
        return Alias("group", text)
    if text.startswith("tag:"):
        if text not in ctx.tags:
            ctx.fail(f'{where}tag not found: "{text}"', path)
            return None
        return Alias("tag", text)
    if text.startswith("user:"):
        return Alias("user", text.removeprefix("user:"))
    if "@" in text:
        return Alias("user", text)
    if text in ctx.hosts:
        return Alias("host", text)
    prefix = parse_prefix(text)
    if prefix is None:
        ctx.fail(f'{where}"{text}": invalid address', path)
        return None
    return Alias("prefix", prefix)


def parse_ports(text: str, where: str = "") -> tuple[PortRange, ...]:
    if text == "*":
        return (ALL_PORTS,)
    out = []
    for part in text.split(","):
        first_s, _, last_s = part.partition("-")
        if not first_s.isdigit():
            raise PolicyError(f'{where}port range "{part}": invalid first integer')
        first = int(first_s)
        last = first
        if last_s:
            if not last_s.isdigit():
                raise PolicyError(f'{where}port range "{part}": invalid last integer')
            last = int(last_s)
        if first == 0:
            raise PolicyError(
                f"{where}port range \"{part}\": first port must be >0, or use '*' for wildcard"
            )
        if first > 65535 or last > 65535:
            raise PolicyError(f'{where}port range "{part}": port out of range')
        if last < first:
            raise PolicyError(f'{where}port range "{part}": last port must be >= first port')
        out.append(PortRange(first, last))
    return tuple(out)


def parse_proto(text: str, where: str = "") -> tuple[int, ...]:
    if text == "":
        return ()
    if text.isdigit():
        return (int(text),)
    if text.lower() in PROTOCOLS:
        return (PROTOCOLS[text.lower()],)
    raise PolicyError(f'{where}unknown protocol "{text}"')


def _strings(value: Any, path: Path, ctx: Ctx) -> list[str]:
    return ctx.strings(value, path)


def _aliases(
    values: list[str],
    ctx: Ctx,
    path: Path,
    where: Callable[[str], str] = lambda _: "",
    *,
    ipsets: bool = False,
) -> tuple[Alias, ...]:
    out = []
    for i, v in enumerate(values):
        alias = parse_alias(v, ctx, (*path, i), where(v), ipsets=ipsets)
        if alias is not None:
            out.append(alias)
    return tuple(out)


def _parse_groups(ctx: Ctx) -> tuple[dict[str, tuple[Alias, ...]], list[MemberExpiry]]:
    """Groups, and the members that leave them at a set time."""
    groups: dict[str, tuple[Alias, ...]] = {}
    timed: list[MemberExpiry] = []
    for name, members in ctx.groups.items():
        path: Path = ("groups", name)
        if not name.startswith("group:"):
            ctx.fail(f'groups["{name}"]: group names must start with "group:"', path)
            continue
        if members is not None and not isinstance(members, list):
            ctx.fail("expected a list of members", path)
            continue
        out, expiring, permanent = [], [], set()
        for i, value in enumerate(members or ()):
            m, expires = group_member(value, (*path, i), ctx)
            if m is None:
                continue
            if m.startswith("group:"):
                ctx.fail(f'groups["{name}"]: "{m}": group members cannot be recursive', (*path, i))
                continue
            alias = parse_alias(m, ctx, (*path, i), f'groups["{name}"]: ')
            if alias is None:
                continue
            out.append(alias)
            if expires is None:
                permanent.add(alias)
            else:
                expiring.append(MemberExpiry(name, alias, expires, (*path, i, "expires")))
        groups[name] = tuple(out)
        timed += (e for e in expiring if e.member not in permanent)
    return groups, timed


def _parse_tag_owners(ctx: Ctx) -> dict[str, tuple[Alias, ...]]:
    owners: dict[str, tuple[Alias, ...]] = {}
    for tag, values in ctx.tags.items():
        path: Path = ("tagOwners", tag)
        if not _TAG_NAME.match(tag):
            ctx.fail(
                f"tagOwners[\"{tag}\"]: tag names must start with a letter, after 'tag:'", path
            )
            continue
        owners[tag] = _aliases(_strings(values, path, ctx), ctx, path)
    return owners


def _parse_hosts(ctx: Ctx) -> dict[str, str]:
    hosts = {}
    for name, value in ctx.hosts.items():
        prefix = parse_prefix(value) if isinstance(value, str) else None
        if prefix is None:
            ctx.fail(f'hosts["{name}"]: "{value}": invalid address', ("hosts", name))
            continue
        hosts[name] = prefix
    return hosts


def _split_dst(text: str) -> tuple[str, str]:
    alias, sep, ports = text.rpartition(":")
    if not sep:
        return text, ""
    return alias, ports


def _legacy(rule: Mapping[str, Any], key: str, old: str, ctx: Ctx, path: Path) -> tuple[str, Any]:
    """The value of ``key``, or of its older spelling ``old`` (acls' users/ports,
    tests' user/allow); naming both is an error. Returns (key used, value)."""
    if key in rule and old in rule:
        ctx.fail(f'"{key}" and "{old}" (its older spelling) cannot both be set', (*path, old))
    if key not in rule and old in rule:
        return old, rule[old]
    return key, rule.get(key)


def _parse_acl(rule: Mapping[str, Any], i: int, ctx: Ctx) -> AclRule | None:
    path: Path = ("acls", i)
    if not isinstance(rule, Mapping):
        ctx.fail("acls entries must be objects", path)
        return None
    action = rule.get("action")
    if action != "accept":
        ctx.fail(f'action "{action}" is not supported; use "accept"', (*path, "action"))
        return None
    try:
        protos = parse_proto(str(rule.get("proto") or ""))
    except PolicyError as e:
        ctx.fail(e.message, (*path, "proto"))
        protos = ()
    skey, raw_src = _legacy(rule, "src", "users", ctx, path)
    dkey, raw_dst = _legacy(rule, "dst", "ports", ctx, path)
    src = _aliases(
        _strings(raw_src, (*path, skey), ctx),
        ctx,
        (*path, skey),
        lambda _: "src=",
        ipsets=True,
    )
    dsts = []
    for j, text in enumerate(_strings(raw_dst, (*path, dkey), ctx)):
        dpath: Path = (*path, dkey, j)
        name, port_text = _split_dst(text)
        try:
            ports = parse_ports(port_text, f'dst="{text}": ')
        except PolicyError as e:
            ctx.fail(e.message, dpath)
            continue
        alias = parse_alias(name, ctx, dpath, f'dst="{name}": ', ipsets=True)
        if alias is not None:
            dsts.append(Dest(alias, ports))
    _check_self(src, [d.alias for d in dsts], ctx, path)
    posture = parse_src_posture(rule.get("srcPosture"), ctx, (*path, "srcPosture"))
    expires = parse_expires(rule, path, ctx)
    return AclRule(src=src, dst=tuple(dsts), protos=protos, src_posture=posture, expires=expires)


def _check_self(
    src: tuple[Alias, ...], dst: list[Alias], ctx: Ctx, path: Path, allow_wildcard: bool = True
) -> None:
    """autogroup:self narrows to the source's own user, so the source must be users
    (ACLs also accept "*", meaning every user)."""
    if any(d == Alias("autogroup", "autogroup:self") for d in dst):
        ok = {"autogroup:member", "*"} if allow_wildcard else {"autogroup:member"}
        if any(s.kind not in ("user", "group") and s.value not in ok for s in src):
            ctx.fail(
                "autogroup:self can only be used with users, groups, or supported autogroups", path
            )


def _parse_ip_cap(text: str) -> IpCap:
    proto_text, sep, port_text = text.rpartition(":")
    if not sep:
        proto_text, port_text = "", text
    protos = parse_proto(proto_text)
    return IpCap(protos=protos, ports=parse_ports(port_text))


_CAP_NAME = re.compile(r"^[a-z0-9.-]+\.[a-z0-9-]+/\S+$")


def _parse_app(app: Any, ctx: Ctx, path: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    if not isinstance(app, Mapping):
        ctx.fail("app must be an object", path)
        return out
    for name, values in app.items():
        if not _CAP_NAME.match(name):
            ctx.fail("capability name must have the form {domain}/{path}", (*path, name))
            continue
        domain = name.split("/", 1)[0]
        if (domain == "tailscale.com" or domain.endswith(".tailscale.com")) and name not in (
            ALLOWED_TAILSCALE_CAPS
        ):
            ctx.fail("capability name must not be in the tailscale.com domain", (*path, name))
            continue
        out[name] = tuple(values or ())
    return out


# Tailscale's own capabilities that a policy may grant (the rest are reserved).
ALLOWED_TAILSCALE_CAPS = frozenset(
    {
        "tailscale.com/cap/webui",
        "tailscale.com/cap/kubernetes",
        "tailscale.com/cap/drive",
        "tailscale.com/cap/tsidp",
        "tailscale.com/cap/golink",
        "tailscale.com/cap/relay",
        "tailscale.com/cap/file-sharing-target",
        "tailscale.com/cap/funnel-ports",
    }
)


def _parse_grant(grant: Mapping[str, Any], i: int, ctx: Ctx) -> Grant | None:
    path: Path = ("grants", i)
    n_errors = len(ctx.errors)
    src = _aliases(
        _strings(grant.get("src"), (*path, "src"), ctx),
        ctx,
        (*path, "src"),
        lambda _: "src=",
        ipsets=True,
    )
    dst_texts = _strings(grant.get("dst"), (*path, "dst"), ctx)
    dst = _aliases(dst_texts, ctx, (*path, "dst"), lambda v: f'dst="{v}": ', ipsets=True)
    via = []
    for j, text in enumerate(_strings(grant.get("via"), (*path, "via"), ctx)):
        if not text.startswith("tag:"):
            ctx.fail(f'via "{text}": only tags may be used', (*path, "via", j))
        elif text not in ctx.tags:
            ctx.fail(f'tag "{text}" not found', (*path, "via", j))
        else:
            via.append(Alias("tag", text))
    ips = []
    for j, text in enumerate(_strings(grant.get("ip"), (*path, "ip"), ctx)):
        try:
            ips.append(_parse_ip_cap(text))
        except PolicyError as e:
            ctx.fail(e.message, (*path, "ip", j))
    app = _parse_app(grant.get("app") or {}, ctx, (*path, "app"))
    if not grant.get("ip") and not grant.get("app"):
        ctx.fail("ip and app can not both be empty", path)
    for j, d in enumerate(dst):
        if d == Alias("autogroup", "autogroup:danger-all"):
            ctx.fail("cannot use autogroup:danger-all as a dst", (*path, "dst", j))
        if d == Alias("autogroup", "autogroup:internet") and app:
            ctx.fail("cannot use app grants with autogroup:internet", (*path, "dst", j))
        if d.kind == "prefix" and d.value in ("0.0.0.0/0", "::/0"):
            ctx.fail(
                f'dst "{d.value}": to allow all IP addresses, use "*" or "autogroup:internet"',
                (*path, "dst", j),
            )
    _check_self(src, list(dst), ctx, path, allow_wildcard=False)
    posture = parse_src_posture(grant.get("srcPosture"), ctx, (*path, "srcPosture"))
    expires = parse_expires(grant, path, ctx)
    if len(ctx.errors) != n_errors:
        return None
    return Grant(
        src=src,
        dst=dst,
        ip=tuple(ips),
        app=app,
        via=tuple(via),
        src_posture=posture,
        expires=expires,
    )


def refuse_unsupported_keys(doc: Mapping[str, Any], ctx: Ctx) -> None:
    """Policy keys this server cannot honour are refused, never parsed and ignored."""
    if doc.get("derpMap"):
        ctx.fail(
            "derpMap is not supported in the policy: declare DERP regions in settings "
            "(derp.regions), which the server serves to every node",
            ("derpMap",),
        )
    for key in ("OneCGNATRoute", "oneCGNATRoute"):
        if doc.get(key):
            ctx.fail(
                f"{key} is not supported: nodes always route the whole CGNAT range "
                "(100.64.0.0/10) through Tailscale",
                (key,),
            )


def _parse_node_attrs(doc: Mapping[str, Any], ctx: Ctx) -> tuple[NodeAttr, ...]:
    out = []
    for i, entry in enumerate(doc.get("nodeAttrs") or ()):
        path: Path = ("nodeAttrs", i)
        target = _aliases(
            _strings(entry.get("target"), (*path, "target"), ctx), ctx, (*path, "target")
        )
        pools = _strings(entry.get("ipPool"), (*path, "ipPool"), ctx)
        for j, pool in enumerate(pools):
            _check_ip_pool(pool, ctx, (*path, "ipPool", j))
        app = _parse_app(entry.get("app") or {}, ctx, (*path, "app"))
        out.append(
            NodeAttr(
                target=target,
                attrs=tuple(_strings(entry.get("attr"), (*path, "attr"), ctx)),
                ip_pool=tuple(pools),
                app=app,
            )
        )
    return tuple(out)


_RESERVED = (
    ipaddress.ip_network("100.100.0.0/16"),  # Tailscale service addresses (quad-100, ...)
    ipaddress.ip_network("100.115.92.0/23"),  # ChromeOS VMs
)


def _check_ip_pool(pool: str, ctx: Ctx, path: Path) -> None:
    prefix = parse_prefix(pool)
    if prefix is None:
        ctx.fail(f"IPPool({pool}): invalid prefix", path)
        return
    net = ipaddress.ip_network(prefix)
    if any(net.version == r.version and net.overlaps(r) for r in _RESERVED):
        ctx.fail(f"IPPool({pool}): network within reserved range", path)


def _parse_auto_approvers(doc: Mapping[str, Any], ctx: Ctx) -> AutoApprovers:
    raw = doc.get("autoApprovers") or {}
    routes = []
    for prefix, approvers in (raw.get("routes") or {}).items():
        path: Path = ("autoApprovers", "routes", prefix)
        norm = parse_prefix(prefix)
        if norm is None:
            ctx.fail(f'autoApprovers: "{prefix}": invalid prefix', path)
            continue
        routes.append((norm, _aliases(_strings(approvers, path, ctx), ctx, path)))
    exit_path: Path = ("autoApprovers", "exitNode")
    exit_node = _aliases(_strings(raw.get("exitNode"), exit_path, ctx), ctx, exit_path)
    return AutoApprovers(routes=tuple(routes), exit_node=exit_node)


def _parse_tests(doc: Mapping[str, Any], ctx: Ctx) -> tuple[PolicyTest, ...]:
    out = []
    for i, t in enumerate(doc.get("tests") or ()):
        path: Path = ("tests", i)
        if not isinstance(t, Mapping):
            ctx.fail("tests entries must be objects", path)
            continue
        _, src = _legacy(t, "src", "user", ctx, path)
        akey, accept = _legacy(t, "accept", "allow", ctx, path)
        accept = _strings(accept, (*path, akey), ctx)
        deny = _strings(t.get("deny"), (*path, "deny"), ctx)
        out.append(
            PolicyTest(
                src=src if isinstance(src, str) else "",
                proto=str(t.get("proto") or ""),
                accept=tuple(accept),
                deny=tuple(deny),
                src_posture_attrs=parse_test_posture_attrs(
                    t.get("srcPostureAttrs"), ctx, (*path, "srcPostureAttrs")
                ),
            )
        )
    return tuple(out)


def parse_policy(doc: Mapping[str, Any]) -> Policy:
    """Validate ``doc`` (the policy file as JSON) and build the policy model.

    Raises :class:`PolicyError` (a :class:`PolicyErrors` when several problems
    were found).
    """
    if not isinstance(doc, Mapping):
        raise PolicyError("policy must be a JSON object")
    errors: list[PolicyError] = []
    ctx = Ctx(doc, errors)
    refuse_unsupported_keys(doc, ctx)
    postures = parse_postures(doc.get("postures"), ctx)
    ctx.postures = postures
    default_posture = parse_src_posture(doc.get("defaultSrcPosture"), ctx, ("defaultSrcPosture",))
    tag_owners = _parse_tag_owners(ctx)
    groups, member_expiry = _parse_groups(ctx)
    hosts = _parse_hosts(ctx)
    ipsets = parse_ipsets(ctx, doc.get("ipsets"))
    acls = [_parse_acl(r, i, ctx) for i, r in enumerate(doc.get("acls") or ())]
    grants = [_parse_grant(g, i, ctx) for i, g in enumerate(doc.get("grants") or ())]
    ssh: list[SshRule] = []
    for i, rule in enumerate(doc.get("ssh") or ()):
        parsed = parse_ssh_rule(rule, i, ctx)
        if parsed is not None:
            ssh.append(parsed)
    ssh_tests: list[SshTest] = []
    for i, t in enumerate(doc.get("sshTests") or ()):
        parsed_test = parse_ssh_test(t, i, ctx)
        if parsed_test is not None:
            ssh_tests.append(parsed_test)
    node_attrs = _parse_node_attrs(doc, ctx)
    auto = _parse_auto_approvers(doc, ctx)
    tests = _parse_tests(doc, ctx)
    raise_collected(errors)
    return Policy(
        groups=groups,
        hosts=hosts,
        tag_owners=tag_owners,
        acls=tuple(a for a in acls if a is not None),
        grants=tuple(g for g in grants if g is not None),
        ssh=tuple(ssh),
        node_attrs=node_attrs,
        auto_approvers=auto,
        tests=tests,
        ssh_tests=tuple(ssh_tests),
        randomize_client_port=doc.get("randomizeClientPort") is True,
        disable_ipv4=doc.get("disableIPv4") is True,
        postures=postures,
        default_src_posture=default_posture,
        ipsets=ipsets,
        default_allow="acls" not in doc and "grants" not in doc,
        member_expiry=tuple(member_expiry),
    )
