"""Assembling the server: every part is built here and wired explicitly
(starlette's applications.py style); nothing reaches for a global.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import logging
import os
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from gitctl.policy.expiry import next_expiry
from gitctl.snapshot import Snapshot
from gitctl.tailnet import TailnetSettings
from server.api import WebDeps, build_app, build_metrics_app
from server.auth.pending import PendingLogins
from server.auth.sshcheck import SshChecks
from server.config import ServerConfig
from server.control import PROBE_PATH, ControlHandler, ControlSettings
from server.datadir import DataDirError, DataDirLock, claim, make_private, write_private
from server.declared_keys import read_secret, sync_declared_keys
from server.edge.control_conn import ControlConnection
from server.edge.derp_mesh import MeshKeyError, mesh_with, read_mesh_key, url_host_port
from server.edge.derp_server import DerpServer
from server.edge.http1 import FrontDoor, RequestHead
from server.edge.stun_server import StunServer, start_stun_server
from server.logs import event
from server.metrics import DerpCollector, LiveCollector, Metrics
from server.protocol.keys import ChallengePublic, MachinePrivate, NodePrivate, NodePublic
from server.protocol.noise import HandshakeError, accept_initiation, early_payload
from server.sources.authority import CommitAuthority
from server.sources.history import HISTORY_FILE, History
from server.sources.lifecycle import CommitLifecycle, SourceError, open_repo
from server.sources.remote import RemoteRepo
from server.sources.repo import RepoStatus, SnapshotRepo
from server.store import SqlStore, StoreError, open_store
from server.store.model import Node
from server.tagcheck import undeclared
from server.tailnet import NodeChange, TailnetSource, UserRegistry, running_tailnet
from server.tailnet.probes import RouterProbes
from server.tls.acme import AcmeManager, AcmeSettings
from server.tls.acme_http import ChallengeResponder
from server.tls.certs import ReloadingContext, TlsError, watch_certificate_files
from server.webhooks import Delivery, EventSource, WebhookSender
from server.wire import DerpRegion

if TYPE_CHECKING:
    from server.oidc.login import OidcLogin

__all__ = ["Server", "StartupError"]

SWEEP_INTERVAL = 5.0
EXPIRY_RECHECK = 1.0  # seconds: a new commit's first expiry is noticed this late at most
PROBE_RECHECK = 1.0  # seconds: a router newly sharing a subnet is probed this late at most
DEFAULT_SETTINGS = TailnetSettings()


def _expired(node: Node, now: datetime) -> bool:
    return node.key_expiry is not None and node.key_expiry <= now


class StartupError(Exception):
    pass


def _load_or_create_key(path: Path, kind: type[Any]) -> Any:
    try:
        if path.exists():
            return kind.parse(path.read_text().strip())
        key = kind.generate()
        write_private(path, (key.text + "\n").encode())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a key this server wrote"
        raise StartupError(f"cannot read the key file {path}: {reason}") from None
    return key


def _open_private_store(path: Path) -> SqlStore:
    """The sqlite store, its files (db, -wal, -shm) readable by the owner alone.

    sqlite gives the -wal and -shm files the database file's mode, so the
    database is created 0600 before sqlite opens it."""
    siblings = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        make_private(path, *siblings)
        store = open_store(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise StartupError(f"cannot open the state database {path}: {reason}") from None
    make_private(*siblings)
    return store


async def _listen(what: str, host: str, port: int, start: Awaitable[Any]) -> Any:
    """Await a listener's start, its failure as one line naming the address."""
    try:
        return await start
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (is another server running?)"
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {reason}") from None


