"""`gitctl diff BASE [HEAD]`: the effective access change between two revisions.

Both revisions are compiled against one topology: hypothetical devices (one per user and
tag of either revision) by default, a topology or inventory file, or the node list of a
running server.
The output says who gained or lost which ports, SSH logins and peers, by user, tag or group,
for a pull-request comment (markdown), a terminal (text) or a tool (json).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from gitctl.access import (
    AccessDiff,
    Label,
    PeerChange,
    ReachChange,
    SshChange,
    diff_access,
    effective_access,
)
from gitctl.diagnostics import render_text
from gitctl.expiring import expiring_access, expiring_json, parse_window, render_expiring
from gitctl.idp_groups import add_groups_argument, groups_from_args, merge_groups
from gitctl.inventory import add_device_arguments, devices_from_args
from gitctl.policy import PolicyError, Topology, TopologyNode, TopologyUser, compile_tailnet
from gitctl.review import Reviewed, load_for_review
from gitctl.snapshot import Snapshot
from gitctl.testing import TopologyFileError, synthetic_topology
from gitctl.validate_cmd import UsageError, add_now_argument, now_from_args

__all__ = [
    "add_parser",
    "add_server_arguments",
    "fetch_server_topology",
    "render",
    "run",
    "topology_from_args",
]

TIMEOUT = 10.0
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 47: "gre", 50: "esp"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diff",
        help="show the access changes between two revisions",
        description="Compile two revisions against the same devices and show who gained or "
        "lost which ports, SSH logins and peers. Exit 0 (with --exit-code: 1 when anything "
        "changed), 1 when a revision does not load (the diff is still shown when the rest of it "
        "does: a failing policy test, or a broken file read at its BASE version), 2 on a usage "
        "error or unreadable topology.",
    )
    p.add_argument("base", metavar="BASE", help="the revision before, e.g. origin/main")
    p.add_argument("head", metavar="HEAD", nargs="?", default="HEAD", help="default: HEAD")
    p.add_argument("--repo", metavar="PATH", default=".", help="the git repository (default: .)")
    where = p.add_mutually_exclusive_group()
    add_server_arguments(p, where)
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    p.add_argument(
        "--expiring-within",
        metavar="DURATION",
        type=_window,
        default="7d",
        help="also list HEAD's access that expires within this time, e.g. 36h, 2w "
        "(default: 7d; 0s: none)",
    )
    add_now_argument(p)
    p.add_argument(
        "--exit-code", action="store_true", help="exit 1 when anything changed, like git diff"
    )
    p.set_defaults(run=run)


_Usage = UsageError


def add_server_arguments(
    p: argparse.ArgumentParser, where: argparse._MutuallyExclusiveGroup
) -> None:
    """--topology, --inventory and --server URL (with --api-key): the devices to compile for."""
    add_device_arguments(
        where, "compile against (default: one hypothetical device per user and tag)"
    )
    where.add_argument("--server", metavar="URL", help="use a running server's nodes")
    p.add_argument(
        "--api-key", metavar="KEY", help="admin API key for --server (default: $TAILNETD_API_KEY)"
    )
    add_groups_argument(p)


def _window(text: str) -> str:
    try:
        parse_window(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- the topology --------------------------------------------------------------------------


def _fetch_list(url: str, path: str, api_key: str, what: str, timeout: float) -> list[Any]:
    request = urllib.request.Request(
        url.rstrip("/") + path,
        headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            found = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _Usage(f"{url} answered {exc.code} {exc.reason} for the {what}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Usage(f"cannot read the {what} from {url}: {reason}") from None
    if not isinstance(found, list):
        raise _Usage(f"{url} did not answer with a {what}")
    return found


def _server_users(
    listed: list[Any], users: Sequence[TopologyUser]
) -> tuple[list[TopologyUser], dict[str, tuple[str, ...]]]:
    """`users` (of the revisions compared) and the server's runtime users (admitted at
    login, not in git), with the policy groups each user's last login carried."""
    out = list(users)
    emails = {u.email.lower() for u in users if u.email}
    groups: dict[str, set[str]] = {}
    for u in listed:
        if not isinstance(u, dict) or not isinstance(u.get("email"), str):
            continue
        email = u["email"].lower()
        if u.get("source") == "runtime" and email not in emails:
            emails.add(email)
            out.append(TopologyUser(len(out) + 1, str(u.get("name") or email), email))
        for group in u.get("groups") or ():
            if isinstance(group, str):
                groups.setdefault(group, set()).add(email)
    return out, {g: tuple(sorted(m)) for g, m in sorted(groups.items())}


