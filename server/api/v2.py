"""Tailscale's API, the subset tailnetd can honour: `/api/v2/…`.

Devices (list, get, delete, authorize, tags, routes), auth keys (create,
list) and the policy file (read with its ETag, validate; a write is refused:
policy changes arrive by commit). Shapes follow Tailscale's API, so its
clients — gitops-pusher, the Go client, Terraform's provider — read them. The
tailnet in a path is `-` (the caller's) or the tailnet's DNS domain.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.responses import JSONResponse, Response

from gitctl.sources import MAX_FILE_BYTES
from server.api.common import approve_routes, check_tags, find_node, set_expiry_disabled
from server.api.deps import WebDeps
from server.api.endpoints import Call, Endpoint
from server.api.policyfile import PolicyFile, check_policy, policy_file
from server.api.problems import Problem
from server.bodies import (
    CreateAuthKeyV2,
    NoBody,
    SetAuthorized,
    SetDeviceKey,
    SetRoutes,
    SetTags,
)
from server.store.model import Node, PreAuthKey
from server.tailnet.views import advertised_routes
from server.wire import format_time

__all__ = ["endpoints"]

_BY_COMMIT = (
    "{what} comes from the tailnet.d repository: change it by commit, and the server"
    " serves it once it loads (check it first with POST /api/v2/tailnet/-/acl/validate)"
)


def endpoints(deps: WebDeps) -> list[Endpoint]:
    tailnet, registry, store, clock = deps.tailnet, deps.registry, deps.store, deps.clock

    def check_tailnet(call: Call) -> None:
        name = call.path("tailnet")
        domain = tailnet.source.domain
        if name not in ("-", domain):
            known = f"'-' or {domain!r}" if domain else "'-'"
            raise Problem("not-found", f"no tailnet {name!r} here: use {known}")

    def device_json(n: Node) -> dict[str, Any]:
        users = tailnet.source.users
        domain = tailnet.source.domain
        owner = users[n.user][0] if n.user is not None and n.user in users else "tagged-devices"
        return {
            "id": str(n.id),
            "nodeId": str(n.id),
            "addresses": [str(a) for a in (n.ipv4, n.ipv6) if a is not None],
            "name": f"{n.given_name}.{domain}" if domain else n.given_name,
            "hostname": n.hostname,
            "user": owner,
            "tags": list(n.tags),
            "authorized": True,
            "isExternal": False,
            "isEphemeral": n.ephemeral,
            "keyExpiryDisabled": n.key_expiry is None,
            "expires": format_time(n.key_expiry),
            "created": format_time(n.created),
            "lastSeen": format_time(n.last_seen),
            "connectedToControl": tailnet.is_online(n.id),
            "machineKey": n.machine_key.text,
            "nodeKey": n.node_key.text,
            "os": n.hostinfo.os,
            "clientVersion": n.hostinfo.ipn_version,
            "updateAvailable": False,
            "blocksIncomingConnections": False,
            "advertisedRoutes": list(advertised_routes(n)),
            "enabledRoutes": list(tailnet.enabled_routes(n)),
        }

    def key_json(k: PreAuthKey) -> dict[str, Any]:
        create = {
            "reusable": k.reusable,
            "ephemeral": k.ephemeral,
            "preauthorized": True,
            "tags": list(k.tags),
        }
        return {
            "id": k.prefix,
            "keyType": "auth",
            "description": k.declared_name or "",
            "created": format_time(k.created),
            "expires": format_time(k.expiration),
            "invalid": k.revoked or (k.expiration is not None and clock() >= k.expiration),
            "capabilities": {"devices": {"create": create}},
        }

    async def list_devices(call: Call) -> Any:
        check_tailnet(call)
        return {"devices": [device_json(n) for n in registry.nodes()]}

    async def get_device(call: Call) -> Any:
        return device_json(find_node(registry, call.path("id")))

    async def delete_device(call: Call) -> Any:
        node = find_node(registry, call.path("id"))
        registry.remove(node.id)
        return {}

    async def authorize(call: Call) -> Any:
        node = find_node(registry, call.path("id"))
        body: SetAuthorized = call.body
        if not body.authorized:
            raise Problem(
                "invalid-request",
                "tailnetd has no device approval: a device joins with a pre-auth key;"
                " to take one out, delete it or expire its key",
            )
        if deps.events is not None:
            deps.events.node_approved(node, by="api")
        return {}

    async def set_tags(call: Call) -> Any:
        node = find_node(registry, call.path("id"))
        body: SetTags = call.body
        registry.set_tags(node.id, check_tags(tailnet, body.tags))
        return {}

    async def set_key(call: Call) -> Any:
        node = find_node(registry, call.path("id"))
        body: SetDeviceKey = call.body
        set_expiry_disabled(tailnet, registry, node, body.keyExpiryDisabled, clock())
        return {}

    async def get_routes(call: Call) -> Any:
        node = find_node(registry, call.path("id"))
        return {
            "advertisedRoutes": list(advertised_routes(node)),
            "enabledRoutes": list(tailnet.enabled_routes(node)),
        }

    async def set_routes(call: Call) -> Any:
        node = find_node(registry, call.path("id"))
        body: SetRoutes = call.body
        approve_routes(tailnet, registry, node, body.routes)
        return await get_routes(call)

    async def list_keys(call: Call) -> Any:
        check_tailnet(call)
        return {"keys": [key_json(k) for k in store.list_preauth_keys()]}

    async def create_key(call: Call) -> Any:
        check_tailnet(call)
        body: CreateAuthKeyV2 = call.body
        create = body.capabilities.devices.create
        if not create.tags:
            raise Problem(
                "invalid-request",
                "keys made through /api/v2 are tagged: give capabilities.devices.create.tags"
                " (a key for a user's own devices: `tailnetd keys create --user NAME`)",
                {"field": "capabilities.devices.create.tags"},
            )
        tags = check_tags(tailnet, create.tags)
        if body.expirySeconds is not None and body.expirySeconds < 0:
            raise Problem("invalid-request", "expirySeconds must not be negative")
        now = clock()
        # Absent or 0 (what Tailscale's Go client sends when unset): 90 days, as there.
        seconds = body.expirySeconds or 90 * 86400
        text, created = store.create_preauth_key(
            "",  # a tagged key's nodes belong to their tags, not a user
            reusable=create.reusable,
            ephemeral=create.ephemeral,
            tags=tags,
            expiration=now + timedelta(seconds=seconds),
            now=now,
            rng=deps.rng,
        )
        if deps.events is not None:
            deps.events.key("created", "preauth", created.id, created.prefix)
        return {**key_json(created), "key": text, "description": body.description or ""}

    async def served_policy() -> tuple[Any, PolicyFile]:
        if deps.documents is None:
            raise Problem("not-found", "the served commit's files cannot be read here")
        docs = await deps.documents()
        return docs, policy_file(docs)

    async def get_acl(call: Call) -> Any:
        check_tailnet(call)
        _docs, served = await served_policy()
        headers = {"ETag": served.etag}
        if "application/hujson" in call.request.headers.get("accept", ""):
            return Response(served.text, media_type="application/hujson", headers=headers)
        return JSONResponse(dict(served.document), headers=headers)

    async def validate_acl(call: Call) -> Any:
        check_tailnet(call)
        docs, served = await served_policy()
        status, answer = check_policy(docs, served, call.body)
        return JSONResponse(answer, status)

    async def set_acl(call: Call) -> Any:
        check_tailnet(call)
        raise Problem("managed-in-git", _BY_COMMIT.format(what="The policy file"))

    tn = "/api/v2/tailnet/{tailnet}"
    dev = "/api/v2/device/{id}"
    return [
        Endpoint("GET", f"{tn}/devices", list_devices, "List devices", "v2 devices"),
        Endpoint("GET", dev, get_device, "One device", "v2 devices"),
        Endpoint("DELETE", dev, delete_device, "Delete a device", "v2 devices", body=NoBody),
        Endpoint(
            "POST", f"{dev}/authorized", authorize, "Authorize (always: keys are the door)",
            "v2 devices", body=SetAuthorized,
        ),
        Endpoint("POST", f"{dev}/tags", set_tags, "Replace tags", "v2 devices", body=SetTags),
        Endpoint(
            "POST", f"{dev}/key", set_key, "Disable or enable key expiry", "v2 devices",
            body=SetDeviceKey,
        ),
        Endpoint("GET", f"{dev}/routes", get_routes, "Advertised and enabled routes", "v2 devices"),
        Endpoint(
            "POST", f"{dev}/routes", set_routes,
            "Approve routes at runtime, where settings.yaml allows it (else refused)",
            "v2 devices", body=SetRoutes,
        ),
        Endpoint("GET", f"{tn}/keys", list_keys, "List auth keys", "v2 keys"),
        Endpoint(
            "POST", f"{tn}/keys", create_key, "Create a tagged auth key", "v2 keys",
            body=CreateAuthKeyV2,
        ),
        Endpoint(
            "GET", f"{tn}/acl", get_acl, "The served policy file, with its ETag", "v2 policy",
            response="application/hujson",
        ),
        Endpoint(
            "POST", f"{tn}/acl/validate", validate_acl, "Check a policy file as a commit would",
            "v2 policy", needs="read", raw_body="application/hujson", limit=MAX_FILE_BYTES,
        ),
        Endpoint(
            "POST", f"{tn}/acl", set_acl, "Refused: the policy changes by commit", "v2 policy",
            raw_body="application/hujson", limit=MAX_FILE_BYTES,
        ),
    ]  # fmt: skip