class Server:
    def __init__(
        self,
        config: ServerConfig,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.log = log or logging.getLogger("tailnetd")
        self.clock = clock
        self.metrics = Metrics(metrics_registry or CollectorRegistry(), monotonic=time.monotonic)
        self._control_connections = 0
        self.metrics_port = config.metrics_port
        self.history = History(config.data_dir / HISTORY_FILE)
        self.status = RepoStatus(journal=self.history)
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._stun: StunServer | None = None
        self.port = config.listen_port
        self.stun_port = config.stun_port
        self.tls: ReloadingContext | None = None
        self.acme: AcmeManager | None = None
        self.acme_responder = ChallengeResponder()
        self.acme_http_port = config.acme_http_port
        self._data_lock: DataDirLock | None = None
        # Webhook events; sent once the store is open and a secret is configured.
        self.events = EventSource(clock=clock)
        self.webhook_delivery = Delivery()  # bounds and retry schedule; tests shorten it
        self.webhooks: WebhookSender | None = None

    # Commits (the lifecycle lives in server/sources/lifecycle.py)

    @property
    def repo(self) -> SnapshotRepo | RemoteRepo:
        return self.commits.repo

    async def sync_now(self) -> None:
        await self.commits.sync_now()

    async def on_revision(self, revision: str) -> None:
        await self.commits.on_revision(revision)

    async def _serve_off_loop(self, snap: Snapshot) -> None:
        """`_serve`, compiled in a worker thread: DERP and maps keep flowing meanwhile."""
        source = TailnetSource.from_snapshot(snap)
        await self.tailnet.swap_source_off_loop(source)
        self._served(source)

    def _serve(self, snap: Snapshot) -> None:
        """A checked commit becomes what the tailnet serves (raises when it cannot
        compile for the live nodes: the lifecycle then refuses the commit)."""
        source = TailnetSource.from_snapshot(snap)
        self.tailnet.swap_source(source)
        self._served(source)

    def _served(self, source: TailnetSource) -> None:
        self.ssh_checks.forget_approvals()  # a new policy asks every check again
        self.metrics.snapshot_swapped(self.tailnet.waiting())
        self._apply_addressing(source)
        self._sync_declared_keys(source)
        self._warn_undeclared_tags()
        self.events.routes_rechecked(self.registry.nodes())

    def _serve_canary(self, snap: Snapshot, canary: str) -> None:
        """A checked commit is served to the canary nodes only (a rollout's hold)."""
        self.tailnet.start_canary(TailnetSource.from_snapshot(snap), canary)

    def _canary_health(self, change: NodeChange) -> None:
        """A canary node whose map stream ends during a hold fails the rollout;
        one online starts a hold that waited for a canary."""
        node = change.node
        if node is None or not self.tailnet.is_canary(node.id):
            return
        if change.online is False:
            self.commits.canary_offline(node.given_name)
        elif self.registry.is_online(node.id):
            self.commits.canary_online()

    def _canary_is_online(self, tag: str) -> bool:
        nodes = map(self.registry.get, self.registry.online_ids())
        return any(node is not None and tag in node.tags for node in nodes)

    async def _rollout_timer(self) -> None:
        """At the end of a rollout's hold, promote its commit to every node."""
        while True:
            due = self.commits.rollout_due()
            wait = EXPIRY_RECHECK if due is None else (due - self.clock()).total_seconds()
            self.commits.rollout_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.commits.rollout_wake.wait(), max(wait, 0.01))
            self.commits.handle_timer(self.clock())

    # Life cycle

    async def start(self) -> None:
        """Claim the data dir, then start every part; StartupError (one line for
        people) if any cannot, with whatever had started stopped again."""
        try:
            self._data_lock = claim(self.config.data_dir, self.log)
        except DataDirError as exc:
            raise StartupError(str(exc)) from None
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        try:
            repo = await open_repo(
                repo=cfg.repo,
                repo_url=cfg.repo_url,
                data_dir=cfg.data_dir,
                branch=cfg.branch,
                log=self.log,
            )
        except SourceError as exc:
            raise StartupError(str(exc)) from None
        if cfg.trusted_signers is not None and not repo.is_git:
            raise StartupError(
                f"--trusted-signers needs a git repository; {cfg.repo} is a plain directory"
            )
        self.commits = CommitLifecycle(
            repo,
            authority=CommitAuthority(repo.path, cfg.trusted_signers, log=self.log),
            history=self.history,
            status=self.status,
            data_dir=cfg.data_dir,
            clock=self.clock,
            log=self.log,
            metrics=self.metrics,
            on_outcome=self.events.commit,
        )
        try:
            source = TailnetSource.from_snapshot(self.commits.initial())
        except SourceError as exc:
            raise StartupError(str(exc)) from None
        self.server_key = _load_or_create_key(cfg.control_key_path, MachinePrivate)
        self.derp_key = _load_or_create_key(cfg.data_dir / "derp_private.key", NodePrivate)
        location = cfg.store_location
        if isinstance(location, Path):
            self.store = _open_private_store(location)
        else:
            try:
                self.store = open_store(location)
            except StoreError as exc:
                raise StartupError(f"node state in {cfg.store_description}: {exc}") from None
        self._apply_addressing(source)
        self._sync_declared_keys(source)

        if cfg.stun_host is not None:
            self._stun = await _listen(
                "STUN (udp)",
                cfg.stun_host,
                cfg.stun_port,
                start_stun_server(cfg.stun_host, cfg.stun_port, log=self.log),
            )
            self.stun_port = self._stun.port

        ssl_ctx = self._start_tls(*self._certificate_files())

        listener = await _listen(
            "control (tcp)",
            cfg.listen_host,
            cfg.listen_port,
            asyncio.start_server(
                self._handle_tcp, cfg.listen_host, cfg.listen_port, ssl=ssl_ctx, limit=64 * 1024
            ),
        )
        self._servers.append(listener)
        self.port = listener.sockets[0].getsockname()[1]

        try:
            mesh_key = read_mesh_key(cfg.mesh_key_file)
        except MeshKeyError as exc:
            raise StartupError(str(exc)) from None
        self.derp = DerpServer(
            self.derp_key, is_allowed=self._derp_allowed, log=self.log, mesh_key=mesh_key
        )
        self.registry, self.tailnet = running_tailnet(
            self.store, source, derp_regions=[self._derp_region()], log=self.log, clock=self.clock
        )
        self.registry.subscribe(self._node_changed)
        self.registry.subscribe(self.metrics.node_changed)
        self.users = UserRegistry(self.store, log=self.log)
        self.users.subscribe(self.tailnet.apply_user)
        if not isinstance(cfg.store_location, Path):  # PostgreSQL: psycopg loads only here
            from server.store.postgres import PostgresStore
            from server.tailnet.pg_listen import start_replication

            assert isinstance(self.store, PostgresStore)
            self._tasks.append(
                start_replication(
                    self.store,
                    self.registry,
                    self.tailnet,
                    replica=cfg.replica_id,
                    log=self.log,
                    users=self.users,
                )
            )
        self._start_webhooks()
        self.metrics.registry.register(DerpCollector(self.derp.stats))
        self.metrics.registry.register(LiveCollector(self._live_counts))
        self.logins = PendingLogins(
            self.store,
            self.registry,
            base_url=self._public_url,
            timeout=lambda: timedelta(seconds=cfg.login_timeout),
            clock=self.clock,
            rng=os.urandom,
            log=self.log,
        )
        self.ssh_checks = SshChecks(
            base_url=self._public_url,
            timeout=lambda: timedelta(seconds=cfg.login_timeout),
            rng=os.urandom,
            log=self.log,
            via_provider=cfg.oidc is not None,
        )
        self.oidc = self._oidc_login()
        self.probes = RouterProbes(
            interval=timedelta(seconds=cfg.probe_interval),
            misses=cfg.probe_misses,
            token=lambda: base64.urlsafe_b64encode(os.urandom(12)).decode(),
        )
        self.control = ControlHandler(
            self.tailnet,
            self.registry,
            self.store,
            clock=self.clock,
            settings=self._control_settings,
            log=self.log,
            metrics=self.metrics,
            logins=self.logins,
            ssh_checks=self.ssh_checks,
            on_refused=self.events.login_refused,
            on_probe=self._probe_answered,
        )
        scheme = "https" if ssl_ctx else "http"
        upgrades = {"/ts2021": self._ts2021, "/derp": self._derp}

        def web(local: bool) -> WebDeps:
            return WebDeps(
                self.server_key.public(),
                self.tailnet,
                self.registry,
                self.store,
                self.clock,
                self.status,
                os.urandom,
                local=local,
                sync=self.sync_now,
                rollout=self.commits,
                metrics=self.metrics,
                log=self.log,
                documents=self.commits.serving_documents,
                events=self.events,
                logins=self.logins,
                ssh_checks=self.ssh_checks,
                oidc=self.oidc,
                users=self.users,
            )

        public = self.acme_responder.wrap(build_app(web(local=False)))
        local = build_app(web(local=True))
        self._front = FrontDoor(public, upgrades, log=self.log, scheme=scheme)
        self._local_front = FrontDoor(local, {}, log=self.log)

        sock_path = cfg.socket_path
        if sock_path.exists():
            sock_path.unlink()
        unix = await asyncio.start_unix_server(
            lambda r, w: self._tracked(self._local_front.handle, r, w), path=str(sock_path)
        )
        os.chmod(sock_path, 0o600)
        self._servers.append(unix)
        if cfg.metrics_host is not None:
            await self._start_metrics(build_metrics_app(web(local=False)))

        if self.acme is not None:
            await self._start_acme(FrontDoor(public, upgrades, log=self.log, scheme="http"))
        self.commits.serve_with(self._serve, off_loop=self._serve_off_loop)
        self.registry.subscribe(self._canary_health)
        self.commits.canary_with(
            self._serve_canary, self.tailnet.end_canary, online=self._canary_is_online
        )
        self._tasks.append(asyncio.create_task(self._rollout_timer()))
        watcher = self.commits.watcher(cfg.fetch_interval)
        if watcher is not None:
            self._tasks.append(asyncio.create_task(watcher))
        self._tasks.append(asyncio.create_task(self._sweep()))
        for url in cfg.mesh_with:
            if mesh_key is None:
                raise StartupError("--mesh-with needs --mesh-key-file")
            self._tasks.append(
                asyncio.create_task(
                    mesh_with(self.derp, url, key=self.derp_key, mesh_key=mesh_key, log=self.log)
                )
            )
        self._tasks.append(asyncio.create_task(self._expiry_timer()))
        self._tasks.append(asyncio.create_task(self._login_timer()))
        self._tasks.append(asyncio.create_task(self._probe_timer()))
        # The tailnet read every node a moment ago: not a second pass over the store.
        known = (self.tailnet.record(i) for i in self.tailnet.record_ids())
        self._warn_undeclared_tags([n for n in known if n is not None])
        self.log.info(
            "tailnetd listening on %s (control + DERP), STUN %s, serving %s, node state in %s",
            cfg.server_url if cfg.listen_port else f"port {self.port}",
            f"on udp/{self.stun_port}" if self._stun else "off",
            (self.status.serving or "")[:12],
            cfg.store_description,
        )

    def _start_webhooks(self) -> None:
        self.events.served_routes = self.tailnet.enabled_routes
        self.registry.subscribe(self.events.node_changed)
        secret = self.config.webhook_secret
        if secret is None:
            if self._settings().webhooks:
                self.log.warning(
                    "settings.yaml names webhooks but no secret is configured "
                    "(--webhook-secret-file or TAILNETD_WEBHOOK_SECRET): none are sent"
                )
            self.events.attach(lambda event: None, ())
            return
        self.webhooks = WebhookSender(
            self.store,
            targets=lambda: self._settings().webhooks,
            secret=secret,
            clock=self.clock,
            rng=os.urandom,
            metrics=self.metrics,
            log=self.log,
            delivery=self.webhook_delivery,
        )
        self._tasks.append(asyncio.create_task(self.webhooks.run()))
        self.events.attach(self.webhooks.emit, self.registry.nodes())

    async def _start_metrics(self, app: Any) -> None:
        """--metrics-listen: plain HTTP, /metrics, /health and /ready only."""
        cfg = self.config
        assert cfg.metrics_host is not None
        front = FrontDoor(app, {}, log=self.log)
        listener = await _listen(
            "metrics (tcp)",
            cfg.metrics_host,
            cfg.metrics_port,
            asyncio.start_server(
                lambda r, w: self._tracked(front.handle, r, w), cfg.metrics_host, cfg.metrics_port
            ),
        )
        self._servers.append(listener)
        self.metrics_port = listener.sockets[0].getsockname()[1]

    def _live_counts(self) -> dict[str, int]:
        return {
            "served": len(self.tailnet.context.nodes),
            "streaming": len(self.registry.online_ids()),
            "control_connections": self._control_connections,
        }

    def _certificate_files(self) -> tuple[Path | None, Path | None]:
        cfg = self.config
        if cfg.acme_domain is None:
            return cfg.tls_cert, cfg.tls_key
        settings = AcmeSettings(
            cfg.acme_domain, cfg.acme_email, cfg.acme_directory, cfg.data_dir / "acme"
        )
        self.acme = AcmeManager(
            settings,
            self.acme_responder,
            on_new_certificate=self.reload_tls,
            log=self.log,
            clock=self.clock,
        )
        return self.acme.prepare()

    def _start_tls(self, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
        cfg = self.config
        if cert is None or key is None:
            return None
        try:
            self.tls = ReloadingContext(cert, key, log=self.log)
        except TlsError as exc:
            raise StartupError(f"TLS: {exc}") from None
        host = urlsplit(cfg.server_url).hostname or ""
        if not self.tls.info.covers(host) and cfg.acme_domain is None:
            # Clients check the name for /key and for DERP: they would fail later, obscurely.
            self.log.warning(
                "TLS: the certificate is for %s, not for %s from the server URL; "
                "clients will refuse it",
                ", ".join(self.tls.info.names) or "no names",
                host,
            )
        self._tasks.append(asyncio.create_task(watch_certificate_files(self.tls)))
        return self.tls.context

    async def _start_acme(self, plain: FrontDoor) -> None:
        # HTTP-01 answers come from port 80; the same front door also serves
        # /ts2021 there, which clients given an https:// URL try as well.
        assert self.acme is not None
        cfg = self.config
        try:
            listener = await asyncio.start_server(
                lambda r, w: self._tracked(plain.handle, r, w),
                cfg.acme_http_host,
                cfg.acme_http_port,
            )
        except OSError as exc:
            raise StartupError(
                f"ACME: cannot listen on {cfg.acme_http_host}:{cfg.acme_http_port} for HTTP-01: "
                f"{exc.strerror} (use --acme-http-listen, or allow binding port 80)"
            ) from None
        self._servers.append(listener)
        self.acme_http_port = listener.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self.acme.run()))

    def reload_tls(self) -> None:
        """Read the certificate files again (SIGHUP)."""
        if self.tls is not None:
            self.tls.reload()

    def _apply_addressing(self, source: TailnetSource) -> None:
        """settings.yaml's prefixes and allocation, for the nodes that join next."""
        settings = source.settings
        if settings is not None:
            self.store.set_addressing(
                settings.ipv4_prefix, settings.ipv6_prefix, settings.ip_allocation
            )

    def _settings(self) -> TailnetSettings:
        """The serving commit's settings.yaml (its defaults where it says nothing)."""
        return self.tailnet.source.settings or DEFAULT_SETTINGS

    def _control_settings(self) -> ControlSettings:
        settings = self._settings()
        return ControlSettings(
            node_key_expiry=settings.node_key_expiry,
            device_approval=settings.device_approval == "required",
            key_expiry_from_token=settings.oidc_key_expiry == "token",
        )

    def _derp_region(self) -> DerpRegion:
        # Clients reach DERP where they reach control: the server URL, which
        # behind a proxy is the proxy's address, not our listener's.
        url = urlsplit(self.config.server_url)
        host = url.hostname or "127.0.0.1"
        port = url.port or (443 if url.scheme == "https" else 80)
        if self.config.listen_port == 0:
            port = self.port
        return DerpRegion(
            region_id=999,
            region_code="tailnetd",
            region_name="tailnetd embedded DERP",
            host_name=host,
            derp_port=port,
            stun_port=self.stun_port if self._stun else 0,
            replicas=tuple(url_host_port(u) for u in self.config.mesh_with),
        )

    def _sync_declared_keys(self, source: TailnetSource) -> None:
        """Create, rotate and expire the keys keys.yaml declares (server/declared_keys.py)."""
        specs = source.snapshot.keys if source.snapshot is not None else ()
        for action in sync_declared_keys(self.store, specs, read_secret, self.clock()):
            fields = event("keys.declared", key=action.name, outcome=action.outcome)
            if action.outcome in ("unreadable", "refused"):
                self.log.error("%s", action.describe(), extra=fields)
            elif action.outcome != "unchanged":
                self.log.info("%s", action.describe(), extra=fields)

    def _warn_undeclared_tags(self, nodes: list[Node] | None = None) -> None:
        """One warning per node or usable pre-auth key whose tags the served policy
        does not declare (a commit dropped them from tagOwners). `nodes`: those
        just read from the store, when the caller has them."""
        policy = self.tailnet.source.policy
        keys = self.store.list_preauth_keys()
        nodes = self.registry.nodes() if nodes is None else nodes
        for entry in undeclared(policy, nodes, keys, self.clock()):
            self.log.warning("%s", entry.describe())

    def _derp_allowed(self, key: NodePublic) -> bool:
        """DERP relays for nodes the tailnet serves: not deleted, not expired
        or logged out, not cut off from git."""
        node = self.registry.by_node_key(key)
        return (
            node is not None and not _expired(node, self.clock()) and self.tailnet.serves(node.id)
        )

    def _node_changed(self, change: NodeChange) -> None:
        """DERP drops a node key that stops being allowed: deleted, replaced
        by a renewal, expired or logged out, or cut off."""
        old, node = change.previous, change.node
        if old is not None and (node is None or node.node_key != old.node_key):
            self.derp.disconnect(old.node_key)
        if node is not None and not self._derp_allowed(node.node_key):
            self.derp.disconnect(node.node_key)

    async def _expiry_timer(self) -> None:
        """At each `expires` instant of the serving policy, compile it again: the
        entries that ended leave every map without a new commit."""
        while True:
            now = self.clock()
            due = next_expiry(self.tailnet.source.policy, now)
            wait = EXPIRY_RECHECK
            if due is not None:
                wait = min(wait, (due - now).total_seconds())
            await asyncio.sleep(max(wait, 0.01))
            if due is not None and self.clock() >= due:
                self.log.info(
                    "access in %s expired at %s: compiling again",
                    (self.status.serving or "")[:12],
                    due.isoformat(),
                    extra=event("policy.expired", commit=self.status.serving),
                )
                self.tailnet.time_passed()

    async def _probe_timer(self) -> None:
        """Probe the routers that share a subnet (HA): one that stops answering
        while its stream stays open loses its subnets to another."""
        while True:
            now = self.clock()
            # Only routers streaming here: a probe goes down this process's
            # stream; another replica probes its own and tells us (replicas.py).
            here = self.tailnet.shared_routers() & self.registry.local_online_ids()
            self._health(self.probes.track(here, now))
            probes, transitions = self.probes.due(now)
            self._health(transitions)
            for probe in probes:
                self.tailnet.ping(probe.node_id, self._public_url() + PROBE_PATH + probe.token)
            due = self.probes.next_due()
            wait = PROBE_RECHECK if due is None else (due - self.clock()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.01), PROBE_RECHECK))

    def _probe_answered(self, node_id: int, token: str) -> None:
        self._health(self.probes.answered(node_id, token))

    def _health(self, transitions: list[tuple[int, bool]]) -> None:
        for node_id, healthy in transitions:
            self.log.info(
                "router %d %s health probes",
                node_id,
                "answers" if healthy else "stopped answering",
                extra=event("router.health", node=node_id, healthy=healthy),
            )
            self.registry.set_healthy(node_id, healthy)

    def _oidc_login(self) -> OidcLogin | None:
        """Logins through the identity provider, when --oidc-issuer is set."""
        settings = self.config.oidc
        if settings is None:
            return None
        # The callback is on the URL people reach (the bound port when listening on 0).
        settings = dataclasses.replace(settings, server_url=self._public_url())
        from server.oidc.login import OidcLogin  # authlib: only when OIDC is configured
        from server.oidc.provider import Provider

        self._oidc_provider = Provider(settings)
        return OidcLogin(
            settings,
            self._oidc_provider,
            self.logins,
            users=lambda: {e.lower(): n for n, (e, _) in self.tailnet.source.git_users.items()},
            record_groups=self._record_login_groups,
            admit_runtime=lambda email: self.users.admit(email, self.clock()),
            clock=self.clock,
            log=self.log,
            ssh_checks=self.ssh_checks,
        )

    def _record_login_groups(self, email: str, groups: tuple[str, ...]) -> None:
        """A login's identity-provider groups: kept, and applied to the maps now."""
        self.store.set_login_groups(email, groups, self.clock())
        self.tailnet.set_login_groups(email, groups)

    def _public_url(self) -> str:
        """Where people reach this server (login links): --server-url, or the
        port actually bound when listening on port 0."""
        url = self.config.server_url
        if self.config.listen_port == 0:
            parts = urlsplit(url)
            url = f"{parts.scheme}://{parts.hostname}:{self.port}"
        return url

    async def _login_timer(self) -> None:
        """Expire interactive logins nobody approved in time."""
        while True:
            due = self.logins.get_timer()
            wait = SWEEP_INTERVAL if due is None else (due - self.clock()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.01), SWEEP_INTERVAL))
            self.logins.handle_timer(self.clock())
            self.ssh_checks.handle_timer(self.clock())

    async def _sweep(self) -> None:
        """Every few seconds: remove inactive ephemeral nodes, and drop the
        DERP connections of nodes whose key expired since the last look."""
        last = self.clock()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.clock()
            timeout = self._settings().ephemeral_inactivity_timeout
            cutoff = now - timeout
            # The serving node list, not a read of every row: this runs every few seconds.
            for node in list(self.tailnet.context.nodes.values()):
                if node.key_expiry is not None and last < node.key_expiry <= now:
                    self.log.info(
                        "node %d %s: key expired",
                        node.id,
                        node.given_name,
                        extra=event(
                            "node.expired", node=node.id, node_name=node.given_name, user=node.user
                        ),
                    )
                    self.derp.disconnect(node.node_key)
                    self.events.node_expired(node)
                if not node.ephemeral or self.registry.is_online(node.id):
                    continue
                if (node.last_seen or node.created) < cutoff:
                    self.log.info(
                        "removing ephemeral node %d %s: inactive",
                        node.id,
                        node.given_name,
                        extra=event(
                            "node.deleted",
                            node=node.id,
                            node_name=node.given_name,
                            user=node.user,
                            reason="ephemeral node inactive",
                        ),
                    )
                    self.registry.remove(node.id)
            for node in self.tailnet.cut_off():
                self.derp.disconnect(node.node_key)
            last = now

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._tracked(self._front.handle, reader, writer)

    async def _tracked(
        self,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Run one connection so that stop() can end it before the store closes."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await handle(reader, writer)
        except asyncio.CancelledError:
            writer.close()  # shutting down: the client reconnects to the next process
        finally:
            self._connections.discard(task)

    async def _ts2021(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> None:
        if head.upgrade != "tailscale-control-protocol":
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        try:
            initiation = base64.b64decode(head.header("x-tailscale-handshake"), validate=True)
            accepted = accept_initiation(self.server_key, initiation)
        except (ValueError, HandshakeError) as exc:
            peer = writer.get_extra_info("peername")
            self.log.info("ts2021: handshake from %s refused: %s", peer, exc)
            body = b"invalid noise handshake\n"
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        challenge = ChallengePublic(NodePrivate.generate().public_raw())
        conn = ControlConnection(
            reader,
            writer,
            accepted,
            self.control,
            log=self.log,
            early_payload=early_payload(challenge),
        )
        self._control_connections += 1
        try:
            await conn.run()
        finally:
            self._control_connections -= 1

    async def _derp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> None:
        if head.upgrade != "derp":
            body = b"DERP requires connection upgrade\n"
            writer.write(
                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        await self.derp.handle(reader, writer, fast_start=head.header("derp-fast-start") == "1")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            server.close()
        if self._stun is not None:
            self._stun.close()
        # End live control and DERP connections first: their sessions write
        # last-seen times, which must reach the store before it closes.
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=5)
        # A start that failed part-way stops too: only what was built is closed.
        if hasattr(self, "derp"):
            await self.derp.close()
        if self.webhooks is not None:
            await self.webhooks.aclose()  # what is still queued goes to the outbox
        if hasattr(self, "_oidc_provider"):
            await self._oidc_provider.aclose()
        if hasattr(self, "store"):
            self.store.close()
        if self._data_lock is not None:
            self.config.socket_path.unlink(missing_ok=True)  # ours: we hold the data dir
            self._data_lock.release()
            self._data_lock = None