def fetch_server_topology(
    url: str, api_key: str, users: Sequence[TopologyUser], timeout: float = TIMEOUT
) -> Topology:
    """The live nodes of a running server (`GET /api/v1/nodes`), owned by `users` and the
    server's runtime users (`GET /api/v1/users`), with the identity-provider groups of
    each user's last login."""
    nodes = _fetch_list(url, "/api/v1/nodes", api_key, "node list", timeout)
    listed = _fetch_list(url, "/api/v1/users", api_key, "user list", timeout)
    all_users, groups = _server_users(listed, users)
    seen: set[str] = set()
    out = []
    for n in nodes:
        name = str(n.get("name") or n.get("id"))
        if name in seen:  # given names are unique per tailnet, but do not rely on it
            name = f"{name}#{n.get('id')}"
        seen.add(name)
        tags = tuple(n.get("tags") or ())
        out.append(
            TopologyNode(
                name=name,
                hostname=str(n.get("hostname") or name),
                user=None if tags else n.get("user"),
                tags=tags,
                ipv4=n.get("ipv4"),
                ipv6=n.get("ipv6"),
            )
        )
    return merge_groups(Topology(users=tuple(all_users), nodes=tuple(out)), groups)


def _users(*snapshots: Snapshot) -> list[TopologyUser]:
    out: dict[str, TopologyUser] = {}
    for snap in snapshots:
        for spec in snap.users:
            out.setdefault(spec.name, TopologyUser(len(out) + 1, spec.name, spec.email))
    return list(out.values())


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def topology_from_args(
    args: argparse.Namespace, head: Snapshot, *others: Snapshot, command: str = "diff"
) -> tuple[Topology, str]:
    """The devices named by --server, --inventory or --topology, else hypothetical ones for
    `head` and `others`; with where they came from. Raises UsageError."""
    if args.api_key and not args.server:
        raise _Usage("--api-key is for --server")
    if args.server:
        # From the environment too, as `tailnetd` reads it: keeps the key out of CI logs.
        api_key = args.api_key or os.environ.get("TAILNETD_API_KEY")
        if not api_key:
            raise _Usage("--server needs --api-key or TAILNETD_API_KEY (an admin API key)")
        if urlsplit(args.server).scheme == "http" and not _is_loopback(args.server):
            print(
                f"gitctl {command}: warning: the API key goes to {args.server} unencrypted; "
                "use https://",
                file=sys.stderr,
            )
        users = _users(head, *others)
        topology, source = fetch_server_topology(args.server, api_key, users), args.server
    else:
        try:
            given = devices_from_args(args)
        except TopologyFileError as exc:
            raise _Usage(str(exc)) from None
        topology, source = given or (synthetic_topology(head, *others), "synthetic")
    try:
        return merge_groups(topology, groups_from_args(args)), source
    except TopologyFileError as exc:
        raise _Usage(str(exc)) from None


# -- comparing -----------------------------------------------------------------------------


def _groups(*snapshots: Snapshot) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for snap in snapshots:
        for name, members in (snap.policy_doc.get("groups") or {}).items():
            if isinstance(members, list):
                names = (m.get("user") if isinstance(m, dict) else m for m in members)
                out.setdefault(name, [m for m in names if isinstance(m, str)])
    return out


def compare(
    base: Snapshot, head: Snapshot, topology: Topology, now: datetime | None = None
) -> AccessDiff:
    """The access change as in force at `now`. Raises PolicyError when a revision's policy
    cannot apply to `topology` (or has expiry times and `now` is None)."""
    accesses = []
    for snap in (base, head):
        # Tests were checked when the revision loaded; other devices must not re-judge them.
        compiled = compile_tailnet(snap.policy, topology, now=now, enforce_tests=False)
        accesses.append(effective_access(compiled, topology))
    return diff_access(accesses[0], accesses[1], topology, _groups(head, base))


# -- rendering -----------------------------------------------------------------------------


def _code(text: str, markdown: bool) -> str:
    return f"`{text}`" if markdown else text


def _who(label: Label, md: bool, *, dst: bool = False) -> str:
    if label.kind == "user" and dst:
        return f"{_code(label.name, md)}'s devices"
    if label == Label("autogroup", "autogroup:self") and dst:
        return "their own devices"
    if label.kind == "wildcard":
        return f"every device ({_code('*', md)})"
    if label.kind == "node":
        return f"the device {_code(label.name, md)}"
    return _code(label.name, md)


