"""``ipsets``: named sets of addresses built by adding and removing targets.

Each entry is ``"add <target>"`` or ``"remove <target>"``, applied in order; a
set whose entries only add may leave out the word ``add``. A target is an IP,
a CIDR, a host from ``hosts``, ``autogroup:internet`` or another ipset (no
users, groups or tags: an ipset is addresses only). The result is kept as
collapsed prefixes and used wherever an address fits in acls and grants.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .addrs import INTERNET_RANGES
from .errors import Path

if TYPE_CHECKING:
    from .parse import Ctx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(text: str) -> list[Network]:
    """A prefix, bare IP or inclusive range ("a-b") as networks."""
    if "-" in text:
        lo, hi = (ipaddress.ip_address(p) for p in text.split("-", 1))
        return list(ipaddress.summarize_address_range(lo, hi))
    return [ipaddress.ip_network(text, strict=False)]


def _subtract(have: list[Network], cut: Network) -> list[Network]:
    out: list[Network] = []
    for net in have:
        if net.version != cut.version or not net.overlaps(cut):
            out.append(net)
        elif not cut.supernet_of(net):  # type: ignore[arg-type]
            out.extend(net.address_exclude(cut))  # type: ignore[arg-type]
    return out


def _collapse(nets: list[Network]) -> list[Network]:
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


class _Builder:
    def __init__(self, raw: Mapping[str, Any], ctx: Ctx) -> None:
        self.raw = raw
        self.ctx = ctx
        self.done: dict[str, list[Network] | None] = {}  # None: failed
        self.active: list[str] = []

    def build(self, name: str, path: Path) -> list[Network] | None:
        if name in self.done:
            return self.done[name]
        if name in self.active:
            cycle = " -> ".join([*self.active[self.active.index(name) :], name])
            self.ctx.fail(f'ipsets["{name}"]: circular reference: {cycle}', path)
            return None
        self.active.append(name)
        result = self._entries(name)
        self.active.pop()
        self.done[name] = result
        return result

    def _entries(self, name: str) -> list[Network] | None:
        path: Path = ("ipsets", name)
        entries = self.raw[name]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            self.ctx.fail(f'ipsets["{name}"]: expected a list of strings', path)
            return None
        ops = [e.strip().split(None, 1) for e in entries]
        explicit = any(len(o) == 2 and o[0] in ("add", "remove") for o in ops)
        have: list[Network] = []
        ok = True
        for j, parts in enumerate(ops):
            epath: Path = (*path, j)
            if len(parts) == 2 and parts[0] in ("add", "remove"):
                op, target = parts
            elif explicit or len(parts) != 1:
                self.ctx.fail(
                    f'ipsets["{name}"]: "{entries[j]}": start each entry with "add" or '
                    '"remove" (only a set that just adds may leave them out)',
                    epath,
                )
                ok = False
                continue
            else:
                op, target = "add", parts[0]
            nets = self._target(name, target, epath)
            if nets is None:
                ok = False
            elif op == "add":
                have.extend(nets)
            else:
                for cut in nets:
                    have = _subtract(have, cut)
        return _collapse(have) if ok else None

    def _target(self, name: str, target: str, path: Path) -> list[Network] | None:
        where = f'ipsets["{name}"]: "{target}": '
        if target.startswith("ipset:"):
            if target not in self.raw:
                self.ctx.fail(f'{where}ipset not found: "{target}"', path)
                return None
            return self.build(target, path)
        if target == "autogroup:internet":
            return [n for r in INTERNET_RANGES for n in _networks(r)]
        if target.startswith(("autogroup:", "tag:", "group:", "user:", "posture:")) or (
            "@" in target
        ):
            self.ctx.fail(
                f"{where}an ipset holds addresses only: IPs, CIDRs, hosts, "
                "autogroup:internet and other ipsets",
                path,
            )
            return None
        text = self.ctx.hosts.get(target, target)
        try:
            return [ipaddress.ip_network(text, strict=False)] if isinstance(text, str) else []
        except ValueError:
            self.ctx.fail(f"{where}invalid address", path)
            return None


def parse_ipsets(ctx: Ctx, raw: Any) -> dict[str, tuple[str, ...]]:
    """Every ipset resolved to collapsed prefix texts; problems go to ``ctx``."""
    raw = ctx.section(raw, "ipsets")
    builder = _Builder(raw, ctx)
    out: dict[str, tuple[str, ...]] = {}
    for name in raw:
        if not name.startswith("ipset:") or name == "ipset:":
            ctx.fail(f'ipsets["{name}"]: ipset names must start with "ipset:"', ("ipsets", name))
            continue
        nets = builder.build(name, ("ipsets", name))
        if nets is not None:
            out[name] = tuple(str(n) for n in nets)
    return out
