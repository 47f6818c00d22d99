"""Assembling the server: every part is built here and wired explicitly
(starlette's applications.py style); nothing reaches for a global.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitctl.tailnet import TailnetSettings
from server.api import WebDeps, build_app, build_metrics_app
from server.auth.pending import PendingLogins
from server.auth.sshcheck import SshChecks
from server.auth.timer import expire_logins
from server.config import ServerConfig
from server.control import PROBE_PATH, ControlHandler, ControlSettings
from server.datadir import DataDirError, DataDirLock, claim, load_or_create_key
from server.edge.control_types import ControlRequest, ControlResponse
from server.edge.http1 import FrontDoor, UpgradeHandler
from server.edge.listeners import ListenError, Listeners
from server.edge.mesh_config import MeshKeyError, read_mesh_key
from server.edge.public import derp_region, public_url
from server.edge.stun_server import StunServer, start_stun_server
from server.edge.upgrades import Ts2021Upgrade, derp_upgrade
from server.gcpolicy import GcPolicy
from server.metrics import Metrics
from server.oidc.wiring import oidc_login
from server.protocol.keys import MachinePrivate, NodePrivate, NodePublic
from server.sources.authority import CommitAuthority
from server.sources.canary import CanaryNodes
from server.sources.history import HISTORY_FILE, History
from server.sources.lifecycle import CommitLifecycle, SourceError, open_repo
from server.sources.remote import RemoteRepo
from server.sources.repo import RepoStatus, SnapshotRepo
from server.sources.serving import CommitServing, prepare_store
from server.store import StoreError, open_node_store
from server.tailnet import TailnetSource, UserRegistry, running_tailnet
from server.tailnet.derp_access import DerpAccess
from server.tailnet.probes import RouterProbes
from server.tailnet.timers import PolicyExpiry, Probing, Sweep
from server.tls import TlsError
from server.tls.acme_http import ChallengeResponder
from server.tls.serving import ServingTls
from server.webhooks import Delivery, EventSource, WebhookSender
from server.webhooks.wiring import start_webhooks

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from server.edge.derp_server import DerpServer
    from server.oidc.login import OidcLogin
    from server.tls.acme import AcmeManager

__all__ = ["Server", "StartupError"]

DEFAULT_SETTINGS = TailnetSettings()


class StartupError(Exception):
    pass


class Server:
    def __init__(
        self,
        config: ServerConfig,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics_registry: CollectorRegistry | None = None,
        gc_policy: GcPolicy | None = None,
    ) -> None:
        self.config = config
        # `tailnetd serve` passes one (server/gcpolicy.py); in-process tests leave
        # the collector as it is.
        self.gc_policy = gc_policy
        self.log = log or logging.getLogger("tailnetd")
        self.clock = clock
        self.metrics = Metrics(
            metrics_registry, monotonic=time.monotonic
        )  # a registry on first scrape
        self.metrics_port = config.metrics_port
        self.history = History(config.data_dir / HISTORY_FILE)
        self.status = RepoStatus(journal=self.history)
        self.listeners = Listeners()
        self._tasks: list[asyncio.Task[None]] = []
        self._stun: StunServer | None = None
        self._control_held: tuple[TailnetSettings, ControlSettings] | None = None
        self.port = config.listen_port
        self.stun_port = config.stun_port
        self.acme_responder = ChallengeResponder()
        acme = None
        if config.acme_domain is not None:
            from server.tls.acme import AcmeSettings  # cryptography.x509: only for TLS

            acme = AcmeSettings(
                config.acme_domain,
                config.acme_email,
                config.acme_directory,
                config.data_dir / "acme",
            )
        self.tls = ServingTls(
            cert=config.tls_cert,
            key=config.tls_key,
            acme=acme,
            responder=self.acme_responder,
            server_url=config.server_url,
            log=self.log,
            clock=clock,
        )
        self.acme_http_port = config.acme_http_port
        self._data_lock: DataDirLock | None = None
        self._derp: DerpServer | None = None  # made on first use (the `derp` property)
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

    # DERP

    @property
    def derp(self) -> DerpServer:
        """The embedded DERP relay, made on first use (a /derp connection, a mesh
        peer, a scrape): server/protocol/derp and nacl stay off the start path."""
        if self._derp is None:
            from server.edge.derp_server import DerpServer

            self._derp = DerpServer(
                self.derp_key,
                is_allowed=self._derp_access.allowed,
                log=self.log,
                mesh_key=self._mesh_key,
            )
        return self._derp

    def _derp_disconnect(self, node_key: NodePublic) -> None:
        """Close a node's DERP connection, if DERP has any."""
        if self._derp is not None:
            self._derp.disconnect(node_key)

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
        source = await self._open_state()
        if cfg.stun_host is not None:
            try:
                self._stun = await start_stun_server(cfg.stun_host, cfg.stun_port, log=self.log)
            except OSError as exc:
                error = ListenError("STUN (udp)", cfg.stun_host, cfg.stun_port, exc)
                raise StartupError(str(error)) from None
            self.stun_port = self._stun.port
        try:
            ssl_ctx = self.tls.start()
        except TlsError as exc:
            raise StartupError(f"TLS: {exc}") from None
        self._tasks += map(asyncio.create_task, self.tls.tasks())
        self.port = await self._listen(
            "control (tcp)",
            cfg.listen_host,
            cfg.listen_port,
            lambda r, w: self._front.handle(r, w),  # the front door is built below
            ssl=ssl_ctx,
            limit=64 * 1024,
        )
        try:
            mesh_key = read_mesh_key(cfg.mesh_key_file)
        except MeshKeyError as exc:
            raise StartupError(str(exc)) from None
        self._start_tailnet(source, mesh_key)
        self._start_logins()
        await self._start_web(scheme="https" if ssl_ctx else "http")
        self._start_commits()
        self._start_timers(mesh_key)
        # The tailnet read every node a moment ago: not a second pass over the store.
        known = (self.tailnet.record(i) for i in self.tailnet.record_ids())
        self.serving.warn_undeclared_tags([n for n in known if n is not None])
        self.log.info(
            "tailnetd listening on %s (control + DERP), STUN %s, serving %s, node state in %s",
            cfg.server_url if cfg.listen_port else f"port {self.port}",
            f"on udp/{self.stun_port}" if self._stun else "off",
            (self.status.serving or "")[:12],
            cfg.store_description,
        )

    async def _open_state(self) -> TailnetSource:
        """The repository and its commit lifecycle, the keys, the node store;
        the commit to serve first."""
        cfg = self.config
        try:
            repo = await open_repo(
                repo=cfg.repo,
                repo_url=cfg.repo_url,
                data_dir=cfg.data_dir,
                branch=cfg.branch,
                log=self.log,
                trusted_signers=cfg.trusted_signers,
            )
        except SourceError as exc:
            raise StartupError(str(exc)) from None
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
        try:
            self.server_key = load_or_create_key(cfg.control_key_path, MachinePrivate)
            self.derp_key = load_or_create_key(cfg.data_dir / "derp_private.key", NodePrivate)
        except DataDirError as exc:
            raise StartupError(str(exc)) from None
        try:
            self.store = open_node_store(cfg.store_location, cfg.store_description)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        prepare_store(self.store, source, self.clock(), self.log)
        return source

    def _start_tailnet(self, source: TailnetSource, mesh_key: str | None) -> None:
        """The registry and the tailnet that follows it, DERP, runtime users,
        replication (PostgreSQL), webhooks and the live metrics."""
        cfg = self.config
        derp = derp_region(
            cfg.server_url, cfg.listen_port, self.port, self.stun_port if self._stun else 0,
            cfg.mesh_with,
        )  # fmt: skip
        self.registry, self.tailnet = running_tailnet(
            self.store,
            source,
            derp_regions=[derp],
            log=self.log,
            clock=self.clock,
            gc_policy=self.gc_policy,
        )
        self._derp_access = DerpAccess(self.registry, self.tailnet, clock=self.clock)
        self._mesh_key = mesh_key
        self._derp_access.follow(self._derp_disconnect)
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
        self.webhooks = start_webhooks(
            self.events,
            self.registry,
            self.tailnet,
            self.store,
            secret=cfg.webhook_secret,
            targets=lambda: self._settings().webhooks,
            delivery=self.webhook_delivery,
            clock=self.clock,
            metrics=self.metrics,
            log=self.log,
        )
        if self.webhooks is not None:
            self._tasks.append(asyncio.create_task(self.webhooks.run()))
        self.metrics.export_derp(lambda: self.derp.stats())  # a scrape starts DERP
        self.metrics.export_live(self._live_counts)

    def _start_logins(self) -> None:
        """Interactive logins, SSH checks, OIDC, router probes; the control handler."""
        cfg = self.config
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
        self.oidc: OidcLogin | None = None
        if cfg.oidc is not None:
            self.oidc, self._oidc_provider = oidc_login(
                cfg.oidc,
                public_url=self._public_url(),
                logins=self.logins,
                ssh_checks=self.ssh_checks,
                tailnet=self.tailnet,
                users=self.users,
                store=self.store,
                clock=self.clock,
                log=self.log,
            )
        self.probing = Probing(
            RouterProbes(
                interval=timedelta(seconds=cfg.probe_interval),
                misses=cfg.probe_misses,
                token=lambda: base64.urlsafe_b64encode(os.urandom(12)).decode(),
            ),
            self.registry,
            self.tailnet,
            url=lambda token: self._public_url() + PROBE_PATH + token,
            clock=self.clock,
            log=self.log,
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
            on_probe=self.probing.answered,
        )

    async def _start_web(self, scheme: str) -> None:
        """The front doors (control port, admin socket, metrics, ACME's port 80):
        the /ts2021 and /derp upgrades, the HTTP apps."""
        cfg = self.config
        # self.control is looked up per request: tests replace it after start().
        control = lambda request: self.control(request)  # noqa: E731
        self._ts2021 = Ts2021Upgrade(
            self.server_key, control, log=self.log, answer_now=self._answer_now
        )
        upgrades: dict[str, UpgradeHandler] = {
            "/ts2021": self._ts2021,
            "/derp": derp_upgrade(lambda: self.derp),
        }

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
        self._front: FrontDoor = FrontDoor(public, upgrades, log=self.log, scheme=scheme)
        self._local_front = FrontDoor(local, {}, log=self.log)

        await self.listeners.unix(cfg.socket_path, self._local_front.handle)
        if cfg.metrics_host is not None:
            # --metrics-listen: plain HTTP, /metrics, /health and /ready only.
            front = FrontDoor(build_metrics_app(web(local=False)), {}, log=self.log)
            self.metrics_port = await self._listen(
                "metrics (tcp)", cfg.metrics_host, cfg.metrics_port, front.handle
            )

        if self.tls.acme is not None:
            await self._start_acme(
                self.tls.acme, FrontDoor(public, upgrades, log=self.log, scheme="http")
            )

    def _start_commits(self) -> None:
        """From now on, checked commits are served (to the canaries first in a rollout)."""
        self.serving = CommitServing(
            self.tailnet,
            self.registry,
            self.store,
            clock=self.clock,
            log=self.log,
            metrics=self.metrics,
            forget_approvals=self.ssh_checks.forget_approvals,
            routes_rechecked=self.events.routes_rechecked,
        )
        self.commits.serve_with(self.serving.serve, off_loop=self.serving.serve_off_loop)
        canaries = CanaryNodes(self.commits, self.registry, self.tailnet, clock=self.clock)
        canaries.connect()
        self._tasks.append(asyncio.create_task(canaries.run()))
        watcher = self.commits.watcher(self.config.fetch_interval)
        if watcher is not None:
            self._tasks.append(asyncio.create_task(watcher))

    def _start_timers(self, mesh_key: str | None) -> None:
        cfg = self.config
        sweep = Sweep(
            self.registry,
            self.tailnet,
            inactivity=lambda: self._settings().ephemeral_inactivity_timeout,
            disconnect=self._derp_disconnect,
            on_expired=self.events.node_expired,
            clock=self.clock,
            log=self.log,
        )
        self._tasks.append(asyncio.create_task(sweep.run()))
        for url in cfg.mesh_with:
            from server.edge.derp_mesh import mesh_with

            if mesh_key is None:
                raise StartupError("--mesh-with needs --mesh-key-file")
            self._tasks.append(
                asyncio.create_task(
                    mesh_with(self.derp, url, key=self.derp_key, mesh_key=mesh_key, log=self.log)
                )
            )
        expiry = PolicyExpiry(
            self.tailnet, serving=lambda: self.status.serving, clock=self.clock, log=self.log
        )
        self._tasks.append(asyncio.create_task(expiry.run()))
        self._tasks.append(
            asyncio.create_task(expire_logins(self.logins, self.ssh_checks, self.clock))
        )
        self._tasks.append(asyncio.create_task(self.probing.run()))

    def _live_counts(self) -> dict[str, int]:
        return {
            "served": len(self.tailnet.context.nodes),
            "streaming": len(self.registry.online_ids()),
            "control_connections": self._ts2021.connections,
        }

    async def _start_acme(self, acme: AcmeManager, plain: FrontDoor) -> None:
        # HTTP-01 answers come from port 80; the same front door also serves
        # /ts2021 there, which clients given an https:// URL try as well.
        cfg = self.config
        try:
            self.acme_http_port = await self.listeners.tcp(
                "HTTP-01", cfg.acme_http_host, cfg.acme_http_port, plain.handle
            )
        except ListenError as exc:
            raise StartupError(
                f"ACME: cannot listen on {exc.host}:{exc.port} for HTTP-01: "
                f"{exc.strerror} (use --acme-http-listen, or allow binding port 80)"
            ) from None
        self._tasks.append(asyncio.create_task(acme.run()))

    async def _listen(self, what: str, host: str, port: int, handle: Any, **kw: Any) -> int:
        try:
            return await self.listeners.tcp(what, host, port, handle, **kw)
        except ListenError as exc:
            raise StartupError(str(exc)) from None

    def reload_tls(self) -> None:
        """Read the certificate files again (SIGHUP)."""
        self.tls.reload()

    def _settings(self) -> TailnetSettings:
        """The serving commit's settings.yaml (its defaults where it says nothing)."""
        return self.tailnet.source.settings or DEFAULT_SETTINGS

    def _control_settings(self) -> ControlSettings:
        """What the serving settings.yaml asks of registrations and map streams,
        made once per settings object: every delta asks for it (its keep-alive)."""
        settings = self._settings()
        held = self._control_held
        if held is None or held[0] is not settings:
            held = self._control_held = (settings, ControlSettings.from_tailnet(settings))
        return held[1]

    def _answer_now(self, request: ControlRequest) -> ControlResponse | None:
        """What the serving handler answers at once (none: a test's stand-in)."""
        control = self.control
        return control.answer_now(request) if isinstance(control, ControlHandler) else None

    def _public_url(self) -> str:
        return public_url(self.config.server_url, self.config.listen_port, self.port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.listeners.close()
        if self._stun is not None:
            self._stun.close()
        # End live control and DERP connections first: their sessions write
        # last-seen times, which must reach the store before it closes.
        await self.listeners.end_connections()
        # A start that failed part-way stops too: only what was built is closed.
        if self._derp is not None:
            await self._derp.close()
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