def _ranges_text(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


def _port_text(ranges: Sequence[tuple[int, int]]) -> str:
    """`*`, `22, 443`, or `* except 22, 443` when that is shorter."""
    if list(ranges) == [(0, 65535)]:
        return "*"
    missing, at = [], 0
    for first, last in ranges:
        if first > at:
            missing.append((at, first - 1))
        at = last + 1
    if at <= 65535:
        missing.append((at, 65535))
    if len(missing) < len(ranges) and (0, 0) not in missing:
        return "* except " + _ranges_text(missing)
    return _ranges_text(ranges)


def ports_text(ports: Sequence[tuple[int, int, int]]) -> str:
    """`any port`, `port 22`, `ports 22, 443`, `tcp/22`, `udp/53, icmp` …

    TCP and UDP on the same ports read as plain ports, the way a policy rule without
    "proto" writes them; ICMP has no ports.
    """
    by_proto: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for proto, first, last in ports:
        by_proto[proto].append((first, last))
    icmp = [by_proto.pop(p, None) is not None for p in (1, 58)]
    parts = []
    tcp = by_proto.get(6)
    if tcp and by_proto.get(17) == tcp:
        del by_proto[6], by_proto[17]
        text = _port_text(tcp)
        if text == "*" and all(icmp):
            return "any port"
        if text.startswith("*"):
            parts.append("any tcp or udp port" + text[1:])
        else:
            parts.append(f"port{'s' if ',' in text or '-' in text else ''} {text}")
    for proto in sorted(by_proto):
        parts.append(f"{PROTO_NAMES.get(proto, f'proto {proto}')}/{_port_text(by_proto[proto])}")
    if any(icmp):
        parts.append("icmp" if icmp[0] else "icmpv6")
    return ", ".join(parts)


def _login(login: str, local: str, md: bool) -> str:
    if login == "*":
        return "any non-root user" if local == "=" else f"any user, as {_code(local, md)}"
    if local in (login, "="):
        return _code(login, md)
    return f"{_code(login, md)} (local account {_code(local, md)})"


def _reach_line(c: ReachChange, md: bool) -> str:
    verb = "can now reach" if c.gained else "can no longer reach"
    return f"{verb} {_who(c.dst, md, dst=True)} on {ports_text(c.ports)}"


def _ssh_lines(changes: Sequence[SshChange], md: bool) -> list[tuple[bool, str]]:
    grouped: dict[tuple[bool, Label, Label, str], list[str]] = defaultdict(list)
    for c in changes:
        grouped[(c.gained, c.src, c.dst, c.action)].append(_login(c.login, c.local_user, md))
    out = []
    for (gained, src, dst, action), logins in grouped.items():
        logins.sort(key=lambda text: (" user" in text, text))  # named accounts first
        verb = "may ssh" if gained else "may no longer ssh"
        check = " (with a check)" if action == "check" else ""
        who = f"{_who(src, md)} {verb} to {_who(dst, md, dst=True)}"
        out.append((gained, f"{who} as {' or '.join(logins)}{check}"))
    return out


def _peer_line(c: PeerChange, md: bool) -> str:
    verb = "now sees" if c.gained else "no longer sees"
    return f"{_who(c.viewer, md)} {verb} {_who(c.peer, md, dst=True)} as peers"


def render(diff: AccessDiff, base: str, head: str, fmt: str) -> str:
    """The change in `markdown` or `text` (see `render_json` for the machine form)."""
    md = fmt == "markdown"
    sign: Callable[[bool], str] = (
        (lambda g: "- ➕" if g else "- ➖") if md else (lambda g: "  +" if g else "  -")
    )
    title = f"Access changes ({base} → {head})"
    if not diff.changed:
        return f"No access changes ({base} → {head})\n"
    lines = [f"### {title}" if md else title]

    def heading(text: str) -> None:
        lines.append(f"**{text}**" if md else text)

    by_src: dict[Label, list[ReachChange]] = defaultdict(list)
    for c in diff.reach:
        by_src[c.src].append(c)
    for src, changes in by_src.items():
        heading(_who(src, md) if src.kind in ("wildcard", "node") else src.name)
        lines += [f"{sign(c.gained)} {_reach_line(c, md)}" for c in changes]
    if diff.ssh:
        heading("SSH")
        lines += [f"{sign(g)} {text}" for g, text in _ssh_lines(diff.ssh, md)]
    if diff.peers:
        heading("Peers")
        lines += [f"{sign(c.gained)} {_peer_line(c, md)}" for c in diff.peers]
    return "\n".join(lines) + "\n"


def _label_json(label: Label) -> dict[str, str]:
    return {"kind": label.kind, "name": label.name}


def render_json(
    diff: AccessDiff,
    base: Mapping[str, Any],
    head: Mapping[str, Any],
    topology: str,
    expiring: Sequence[Mapping[str, Any]] = (),
) -> str:
    def change(gained: bool) -> str:
        return "gained" if gained else "lost"

    doc = {
        "base": dict(base),
        "head": dict(head),
        "topology": topology,
        "changed": diff.changed,
        "reach": [
            {
                "change": change(c.gained),
                "src": _label_json(c.src),
                "dst": _label_json(c.dst),
                "ports": [
                    {"proto": PROTO_NAMES.get(proto, str(proto)), "first": first, "last": last}
                    for proto, first, last in c.ports
                ],
                "summary": ports_text(c.ports),
            }
            for c in diff.reach
        ],
        "ssh": [
            {
                "change": change(c.gained),
                "src": _label_json(c.src),
                "dst": _label_json(c.dst),
                "login": c.login,
                "local_user": c.local_user,
                "action": c.action,
            }
            for c in diff.ssh
        ],
        "peers": [
            {
                "change": change(c.gained),
                "viewer": _label_json(c.viewer),
                "peer": _label_json(c.peer),
            }
            for c in diff.peers
        ],
        "expiring": list(expiring),
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# -- the command ---------------------------------------------------------------------------


def _load(repo: str, rev: str, now: datetime, base: Reviewed | None = None) -> Reviewed:
    reviewed = load_for_review(repo, rev, base.documents if base is not None else None, now=now)
    if reviewed.snapshot is not None and reviewed.snapshot.policy is None:
        raise _Usage("the policy compiler is not available in this installation")
    return reviewed


def _short(snap: Snapshot, rev: str) -> str:
    return snap.id[:7] if snap.revision else rev


def _problems_text(rev: str, reviewed: Reviewed, md: bool) -> str:
    """What is wrong with a revision that the diff above still compared."""
    if not reviewed.broken:
        return ""
    lines = ["", f"**{rev} cannot be served:**" if md else f"{rev} cannot be served:"]
    if reviewed.stand_ins:
        named = ", ".join(_code(p, md) for p in reviewed.stand_ins)
        lines.append(f"- these files do not load; the diff above reads BASE's version: {named}")
    lines += [f"- {_code(d.location(), md)}: {d.message}" for d in reviewed.result.diagnostics]
    return "\n".join(lines) + "\n"


def _report_broken(rev: str, reviewed: Reviewed) -> None:
    print(f"gitctl diff: {rev} does not load:", file=sys.stderr)
    sys.stderr.write(render_text(reviewed.result.diagnostics, reviewed.result.texts))


def run(args: argparse.Namespace) -> int:
    try:
        now = now_from_args(args)
        base_r = _load(args.repo, args.base, now)
        head_r = _load(args.repo, args.head, now, base_r)
        for rev, reviewed in ((args.base, base_r), (args.head, head_r)):
            if reviewed.broken:
                _report_broken(rev, reviewed)
        base, head = base_r.snapshot, head_r.snapshot
        if base is None or head is None:
            return 1
        topology, source = topology_from_args(args, head, base)
    except _Usage as exc:
        print(f"gitctl diff: {exc}", file=sys.stderr)
        return 2
    try:
        diff = compare(base, head, topology, now)
    except PolicyError as exc:
        print(f"gitctl diff: the policy does not apply to these devices: {exc}", file=sys.stderr)
        return 1
    broken = base_r.broken or head_r.broken
    soon = expiring_access(head, now, parse_window(args.expiring_within))
    if args.format == "json":
        ends = [
            {
                "rev": rev,
                "id": s.id,
                "loads": not r.broken,
                "stand_ins": list(r.stand_ins),
                "problems": [d.as_dict() for d in r.result.diagnostics if r.broken],
            }
            for rev, s, r in ((args.base, base, base_r), (args.head, head, head_r))
        ]
        sys.stdout.write(render_json(diff, ends[0], ends[1], source, expiring_json(soon)))
    else:
        md = args.format == "markdown"
        sys.stdout.write(
            render(diff, _short(base, args.base), _short(head, args.head), args.format)
            + _problems_text(args.base, base_r, md)
            + _problems_text(args.head, head_r, md)
        )
        expiring_text = render_expiring(soon, args.expiring_within, args.format)
        if expiring_text:
            sys.stdout.write("\n" + expiring_text)
    if broken:
        return 1
    return 1 if args.exit_code and diff.changed else 0
