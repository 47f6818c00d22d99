"""The admin API, `/api/v1/…`: nodes, pre-auth keys, API keys, users and commits.

Users and policy come from git and are read-only here, except runtime users (admitted
at an identity-provider login, not declared in git), which may be deleted through the
`UserRegistry`; node state is written through the `NodeRegistry` only. Every route is
declared once in `endpoints`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from server.api.audit import MAX_LIMIT as AUDIT_MAX
from server.api.audit import audit_json, parse_since
from server.api.common import (
    approve_routes,
    check_tags,
    find_node,
    optional_time,
    set_expiry_disabled,
)
from server.api.deps import WebDeps, parse_duration
from server.api.endpoints import Call, Endpoint, Param
from server.api.problems import Problem
from server.auth.pending import LoginGone, LoginRefused, PendingLogin
from server.bodies import (
    CreateApiKey,
    CreatePreAuthKey,
    NoBody,
    RefuseLogin,
    RegisterNode,
    RenameNode,
    SetKeyExpiry,
    SetRoutes,
    SetTags,
)
from server.drift import find_drift
from server.inventory import inventory_json
from server.logs import event
from server.sources.history import MAX_LIMIT as HISTORY_MAX
from server.sources.history import history_json
from server.sources.repo import Rejection
from server.sources.rollout import RolloutError
from server.store.model import ApiKey, Node, PreAuthKey
from server.tagcheck import check_new_key_tags, undeclared
from server.wire import format_time

__all__ = ["DEFAULT_API_KEY_LIFETIME", "endpoints"]

# headscale's default for `apikeys create`: long enough for automation, short
# enough that a forgotten key does not stay an admin forever.
DEFAULT_API_KEY_LIFETIME = "90d"

_ONLINE = ("true", "false")


def _time_or_none(when: datetime | None) -> str | None:
    return format_time(when) if when is not None else None


def endpoints(deps: WebDeps) -> list[Endpoint]:
    tailnet, registry, store, clock = deps.tailnet, deps.registry, deps.store, deps.clock
    log = deps.log or logging.getLogger("tailnetd")
    via = "socket" if deps.local else "api_key"

    def acted(name: str, message: str, *args: Any, **fields: Any) -> None:
        log.info("api: " + message, *args, extra=event(name, via=via, **fields))

    def node_acted(name: str, verb: str, n: Node) -> None:
        acted(
            name, f"node %d %s {verb}", n.id, n.given_name,
            node=n.id, node_name=n.given_name, user=n.user,
        )  # fmt: skip

    def expired(expiration: datetime | None) -> bool:
        return expiration is not None and clock() >= expiration

    def served_user(n: Node) -> str | None:
        # A runtime user a commit has since declared is the git user: its
        # nodes are listed (and filtered) under the name git gives it.
        return tailnet.source.owner(n).user

    def node_json(n: Node) -> dict[str, Any]:
        return {
            "id": n.id,
            "name": n.given_name,
            "hostname": n.hostname,
            "user": served_user(n),
            "tags": list(n.tags),
            "ipv4": str(n.ipv4) if n.ipv4 else None,
            "ipv6": str(n.ipv6) if n.ipv6 else None,
            "online": tailnet.is_online(n.id),
            "ephemeral": n.ephemeral,
            "created": format_time(n.created),
            "last_seen": optional_time(n.last_seen),
            "key_expiry": optional_time(n.key_expiry),
            "machine_key": n.machine_key.text,
            "node_key": n.node_key.text,
            "approved": n.approved,
        }

    def key_json(k: PreAuthKey) -> dict[str, Any]:
        return {
            "id": k.id,
            "prefix": k.prefix,
            "user": k.user,
            "reusable": k.reusable,
            "ephemeral": k.ephemeral,
            "tags": list(k.tags),
            "created": format_time(k.created),
            "expiration": optional_time(k.expiration),
            "used": k.used,
            "revoked": k.revoked,
            "expired": expired(k.expiration),
        }

    def api_key_json(k: ApiKey) -> dict[str, Any]:
        return {
            "id": k.id,
            "prefix": k.prefix,
            "scope": k.scope,
            "created": format_time(k.created),
            "expiration": optional_time(k.expiration),
            "last_used": optional_time(k.last_used),
            "expired": expired(k.expiration),
        }

    def rejection_json(r: Rejection) -> dict[str, Any]:
        return {"revision": r.revision, "at": format_time(r.at), "errors": list(r.errors)}

    async def status(call: Call) -> Any:
        body = deps.status.to_json()
        body["nodes"] = len(tailnet.context.nodes)
        body["online"] = len(tailnet.online_ids())
        # Replicas: the nodes whose map stream this process holds.
        body["streaming_here"] = sorted(registry.local_online_ids())
        body["cut_off"] = [
            {"id": n.id, "name": n.given_name, "user": n.user, "reason": "user not in tailnet.d"}
            for n in tailnet.cut_off()
        ]
        found = undeclared(
            tailnet.source.policy, registry.nodes(), store.list_preauth_keys(), clock()
        )
        body["undeclared_tags"] = [entry.to_json() for entry in found]
        return body

    async def repo(call: Call) -> Any:
        st = deps.status
        return {
            "serving": st.serving,
            "serving_since": optional_time(st.serving_since),
            "rejected": rejection_json(st.rejected) if st.rejected is not None else None,
            "history": [
                {"revision": e.revision, "at": format_time(e.at), "errors": list(e.reasons)}
                for e in (st.journal.entries(limit=100) if st.journal is not None else [])
                if e.outcome == "rejected"
            ],
        }

    async def repo_sync(call: Call) -> Any:
        acted("api.repo_sync", "repository sync requested")
        if deps.sync is not None:
            await deps.sync()
        return await status(call)

    async def decide_rollout(call: Call) -> Any:
        verb = call.path("verb")
        if deps.rollout is None or verb not in ("promote", "abort"):
            raise Problem("not-found", f"no such action {verb!r}: promote or abort")
        decide = deps.rollout.promote if verb == "promote" else deps.rollout.abort
        try:
            decide(f"{verb}d by an administrator ({via})")
        except RolloutError as exc:
            raise Problem("conflict", str(exc)) from None
        acted(f"api.rollout_{verb}", f"rollout: {verb}")
        return await status(call)

    async def list_users(call: Call) -> Any:
        src = tailnet.source
        counts: dict[str, int] = {}
        for n in registry.nodes():
            if n.user is not None:
                owner = src.owner(n).user or ""
                counts[owner] = counts.get(owner, 0) + 1
        logins, groups = store.last_logins(), store.login_groups()
        return [
            {
                "name": name,
                "email": email,
                "display_name": display,
                "nodes": counts.get(name, 0),
                "source": "runtime" if name in src.runtime_users else "git",
                "last_login": _time_or_none(logins.get(email.lower())),
                # policy groups of the last identity-provider login
                "groups": list(groups.get(email.lower(), ())),
            }
            for name, (email, display) in sorted(src.users.items())
        ]

    async def delete_user(call: Call) -> Any:
        name = call.path("name").strip().lower()
        src = tailnet.source
        if name not in src.runtime_users:
            if call.path("name") in src.users or name in {e for e, _ in src.users.values()}:
                raise Problem(
                    "conflict",
                    f"{call.path('name')} is declared in git: remove it from tailnet.d by commit",
                )
            raise Problem("not-found", f"no runtime user {call.path('name')!r}")
        if deps.users is None or not deps.users.delete(name):
            raise Problem("not-found", f"no runtime user {name!r}")
        acted("api.user_deleted", "runtime user %s deleted", name, user=name)
        return {"name": name, "email": name, "source": "runtime"}

    async def list_nodes(call: Call) -> Any:
        user, tag, online = call.query("user"), call.query("tag"), call.query("online")
        if online is not None and online not in _ONLINE:
            raise ValueError("online must be true or false")
        return [
            node_json(n)
            for n in registry.nodes()
            if (user is None or served_user(n) == user)
            and (tag is None or tag in n.tags)
            and (online is None or tailnet.is_online(n.id) == (online == "true"))
        ]

    async def get_node(call: Call) -> Any:
        return node_json(find_node(registry, call.path("ref")))

    async def delete_node(call: Call) -> Any:
        node = find_node(registry, call.path("ref"))
        registry.remove(node.id)
        node_acted("api.node_deleted", "deleted", node)
        return node_json(node)

    async def expire_node(call: Call) -> Any:
        node = find_node(registry, call.path("ref"))
        expired_node = registry.set_key_expiry(node.id, clock())
        node_acted("api.node_expired", "expired", expired_node)
        return node_json(expired_node)

    async def node_expiry(call: Call) -> Any:
        node = find_node(registry, call.path("ref"))
        body: SetKeyExpiry = call.body
        changed = set_expiry_disabled(tailnet, registry, node, body.disabled, clock())
        verb = "key expiry disabled" if body.disabled else "key expiry enabled"
        node_acted("api.node_expiry", verb, changed)
        return node_json(changed)

    async def node_routes(call: Call) -> Any:
        node = find_node(registry, call.path("ref"))
        body: SetRoutes = call.body
        changed = approve_routes(tailnet, registry, node, body.routes)
        node_acted("api.node_routes", "routes approved at runtime", changed)
        return {**node_json(changed), "enabled_routes": list(tailnet.enabled_routes(changed))}

    async def approve_node(call: Call) -> Any:
        node = find_node(registry, call.path("ref"))
        if node.approved:
            return node_json(node)
        approved = registry.approve(node.id)
        node_acted("api.node_approved", "approved", approved)
        return node_json(approved)

    async def rename_node(call: Call) -> Any:
        node = find_node(registry, call.path("ref"))
        renamed = registry.rename(node.id, call.body.name)
        node_acted("api.node_renamed", "renamed", renamed)
        return node_json(renamed)

    async def set_node_tags(call: Call) -> Any:
        node = find_node(registry, call.path("ref"))
        tags = check_tags(tailnet, call.body.tags)
        tagged = registry.set_tags(node.id, tags)
        node_acted("api.node_tagged", "tagged " + ",".join(tags), tagged)
        return node_json(tagged)

    def login_json(p: PendingLogin) -> dict[str, Any]:
        return {
            "auth_id": p.auth_id,
            "url": p.url,
            "hostname": p.hostname,
            "machine_key": p.machine_key.text,
            "state": p.state,
            "created": format_time(p.created),
            "expires": format_time(p.expires),
        }

    def logins() -> Any:
        if deps.logins is None:
            raise Problem("not-found", "interactive login is not enabled on this server")
        return deps.logins

    async def list_logins(call: Call) -> Any:
        return [login_json(p) for p in logins().waiting()]

    async def register_node(call: Call) -> Any:
        body: RegisterNode = call.body
        if body.user not in tailnet.source.users:
            known = ", ".join(sorted(tailnet.source.users)) or "none"
            raise ValueError(f"user {body.user!r} is not in tailnet.d (known users: {known})")
        try:
            node = logins().complete(body.auth_id, body.user)
        except LoginRefused as exc:  # the login ends refused; the client is told why
            raise Problem("invalid-request", str(exc)) from None
        except LoginGone as exc:
            raise Problem("not-found", str(exc)) from None
        node_acted("api.node_registered", f"registered for {body.user}", node)
        return node_json(node)

    async def refuse_login(call: Call) -> Any:
        try:
            refused = logins().refuse(call.path("auth_id"), call.body.reason)
        except LoginGone as exc:
            raise Problem("not-found", str(exc)) from None
        acted("api.login_refused", "login %s refused", refused.auth_id, auth_id=refused.auth_id)
        return login_json(refused)

    def checks() -> Any:
        if deps.ssh_checks is None:
            raise Problem("not-found", "SSH check mode is not enabled on this server")
        return deps.ssh_checks

    def check_json(c: Any) -> dict[str, Any]:
        return {
            "auth_id": c.auth_id,
            "url": c.url,
            "src_node": c.src_node,
            "dst_node": c.dst_node,
            "user": c.src_user,
            "local_user": c.local_user,
            "state": c.state,
            "created": format_time(c.created),
            "expires": format_time(c.expires),
        }

    async def list_checks(call: Call) -> Any:
        return [check_json(c) for c in checks().waiting()]

    async def decide_check(call: Call) -> Any:
        auth_id, verb = call.path("auth_id"), call.path("verb")
        try:
            if verb == "approve":
                decided = checks().approve(auth_id, f"an administrator ({via})", clock())
            elif verb == "refuse":
                decided = checks().refuse(auth_id, "refused by an administrator")
            else:
                raise Problem("not-found", f"no such action {verb!r}: approve or refuse")
        except LoginGone as exc:
            raise Problem("not-found", str(exc)) from None
        acted(f"api.ssh_check_{verb}", f"SSH check %s: {verb}", auth_id, auth_id=auth_id)
        return check_json(decided)

    async def list_keys(call: Call) -> Any:
        return [key_json(k) for k in store.list_preauth_keys(call.query("user"))]

    async def create_key(call: Call) -> Any:
        body: CreatePreAuthKey = call.body
        if body.user not in tailnet.source.users:
            known = ", ".join(sorted(tailnet.source.users)) or "none"
            raise ValueError(f"user {body.user!r} is not in tailnet.d (known users: {known})")
        check_new_key_tags(body.tags, tailnet.source.policy)
        now = clock()
        lifetime = parse_duration(body.expiration) if body.expiration is not None else None
        text, created = store.create_preauth_key(
            body.user,
            reusable=body.reusable,
            ephemeral=body.ephemeral,
            tags=body.tags,
            expiration=now + lifetime if lifetime is not None else None,
            now=now,
            rng=deps.rng,
        )
        if deps.events is not None:
            deps.events.key("created", "preauth", created.id, created.prefix, created.user)
        acted(
            "api.preauthkey_created", "pre-auth key %d created for %s", created.id, body.user,
            key=created.id, user=body.user, tags=list(body.tags),
        )  # fmt: skip
        return {"key": text, **key_json(created)}

    async def expire_key(call: Call) -> Any:
        ref = call.path("ref")
        expired_key = store.expire_preauth_key(int(ref) if ref.isdigit() else ref, clock())
        if deps.events is not None:
            deps.events.key(
                "expired", "preauth", expired_key.id, expired_key.prefix, expired_key.user
            )
        acted(
            "api.preauthkey_expired", "pre-auth key %d expired", expired_key.id, key=expired_key.id
        )
        return key_json(expired_key)

    async def list_api_keys(call: Call) -> Any:
        return [api_key_json(k) for k in store.list_api_keys()]

    async def create_api_key(call: Call) -> Any:
        body: CreateApiKey = call.body
        now = clock()
        lifetime = parse_duration(
            body.expiration if body.expiration is not None else DEFAULT_API_KEY_LIFETIME
        )
        text, created = store.create_api_key(
            expiration=now + lifetime, now=now, rng=deps.rng, scope=body.scope
        )
        if deps.events is not None:
            deps.events.key("created", "api", created.id, created.prefix)
        acted("api.apikey_created", "API key %d created", created.id, key=created.id)
        return {"key": text, **api_key_json(created)}

    async def expire_api_key(call: Call) -> Any:
        ref = call.path("ref")
        expired_key = store.expire_api_key(int(ref) if ref.isdigit() else ref, clock())
        if deps.events is not None:
            deps.events.key("expired", "api", expired_key.id, expired_key.prefix)
        acted("api.apikey_expired", "API key %d expired", expired_key.id, key=expired_key.id)
        return api_key_json(expired_key)

    async def history(call: Call) -> Any:
        return history_json(deps.status.journal, call.query("limit"))

    async def audit(call: Call) -> Any:
        raw = call.query("limit") or "100"
        if not raw.isdigit() or not 0 < int(raw) <= AUDIT_MAX:
            raise ValueError(f"limit must be a whole number from 1 to {AUDIT_MAX}")
        since = parse_since(call.query("since"), clock())
        return {"audit": [audit_json(e) for e in store.list_audit(since=since, limit=int(raw))]}

    async def drift(call: Call) -> Any:
        src = tailnet.source
        declared = src.snapshot.keys if src.snapshot is not None else ()
        found = find_drift(
            declared_keys=declared, users=src.users, policy=src.policy,
            nodes=registry.nodes(), keys=store.list_preauth_keys(), now=clock(),
            runtime_users=src.runtime_users,
        )  # fmt: skip
        return {"revision": src.id, "drift": [d.to_json() for d in found]}

    async def inventory(call: Call) -> Any:
        src = tailnet.source
        return inventory_json(
            src.users, src.policy.roles, map(src.owner, registry.nodes()), tailnet.enabled_routes,
            revision=src.id, exported=clock(),
        )  # fmt: skip

    node_filters = (
        Param("user", "only nodes owned by this user"),
        Param("tag", "only nodes carrying this tag"),
        Param("online", "only nodes online (true) or offline (false)", _ONLINE),
    )
    return [
        Endpoint("GET", "/api/v1/status", status, "What is served, nodes, warnings", "status"),
        Endpoint("GET", "/api/v1/repo", repo, "Serving and rejected commits", "status"),
        Endpoint(
            "POST", "/api/v1/repo/sync", repo_sync, "Read the repository now", "status", body=NoBody
        ),
        Endpoint(
            "POST", "/api/v1/rollout/{verb}", decide_rollout,
            "Decide the canary rollout now (verb: promote | abort)", "status", body=NoBody,
        ),
        Endpoint(
            "GET",
            "/api/v1/history",
            history,
            "Served and rejected commits, newest first, across restarts",
            "status",
            query=(Param("limit", f"at most this many entries (1 to {HISTORY_MAX})"),),
        ),
        Endpoint(
            "GET", "/api/v1/audit", audit, "Admin actions, newest first: who, what, the result",
            "status",
            query=(
                Param("since", "only entries since: a duration back (12h) or an ISO 8601 time"),
                Param("limit", f"at most this many entries (1 to {AUDIT_MAX})"),
            ),
        ),
        Endpoint(
            "GET", "/api/v1/users", list_users,
            "Users: declared in git (source git) or admitted at login (source runtime), with "
            "their last identity-provider login and its groups", "users",
        ),
        Endpoint(
            "DELETE", "/api/v1/users/{name}", delete_user,
            "Delete a runtime user (its nodes are cut off); git users change by commit",
            "users", body=NoBody,
        ),
        Endpoint(
            "GET", "/api/v1/drift", drift,
            "Runtime state that differs from what git declares (keys, tags, users)", "status",
        ),
        Endpoint(
            "GET", "/api/v1/inventory", inventory,
            "Users and devices a policy is evaluated against, for gitctl --inventory (no keys)",
            "users",
        ),
        Endpoint("GET", "/api/v1/nodes", list_nodes, "List nodes", "nodes", query=node_filters),
        Endpoint(
            "POST", "/api/v1/nodes/register", register_node,
            "Approve an interactive login: its node joins as the user", "nodes", body=RegisterNode,
        ),
        Endpoint("GET", "/api/v1/logins", list_logins, "Interactive logins waiting", "nodes"),
        Endpoint(
            "POST", "/api/v1/logins/{auth_id}/refuse", refuse_login,
            "Refuse an interactive login", "nodes", body=RefuseLogin,
        ),
        Endpoint("GET", "/api/v1/ssh/checks", list_checks, "SSH checks waiting", "ssh"),
        Endpoint(
            "POST", "/api/v1/ssh/checks/{auth_id}/{verb}", decide_check,
            "Approve or refuse an SSH check (verb: approve | refuse)", "ssh", body=NoBody,
        ),
        Endpoint("GET", "/api/v1/nodes/{ref}", get_node, "One node", "nodes"),
        Endpoint(
            "DELETE", "/api/v1/nodes/{ref}", delete_node, "Delete a node", "nodes", body=NoBody
        ),
        Endpoint(
            "POST", "/api/v1/nodes/{ref}/expire", expire_node, "Expire a node's key now", "nodes",
            body=NoBody,
        ),
        Endpoint(
            "POST", "/api/v1/nodes/{ref}/expiry", node_expiry,
            "Disable (or enable again) a node's key expiry", "nodes", body=SetKeyExpiry,
        ),
        Endpoint(
            "POST", "/api/v1/nodes/{ref}/routes", node_routes,
            "Approve routes at runtime (replacing the list), where settings.yaml allows it",
            "nodes", body=SetRoutes,
        ),
        Endpoint(
            "POST", "/api/v1/nodes/{ref}/approve", approve_node,
            "Approve a node waiting for device approval", "nodes", body=NoBody,
        ),
        Endpoint(
            "POST", "/api/v1/nodes/{ref}/rename", rename_node, "Rename a node", "nodes",
            body=RenameNode,
        ),
        Endpoint(
            "POST", "/api/v1/nodes/{ref}/tags", set_node_tags, "Replace a node's tags", "nodes",
            body=SetTags,
        ),
        Endpoint(
            "GET", "/api/v1/preauthkeys", list_keys, "List pre-auth keys", "preauthkeys",
            query=(Param("user", "only this user's keys"),),
        ),
        Endpoint(
            "POST", "/api/v1/preauthkeys", create_key, "Create a pre-auth key (shown once)",
            "preauthkeys", body=CreatePreAuthKey,
        ),
        Endpoint(
            "POST", "/api/v1/preauthkeys/{ref}/expire", expire_key, "Expire a pre-auth key",
            "preauthkeys", body=NoBody,
        ),
        Endpoint("GET", "/api/v1/apikeys", list_api_keys, "List API keys", "apikeys"),
        Endpoint(
            "POST", "/api/v1/apikeys", create_api_key, "Create an API key (shown once)", "apikeys",
            needs="socket", body=CreateApiKey,
        ),
        Endpoint(
            "POST", "/api/v1/apikeys/{ref}/expire", expire_api_key, "Expire an API key",
            "apikeys", body=NoBody,
        ),
    ]  # fmt: skip
