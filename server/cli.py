"""`tailnetd`: serve, and administer the running server through its socket
(or, with --server and an API key, over HTTP(S))."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from server.admin_client import AdminError, HttpTarget, SocketTarget, Target, call

__all__ = ["main"]


SETTLE_AFTER = 1.0  # seconds after start-up: the HTTP app loads, then gc.freeze()


async def _settle() -> None:
    await asyncio.sleep(SETTLE_AFTER)
    # The HTTP app (starlette, the admin API, the operator page: ~0.1 s of CPU)
    # loads off the loop now rather than stalling the first request for it.
    await asyncio.to_thread(importlib.import_module, "server.api._app")
    # So does the libsodium binding every Noise handshake's X25519 uses (~10 ms,
    # 1.1 MB): once before the first client's handshake, not inside it.
    await asyncio.to_thread(importlib.import_module, "nacl.bindings")
    # ctypes for the heap trim (~10 ms): after serving began, like the above.
    heaptrim = await asyncio.to_thread(importlib.import_module, "server.heaptrim")
    gc.collect()
    gc.freeze()
    gc.enable()
    # From now on, a registration storm's or a commit's freed C heap goes back.
    heap_trim = heaptrim.HeapTrim.for_this_process()
    if heap_trim is not None:
        await heap_trim.run()


def _serve(args: argparse.Namespace) -> int:
    # No collections while start-up imports modules and builds the first index:
    # everything it makes lives on, so each pass would scan it for nothing.
    # One collection once serving, then gc.freeze() (below).
    gc.disable()  # (main turned it off already; a caller of _serve may not have)
    from server.config import ConfigError, load_config

    memtrace = None
    # Off unless TAILNETD_TRACEMALLOC names a directory; the module (ctypes,
    # finding libc: ~50 ms) is not imported otherwise, for a 0.3 s cold start.
    if os.environ.get("TAILNETD_TRACEMALLOC"):
        from server.memtrace import MemTrace

        memtrace = MemTrace.from_env()
        if memtrace is not None:
            memtrace.start()
    from server.app import Server
    from server.gcpolicy import GcPolicy
    from server.startup import StartupError

    try:
        config = load_config(vars(args))
    except ConfigError as exc:
        print(f"tailnetd: {exc}", file=sys.stderr)
        return 2
    from server.logs import log_handler

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        handlers=[log_handler("json" if config.log_format == "json" else "text")],
    )
    # watchfiles logs every batch of .git changes at INFO; commits are logged by us.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)

    async def run() -> int:
        # Older collections held while a commit fans out, what it leaves frozen after.
        server = Server(config, gc_policy=GcPolicy())
        try:
            await server.start()
        except StartupError as exc:
            print(f"tailnetd: {exc}", file=sys.stderr)
            return 1
        # What start-up built (snapshot, node records, the first index) lives as
        # long as the process: keep it out of every later full collection, which
        # stalls DERP and maps for ~150 ms at 5,000 nodes (bench/bench_derp_pause.py).
        # The one collection before the freeze (35-60 ms: it scans every module
        # and node) runs a moment after the server is serving, not before its
        # first answer (bench/bench_cold_start.py).
        settle = asyncio.create_task(_settle())
        # A commit compiles in a worker thread; the loop gets the GIL back within
        # 1 ms instead of 5 (DERP gaps during a 5,000-node commit: ~70 -> ~30 ms).
        sys.setswitchinterval(0.001)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
        if memtrace is not None:
            loop.add_signal_handler(signal.SIGUSR2, memtrace.snapshot)
        await stop.wait()
        settle.cancel()
        await server.stop()
        return 0

    return asyncio.run(run())


def _target(args: argparse.Namespace) -> Target:
    """Where admin commands go: flags beat the environment, --server beats --data."""
    server, data, api_key = (getattr(args, name, None) for name in ("server", "data", "api_key"))
    env_server = os.environ.get("TAILNETD_SERVER")
    if server or (env_server and not data):
        url = server or env_server or ""
        if url.startswith("http://") and not _is_loopback(url):
            warning = f"the API key goes to {url} unencrypted; use https://"
            print(f"tailnetd: warning: {warning}", file=sys.stderr)
        return HttpTarget(url, api_key or os.environ.get("TAILNETD_API_KEY"))
    if api_key:
        raise AdminError("--api-key is for a remote server: add --server URL")
    return SocketTarget(_data_dir(data) / "tailnetd.sock")


def _data_dir(given: str | None) -> Path:
    """--data, else TAILNETD_DATA (as `serve` reads it), else ./data."""
    return Path(given or os.environ.get("TAILNETD_DATA") or "data").resolve()


def _is_loopback(url: str) -> bool:
    from ipaddress import ip_address
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        return False


def _print(value: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json or columns is None or not isinstance(value, list):
        print(json.dumps(value, indent=2))
        return
    rows = [[_cell(item.get(c)) for c in columns] for item in value]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _print_created(created: Any, as_json: bool) -> None:
    """A new key: alone on its line for scripts, or the whole answer with --json."""
    if as_json:
        _print(created, True)
    else:
        print(created["key"])


def _keys(args: argparse.Namespace) -> int:
    if args.keys_cmd == "generate":
        from server.store.authkeys import generate_key

        # Offline: a fresh key text for keys.yaml's secret store; the server only hashes it.
        print(generate_key(os.urandom)[0])
        return 0
    sock = _target(args)
    if args.keys_cmd == "create":
        body = {
            "user": args.user,
            "reusable": args.reusable,
            "ephemeral": args.ephemeral,
            "tags": args.tag or [],
            "expiration": args.expiration,
        }
        created = call(sock, "POST", "/api/v1/preauthkeys", body)
        _print_created(created, args.json)
    elif args.keys_cmd == "list":
        query = f"?user={quote(args.user)}" if args.user else ""
        keys = call(sock, "GET", "/api/v1/preauthkeys" + query)
        columns = ["id", "prefix", "user", "reusable", "ephemeral", "tags", "expiration", "used"]
        _print(keys, args.json, [*columns, "expired"])
    elif args.keys_cmd == "expire":
        _print(call(sock, "POST", f"/api/v1/preauthkeys/{quote(args.key)}/expire"), True)
    return 0


def _apikeys(args: argparse.Namespace) -> int:
    target = _target(args)
    if args.apikeys_cmd == "create":
        body = {"expiration": args.expiration, "scope": args.scope}
        created = call(target, "POST", "/api/v1/apikeys", body)
        _print_created(created, args.json)
    elif args.apikeys_cmd == "list":
        keys = call(target, "GET", "/api/v1/apikeys")
        columns = ["id", "prefix", "scope", "created", "expiration", "last_used", "expired"]
        _print(keys, args.json, columns)
    elif args.apikeys_cmd == "expire":
        _print(call(target, "POST", f"/api/v1/apikeys/{quote(args.key)}/expire"), True)
    return 0


def _oauth_clients(args: argparse.Namespace) -> int:
    target = _target(args)
    path = "/api/v1/oauth-clients"
    if args.oauth_cmd == "create":
        body = {"scopes": args.scope, "description": args.description}
        created = call(target, "POST", path, body)
        if args.json:
            _print(created, True)
        else:  # TS_OAUTH_ID and TS_OAUTH_SECRET of Tailscale's tools
            print(f"client id: {created['client_id']}\nsecret:    {created['client_secret']}")
    elif args.oauth_cmd == "list":
        columns = ["id", "client_id", "scopes", "description", "created", "last_used"]
        _print(call(target, "GET", path), args.json, columns)
    elif args.oauth_cmd == "delete":
        _print(call(target, "DELETE", f"{path}/{quote(args.client)}"), True)
    return 0


_NODE_COLUMNS = [
    "id", "name", "user", "tags", "ipv4", "ipv6", "online", "last_seen", "approved",
]  # fmt: skip


def _nodes(args: argparse.Namespace) -> int:
    sock = _target(args)
    if args.nodes_cmd == "list":
        filters = {k: getattr(args, k) for k in ("user", "tag", "online") if getattr(args, k)}
        query = "?" + urlencode(filters) if filters else ""
        _print(call(sock, "GET", "/api/v1/nodes" + query), args.json, _NODE_COLUMNS)
        return 0
    if args.nodes_cmd == "logins":
        columns = ["auth_id", "hostname", "created", "expires"]
        _print(call(sock, "GET", "/api/v1/logins"), args.json, columns)
        return 0
    if args.nodes_cmd in ("register", "refuse"):
        auth_id = args.auth_id.rstrip("/").rsplit("/", 1)[-1]  # the id, or the whole URL
        if args.nodes_cmd == "refuse":
            path = f"/api/v1/logins/{quote(auth_id, safe='')}/refuse"
            _print([call(sock, "POST", path, {"reason": args.reason})], args.json, ["auth_id"])
            return 0
        body = {"auth_id": auth_id, "user": args.user}
        answer = call(sock, "POST", "/api/v1/nodes/register", body)
        _print([answer], args.json, _NODE_COLUMNS)
        return 0
    node = quote(args.node, safe="")
    if args.nodes_cmd == "get":
        answer = call(sock, "GET", f"/api/v1/nodes/{node}")
    elif args.nodes_cmd == "delete":
        answer = call(sock, "DELETE", f"/api/v1/nodes/{node}")
    elif args.nodes_cmd in ("expire", "approve"):
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/{args.nodes_cmd}")
    elif args.nodes_cmd == "expiry":
        body = {"disabled": args.disable}
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/expiry", body)
    elif args.nodes_cmd == "rename":
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/rename", {"name": args.new_name})
    elif args.nodes_cmd == "routes":
        body = {"routes": args.route or []}
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/routes", body)
    else:  # tags
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/tags", {"tags": args.tag or []})
    _print([answer], args.json, _NODE_COLUMNS)
    return 0


def _ssh(args: argparse.Namespace) -> int:
    target = _target(args)
    columns = ["auth_id", "user", "local_user", "src_node", "dst_node", "expires"]
    if args.ssh_cmd == "checks":
        _print(call(target, "GET", "/api/v1/ssh/checks"), args.json, columns)
        return 0
    auth_id = quote(args.auth_id.rstrip("/").rsplit("/", 1)[-1], safe="")
    answer = call(target, "POST", f"/api/v1/ssh/checks/{auth_id}/{args.ssh_cmd}")
    _print([answer], args.json, [*columns[:3], "state"])
    return 0


_USER_COLUMNS = ["name", "email", "display_name", "nodes", "source", "last_login"]


def _users(args: argparse.Namespace) -> int:
    if getattr(args, "users_cmd", None) == "delete":
        name = quote(args.user, safe="@")
        _print([call(_target(args), "DELETE", f"/api/v1/users/{name}")], args.json, ["name"])
        return 0
    users = call(_target(args), "GET", "/api/v1/users")
    _print(users, args.json, _USER_COLUMNS)
    return 0


def _drift(args: argparse.Namespace) -> int:
    """Exit 1 when runtime state differs from git, as `git diff --exit-code` does."""
    answer = call(_target(args), "GET", "/api/v1/drift")
    found = answer["drift"]
    if args.json:
        _print(answer, True)
    elif found:
        _print(found, False, ["kind", "subject", "message"])
    else:
        print(f"no drift: runtime state matches {answer['revision'][:12]}")
    return 1 if found else 0


def _inventory(args: argparse.Namespace) -> int:
    """Write the inventory (gitctl/schemas/inventory.schema.json) to a file or stdout."""
    doc = call(_target(args), "GET", "/api/v1/inventory")
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(
            f"wrote {args.output}: {len(doc['users'])} users, {len(doc['nodes'])} devices",
            file=sys.stderr,
        )
    return 0


def _commits(args: argparse.Namespace) -> int:
    repo = call(_target(args), "GET", "/api/v1/repo")
    if args.json:
        _print(repo, True)
        return 0
    print(f"serving:  {repo['serving']} (since {repo['serving_since']})")
    for entry in repo["history"]:
        print(f"rejected: {entry['revision']} at {entry['at']}")
        for error in entry["errors"]:
            print(f"  {error}")
    return 0


def _status(args: argparse.Namespace) -> int:
    if getattr(args, "sync", False):
        status = call(_target(args), "POST", "/api/v1/repo/sync")
    else:
        status = call(_target(args), "GET", "/api/v1/status")
    if args.json:
        _print(status, True)
        return 0
    print(f"serving:  {status['serving']} (since {status['serving_since']})")
    if status.get("signer"):
        print(f"signed:   by {status['signer']}")
    print(f"nodes:    {status['nodes']} registered, {status['online']} online")
    for entry in status.get("undeclared_tags") or ():
        tags = ", ".join(entry["tags"])
        print(f"undeclared tags: {entry['kind']} {entry['id']} {entry['name']}: {tags}")
    rollout = status.get("rollout")
    if rollout:
        until = rollout["until"] or "a canary node is online"
        print(f"rollout:  {rollout['revision']} {rollout['phase']} (hold until {until})")
        if rollout["reason"]:
            print(f"  {rollout['reason']}")
    rejected = status.get("rejected")
    if rejected:
        print(f"rejected: {rejected['revision']} at {rejected['at']}")
        for error in rejected["errors"]:
            print(f"  {error}")
        return 1
    return 0


def _rollout(args: argparse.Namespace) -> int:
    call(_target(args), "POST", f"/api/v1/rollout/{args.verb}")
    args.json, args.sync = False, False
    return _status(args)


def _history(args: argparse.Namespace) -> int:
    answer = call(_target(args), "GET", f"/api/v1/history?limit={args.limit}")
    if args.json:
        _print(answer["history"], True)
        return 0
    for entry in answer["history"]:
        signer = entry["signer"] or "-"
        print(f"{entry['at']}  {entry['outcome']:<8}  {entry['revision'][:12]}  {signer}")
        for reason in entry["reasons"]:
            print("    " + reason.replace("\n", "\n    "))
    return 0


def _dev_client(args: argparse.Namespace) -> int:
    from server.devclient import DevClient, DevClientError, find_binaries

    data = _data_dir(getattr(args, "data", None))
    try:
        client = DevClient(
            args.name, data / "dev-clients" / args.name, find_binaries(args.bin, Path.cwd()),
            args.server_url,
        )  # fmt: skip
        if args.stop:
            stopped = client.stop()
            print(f"{args.name}: {'stopped' if stopped else 'was not running'}")
            return 0
        if not args.user:
            raise DevClientError("say whose device it is: --user NAME (a user in users.yaml)")

        def key() -> str:
            body = {"user": args.user, "reusable": False, "ephemeral": False, "tags": []}
            created = call(
                SocketTarget(data / "tailnetd.sock"), "POST", "/api/v1/preauthkeys", body
            )
            return str(created["key"])

        ip = client.start(key)
    except DevClientError as exc:
        print(f"tailnetd dev-client: {exc}", file=sys.stderr)
        return 1
    tailscale = " ".join(client.cli())
    print(f"{args.name} joined as {ip}; its tailscaled runs in {client.home}")
    print(f"  use it:  {tailscale} status")
    print(f"  stop it: tailnetd dev-client {args.name} --stop")
    return 0


def _audit(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    if args.since:
        query["since"] = args.since
    answer = call(_target(args), "GET", "/api/v1/audit?" + urlencode(query))
    if args.json:
        _print(answer["audit"], True)
        return 0
    columns = ("at", "actor", "action", "target", "result", "status", "params")
    rows = [
        {**e, "params": json.dumps(e["params"], separators=(",", ":")) if e["params"] else None}
        for e in answer["audit"]
    ]
    _print(rows, False, columns)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailnetd", description="A GitOps-driven Tailscale control server."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from server.config import add_flags  # gitctl's model and the store: ~0.1 s of imports

    serve = sub.add_parser("serve", help="run the control server")
    add_flags(serve)
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=_serve)

    # Admin flags are accepted before and after the sub-command's verb; SUPPRESS
    # keeps a verb's parser from overwriting what was given before it.
    where = argparse.ArgumentParser(add_help=False)
    flags = where.add_argument_group("which server")
    for flag, metavar, help_text in (
        ("--data", "DIR", "the server's state directory, to use its socket (default ./data)"),
        ("--server", "URL", "a remote server's URL (or TAILNETD_SERVER)"),
        ("--api-key", "KEY", "API key for --server (or TAILNETD_API_KEY)"),
    ):
        flags.add_argument(flag, default=argparse.SUPPRESS, metavar=metavar, help=help_text)

    def admin_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[where])

    keys = admin_parser("keys", "pre-auth keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create", help="create; prints the key alone", parents=[where])
    create.add_argument("--user", required=True)
    create.add_argument("--reusable", action="store_true")
    create.add_argument("--ephemeral", action="store_true")
    create.add_argument("--tag", action="append", help="tag the nodes that use it (repeatable)")
    create.add_argument("--expiration", help="lifetime, e.g. 1h, 90d (default: never)")
    create.add_argument("--json", action="store_true", help="the whole answer, as JSON")
    klist = keys_sub.add_parser("list", parents=[where])
    klist.add_argument("--user")
    klist.add_argument("--json", action="store_true")
    keys_sub.add_parser(
        "generate",
        help="print a new key text for a key declared in keys.yaml (keep it in a secret store)",
    )
    kexp = keys_sub.add_parser("expire", parents=[where])
    kexp.add_argument("key", help="key id or prefix")
    kexp.add_argument("--json", action="store_true")
    keys.set_defaults(func=_keys)

    apikeys = admin_parser("apikeys", "API keys for the admin API over HTTP")
    apikeys_sub = apikeys.add_subparsers(dest="apikeys_cmd", required=True)
    acreate = apikeys_sub.add_parser("create", help="create; prints the key alone", parents=[where])
    acreate.add_argument("--expiration", help="lifetime, e.g. 30d, 12h (default: 90d)")
    acreate.add_argument(
        "--scope",
        choices=("admin", "read"),
        default="admin",
        help="read: may only look (GET routes); admin: everything (default)",
    )
    acreate.add_argument("--json", action="store_true", help="the whole answer, as JSON")
    alist = apikeys_sub.add_parser("list", help="prefix, expiration, last use", parents=[where])
    alist.add_argument("--json", action="store_true")
    aexp = apikeys_sub.add_parser("expire", help="stop a key working, at once", parents=[where])
    aexp.add_argument("key", help="key id or prefix")
    aexp.add_argument("--json", action="store_true")
    apikeys.set_defaults(func=_apikeys)

    oauth = admin_parser("oauth-clients", "OAuth clients: id and secret for a one-hour token")
    oauth_sub = oauth.add_subparsers(dest="oauth_cmd", required=True)
    ocreate = oauth_sub.add_parser("create", help="create; prints id and secret", parents=[where])
    ocreate.add_argument(
        "--scope",
        action="append",
        required=True,
        help="a Tailscale scope name (repeatable): ...:read names may only look"
        " (all:read, devices:core:read, policy_file:read), others may change (all, auth_keys)",
    )
    ocreate.add_argument("--description", default="", help="what the client is for")
    ocreate.add_argument("--json", action="store_true", help="the whole answer, as JSON")
    olist = oauth_sub.add_parser("list", help="client ids, scopes, last use", parents=[where])
    olist.add_argument("--json", action="store_true")
    odel = oauth_sub.add_parser("delete", help="delete; its tokens stop at once", parents=[where])
    odel.add_argument("client", help="client id (or numeric id)")
    oauth.set_defaults(func=_oauth_clients)

    nodes = admin_parser("nodes", "registered machines")
    nodes_sub = nodes.add_subparsers(dest="nodes_cmd", required=True)
    nlist = nodes_sub.add_parser("list", parents=[where])
    nlist.add_argument("--user", help="only this user's nodes")
    nlist.add_argument("--tag", help="only nodes with this tag")
    nlist.add_argument("--online", choices=("true", "false"), help="only online/offline nodes")
    nlist.add_argument("--json", action="store_true")
    for verb in ("get", "delete", "expire", "approve"):
        p = nodes_sub.add_parser(verb, parents=[where])
        p.add_argument("node", help="node id or name")
        p.add_argument("--json", action="store_true")
    exp = nodes_sub.add_parser(
        "expiry", help="disable a node's key expiry (servers), or enable it", parents=[where]
    )
    exp.add_argument("node")
    onoff = exp.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--disable", action="store_true", help="the key never expires")
    onoff.add_argument("--enable", dest="disable", action="store_false", help="expire it again")
    exp.add_argument("--json", action="store_true")
    ren = nodes_sub.add_parser("rename", parents=[where])
    ren.add_argument("node")
    ren.add_argument("new_name")
    ren.add_argument("--json", action="store_true")
    routes = nodes_sub.add_parser(
        "routes",
        help="approve a node's advertised routes at runtime (replacing the list), where "
        "settings.yaml sets runtime_route_approval: true",
        parents=[where],
    )
    routes.add_argument("node")
    routes.add_argument("--route", action="append", help="a prefix (repeatable); none: clear")
    routes.add_argument("--json", action="store_true")
    tags = nodes_sub.add_parser("tags", help="replace a node's tags", parents=[where])
    tags.add_argument("node")
    tags.add_argument("--tag", action="append", help="a tag (repeatable); none: clear")
    tags.add_argument("--json", action="store_true")
    reg = nodes_sub.add_parser(
        "register", help="approve an interactive login (the id its page shows)", parents=[where]
    )
    reg.add_argument("auth_id", help="login id, or the whole login URL")
    reg.add_argument("--user", required=True, help="the user (from git) who owns the device")
    reg.add_argument("--json", action="store_true")
    refuse = nodes_sub.add_parser("refuse", help="refuse an interactive login", parents=[where])
    refuse.add_argument("auth_id", help="login id, or the whole login URL")
    refuse.add_argument("--reason", default="refused by an administrator")
    refuse.add_argument("--json", action="store_true")
    nlogins = nodes_sub.add_parser("logins", help="interactive logins waiting", parents=[where])
    nlogins.add_argument("--json", action="store_true")
    nodes.set_defaults(func=_nodes)

    ssh = admin_parser("ssh", "SSH check mode: logins held by a check rule")
    ssh_sub = ssh.add_subparsers(dest="ssh_cmd", required=True)
    schecks = ssh_sub.add_parser("checks", help="checks waiting", parents=[where])
    schecks.add_argument("--json", action="store_true")
    for verb in ("approve", "refuse"):
        p = ssh_sub.add_parser(verb, help=f"{verb} a held SSH login", parents=[where])
        p.add_argument("auth_id", help="the check's id, or its page URL")
        p.add_argument("--json", action="store_true")
    ssh.set_defaults(func=_ssh)

    users = admin_parser(
        "users", "users (declared in git, or admitted at login: source runtime), node counts"
    )
    users.add_argument("--json", action="store_true")
    users_sub = users.add_subparsers(dest="users_cmd")
    ulist = users_sub.add_parser("list", help="every user (the default)", parents=[where])
    ulist.add_argument("--json", action="store_true")
    udel = users_sub.add_parser(
        "delete",
        help="delete a runtime user: its nodes are cut off (git users change by commit)",
        parents=[where],
    )
    udel.add_argument("user", help="the runtime user's email")
    udel.add_argument("--json", action="store_true")
    users.set_defaults(func=_users)

    drift = admin_parser(
        "drift", "runtime state that differs from git (keys, tags, users); exit 1 if any"
    )
    drift.add_argument("--json", action="store_true")
    drift.set_defaults(func=_drift)

    inventory = admin_parser("inventory", "users and devices, for gitctl --inventory in CI")
    inventory_sub = inventory.add_subparsers(dest="inventory_cmd", required=True)
    export = inventory_sub.add_parser(
        "export",
        help="write the users, roles, devices, tags and routes a policy is evaluated "
        "against (no key material)",
        parents=[where],
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    inventory.set_defaults(func=_inventory)

    commits = admin_parser("commits", "the commit served and recently rejected ones")
    commits.add_argument("--json", action="store_true")
    commits.set_defaults(func=_commits)

    status = admin_parser("status", "what the server serves, and any rejected commit")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--sync",
        action="store_true",
        help="fetch/re-read the repository first (POST /api/v1/repo/sync)",
    )
    status.set_defaults(func=_status)
    rollout = admin_parser("rollout", "decide the canary rollout now")
    rollout.add_argument("verb", choices=("promote", "abort"))
    rollout.set_defaults(func=_rollout)

    history = admin_parser("history", "served and rejected commits, newest first")
    history.add_argument("--json", action="store_true")
    history.add_argument("-n", "--limit", type=int, default=20, help="at most N (default 20)")
    history.set_defaults(func=_history)

    dev = sub.add_parser(
        "dev-client",
        help="start a userspace tailscaled (no root) joined to the local server",
        description="Start tailscale's tailscaled in userspace-networking mode with its own "
        "state under DATA/dev-clients/NAME/ and log it in to the server with a fresh "
        "pre-auth key for --user (made through the data dir's socket).",
    )
    dev.add_argument("name", metavar="NAME", help="the device's name in the tailnet")
    dev.add_argument("--user", help="whose device it is (a user in users.yaml)")
    dev.add_argument("--data", metavar="DIR", help="the server's data dir (default ./data)")
    listen = os.environ.get("TAILNETD_LISTEN", "127.0.0.1:8080")
    dev.add_argument(
        "--server-url",
        default=f"http://{listen}",
        help="the server's URL (default http://TAILNETD_LISTEN, else http://127.0.0.1:8080)",
    )
    dev.add_argument("--bin", metavar="DIR", help="where tailscale and tailscaled are")
    dev.add_argument("--stop", action="store_true", help="stop this client's tailscaled")
    dev.set_defaults(func=_dev_client)
    audit = admin_parser("audit", "admin actions, newest first: who, what, when, the result")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--since", help="only since: a duration back (12h, 7d) or an ISO time")
    audit.add_argument("-n", "--limit", type=int, default=50, help="at most N (default 50)")
    audit.set_defaults(func=_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # No collections while the modules load (server.config brings gitctl's model
    # and the store): what they make lives on, so each pass would scan it for
    # nothing (~20 ms of a start). `serve` keeps it off until it has settled.
    gc.disable()
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
    finally:
        if args is None or args.func is not _serve:
            gc.enable()
    try:
        return int(args.func(args))
    except AdminError as exc:
        print(f"tailnetd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
