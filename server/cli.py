"""`tailnetd`: serve, and administer the running server through its socket
(or, with --server and an API key, over HTTP(S))."""

from __future__ import annotations

import argparse
import asyncio
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
from server.config import ConfigError, add_flags, load_config

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from server.app import Server, StartupError

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
        server = Server(config)
        try:
            await server.start()
        except StartupError as exc:
            print(f"tailnetd: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
        await stop.wait()
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
    return SocketTarget(Path(data or "data").resolve() / "tailnetd.sock")


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


_NODE_COLUMNS = ["id", "name", "user", "tags", "ipv4", "ipv6", "online", "last_seen"]


def _nodes(args: argparse.Namespace) -> int:
    sock = _target(args)
    if args.nodes_cmd == "list":
        filters = {k: getattr(args, k) for k in ("user", "tag", "online") if getattr(args, k)}
        query = "?" + urlencode(filters) if filters else ""
        _print(call(sock, "GET", "/api/v1/nodes" + query), args.json, _NODE_COLUMNS)
        return 0
    node = quote(args.node, safe="")
    if args.nodes_cmd == "get":
        answer = call(sock, "GET", f"/api/v1/nodes/{node}")
    elif args.nodes_cmd == "delete":
        answer = call(sock, "DELETE", f"/api/v1/nodes/{node}")
    elif args.nodes_cmd == "expire":
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/expire")
    elif args.nodes_cmd == "rename":
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/rename", {"name": args.new_name})
    else:  # tags
        answer = call(sock, "POST", f"/api/v1/nodes/{node}/tags", {"tags": args.tag or []})
    _print([answer], args.json, _NODE_COLUMNS)
    return 0


def _users(args: argparse.Namespace) -> int:
    users = call(_target(args), "GET", "/api/v1/users")
    _print(users, args.json, ["name", "email", "display_name", "nodes"])
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
    rejected = status.get("rejected")
    if rejected:
        print(f"rejected: {rejected['revision']} at {rejected['at']}")
        for error in rejected["errors"]:
            print(f"  {error}")
        return 1
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailnetd", description="A GitOps-driven Tailscale control server."
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    nodes = admin_parser("nodes", "registered machines")
    nodes_sub = nodes.add_subparsers(dest="nodes_cmd", required=True)
    nlist = nodes_sub.add_parser("list", parents=[where])
    nlist.add_argument("--user", help="only this user's nodes")
    nlist.add_argument("--tag", help="only nodes with this tag")
    nlist.add_argument("--online", choices=("true", "false"), help="only online/offline nodes")
    nlist.add_argument("--json", action="store_true")
    for verb in ("get", "delete", "expire"):
        p = nodes_sub.add_parser(verb, parents=[where])
        p.add_argument("node", help="node id or name")
        p.add_argument("--json", action="store_true")
    ren = nodes_sub.add_parser("rename", parents=[where])
    ren.add_argument("node")
    ren.add_argument("new_name")
    ren.add_argument("--json", action="store_true")
    tags = nodes_sub.add_parser("tags", help="replace a node's tags", parents=[where])
    tags.add_argument("node")
    tags.add_argument("--tag", action="append", help="a tag (repeatable); none: clear")
    tags.add_argument("--json", action="store_true")
    nodes.set_defaults(func=_nodes)

    users = admin_parser("users", "users declared in git, with their node counts")
    users.add_argument("--json", action="store_true")
    users.set_defaults(func=_users)

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

    history = admin_parser("history", "served and rejected commits, newest first")
    history.add_argument("--json", action="store_true")
    history.add_argument("-n", "--limit", type=int, default=20, help="at most N (default 20)")
    history.set_defaults(func=_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AdminError as exc:
        print(f"tailnetd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
